//! Scenario 7: the operator issues its webhook certificate into a Secret,
//! patches the CA into every webhook of the configuration, a restarted
//! operator reuses the same Secret instead of issuing a new CA, and the
//! rotation loop reissues short-lived certificates while admission goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sametag_k8s_e2e::{Error, Result, wait};

use crate::ctx::{Ctx, NAMESPACE, RELEASE};

/// The certificate Secret's name, as the tests start the operator.
pub fn cert_secret() -> String {
    format!("{RELEASE}-webhook-tls")
}

/// The Secret's data and every webhook's caBundle, once all are filled in.
async fn observed(ctx: &Ctx) -> Result<(BTreeMap<String, ByteString>, Vec<ByteString>)> {
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(ctx.admin.clone());
    wait::until(
        "the webhook certificate Secret and caBundle",
        Duration::from_secs(60),
        || {
            let (secrets, mwcs) = (secrets.clone(), mwcs.clone());
            async move {
                let Some(secret) = secrets.get_opt(&cert_secret()).await? else {
                    return Err(Error::Other(format!(
                        "no Secret {NAMESPACE}/{}",
                        cert_secret()
                    )));
                };
                let data = secret.data.unwrap_or_default();
                let hooks = mwcs.get(RELEASE).await?.webhooks.unwrap_or_default();
                let bundles: Vec<ByteString> = hooks
                    .iter()
                    .filter_map(|h| h.client_config.ca_bundle.clone())
                    .collect();
                if bundles.len() != hooks.len() || hooks.is_empty() {
                    return Err(Error::Other(format!(
                        "{} of {} webhooks have a caBundle",
                        bundles.len(),
                        hooks.len()
                    )));
                }
                Ok(Some((data, bundles)))
            }
        },
    )
    .await
}

/// The Secret exists with a certificate, and the caBundle of every webhook
/// is a PEM CA that the Secret holds.
pub async fn issued(ctx: &mut Ctx) -> Result<()> {
    ctx.require_operator()?;
    let (data, bundles) = observed(ctx).await?;
    for b in &bundles {
        let pem = String::from_utf8_lossy(&b.0);
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::Other(format!(
                "caBundle is not a PEM certificate: {:.60}",
                pem
            )));
        }
        if !data.values().any(|v| v.0 == b.0) {
            return Err(Error::Other(format!(
                "caBundle is not one of the Secret's values (keys: {:?})",
                data.keys().collect::<Vec<_>>()
            )));
        }
    }
    if bundles.windows(2).any(|w| w[0] != w[1]) {
        return Err(Error::Other(
            "the webhooks carry different caBundles".into(),
        ));
    }
    Ok(())
}

/// Restart the operator: the Secret's data and the caBundle are unchanged.
pub async fn reused_after_restart(ctx: &mut Ctx) -> Result<()> {
    let (data_before, bundles_before) = observed(ctx).await?;
    ctx.stop_operator();
    ctx.start_operator().await?;
    // Give the restarted operator time to (wrongly) rotate, then compare.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (data_after, bundles_after) = observed(ctx).await?;
    if data_after != data_before {
        return Err(Error::Other(
            "the restarted operator replaced the certificate Secret".into(),
        ));
    }
    if bundles_after != bundles_before {
        return Err(Error::Other(
            "the restarted operator changed the caBundle".into(),
        ));
    }
    Ok(())
}

/// Namespace of scenario 7c's pods and store.
const ROTATION_NS: &str = "e2e-rotation";
/// How long scenario 7c keeps admitting pods while certificates rotate.
const ROTATION_RUN: Duration = Duration::from_secs(40);

/// The first PEM certificate in `text`.
fn first_pem(text: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[begin..].find(END)? + begin + END.len();
    Some(text[begin..end].to_owned())
}

/// The serving certificate in the Secret (the leaf of `tls.crt`).
async fn secret_cert(secrets: &Api<Secret>) -> Result<String> {
    let secret = secrets.get(&cert_secret()).await?;
    let data = secret.data.unwrap_or_default();
    data.get("tls.crt")
        .and_then(|b| first_pem(&String::from_utf8_lossy(&b.0)))
        .ok_or_else(|| Error::Other("the certificate Secret has no tls.crt".into()))
}

