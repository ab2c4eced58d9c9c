//! The optional access log (`--access-log`): one JSON line per request,
//! through `tracing` under the target [`TARGET`], so the usual filter
//! (`RUST_LOG=info,sametag::access=off`) can silence or route it.
//!
//! The line is written when the response body has been sent (or dropped,
//! when the client went away), so `duration_ms` and `bytes` cover the whole
//! transfer, not only the response head the request histogram times. Off by
//! default: the wrapper (one allocation per request) exists only when on.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics::Outcome;
use crate::proxy::{Body, BoxError};

/// The `tracing` target of access-log lines.
pub const TARGET: &str = "sametag::access";

/// Log `response` once its body has gone out (or was dropped).
pub fn wrap(
    response: Response<Body>,
    method: &Method,
    uri: &Uri,
    outcome: Outcome,
    started: Instant,
) -> Response<Body> {
    let status = response.status();
    let line = Line {
        method: method.clone(),
        path: uri.path().to_owned(),
        status,
        outcome,
        started,
        bytes: 0,
        complete: false,
    };
    response.map(|inner| {
        http_body_util::BodyExt::boxed_unsync(Logged {
            inner,
            line: Some(line),
        })
    })
}

/// What one access-log line says.
struct Line {
    method: Method,
    path: String,
    status: StatusCode,
    outcome: Outcome,
    started: Instant,
    /// Body bytes sent so far.
    bytes: u64,
    /// The body reached its end (false: the client went away first).
    complete: bool,
}

impl Line {
    fn emit(&self) {
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            outcome = ?self.outcome,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            complete = self.complete,
            "access"
        );
    }
}

/// A response body that counts what it yields and logs when dropped.
struct Logged {
    inner: Body,
    line: Option<Line>,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(line) = self.line.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        line.bytes += data.len() as u64;
                    }
                }
                Poll::Ready(None) => line.complete = true,
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            // hyper does not poll a body that reports its end up front
            // (a 304, a HEAD): that one was complete too.
            line.complete |= self.inner.is_end_stream();
            line.emit();
        }
    }
}
