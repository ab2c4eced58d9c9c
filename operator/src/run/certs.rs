//! The webhook's serving certificate and the webhook configuration: load
//! (or create) the certificate at start, then keep it fresh, the
//! configuration's clientConfig pointing at this operator, and the
//! certificate Secret and Lease owned by the configuration.
//!
//! Two sources: the operator's own CA (the default: it issues, rotates and
//! writes `caBundle`), or cert-manager (`--cert-manager`: it only reads the
//! Secret cert-manager issues, and cert-manager's CA injector writes
//! `caBundle`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client};

use crate::config::RunArgs;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::owner::{self, Adoption};
use crate::webhook::config::{self as whconfig, Target};
use crate::webhook::tls::{self, CertSettings, Issued, Resolver};

/// Where the serving certificate comes from, and what was loaded last.
pub(super) enum Source {
    /// The operator's own CA, kept in `--cert-secret`.
    Own {
        /// How to issue and renew.
        settings: CertSettings,
        /// The bundle being served (boxed: it dwarfs the other variant).
        current: Box<tls::Bundle>,
    },
    /// cert-manager's Secret `--cert-secret`; `None` until it exists.
    CertManager(Option<Issued>),
}

impl Source {
    /// The CA to write into `caBundle` (`None` with cert-manager).
    fn ca_pem(&self) -> Option<&str> {
        match self {
            Self::Own { current, .. } => Some(current.ca_pem.as_str()),
            Self::CertManager(_) => None,
        }
    }

    /// When the served certificate expires, when the operator issued it
    /// (cert-manager reports its own).
    pub(super) fn not_after(&self) -> Option<jiff::Timestamp> {
        match self {
            Self::Own { current, .. } => Some(current.not_after),
            Self::CertManager(_) => None,
        }
    }
}

/// Load the certificate before the webhook serves: with the operator's own
/// CA, create or reuse the Secret (owned by `owner`); with cert-manager, use
/// the Secret if it is there already (the rotation loop waits for it).
pub(super) async fn initial(
    client: &Client,
    args: &RunArgs,
    resolver: &Resolver,
    owner: Option<&OwnerReference>,
) -> Result<Source> {
    if args.cert_manager {
        let issued = tls::load_issued(client, &args.namespace, &args.cert_secret).await?;
        match &issued {
            Some(i) => resolver.set(i.certified_key()?),
            None => {
                tracing::warn!(secret = %args.cert_secret, "no certificate from cert-manager yet; the webhook refuses handshakes until it is issued")
            }
        }
        return Ok(Source::CertManager(issued));
    }
    let settings = CertSettings {
        namespace: args.namespace.clone(),
        secret: args.cert_secret.clone(),
        sans: tls::sans(&args.webhook_service, &args.namespace),
        validity: args.cert_validity,
        renew_before: args.cert_renew_before,
    };
    let current = tls::ensure(client, &settings, owner).await?;
    resolver.set(current.certified_key()?);
    Ok(Source::Own {
        settings,
        current: Box::new(current),
    })
}

/// One pass: renew or reload the certificate; whether a new one is served.
async fn refresh(
    client: &Client,
    args: &RunArgs,
    source: &mut Source,
    resolver: &Resolver,
    owner: Option<&OwnerReference>,
) -> Result<bool> {
    match source {
        Source::Own { settings, current } => {
            // Written with the last owner seen: if the configuration has just
            // been deleted (uninstall), a Secret re-created here names a gone
            // uid and the garbage collector removes it again.
            let bundle = tls::ensure(client, settings, owner).await?;
            if bundle == **current {
                return Ok(false);
            }
            resolver.set(bundle.certified_key()?);
            tracing::info!(not_after = %bundle.not_after, "serving certificate reloaded");
            **current = bundle;
            Ok(true)
        }
        Source::CertManager(current) => {
            let issued = tls::load_issued(client, &args.namespace, &args.cert_secret).await?;
            if issued.is_none() || issued == *current {
                return Ok(false);
            }
            if let Some(i) = &issued {
                resolver.set(i.certified_key()?);
                tracing::info!(secret = %args.cert_secret, "certificate issued by cert-manager loaded");
            }
            *current = issued;
            Ok(true)
        }
    }
}

/// Keep the certificate fresh, the webhook configuration pointing at us, and
/// the Secret and Lease owned by that configuration.
pub(super) async fn rotate(
    client: Client,
    metrics: Arc<Metrics>,
    mut source: Source,
    resolver: Arc<Resolver>,
    args: RunArgs,
    target: Target,
    mut owner: Option<OwnerReference>,
) {
    // Until the configuration is patched once (the chart may create it after
    // we start) and a certificate is served, retry quickly; then check at
    // the configured interval.
    let mut patched = false;
    loop {
        let result: Result<bool> = async {
            if refresh(&client, &args, &mut source, &resolver, owner.as_ref()).await? {
                patched = false;
                if let Some(t) = source.not_after() {
                    metrics.certificate_loaded(t);
                }
            }
            let ca = source.ca_pem();
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
            let own_secret = matches!(source, Source::Own { .. });
            if let Err(e) = adopt_own_objects(&client, &args, &fresh, own_secret).await {
                tracing::warn!(error = %e, "cannot make the webhook configuration own the certificate Secret or Lease");
            }
            owner = Some(fresh);
            Ok(!matches!(source, Source::CertManager(None)))
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

/// Make the certificate Secret (when the operator made it: cert-manager owns
/// its own) and, with leader election, the Lease name `owner`, so the
/// garbage collector removes them with the configuration. Covers objects
/// made before the configuration existed or by an older release; a no-op
/// (two reads) when both are already owned.
async fn adopt_own_objects(
    client: &Client,
    args: &RunArgs,
    owner: &OwnerReference,
    own_secret: bool,
) -> Result<()> {
    if own_secret {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
        if owner::adopt(&secrets, &args.cert_secret, owner).await? == Adoption::Adopted {
            tracing::info!(secret = %args.cert_secret, config = %owner.name, "certificate Secret now owned by the webhook configuration");
        }
    }
    if args.leader_elect {
        let done = owner::ensure_lease(client, &args.namespace, &args.lease_name, owner).await?;
        if matches!(done, Adoption::Adopted | Adoption::Created) {
            tracing::info!(lease = %args.lease_name, config = %owner.name, ?done, "Lease owned by the webhook configuration");
        }
    }
    Ok(())
}
