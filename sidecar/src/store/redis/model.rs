//! The Redis key layout and the pure translation between Redis hashes and
//! the store's types (no I/O, unit-tested here).
//!
//! Every key of a store starts with the hash tag `{prefix}`, so all of them
//! live in one cluster slot and multi-key scripts never fail with CROSSSLOT:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{P}:r:<read key>` | hash | `vary`, `lmx` (newest Last-Modified), and per variant `t\|v` tag, `m\|v` Last-Modified, `a\|v` validation stamp, `e\|v` epoch and `p\|v` path generation of that validation |
//! | `{P}:p:<path id>` | hash | `g` the path's generation (a stamp, new at every invalidation of the path), `inv` its last invalidation stamp |
//! | `{P}:m` | hash | `epoch`, `g\|<glob>` invalidation stamp per glob, `gl` newest glob invalidation |
//! | `{P}:c` | string | the store's hybrid clock (fencing tokens and stamps) |
//! | `{P}:l:<lock key>` | string | a write lock (path + query): the holder's fencing token, with the lease as TTL |
//!
//! A write invalidates the canonical path, not a read key: every read key
//! of the path (any Host spelling, query or user) carries the path
//! generation its validation saw, and is trusted only while the path hash
//! still holds that generation. An evicted path hash therefore un-trusts
//! (a missing generation matches nothing), never re-trusts.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{Entry, Resource, VariantKey};
use crate::tag::EntityTag;

/// Names of one store's keys.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `{prefix}`: the hash tag every key starts with.
    tag: String,
}

/// What an invalidation push named.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyKind<'a> {
    Resource(&'a str),
    Path(&'a str),
    Meta,
    Other,
}

/// Why a store prefix is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    #[error("store prefix must not be empty")]
    Empty,
    #[error("store prefix must not contain '{{' or '}}' (it becomes the Redis hash tag)")]
    Braces,
    #[error("store prefix is longer than 200 bytes")]
    TooLong,
}

impl Keys {
    /// Key names under `prefix` (non-empty, no braces: it is the hash tag).
    pub(crate) fn new(prefix: &str) -> Result<Self, PrefixError> {
        if prefix.is_empty() {
            return Err(PrefixError::Empty);
        }
        if prefix.contains(['{', '}']) {
            return Err(PrefixError::Braces);
        }
        if prefix.len() > 200 {
            return Err(PrefixError::TooLong);
        }
        Ok(Self {
            tag: format!("{{{prefix}}}"),
        })
    }

    pub(crate) fn resource(&self, id: &str) -> String {
        format!("{}:r:{id}", self.tag)
    }

    /// The path hash of a canonical path (named by a hash of the path, so
    /// any path makes a short, safe key).
    pub(crate) fn path(&self, path_id: &str) -> String {
        format!("{}:p:{path_id}", self.tag)
    }

    pub(crate) fn lock(&self, id: &str) -> String {
        format!("{}:l:{id}", self.tag)
    }

    pub(crate) fn meta(&self) -> String {
        format!("{}:m", self.tag)
    }

    pub(crate) fn clock(&self) -> String {
        format!("{}:c", self.tag)
    }

    /// The prefixes client-side caching tracks (BCAST): resources, paths
    /// and meta, not locks or the clock, whose changes no cache needs to
    /// hear about.
    pub(crate) fn tracking_prefixes(&self) -> [String; 3] {
        [
            format!("{}:r:", self.tag),
            format!("{}:p:", self.tag),
            self.meta(),
        ]
    }

    /// Which cached state an invalidated key name refers to.
    pub(crate) fn classify<'a>(&self, key: &'a str) -> KeyKind<'a> {
        let Some(rest) = key.strip_prefix(self.tag.as_str()) else {
            return KeyKind::Other;
        };
        if rest == ":m" {
            KeyKind::Meta
        } else if let Some(id) = rest.strip_prefix(":r:") {
            KeyKind::Resource(id)
        } else if let Some(id) = rest.strip_prefix(":p:") {
            KeyKind::Path(id)
        } else {
            KeyKind::Other
        }
    }
}

