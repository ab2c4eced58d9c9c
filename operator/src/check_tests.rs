//! The check's judgements on fixture objects.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::json;

use super::*;
use crate::children::fixtures;
use crate::webhook::config::{Target, desired};
use crate::webhook::inject::{InjectConfig, inject};
use crate::webhook::tls::{generate, sans};

fn statuses(fs: &[Finding]) -> Vec<(Status, &'static str)> {
    fs.iter().map(|f| (f.status, f.check)).collect()
}

fn established(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.status = Some(CustomResourceDefinitionStatus {
        conditions: Some(vec![CustomResourceDefinitionCondition {
            type_: "Established".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    crd
}

#[test]
fn crd_missing_unestablished_stale_or_current() {
    assert_eq!(check_crd(None).status, Status::Fail);
    assert!(check_crd(None).message.contains("not installed"));
    let ours = ETagStore::crd();
    assert_eq!(check_crd(Some(&ours)).status, Status::Fail);
    let ok = check_crd(Some(&established(ours.clone())));
    assert_eq!(ok.status, Status::Pass, "{ok}");
    assert_eq!(ok.subject, "etagstores.sametag.dev");

    // An older CRD: a field this binary knows is missing from the schema.
    let mut older = established(ours.clone());
    let schema = older.spec.versions[0].schema.as_mut().unwrap();
    let props = schema
        .open_api_v3_schema
        .as_mut()
        .unwrap()
        .properties
        .as_mut()
        .unwrap();
    props.remove("status");
    let f = check_crd(Some(&older));
    assert_eq!(f.status, Status::Warn);
    assert!(f.message.contains("different releases"), "{f}");

    let mut unserved = established(ours);
    unserved.spec.versions[0].served = false;
    assert_eq!(check_crd(Some(&unserved)).status, Status::Fail);
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

fn at(t: jiff::Timestamp) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t.as_second() as u64))
}

#[test]
fn ca_bundle_must_verify_the_serving_certificate_for_the_dialled_name() {
    let day = Duration::from_secs(86_400);
    let good = generate(&sans("sametag-webhook", "sametag-system"), 90 * day, now()).unwrap();
    let other = generate(&sans("sametag-webhook", "sametag-system"), 90 * day, now()).unwrap();
    let svc = Target::Service {
        namespace: "sametag-system".into(),
        name: "sametag-webhook".into(),
        port: 443,
    };
    let url = Target::Url("https://127.0.0.1:9443/mutate".into());
    let cert = Ok(Some(good.cert_pem.as_bytes()));
    let when = at(now() + jiff::SignedDuration::from_secs(60));
    for target in [&svc, &url] {
        let cfg = desired("sametag", target, Some(&good.ca_pem)).unwrap();
        let fs = check_webhook_config("sametag", Some(&cfg), cert.clone(), "s/tls", when);
        assert_eq!(
            statuses(&fs),
            [(Status::Pass, "webhook"), (Status::Pass, "ca-bundle")],
            "{fs:?}"
        );
    }
    assert_eq!(
        dialled_name(&desired("x", &svc, Some("CA")).unwrap()).as_deref(),
        Some("sametag-webhook.sametag-system.svc")
    );
    assert_eq!(
        dialled_name(&desired("x", &url, Some("CA")).unwrap()).as_deref(),
        Some("127.0.0.1")
    );

    // Another CA: valid PEM, but it did not sign the serving certificate.
    let cfg = desired("sametag", &svc, Some(&other.ca_pem)).unwrap();
    let fs = check_webhook_config("sametag", Some(&cfg), cert.clone(), "s/tls", when);
    assert_eq!(fs[1].status, Status::Fail);
    assert!(fs[1].message.contains("does not verify"), "{}", fs[1]);

    // Garbage, empty, expired, missing.
    let cfg = desired("sametag", &svc, Some("not a certificate")).unwrap();
    let fs = check_webhook_config("sametag", Some(&cfg), cert.clone(), "s/tls", when);
    assert!(fs[1].message.contains("not a valid PEM"), "{}", fs[1]);
    let cfg = desired("sametag", &svc, Some("")).unwrap();
    let fs = check_webhook_config("sametag", Some(&cfg), cert.clone(), "s/tls", when);
    assert!(fs[1].message.contains("empty"), "{}", fs[1]);
    let cfg = desired("sametag", &svc, Some(&good.ca_pem)).unwrap();
    let later = at(now() + jiff::SignedDuration::from_hours(24 * 91));
    let fs = check_webhook_config("sametag", Some(&cfg), cert, "s/tls", later);
    assert_eq!(fs[1].status, Status::Fail, "{}", fs[1]);
    let fs = check_webhook_config("sametag", None, Ok(None), "s/tls", when);
    assert_eq!(statuses(&fs), [(Status::Fail, "webhook")]);

    // An unreadable Secret: a warning, the dry run decides.
    let fs = check_webhook_config(
        "sametag",
        Some(&cfg),
        Err("forbidden".into()),
        "s/tls",
        when,
    );
    assert_eq!(fs[1].status, Status::Warn);
}

fn injected(name: &str, image: &str) -> Pod {
    let mut store = fixtures::managed();
    store.spec.sidecar.image = Some(image.into());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
                     "annotations": {"sametag.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "a",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    inject(&pod, "shop", &store, &InjectConfig::default()).unwrap()
}

fn plain(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
                     "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "a"}]}
    }))
    .unwrap()
}

#[test]
fn dry_run_verdicts() {
    let pod = injected("p", "img:1");
    let (f, image) = judge_dry_run(
        "shop",
        Some("cache"),
        &DryRun::Admitted(Box::new(pod), vec![]),
    );
    assert_eq!((f.status, image.as_deref()), (Status::Pass, Some("img:1")));
    // Uninjected, nothing said: the apiserver could not call the webhook.
    let bare = DryRun::Admitted(Box::new(plain("p", json!({}))), vec![]);
    let (f, _) = judge_dry_run("shop", Some("cache"), &bare);
    assert_eq!(f.status, Status::Fail);
    assert!(f.message.contains("could not call it"), "{f}");
    // The webhook answered "no store": reachable.
    let said = DryRun::Admitted(
        Box::new(plain("p", json!({}))),
        vec!["sametag: sidecar not injected: no ETagStore in namespace shop".into()],
    );
    assert_eq!(judge_dry_run("shop", None, &said).0.status, Status::Pass);
    assert_eq!(
        judge_dry_run("shop", Some("cache"), &said).0.status,
        Status::Fail
    );
    let refused = DryRun::Refused(403, "violates PodSecurity".into());
    assert_eq!(judge_dry_run("shop", None, &refused).0.status, Status::Warn);
    // The probe opts in for the store and asks for nothing unusual.
    let probe = probe_pod(Some("cache"));
    assert!(inject::wants_injection(&probe, false));
    assert_eq!(probe.annotations()[STORE_ANNOTATION], "cache");
}

#[test]
fn warning_headers_are_unquoted() {
    assert_eq!(
        warning_text(r#"299 - "sametag: annotation x=\"y\" ignored""#),
        r#"sametag: annotation x="y" ignored"#
    );
    assert_eq!(warning_text("299 - plain"), "plain");
}

#[test]
fn store_readiness() {
    let mut store = fixtures::managed();
    assert_eq!(check_store(&store).status, Status::Fail);
    let cond = |status: &str, reason: &str| Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: "Secret redis-pass not found".into(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ),
        observed_generation: None,
    };
    store.status = Some(crate::crd::ETagStoreStatus {
        conditions: vec![cond("False", "SecretMissing")],
        observed_generation: Some(1),
        ..Default::default()
    });
    let f = check_store(&store);
    assert_eq!(f.status, Status::Fail);
    assert_eq!(
        f.to_string(),
        "FAIL  store      shop/cache: Ready=False (SecretMissing): Secret redis-pass not found"
    );
    store.status.as_mut().unwrap().conditions = vec![cond("True", "Reconciled")];
    assert_eq!(check_store(&store).status, Status::Pass);
    store.metadata.generation = Some(2);
    assert_eq!(check_store(&store).status, Status::Warn);
}

#[test]
fn opted_in_pods_without_the_sidecar_fail() {
    let pods = vec![
        injected("good", "img:1"),
        plain("missed", json!({"sametag.dev/inject": "true"})),
        plain("other", json!({})),
        plain("out", json!({"sametag.dev/inject": "false"})),
    ];
    let mut ns = BTreeMap::new();
    let fs = check_pods(&pods, &ns);
    assert_eq!(statuses(&fs), [(Status::Fail, "pods")]);
    assert_eq!(fs[0].subject, "shop/missed");
    // The namespace label opts "other" in too.
    ns.insert(
        "shop".to_owned(),
        NamespaceInfo {
            enabled: true,
            excluded: false,
        },
    );
    assert_eq!(check_pods(&pods, &ns).len(), 2);
    // A namespace the webhook never sees is not judged.
    ns.insert(
        "shop".to_owned(),
        NamespaceInfo {
            enabled: false,
            excluded: true,
        },
    );
    assert_eq!(statuses(&check_pods(&pods, &ns)), [(Status::Pass, "pods")]);
}

fn service(target: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": target}]}
    }))
    .unwrap()
}

