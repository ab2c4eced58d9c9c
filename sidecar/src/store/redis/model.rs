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
//! | `{P}:x` | hash | purge state: `e` the epoch it belongs to, `f` the purge floor, `x\|<glob>` stamp per purged glob |
//! | `{P}:k` | hash | purged surrogate keys: `e` the epoch, `<key id>` stamp per key |
//! | `{P}:z:x`, `{P}:z:k` | sorted set | the same glob and key marks by stamp, to prune the oldest (not tracked) |
//! | `{P}:c` | string | the store's hybrid clock (fencing tokens and stamps) |
//! | `{P}:l:<lock key>` | string | a write lock (path + query): `<fencing token> <lease deadline ms>`; no TTL, so a `volatile-*` eviction policy never evicts a held lock |
//! | `{P}:z:l` | sorted set | lock keys by lease deadline, to sweep those a crashed holder left (no TTL, not tracked) |
//!
//! A write invalidates the canonical path, not a read key: every read key
//! of the path (any Host spelling, query or user) carries the path
//! generation its validation saw, and is trusted only while the path hash
//! still holds that generation. An evicted path hash therefore un-trusts
//! (a missing generation matches nothing), never re-trusts.
//!
//! A purge marks globs and keys with a fresh stamp; a validation carries
//! its variant's labels (`k|v`, key ids, `*` for too many) and is trusted
//! only if it is at least the guard newer than the floor and every mark
//! that applies. The purge hashes carry the epoch they belong to: a lost
//! hash (evicted, deleted) fails that check, so losing marks un-trusts, and
//! the next write bumps the epoch and raises the floor.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{Entry, KeyId, Resource, VariantKey, Vary};
use crate::surrogate::GlobMarks;
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
    /// The purge hash (glob marks, floor).
    Purge,
    /// The key-mark hash.
    Keys,
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

    /// Lock keys by lease deadline (locks have no TTL; see `lock.lua`).
    pub(crate) fn lock_deadlines(&self) -> String {
        format!("{}:z:l", self.tag)
    }

    pub(crate) fn meta(&self) -> String {
        format!("{}:m", self.tag)
    }

    pub(crate) fn clock(&self) -> String {
        format!("{}:c", self.tag)
    }

    pub(crate) fn purge(&self) -> String {
        format!("{}:x", self.tag)
    }

    pub(crate) fn key_marks(&self) -> String {
        format!("{}:k", self.tag)
    }

    /// The glob and key marks ordered by stamp (pruning only; untracked).
    pub(crate) fn mark_order(&self) -> [String; 2] {
        [format!("{}:z:x", self.tag), format!("{}:z:k", self.tag)]
    }

    /// The prefixes client-side caching tracks (BCAST): resources, paths,
    /// meta and the purge marks, not locks, the clock or the mark order,
    /// whose changes no cache needs to hear about.
    pub(crate) fn tracking_prefixes(&self) -> [String; 5] {
        [
            format!("{}:r:", self.tag),
            format!("{}:p:", self.tag),
            self.meta(),
            self.purge(),
            self.key_marks(),
        ]
    }

    /// Which cached state an invalidated key name refers to.
    pub(crate) fn classify<'a>(&self, key: &'a str) -> KeyKind<'a> {
        let Some(rest) = key.strip_prefix(self.tag.as_str()) else {
            return KeyKind::Other;
        };
        if rest == ":m" {
            KeyKind::Meta
        } else if rest == ":x" {
            KeyKind::Purge
        } else if rest == ":k" {
            KeyKind::Keys
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
    format!("{}:{}", if tag.is_weak() { 'w' } else { 's' }, tag.opaque())
}

pub(crate) fn decode_tag(s: &str) -> Option<EntityTag> {
    let (kind, opaque) = s.split_at_checked(2)?;
    let weak = match kind {
        "s:" => false,
        "w:" => true,
        _ => return None,
    };
    Some(EntityTag::assemble(weak, opaque))
}

/// `Vary` names as one field value (lower-case names never contain commas).
pub(crate) fn encode_vary(vary: &[String]) -> String {
    vary.join(",")
}

fn decode_vary(s: &str) -> Vary {
    if s.is_empty() {
        // The shared empty list: no allocation on a lookup's path.
        return Vary::default();
    }
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

/// The hashes a lookup reads (in one round trip, or from the local cache).
#[derive(Clone, Copy)]
pub(crate) struct Hashes<'a> {
    /// The read key's resource hash.
    pub(crate) res: &'a RawHash,
    /// The path hash (generation).
    pub(crate) path: &'a RawHash,
    /// The meta hash (epoch, policy glob marks).
    pub(crate) meta: &'a RawHash,
    /// The purge hash (epoch, floor, glob marks).
    pub(crate) purge: &'a RawHash,
    /// The key-mark hash's `e` and the marks of the resource's labels.
    pub(crate) keys: &'a RawHash,
}

