//! Invalidation from outside HTTP, as typed values: surrogate keys (Fastly's
//! `Surrogate-Key` convention: space-separated labels an app puts on a
//! response), purge requests (`POST /purge` on the admin port) and the
//! compiled purge globs a lookup matches a path against. Pure: untrusted
//! bytes in, bounded typed values out.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::key::{normalize_percent, remove_dot_segments};

/// `Surrogate-Key`: never reaches a client.
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// Most labels recorded with one variant. A response with more is recorded
/// untrusted: its validation is never trusted, so no purge can miss it.
pub const MAX_LABELS: usize = 32;

/// Largest `POST /purge` body.
pub const MAX_PURGE_BODY_BYTES: usize = 256 * 1024;

/// Most entries in each list (`paths`, `keys`) of one purge request.
pub const MAX_PURGE_ITEMS: usize = 1000;

/// Longest path, glob or key in a purge request.
pub const MAX_ITEM_BYTES: usize = 2048;

/// Key-derivation context of surrogate key ids.
const KEY_CONTEXT: &str = "sametag.dev 2026 surrogate key v1";

/// A surrogate key as the store holds it: 72 bits of BLAKE3, base64url
/// (12 characters, safe in any Redis field). A collision only purges more.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

impl KeyId {
    /// The id of a key (its bytes as sent, case-sensitive).
    pub fn of(key: &[u8]) -> KeyId {
        let hash = blake3::derive_key(KEY_CONTEXT, key);
        KeyId(URL_SAFE_NO_PAD.encode(&hash[..9]).into())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id read back from the store, if it has the shape of one.
    pub fn from_stored(s: &str) -> Option<KeyId> {
        (s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| KeyId(s.into()))
    }
}

/// The labels recorded with a variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labels {
    /// At most [`MAX_LABELS`] distinct keys (none: an unlabelled response).
    Keys(Vec<KeyId>),
    /// More than the bound: never trusted.
    TooMany,
}

impl Default for Labels {
    fn default() -> Self {
        Labels::Keys(Vec::new())
    }
}

impl Labels {
    /// No labels.
    pub const NONE: Labels = Labels::Keys(Vec::new());

    /// The labels of a response carrying `ids` (distinct).
    pub fn of(ids: Vec<KeyId>) -> Labels {
        if ids.len() > MAX_LABELS {
            Labels::TooMany
        } else {
            Labels::Keys(ids)
        }
    }
}

/// The distinct keys of every `Surrogate-Key` field value, in order of first
/// appearance: split on spaces and tabs (Fastly's syntax), as raw bytes.
pub fn parse_keys<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<KeyId> {
    let mut out: Vec<KeyId> = Vec::new();
    for value in values {
        for key in value.split(|b| *b == b' ' || *b == b'\t') {
            if key.is_empty() {
                continue;
            }
            let id = KeyId::of(key);
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// Remove every `Surrogate-Key` field from a response head and return its
/// keys (the client never sees them).
pub fn take_keys(headers: &mut HeaderMap) -> Vec<KeyId> {
    if !headers.contains_key(&SURROGATE_KEY) {
        return Vec::new();
    }
    let keys = parse_keys(headers.get_all(&SURROGATE_KEY).iter().map(|v| v.as_bytes()));
    headers.remove(&SURROGATE_KEY);
    keys
}

/// What one purge ends: exact canonical paths (a new generation each, as a
/// write's invalidation), path globs and surrogate keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purge {
    pub paths: Vec<Arc<str>>,
    pub globs: Vec<Arc<str>>,
    pub keys: Vec<KeyId>,
}

impl Purge {
    /// A purge of surrogate keys only (a write's response named them).
    pub fn keys(keys: Vec<KeyId>) -> Purge {
        Purge {
            keys,
            ..Purge::default()
        }
    }

    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.globs.is_empty() && self.keys.is_empty()
    }
}

/// What the store did for a purge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Purge marks (globs and keys) the store holds now.
    pub marks: u64,
    /// Whether the cap on marks made the store drop live marks and raise
    /// its floor (every validation older than the floor is untrusted).
    pub floor_raised: bool,
}

/// Why a purge request body was refused (a 400 with this line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeBodyError {
    #[error("body is larger than {MAX_PURGE_BODY_BYTES} bytes")]
    TooLarge,
    #[error("body is not a purge request: {0}")]
    Json(String),
    #[error("a purge must name at least one path or key")]
    Empty,
    #[error("more than {MAX_PURGE_ITEMS} {0}")]
    TooMany(&'static str),
    #[error("path {0:?} must start with '/' and hold no spaces, controls, '?' or '#'")]
    Path(String),
    #[error("glob {0:?} is invalid: {1}")]
    Glob(String, String),
    #[error("key {0:?} must be non-empty, without spaces or controls")]
    Key(String),
    #[error("an entry is longer than {MAX_ITEM_BYTES} bytes")]
    TooLong,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
}

