//! One upstream connection per HTTP/1.x client connection.
//!
//! An HTTP/1.x client sends one request at a time, so the upstream HTTP/1.1
//! connection it last used is free again by the time its next request
//! arrives. Keeping that connection on the client connection (its [`Lane`])
//! skips the shared pool's lookup and locking on every request. When the
//! client connection ends, its upstream connection goes to a small idle
//! stack for the next client connection, so clients that open a connection
//! per request do not cost an upstream connect each.
//!
//! HTTP/2 clients multiplex requests and use the shared pool instead
//! (`forward.rs`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::Body;
use super::error::ProxyError;

/// Most idle upstream connections kept for client connections to come.
const MAX_IDLE: usize = 64;

/// The most an upstream connection buffers of the app's response (hyper's
/// default is ~400 KiB). A streamed body moves through in pieces this big;
/// with many responses streaming at once, hyper's default alone would
/// take a large share of the sidecar's memory limit.
pub const UPSTREAM_BUF: usize = 64 * 1024;

type Sender = SendRequest<Body>;

/// Upstream connections not used by any client connection right now.
#[derive(Clone, Default)]
pub struct IdleConnections(Arc<Mutex<Vec<Sender>>>);

impl IdleConnections {
    fn lock(&self) -> MutexGuard<'_, Vec<Sender>> {
        // A panic while holding this lock leaves a valid Vec behind.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection the app has not closed, if any.
    fn pop(&self) -> Option<Sender> {
        let mut idle = self.lock();
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn push(&self, sender: Sender) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
    }
}

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConnections")
            .field("len", &self.lock().len())
            .finish()
    }
}

/// The upstream connection of one client connection.
#[derive(Clone)]
pub struct Lane(Arc<LaneInner>);

struct LaneInner {
    sender: Mutex<Option<Sender>>,
    idle: IdleConnections,
}

impl Lane {
    /// A lane for a new client connection, returning its upstream connection
    /// to `idle` when the client connection ends.
    pub fn new(idle: IdleConnections) -> Self {
        Lane(Arc::new(LaneInner {
            sender: Mutex::new(None),
            idle,
        }))
    }

    fn take(&self) -> Option<Sender> {
        let taken = self
            .0
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        taken.or_else(|| self.0.idle.pop())
    }

    fn put(&self, sender: Sender) {
        *self.0.sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    }

    /// Send `req` on this lane's connection (waiting for the previous
    /// exchange on it to finish), or on a new one. A request the connection
    /// refused before writing any of it (the app closed an idle connection
    /// at that moment) is sent once more on a new connection.
    pub async fn send(
        &self,
        authority: &Authority,
        connect_timeout: Duration,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut reused = match self.take() {
            // Err: the previous exchange broke the connection; start afresh.
            Some(mut sender) => sender.ready().await.ok().map(|()| sender),
            None => None,
        };
        let mut req = req;
        into_origin_form(&mut req);
        loop {
            let retry_allowed = reused.is_some();
            let mut sender = match reused.take() {
                Some(sender) => sender,
                None => connect(authority, connect_timeout).await?,
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    // The response body is still on this connection; the
                    // next request's `ready()` waits for it to end.
                    self.put(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if retry_allowed => req = unsent,
                    _ => return Err(ProxyError::UpstreamProtocol(e.into_error().into())),
                },
            }
        }
    }
}

impl Drop for LaneInner {
    fn drop(&mut self) {
        let sender = self
            .sender
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Only a connection with no exchange in progress can serve another
        // client connection right away.
        if let Some(sender) = sender.filter(Sender::is_ready) {
            self.idle.push(sender);
        }
    }
}

/// Send `req` in origin form (`GET /path?q HTTP/1.1`), as a request on a
/// connection of its own must go: the absolute URI `Upstream::request`
/// builds only tells the shared pool where to connect, and apps that route
/// on the raw target (Node's `http`, Python's `http.server`) answer 404 to
/// an absolute one. `Host` already holds the client's authority.
pub(super) fn into_origin_form<B>(req: &mut Request<B>) {
    let origin_form = req
        .uri()
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.uri_mut() = origin_form;
}

/// A new keep-alive HTTP/1.1 connection to the app, driven by its own task.
async fn connect(authority: &Authority, timeout: Duration) -> Result<Sender, ProxyError> {
    let (mut sender, connection) = handshake(authority, timeout).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    sender
        .ready()
        .await
        .map_err(|e| ProxyError::UpstreamConnect(e.into()))?;
    Ok(sender)
}

/// A new HTTP/1.1 connection to the app for one request that may switch
/// protocols (a WebSocket handshake); never pooled.
pub(super) async fn connect_upgradable(
    authority: &Authority,
    timeout: Duration,
) -> Result<Sender, ProxyError> {
    let (mut sender, connection) = handshake(authority, timeout).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded upstream connection ended with an error");
        }
    });
    sender
        .ready()
        .await
        .map_err(|e| ProxyError::UpstreamConnect(e.into()))?;
    Ok(sender)
}

/// Connect (within `timeout`) and shake hands; the caller drives the
/// connection.
async fn handshake(
    authority: &Authority,
    timeout: Duration,
) -> Result<(Sender, http1::Connection<TokioIo<TcpStream>, Body>), ProxyError> {
    let refused = |e: std::io::Error| ProxyError::UpstreamConnect(e.into());
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority.as_str())).await {
        Ok(connected) => connected.map_err(refused)?,
        Err(_) => return Err(ProxyError::UpstreamTimeout(timeout)),
    };
    stream.set_nodelay(true).map_err(refused)?;
    http1::Builder::new()
        .max_buf_size(UPSTREAM_BUF)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::UpstreamConnect(e.into()))
}
