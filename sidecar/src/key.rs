//! The store key of a request: canonical host, path and query, the credential
//! scope of personalised requests, and the `Vary` secondary key. Pure.
//!
//! The key covers the authority, the path and the query, not the scheme: the
//! app behind the sidecar gets the same plain-HTTP request whatever scheme
//! the client used (TLS ends before the sidecar), and splitting keys by
//! scheme (HTTP/2 carries `:scheme`, HTTP/1.1 origin-form does not) would let
//! a write through one spelling leave the other's Trust validations
//! standing. Canonicalisation merges only spellings that RFC 3986 §6.2.2 and
//! RFC 9110 §4.2.3 declare equivalent for every origin:
//! - host case (`Example.COM` = `example.com`);
//! - the scheme's default port (`:80` for http, `:443` for https) and an
//!   empty port; a port with leading zeros is written as its number;
//! - percent-encoded unreserved characters (`%7E` = `~`, `%41` = `A`) in path
//!   and query, and the case of the remaining percent-encodings (`%2f` =
//!   `%2F`).
//!
//! - dot segments (`/a/./b`, `/a/x/../b`, and `%2e` spelled ones) removed
//!   as RFC 3986 §6.2.2.3 says. The app then receives the canonical target
//!   (the proxy rewrites the request), so what the sidecar routed, keyed
//!   and locked is exactly what the app serves.
//!
//! It never merges what an origin may tell apart: path case, a trailing
//! slash, query order, `+` versus `%20`, an empty query (`/a?`) versus none,
//! and encoded reserved characters (`%2F` stays distinct from `/`).
//!
//! Two identities come out of a request (DESIGN "Keys"): the read key
//! ([`ResourceKey::id`]: authority, path, query and credential scope) holds
//! tag state, one user's never visible to another's; the resource
//! ([`ResourceKey::path`] for invalidation, [`ResourceKey::lock`] = path and
//! query for the write lock) has no Host spelling and no credential scope,
//! so a write by anyone under any Service name locks out and un-trusts
//! everyone else.

use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE, HOST, VARY};
use http::{HeaderMap, HeaderName};

use crate::store::{ResourceKey, VariantKey};

/// Most header names honoured in one `Vary`; more is treated like `Vary: *`
/// (the response passes through untagged) rather than building huge keys.
pub const MAX_VARY_NAMES: usize = 64;

const RESOURCE_CONTEXT: &str = "sametag.dev 2026 resource key v1";
const CREDENTIAL_CONTEXT: &str = "sametag.dev 2026 credential scope v1";
const VARIANT_CONTEXT: &str = "sametag.dev 2026 variant key v1";
const LOCK_CONTEXT: &str = "sametag.dev 2026 lock key v1";

// Hashers with their derive-key context already absorbed: cloning one is
// cheaper than hashing the context string again on every request.
static RESOURCE_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(RESOURCE_CONTEXT));
static VARIANT_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(VARIANT_CONTEXT));
static LOCK_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key(LOCK_CONTEXT));

/// A request target in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CanonicalTarget {
    /// Lower-case host, with a port unless it is the default of the URI's
    /// scheme (http when the request has none): `example.com:8443`.
    pub authority: String,
    /// Path with percent-encodings normalised and dot segments removed;
    /// never empty.
    pub path: String,
    /// Query with percent-encodings normalised; `Some("")` for a bare `?`.
    pub query: Option<String>,
}

impl CanonicalTarget {
    /// The canonical target of a request (authority from the URI in absolute
    /// form or HTTP/2, else from `Host`).
    pub fn of(parts: &http::request::Parts) -> CanonicalTarget {
        let uri = &parts.uri;
        let https = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let authority = match uri.authority() {
            Some(a) => canonical_authority(a.as_str().as_bytes(), https),
            None => parts
                .headers
                .get(HOST)
                .map(|h| canonical_authority(h.as_bytes(), https))
                .unwrap_or_default(),
        };
        let path = match uri.path() {
            "" => "/".to_owned(),
            p if p.starts_with('/') => remove_dot_segments(&normalize_percent(p)),
            // `*` (OPTIONS) and other non-path targets stay as they are.
            p => normalize_percent(p),
        };
        CanonicalTarget {
            authority,
            path,
            query: uri.query().map(normalize_percent),
        }
    }
}

