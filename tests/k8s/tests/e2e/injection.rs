//! Scenarios 5 and 6: the mutating webhook, reached by the real apiserver
//! through the chart's MutatingWebhookConfiguration.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use sametag_k8s_e2e::ets::{create_namespace, etagstore, etagstores, wait_condition};
use sametag_k8s_e2e::{Error, Result, wait};
use serde_json::json;

use crate::ctx::Ctx;

/// Not labelled: pods opt in with the annotation.
pub const NS: &str = "e2e-inject";
/// Labelled sametag.dev/inject=enabled: every pod is in unless it opts out.
pub const NS_LABELLED: &str = "e2e-nsopt";
const WAIT: Duration = Duration::from_secs(60);

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// A Ready external store `web` (and its Secret) in `ns`.
pub(crate) async fn store(ctx: &Ctx, ns: &str, labels: &[(&str, &str)]) -> Result<()> {
    create_namespace(&ctx.admin, ns, labels).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("redis-pass".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(b"pw".to_vec()),
        )])),
        ..Default::default()
    };
    if secrets.get_opt("redis-pass").await?.is_none() {
        secrets.create(&PostParams::default(), &secret).await?;
    }
    let api = etagstores(&ctx.admin, ns);
    if api.get_opt("web").await?.is_none() {
        let obj = etagstore(
            "web",
            json!({ "redis": { "external": { "url": ctx.redis_url(), "secretRef": { "name": "redis-pass" } } } }),
        )?;
        api.create(&PostParams::default(), &obj).await?;
    }
    wait_condition(&api, "web", "Ready", "True", WAIT)
        .await
        .map(|_| ())
}

/// The app container every test pod starts with.
fn app_container() -> serde_json::Value {
    json!({
        "name": "app",
        "image": "registry.example/app:1",
        "ports": [{ "name": "http", "containerPort": 8080 }],
        "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" } },
    })
}

fn pod(name: &str, annotations: serde_json::Value) -> Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations, "labels": { "e2e": "injection" } },
        "spec": { "containers": [app_container()] },
    }))
    .map_err(|e| err(format!("pod object: {e}")))
}

/// Create a pod and return what the apiserver stored (after admission).
pub(crate) async fn create_pod(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    annotations: serde_json::Value,
) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(ctx.admin.clone(), ns);
    Ok(pods
        .create(&PostParams::default(), &pod(name, annotations)?)
        .await?)
}

fn sidecars(pod: &Pod) -> Vec<&Container> {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|v| {
            v.iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .collect()
        })
        .unwrap_or_default()
}

fn describe(pod: &Pod) -> String {
    serde_json::to_string(&pod.spec).unwrap_or_default()
}

