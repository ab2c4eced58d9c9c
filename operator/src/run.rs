//! `sametag-operator run`: certificates first, then the webhook (every
//! replica), the metrics/health server, certificate rotation, and the
//! controller (the leader only), all until SIGTERM.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::children::FIELD_MANAGER;
use crate::config::RunArgs;
use crate::metrics::Metrics;
use crate::owner::{self, Adoption};
use crate::reconcile::{self, Context, Error, Result};
use crate::webhook::config::{self as whconfig, Target};
use crate::webhook::inject::InjectConfig;
use crate::webhook::tls::{self, CertSettings, Resolver};
use crate::webhook::{self, Webhook};

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
    let metrics_server = serve_metrics(metrics_listener, Arc::new(registry), ready.clone());

    // Certificates: create or reuse, then keep the webhook configuration current.
    let certs = CertSettings {
        namespace: args.namespace.clone(),
        secret: args.cert_secret.clone(),
        sans: tls::sans(&args.webhook_service, &args.namespace),
        validity: args.cert_validity,
        renew_before: args.cert_renew_before,
    };
    // The webhook configuration owns the Secret and the Lease, so that
    // uninstalling the release removes them. It may not exist yet (or the
    // read may fail): the rotation loop looks again and adopts them then.
    let owner = owner::webhook_config_owner(&client, &args.webhook_config_name)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, config = %args.webhook_config_name, "cannot read the webhook configuration yet");
            None
        });
    let bundle = tls::ensure(&client, &certs, owner.as_ref()).await?;
    let resolver = Arc::new(Resolver::new());
    resolver.set(bundle.certified_key()?);
    let target = match &args.webhook_url {
        Some(url) => Target::Url(url.clone()),
        None => Target::Service {
            namespace: args.namespace.clone(),
            name: args.webhook_service.clone(),
            port: args.webhook_service_port,
        },
    };

    // The webhook serves on every replica.
    let (view, view_driver) = webhook::cached_view(client.clone());
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

    let rotation = rotate(
        client.clone(),
        certs,
        resolver,
        args.clone(),
        target,
        bundle,
        owner.clone(),
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        args.namespace.clone(),
        args.resync,
    ));
    let controller = lead(client, args, identity, ctx, metrics, owner);

    tokio::select! {
        _ = metrics_server => Ok(()),
        _ = webhook_server => Ok(()),
        _ = view_driver => Ok(()),
        _ = readiness_forever(readiness) => Ok(()),
        _ = rotation => Ok(()),
        r = controller => r,
        _ = shutdown_signal() => {
            tracing::info!("terminating");
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

/// Keep the certificate fresh, the webhook configuration pointing at us, and
/// the Secret and Lease owned by that configuration.
async fn rotate(
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
            if args.manage_webhook_config {
                let cfg = whconfig::desired(&args.webhook_config_name, &target, &current.ca_pem)?;
                whconfig::apply(&client, &cfg).await?;
            } else {
                let url = match &target {
                    Target::Url(u) => Some(u.as_str()),
                    Target::Service { .. } => None,
                };
                tls::patch_webhook_config(&client, &args.webhook_config_name, &current.ca_pem, url)
                    .await?;
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

/// Run the controller while this replica leads (always, without election).
async fn lead(
    client: Client,
    args: RunArgs,
    identity: String,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    owner: Option<OwnerReference>,
) -> Result<()> {
    let ns = args.watch_namespace.clone();
    if !args.leader_elect {
        metrics.leader.set(1);
        reconcile::run(ctx, ns, std::future::pending()).await;
        return Ok(());
    }
    // Create the Lease owned by the webhook configuration before the lease
    // manager would create it unowned; without a configuration yet, the
    // rotation loop adopts the manager's Lease later.
    if let Some(owner) = &owner
        && let Err(e) = owner::ensure_lease(&client, &args.namespace, &args.lease_name, owner).await
    {
        tracing::warn!(error = %e, lease = %args.lease_name, "cannot create the owned Lease; the rotation loop retries");
    }
    let duration = args.lease_duration.as_secs().max(3);
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .with_field_manager(format!("{FIELD_MANAGER}-lease-{identity}"))
        .build()
        .await?;
    let (mut leader, _handle) = manager.watch().await;
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return Err(Error::Stopped("leader election"));
            }
        }
        tracing::info!(%identity, "leading: starting the controller");
        metrics.leader.set(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = reconcile::run(ctx.clone(), ns.clone(), async move {
            let _ = stopped.await;
        });
        tokio::pin!(controller);
        loop {
            tokio::select! {
                _ = &mut controller => break,
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow_and_update() {
                        tracing::warn!(%identity, "lost the lease: stopping the controller");
                        let _ = stop.send(());
                        controller.await;
                        break;
                    }
                }
            }
        }
        metrics.leader.set(0);
    }
}

// === metrics server ===

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn metrics_handler(
    req: Request<Incoming>,
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encode failed\n".into(),
                ),
            }
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if ready.load(Ordering::Acquire) => {
            respond(StatusCode::OK, "text/plain", "ready\n".into())
        }
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>, ready: Arc<AtomicBool>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                metrics_handler(req, registry.clone(), ready.clone())
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
