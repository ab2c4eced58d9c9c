//! Scenarios 11-13: no silent mixed fleets and safe defaults, on the real
//! apiserver.
//! - 11: an opted-in pod admitted while the webhook is down, and one with an
//!   outdated sidecar image, show in the store's status (`optedInPods`,
//!   `injectedPods`, `SidecarsInjected`), in `kubectl get ets`, as a Warning
//!   Event and in `sametag_pods_without_sidecar`; a Service with a numeric
//!   `targetPort` gets a Warning Event.
//! - 12: a pre-existing `<store>-redis` Secret the store does not own is
//!   left alone and reported; once it is gone the store makes its own.
//! - 13: a namespaced install (`watchNamespaces`) gets Roles only in those
//!   namespaces: `kubectl auth can-i` denies Secrets and Pods elsewhere, and
//!   an operator with exactly those rights reconciles its namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use sametag_k8s_e2e::ets::{
    condition, create_namespace, etagstore, etagstores, status_summary, wait_condition,
};
use sametag_k8s_e2e::operator::{Operator, http_get, sa_kubeconfig};
use sametag_k8s_e2e::tools::Tools;
use sametag_k8s_e2e::{Error, Result, wait};
use serde_json::json;

use crate::ctx::Ctx;
use crate::injection::{check_injected, check_untouched, create_pod, store};

const NS: &str = "e2e-fleet";
const WAIT: Duration = Duration::from_secs(60);

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// Wait until `web`'s SidecarsInjected has `status` and `reason`, and the
/// `injected` column reads `summary`; returns the condition's message.
async fn wait_fleet(ctx: &Ctx, status: &str, reason: &str, summary: &str) -> Result<String> {
    let api = etagstores(&ctx.admin, NS);
    wait::until(
        &format!("{NS}/web SidecarsInjected={status}/{reason}, injected {summary}"),
        WAIT,
        || {
            let api = api.clone();
            async move {
                let obj = api.get("web").await?;
                let c = condition(&obj, "SidecarsInjected");
                let got = obj.data["status"]["injected"].as_str().unwrap_or_default();
                match c {
                    Some((s, r, m)) if s == status && r == reason && got == summary => Ok(Some(m)),
                    _ => Err(err(status_summary(&obj))),
                }
            }
        },
    )
    .await
}

/// A Warning Event with `reason` regarding `kind`/`name` in `ns`; its note.
async fn wait_event(ctx: &Ctx, ns: &str, reason: &str, kind: &str, name: &str) -> Result<String> {
    let events: Api<Event> = Api::namespaced(ctx.admin.clone(), ns);
    wait::until(
        &format!("a Warning Event {reason} on {kind} {ns}/{name}"),
        WAIT,
        || {
            let events = events.clone();
            async move {
                let found = events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.type_.as_deref() == Some("Warning")
                            && e.regarding.as_ref().is_some_and(|r| {
                                r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                            })
                    });
                Ok(found.map(|e| e.note.unwrap_or_default()))
            }
        },
    )
    .await
}