#[test]
fn numeric_target_ports_to_injected_pods_warn() {
    let pods = vec![injected("a", "img:1")];
    let by_name = check_services(&[service(json!("http"))], &pods);
    assert_eq!(statuses(&by_name), [(Status::Pass, "service")]);
    let to_sidecar = check_services(&[service(json!(15080))], &pods);
    assert_eq!(statuses(&to_sidecar), [(Status::Pass, "service")]);
    let fs = check_services(&[service(json!(8080))], &pods);
    assert_eq!(statuses(&fs), [(Status::Warn, "service")]);
    assert!(
        fs[0].message.contains("targets 8080 by number"),
        "{}",
        fs[0]
    );
    assert!(fs[0].message.contains("(targetPort: http)"), "{}", fs[0]);
    // Not selecting injected pods: nothing to say.
    let other = vec![plain("b", json!({}))];
    assert_eq!(
        statuses(&check_services(&[service(json!(8080))], &other)),
        [(Status::Pass, "service")]
    );
}

#[test]
fn sidecar_image_drift_warns_per_store() {
    let pods = vec![
        injected("a", "img:1"),
        injected("b", "img:2"),
        injected("c", "img:1"),
    ];
    let expected = BTreeMap::from([("shop/cache".to_owned(), "img:2".to_owned())]);
    let fs = check_images(&pods, &expected);
    assert_eq!(statuses(&fs), [(Status::Warn, "image")]);
    assert!(
        fs[0]
            .message
            .starts_with("2 pods run sidecar img:1, the webhook now injects img:2 (a, c)"),
        "{}",
        fs[0]
    );
    let fs = check_images(&pods[1..2], &expected);
    assert_eq!(statuses(&fs), [(Status::Pass, "image")]);
}

#[test]
fn exit_status_follows_failures_and_strict_warnings() {
    let f = |s| finding(s, "x", "y", "z");
    assert!(summary(&[f(Status::Pass), f(Status::Warn)], false).1);
    assert!(!summary(&[f(Status::Pass), f(Status::Warn)], true).1);
    let (line, ok) = summary(&[f(Status::Pass), f(Status::Fail)], false);
    assert!(!ok);
    assert_eq!(line, "NOT OK: 1 passed, 0 warnings, 1 failed");
}

#[test]
fn readme_documents_every_flag() {
    use clap::CommandFactory as _;
    let readme = include_str!("../../README.md");
    let cli = crate::config::Cli::command();
    let check = cli.find_subcommand("check").expect("check subcommand");
    for arg in check.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        assert!(
            readme.contains(&format!("`--{long}`")) || readme.contains(&format!(", --{long}`")),
            "README lacks --{long}"
        );
    }
}
