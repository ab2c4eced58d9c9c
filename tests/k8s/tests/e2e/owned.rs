//! Scenario 8: what the operator creates for itself at run time (the webhook
//! certificate Secret and the leader-election Lease) is owned by the chart's
//! MutatingWebhookConfiguration, so the garbage collector removes it with the
//! release (checked by `chart::uninstall`); objects left without the owner
//! (by an older release) are adopted by a restarted operator.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use sametag_k8s_e2e::{Error, Result, wait};
use serde_json::json;

use crate::certs::cert_secret;
use crate::ctx::{Ctx, NAMESPACE, RELEASE};

/// The one ownerReference the operator must set, as JSON: the live
/// configuration's uid, neither controller nor blockOwnerDeletion.
async fn expected_owner(ctx: &Ctx) -> Result<serde_json::Value> {
    let mwc = Api::<MutatingWebhookConfiguration>::all(ctx.admin.clone())
        .get(RELEASE)
        .await?;
    Ok(json!([{
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "name": RELEASE,
        "uid": mwc.uid().unwrap_or_default(),
    }]))
}

/// `Ok(None)` until `meta`'s ownerReferences are exactly `want`.
fn owner_matches(
    what: &str,
    refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    want: &serde_json::Value,
) -> Result<Option<()>> {
    let got = serde_json::to_value(refs).map_err(|e| Error::Other(e.to_string()))?;
    if &got == want {
        Ok(Some(()))
    } else {
        Err(Error::Other(format!(
            "{what} ownerReferences: got {got}, want {want}"
        )))
    }
}

/// Wait until the Secret and the Lease both name the configuration.
async fn both_owned(ctx: &Ctx, timeout: Duration) -> Result<()> {
    let want = expected_owner(ctx).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let lease = ctx.op_config.lease_name();
    wait::until(
        "the certificate Secret and the Lease owned by the webhook configuration",
        timeout,
        || {
            let (secrets, leases, lease, want) =
                (secrets.clone(), leases.clone(), lease.clone(), want.clone());
            async move {
                let s = secrets.get(&cert_secret()).await?;
                owner_matches("Secret", s.owner_references(), &want)?;
                let l = leases.get(&lease).await?;
                owner_matches("Lease", l.owner_references(), &want)?;
                // The lease manager still works on an owned Lease.
                let holder = l.spec.and_then(|s| s.holder_identity);
                if holder.as_deref() != Some("e2e-operator") {
                    return Err(Error::Other(format!("Lease holder {holder:?}")));
                }
                Ok(Some(()))
            }
        },
    )
    .await
}

/// Both objects carry the ownerReference to the live configuration.
pub async fn owned(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    both_owned(ctx, Duration::from_secs(30)).await
}

/// Stop the operator, drop the ownerReferences (as an older release left
/// them), start it again: both are owned again, and the certificate is the
/// same (adoption does not rewrite the Secret's data).
pub async fn adopted_after_restart(ctx: &mut Ctx) -> Result<()> {
    ctx.stop_operator();
    let stripped = strip_owners(ctx).await;
    // Put the operator back for what follows, whatever happened.
    ctx.start_operator().await?;
    let before = stripped?;
    both_owned(ctx, Duration::from_secs(30)).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let after = secrets.get(&cert_secret()).await?;
    if after.data != before.data {
        return Err(Error::Other(
            "adopting the Secret replaced its certificate".into(),
        ));
    }
    Ok(())
}

/// Remove the ownerReferences of the Secret and the Lease; the Secret as it
/// then is.
async fn strip_owners(ctx: &Ctx) -> Result<Secret> {
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let lease = ctx.op_config.lease_name();
    let drop_owners = json!({"metadata": {"ownerReferences": null}});
    let pp = PatchParams::default();
    secrets
        .patch(&cert_secret(), &pp, &Patch::Merge(&drop_owners))
        .await?;
    leases
        .patch(&lease, &pp, &Patch::Merge(&drop_owners))
        .await?;
    let secret = secrets.get(&cert_secret()).await?;
    let lease = leases.get(&lease).await?;
    if !secret.owner_references().is_empty() || !lease.owner_references().is_empty() {
        return Err(Error::Other(
            "could not strip the ownerReferences for the test".into(),
        ));
    }
    Ok(secret)
}

/// After the configuration is gone, the garbage collector deletes both.
pub async fn collected_with_the_configuration(ctx: &Ctx) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let lease = ctx.op_config.lease_name();
    wait::until(
        "the garbage collector to delete the certificate Secret and the Lease",
        Duration::from_secs(60),
        || {
            let (secrets, leases, lease) = (secrets.clone(), leases.clone(), lease.clone());
            async move {
                let mut left = Vec::new();
                if secrets.get_opt(&cert_secret()).await?.is_some() {
                    left.push(format!("secret/{}", cert_secret()));
                }
                if leases.get_opt(&lease).await?.is_some() {
                    left.push(format!("lease/{lease}"));
                }
                if left.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(Error::Other(format!("left behind: {left:?}")))
                }
            }
        },
    )
    .await
}
