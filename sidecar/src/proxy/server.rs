//! Running a proxy on a socket: bind, then serve HTTP/1.1 and h2c through
//! the shared accept loop (`crate::accept`: connection cap, timeouts, drain).
//!
//! This is the library's entry point for running sidecars in-process (the
//! binary, the demo and the tests all use it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpListener;

use super::Proxy;
use crate::accept::{Acceptor, ConnectionLimits};
use crate::config::ProxyOptions;
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::store::Store;

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
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
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

        let limits = ConnectionLimits {
            max_connections: config.options.max_connections,
            header_read_timeout: config.options.header_read_timeout,
            idle_timeout: config.options.idle_timeout,
            max_header_bytes: config.options.max_header_bytes,
        };
        let metrics = config.metrics.clone();
        let proxy = Proxy::new(config.options, store, config.policy, config.metrics);
        Ok(Server {
            listener,
            local_addr,
            proxy,
            limits,
            metrics,
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
        let acceptor = Acceptor {
            listener: self.listener,
            name: "proxy",
            limits: self.limits,
            metrics: self.metrics,
            drain_timeout: self.drain_timeout,
        };
        let proxy = self.proxy;
        acceptor
            .run(move |peer| proxy.for_connection(peer), shutdown)
            .await;
    }
}
