//! Scenario 1: `helm install`, `helm upgrade`, `helm uninstall` of the chart;
//! scenario 17: `helm upgrade` from the previous chart version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use sametag_k8s_e2e::ets::{create_namespace, etagstore, etagstores, wait_condition};
use sametag_k8s_e2e::tools::Tools;
use sametag_k8s_e2e::{Error, Result, repo_root, wait};

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
    // The CRD is the release's (templated, so upgrades apply it) and kept
    // on uninstall.
    let crd = crds.get(CRD).await?;
    check_release_crd(&crd)?;
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
/// Lease the operator made; the CRD stays (`helm.sh/resource-policy: keep`,
/// so no ETagStore is lost).
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
        "the CRD must survive helm uninstall (helm.sh/resource-policy: keep)",
    )?;
    crate::owned::collected_with_the_configuration(ctx).await
}

/// The chart version `helm upgrade` is tested from (scenario 17): the last
/// release's commit (0.1.0, before the CRD moved from crds/ to templates/).
/// After a release, point this at its tag. SAMETAG_PREVIOUS_CHART_REF
/// overrides it.
const PREVIOUS_CHART_REF: &str = "6817d7740dfa45a32899fd2cebfe66d404d1dbd2";

/// The CRD as this chart installs it: owned by the release (so `helm
/// upgrade` applies it) and annotated to survive uninstall.
fn check_release_crd(crd: &CustomResourceDefinition) -> Result<()> {
    let labels = crd.metadata.labels.clone().unwrap_or_default();
    let notes = crd.metadata.annotations.clone().unwrap_or_default();
    check(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("Helm")
            && notes.get("meta.helm.sh/release-name").map(String::as_str) == Some(RELEASE)
            && notes
                .get("meta.helm.sh/release-namespace")
                .map(String::as_str)
                == Some(NAMESPACE),
        format!("the CRD is not the release's: labels {labels:?}, annotations {notes:?}"),
    )?;
    check(
        notes.get("helm.sh/resource-policy").map(String::as_str) == Some("keep"),
        format!("the CRD lacks helm.sh/resource-policy: keep: {notes:?}"),
    )
}

/// The served schema of the CRD's first version, as JSON.
fn served_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default()
}

/// `path`'s CRD YAML, its first version's schema as JSON.
fn file_schema(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("read {}", path.display()),
        source,
    })?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    Ok(served_schema(&crd))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Run a local command (git, tar); fail with its output.
