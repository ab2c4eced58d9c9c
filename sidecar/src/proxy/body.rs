//! Response bodies: one boxed type for everything the proxy sends, and the
//! bounded buffer that hashes a body while reading it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Instant;

use super::budget::{Reservation, TagBudget};
use super::error::{ProxyError, RequestBodyTimeout};
use crate::policy::Steady;
use crate::tag::{EntityTag, TagHasher, steady_tag};

/// Bodies up to this size are searched for `steady:` matches on the
/// request's own task; larger ones on the blocking pool, so a long search
/// never stalls the other requests of a runtime thread.
const STEADY_INLINE_BYTES: usize = 64 * 1024;

/// Errors inside bodies (the app's connection failing mid-stream).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the proxy sends, in both directions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Box any body whose errors convert.
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A response body after the tagging step.
pub enum Buffered {
    /// The whole body, within the bound, and its canonical tag. The bytes
    /// hold their share of the [`TagBudget`] until the last clone is dropped.
    Complete { body: Bytes, tag: EntityTag },
    /// Over the bound: the prefix already read followed by the rest, streamed
    /// untagged. Never holds more than the bound in memory.
    TooLarge(Body),
    /// The global tag-buffer budget could not hold it: the prefix already
    /// read followed by the rest, streamed untagged.
    OverBudget(Body),
}

/// What [`buffer_and_tag`] keeps of a body.
#[derive(Clone, Copy)]
pub enum Keep<'a> {
    /// The bytes, to send them, within the global budget.
    Body(&'a TagBudget),
    /// Only the tag (a write's precondition check): one frame at a time is
    /// in memory, so no budget is needed and none can run out. On a
    /// `steady:` route the whole body (at most `max`) is held to be
    /// searched, outside the budget too: a write is judged with the tag a
    /// read hands out, whatever other responses are using.
    TagOnly,
}

/// Read `body` while hashing it with the representation metadata in
/// `headers`, up to `max` bytes and until `deadline`, keeping it as `keep`
/// says. A declared `Content-Length` over the bound skips buffering
/// entirely; one the budget cannot hold reserves nothing. With `steady`
/// patterns the tag is taken over the whole body once it is in
/// ([`steady_tag`]: matches can span frames).
pub async fn buffer_and_tag<B>(
    headers: &HeaderMap,
    body: B,
    max: u64,
    keep: Keep<'_>,
    steady: Option<&Arc<Steady>>,
    deadline: Instant,
) -> Result<Buffered, ProxyError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let budget = match keep {
        Keep::Body(budget) => Some(budget),
        Keep::TagOnly => None,
    };
    read_and_tag(headers, body, max, budget, steady, deadline).await
}

/// [`buffer_and_tag`]: the bytes are kept only with a budget or `steady`
/// patterns.
async fn read_and_tag<B>(
    headers: &HeaderMap,
    mut body: B,
    max: u64,
    budget: Option<&TagBudget>,
    steady: Option<&Arc<Steady>>,
    deadline: Instant,
) -> Result<Buffered, ProxyError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Ok(Buffered::TooLarge(boxed(body)));
    }
    let mut reservation = budget.map(TagBudget::reservation);
    let mut buf: Vec<u8> = Vec::new();
    if let (Some(len), Some(reserved)) = (declared, reservation.as_mut()) {
        if !reserved.grow_to(len) {
            budget.inspect(|b| b.refused());
            return Ok(Buffered::OverBudget(boxed(body)));
        }
        buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    }
    let mut hasher = TagHasher::from_headers(headers);
    let mut len: u64 = 0;
    // One timer for the whole body, not one per frame.
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut expired => return Err(ProxyError::UpstreamBodyTimeout),
        };
        let frame = match frame {
            None => break,
            Some(Err(e)) => return Err(ProxyError::UpstreamBody(e.into())),
            Some(Ok(frame)) => frame,
        };
        // Trailers of a tagged response are dropped: the tag covers the body,
        // and a 200 rebuilt from the buffer carries no trailer section.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if steady.is_none() {
            hasher.update(&data);
        }
        let Some(reserved) = reservation.as_mut() else {
            if len > max {
                return Ok(Buffered::TooLarge(boxed(body)));
            }
            if steady.is_some() {
                buf.extend_from_slice(&data);
            }
            continue;
        };
        if len > max {
            return Ok(Buffered::TooLarge(prefixed(buf, reserved, data, body)));
        }
        // Copied into one buffer as it arrives (never chunks and a joined
        // copy at once); its capacity is what the budget holds.
        let needed = buf.len() + data.len();
        if needed > buf.capacity() {
            let capacity = needed
                .max(buf.capacity() * 2)
                .min(usize::try_from(max).unwrap_or(usize::MAX));
            // Growing copies into a new allocation: both exist for a moment.
            if !reserved.grow_to((capacity + buf.capacity()) as u64) {
                budget.inspect(|b| b.refused());
                return Ok(Buffered::OverBudget(prefixed(buf, reserved, data, body)));
            }
            buf.reserve_exact(capacity - buf.len());
            reserved.shrink_to(buf.capacity() as u64);
        }
        buf.extend_from_slice(&data);
    }
    let (buf, tag) = match steady {
        None => (buf, hasher.finish()),
        Some(steady) => tag_steady(headers, buf, steady).await?,
    };
    let body = match reservation {
        Some(reserved) => reserved.freeze(buf),
        None => Bytes::new(),
    };
    Ok(Buffered::Complete { body, tag })
}

/// [`steady_tag`] of a whole body, on the blocking pool when it is large.
async fn tag_steady(
    headers: &HeaderMap,
    buf: Vec<u8>,
    steady: &Arc<Steady>,
) -> Result<(Vec<u8>, EntityTag), ProxyError> {
    if buf.len() <= STEADY_INLINE_BYTES {
        let tag = steady_tag(headers, &buf, steady);
        return Ok((buf, tag));
    }
    let (headers, steady) = (headers.clone(), steady.clone());
    tokio::task::spawn_blocking(move || {
        let tag = steady_tag(&headers, &buf, &steady);
        (buf, tag)
    })
    .await
    // Only a panic (or a runtime shutting down) gets here.
    .map_err(|e| ProxyError::UpstreamBody(Box::new(e)))
}

/// What was buffered (still holding its reservation), the frame in hand,
/// then the rest of `body`.
fn prefixed<B>(buf: Vec<u8>, reserved: &mut Reservation, data: Bytes, body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let empty = reserved.budget().reservation();
    let held = std::mem::replace(reserved, empty);
    let prefix = VecDeque::from([held.freeze(buf), data]);
    boxed(Prefixed { prefix, rest: body })
}

/// Chunks already read, then the rest of the original body.
struct Prefixed<B> {
    prefix: VecDeque<Bytes>,
    rest: B,
}

impl<B> HttpBody for Prefixed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

/// A client's request body that must have arrived by a deadline. Past it
/// the body fails with [`RequestBodyTimeout`], which aborts the request to
/// the app and becomes a 408 (`ProxyError::blame_client`).
pub fn with_deadline(body: Body, limit: Duration) -> Body {
    if body.is_end_stream() {
        return body;
    }
    boxed(Deadline {
        body,
        expired: Box::pin(tokio::time::sleep(limit)),
        limit,
    })
}

struct Deadline {
    body: Body,
    expired: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.expired.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(RequestBodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