/// Parse a `POST /purge` body: `{"paths": ["/exact", "/glob/**"], "keys":
/// ["k1"]}`. A path with a glob metacharacter (`*?[{`) is a glob (`*` within
/// a segment, `**` across, as in the policy); any other is an exact path,
/// canonicalised as request paths are.
pub fn parse_purge(body: &[u8]) -> Result<Purge, PurgeBodyError> {
    if body.len() > MAX_PURGE_BODY_BYTES {
        return Err(PurgeBodyError::TooLarge);
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| {
        let line = e.to_string();
        PurgeBodyError::Json(line.lines().next().unwrap_or_default().to_owned())
    })?;
    if parsed.paths.len() > MAX_PURGE_ITEMS {
        return Err(PurgeBodyError::TooMany("paths"));
    }
    if parsed.keys.len() > MAX_PURGE_ITEMS {
        return Err(PurgeBodyError::TooMany("keys"));
    }
    if parsed.paths.is_empty() && parsed.keys.is_empty() {
        return Err(PurgeBodyError::Empty);
    }
    let mut purge = Purge::default();
    for p in parsed.paths {
        if p.len() > MAX_ITEM_BYTES {
            return Err(PurgeBodyError::TooLong);
        }
        let plain = p.starts_with('/')
            && !p
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#');
        if !plain {
            return Err(PurgeBodyError::Path(p));
        }
        if is_glob(&p) {
            compile(&p).map_err(|e| PurgeBodyError::Glob(p.clone(), e))?;
            push_unique(&mut purge.globs, p.into());
        } else {
            let canonical = remove_dot_segments(&normalize_percent(&p));
            push_unique(&mut purge.paths, canonical.into());
        }
    }
    for k in parsed.keys {
        if k.len() > MAX_ITEM_BYTES {
            return Err(PurgeBodyError::TooLong);
        }
        if k.is_empty() || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(PurgeBodyError::Key(k));
        }
        push_unique(&mut purge.keys, KeyId::of(k.as_bytes()));
    }
    Ok(purge)
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

/// Whether a purge path is a glob.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

fn compile(glob: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| e.to_string().replace(['\n', '\r'], " "))
}

/// Purge glob marks compiled for matching: the newest stamp of the globs
/// that match a path. A stored glob that does not compile (never accepted
/// by [`parse_purge`]) matches every path: unknown means untrusted.
#[derive(Debug)]
pub struct GlobMarks<S> {
    set: GlobSet,
    stamps: Vec<S>,
    /// The newest stamp of the globs that failed to compile.
    everywhere: Option<S>,
}

impl<S: Copy + Ord> GlobMarks<S> {
    /// Compile `(glob, stamp)` marks.
    pub fn compile<'a>(marks: impl IntoIterator<Item = (&'a str, S)>) -> GlobMarks<S> {
        let mut builder = GlobSetBuilder::new();
        let mut stamps = Vec::new();
        let mut everywhere: Option<S> = None;
        for (glob, stamp) in marks {
            match compile(glob) {
                Ok(g) => {
                    builder.add(g);
                    stamps.push(stamp);
                }
                Err(_) => everywhere = everywhere.max(Some(stamp)),
            }
        }
        match builder.build() {
            Ok(set) => GlobMarks {
                set,
                stamps,
                everywhere,
            },
            Err(_) => GlobMarks {
                set: GlobSet::empty(),
                everywhere: stamps.iter().copied().max().max(everywhere),
                stamps: Vec::new(),
            },
        }
    }

    /// No marks at all.
    pub fn empty() -> GlobMarks<S> {
        GlobMarks {
            set: GlobSet::empty(),
            stamps: Vec::new(),
            everywhere: None,
        }
    }

    /// The newest stamp of a glob matching `path`.
    pub fn newest(&self, path: &str) -> Option<S> {
        let mut newest = self.everywhere;
        if !self.stamps.is_empty() {
            for i in self.set.matches(path) {
                newest = newest.max(self.stamps.get(i).copied());
            }
        }
        newest
    }

    /// How many globs are held.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty() && self.everywhere.is_none()
    }
}

#[cfg(test)]
mod tests;