/// The id of a canonical path in key names: 128 bits of BLAKE3, base64url.
pub(crate) fn path_id(path: &str) -> String {
    use base64::Engine as _;
    let hash = blake3::derive_key("sametag.dev 2026 path key v1", path.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash[..16])
}

/// A Redis hash as read (HGETALL).
pub(crate) type RawHash = HashMap<String, String>;

/// Turn a flat HGETALL reply (`[f1, v1, f2, v2, ...]`) into a map.
pub(crate) fn pairs(flat: Vec<String>) -> RawHash {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(k, v);
    }
    out
}

/// Tags are stored with their weakness: `s:<opaque>` or `w:<opaque>`.
pub(crate) fn encode_tag(tag: &EntityTag) -> String {
    format!("{}:{}", if tag.weak { 'w' } else { 's' }, tag.opaque)
}

pub(crate) fn decode_tag(s: &str) -> Option<EntityTag> {
    let (kind, opaque) = s.split_at_checked(2)?;
    let weak = match kind {
        "s:" => false,
        "w:" => true,
        _ => return None,
    };
    Some(EntityTag {
        weak,
        opaque: opaque.to_owned(),
    })
}

/// `Vary` names as one field value (lower-case names never contain commas).
pub(crate) fn encode_vary(vary: &[String]) -> String {
    vary.join(",")
}

fn decode_vary(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Converts the server's stamps (microseconds of Redis TIME) to this
/// replica's clock, so `maxAge` comparisons with `SystemTime::now()` are not
/// skewed by a clock difference between the replica and Redis.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClockOffset {
    /// Redis time minus local time, microseconds.
    pub(crate) server_minus_local_us: i64,
}

impl ClockOffset {
    pub(crate) fn to_local(self, server_us: u64) -> SystemTime {
        let local = i128::from(server_us) - i128::from(self.server_minus_local_us);
        let local = u64::try_from(local.max(0)).unwrap_or(u64::MAX);
        UNIX_EPOCH + Duration::from_micros(local)
    }
}

fn stamp(s: Option<&String>) -> Option<u64> {
    s.and_then(|s| s.parse().ok())
}