/// Everything the design says an injected pod carries.
pub(crate) fn check_injected(pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let side = sidecars(pod);
    let [sc] = side.as_slice() else {
        return Err(err(format!(
            "{name}: expected exactly one native sidecar, got {}: {}",
            side.len(),
            describe(pod)
        )));
    };
    let spec = pod.spec.as_ref().ok_or_else(|| err("no spec"))?;
    let env = sc.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.name.starts_with("SAMETAG_")) {
        return Err(err(format!("{name}: sidecar has no SAMETAG_* env")));
    }
    if !env.iter().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some()
    }) {
        return Err(err(format!(
            "{name}: sidecar env takes nothing from the store's Secret"
        )));
    }
    let upstream = env
        .iter()
        .find(|e| e.name == "SAMETAG_UPSTREAM")
        .and_then(|e| e.value.clone());
    if !upstream.as_deref().is_some_and(|u| u.ends_with(":8080")) {
        return Err(err(format!(
            "{name}: SAMETAG_UPSTREAM should point at the app's port 8080, got {upstream:?}"
        )));
    }
    // Deleting the ETagStore must never strand the pod: every reference to
    // its objects is optional, so a restarting sidecar still starts.
    let strict_env: Vec<&str> = env
        .iter()
        .filter(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .is_some_and(|r| r.optional != Some(true))
        })
        .map(|e| e.name.as_str())
        .collect();
    let strict_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.optional != Some(true))
                || v.secret.as_ref().is_some_and(|s| s.optional != Some(true))
        })
        .map(|v| v.name.as_str())
        .collect();
    if !strict_env.is_empty() || !strict_volumes.is_empty() {
        return Err(err(format!(
            "{name}: references that would strand the pod without its store: env {strict_env:?}, volumes {strict_volumes:?}"
        )));
    }
    if !env
        .iter()
        .any(|e| e.name == "SAMETAG_POLICY_OPTIONAL" && e.value.as_deref() == Some("true"))
    {
        return Err(err(format!("{name}: SAMETAG_POLICY_OPTIONAL not set")));
    }
    let mounts = sc.volume_mounts.clone().unwrap_or_default();
    let volumes = spec.volumes.clone().unwrap_or_default();
    let policy_mounted = mounts.iter().any(|m| {
        volumes
            .iter()
            .any(|v| v.name == m.name && v.config_map.is_some())
    });
    if !policy_mounted {
        return Err(err(format!(
            "{name}: no policy ConfigMap mounted into the sidecar"
        )));
    }
    if sc.readiness_probe.is_none() || (sc.liveness_probe.is_none() && sc.startup_probe.is_none()) {
        return Err(err(format!("{name}: sidecar probes missing")));
    }
    let sec = sc.security_context.clone().unwrap_or_default();
    if sec.allow_privilege_escalation != Some(false) || sec.run_as_non_root != Some(true) {
        return Err(err(format!(
            "{name}: sidecar security context is not restricted: {sec:?}"
        )));
    }
    // Port swap: Services targeting the name "http" now reach the sidecar.
    let has_http = |c: &Container| {
        c.ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("http"))
    };
    if !has_http(sc) {
        return Err(err(format!(
            "{name}: the sidecar did not take over the port name \"http\""
        )));
    }
    let app = spec
        .containers
        .iter()
        .find(|c| c.name == "app")
        .ok_or_else(|| err("app container gone"))?;
    if has_http(app) {
        return Err(err(format!(
            "{name}: the app still declares the port name \"http\""
        )));
    }
    // The app's own probe must still reach the app, not the sidecar.
    if let Some(port) = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|h| h.port.clone())
    {
        let ok = match &port {
            IntOrString::Int(n) => *n == 8080,
            IntOrString::String(s) => app
                .ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some(s)),
        };
        if !ok {
            return Err(err(format!(
                "{name}: the app's readiness probe now targets {port:?}"
            )));
        }
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.get("sametag.dev/store").map(String::as_str) != Some("web") {
        return Err(err(format!(
            "{name}: missing label sametag.dev/store=web: {labels:?}"
        )));
    }
    Ok(())
}

pub(crate) fn check_untouched(pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or_else(|| err("no spec"))?;
    if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) || spec.containers.len() != 1 {
        return Err(err(format!(
            "{name}: should be untouched: {}",
            describe(pod)
        )));
    }
    let app = &spec.containers[0];
    let port_ok = app
        .ports
        .iter()
        .flatten()
        .any(|p| p.name.as_deref() == Some("http") && p.container_port == 8080);
    let env_ok = app.env.as_ref().is_none_or(|e| e.is_empty());
    if !port_ok || !env_ok {
        return Err(err(format!(
            "{name}: the app container was modified: {app:?}"
        )));
    }
    Ok(())
}

/// Drop the ServiceAccount admission plugin's token volume (random name),
/// which it adds on every create, so two admissions can be compared.
fn without_token_volume(pod: &Pod) -> serde_json::Value {
    let mut spec = pod.spec.clone().unwrap_or_default();
    let is_token = |n: &str| n.starts_with("kube-api-access-");
    if let Some(v) = spec.volumes.as_mut() {
        v.retain(|v| !is_token(&v.name));
    }
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if let Some(m) = c.volume_mounts.as_mut() {
            m.retain(|m| !is_token(&m.name));
            if m.is_empty() {
                c.volume_mounts = None;
            }
        }
    }
    json!({ "containers": spec.containers, "initContainers": spec.init_containers, "volumes": spec.volumes })
}

