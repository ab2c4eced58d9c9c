//! Entity tags: derived from a representation, parsed from and formatted into
//! headers, compared strongly or weakly (RFC 9110 §8.8.3).
//!
//! Parsing works on the raw header bytes (a field value need not be UTF-8) and
//! is bounded: a list longer than [`MAX_LIST_BYTES`] or with more than
//! [`MAX_LIST_ENTRIES`] tags is rejected with a clear error after a single
//! linear scan, so a 10,000-tag `If-None-Match` costs microseconds, not a
//! quadratic blowup.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};

use crate::policy::Steady;

/// Most entity tags accepted in one list (`If-Match`, `If-None-Match`).
/// Real clients send one, caches a handful; more is abuse or a bug.
pub const MAX_LIST_ENTRIES: usize = 1024;

/// Longest list field value accepted, in bytes (all field lines together).
pub const MAX_LIST_BYTES: usize = 64 * 1024;

/// Longest opaque tag accepted, in bytes (ours are 22).
pub const MAX_TAG_BYTES: usize = 1024;

/// Length of a derived tag's hash in bytes (128 bits).
const TAG_HASH_BYTES: usize = 16;

/// Key-derivation context: changes every derived tag if the input layout
/// ever changes, so old and new tags never collide.
const TAG_CONTEXT: &str = "sametag.dev 2026 representation tag v1";

/// The context of tags on `steady:` routes: their input is framed
/// differently, so no steady tag can equal a plain one.
const STEADY_CONTEXT: &str = "sametag.dev 2026 steady representation tag v1";

/// An entity tag, kept as its field value (`"x"` or `W/"x"`), formatted
/// once: a clone shares it (a stored tag is cloned into every Trust 304)
/// and every response's `ETag` is that value, with no formatting per
/// request.
///
/// Tags received with `obs-text` bytes that are not UTF-8 are kept lossily
/// (as U+FFFD); they can never equal a derived tag, which is ASCII, so the
/// loss cannot turn a mismatch into a match.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EntityTag {
    /// `W/` prefix: a weak validator.
    weak: bool,
    /// The field value; always UTF-8 (built only from `&str`).
    field: Bytes,
}

/// Why a tag or a tag list could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Not an `entity-tag` (RFC 9110 §8.8.3); `at` is the byte offset.
    #[error("malformed entity tag at byte {at}")]
    Malformed { at: usize },
    /// More tags than [`MAX_LIST_ENTRIES`].
    #[error("too many entity tags (more than {max})")]
    TooMany { max: usize },
    /// Field value longer than [`MAX_LIST_BYTES`] or a tag longer than
    /// [`MAX_TAG_BYTES`].
    #[error("entity tag field too long ({len} bytes, limit {max})")]
    TooLong { len: usize, max: usize },
    /// `*` mixed with tags, or more than one `*`.
    #[error("`*` must be the whole field value")]
    MisplacedStar,
}

impl EntityTag {
    /// A tag from parts already known to be valid (derived, stored by us, or
    /// the proxy's own markers); [`EntityTag::new`] checks them.
    pub(crate) fn assemble(weak: bool, opaque: &str) -> Self {
        let mut out = String::with_capacity(opaque.len() + 4);
        if weak {
            out.push_str("W/");
        }
        out.push('"');
        out.push_str(opaque);
        out.push('"');
        Self {
            weak,
            field: Bytes::from(out),
        }
    }

    /// Whether the tag is weak (`W/` prefix).
    pub fn is_weak(&self) -> bool {
        self.weak
    }

    /// The characters between the quotes.
    pub fn opaque(&self) -> &str {
        let start = if self.weak { 3 } else { 1 };
        let inner = self
            .field
            .get(start..self.field.len() - 1)
            .unwrap_or_default();
        // Built from `&str` and cut at ASCII quotes: always UTF-8.
        std::str::from_utf8(inner).unwrap_or_default()
    }

    /// The field-value form (`"x"` or `W/"x"`).
    pub fn to_field_value(&self) -> String {
        self.as_field().to_owned()
    }

    /// The field-value form, borrowed.
    pub fn as_field(&self) -> &str {
        std::str::from_utf8(&self.field).unwrap_or_default()
    }

