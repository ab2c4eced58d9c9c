//! Compression by the sidecar (a route's `compress:`), so a compressing
//! ingress never has to weaken the strong tags: which tagged responses may
//! be compressed, which coding a request gets and the tag it carries
//! (`encoding.rs`), `Vary`, and the compressors.
//!
//! - **Eligible** representations: no `Content-Encoding` at all (whatever
//!   the app encoded is left alone), no `Cache-Control: no-transform`, a
//!   compressible `Content-Type` ([`compressible`]) and at least
//!   [`MIN_BYTES`]. Fixed rules, so every replica decides alike; all but
//!   `no-transform` are covered by the identity tag `T`.
//! - Every tagged 200 and 304 on a compress route (trusted 304s included)
//!   carries `Vary: Accept-Encoding`, merged with the app's, whether or not
//!   it is compressed: a cache must never hand one client's choice to
//!   another.
//! - **Trust**: a trusted 304 needs the tag of the representation the
//!   request would get, so it must know whether `T` is eligible without the
//!   body. Each sidecar remembers that per tag ([`Eligibility`], filled when
//!   it tags a response; bounded). Unknown, a client holding an encoded tag
//!   of `T` proves it (only eligible representations get one); otherwise the
//!   app is asked, as in Validate. No store change: every replica derives
//!   the same answer from the same representation.
//! - **CPU**: compression runs only for a 200 that is sent (a 304 costs
//!   none), on the body already buffered for tagging; small bodies inline,
//!   larger ones on the blocking pool. The output holds tag-buffer budget
//!   like the body it came from; without budget the answer is identity.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, Response, response};

use super::body::{Body, empty, full};
use super::budget::Reservation;
use super::{Context, Exchange};
use crate::encoding::{AcceptEncoding, decode_tag, encoded_tag, negotiate};
use crate::policy::Coding;
use crate::precondition::{Conditions, Validators};
use crate::tag::{EntityTag, TagList};

/// Smallest body compressed: below this a coding saves too little to be
/// worth a byte of framing and the CPU.
pub const MIN_BYTES: usize = 256;

/// Largest body compressed on the request's own task; larger ones go to
/// the blocking pool so one big body cannot stall the other connections of
/// a runtime thread. 16 KiB of JSON is roughly 0.1 ms of zstd and 0.3-0.6
/// ms of gzip or br at the levels below (`bench/compress.sh`).
const INLINE_MAX: usize = 16 * 1024;

/// Levels suited to dynamic content (compressed per response): gzip 6
/// (zlib's default), brotli 5, zstd 3 (its default). Changing one changes
/// what the compressor emits, so the tag profile in `encoding.rs` must
/// change with it.
const GZIP_LEVEL: u32 = 6;
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
const ZSTD_LEVEL: i32 = 3;

/// Tags remembered per [`Eligibility`] generation.
const ELIGIBILITY_CAPACITY: usize = 16 * 1024;

/// Headers that describe the identity bytes and would be false of the
/// encoded ones.
const IDENTITY_ONLY: [&str; 4] = ["content-digest", "repr-digest", "digest", "content-md5"];

/// What a tagged response on this request's route becomes.
pub(super) enum Choice {
    /// The route does not compress: nothing changes.
    Off,
    /// Identity (not eligible, or the client takes none of the route's
    /// codings, or no budget for the output), with `Vary`.
    Identity,
    /// This coding, its output's budget reserved.
    Encode(Coding, Reservation),
}

impl Choice {
    /// The validators of the representation the client gets.
    pub(super) fn validators(&self, identity: Validators) -> Validators {
        match self {
            Choice::Encode(coding, _) => Validators {
                tag: encoded_tag(&identity.tag, *coding),
                last_modified: identity.last_modified,
            },
            Choice::Off | Choice::Identity => identity,
        }
    }
}