async fn metric(ctx: &Ctx, line_start: &str) -> Result<String> {
    let port = ctx.op_config.metrics_port;
    let (_, body) = http_get(port, "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_owned)
        .ok_or_else(|| err(format!("no {line_start} in /metrics")))
}

fn opted_in() -> serde_json::Value {
    json!({ "sametag.dev/inject": "true", "sametag.dev/store": "web" })
}

/// Scenario 11.
pub async fn mixed_fleet(ctx: &mut Ctx) -> Result<()> {
    ctx.require_operator()?;
    store(ctx, NS, &[]).await?;
    check_injected(&create_pod(ctx, NS, "a", opted_in()).await?)?;
    let m = wait_fleet(ctx, "True", "AllInjected", "1/1").await?;
    if !m.contains("1/1") {
        return Err(err(format!("AllInjected message: {m}")));
    }

    // The webhook is down while `b` is created: it runs without the sidecar.
    ctx.stop_operator();
    let b = create_pod(ctx, NS, "b", opted_in()).await;
    ctx.start_operator().await?;
    check_untouched(&b?)?;
    let m = wait_fleet(ctx, "False", "PodsWithoutSidecar", "1/2").await?;
    if !m.contains("1 of 2") || !m.contains(": b;") {
        return Err(err(format!("PodsWithoutSidecar message: {m}")));
    }
    let obj = etagstores(&ctx.admin, NS).get("web").await?;
    let counts = (
        obj.data["status"]["optedInPods"].as_i64(),
        obj.data["status"]["injectedPods"].as_i64(),
    );
    if counts != (Some(2), Some(1)) {
        return Err(err(format!("optedInPods/injectedPods: {counts:?}")));
    }
    let note = wait_event(ctx, NS, "PodsWithoutSidecar", "ETagStore", "web").await?;
    if !note.contains(": b;") {
        return Err(err(format!("Event note: {note}")));
    }
    let line = metric(
        ctx,
        &format!("sametag_pods_without_sidecar{{namespace=\"{NS}\",store=\"web\"}}"),
    )
    .await?;
    if !line.ends_with(" 1") {
        return Err(err(format!("metric: {line}")));
    }
    // kubectl get ets shows it.
    let table = ctx.tools.kubectl(["get", "ets", "-n", NS]).await?;
    let header = table.lines().next().unwrap_or_default();
    let row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    if !header.contains("INJECTED") || !row.contains(" 1/2 ") {
        return Err(err(format!("kubectl get ets:\n{table}")));
    }
    let wide = ctx
        .tools
        .kubectl(["get", "ets", "-n", NS, "-o", "wide"])
        .await?;
    if !wide.contains("SIDECARS") || !wide.contains("PodsWithoutSidecar") {
        return Err(err(format!("kubectl get ets -o wide:\n{wide}")));
    }

    // A Service that targets the app's port by number bypasses the sidecar.
    let services: Api<Service> = Api::namespaced(ctx.admin.clone(), NS);
    for (name, target) in [("numeric", json!(8080)), ("named", json!("http"))] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "selector": { "e2e": "injection" },
                      "ports": [{ "name": "web", "port": 80, "targetPort": target }] },
        }))
        .map_err(|e| err(e.to_string()))?;
        services.create(&PostParams::default(), &svc).await?;
    }
    let note = wait_event(ctx, NS, "ServiceBypassesSidecar", "Service", "numeric").await?;
    if !note.contains("8080") {
        return Err(err(format!("bypass note: {note}")));
    }
    wait_event(ctx, NS, "ServiceBypassesSidecar", "ETagStore", "web").await?;
    let events: Api<Event> = Api::namespaced(ctx.admin.clone(), NS);
    let about_named = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("ServiceBypassesSidecar")
                && e.regarding.and_then(|r| r.name).as_deref() == Some("named")
        });
    if about_named {
        return Err(err("a Service targeting the port by name was warned about"));
    }

    // `b` is recreated (gone here); a new sidecar image makes `a` outdated.
    let pods: Api<Pod> = Api::namespaced(ctx.admin.clone(), NS);
    pods.delete("b", &DeleteParams::default().grace_period(0))
        .await?;
    etagstores(&ctx.admin, NS)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "sidecar": { "image": "registry.example/sidecar:new" } } }),
            ),
        )
        .await?;
    let m = wait_fleet(ctx, "False", "OutdatedSidecar", "1/1").await?;
    if !m.contains("a (") || !m.contains("registry.example/sidecar:new") {
        return Err(err(format!("OutdatedSidecar message: {m}")));
    }
    let line = metric(
        ctx,
        &format!("sametag_pods_outdated_sidecar{{namespace=\"{NS}\",store=\"web\"}}"),
    )
    .await?;
    if !line.ends_with(" 1") {
        return Err(err(format!("metric: {line}")));
    }
    Ok(())
}

