//! Response bodies: one boxed type for everything the proxy sends, and the
//! bounded buffer that hashes a body while reading it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Instant;

use super::error::ProxyError;
use crate::tag::{EntityTag, TagHasher};

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
    /// The whole body, within the bound, and its canonical tag.
    Complete { body: Bytes, tag: EntityTag },
    /// Over the bound: the prefix already read followed by the rest, streamed
    /// untagged. Never holds more than the bound in memory.
    TooLarge(Body),
}

/// Read `body` while hashing it with the representation metadata in
/// `headers`, up to `max` bytes and until `deadline`. A declared
/// `Content-Length` over the bound skips buffering entirely.
pub async fn buffer_and_tag<B>(
    headers: &HeaderMap,
    mut body: B,
    max: u64,
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
    let mut hasher = TagHasher::from_headers(headers);
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
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
        hasher.update(&data);
        chunks.push_back(data);
        if len > max {
            return Ok(Buffered::TooLarge(boxed(Prefixed {
                prefix: chunks,
                rest: body,
            })));
        }
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    };
    Ok(Buffered::Complete {
        body,
        tag: hasher.finish(),
    })
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