impl Context {
    /// The representation a freshly tagged 200 (`headers`, a body of `len`
    /// bytes, identity tag `tag`) is sent as, for this request. Adds
    /// `Vary: Accept-Encoding` on a compress route.
    pub(super) fn choose(
        &self,
        ex: &Exchange,
        headers: &mut HeaderMap,
        len: usize,
        tag: &EntityTag,
    ) -> Choice {
        if ex.route.compress.is_empty() {
            return Choice::Off;
        }
        vary_accept_encoding(headers);
        let eligible = eligible(headers, len);
        self.eligibility.remember(tag, eligible);
        if !eligible {
            return Choice::Identity;
        }
        let accept = AcceptEncoding::from_headers(&ex.parts.headers);
        let Some(coding) = negotiate(accept.as_ref(), &ex.route.compress) else {
            return Choice::Identity;
        };
        // The output is at most about the input's size for these types.
        let mut reservation = self.budget.reservation();
        if !reservation.grow_to(len as u64) {
            return Choice::Identity;
        }
        Choice::Encode(coding, reservation)
    }

    /// The validators a trusted 304 is judged against on this request's
    /// route: the identity ones, or those of the coding the request would
    /// get. `None` when that cannot be known without the body (ask the app).
    pub(super) fn trusted_validators(
        &self,
        ex: &Exchange,
        identity: &Validators,
    ) -> Option<Validators> {
        if ex.route.compress.is_empty() {
            return Some(identity.clone());
        }
        let accept = AcceptEncoding::from_headers(&ex.parts.headers);
        let Some(coding) = negotiate(accept.as_ref(), &ex.route.compress) else {
            return Some(identity.clone());
        };
        let eligible = self
            .eligibility
            .get(&identity.tag)
            .or_else(|| holds_encoded(&ex.conditions, &identity.tag).then_some(true))?;
        if !eligible {
            return Some(identity.clone());
        }
        Some(Validators {
            tag: encoded_tag(&identity.tag, coding),
            last_modified: identity.last_modified,
        })
    }

    /// The encoded 200 (or its HEAD): `head` already carries the encoded
    /// tag. Should the compressor fail, the identity body goes out with
    /// the identity tag instead.
    pub(super) async fn encoded(
        &self,
        mut head: response::Parts,
        body: Bytes,
        coding: Coding,
        reservation: Reservation,
        is_head: bool,
    ) -> Response<Body> {
        let before = body.len();
        match encode(coding, body.clone(), reservation).await {
            Ok(out) => {
                self.metrics
                    .compressed(coding.as_str(), before as u64, out.len() as u64);
                head.headers
                    .insert(CONTENT_ENCODING, HeaderValue::from_static(coding.as_str()));
                head.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
                // Ranges of an encoded response are not served (the whole
                // 200 is), and digests of the identity bytes would be false.
                head.headers.remove(ACCEPT_RANGES);
                for name in IDENTITY_ONLY {
                    head.headers.remove(name);
                }
                let body = if is_head { empty() } else { full(out) };
                Response::from_parts(head, body)
            }
            Err(e) => {
                tracing::warn!(error = %e, coding = coding.as_str(), "compression failed; sending identity");
                let identity = head
                    .headers
                    .get(ETAG)
                    .and_then(|v| EntityTag::parse(v.as_bytes()).ok())
                    .and_then(|t| decode_tag(&t));
                if let Some((tag, _)) = identity
                    && let Ok(v) = tag.header_value()
                {
                    head.headers.insert(ETAG, v);
                }
                let body = if is_head { empty() } else { full(body) };
                Response::from_parts(head, body)
            }
        }
    }
}

/// Whether a tagged 200 may be compressed (module docs).
pub fn eligible(headers: &HeaderMap, len: usize) -> bool {
    len >= MIN_BYTES
        && !headers.contains_key(CONTENT_ENCODING)
        && !no_transform(headers)
        && headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| compressible(v.as_bytes()))
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

