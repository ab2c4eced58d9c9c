//! The one accept loop, for the proxy and the admin listener alike: a cap on
//! open connections, a deadline for a connection's first request (so a
//! silent socket, half an HTTP/2 preface or half a header section is closed
//! in time), an idle timeout between requests, HTTP/2 keep-alive pings, and
//! a graceful drain on shutdown.
//!
//! hyper-util's protocol detection reads the first bytes with no timeout,
//! hyper's HTTP/2 server has no idle timeout of its own, and hyper's
//! HTTP/1.1 header timer also runs between keep-alive requests (closing
//! idle connections a load balancer still holds). So each connection is
//! watched from outside instead: a service wrapper counts requests in
//! flight (until their response body is finished), the socket counts bytes
//! read, and the connection's task closes it when a deadline passes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::proxy::{Body, BoxError};

/// hyper refuses a read buffer smaller than this.
const MIN_BUF_SIZE: usize = 8192;

/// How often an HTTP/2 connection is pinged, and how long a ping may go
/// unanswered before the connection is closed: a peer that vanished
/// (no FIN, no RST) is noticed within a minute.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a connection closed before a whole request arrived has to
/// finish closing (an HTTP/2 GOAWAY) before it is dropped.
const MAX_UNASKED_GRACE: Duration = Duration::from_secs(1);

/// Concurrent streams an HTTP/2 client may open (RFC 9113 §6.5.2 suggests
/// no fewer than 100); each holds at most one upstream request.
const H2_MAX_STREAMS: u32 = 128;

/// The bounds of one listener's connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// A connection's first request head must arrive within this; over
    /// HTTP/1.1, so must every later head once its first byte has.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with GOAWAY).
    pub idle_timeout: Duration,
    /// Largest request header section (431 past it over HTTP/1.1).
    pub max_header_bytes: usize,
}

/// Connections the admin listener keeps open at once (a kubelet, a
/// Prometheus scraper and a person or two).
const ADMIN_MAX_CONNECTIONS: usize = 64;

impl ConnectionLimits {
    /// The admin listener's: the proxy's timeouts, a small cap, small heads.
    pub fn admin(header_read_timeout: Duration, idle_timeout: Duration) -> Self {
        ConnectionLimits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            header_read_timeout,
            idle_timeout,
            max_header_bytes: MIN_BUF_SIZE,
        }
    }

    /// Permits for [`ConnectionLimits::max_connections`] connections, to
    /// share between the listeners these limits apply to.
    pub fn permits(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections))
    }

    /// The hyper connection builder these limits configure.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let max_header = self.max_header_bytes.max(MIN_BUF_SIZE);
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper's header timer also runs while a keep-alive connection
            // waits for its next request, which would close every idle
            // HTTP/1.1 connection after the header timeout, well before a
            // load balancer's own idle timeout. The watch below times heads.
            .header_read_timeout(None)
            // A client cannot make us buffer more than this of a head.
            .max_buf_size(max_header);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_STREAMS)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        builder
    }
}

/// One listener and how its connections are served.
pub struct Acceptor {
    /// The bound socket.
    pub listener: TcpListener,
    /// `proxy` or `admin`: the metric label.
    pub name: &'static str,
    /// Bounds on its connections.
    pub limits: ConnectionLimits,
    /// Where connection counts go.
    pub metrics: Arc<Metrics>,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// The connection cap's permits, shared by every listener of one server
    /// (a sidecar's workers each accept on their own socket, under one cap).
    pub permits: Arc<Semaphore>,
}

/// Where the server is in its life, as connections see it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Serving,
    /// Finish in-flight requests, take no new ones.
    Draining,
    /// The drain timed out: close now.
    Closing,
}

impl Acceptor {
    /// Accept until `shutdown` completes, serving each connection with the
    /// service `make(peer)` returns; then stop accepting and drain.
    pub async fn run<M, S>(self, mut make: M, shutdown: impl Future<Output = ()>)
    where
        M: FnMut(SocketAddr) -> S,
        S: Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + Unpin + 'static,
        S::Error: Into<BoxError>,
    {
        let Acceptor {
            listener,
            name,
            limits,
            metrics,
            drain_timeout,
            permits,
        } = self;
        let builder = limits.builder();
        let open = metrics.connections_open(name);
        let (stage, stage_rx) = watch::channel(Stage::Serving);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and the like: back off, go on.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Past the cap the connection is closed at once: a load balancer
            // retries elsewhere sooner than it would time out a queued one.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics.connection_refused(name);
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(Activity::default());
            let service = Tracked {
                inner: make(peer),
                activity: activity.clone(),
            };
            let io = Metered {
                io: stream,
                activity: service.activity.clone(),
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            let watch = Watch {
                name,
                limits: limits.clone(),
                metrics: metrics.clone(),
                activity,
                stage: stage_rx.clone(),
                _open: OpenGuard::new(open.clone()),
            };
            tokio::spawn(async move {
                watch.drive(conn, peer).await;
                drop(permit);
            });
        }
        drop(listener);
        drop(stage_rx);
        tracing::info!(listener = name, "draining in-flight requests");
        stage.send_replace(Stage::Draining);
        if tokio::time::timeout(drain_timeout, stage.closed())
            .await
            .is_ok()
        {
            tracing::info!(listener = name, "drained");
        } else {
            tracing::warn!(listener = name, timeout = ?drain_timeout, "drain timed out; closing the remaining connections");
            stage.send_replace(Stage::Closing);
        }
    }
}

/// The hyper connection type the accept loop drives.
type Conn<S> = auto::UpgradeableConnection<'static, TokioIo<Metered>, Tracked<S>, TokioExecutor>;