/// Everything [`Store::lookup`](crate::store::Store::lookup) reports, from
/// the raw resource, path and meta hashes. A validation is trusted only
/// when it carries the current epoch and the path's current generation, and
/// is newer than every watched glob's invalidation.
pub(crate) fn build_resource(
    res: &RawHash,
    path: &RawHash,
    meta: &RawHash,
    watched: &[std::sync::Arc<str>],
    offset: ClockOffset,
) -> Option<Resource> {
    let vary = res.get("vary")?;
    let epoch = meta.get("epoch");
    let generation = path.get("g");
    let newest_mark = watched
        .iter()
        .filter_map(|g| stamp(meta.get(&format!("g|{g}"))))
        .max()
        .unwrap_or(0);
    let mut variants = Vec::new();
    for (field, value) in res {
        let Some(v) = field.strip_prefix("t|") else {
            continue;
        };
        let Some(tag) = decode_tag(value) else {
            continue;
        };
        let Some(lm) = stamp(res.get(&format!("m|{v}"))) else {
            continue;
        };
        let validated = stamp(res.get(&format!("a|{v}")));
        let ve = res.get(&format!("e|{v}"));
        let vp = res.get(&format!("p|{v}"));
        let trusted = match (validated, ve, epoch, vp, generation) {
            (Some(a), Some(ve), Some(epoch), Some(vp), Some(g))
                if ve == epoch && vp == g && a > newest_mark =>
            {
                Some(a)
            }
            _ => None,
        };
        variants.push((
            VariantKey(v.to_owned()),
            Entry {
                tag,
                last_modified: UNIX_EPOCH + Duration::from_secs(lm),
                validated_at: trusted.map(|a| offset.to_local(a)),
            },
        ));
    }
    variants.sort_by(|a, b| a.0.cmp(&b.0));
    Some(Resource {
        vary: decode_vary(vary),
        variants,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn hash(kv: &[(&str, &str)]) -> RawHash {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_key_shares_the_hash_tag() {
        let k = Keys::new("shop").unwrap();
        for key in [
            k.resource("a/b{x}"),
            k.path(&path_id("/a")),
            k.lock("a"),
            k.meta(),
            k.clock(),
        ] {
            assert!(key.starts_with("{shop}:"), "{key}");
        }
        assert_eq!(k.classify(&k.resource("h/p?q")), KeyKind::Resource("h/p?q"));
        assert_eq!(k.classify(&k.path("xyz")), KeyKind::Path("xyz"));
        assert_ne!(path_id("/a"), path_id("/a/"));
        assert_eq!(path_id("/a").len(), 22);
        assert_eq!(k.classify(&k.meta()), KeyKind::Meta);
        assert_eq!(k.classify(&k.clock()), KeyKind::Other);
        assert_eq!(k.classify("{other}:m"), KeyKind::Other);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a{b").is_err());
        assert!(Keys::new(&"x".repeat(201)).is_err());
    }

    #[test]
    fn tags_round_trip() {
        for (weak, opaque) in [(false, "abc"), (true, "W/x"), (false, "")] {
            let t = EntityTag {
                weak,
                opaque: opaque.into(),
            };
            assert_eq!(decode_tag(&encode_tag(&t)), Some(t));
        }
        assert_eq!(decode_tag("x"), None);
    }

    #[test]
    fn trust_needs_current_epoch_generation_and_no_newer_mark() {
        let res = hash(&[
            ("vary", "accept-encoding"),
            ("t|gzip", "s:T"),
            ("m|gzip", "1700000000"),
            ("a|gzip", "2000"),
            ("e|gzip", "1000"),
            ("p|gzip", "1500"),
        ]);
        let g: Vec<Arc<str>> = vec!["/api/**".into()];
        let off = ClockOffset::default();
        let meta = hash(&[("epoch", "1000")]);
        let path = hash(&[("g", "1500"), ("inv", "1500")]);
        let r = build_resource(&res, &path, &meta, &g, off).unwrap();
        assert_eq!(r.vary, vec!["accept-encoding".to_owned()]);
        let e = r.variant(&VariantKey("gzip".into())).unwrap();
        assert_eq!(e.tag.opaque, "T");
        assert_eq!(
            e.validated_at,
            Some(UNIX_EPOCH + Duration::from_micros(2000))
        );
        assert_eq!(
            e.last_modified,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        // A newer epoch un-trusts it.
        let meta2 = hash(&[("epoch", "3000")]);
        let r = build_resource(&res, &path, &meta2, &g, off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // No epoch at all (evicted meta): nothing is trusted.
        let r = build_resource(&res, &path, &RawHash::new(), &g, off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // A watched glob invalidated after the validation un-trusts it; an
        // unwatched one does not.
        let meta3 = hash(&[("epoch", "1000"), ("g|/api/**", "2500"), ("g|/x", "9999")]);
        let r = build_resource(&res, &path, &meta3, &g, off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        let r = build_resource(&res, &path, &meta3, &[], off).unwrap();
        assert!(r.variants[0].1.validated_at.is_some());
        // The path invalidated after the validation (a new generation), by
        // any user under any Host: not trusted.
        let newer = hash(&[("g", "2100"), ("inv", "2100")]);
        let r = build_resource(&res, &newer, &meta, &[], off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // The path hash evicted: a missing generation matches nothing.
        let r = build_resource(&res, &RawHash::new(), &meta, &[], off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // A validation from before path generations existed: not trusted.
        let mut old = res.clone();
        old.remove("p|gzip");
        let r = build_resource(&old, &path, &meta, &[], off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
    }

    #[test]
    fn missing_resource_is_none() {
        assert!(
            build_resource(
                &hash(&[("lmx", "5")]),
                &RawHash::new(),
                &RawHash::new(),
                &[],
                ClockOffset::default()
            )
            .is_none()
        );
    }

    #[test]
    fn offset_shifts_server_time_to_local() {
        let off = ClockOffset {
            server_minus_local_us: 1_000_000,
        };
        assert_eq!(off.to_local(3_000_000), UNIX_EPOCH + Duration::from_secs(2));
    }
}
