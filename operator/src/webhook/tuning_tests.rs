//! Tuning annotations: what each sets, what is refused and why, and the
//! pod the apiserver would accept either way.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::children::fixtures;
use crate::webhook::inject::{InjectConfig, SIDECAR_NAME, inject_tuned};

fn pod(annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "a",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap()
}

fn tuned(annotations: serde_json::Value) -> (Pod, Vec<Rejected>) {
    inject_tuned(
        &pod(annotations),
        "shop",
        &fixtures::managed(),
        &InjectConfig::default(),
    )
    .unwrap()
}

fn side(p: &Pod) -> Container {
    p.spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
        .clone()
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn res(c: &Container, side: &str, key: &str) -> Option<String> {
    let r = c.resources.clone().unwrap_or_default();
    let m = if side == "requests" {
        r.requests
    } else {
        r.limits
    };
    m.and_then(|m| m.get(key).map(|q| q.0.clone()))
}

fn keys(bad: &[Rejected]) -> Vec<&str> {
    bad.iter().map(|b| b.key.as_str()).collect()
}

#[test]
fn valid_annotations_set_env_resources_and_grace() {
    let (p, bad) = tuned(json!({
        "config.sametag.dev/upstream-timeout": "1m30s",
        "config.sametag.dev/drain-timeout": "45s",
        "config.sametag.dev/log-level": "info,sametag_sidecar=debug",
        "config.sametag.dev/max-body-size": "16Mi",
        "config.sametag.dev/cpu-request": "100m",
        "config.sametag.dev/cpu-limit": "1",
        "config.sametag.dev/memory-request": "64Mi",
        "config.sametag.dev/memory-limit": "256Mi",
    }));
    assert_eq!(bad, []);
    let s = side(&p);
    assert_eq!(env(&s, "SAMETAG_UPSTREAM_TIMEOUT").as_deref(), Some("90s"));
    assert_eq!(env(&s, "SAMETAG_DRAIN_TIMEOUT").as_deref(), Some("45s"));
    assert_eq!(
        env(&s, "RUST_LOG").as_deref(),
        Some("info,sametag_sidecar=debug")
    );
    assert_eq!(
        env(&s, "SAMETAG_MAX_BODY_BYTES").as_deref(),
        Some("16777216")
    );
    // Half the memory limit, as the default 64Mi is half of 128Mi.
    assert_eq!(
        env(&s, "SAMETAG_TAG_BUFFER_BUDGET").as_deref(),
        Some("134217728")
    );
    assert_eq!(res(&s, "requests", "cpu").as_deref(), Some("100m"));
    assert_eq!(res(&s, "limits", "cpu").as_deref(), Some("1"));
    assert_eq!(res(&s, "requests", "memory").as_deref(), Some("64Mi"));
    assert_eq!(res(&s, "limits", "memory").as_deref(), Some("256Mi"));
    // 45 s of drain + the margin is above the default 30 s.
    assert_eq!(
        p.spec.unwrap().termination_grace_period_seconds,
        Some(45 + GRACE_MARGIN_SECONDS)
    );
}

#[test]
fn no_annotations_change_nothing() {
    let (p, bad) = tuned(json!({}));
    assert_eq!(bad, []);
    let s = side(&p);
    for name in [
        "SAMETAG_UPSTREAM_TIMEOUT",
        "SAMETAG_DRAIN_TIMEOUT",
        "RUST_LOG",
        "SAMETAG_MAX_BODY_BYTES",
        "SAMETAG_TAG_BUFFER_BUDGET",
    ] {
        assert_eq!(env(&s, name), None, "{name}");
    }
    assert_eq!(res(&s, "limits", "memory").as_deref(), Some("128Mi"));
    assert_eq!(p.spec.unwrap().termination_grace_period_seconds, None);
}

#[test]
fn invalid_values_are_left_out_with_a_reason() {
    let (p, bad) = tuned(json!({
        "config.sametag.dev/upstream-timeout": "5 parsecs",
        "config.sametag.dev/drain-timeout": "2h",
        "config.sametag.dev/log-level": "verbose",
        "config.sametag.dev/max-body-size": "2Gi",
        "config.sametag.dev/cpu-request": "-1",
        "config.sametag.dev/cpu-limit": "0",
        "config.sametag.dev/memory-request": "1e3",
        "config.sametag.dev/memory-limit": "lots",
        "config.sametag.dev/upstream-timout": "5s",
    }));
    assert_eq!(
        keys(&bad),
        [
            "config.sametag.dev/cpu-limit",
            "config.sametag.dev/cpu-request",
            "config.sametag.dev/drain-timeout",
            "config.sametag.dev/log-level",
            "config.sametag.dev/max-body-size",
            "config.sametag.dev/memory-limit",
            "config.sametag.dev/memory-request",
            "config.sametag.dev/upstream-timeout",
            "config.sametag.dev/upstream-timout",
        ]
    );
    let why = |k: &str| bad.iter().find(|b| b.key.ends_with(k)).unwrap().why.clone();
    assert!(why("/upstream-timeout").contains("invalid duration `5 parsecs`"));
    assert!(why("/drain-timeout").contains("at most 1h"));
    assert!(why("/log-level").contains("`verbose` is not a level"));
    assert!(why("/max-body-size").contains("between 1 and 1Gi"));
    assert!(why("/cpu-limit").contains("more than 0"));
    assert!(why("/upstream-timout").contains("unknown setting; known: upstream-timeout"));
    assert_eq!(
        bad[0].to_string(),
        "annotation config.sametag.dev/cpu-limit=\"0\" ignored (the default applies): a limit must be more than 0"
    );
    // The sidecar keeps every default.
    let s = side(&p);
    assert_eq!(env(&s, "SAMETAG_UPSTREAM_TIMEOUT"), None);
    assert_eq!(env(&s, "RUST_LOG"), None);
    assert_eq!(res(&s, "requests", "cpu").as_deref(), Some("50m"));
    assert_eq!(res(&s, "limits", "memory").as_deref(), Some("128Mi"));
    assert_eq!(p.spec.unwrap().termination_grace_period_seconds, None);
}

#[test]
fn a_request_above_its_limit_is_refused_not_sent_to_the_apiserver() {
    // Above the default 128Mi limit: the request is refused, the limit stays.
    let (p, bad) = tuned(json!({"config.sametag.dev/memory-request": "256Mi"}));
    assert_eq!(keys(&bad), ["config.sametag.dev/memory-request"]);
    assert!(
        bad[0].why.contains("exceed the memory limit 128Mi"),
        "{bad:?}"
    );
    let s = side(&p);
    assert_eq!(res(&s, "requests", "memory").as_deref(), Some("32Mi"));
    assert_eq!(res(&s, "limits", "memory").as_deref(), Some("128Mi"));

    // Below the default 50m request: the limit is refused.
    let (p, bad) = tuned(json!({"config.sametag.dev/cpu-limit": "10m"}));
    assert_eq!(keys(&bad), ["config.sametag.dev/cpu-limit"]);
    let s = side(&p);
    assert_eq!(res(&s, "limits", "cpu"), None);
    assert_eq!(res(&s, "requests", "cpu").as_deref(), Some("50m"));

    // Both annotated and crossed: the request goes, the limit applies (and
    // sizes the tag buffer budget).
    let (p, bad) = tuned(json!({"config.sametag.dev/memory-request": "1Gi",
                                "config.sametag.dev/memory-limit": "512Mi"}));
    assert_eq!(keys(&bad), ["config.sametag.dev/memory-request"]);
    let s = side(&p);
    assert_eq!(res(&s, "requests", "memory").as_deref(), Some("32Mi"));
    assert_eq!(res(&s, "limits", "memory").as_deref(), Some("512Mi"));
    assert_eq!(
        env(&s, "SAMETAG_TAG_BUFFER_BUDGET").as_deref(),
        Some("268435456")
    );

    // A limit under the store's request and an annotated request above it:
    // the request goes first, then the limit still fits or goes too.
    let (p, bad) = tuned(json!({"config.sametag.dev/memory-request": "64Mi",
                                "config.sametag.dev/memory-limit": "16Mi"}));
    assert_eq!(
        keys(&bad),
        [
            "config.sametag.dev/memory-request",
            "config.sametag.dev/memory-limit"
        ]
    );
    let s = side(&p);
    assert_eq!(res(&s, "requests", "memory").as_deref(), Some("32Mi"));
    assert_eq!(res(&s, "limits", "memory").as_deref(), Some("128Mi"));
    assert_eq!(env(&s, "SAMETAG_TAG_BUFFER_BUDGET"), None);

    // Raising both together works.
    let (p, bad) = tuned(json!({"config.sametag.dev/memory-request": "1Gi",
                                "config.sametag.dev/memory-limit": "1Gi"}));
    assert_eq!(bad, []);
    assert_eq!(res(&side(&p), "requests", "memory").as_deref(), Some("1Gi"));
}

#[test]
fn drain_timeout_only_raises_the_grace_period() {
    let grace = |g: Option<i64>, drain: &str| {
        let mut p = pod(json!({"config.sametag.dev/drain-timeout": drain}));
        p.spec.as_mut().unwrap().termination_grace_period_seconds = g;
        let (out, bad) =
            inject_tuned(&p, "shop", &fixtures::managed(), &InjectConfig::default()).unwrap();
        assert_eq!(bad, []);
        out.spec.unwrap().termination_grace_period_seconds
    };
    // Default 30 s covers 10 s + margin: untouched.
    assert_eq!(grace(None, "10s"), None);
    assert_eq!(grace(None, "25s"), None);
    assert_eq!(grace(None, "26s"), Some(31));
    // A longer period the user chose is kept; a shorter one raised.
    assert_eq!(grace(Some(120), "60s"), Some(120));
    assert_eq!(grace(Some(10), "10s"), Some(15));
    // Sub-second drains round up.
    assert_eq!(grace(Some(0), "1500ms"), Some(7));
}

#[test]
fn quantities_follow_the_apiserver_or_stricter() {
    assert_eq!(quantity("1"), Ok(NANO));
    assert_eq!(quantity("100m"), Ok(NANO / 10));
    assert_eq!(quantity("0.5"), Ok(NANO / 2));
    assert_eq!(quantity("1.5Gi"), Ok(NANO * 3 * (1 << 29)));
    assert_eq!(quantity("2k"), Ok(NANO * 2000));
    assert!(quantity("512Mi").unwrap() > quantity("500M").unwrap());
    assert!(quantity("1Gi").unwrap() > quantity("1G").unwrap());
    for bad in [
        "",
        "-1",
        "+1",
        "1e3",
        "1.",
        ".5",
        "1..2",
        "1 Gi",
        "1gi",
        "1Kb",
        "lots",
        "0x10",
        "99999999999999999999999999999Ei",
    ] {
        assert!(quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn already_injected_pods_get_no_warnings() {
    let (p, _) = tuned(json!({"config.sametag.dev/log-level": "debug"}));
    let mut again = p.clone();
    again
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("config.sametag.dev/cpu-limit".into(), "nonsense".into());
    let (out, bad) = inject_tuned(
        &again,
        "shop",
        &fixtures::managed(),
        &InjectConfig::default(),
    )
    .unwrap();
    assert_eq!(bad, []);
    assert_eq!(out, again);
}

#[test]
fn readme_documents_every_annotation() {
    let readme = include_str!("../../../README.md");
    for a in ANNOTATIONS {
        assert!(readme.contains(&format!("`{a}`")), "README lacks {a}");
    }
}