const FOREIGN_NS: &str = "e2e-foreign";

/// Scenario 12.
pub async fn foreign_child(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    create_namespace(&ctx.admin, FOREIGN_NS, &[]).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), FOREIGN_NS);
    let mine = Secret {
        metadata: ObjectMeta {
            name: Some("web-redis".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_owned(),
            ByteString(b"someone-elses".to_vec()),
        )])),
        ..Default::default()
    };
    let before = secrets.create(&PostParams::default(), &mine).await?;
    let api = etagstores(&ctx.admin, FOREIGN_NS);
    api.create(
        &PostParams::default(),
        &etagstore("web", json!({ "redis": { "managed": {} } }))?,
    )
    .await?;
    let obj = wait_condition(&api, "web", "Degraded", "True", WAIT).await?;
    let (_, reason, message) = condition(&obj, "Degraded").unwrap_or_default();
    if reason != "ChildNotOwned" || !message.contains(&format!("Secret {FOREIGN_NS}/web-redis")) {
        return Err(err(format!("Degraded: {reason}: {message}")));
    }
    wait_event(ctx, FOREIGN_NS, "ChildNotOwned", "ETagStore", "web").await?;
    let after = secrets.get("web-redis").await?;
    if after.data != before.data
        || !after.owner_references().is_empty()
        || after.resource_version() != before.resource_version()
    {
        return Err(err("the foreign Secret was modified"));
    }
    let sts: Api<StatefulSet> = Api::namespaced(ctx.admin.clone(), FOREIGN_NS);
    if sts.get_opt("web-redis").await?.is_some() {
        return Err(err("a StatefulSet was created despite the foreign Secret"));
    }
    // Once the name is free, the store makes its own (within seconds: the
    // Secret's deletion wakes it).
    secrets
        .delete("web-redis", &DeleteParams::default())
        .await?;
    let uid = obj.uid().unwrap_or_default();
    wait::until(
        "the store's own web-redis Secret",
        Duration::from_secs(30),
        || {
            let secrets = secrets.clone();
            let uid = uid.clone();
            async move {
                let s = secrets.get_opt("web-redis").await?;
                Ok(
                    s.filter(|s| s.owner_references().iter().any(|o| o.uid == uid))
                        .map(|_| ()),
                )
            }
        },
    )
    .await?;
    wait_condition(&api, "web", "Degraded", "False", WAIT).await?;
    let _ = api.delete("web", &DeleteParams::default()).await;
    Ok(())
}

const NSOP_RELEASE: &str = "nsop";
const NSOP_NS: &str = "e2e-nsop-system";
const NSOP_SA: &str = "nsop-sametag";
const WATCHED: &str = "e2e-nsop-a";
const OTHER: &str = "e2e-nsop-b";