fn local(cmd: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(io_err(format!("run {cmd}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The chart as of `git_ref`, exported from this repository's history into
/// `dest`; returns the chart's directory.
fn export_chart(git_ref: &str, dest: &Path) -> Result<PathBuf> {
    let repo = repo_root();
    let repo = repo.to_str().unwrap_or_default();
    let tarball = dest.join("chart.tar");
    let tarball = tarball.to_str().unwrap_or_default();
    std::fs::create_dir_all(dest).map_err(io_err("create the export dir"))?;
    local(
        "git",
        &[
            "-C",
            repo,
            "cat-file",
            "-e",
            &format!("{git_ref}^{{commit}}"),
        ],
    )
    .map_err(|e| {
        Error::Other(format!(
            "the previous chart's commit {git_ref} is not in this checkout's history \
                 (scenario 17 needs a git clone, not an export or a shallow clone): {e}"
        ))
    })?;
    local(
        "git",
        &[
            "-C",
            repo,
            "archive",
            "-o",
            tarball,
            git_ref,
            "charts/sametag",
        ],
    )?;
    local(
        "tar",
        &["-xf", tarball, "-C", dest.to_str().unwrap_or_default()],
    )?;
    Ok(dest.join("charts/sametag"))
}

/// A copy of `src` (a chart directory) at `dest`.
fn copy_dir(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(io_err(format!("create {}", dest.display())))?;
    for entry in std::fs::read_dir(src).map_err(io_err(format!("read {}", src.display())))? {
        let entry = entry.map_err(io_err("read dir entry"))?;
        let to = dest.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)
                .map_err(io_err(format!("copy to {}", to.display())))?;
        }
    }
    Ok(())
}

/// This chart with one extra printer column in its CRD, at `dest`.
fn chart_with_changed_crd(dest: &Path, column: &str) -> Result<PathBuf> {
    copy_dir(&Tools::chart_dir(), dest)?;
    let dir = dest.join("files/crds");
    for entry in std::fs::read_dir(&dir).map_err(io_err("read files/crds"))? {
        let path = entry.map_err(io_err("read dir entry"))?.path();
        let text = std::fs::read_to_string(&path).map_err(io_err("read CRD"))?;
        let mut crd: serde_json::Value =
            serde_yaml_ng::from_str(&text).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(cols) = crd["spec"]["versions"][0]["additionalPrinterColumns"].as_array_mut() {
            cols.push(serde_json::json!({
                "name": column, "type": "string", "jsonPath": ".spec.policy.mode", "priority": 1,
            }));
        }
        let yaml = serde_yaml_ng::to_string(&crd).map_err(|e| Error::Other(e.to_string()))?;
        std::fs::write(&path, yaml).map_err(io_err("write CRD"))?;
    }
    Ok(dest.to_path_buf())
}

fn printer_columns(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

/// Scenario 11: `helm upgrade` from the previous chart version. The
/// previous chart (from git) is installed; its CRD came from crds/, which
/// helm never upgrades, and an ETagStore is created under it. The upgrade
/// to this chart with `--take-ownership` (the README's one-time step) makes
/// the CRD the release's, with this chart's schema and the keep policy; a
/// later chart's CRD change reaches the cluster on a plain `helm upgrade`;
/// and the store created before the upgrade is reconciled to Ready.
pub async fn upgrade_from_previous(ctx: &mut Ctx) -> Result<()> {
    ctx.stop_operator();
    if ctx
        .tools
        .helm(["status", RELEASE, "--namespace", NAMESPACE])
        .await
        .is_ok()
    {
        ctx.tools
            .helm(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])
            .await?;
    }
    // A cluster that never had this chart: the CRD (and every store) goes.
    ctx.tools
        .kubectl([
            "delete",
            "crd",
            CRD,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ])
        .await?;

    let scratch = ctx.cp.dir.path().join("upgrade");
    let git_ref = std::env::var("SAMETAG_PREVIOUS_CHART_REF")
        .unwrap_or_else(|_| PREVIOUS_CHART_REF.to_owned());
    let previous = export_chart(&git_ref, &scratch.join("previous"))?;
    let url = ctx.op_config.webhook_url();
    let webhook_url = format!("webhook.url={url}");
    let path = |p: &Path| p.to_str().unwrap_or_default().to_owned();
    ctx.tools
        .helm([
            "install",
            RELEASE,
            &path(&previous),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            &webhook_url,
        ])
        .await?;
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.admin.clone());
    let established = || {
        let crds = crds.clone();
        async move {
            let crd = crds.get(CRD).await?;
            let ok = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            Ok(ok.then_some(crd))
        }
    };
    let old = wait::until(
        "the previous chart's CRD Established",
        Duration::from_secs(30),
        established,
    )
    .await?;

    // A store created under the previous chart.
    let ns = "e2e-upgrade";
    create_namespace(&ctx.admin, ns, &[]).await?;
    let stores = etagstores(&ctx.admin, ns);
    let store = etagstore(
        "kept",
        serde_json::json!({ "redis": { "managed": {} }, "policy": { "mode": "Validate" } }),
    )?;
    let uid = stores
        .create(&PostParams::default(), &store)
        .await?
        .metadata
        .uid;

    // The one-time upgrade from a chart whose CRD came from crds/.
    let chart = Tools::chart_dir();
    ctx.tools
        .helm([
            "upgrade",
            RELEASE,
            &path(&chart),
            "--namespace",
            NAMESPACE,
            "--set",
            &webhook_url,
            "--take-ownership",
        ])
        .await?;
    let crd = crds.get(CRD).await?;
    check_release_crd(&crd)?;
    let want = file_schema(&repo_root().join("crds/etagstores.sametag.dev.yaml"))?;
    check(
        served_schema(&crd) == want,
        "after the upgrade the served CRD schema is not crds/'s",
    )?;
    eprintln!(
        "    previous chart {}: CRD schema {} by the upgrade",
        &git_ref[..git_ref.len().min(12)],
        if served_schema(&old) == want {
            "unchanged"
        } else {
            "changed"
        }
    );
    check(
        stores.get("kept").await?.metadata.uid == uid,
        "the store created before the upgrade was replaced",
    )?;

    // From here on a plain helm upgrade applies a CRD change (and takes
    // it back).
    let changed = chart_with_changed_crd(&scratch.join("changed"), "UpgradeProbe")?;
    for (chart, present) in [(changed, true), (chart, false)] {
        ctx.tools
            .helm([
                "upgrade",
                RELEASE,
                &path(&chart),
                "--namespace",
                NAMESPACE,
                "--reuse-values",
            ])
            .await?;
        let cols = printer_columns(&crds.get(CRD).await?);
        check(
            cols.iter().any(|c| c == "UpgradeProbe") == present,
            format!(
                "helm upgrade did not apply the CRD change (present={present}): columns {cols:?}"
            ),
        )?;
    }
    let status = ctx
        .tools
        .helm(["status", RELEASE, "--namespace", NAMESPACE, "-o", "json"])
        .await?;
    let v: serde_json::Value =
        serde_json::from_str(&status).map_err(|e| Error::Other(e.to_string()))?;
    check(
        v["version"] == 4 && v["info"]["status"] == "deployed",
        format!(
            "release revision {} status {}",
            v["version"], v["info"]["status"]
        ),
    )?;

    // The operator reconciles the store made before the upgrade: its Redis
    // is provisioned, and Ready once the StatefulSet reports ready replicas.
    ctx.start_operator().await?;
    wait_condition(&stores, "kept", "Ready", "False", Duration::from_secs(60)).await?;
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.admin.clone(), ns);
    let sts = sts_api.get("kept-redis").await?;
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = serde_json::json!({ "status": {
        "observedGeneration": sts.metadata.generation,
        "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "currentReplicas": replicas, "updatedReplicas": replicas,
    }});
    sts_api
        .patch_status("kept-redis", &PatchParams::default(), &Patch::Merge(&ready))
        .await?;
    wait_condition(&stores, "kept", "Ready", "True", Duration::from_secs(60)).await?;
    Ok(())
}
