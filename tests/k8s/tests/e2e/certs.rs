//! Scenario 7: the operator issues its webhook certificate into a Secret,
//! patches the CA into every webhook of the configuration, and a restarted
//! operator reuses the same Secret instead of issuing a new CA.

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
