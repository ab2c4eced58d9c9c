//! `sametag-operator run`: certificates first, then the webhook (every
//! replica), the metrics/health server, certificate rotation, and the
//! controller (the leader only), all until SIGTERM; then the controller
//! stops and the leader releases its Lease before the process exits.

mod certs;
mod health;
mod leader;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::children::FIELD_MANAGER;
use crate::config::RunArgs;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::owner;
use crate::reconcile::Context;
use crate::webhook::config::Target;
use crate::webhook::inject::InjectConfig;
use crate::webhook::tls::{self, Resolver};
use crate::webhook::{self, Webhook};

/// How long a terminating operator waits for the controller to stop and
/// the Lease to be released before it exits regardless.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Run everything until a termination signal; errors are startup failures.
pub async fn run(args: RunArgs) -> Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sametag-operator".to_owned());

    // Metrics first, so probes answer (not ready) while the rest starts.
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| Error::Io {
            what: "bind --metrics-listen",
            source,
        })?;
    let metrics_server = health::serve_metrics(metrics_listener, Arc::new(registry), ready.clone());

    // Certificates: create or reuse, then keep the webhook configuration current.
    // The webhook configuration owns the Secret and the Lease, so that
    // uninstalling the release removes them. It may not exist yet (or the
    // read may fail): the rotation loop looks again and adopts them then.
    let owner = owner::webhook_config_owner(&client, &args.webhook_config_name)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, config = %args.webhook_config_name, "cannot read the webhook configuration yet");
            None
        });
    let resolver = Arc::new(Resolver::new());
    let source = certs::initial(&client, &args, &resolver, owner.as_ref()).await?;
    if let Some(t) = source.not_after() {
        metrics.certificate_loaded(t);
    }
    let target = match &args.webhook_url {
        Some(url) => Target::Url(url.clone()),
        None => Target::Service {
            namespace: args.namespace.clone(),
            name: args.webhook_service.clone(),
            port: args.webhook_service_port,
        },
    };

    // The webhook serves on every replica.
    let (view, view_driver) = webhook::cached_view(client.clone(), &args.watch_namespaces);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.clone()),
        },
    );
    let hook = Arc::new(Webhook {
        view: Arc::new(view.clone()),
        config: InjectConfig {
            default_image: args.sidecar_image.clone(),
            sidecar_port: args.sidecar_port,
            admin_port: args.sidecar_admin_port,
            omit_uids: args.omit_uids,
        },
        metrics: metrics.clone(),
        recorder: Some(recorder),
    });
    let webhook_listener = TcpListener::bind(args.webhook_listen)
        .await
        .map_err(|source| Error::Io {
            what: "bind --webhook-listen",
            source,
        })?;
    tracing::info!(webhook = %args.webhook_listen, metrics = %args.metrics_listen, "listening");
    let webhook_server =
        webhook::serve(webhook_listener, tls::server_config(resolver.clone()), hook);

    let readiness = {
        let ready = ready.clone();
        let view = view.clone();
        async move {
            view.ready().await;
            ready.store(true, Ordering::Release);
            tracing::info!("caches synced; ready");
        }
    };

    let rotation = certs::rotate(
        client.clone(),
        metrics.clone(),
        source,
        resolver,
        args.clone(),
        target,
        owner.clone(),
    );
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            metrics.clone(),
            args.namespace.clone(),
            args.resync,
        )
        .with_sidecar_image(args.sidecar_image.clone())
        .with_omit_uids(args.omit_uids),
    );
    // `lead` watches this to stop the controller and give up the Lease.
    let (shutdown, shutdown_rx) = watch::channel(false);
    let controller = leader::lead(client, args, identity, ctx, metrics, owner, shutdown_rx);
    tokio::pin!(controller);

    tokio::select! {
        _ = metrics_server => return Ok(()),
        _ = webhook_server => return Ok(()),
        _ = view_driver => return Ok(()),
        _ = readiness_forever(readiness) => return Ok(()),
        _ = rotation => return Ok(()),
        r = &mut controller => return r,
        _ = shutdown_signal() => tracing::info!("terminating"),
    }
    // The servers above are dropped; let the controller finish and the
    // Lease go before the process exits, so the next replica leads at once
    // instead of after --lease-duration. Bounded well inside the default
    // 30 s termination grace period.
    let _ = shutdown.send(true);
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, controller).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                timeout = ?SHUTDOWN_TIMEOUT,
                "the controller did not stop in time; exiting anyway"
            );
            Ok(())
        }
    }
}

async fn readiness_forever(f: impl Future<Output = ()>) {
    f.await;
    std::future::pending::<()>().await;
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
