//! The `sametag-sidecar` binary: parse config, start telemetry, build the
//! store, run the proxy and admin servers together until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use sametag_sidecar::accept::ConnectionLimits;
use sametag_sidecar::admin::Admin;
use sametag_sidecar::config::{Cli, Config};
use sametag_sidecar::metrics::Metrics;
use sametag_sidecar::policy::PolicyHandle;
use sametag_sidecar::proxy::{Server, ServerConfig};
use sametag_sidecar::store::Store;
use sametag_sidecar::store::memory::{MemoryLimits, MemoryStore};
use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use tokio::sync::watch;

fn main() -> ExitCode {
    let config = match Cli::try_parse() {
        Ok(cli) => cli.into_config(),
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Bad flags: one clear line (clap's first), exit 2.
            let text = e.to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("sametag-sidecar: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    init_tracing();
    // The main thread runs the admin server, the store's connection and the
    // first proxy worker; the other workers start their own runtimes
    // (`proxy::server`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sametag-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

/// Hold the listener back (a bounded moment) until the store answers, so a
/// sidecar that starts with its peers tags like them from its first request.
async fn wait_for_store(store: &RedisStore, limit: Duration) {
    if limit.is_zero() {
        return;
    }
    tracing::info!(?limit, "waiting for the store before serving");
    if store.wait_up(limit).await {
        tracing::info!("store reachable");
    } else {
        tracing::warn!(
            ?limit,
            "store still unreachable: serving degraded (content-derived tags, the app's Last-Modified) until it is"
        );
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .init();
}

async fn run(config: Config) -> ExitCode {
    // An invalid policy file is a configuration error: one line, exit 2.
    let policy = match &config.policy {
        Some(path) if config.policy_optional && !path.exists() => {
            tracing::warn!(policy = %path.display(), "policy file missing; Validate for every path until it appears");
            let handle = PolicyHandle::default();
            handle.watch(path.clone(), config.policy_reload);
            handle
        }
        Some(path) => match PolicyHandle::load(path) {
            Ok(handle) => {
                handle.watch(path.clone(), config.policy_reload);
                handle
            }
            Err(e) => {
                eprintln!("sametag-sidecar: invalid policy: {e}");
                return ExitCode::from(2);
            }
        },
        None => PolicyHandle::default(),
    };

    let mut metrics = Metrics::new();
    let store: Arc<dyn Store> = match &config.redis {
        Some(url) => {
            let options = RedisOptions {
                // A GET that overlapped a write may have read the old state;
                // do not trust validations younger than the app may take.
                trust_guard: config.proxy.upstream_timeout,
                tls_ca_file: config.redis_ca_file.clone(),
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: config.redis_wait_timeout,
                credentials: config.redis_credentials.clone(),
                ..RedisOptions::default()
            };
            match RedisStore::connect(url, &config.store_prefix, options) {
                Ok(store) => {
                    store.register_metrics(metrics.registry_mut());
                    wait_for_store(&store, config.store_wait).await;
                    Arc::new(store)
                }
                Err(e) => {
                    eprintln!("sametag-sidecar: invalid --redis/--store-prefix: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => Arc::new(MemoryStore::with_limits(MemoryLimits {
            trust_guard: config.proxy.upstream_timeout,
            ..MemoryLimits::default()
        })),
    };
    let metrics = Arc::new(metrics);

    let server_config = ServerConfig {
        listen: config.listen,
        options: config.proxy.clone(),
        policy,
        metrics: metrics.clone(),
        drain_timeout: config.drain_timeout,
        workers: config.workers,
    };
    let server = match Server::bind(server_config, store.clone()).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("sametag-sidecar: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match tokio::net::TcpListener::bind(config.admin).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "sametag-sidecar: cannot listen on {} (admin): {e}",
                config.admin
            );
            return ExitCode::FAILURE;
        }
    };
    let ready = Arc::new(AtomicBool::new(true));
    let admin = Admin {
        metrics,
        store,
        ready: ready.clone(),
        purge_token_file: config.purge_token_file.clone(),
    };
    tracing::info!(
        listen = %server.local_addr(),
        admin = %admin_listener.local_addr().unwrap_or(config.admin),
        upstream = %config.proxy.upstream,
        workers = config.workers,
        store = if config.redis.is_some() { "redis" } else { "memory" },
        "sametag sidecar started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let signals = async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
    };
    let admin_stop = stop_rx.clone();
    // The admin port gets the proxy's timeouts and a small cap of its own.
    let admin_limits =
        ConnectionLimits::admin(config.proxy.header_read_timeout, config.proxy.idle_timeout);
    tokio::join!(
        signals,
        server.run(stopped(stop_rx)),
        admin.serve_with(admin_listener, admin_limits, stopped(admin_stop)),
    );
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C is still caught.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