/// What decides trust besides the hashes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrustRules {
    /// A validation must be at least this much newer than a purge mark.
    pub(crate) guard_us: u64,
    /// No validation older than this is trusted (marks older than it and
    /// the guard are pruned).
    pub(crate) max_age_us: u64,
    /// The server's time now (microseconds), as this replica estimates it.
    pub(crate) now_us: u64,
}

/// The purge glob marks of a purge hash (`x|<glob>` fields).
pub(crate) fn glob_marks(purge: &RawHash) -> Vec<(&str, u64)> {
    let mut marks: Vec<(&str, u64)> = purge
        .iter()
        .filter_map(|(f, v)| Some((f.strip_prefix("x|")?, v.parse().ok()?)))
        .collect();
    marks.sort_unstable();
    marks
}

/// Everything [`Store::lookup`](crate::store::Store::lookup) reports, from
/// the raw hashes. A validation is trusted only when it carries the current
/// epoch and the path's current generation, is newer than every watched
/// glob's invalidation and younger than the maximum age, and is at least
/// the guard newer than the purge floor and every purge mark that applies
/// (a glob matching `path`, a key among its labels) while the purge state
/// belongs to the current epoch.
pub(crate) fn build_resource(
    h: Hashes<'_>,
    path_name: &str,
    watched: &[std::sync::Arc<str>],
    globs: &GlobMarks<u64>,
    rules: TrustRules,
    offset: ClockOffset,
) -> Option<Resource> {
    let (res, path, meta) = (h.res, h.path, h.meta);
    let vary = res.get("vary")?;
    let epoch = meta.get("epoch");
    let generation = path.get("g");
    let newest_mark = watched
        .iter()
        .filter_map(|g| stamp(meta.get(&format!("g|{g}"))))
        .max()
        .unwrap_or(0);
    let purge_current = epoch.is_some() && h.purge.get("e") == epoch && h.keys.get("e") == epoch;
    // The floor and the globs matching the path apply to every variant.
    let path_purged = stamp(h.purge.get("f"))
        .into_iter()
        .chain(globs.newest(path_name))
        .max();
    let mut out = Resource {
        vary: decode_vary(vary),
        ..Resource::default()
    };
    // One buffer for every `x|<variant>` field name: this runs on every
    // cached lookup (twice on a Trust hit), so no allocation per field.
    let mut name = String::new();
    let mut field_of = |prefix: &str, v: &str| -> Option<&String> {
        name.clear();
        name.push_str(prefix);
        name.push_str(v);
        res.get(name.as_str())
    };
    for (field, value) in res {
        let Some(v) = field.strip_prefix("t|") else {
            continue;
        };
        let Some(tag) = decode_tag(value) else {
            continue;
        };
        let Some(lm) = stamp(field_of("m|", v)) else {
            continue;
        };
        let validated = stamp(field_of("a|", v));
        let ve = field_of("e|", v);
        let vp = field_of("p|", v);
        let trusted = match (validated, ve, epoch, vp, generation) {
            (Some(a), Some(ve), Some(epoch), Some(vp), Some(g))
                if ve == epoch
                    && vp == g
                    && a > newest_mark
                    && rules.now_us.saturating_sub(a) <= rules.max_age_us =>
            {
                Some(a)
            }
            _ => None,
        };
        // Labels: missing (recorded before labels existed) or `*` (more
        // than the bound) never trust.
        let labels = field_of("k|", v).map(String::as_str);
        let trusted = trusted.filter(|_| labels.is_some_and(|l| l != "*"));
        let purged = trusted.is_some_and(|a| {
            let labels = labels.unwrap_or("");
            let newest = labels
                .split(' ')
                .filter_map(KeyId::from_stored)
                .filter_map(|id| stamp(h.keys.get(id.as_str())))
                .chain(path_purged)
                .max();
            !purge_current || newest.is_some_and(|m| a < m.saturating_add(rules.guard_us))
        });
        if purged {
            out.purged.push(VariantKey(v.to_owned()));
        }
        out.variants.push((
            VariantKey(v.to_owned()),
            Entry {
                tag,
                last_modified: UNIX_EPOCH + Duration::from_secs(lm),
                validated_at: trusted.filter(|_| !purged).map(|a| offset.to_local(a)),
            },
        ));
    }
    out.variants.sort_by(|a, b| a.0.cmp(&b.0));
    out.purged.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// `build_resource` with purge state current (no marks), no guard.
    fn build(
        res: &RawHash,
        path: &RawHash,
        meta: &RawHash,
        watched: &[Arc<str>],
        offset: ClockOffset,
    ) -> Option<Resource> {
        let epoch = meta.get("epoch").cloned().unwrap_or_default();
        let purge = hash(&[("e", &epoch)]);
        build_purged(res, path, meta, &purge, &purge, watched, offset)
    }

    fn build_purged(
        res: &RawHash,
        path: &RawHash,
        meta: &RawHash,
        purge: &RawHash,
        keys: &RawHash,
        watched: &[Arc<str>],
        offset: ClockOffset,
    ) -> Option<Resource> {
        let h = Hashes {
            res,
            path,
            meta,
            purge,
            keys,
        };
        let globs = GlobMarks::compile(glob_marks(purge));
        let rules = TrustRules {
            guard_us: 100,
            max_age_us: 1_000_000,
            now_us: 3_000,
        };
        build_resource(h, "/api/items/1", watched, &globs, rules, offset)
    }

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
            let t = EntityTag::assemble(weak, opaque);
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
            ("k|gzip", ""),
        ]);
        let g: Vec<Arc<str>> = vec!["/api/**".into()];
        let off = ClockOffset::default();
        let meta = hash(&[("epoch", "1000")]);
        let path = hash(&[("g", "1500"), ("inv", "1500")]);
        let r = build(&res, &path, &meta, &g, off).unwrap();
        assert_eq!(*r.vary, ["accept-encoding".to_owned()]);
        let e = r.variant(&VariantKey("gzip".into())).unwrap();
        assert_eq!(e.tag.opaque(), "T");
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
        let r = build(&res, &path, &meta2, &g, off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // No epoch at all (evicted meta): nothing is trusted.
        let r = build(&res, &path, &RawHash::new(), &g, off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // A watched glob invalidated after the validation un-trusts it; an
        // unwatched one does not.
        let meta3 = hash(&[("epoch", "1000"), ("g|/api/**", "2500"), ("g|/x", "9999")]);
        let r = build(&res, &path, &meta3, &g, off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        let r = build(&res, &path, &meta3, &[], off).unwrap();
        assert!(r.variants[0].1.validated_at.is_some());
        // The path invalidated after the validation (a new generation), by
        // any user under any Host: not trusted.
        let newer = hash(&[("g", "2100"), ("inv", "2100")]);
        let r = build(&res, &newer, &meta, &[], off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // The path hash evicted: a missing generation matches nothing.
        let r = build(&res, &RawHash::new(), &meta, &[], off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
        // A validation from before path generations existed: not trusted.
        let mut old = res.clone();
        old.remove("p|gzip");
        let r = build(&old, &path, &meta, &[], off).unwrap();
        assert_eq!(r.variants[0].1.validated_at, None);
    }

    #[test]
    fn purge_marks_untrust_what_they_apply_to_within_the_guard() {
        let kid = KeyId::of(b"product-1");
        let other = KeyId::of(b"product-2");
        let labels = format!("{} {}", kid.as_str(), other.as_str());
        let res = hash(&[
            ("vary", ""),
            ("t|", "s:T"),
            ("m|", "1700000000"),
            ("a|", "2000"),
            ("e|", "1000"),
            ("p|", "1500"),
            ("k|", &labels),
        ]);
        let (meta, path) = (hash(&[("epoch", "1000")]), hash(&[("g", "1500")]));
        let off = ClockOffset::default();
        let trusted = |purge: &RawHash, keys: &RawHash| {
            let r = build_purged(&res, &path, &meta, purge, keys, &[], off).unwrap();
            let ok = r.variants[0].1.validated_at.is_some();
            assert_eq!(ok, r.purged.is_empty(), "purged lists exactly the refusals");
            ok
        };
        let e = hash(&[("e", "1000")]);
        assert!(trusted(&e, &e));
        // A key among the labels, marked before the validation but within
        // the guard (100): refused; a guard older: trusted.
        let k = |stamp: &str| hash(&[("e", "1000"), (kid.as_str(), stamp)]);
        assert!(!trusted(&e, &k("1950")));
        assert!(!trusted(&e, &k("2500")));
        assert!(trusted(&e, &k("1900")));
        // A key the variant does not carry does not matter.
        let unrelated = hash(&[("e", "1000"), (KeyId::of(b"x").as_str(), "2500")]);
        assert!(trusted(&e, &unrelated));
        // A glob matching the path, or the floor.
        assert!(!trusted(&hash(&[("e", "1000"), ("x|/api/**", "1990")]), &e));
        assert!(trusted(
            &hash(&[("e", "1000"), ("x|/other/**", "2500")]),
            &e
        ));
        assert!(!trusted(&hash(&[("e", "1000"), ("f", "2500")]), &e));
        // Lost purge state (a hash gone, or of another epoch): untrusted.
        assert!(!trusted(&RawHash::new(), &e));
        assert!(!trusted(&e, &RawHash::new()));
        assert!(!trusted(&hash(&[("e", "999")]), &e));
        // Too many labels, or none recorded: never trusted.
        for l in [Some("*"), None] {
            let mut r2 = res.clone();
            match l {
                Some(l) => r2.insert("k|".into(), l.into()),
                None => r2.remove("k|"),
            };
            let r = build_purged(&r2, &path, &meta, &e, &e, &[], off).unwrap();
            assert!(r.variants[0].1.validated_at.is_none());
        }
    }

    #[test]
    fn missing_resource_is_none() {
        assert!(
            build(
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