pub async fn injects(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    store(ctx, NS, &[]).await?;
    store(ctx, NS_LABELLED, &[("sametag.dev/inject", "enabled")]).await?;

    // An annotated Deployment: its ReplicaSet's Pods are injected.
    let deps: Api<Deployment> = Api::namespaced(ctx.admin.clone(), NS);
    let dep: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "shop" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "shop" } },
            "template": {
                "metadata": {
                    "labels": { "app": "shop" },
                    "annotations": { "sametag.dev/inject": "true", "sametag.dev/store": "web" },
                },
                "spec": { "containers": [app_container()] },
            },
        },
    }))
    .map_err(|e| err(e.to_string()))?;
    deps.create(&PostParams::default(), &dep).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.admin.clone(), NS);
    let shop = wait::until("2 Pods of the annotated Deployment", WAIT, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=shop"))
                .await?
                .items;
            Ok((list.len() == 2).then_some(list))
        }
    })
    .await?;
    for p in &shop {
        check_injected(p)?;
    }

    // Opt-outs and non-opted-in pods are untouched.
    check_untouched(&create_pod(ctx, NS, "plain", json!({})).await?)?;
    check_untouched(
        &create_pod(
            ctx,
            NS,
            "annotated-false",
            json!({ "sametag.dev/inject": "false" }),
        )
        .await?,
    )?;
    check_untouched(
        &create_pod(
            ctx,
            NS_LABELLED,
            "opted-out",
            json!({ "sametag.dev/inject": "false" }),
        )
        .await?,
    )?;
    // The namespace label opts unannotated pods in (the only store is used).
    let by_ns = create_pod(ctx, NS_LABELLED, "by-namespace", json!({})).await?;
    check_injected(&by_ns)?;

    // Re-admission is a no-op: an already injected spec comes back unchanged.
    let first = &shop[0];
    // Without the Deployment's selector labels: the ReplicaSet controller
    // would adopt the pod and delete it as a surplus replica.
    let mut labels = first.metadata.labels.clone().unwrap_or_default();
    labels.retain(|k, _| k != "app" && k != "pod-template-hash");
    let mut again = Pod {
        metadata: ObjectMeta {
            name: Some("readmitted".into()),
            labels: Some(labels),
            annotations: first.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: first.spec.clone(),
        ..Default::default()
    };
    if let Some(spec) = again.spec.as_mut() {
        // Let the ServiceAccount plugin add its (randomly named) token volume again.
        let stripped: Pod = serde_json::from_value(json!({ "spec": without_token_volume(first) }))
            .map_err(|e| err(e.to_string()))?;
        let s = stripped.spec.unwrap_or_default();
        spec.containers = s.containers;
        spec.init_containers = s.init_containers;
        spec.volumes = s.volumes;
    }
    let readmitted = pods.create(&PostParams::default(), &again).await?;
    check_injected(&readmitted)?;
    if without_token_volume(&readmitted) != without_token_volume(first) {
        return Err(err(format!(
            "re-admission changed the pod:\nbefore {}\nafter  {}",
            without_token_volume(first),
            without_token_volume(&readmitted)
        )));
    }

    // status.injectedPods counts them (2 from the Deployment + readmitted).
    let api = etagstores(&ctx.admin, NS);
    wait::until(
        "status.injectedPods of e2e-inject/web to reach 3",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            async move {
                let n = api.get("web").await?.data["status"]["injectedPods"]
                    .as_i64()
                    .unwrap_or(0);
                if n == 3 {
                    Ok(Some(()))
                } else {
                    Err(err(format!("injectedPods = {n}")))
                }
            }
        },
    )
    .await
}

/// With the operator stopped, an opted-in pod is still created
/// (failurePolicy: Ignore), without the sidecar.
pub async fn webhook_down(ctx: &mut Ctx) -> Result<()> {
    ctx.stop_operator();
    let started = std::time::Instant::now();
    let pod = create_pod(
        ctx,
        NS,
        "while-down",
        json!({ "sametag.dev/inject": "true", "sametag.dev/store": "web" }),
    )
    .await;
    let elapsed = started.elapsed();
    let result = pod.and_then(|p| check_untouched(&p));
    // Put the operator back for what follows, whatever happened.
    ctx.start_operator().await?;
    result?;
    if elapsed > Duration::from_secs(10) {
        return Err(err(format!(
            "pod creation took {elapsed:?} with the webhook down"
        )));
    }
    // And with the operator back, the same pod spec is injected again.
    let back = create_pod(
        ctx,
        NS,
        "after-restart",
        json!({ "sametag.dev/inject": "true", "sametag.dev/store": "web" }),
    )
    .await?;
    check_injected(&back)
}
