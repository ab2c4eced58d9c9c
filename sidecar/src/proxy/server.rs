//! Running a proxy on a socket: bind, then serve HTTP/1.1 and h2c through
//! the shared accept loop (`crate::accept`: connection cap, timeouts, drain).
//!
//! With more than one worker, each worker is a thread with a single-threaded
//! runtime and a listening socket of its own on the same port
//! (`SO_REUSEPORT`: the kernel spreads connections over them). A client
//! connection, its upstream connection and every task serving them then stay
//! on one thread: no work stealing, no hand-off between cores per request.
//! The first worker runs on the caller's runtime, beside the admin server
//! and the store's connection.
//!
//! This is the library's entry point for running sidecars in-process (the
//! binary, the demo and the tests all use it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, oneshot, watch};

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
    /// Worker threads, each accepting on its own socket (at least 1).
    pub workers: usize,
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
            workers: 1,
        }
    }
}

/// Pending connections a listening socket queues (tokio's default).
const BACKLOG: u32 = 1024;

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
    /// The first worker's socket, served on the caller's runtime.
    listener: TcpListener,
    /// The other workers' sockets, each for a thread of its own.
    others: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
    proxy: Proxy,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
}

impl Server {
    /// Bind the listening socket(s) and build the proxy.
    pub async fn bind(config: ServerConfig, store: Arc<dyn Store>) -> Result<Server, ServeError> {
        let bind_error = |addr| move |source| ServeError { addr, source };
        let workers = config.workers.max(1);
        let (listener, local_addr, others) = if workers == 1 {
            let listener = TcpListener::bind(config.listen)
                .await
                .map_err(bind_error(config.listen))?;
            let local_addr = listener.local_addr().map_err(bind_error(config.listen))?;
            (listener, local_addr, Vec::new())
        } else {
            // Port 0 picks a free port once; the other sockets join it.
            let first = reuseport_listener(config.listen).map_err(bind_error(config.listen))?;
            let local_addr = first.local_addr().map_err(bind_error(config.listen))?;
            let mut others = Vec::with_capacity(workers - 1);
            for _ in 1..workers {
                let listener = reuseport_listener(local_addr).map_err(bind_error(local_addr))?;
                // Deregistered here, registered again on its worker's runtime.
                others.push(listener.into_std().map_err(bind_error(local_addr))?);
            }
            (first, local_addr, others)
        };

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
            others,
            local_addr,
            proxy,
            permits: limits.permits(),
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
    /// the drain timeout) for in-flight requests to finish, on every worker.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut finished = Vec::with_capacity(self.others.len());
        for (n, listener) in self.others.into_iter().enumerate() {
            let worker = Worker {
                proxy: self.proxy.for_worker(),
                limits: self.limits.clone(),
                permits: self.permits.clone(),
                metrics: self.metrics.clone(),
                drain_timeout: self.drain_timeout,
            };
            let stop = stopped(stop_rx.clone());
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("sametag-worker-{}", n + 1))
                .spawn(move || {
                    worker.run_on_own_thread(listener, stop);
                    drop(done_tx);
                });
            match thread {
                Ok(_) => finished.push(done_rx),
                // The kernel stops routing to a closed socket: the others
                // take its share.
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a worker thread; serving with fewer")
                }
            }
        }
        let first = Worker {
            proxy: self.proxy,
            limits: self.limits,
            permits: self.permits,
            metrics: self.metrics,
            drain_timeout: self.drain_timeout,
        };
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(signal, first.serve(self.listener, stopped(stop_rx)));
        for done in finished {
            // Closed (never sent) when the worker's thread is done draining.
            let _ = done.await;
        }
    }
}

/// A socket listening on `addr` that others may share (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// One worker: an accept loop and the proxy it serves with.
struct Worker {
    proxy: Proxy,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
}

impl Worker {
    /// Serve `listener` until `shutdown`, then drain.
    async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let acceptor = Acceptor {
            listener,
            name: "proxy",
            limits: self.limits,
            metrics: self.metrics,
            drain_timeout: self.drain_timeout,
            permits: self.permits,
        };
        let proxy = self.proxy;
        acceptor
            .run(move |peer| proxy.for_connection(peer), shutdown)
            .await;
    }

    /// Run a single-threaded runtime on this thread and serve `listener` on
    /// it until `shutdown`, then drain.
    fn run_on_own_thread(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker's runtime; serving with fewer workers");
                return;
            }
        };
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => self.serve(listener, shutdown).await,
                Err(e) => tracing::error!(error = %e, "cannot register a worker's socket; serving with fewer workers"),
            }
        });
    }
}