    /// The `ETag` header value: shares the tag's bytes (no copy). Fails only
    /// for the proxy's internal markers, which are never sent.
    pub fn header_value(&self) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        HeaderValue::from_maybe_shared(self.field.clone())
    }

    /// A strong tag; fails if `opaque` holds a character not allowed in a tag.
    pub fn strong(opaque: impl Into<String>) -> Result<Self, TagError> {
        Self::new(false, opaque)
    }

    /// A weak tag; fails if `opaque` holds a character not allowed in a tag.
    pub fn weak(opaque: impl Into<String>) -> Result<Self, TagError> {
        Self::new(true, opaque)
    }

    /// A tag with checked characters (`etagc`: `!`, `#`-`~`, or non-ASCII).
    pub fn new(weak: bool, opaque: impl Into<String>) -> Result<Self, TagError> {
        let opaque = opaque.into();
        if opaque.len() > MAX_TAG_BYTES {
            return Err(TagError::TooLong {
                len: opaque.len(),
                max: MAX_TAG_BYTES,
            });
        }
        if let Some(at) = opaque.bytes().position(|b| !is_etagc(b)) {
            return Err(TagError::Malformed { at });
        }
        Ok(Self::assemble(weak, &opaque))
    }

    /// Parse one `entity-tag` (an `ETag` or `If-Range` value), surrounding
    /// whitespace allowed.
    pub fn parse(value: &[u8]) -> Result<Self, TagError> {
        if value.len() > MAX_TAG_BYTES + 4 {
            return Err(TagError::TooLong {
                len: value.len(),
                max: MAX_TAG_BYTES + 4,
            });
        }
        let start = skip_ows(value, 0);
        let (tag, end) = parse_tag_at(value, start)?;
        let end = skip_ows(value, end);
        if end != value.len() {
            return Err(TagError::Malformed { at: end });
        }
        Ok(tag)
    }

    /// Strong comparison (RFC 9110 §8.8.3.2): both strong, same opaque.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.field == other.field
    }

    /// Weak comparison: same opaque, either may be weak.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque() == other.opaque()
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_field())
    }
}

impl fmt::Debug for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityTag({})", self.as_field())
    }
}

impl std::str::FromStr for EntityTag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

/// A parsed `If-Match` / `If-None-Match` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagList {
    /// `*`: any current representation.
    Any,
    /// A list of tags, possibly empty (the grammar allows an empty list).
    Tags(Vec<EntityTag>),
}

impl TagList {
    /// Whether `current` matches under strong comparison (`If-Match`).
    pub fn matches_strong(&self, current: &EntityTag) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| t.strong_eq(current)),
        }
    }

    /// Whether `current` matches under weak comparison (`If-None-Match`).
    pub fn matches_weak(&self, current: &EntityTag) -> bool {
        match self {
            TagList::Any => true,
            TagList::Tags(tags) => tags.iter().any(|t| t.weak_eq(current)),
        }
    }
}

impl fmt::Display for TagList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagList::Any => f.write_str("*"),
            TagList::Tags(tags) => {
                for (i, t) in tags.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{t}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parse an `If-Match` / `If-None-Match` field value: `"*" / #entity-tag`.
///
/// Empty list elements are skipped as RFC 9110 §5.6.1 requires. Several field
/// lines are combined by the caller with `,` ([`parse_list_lines`]).
pub fn parse_list(value: &[u8]) -> Result<TagList, TagError> {
    if value.len() > MAX_LIST_BYTES {
        return Err(TagError::TooLong {
            len: value.len(),
            max: MAX_LIST_BYTES,
        });
    }
    let mut tags = Vec::new();
    let mut star = false;
    let mut i = skip_ows(value, 0);
    loop {
        // Skip empty elements: `, ,`.
        while i < value.len() && value[i] == b',' {
            i = skip_ows(value, i + 1);
        }
        if i >= value.len() {
            break;
        }
        if value[i] == b'*' {
            if star || !tags.is_empty() {
                return Err(TagError::MisplacedStar);
            }
            star = true;
            i += 1;
        } else {
            if star {
                return Err(TagError::MisplacedStar);
            }
            if tags.len() == MAX_LIST_ENTRIES {
                return Err(TagError::TooMany {
                    max: MAX_LIST_ENTRIES,
                });
            }
            let (tag, end) = parse_tag_at(value, i)?;
            tags.push(tag);
            i = end;
        }
        i = skip_ows(value, i);
        if i < value.len() && value[i] != b',' {
            return Err(TagError::Malformed { at: i });
        }
    }
    Ok(if star {
        TagList::Any
    } else {
        TagList::Tags(tags)
    })
}

/// Parse a list that arrived as several field lines (`HeaderMap::get_all`),
/// as if they had been joined with `,` (RFC 9110 §5.3).
pub fn parse_list_lines<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<TagList, TagError> {
    let mut joined: Vec<u8> = Vec::new();
    for (n, line) in lines.into_iter().enumerate() {
        if n > 0 {
            joined.push(b',');
        }
        if joined.len() + line.len() > MAX_LIST_BYTES {
            return Err(TagError::TooLong {
                len: joined.len() + line.len(),
                max: MAX_LIST_BYTES,
            });
        }
        joined.extend_from_slice(line);
    }
    parse_list(&joined)
}

/// `etagc = "!" / %x23-7E / obs-text`
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

fn skip_ows(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && (v[i] == b' ' || v[i] == b'\t') {
        i += 1;
    }
    i
}

/// Parse `[W/] DQUOTE *etagc DQUOTE` starting at `i`; returns the tag and the
/// index just past the closing quote.
fn parse_tag_at(v: &[u8], i: usize) -> Result<(EntityTag, usize), TagError> {
    let (weak, q) = if v[i..].starts_with(b"W/") {
        (true, i + 2)
    } else {
        (false, i)
    };
    if v.get(q) != Some(&b'"') {
        return Err(TagError::Malformed { at: q });
    }
    let body = q + 1;
    let mut j = body;
    while j < v.len() && is_etagc(v[j]) {
        j += 1;
    }
    if v.get(j) != Some(&b'"') {
        return Err(TagError::Malformed { at: j });
    }
    if j - body > MAX_TAG_BYTES {
        return Err(TagError::TooLong {
            len: j - body,
            max: MAX_TAG_BYTES,
        });
    }
    let opaque = String::from_utf8_lossy(&v[body..j]);
    Ok((EntityTag::assemble(weak, &opaque), j + 1))
}

/// The tag hasher with its derive-key context absorbed once.
static TAG_HASHER: std::sync::LazyLock<blake3::Hasher> =
    std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key(TAG_CONTEXT));