/// Lower-case a host, drop the default or an empty port, and write a numeric
/// port without leading zeros. Non-UTF-8 bytes are kept as U+FFFD (such a
/// host is invalid anyway; it still gets a key of its own).
pub fn canonical_authority(raw: &[u8], https: bool) -> String {
    let raw = raw.trim_ascii();
    // One allocation on the usual path (valid UTF-8); lossy otherwise.
    let mut host = match std::str::from_utf8(raw) {
        Ok(s) => s.to_ascii_lowercase(),
        Err(_) => String::from_utf8_lossy(raw).to_ascii_lowercase(),
    };
    // Strip userinfo (never part of an http(s) target, RFC 9110 §4.2.4).
    if let Some(at) = host.rfind('@') {
        host.drain(..=at);
    }
    // The port separator is the last ':' after any IPv6 literal's ']'.
    let port_from = host.rfind(']').unwrap_or(0);
    if let Some(colon) = host[port_from..].rfind(':').map(|c| c + port_from) {
        let port = &host[colon + 1..];
        let default = if https { 443 } else { 80 };
        if port.is_empty() {
            host.truncate(colon);
        } else if port.bytes().all(|b| b.is_ascii_digit()) {
            match port.parse::<u32>() {
                Ok(p) if p == default => host.truncate(colon),
                // Already canonical (no leading zero): keep it as written.
                Ok(_) if !port.starts_with('0') => {}
                Ok(p) => {
                    host.truncate(colon);
                    host.push(':');
                    host.push_str(&p.to_string());
                }
                Err(_) => {}
            }
        }
    }
    host
}