/// `kubectl auth can-i ... --as <the namespaced operator>`.
async fn can_i(ctx: &Ctx, args: &[&str]) -> Result<bool> {
    let who = format!("--as=system:serviceaccount:{NSOP_NS}:{NSOP_SA}");
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    full.push(&who);
    match ctx.tools.kubectl(&full).await {
        Ok(out) if out.trim() == "yes" => Ok(true),
        Ok(out) => Err(err(format!("kubectl auth can-i {args:?}: {out}"))),
        Err(Error::Command { output, .. }) if output.trim_start().starts_with("no") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Scenario 13. The cluster-wide operator is stopped meanwhile, so only
/// the namespaced one can reconcile.
pub async fn namespaced_install(ctx: &mut Ctx) -> Result<()> {
    ctx.stop_operator();
    let result = namespaced(ctx).await;
    for ns in [WATCHED, OTHER] {
        let _ = etagstores(&ctx.admin, ns)
            .delete("web", &DeleteParams::default())
            .await;
    }
    ctx.start_operator().await?;
    result
}

async fn namespaced(ctx: &Ctx) -> Result<()> {
    for ns in [WATCHED, OTHER] {
        create_namespace(&ctx.admin, ns, &[]).await?;
    }
    let chart = Tools::chart_dir();
    ctx.tools
        .helm([
            "install",
            NSOP_RELEASE,
            chart.to_str().unwrap_or_default(),
            "--namespace",
            NSOP_NS,
            "--create-namespace",
            // The first release owns the (templated) CRD.
            "--set",
            "crds.install=false",
            "--set",
            &format!("watchNamespaces={{{WATCHED}}}"),
            "--set",
            "webhook.enabled=false",
        ])
        .await?;
    let result = namespaced_checks(ctx).await;
    let _ = ctx
        .tools
        .helm(["uninstall", NSOP_RELEASE, "--namespace", NSOP_NS, "--wait"])
        .await;
    result
}

async fn namespaced_checks(ctx: &Ctx) -> Result<()> {
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "-n", OTHER],
        &["list", "pods", "-n", OTHER],
        &["list", "etagstores.sametag.dev", "--all-namespaces"],
        &["list", "secrets", "--all-namespaces"],
        &["list", "namespaces"],
        &["get", &format!("namespaces/{OTHER}")],
        &["patch", "mutatingwebhookconfigurations/sametag"],
    ];
    let allowed: &[&[&str]] = &[
        &["list", "pods", "-n", WATCHED],
        &["watch", "pods", "-n", WATCHED],
        &["get", "secrets", "-n", WATCHED],
        &["list", "etagstores.sametag.dev", "-n", WATCHED],
        &[
            "patch",
            "etagstores.sametag.dev",
            "--subresource=status",
            "-n",
            WATCHED,
        ],
        &["get", &format!("namespaces/{WATCHED}")],
        &["create", "leases.coordination.k8s.io", "-n", NSOP_NS],
    ];
    for args in denied {
        if can_i(ctx, args).await? {
            return Err(err(format!("the namespaced operator can {args:?}")));
        }
    }
    for args in allowed {
        if !can_i(ctx, args).await? {
            return Err(err(format!("the namespaced operator cannot {args:?}")));
        }
    }

    // An operator with exactly those rights serves its namespace (its
    // webhook caches, the pod survey, the store's children) and leaves the
    // other alone.
    let mut cfg = ctx.op_config.replica("nsop-operator", ctx.cp.dir.path())?;
    cfg.kubeconfig = ctx.cp.dir.path().join("nsop-sa.kubeconfig");
    cfg.namespace = NSOP_NS.into();
    cfg.fullname = "nsop-sametag".into();
    cfg.extra_args = vec![format!("--watch-namespace={WATCHED}")];
    sa_kubeconfig(&ctx.admin, &ctx.cp.info, NSOP_NS, NSOP_SA, &cfg.kubeconfig).await?;
    let op = Operator::start(cfg).await?;
    let result = async {
        for ns in [WATCHED, OTHER] {
            etagstores(&ctx.admin, ns)
                .create(
                    &PostParams::default(),
                    &etagstore("web", json!({ "redis": { "managed": {} } }))?,
                )
                .await?;
        }
        let api = etagstores(&ctx.admin, WATCHED);
        let obj = wait_condition(&api, "web", "Progressing", "True", WAIT).await?;
        if obj.data["status"]["injected"] != "0/0" {
            return Err(err(format!("status: {}", status_summary(&obj))));
        }
        let sts: Api<StatefulSet> = Api::namespaced(ctx.admin.clone(), WATCHED);
        sts.get("web-redis").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let other = etagstores(&ctx.admin, OTHER).get("web").await?;
        if !other.data["status"].is_null() {
            return Err(err(format!(
                "a store outside watchNamespaces was reconciled: {}",
                status_summary(&other)
            )));
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("namespaced operator log:\n{}", op.log_tail(30));
    }
    drop(op);
    result
}