/// The same for steady tags.
static STEADY_HASHER: std::sync::LazyLock<blake3::Hasher> =
    std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key(STEADY_CONTEXT));

/// Incremental BLAKE3 over a representation: its metadata first, then the
/// body chunks as they stream by. The same bytes give the same tag on every
/// replica, with or without the store.
#[derive(Clone, Debug)]
pub struct TagHasher {
    hasher: blake3::Hasher,
}

impl TagHasher {
    /// Start a hash with the representation metadata (raw field values;
    /// `None` when absent, which differs from present-but-empty).
    pub fn new(
        content_type: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
        content_language: Option<&[u8]>,
    ) -> Self {
        Self::start(
            &TAG_HASHER,
            [content_type, content_encoding, content_language],
        )
    }

    fn start(base: &blake3::Hasher, metadata: [Option<&[u8]>; 3]) -> Self {
        let mut hasher = base.clone();
        for field in metadata {
            // Length-prefixed so no two metadata triples feed the same bytes.
            match field {
                None => {
                    hasher.update(&[0]);
                }
                Some(v) => {
                    hasher.update(&[1]);
                    hasher.update(&(v.len() as u64).to_le_bytes());
                    hasher.update(v);
                }
            }
        }
        Self { hasher }
    }

    /// Start a hash with the metadata of a response's headers. Several field
    /// lines of one name are joined with `, ` (RFC 9110 §5.3).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let ct = joined(headers, &CONTENT_TYPE);
        let ce = joined(headers, &CONTENT_ENCODING);
        let cl = joined(headers, &CONTENT_LANGUAGE);
        Self::new(ct.as_deref(), ce.as_deref(), cl.as_deref())
    }

    /// Feed the next body chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
    }

    /// The strong tag: 128 bits of the hash, base64url without padding.
    pub fn finish(&self) -> EntityTag {
        let hash = self.hasher.finalize();
        let opaque = URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..TAG_HASH_BYTES]);
        EntityTag::assemble(false, &opaque)
    }
}

/// The tag of a complete representation (headers + whole body).
pub fn tag_of(headers: &HeaderMap, body: &[u8]) -> EntityTag {
    let mut h = TagHasher::from_headers(headers);
    h.update(body);
    h.finish()
}

/// The tag of a complete representation on a `steady:` route: the text the
/// patterns match is left out, each match replaced by a marker.
///
/// A marker rather than nothing: removal would give `a` + token + `b` the
/// tag of `ab` (a page that lost its token field would look unchanged).
/// The marker is out of band, not a byte string an app could also send:
/// the hash input is a sequence of records, `0, length, bytes` for each run
/// of kept text and `1` for each match, so two inputs agree only if they
/// have the same kept runs with matches in the same places. The pattern
/// list is hashed first, under a context of its own, so a tag never
/// outlives a change of what is left out, and never equals a plain tag.
/// Past the match bound ([`Steady::excluded`] gives up) the plain tag of
/// the whole body is used: correct, just not steady.
pub fn steady_tag(headers: &HeaderMap, body: &[u8], steady: &Steady) -> EntityTag {
    let Some(spans) = steady.excluded(body) else {
        return tag_of(headers, body);
    };
    let ct = joined(headers, &CONTENT_TYPE);
    let ce = joined(headers, &CONTENT_ENCODING);
    let cl = joined(headers, &CONTENT_LANGUAGE);
    let mut h = TagHasher::start(
        &STEADY_HASHER,
        [ct.as_deref(), ce.as_deref(), cl.as_deref()],
    );
    let patterns = steady.patterns();
    h.update(&(patterns.len() as u64).to_le_bytes());
    for p in patterns {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let kept = |h: &mut TagHasher, run: &[u8]| {
        if !run.is_empty() {
            h.update(&[0]);
            h.update(&(run.len() as u64).to_le_bytes());
            h.update(run);
        }
    };
    let mut at = 0;
    for span in spans {
        kept(&mut h, body.get(at..span.start).unwrap_or_default());
        h.update(&[1]);
        at = span.end;
    }
    kept(&mut h, body.get(at..).unwrap_or_default());
    h.finish()
}

/// All field lines of `name` joined with `, `; borrowed when there is one.
fn joined<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<Cow<'a, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut buf = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        buf.extend_from_slice(b", ");
        buf.extend_from_slice(v.as_bytes());
    }
    Some(Cow::Owned(buf))
}

#[cfg(test)]
mod tests;