/// What a connection's task watches besides the connection itself.
struct Watch {
    name: &'static str,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
    stage: watch::Receiver<Stage>,
    _open: OpenGuard,
}

impl Watch {
    /// Serve `conn` until it ends, is idle too long, or the server closes.
    async fn drive<S>(mut self, conn: Conn<S>, peer: SocketAddr)
    where
        S: Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
        S::Future: Send + Unpin + 'static,
        S::Error: Into<BoxError>,
    {
        tokio::pin!(conn);
        let idle = self.activity.clone();
        let expired = idle.expired(self.limits.header_read_timeout, self.limits.idle_timeout);
        tokio::pin!(expired);
        // Once closing gracefully, how long the connection has to finish.
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(listener = self.name, %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                why = &mut expired, if grace.is_none() => {
                    self.metrics.connection_timed_out(self.name, why.label());
                    // Gracefully (HTTP/2: GOAWAY, so a client whose request
                    // crossed it knows the request was not processed), but
                    // only briefly when nothing whole was asked.
                    let grace_period = match why {
                        Expired::Idle => self.limits.header_read_timeout,
                        Expired::FirstRequest | Expired::Header => {
                            self.limits.header_read_timeout.min(MAX_UNASKED_GRACE)
                        }
                    };
                    conn.as_mut().graceful_shutdown();
                    grace = Some(Box::pin(tokio::time::sleep(grace_period)));
                }
                changed = self.stage.changed() => {
                    let stage = if changed.is_ok() { *self.stage.borrow_and_update() } else { Stage::Closing };
                    match stage {
                        Stage::Serving => {}
                        Stage::Draining => conn.as_mut().graceful_shutdown(),
                        Stage::Closing => return,
                    }
                }
                () = async { if let Some(g) = grace.as_mut() { g.as_mut().await } else { std::future::pending().await } } => {
                    return;
                }
            }
        }
    }
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    /// No request head within the header-read timeout of accepting it.
    FirstRequest,
    /// Part of a later HTTP/1.1 request head, and not the rest in time.
    Header,
    /// No request in flight for the idle timeout.
    Idle,
}

impl Expired {
    fn label(self) -> &'static str {
        match self {
            Expired::FirstRequest => "first-request",
            Expired::Header => "header",
            Expired::Idle => "idle",
        }
    }
}

/// Requests of one connection, as its task sees them.
#[derive(Default)]
struct Activity {
    /// Requests started so far.
    started: AtomicU64,
    /// Requests whose response has not finished.
    in_flight: AtomicUsize,
    /// Woken when `in_flight` drops to zero.
    quiet: Notify,
    /// Bytes read from the client so far.
    read: AtomicU64,
    /// `read` when the last response finished: bytes past it are the next
    /// request's head.
    read_when_quiet: AtomicU64,
    /// The connection speaks HTTP/1.x (known from its first request).
    http1: AtomicBool,
}

impl Activity {
    fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version < http::Version::HTTP_2 {
            self.http1.store(true, Ordering::Release);
        }
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Resolves when the connection should be closed: no request head
    /// `header` after accepting it; or later, with nothing in flight, `idle`
    /// without a request, or (HTTP/1.1, where nothing but the next head can
    /// arrive between requests) part of a head and not the rest within
    /// `header`. Checked once per `header` (or `idle`, if shorter), so a
    /// partial head is closed between one and two header timeouts after
    /// its first byte.
    async fn expired(&self, header: Duration, idle: Duration) -> Expired {
        tokio::time::sleep(header).await;
        if self.started() == 0 {
            return Expired::FirstRequest;
        }
        loop {
            // A stored wake-up from an earlier request only costs a check.
            while self.busy() {
                self.quiet.notified().await;
            }
            let idle_since = Instant::now();
            let started = self.started();
            let read = self.read_when_quiet.load(Ordering::Acquire);
            let http1 = self.http1.load(Ordering::Acquire);
            let step = if http1 { header.min(idle) } else { idle };
            let mut partial_since: Option<Instant> = None;
            loop {
                tokio::time::sleep(step).await;
                if self.started() != started || self.busy() {
                    break;
                }
                let now = Instant::now();
                if http1 && self.read.load(Ordering::Acquire) != read {
                    let since = *partial_since.get_or_insert(now);
                    if now - since >= header {
                        return Expired::Header;
                    }
                }
                if now - idle_since >= idle {
                    return Expired::Idle;
                }
            }
        }
    }
}

/// One request in flight, until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Read before the count drops, so the watch never sees a stale one.
        let read = activity.read.load(Ordering::Acquire);
        activity.read_when_quiet.store(read, Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.quiet.notify_one();
        }
    }
}

/// Counts a connection in the open-connections gauge while it lives.
struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Tracked ===

/// A service whose requests count as activity of their connection.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>>,
    S::Future: Unpin,
{
    type Response = Response<Guarded>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            in_flight: Some(self.activity.begin(req.version())),
            inner: self.inner.call(req),
        }
    }
}

/// The response future of a [`Tracked`] service.
pub struct TrackedFuture<F> {
    inner: F,
    in_flight: Option<InFlight>,
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>> + Unpin,
{
    type Output = Result<Response<Guarded>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(Pin::new(&mut self.inner).poll(cx));
        let in_flight = self.in_flight.take();
        Poll::Ready(response.map(|r| {
            r.map(|body| Guarded {
                body,
                _in_flight: in_flight,
            })
        }))
    }
}

/// A response body that keeps its request in flight until it is finished.
pub struct Guarded {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl HttpBody for Guarded {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Metered ===

/// The client's socket, counting the bytes read from it (how the watch
/// sees part of a request head arrive).
pub struct Metered {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        this.activity.read.fetch_add(read, Ordering::AcqRel);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
