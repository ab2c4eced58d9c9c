//! Running a proxy on a socket: accept, serve HTTP/1.1 and h2c with the
//! request limits, and drain in-flight requests on shutdown.
//!
//! This is the library's entry point for running sidecars in-process (the
//! binary, the demo and the tests all use it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::Proxy;
use crate::config::ProxyOptions;
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::store::Store;

/// hyper refuses a read buffer smaller than this.
const MIN_BUF_SIZE: usize = 8192;

/// What a [`Server`] needs besides its store.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where clients connect; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Upstream, timeouts, limits, credential secret.
    pub options: ProxyOptions,
    /// The policy in force (hot-reloadable through the handle).
    pub policy: PolicyHandle,
    /// Where to count; share one with the admin server.
    pub metrics: Arc<Metrics>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// Defaults (Validate everywhere, fresh metrics) for a proxy on `listen`
    /// in front of `upstream`.
    pub fn new(listen: SocketAddr, upstream: Authority) -> Self {
        Self {
            listen,
            options: ProxyOptions::new(upstream),
            policy: PolicyHandle::default(),
            metrics: Arc::new(Metrics::new()),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ServeError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The operating system's reason.
    #[source]
    pub source: std::io::Error,
}

/// A bound, not yet running, sidecar.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    proxy: Proxy,
    builder: auto::Builder<TokioExecutor>,
    drain_timeout: Duration,
}

impl Server {
    /// Bind the listening socket and build the proxy.
    pub async fn bind(config: ServerConfig, store: Arc<dyn Store>) -> Result<Server, ServeError> {
        let bind_error = |source| ServeError {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;

        let mut builder = auto::Builder::new(TokioExecutor::new());
        let max_header = config.options.max_header_bytes.max(MIN_BUF_SIZE);
        builder
            .http1()
            .timer(TokioTimer::new())
            // A slow client must send its header section in time...
            .header_read_timeout(config.options.header_read_timeout)
            // ...and cannot make us buffer more than this of it (431 past it).
            .max_buf_size(max_header);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));

        let proxy = Proxy::new(config.options, store, config.policy, config.metrics);
        Ok(Server {
            listener,
            local_addr,
            proxy,
            builder,
            drain_timeout: config.drain_timeout,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The proxy service (for embedding in another server).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Serve until `shutdown` completes, then stop accepting and wait (up to
    /// the drain timeout) for in-flight requests to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of descriptors and the like: back off, go on.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = self
                        .builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), self.proxy.for_connection(peer))
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!("draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained"),
            () = tokio::time::sleep(self.drain_timeout) => {
                tracing::warn!(timeout = ?self.drain_timeout, "drain timed out; closing the remaining connections");
            }
        }
    }
}
