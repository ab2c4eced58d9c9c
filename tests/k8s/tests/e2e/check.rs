//! Scenario 12: `sametag-operator check` against the real apiserver and the
//! webhook of the operator the suite runs: a healthy namespace passes (also
//! as `kubectl sametag check`, the binary linked as a kubectl plugin); an
//! opted-in pod without the sidecar, a store that is not Ready, a Service
//! with a numeric targetPort and a caBundle from another CA each give their
//! line and exit status.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use sametag_k8s_e2e::ets::{etagstore, etagstores, wait_condition};
use sametag_k8s_e2e::{Error, Result};
use serde_json::json;

use crate::ctx::{Ctx, RELEASE};
use crate::injection;
use crate::tuning::kubectl_with;

const NS: &str = "e2e-check";

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// Run `sametag-operator check -n e2e-check <extra>` as the admin user:
/// (exit code, stdout).
async fn check(ctx: &Ctx, extra: &[&str]) -> Result<(i32, String)> {
    let mut cmd = tokio::process::Command::new(&ctx.op_config.bin);
    cmd.args(["check", "-n", NS])
        .args(extra)
        .env("KUBECONFIG", &ctx.tools.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| err("check took over 60s"))?
        .map_err(|source| Error::Io {
            what: "run sametag-operator check".into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "    check {}: exit {:?}\n{stdout}{stderr}",
        extra.join(" "),
        out.status.code()
    );
    Ok((out.status.code().unwrap_or(-1), format!("{stdout}{stderr}")))
}

/// The report has a line starting with `prefix`.
fn has_line(report: &str, prefix: &str) -> Result<()> {
    if report.lines().any(|l| l.starts_with(prefix)) {
        Ok(())
    } else {
        Err(err(format!(
            "no line starting with {prefix:?} in:\n{report}"
        )))
    }
}

fn expect_exit(code: i32, want: i32, report: &str) -> Result<()> {
    if code == want {
        Ok(())
    } else {
        Err(err(format!("exit status {code}, want {want}:\n{report}")))
    }
}

pub async fn diagnoses(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    injection::store(ctx, NS, &[]).await?;
    let healthy =
        injection::create_pod(ctx, NS, "healthy", json!({ "sametag.dev/inject": "true" })).await?;
    injection::check_injected(&healthy)?;
    let services: Api<Service> = Api::namespaced(ctx.admin.clone(), NS);
    let svc = |name: &str, target: serde_json::Value| -> Result<Service> {
        serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "selector": { "e2e": "injection" }, "ports": [{ "port": 80, "targetPort": target }] },
        }))
        .map_err(|e| err(e.to_string()))
    };
    services
        .create(&PostParams::default(), &svc("by-name", json!("http"))?)
        .await?;

    // 1. Healthy: every line passes, even with --strict.
    let (code, report) = check(ctx, &["--strict"]).await?;
    expect_exit(code, 0, &report)?;
    for prefix in [
        "PASS  crd        etagstores.sametag.dev:",
        "PASS  webhook    sametag:",
        "PASS  ca-bundle  sametag: a valid CA that verifies the serving certificate",
        "PASS  store      e2e-check/web: Ready",
        "PASS  reachable  e2e-check/web: a dry-run pod came back with the sidecar",
        "PASS  pods",
        "PASS  service",
        "PASS  image",
        "ok: ",
    ] {
        has_line(&report, prefix)?;
    }
    if report.contains("WARN") || report.contains("FAIL") {
        return Err(err(format!("a healthy namespace should pass:\n{report}")));
    }
    // The dry run left nothing behind.
    let pods: Api<Pod> = Api::namespaced(ctx.admin.clone(), NS);
    let left = pods.list(&Default::default()).await?.items;
    if left.iter().any(|p| {
        p.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("sametag-check-"))
    }) {
        return Err(err("the dry-run pod was stored"));
    }

    // 1b. The same as a kubectl plugin.
    let plugin_dir = ctx.cp.dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).map_err(|source| Error::Io {
        what: "plugin dir".into(),
        source,
    })?;
    let link = plugin_dir.join("kubectl-sametag");
    if !link.exists() {
        std::os::unix::fs::symlink(&ctx.op_config.bin, &link).map_err(|source| Error::Io {
            what: "link kubectl-sametag".into(),
            source,
        })?;
    }
    let (code, out, stderr) = kubectl_with(
        ctx,
        &["sametag", "check", "-n", NS, "--strict"],
        "",
        Some(&plugin_dir),
    )
    .await?;
    expect_exit(code, 0, &format!("{out}{stderr}"))?;
    has_line(&out, "PASS  reachable  e2e-check/web")?;
    let (_, help, _) = kubectl_with(ctx, &["sametag", "--help"], "", Some(&plugin_dir)).await?;
    if !help.contains("kubectl sametag") {
        return Err(err(format!(
            "the plugin's help should name `kubectl sametag`:\n{help}"
        )));
    }

    // 2. A numeric targetPort: a warning; exit 0, or 1 with --strict.
    services
        .create(&PostParams::default(), &svc("by-number", json!(8080))?)
        .await?;
    let (code, report) = check(ctx, &[]).await?;
    expect_exit(code, 0, &report)?;
    has_line(
        &report,
        "WARN  service    e2e-check/by-number: port 80 targets 8080 by number",
    )?;
    let (code, report) = check(ctx, &["--strict"]).await?;
    expect_exit(code, 1, &report)?;
    services
        .delete("by-number", &DeleteParams::default())
        .await?;

    // 3. An opted-in pod the webhook could not inject (no such store).
    injection::create_pod(
        ctx,
        NS,
        "orphan",
        json!({ "sametag.dev/inject": "true", "sametag.dev/store": "nope" }),
    )
    .await?;
    let (code, report) = check(ctx, &[]).await?;
    expect_exit(code, 1, &report)?;
    has_line(
        &report,
        "FAIL  pods       e2e-check/orphan: opted in but runs without the sidecar",
    )?;
    pods.delete("orphan", &DeleteParams::default().grace_period(0))
        .await?;

    // 4. A store that is not Ready (its Secret is missing).
    let stores = etagstores(&ctx.admin, NS);
    let broken = etagstore(
        "broken",
        json!({ "redis": { "external": { "url": "redis://redis.shared.svc:6379/0", "secretRef": { "name": "missing" } } } }),
    )?;
    stores.create(&PostParams::default(), &broken).await?;
    wait_condition(&stores, "broken", "Ready", "False", Duration::from_secs(60)).await?;
    let (code, report) = check(ctx, &[]).await?;
    expect_exit(code, 1, &report)?;
    has_line(
        &report,
        "FAIL  store      e2e-check/broken: Ready=False (SecretMissing)",
    )?;
    has_line(&report, "PASS  store      e2e-check/web: Ready")?;
    stores.delete("broken", &DeleteParams::default()).await?;

    // 5. A caBundle from another CA (valid PEM, wrong issuer): the CA check
    //    and the dry run both fail. Put the right one back afterwards.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(ctx.admin.clone());
    let original = mwcs.get(RELEASE).await?;
    let other_ca = std::fs::read(&ctx.cp.info.ca_file).map_err(|source| Error::Io {
        what: "read the control plane's CA".into(),
        source,
    })?;
    let mut wrong = original.clone();
    for wh in wrong.webhooks.iter_mut().flatten() {
        wh.client_config.ca_bundle = Some(ByteString(other_ca.clone()));
    }
    mwcs.replace(RELEASE, &PostParams::default(), &wrong)
        .await?;
    let result = check(ctx, &[]).await;
    let mut restored = mwcs.get(RELEASE).await?;
    restored.webhooks = original.webhooks.clone();
    mwcs.replace(RELEASE, &PostParams::default(), &restored)
        .await?;
    let (code, report) = result?;
    expect_exit(code, 1, &report)?;
    has_line(
        &report,
        "FAIL  ca-bundle  sametag: does not verify the serving certificate",
    )?;
    has_line(
        &report,
        "FAIL  reachable  e2e-check/web: a dry-run opted-in pod came back without the sidecar",
    )?;

    // And healthy again.
    let (code, report) = check(ctx, &["--strict"]).await?;
    expect_exit(code, 0, &report)
}
