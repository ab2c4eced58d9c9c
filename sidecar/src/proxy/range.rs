//! `Range` on reads: which ranged GETs reach the app with their `Range`,
//! and what the sidecar makes of the app's `206`.
//!
//! The sidecar tags only whole representations within `maxBodyBytes`, so it
//! used to strip `Range` and cut the part itself. For a representation too
//! large to tag that meant downloading all of it for a video seek. Now:
//!
//! - A plain ranged GET (`Range`, no precondition field at all) is forwarded
//!   with its `Range`.
//!   - The app answers `200` (it ignores `Range`): tagged, and the part cut
//!     by the sidecar, as before.
//!   - `206` for the whole representation (`bytes=0-` of a small file): it
//!     is the representation, so it is tagged like a `200`.
//!   - `206` of a representation within `maxBodyBytes`: fetched once more
//!     whole, so the part the client gets carries the canonical tag (one
//!     extra request to the app, for small bodies only).
//!   - `206` of a larger representation (or multipart, or of unknown length):
//!     passed through untagged, with no per-replica validators (`read.rs`).
//! - A ranged GET with `If-Range` (or any other precondition) is judged by
//!   the sidecar against the canonical tag, so `Range` and `If-Range` are
//!   stripped and the whole representation fetched. Forwarding them would
//!   make the app compare the client's canonical tag (or shared date) with
//!   its own per-replica validators, which never match: the app would send
//!   the whole body anyway, and its date comparison could even match on one
//!   replica and not another. A representation too large to tag has no
//!   canonical validator, so no client holds one to send; its `If-Range`
//!   cannot match and the whole `200` is the RFC 9110 §13.1.5 answer.
//! - HEAD ignores `Range` (RFC 9110 §14.2: only GET has ranges).

use http::header::{CONTENT_RANGE, RANGE};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::Incoming;

use super::body::empty;
use super::error::ProxyError;
use super::forward::Rewrite;
use super::{Context, Exchange};

impl Context {
    /// The app's response to a GET of what `parts` names: the whole current
    /// representation, or (for a plain ranged GET of one too large to tag)
    /// the app's own 206. A write's precondition check always gets the
    /// whole (its method is not GET, and it carries a condition).
    pub(super) async fn current_or_part(
        &self,
        ex: &Exchange,
        parts: &Parts,
    ) -> Result<Response<Incoming>, ProxyError> {
        let lane = ex.lane.as_ref();
        let forwards_range = parts.method == Method::GET
            && parts.headers.contains_key(RANGE)
            && ex.conditions.is_empty();
        if !forwards_range {
            return self.upstream.get_current(parts, lane).await;
        }
        let request = self.upstream.request(parts, empty(), Rewrite::RANGED)?;
        let mut response = self.upstream.send(lane, request).await?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Ok(response);
        }
        let max = self.max_body_bytes(ex);
        match content_range(response.headers()) {
            Some(range) if range.is_whole() && range.complete <= max => {
                *response.status_mut() = StatusCode::OK;
                response.headers_mut().remove(CONTENT_RANGE);
                Ok(response)
            }
            Some(range) if range.complete <= max => {
                // Dropping the part's body ends that app connection; the
                // lane opens another.
                drop(response);
                self.upstream.get_current(parts, lane).await
            }
            _ => Ok(response),
        }
    }
}

/// A `206`'s single `Content-Range: bytes first-last/complete`.
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    first: u64,
    last: u64,
    complete: u64,
}

impl ContentRange {
    /// Whether the part is the whole representation.
    fn is_whole(&self) -> bool {
        self.first == 0 && self.last.checked_add(1) == Some(self.complete)
    }
}

/// Parse `Content-Range` (RFC 9110 §14.4); `None` for anything but one
/// satisfied byte range of known length (`*` length, multipart, garbage).
fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let mut values = headers.get_all(CONTENT_RANGE).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes ")?;
    let (range, complete) = spec.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let number = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok()
    };
    let range = ContentRange {
        first: number(first)?,
        last: number(last)?,
        complete: number(complete)?,
    };
    (range.first <= range.last && range.last < range.complete).then_some(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(value: &'static str) -> Option<(u64, u64, u64, bool)> {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, HeaderValue::from_static(value));
        content_range(&h).map(|r| (r.first, r.last, r.complete, r.is_whole()))
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse("bytes 0-499/1234"), Some((0, 499, 1234, false)));
        assert_eq!(parse("bytes 0-1233/1234"), Some((0, 1233, 1234, true)));
        assert_eq!(
            parse("bytes 1000-1999/9999"),
            Some((1000, 1999, 9999, false))
        );
        assert_eq!(parse("bytes 0-499/*"), None);
        assert_eq!(parse("bytes */1234"), None);
        assert_eq!(parse("bytes 5-4/10"), None);
        assert_eq!(parse("bytes 0-10/10"), None);
        assert_eq!(parse("bytes +0-4/10"), None);
        assert_eq!(parse("items 0-4/10"), None);
        assert_eq!(parse("bytes 0-18446744073709551616/1"), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }
}
