//! `sametag-operator run`: certificates first, then the webhook (every
//! replica), the metrics/health server, certificate rotation, and the
//! controller (the leader only), all until SIGTERM; then the controller
//! stops and the leader releases its Lease before the process exits.

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
use tokio::sync::watch;

use crate::children::FIELD_MANAGER;
use crate::config::RunArgs;
use crate::metrics::Metrics;
use crate::owner::{self, Adoption};
use crate::reconcile::{self, Context, Error, Result};
use crate::webhook::config::{self as whconfig, Target};
use crate::webhook::inject::InjectConfig;
use crate::webhook::tls::{self, CertSettings, Resolver};
use crate::webhook::{self, Webhook};

/// How long a terminating operator waits for the controller to stop and
/// the Lease to be released before it exits regardless.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it waits for the lease manager to release the Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

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
    metrics.certificate_loaded(bundle.not_after);
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
        metrics.clone(),
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
    // `lead` watches this to stop the controller and give up the Lease.
    let (shutdown, shutdown_rx) = watch::channel(false);
    let controller = lead(client, args, identity, ctx, metrics, owner, shutdown_rx);
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

/// Keep the certificate fresh, the webhook configuration pointing at us, and
/// the Secret and Lease owned by that configuration.
#[allow(clippy::too_many_arguments)]
async fn rotate(
    client: Client,
    metrics: Arc<Metrics>,
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
                metrics.certificate_loaded(bundle.not_after);
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

/// Run the controller while this replica leads (always, without election),
/// until `shutdown` turns true; then, with election, release the Lease.
async fn lead(
    client: Client,
    args: RunArgs,
    identity: String,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    owner: Option<OwnerReference>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let ns = args.watch_namespace.clone();
    if !args.leader_elect {
        metrics.leader.set(1);
        reconcile::run(ctx, ns, became(shutdown, true)).await;
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
    let (leader, lease_task) = manager.watch().await;
    // `follow` owns the only receiver: when it returns, the manager's task
    // sees the channel closed, releases the Lease and ends.
    let result = follow(leader, shutdown, &identity, ctx, ns, &metrics).await;
    match tokio::time::timeout(RELEASE_TIMEOUT, lease_task).await {
        Ok(Ok(Ok(_))) => {
            tracing::info!(%identity, lease = %args.lease_name, "released the leader Lease")
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, lease = %args.lease_name, "cannot release the leader Lease; it expires instead")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, lease = %args.lease_name, "the lease manager task failed; the Lease expires instead")
        }
        Err(_) => {
            tracing::warn!(timeout = ?RELEASE_TIMEOUT, lease = %args.lease_name, "releasing the leader Lease timed out; it expires instead")
        }
    }
    result
}

/// Run the controller whenever `leader` is true, stopping it when the lease
/// is lost; return once `shutdown` turns true (the controller stopped).
async fn follow(
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    identity: &str,
    ctx: Arc<Context>,
    ns: Option<String>,
    metrics: &Metrics,
) -> Result<()> {
    loop {
        tokio::select! {
            led = leader.wait_for(|&l| l) => {
                led.map_err(|_| Error::Stopped("leader election"))?;
            }
            _ = shutdown.wait_for(|&s| s) => return Ok(()),
        }
        tracing::info!(%identity, "leading: starting the controller");
        metrics.leader.set(1);
        let stop = either(
            became(leader.clone(), false),
            became(shutdown.clone(), true),
        );
        reconcile::run(ctx.clone(), ns.clone(), stop).await;
        metrics.leader.set(0);
        if *shutdown.borrow() {
            tracing::info!(%identity, "controller stopped");
            return Ok(());
        }
        if leader.is_closed() {
            // The lease manager's task is gone: nobody renews the Lease.
            return Err(Error::Stopped("leader election"));
        }
        if *leader.borrow() {
            tracing::warn!(%identity, "the controller ended by itself; restarting it");
        } else {
            tracing::warn!(%identity, "lost the lease: controller stopped");
        }
    }
}

/// Resolves once `rx` holds `value`, or its sender is gone (nothing will
/// change it any more, so waiting longer would hang a shutdown).
async fn became(mut rx: watch::Receiver<bool>, value: bool) {
    let _ = rx.wait_for(|&v| v == value).await;
}

/// Resolves when either future does.
async fn either(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    tokio::select! {
        () = a => {}
        () = b => {}
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