/// The leaf certificate the webhook serves on `port` (openssl s_client).
async fn served_cert(port: u16) -> Result<String> {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .map_err(|_| Error::Other("openssl s_client timed out".into()))?
        .map_err(|source| Error::Io {
            what: "run openssl s_client".into(),
            source,
        })?;
    first_pem(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::Other(format!(
            "no certificate from the webhook on port {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Scenario 7c: the rotation loop end to end. The operator runs with a 30 s
/// serving certificate renewed 20 s before expiry (checked every second),
/// so it reissues every ~10 s; for 40 s the apiserver keeps admitting
/// opted-in pods through the webhook, and every one must be injected
/// (`failurePolicy: Ignore` would turn a TLS failure into an uninjected
/// pod). The webhook serves each new certificate without a restart. The
/// operator runs with its usual flags again afterwards.
pub async fn rotates_while_injecting(ctx: &mut Ctx) -> Result<()> {
    ctx.require_operator()?;
    crate::injection::store(ctx, ROTATION_NS, &[]).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    ctx.stop_operator();
    // The current certificate is good for 90 days; start from a short one.
    secrets.delete(&cert_secret(), &Default::default()).await?;
    ctx.op_config.extra_args = vec![
        "--cert-validity=30s".into(),
        "--cert-renew-before=20s".into(),
        "--cert-check-interval=1s".into(),
    ];
    let result = match ctx.start_operator().await {
        Ok(()) => admit_while_rotating(ctx, &secrets).await,
        Err(e) => Err(e),
    };
    ctx.stop_operator();
    ctx.op_config.extra_args.clear();
    ctx.start_operator().await?;
    result
}

async fn admit_while_rotating(ctx: &Ctx, secrets: &Api<Secret>) -> Result<()> {
    // Wait for the new CA to reach the configuration before admitting.
    issued_now(ctx).await?;
    let started = std::time::Instant::now();
    let mut certs: Vec<String> = Vec::new();
    let mut admitted = 0;
    let mut i = 0;
    while started.elapsed() < ROTATION_RUN {
        let cert = secret_cert(secrets).await?;
        if certs.last() != Some(&cert) {
            certs.push(cert);
        }
        let pod = crate::injection::create_pod(
            ctx,
            ROTATION_NS,
            &format!("rot-{i}"),
            serde_json::json!({ "sametag.dev/inject": "true", "sametag.dev/store": "web" }),
        )
        .await?;
        crate::injection::check_injected(&pod).map_err(|e| {
            Error::Other(format!(
                "pod {i} after {:.1}s and {} certificate(s) was not injected: {e}",
                started.elapsed().as_secs_f64(),
                certs.len()
            ))
        })?;
        admitted += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "{admitted} pods injected across {} serving certificates",
        certs.len()
    );
    // A 30 s certificate renewed 20 s early: two reissues at least in 40 s.
    if certs.len() < 3 {
        return Err(Error::Other(format!(
            "only {} serving certificate(s) in {}s: the rotation loop did not run",
            certs.len(),
            ROTATION_RUN.as_secs()
        )));
    }
    // The webhook serves the Secret's current certificate (reloaded without
    // a restart); allow a check interval for the reload.
    let port = ctx.op_config.webhook_port;
    wait::until(
        "the webhook to serve the Secret's certificate",
        Duration::from_secs(10),
        || async move {
            let (served, stored) = (served_cert(port).await?, secret_cert(secrets).await?);
            if served == stored {
                Ok(Some(()))
            } else {
                Err(Error::Other("served and stored certificates differ".into()))
            }
        },
    )
    .await
}

/// The caBundle of every webhook carries the CA of the Secret as it is now.
async fn issued_now(ctx: &Ctx) -> Result<()> {
    wait::until(
        "the new CA in the webhook configuration",
        Duration::from_secs(30),
        || async move {
            let (data, bundles) = observed(ctx).await?;
            let ca = data
                .get("ca.crt")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            let all = bundles
                .iter()
                .all(|b| !ca.is_empty() && String::from_utf8_lossy(&b.0).contains(ca.trim()));
            if all {
                Ok(Some(()))
            } else {
                Err(Error::Other("caBundle lacks the Secret's CA".into()))
            }
        },
    )
    .await
}
