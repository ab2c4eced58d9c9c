//! Scenario 1: `helm install`, `helm upgrade`, `helm uninstall` of the chart.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use sametag_k8s_e2e::tools::Tools;
use sametag_k8s_e2e::{Error, Result, wait};

use crate::ctx::{Ctx, NAMESPACE, RELEASE};

const CRD: &str = "etagstores.sametag.dev";

fn check(ok: bool, what: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Other(what.into()))
    }
}

/// helm install (webhook.url = the local operator) → the CRD is Established,
/// and the Deployment, ServiceAccount, RBAC and webhook configuration exist.
pub async fn install(ctx: &Ctx) -> Result<()> {
    let chart = Tools::chart_dir();
    let url = ctx.op_config.webhook_url();
    ctx.tools
        .helm([
            "install",
            RELEASE,
            chart.to_str().unwrap_or_default(),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            &format!("webhook.url={url}"),
        ])
        .await?;

    let crds: Api<CustomResourceDefinition> = Api::all(ctx.admin.clone());
    wait::until(
        "CRD etagstores.sametag.dev Established",
        Duration::from_secs(30),
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get(CRD).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            }
        },
    )
    .await?;

    let deps: Api<Deployment> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let dep = deps.get(RELEASE).await?;
    let labels = dep.metadata.labels.unwrap_or_default();
    check(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("Helm"),
        "managed-by label",
    )?;
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    sas.get(RELEASE).await?;
    Api::<ClusterRole>::all(ctx.admin.clone())
        .get(&format!("{RELEASE}-operator"))
        .await?;
    Api::<Role>::namespaced(ctx.admin.clone(), NAMESPACE)
        .get(&format!("{RELEASE}-operator"))
        .await?;
    let mwc = Api::<MutatingWebhookConfiguration>::all(ctx.admin.clone())
        .get(RELEASE)
        .await?;
    let hooks = mwc.webhooks.unwrap_or_default();
    check(hooks.len() == 2, format!("2 webhooks, got {}", hooks.len()))?;
    for h in &hooks {
        check(
            h.client_config.url.as_deref() == Some(url.as_str()),
            format!("{} url", h.name),
        )?;
        check(
            h.failure_policy.as_deref() == Some("Ignore"),
            format!("{} failurePolicy", h.name),
        )?;
    }
    // The Deployment controller turned the operator Deployment into a ReplicaSet.
    let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(ctx.admin.clone(), NAMESPACE);
    wait::until(
        "the operator Deployment's ReplicaSet",
        Duration::from_secs(30),
        || {
            let rs = rs.clone();
            async move { Ok((!rs.list(&Default::default()).await?.items.is_empty()).then_some(())) }
        },
    )
    .await?;
    // kubectl sees the new resource with its short name.
    let out = ctx
        .tools
        .kubectl(["api-resources", "--api-group=sametag.dev"])
        .await?;
    check(
        out.contains("etagstores") && out.contains("ets"),
        format!("kubectl api-resources: {out}"),
    )
}

/// helm upgrade with a changed value → the webhook configuration follows,
/// the release is at revision 2, and the operator's caBundle survives.
pub async fn upgrade(ctx: &Ctx) -> Result<()> {
    let chart = Tools::chart_dir();
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(ctx.admin.clone());
    let before = mwcs.get(RELEASE).await?;
    let ca_before: Vec<_> = before
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.client_config.ca_bundle)
        .collect();
    ctx.tools
        .helm([
            "upgrade",
            RELEASE,
            chart.to_str().unwrap_or_default(),
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "webhook.timeoutSeconds=3",
        ])
        .await?;
    let after = mwcs.get(RELEASE).await?;
    let hooks = after.webhooks.unwrap_or_default();
    for h in &hooks {
        check(
            h.timeout_seconds == Some(3),
            format!("{} timeoutSeconds {:?}", h.name, h.timeout_seconds),
        )?;
    }
    let ca_after: Vec<_> = hooks
        .into_iter()
        .map(|h| h.client_config.ca_bundle)
        .collect();
    check(
        ca_after == ca_before,
        "helm upgrade dropped the caBundle the operator patched in",
    )?;
    let status = ctx
        .tools
        .helm(["status", RELEASE, "--namespace", NAMESPACE, "-o", "json"])
        .await?;
    let v: serde_json::Value =
        serde_json::from_str(&status).map_err(|e| Error::Other(e.to_string()))?;
    check(
        v["version"] == 2,
        format!("release revision {}", v["version"]),
    )?;
    check(
        v["info"]["status"] == "deployed",
        format!("release status {}", v["info"]["status"]),
    )
}

/// helm uninstall → operator objects and the webhook configuration are gone,
/// and with the configuration the garbage collector deletes the Secret and
/// Lease the operator made; the CRD stays (helm never deletes crds/ CRDs, so
/// no ETagStore is lost).
pub async fn uninstall(ctx: &mut Ctx) -> Result<()> {
    ctx.stop_operator();
    ctx.tools
        .helm(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])
        .await?;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(ctx.admin.clone());
    check(
        mwcs.get_opt(RELEASE).await?.is_none(),
        "MutatingWebhookConfiguration left behind",
    )?;
    let deps: Api<Deployment> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    check(
        deps.get_opt(RELEASE).await?.is_none(),
        "Deployment left behind",
    )?;
    let crs: Api<ClusterRole> = Api::all(ctx.admin.clone());
    check(
        crs.get_opt(&format!("{RELEASE}-operator")).await?.is_none(),
        "ClusterRole left behind",
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.admin.clone());
    check(
        crds.get_opt(CRD).await?.is_some(),
        "the CRD must survive helm uninstall",
    )?;
    crate::owned::collected_with_the_configuration(ctx).await
}
