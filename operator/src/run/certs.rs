//! Certificate rotation and the webhook configuration: keep the serving
//! certificate fresh, the configuration's clientConfig pointing at this
//! operator, and the certificate Secret and Lease owned by the configuration.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client};

use crate::config::RunArgs;
use crate::error::Result;
use crate::owner::{self, Adoption};
use crate::webhook::config::{self as whconfig, Target};
use crate::webhook::tls::{self, CertSettings, Resolver};

/// Keep the certificate fresh, the webhook configuration pointing at us, and
/// the Secret and Lease owned by that configuration.
pub(super) async fn rotate(
    client: Client,
    certs: CertSettings,
    resolver: Arc<Resolver>,
    args: RunArgs,
    target: Target,
    mut current: tls::Bundle,
    mut owner: Option<OwnerReference>,
) {
    // Until the configuration is patched once (the chart may create it after
    // we start), retry quickly; then check at the configured interval.
    let mut patched = false;
    loop {
        let result: Result<bool> = async {
            // Written with the last owner seen: if the configuration has just
            // been deleted (uninstall), a Secret re-created here names a gone
            // uid and the garbage collector removes it again.
            let bundle = tls::ensure(&client, &certs, owner.as_ref()).await?;
            if bundle != current {
                resolver.set(bundle.certified_key()?);
                tracing::info!(not_after = %bundle.not_after, "serving certificate reloaded");
                current = bundle;
                patched = false;
            }
            let ca = Some(current.ca_pem.as_str());
            if args.manage_webhook_config {
                let cfg = whconfig::desired(&args.webhook_config_name, &target, ca)?;
                whconfig::apply(&client, &cfg).await?;
            } else {
                whconfig::patch(&client, &args.webhook_config_name, ca, &target).await?;
            }
            // Unchanged counts as done; only a missing configuration retries fast.
            let Some(fresh) =
                owner::webhook_config_owner(&client, &args.webhook_config_name).await?
            else {
                return Ok(false);
            };
            // Ownership only matters at uninstall: a failure (e.g. an
            // admission plugin that wants more rights) is retried at the
            // normal interval, not every few seconds.
            if let Err(e) = adopt_own_objects(&client, &args, &fresh).await {
                tracing::warn!(error = %e, "cannot make the webhook configuration own the certificate Secret or Lease");
            }
            owner = Some(fresh);
            Ok(true)
        }
        .await;
        match result {
            Ok(done) => patched = done,
            Err(e) => {
                patched = false;
                tracing::warn!(error = %e, "certificate or webhook configuration update failed");
            }
        }
        let wait = if patched {
            args.cert_check_interval
        } else {
            Duration::from_secs(5)
        };
        tokio::time::sleep(wait).await;
    }
}

/// Make the certificate Secret and (with leader election) the Lease name
/// `owner`, so the garbage collector removes them with the configuration.
/// Covers objects made before the configuration existed or by an older
/// release; a no-op (two reads) when both are already owned.
async fn adopt_own_objects(client: &Client, args: &RunArgs, owner: &OwnerReference) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    if owner::adopt(&secrets, &args.cert_secret, owner).await? == Adoption::Adopted {
        tracing::info!(secret = %args.cert_secret, config = %owner.name, "certificate Secret now owned by the webhook configuration");
    }
    if args.leader_elect {
        let done = owner::ensure_lease(client, &args.namespace, &args.lease_name, owner).await?;
        if matches!(done, Adoption::Adopted | Adoption::Created) {
            tracing::info!(lease = %args.lease_name, config = %owner.name, ?done, "Lease owned by the webhook configuration");
        }
    }
    Ok(())
}