/// Media types that compress well: `text/*` (but `text/event-stream`),
/// JSON, JavaScript, XML and their `+json`/`+xml` kin, SVG, WebAssembly and
/// uncompressed fonts.
pub fn compressible(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    let Ok(essence) = std::str::from_utf8(&essence) else {
        return false;
    };
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "text" => sub != "event-stream",
        "application" => {
            sub.ends_with("+json")
                || sub.ends_with("+xml")
                || matches!(
                    sub,
                    "json"
                        | "javascript"
                        | "ecmascript"
                        | "x-javascript"
                        | "xml"
                        | "x-ndjson"
                        | "wasm"
                        | "graphql"
                        | "x-www-form-urlencoded"
                        | "vnd.ms-fontobject"
                        | "x-font-ttf"
                )
        }
        "image" => matches!(sub, "svg+xml" | "x-icon" | "vnd.microsoft.icon" | "bmp"),
        "font" => matches!(sub, "ttf" | "otf"),
        _ => false,
    }
}

/// Add `Accept-Encoding` to `Vary` unless it is already there.
pub fn vary_accept_encoding(headers: &mut HeaderMap) {
    let listed = headers.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|n| {
            let n = n.trim_ascii();
            n == b"*" || n.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !listed {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Whether the request's `If-None-Match` (or `If-Match`) names an encoded
/// tag of `identity`.
fn holds_encoded(conditions: &Conditions, identity: &EntityTag) -> bool {
    [&conditions.if_none_match, &conditions.if_match]
        .into_iter()
        .any(|list| match list {
            Some(Ok(TagList::Tags(tags))) => tags
                .iter()
                .filter_map(decode_tag)
                .any(|(t, _)| t.opaque() == identity.opaque()),
            _ => false,
        })
}

/// Compress `body`, inline when small, and account the output in the
/// budget `reservation` draws on.
async fn encode(
    coding: Coding,
    body: Bytes,
    mut reservation: Reservation,
) -> std::io::Result<Bytes> {
    let out = if body.len() <= INLINE_MAX {
        compress(coding, &body)?
    } else {
        tokio::task::spawn_blocking(move || compress(coding, &body))
            .await
            .map_err(std::io::Error::other)??
    };
    // Rarely larger than reserved (incompressible text); held all the same.
    let _ = reservation.grow_to(out.capacity() as u64);
    reservation.shrink_to(out.capacity() as u64);
    Ok(reservation.freeze(out))
}

/// One coding's output for `input`: deterministic for given settings, so
/// every replica emits the same bytes under the same tag.
pub fn compress(coding: Coding, input: &[u8]) -> std::io::Result<Vec<u8>> {
    let out = Vec::with_capacity(input.len() / 3 + 64);
    match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            e.write_all(input)?;
            e.finish()
        }
        Coding::Br => {
            // A window fitted to the body was tried: several times slower
            // at quality 5 (bench/compress.sh), so the default window.
            let mut w = brotli::CompressorWriter::new(out, 4096, BROTLI_QUALITY, BROTLI_WINDOW);
            w.write_all(input)?;
            // Finishes the stream.
            Ok(w.into_inner())
        }
        Coding::Zstd => ZSTD.with_borrow_mut(|slot| {
            // One context per thread, reused: creating one per response
            // cost more than compressing a small body. Same output.
            let compressor = match slot {
                Some(c) => c,
                None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            };
            compressor.compress(input)
        }),
    }
}

thread_local! {
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Per sidecar: whether the representation of a tag is eligible, as last
/// seen. Two generations of [`ELIGIBILITY_CAPACITY`] tags each: when the
/// newer fills, the older is dropped, so hot tags stay and memory is
/// bounded (about 2 MiB).
#[derive(Default)]
pub(super) struct Eligibility(Mutex<Generations>);

#[derive(Default)]
struct Generations {
    new: HashMap<EntityTag, bool>,
    old: HashMap<EntityTag, bool>,
}

impl Eligibility {
    fn remember(&self, tag: &EntityTag, eligible: bool) {
        let Ok(mut g) = self.0.lock() else { return };
        if g.new.get(tag) == Some(&eligible) {
            return;
        }
        if g.new.len() >= ELIGIBILITY_CAPACITY {
            g.old = std::mem::take(&mut g.new);
        }
        g.new.insert(tag.clone(), eligible);
    }

    fn get(&self, tag: &EntityTag) -> Option<bool> {
        let g = self.0.lock().ok()?;
        g.new.get(tag).or_else(|| g.old.get(tag)).copied()
    }
}

#[cfg(test)]
mod tests;