/// RFC 3986 §5.2.4 `remove_dot_segments` on an absolute path (after
/// percent normalisation, so `%2e` segments are dots by now). Always starts
/// with `/`; `..` never climbs above the root.
pub fn remove_dot_segments(path: &str) -> String {
    // Most paths have no dot segment: no work beyond one scan.
    let dotted = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !dotted {
        return path.to_owned();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                // A dot at the end leaves a directory: `/a/.` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut canonical = String::with_capacity(path.len());
    for segment in &out {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    canonical
}

/// Decode percent-encoded unreserved characters and upper-case the hex of the
/// others (RFC 3986 §6.2.2.1-2). A `%` that starts no valid escape becomes
/// `%25`.
pub fn normalize_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let byte = h << 4 | l;
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                out.push(byte);
            } else {
                out.push(b'%');
                out.push(b[i + 1].to_ascii_uppercase());
                out.push(b[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else if b[i] == b'%' {
            // A '%' that starts no escape is written as one (`%25`), so a
            // decoded neighbour can never form a new escape: normalising
            // twice changes nothing.
            out.extend_from_slice(b"%25");
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only ASCII sequences were rewritten as ASCII, so this stays UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The store key of a request's resource. `id` is a 128-bit hash
/// (base64url, 22 characters: safe in any Redis key or hash tag) of the
/// canonical target and, unless `shared`, the credential scope.
/// `credential_secret` is the per-store secret keying the credential hash.
pub fn resource_key(
    parts: &http::request::Parts,
    shared: bool,
    credential_secret: &[u8],
) -> ResourceKey {
    key_of_target(
        CanonicalTarget::of(parts),
        &parts.headers,
        shared,
        credential_secret,
    )
}

/// [`resource_key`] for a target already canonicalised (the proxy needs the
/// canonical path for routing first).
pub fn key_of_target(
    target: CanonicalTarget,
    headers: &HeaderMap,
    shared: bool,
    credential_secret: &[u8],
) -> ResourceKey {
    let scope = if shared {
        None
    } else {
        credential_scope(headers, credential_secret)
    };
    let mut h = RESOURCE_HASHER.clone();
    put(&mut h, Some(target.authority.as_bytes()));
    put(&mut h, Some(target.path.as_bytes()));
    put(&mut h, target.query.as_deref().map(str::as_bytes));
    put(&mut h, scope.as_ref().map(|s| &s[..]));
    let mut lock = LOCK_HASHER.clone();
    put(&mut lock, Some(target.path.as_bytes()));
    put(&mut lock, target.query.as_deref().map(str::as_bytes));
    ResourceKey {
        path: Arc::from(target.path),
        id: Arc::from(encode128(&h)),
        lock: Arc::from(encode128(&lock)),
    }
}

/// The keyed BLAKE3 of the request's `Authorization` and `Cookie` values,
/// `None` when it has neither. The key is derived from the per-store secret,
/// so the scope reveals nothing about the credentials without it.
pub fn credential_scope(headers: &HeaderMap, secret: &[u8]) -> Option<[u8; 32]> {
    if !headers.contains_key(AUTHORIZATION) && !headers.contains_key(COOKIE) {
        return None;
    }
    let key = blake3::derive_key(CREDENTIAL_CONTEXT, secret);
    let mut h = blake3::Hasher::new_keyed(&key);
    for name in [AUTHORIZATION, COOKIE] {
        let lines = headers.get_all(&name);
        h.update(&(lines.iter().count() as u64).to_le_bytes());
        for v in lines {
            put(&mut h, Some(v.as_bytes()));
        }
    }
    Some(*h.finalize().as_bytes())
}

/// The header names a response's `Vary` lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaryNames {
    /// `Vary: *` (or more than [`MAX_VARY_NAMES`] names): no request fields
    /// can select this representation, so it cannot be keyed; pass it
    /// through untagged.
    Any,
    /// Lower-case, sorted, deduplicated names; empty without `Vary`.
    Names(Vec<String>),
}

/// Read a response's `Vary` (all field lines).
pub fn vary_names(headers: &HeaderMap) -> VaryNames {
    let mut names = Vec::new();
    for line in headers.get_all(VARY) {
        for item in line.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                continue;
            }
            if item == b"*" {
                return VaryNames::Any;
            }
            names.push(String::from_utf8_lossy(item).to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    if names.len() > MAX_VARY_NAMES {
        return VaryNames::Any;
    }
    VaryNames::Names(names)
}

/// The secondary key: a hash of the request's values of the `Vary` names.
/// The empty key for no names. An absent field differs from an empty one;
/// several field lines are joined with `, ` after trimming each.
pub fn variant_key(names: &[String], request_headers: &HeaderMap) -> VariantKey {
    if names.is_empty() {
        return VariantKey(String::new());
    }
    let mut names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let mut h = VARIANT_HASHER.clone();
    for name in &names {
        put(&mut h, Some(name.as_bytes()));
        let value = HeaderName::from_bytes(name.as_bytes()).ok().and_then(|n| {
            let mut joined: Option<Vec<u8>> = None;
            for v in request_headers.get_all(n) {
                let v = v.as_bytes().trim_ascii();
                match joined.as_mut() {
                    None => joined = Some(v.to_vec()),
                    Some(j) => {
                        j.extend_from_slice(b", ");
                        j.extend_from_slice(v);
                    }
                }
            }
            joined
        });
        put(&mut h, value.as_deref());
    }
    VariantKey(encode128(&h))
}

/// Feed an optional field, length-prefixed so no two inputs collide.
fn put(h: &mut blake3::Hasher, v: Option<&[u8]>) {
    match v {
        None => {
            h.update(&[0]);
        }
        Some(v) => {
            h.update(&[1]);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
    }
}

fn encode128(h: &blake3::Hasher) -> String {
    URL_SAFE_NO_PAD.encode(&h.finalize().as_bytes()[..16])
}

#[cfg(test)]
mod tests;
