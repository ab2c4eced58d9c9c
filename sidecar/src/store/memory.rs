//! The embedded in-memory store: one replica, local runs and the demo.
//!
//! A real store, not a test double: bounded in memory (a cap on resources,
//! least recently used evicted first, and an idle TTL), shared `Last-Modified`
//! that strictly increases per resource when its tag changes, trusted
//! validations, invalidation by path and by glob and purges (paths, globs,
//! surrogate keys) ordered by one monotonic sequence, and write locks with
//! fencing tokens and leases. Several proxies in
//! one process can share one `Arc<MemoryStore>` and agree exactly as replicas
//! sharing Redis do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{
    Entry, KeyId, Labels, Purge, PurgeReport, Resource, ResourceKey, Store, StoreError,
    StoreHealth, VariantKey, Vary, WriteLock,
};
use crate::surrogate::GlobMarks;
use crate::tag::EntityTag;

/// How much the store may hold.
#[derive(Clone, Copy, Debug)]
pub struct MemoryLimits {
    /// Most resources kept; the least recently used go first.
    pub max_resources: usize,
    /// Most variants kept per resource (distinct `Vary` values).
    pub max_variants: usize,
    /// Most invalidation records kept (paths, globs, purge globs and keys).
    /// Older ones fold into a floor: validations older than the floor are
    /// never trusted, so forgetting an invalidation can only make the store
    /// more cautious.
    pub max_invalidations: usize,
    /// No validation older than this is reported trusted (the longest
    /// `maxAge` a policy may give), so records older than it and the guard
    /// can be forgotten without a floor.
    pub max_trust_age: Duration,
    /// A resource not looked up or recorded for this long is forgotten.
    pub idle_ttl: Duration,
    /// A validation recorded less than this after an invalidation of its
    /// resource (or a watched glob) is not trusted: the app's GET may have
    /// overlapped the write and read the old state. Should cover the app's
    /// response time (the proxy's upstream timeout, for strictness).
    pub trust_guard: Duration,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self {
            max_resources: 100_000,
            max_variants: 32,
            max_invalidations: 100_000,
            max_trust_age: sametag_policy::MAX_MAX_AGE,
            idle_ttl: Duration::from_secs(24 * 3600),
            trust_guard: Duration::from_secs(10),
        }
    }
}

/// The embedded store. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    limits: MemoryLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// One sequence orders validations and invalidations.
    seq: u64,
    /// Fencing tokens come from one counter, so they increase per resource.
    token: u64,
    resources: HashMap<Arc<str>, ResourceState>,
    /// Last use (a sequence number) to resource id: the LRU order.
    lru: BTreeMap<u64, Arc<str>>,
    /// Invalidations by canonical path, glob, purge glob and key, each with
    /// its sequence.
    invalidations: HashMap<Invalidated, (u64, Instant)>,
    /// The purge globs held, compiled (rebuilt after a change).
    purge_globs: Option<Arc<GlobMarks<(u64, Instant)>>>,
    /// Sequence to invalidation: oldest first, for folding into the floor.
    invalidation_order: BTreeMap<u64, Invalidated>,
    /// No validation at or below this sequence is trusted, nor one recorded
    /// within the trust guard after `floor_at`.
    floor: u64,
    floor_at: Option<Instant>,
    /// Held write locks by lock key (path and query).
    locks: HashMap<Arc<str>, HeldLock>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Invalidated {
    Path(Arc<str>),
    /// A policy glob (`invalidates:`), matched by name.
    Glob(Arc<str>),
    /// A purged glob, matched against every path.
    PurgeGlob(Arc<str>),
    /// A purged surrogate key.
    Key(KeyId),
}

/// The newest invalidation a validation must beat: its sequence and when.
#[derive(Clone, Copy, Debug, Default)]
struct Barrier {
    seq: u64,
    at: Option<Instant>,
}

impl Barrier {
    fn raise(&mut self, seq: u64, at: Option<Instant>) {
        self.seq = self.seq.max(seq);
        self.at = self.at.max(at);
    }
}

/// A trusted validation and the surrogate keys it was labelled with.
#[derive(Clone, Debug)]
struct Validation {
    /// Wall clock, sequence and monotonic clock of the validation.
    at: SystemTime,
    seq: u64,
    clock: Instant,
    labels: Arc<[KeyId]>,
}

#[derive(Debug)]
struct ResourceState {
    vary: Vary,
    variants: HashMap<VariantKey, VariantState>,
    /// Newest `Last-Modified` handed out for this resource.
    newest_last_modified: SystemTime,
    last_used: u64,
    last_used_at: Instant,
}

#[derive(Debug)]
struct VariantState {
    tag: EntityTag,
    last_modified: SystemTime,
    /// When the tag was last validated in Trust mode, with its labels.
    validated: Option<Validation>,
}

#[derive(Debug)]
struct HeldLock {
    token: u64,
    until: Instant,
}

// === impl MemoryStore ===

impl MemoryStore {
    /// A store with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with explicit limits.
    pub fn with_limits(limits: MemoryLimits) -> Self {
        Self {
            limits,
            inner: Mutex::default(),
        }
    }

    /// How many resources are held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().resources.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `v` beats `barrier` by the trust guard and is young enough
    /// to be trusted at all.
    fn trusted(&self, v: &Validation, barrier: Barrier) -> bool {
        v.seq > barrier.seq
            && barrier
                .at
                .is_none_or(|b| v.clock >= b + self.limits.trust_guard)
            && v.clock.elapsed() <= self.limits.max_trust_age
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that breaks an invariant we rely on, so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn lookup(
        &self,
        resource: &ResourceKey,
        watched: &[Arc<str>],
    ) -> Result<Option<Resource>, StoreError> {
        let mut inner = self.lock();
        inner.expire(&self.limits);
        let (base, purged) = inner.barriers(&resource.path, watched);
        inner.touch(&resource.id);
        let inner = &*inner;
        let Some(state) = inner.resources.get(&resource.id) else {
            return Ok(None);
        };
        let mut out = Resource {
            vary: state.vary.clone(),
            ..Resource::default()
        };
        for (key, v) in &state.variants {
            let validated_at = v.validated.as_ref().and_then(|val| {
                if !self.trusted(val, base) {
                    return None;
                }
                if !self.trusted(val, inner.with_keys(purged, &val.labels)) {
                    out.purged.push(key.clone());
                    return None;
                }
                Some(val.at)
            });
            out.variants.push((
                key.clone(),
                Entry {
                    tag: v.tag.clone(),
                    last_modified: v.last_modified,
                    validated_at,
                },
            ));
        }
        out.variants.sort_by(|a, b| a.0.cmp(&b.0));
        out.purged.sort();
        Ok(Some(out))
    }

    async fn record_with(
        &self,
        resource: &ResourceKey,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        trust: bool,
        labels: &Labels,
    ) -> Result<Entry, StoreError> {
        let mut inner = self.lock();
        inner.expire(&self.limits);
        inner.seq += 1;
        let seq = inner.seq;
        let now = SystemTime::now();
        let clock = Instant::now();
        // A validation inside the guard is stored but not reported trusted,
        // exactly as `lookup` (and the Redis store) would report it.
        let (_, barrier) = inner.barriers(&resource.path, &[]);
        let state = inner
            .resources
            .entry(resource.id.clone())
            .or_insert_with(|| ResourceState {
                vary: Vary::default(),
                variants: HashMap::new(),
                newest_last_modified: UNIX_EPOCH,
                last_used: seq,
                last_used_at: clock,
            });
        if *state.vary != *vary {
            state.vary = vary.into();
        }
        if !state.variants.contains_key(variant) && state.variants.len() >= self.limits.max_variants
        {
            // A resource with more variants than we keep: start over rather
            // than grow; forgetting only costs a full response.
            state.variants.clear();
        }
        let newest = state.newest_last_modified;
        let entry = state
            .variants
            .entry(variant.clone())
            .or_insert_with(|| VariantState {
                tag: tag.clone(),
                last_modified: next_last_modified(now, newest),
                validated: None,
            });
        if entry.tag != *tag {
            entry.tag = tag.clone();
            entry.last_modified = next_last_modified(now, newest);
            entry.validated = None;
        }
        if trust {
            entry.validated = match labels {
                Labels::Keys(keys) => Some(Validation {
                    at: now,
                    seq,
                    clock,
                    labels: keys.as_slice().into(),
                }),
                // More labels than a purge could be matched against.
                Labels::TooMany => None,
            };
        }
        let last_modified = entry.last_modified;
        let validated = entry.validated.clone();
        state.newest_last_modified = state.newest_last_modified.max(last_modified);
        let validated_at = validated
            .filter(|v| self.trusted(v, inner.with_keys(barrier, &v.labels)))
            .map(|v| v.at);
        let out = Entry {
            tag: tag.clone(),
            last_modified,
            validated_at,
        };
        inner.touch(&resource.id);
        inner.evict(&self.limits);
        Ok(out)
    }

    async fn invalidate(
        &self,
        resource: &ResourceKey,
        globs: &[Arc<str>],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        // By path, not by read key: a write by one user under one Host name
        // changes what every user under every Host name would see.
        inner.mark(Invalidated::Path(resource.path.clone()), &self.limits);
        for glob in globs {
            inner.mark(Invalidated::Glob(glob.clone()), &self.limits);
        }
        Ok(())
    }

    async fn purge(&self, purge: &Purge) -> Result<PurgeReport, StoreError> {
        let mut inner = self.lock();
        let floor = inner.floor;
        let marks = purge
            .paths
            .iter()
            .map(|p| Invalidated::Path(p.clone()))
            .chain(
                purge
                    .globs
                    .iter()
                    .map(|g| Invalidated::PurgeGlob(g.clone())),
            )
            .chain(purge.keys.iter().map(|k| Invalidated::Key(k.clone())));
        for what in marks {
            inner.mark(what, &self.limits);
        }
        let held = inner
            .invalidations
            .keys()
            .filter(|w| matches!(w, Invalidated::PurgeGlob(_) | Invalidated::Key(_)))
            .count();
        Ok(PurgeReport {
            marks: held as u64,
            floor_raised: inner.floor != floor,
        })
    }

    async fn try_lock(
        &self,
        resource: &ResourceKey,
        lease: Duration,
    ) -> Result<Option<WriteLock>, StoreError> {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.locks.len() > 1024 {
            inner.locks.retain(|_, held| held.until > now);
        }
        if let Some(held) = inner.locks.get(&resource.lock)
            && held.until > now
        {
            return Ok(None);
        }
        inner.token += 1;
        let token = inner.token;
        inner.locks.insert(
            resource.lock.clone(),
            HeldLock {
                token,
                until: now + lease,
            },
        );
        Ok(Some(WriteLock {
            resource: resource.clone(),
            token,
            holder: 0,
        }))
    }

    async fn renew(&self, lock: &WriteLock, lease: Duration) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.locks.get_mut(&lock.resource.lock) {
            Some(held) if held.token == lock.token && held.until > now => {
                held.until = now + lease;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock(&self, lock: &WriteLock) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .locks
            .get(&lock.resource.lock)
            .is_some_and(|held| held.token == lock.token)
        {
            inner.locks.remove(&lock.resource.lock);
        }
        Ok(())
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::Up
    }
}

/// The `Last-Modified` for a new tag: now in whole seconds, but strictly after
/// every date handed out before for the resource.
fn next_last_modified(now: SystemTime, newest: SystemTime) -> SystemTime {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let now = UNIX_EPOCH + Duration::from_secs(secs);
    if now > newest {
        now
    } else {
        newest + Duration::from_secs(1)
    }
}

// === impl Inner ===

impl Inner {
    /// What a validation of `path` must beat: the floor, the path, the
    /// watched policy globs; then also the purge globs matching the path
    /// (keys come per variant, [`Inner::with_keys`]).
    fn barriers(&mut self, path: &Arc<str>, watched: &[Arc<str>]) -> (Barrier, Barrier) {
        let mut base = Barrier {
            seq: self.floor,
            at: self.floor_at,
        };
        let path_mark = std::iter::once(Invalidated::Path(path.clone()));
        let globs = watched.iter().map(|g| Invalidated::Glob(g.clone()));
        for what in path_mark.chain(globs) {
            if let Some((seq, at)) = self.invalidations.get(&what) {
                base.raise(*seq, Some(*at));
            }
        }
        let mut purged = base;
        if let Some((seq, at)) = self.purge_globs().newest(path) {
            purged.raise(seq, Some(at));
        }
        (base, purged)
    }

    /// `barrier` raised by the marks of a validation's surrogate keys.
    fn with_keys(&self, mut barrier: Barrier, labels: &[KeyId]) -> Barrier {
        for key in labels {
            if let Some((seq, at)) = self.invalidations.get(&Invalidated::Key(key.clone())) {
                barrier.raise(*seq, Some(*at));
            }
        }
        barrier
    }

    /// The purge globs held, compiled once per change.
    fn purge_globs(&mut self) -> Arc<GlobMarks<(u64, Instant)>> {
        if let Some(set) = &self.purge_globs {
            return set.clone();
        }
        let set = Arc::new(GlobMarks::compile(self.invalidations.iter().filter_map(
            |(what, stamp)| match what {
                Invalidated::PurgeGlob(g) => Some((g.as_ref(), *stamp)),
                _ => None,
            },
        )));
        self.purge_globs = Some(set.clone());
        set
    }

    /// Record an invalidation with a sequence of its own (the order map
    /// holds one record per sequence).
    fn mark(&mut self, what: Invalidated, limits: &MemoryLimits) {
        self.seq += 1;
        let seq = self.seq;
        if matches!(what, Invalidated::PurgeGlob(_)) {
            self.purge_globs = None;
        }
        let now = Instant::now();
        if let Some((old, _)) = self.invalidations.insert(what.clone(), (seq, now)) {
            self.invalidation_order.remove(&old);
        }
        self.invalidation_order.insert(seq, what);
        // Records older than any trusted validation can be, plus the guard,
        // no longer matter: forget them without raising the floor.
        let horizon = limits.max_trust_age + limits.trust_guard;
        while let Some((_, oldest)) = self.invalidation_order.first_key_value() {
            let stale = self
                .invalidations
                .get(oldest)
                .is_none_or(|(_, at)| now.duration_since(*at) > horizon);
            if !stale {
                break;
            }
            if let Some((_, old)) = self.invalidation_order.pop_first() {
                self.forget(&old);
            }
        }
        while self.invalidations.len() > limits.max_invalidations.max(1) {
            let Some((old_seq, old)) = self.invalidation_order.pop_first() else {
                break;
            };
            if let Some((_, at)) = self.forget(&old) {
                self.floor_at = Some(self.floor_at.map_or(at, |f| f.max(at)));
            }
            self.floor = self.floor.max(old_seq);
        }
    }

    fn forget(&mut self, what: &Invalidated) -> Option<(u64, Instant)> {
        if matches!(what, Invalidated::PurgeGlob(_)) {
            self.purge_globs = None;
        }
        self.invalidations.remove(what)
    }

    fn touch(&mut self, id: &Arc<str>) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(state) = self.resources.get_mut(id) {
            self.lru.remove(&state.last_used);
            state.last_used = seq;
            state.last_used_at = Instant::now();
            self.lru.insert(seq, id.clone());
        }
    }

    /// Drop the least recently used resources over the cap.
    fn evict(&mut self, limits: &MemoryLimits) {
        while self.resources.len() > limits.max_resources.max(1) {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            self.resources.remove(&id);
        }
    }

    /// Drop resources idle for longer than the TTL (oldest first, so this
    /// stops at the first one still fresh).
    fn expire(&mut self, limits: &MemoryLimits) {
        let now = Instant::now();
        while let Some((_, id)) = self.lru.first_key_value() {
            let idle = self
                .resources
                .get(id)
                .is_none_or(|s| now.duration_since(s.last_used_at) > limits.idle_ttl);
            if !idle {
                break;
            }
            if let Some((_, id)) = self.lru.pop_first() {
                self.resources.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, scope: &str) -> ResourceKey {
        ResourceKey {
            path: path.into(),
            id: format!("{scope}|{path}").into(),
            lock: path.into(),
        }
    }

    fn tag(s: &str) -> EntityTag {
        EntityTag::assemble(false, s)
    }

    const V: VariantKey = VariantKey(String::new());

    #[tokio::test]
    async fn last_modified_is_shared_per_tag_and_strictly_increases() {
        let store = MemoryStore::new();
        let k = key("/a", "");
        let first = store.record(&k, &[], &V, &tag("1"), false).await.unwrap();
        let again = store.record(&k, &[], &V, &tag("1"), false).await.unwrap();
        assert_eq!(first.last_modified, again.last_modified);
        let changed = store.record(&k, &[], &V, &tag("2"), false).await.unwrap();
        assert!(changed.last_modified > first.last_modified);
        let back = store.record(&k, &[], &V, &tag("1"), false).await.unwrap();
        assert!(back.last_modified > changed.last_modified);
    }

    fn unguarded() -> MemoryStore {
        MemoryStore::with_limits(MemoryLimits {
            trust_guard: Duration::ZERO,
            ..MemoryLimits::default()
        })
    }

    #[tokio::test]
    async fn validations_overlapping_a_write_are_not_trusted() {
        let store = MemoryStore::with_limits(MemoryLimits {
            trust_guard: Duration::from_millis(50),
            ..MemoryLimits::default()
        });
        let k = key("/a", "");
        store.invalidate(&k, &[]).await.unwrap();
        // Recorded right after the write: the app may have read old state.
        store.record(&k, &[], &V, &tag("1"), true).await.unwrap();
        let res = store.lookup(&k, &[]).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_none());
        tokio::time::sleep(Duration::from_millis(60)).await;
        store.record(&k, &[], &V, &tag("1"), true).await.unwrap();
        let res = store.lookup(&k, &[]).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_some());
    }

    #[tokio::test]
    async fn invalidation_of_path_or_watched_glob_untrusts() {
        let store = unguarded();
        let k = key("/items/1", "user");
        store.record(&k, &[], &V, &tag("1"), true).await.unwrap();
        let watched: Vec<Arc<str>> = vec!["/items/**".into()];
        let res = store.lookup(&k, &watched).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_some());

        store
            .invalidate(&key("/other", ""), &watched)
            .await
            .unwrap();
        let res = store.lookup(&k, &watched).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_none());

        store.record(&k, &[], &V, &tag("1"), true).await.unwrap();
        // Another credential scope writing the same path invalidates too.
        store
            .invalidate(&key("/items/1", "other"), &[])
            .await
            .unwrap();
        let res = store.lookup(&k, &watched).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_none());
    }

    fn labelled(keys: &[&str]) -> Labels {
        Labels::of(keys.iter().map(|k| KeyId::of(k.as_bytes())).collect())
    }

    async fn trusted(store: &MemoryStore, k: &ResourceKey) -> bool {
        let res = store.lookup(k, &[]).await.unwrap().unwrap();
        res.variant(&V).unwrap().validated_at.is_some()
    }

    #[tokio::test]
    async fn purges_untrust_exactly_what_they_name() {
        let store = unguarded();
        let (a, b, c) = (
            key("/items/1", "u"),
            key("/items/2", "v"),
            key("/other", ""),
        );
        let record = |k: ResourceKey, l: Labels| {
            let store = &store;
            async move {
                store
                    .record_with(&k, &[], &V, &tag("1"), true, &l)
                    .await
                    .unwrap()
            }
        };
        record(a.clone(), labelled(&["item-1", "items"])).await;
        record(b.clone(), labelled(&["item-2", "items"])).await;
        record(c.clone(), labelled(&[])).await;
        for k in [&a, &b, &c] {
            assert!(trusted(&store, k).await);
        }
        // A key: only the variants labelled with it.
        store
            .purge(&Purge::keys(vec![KeyId::of(b"item-1")]))
            .await
            .unwrap();
        assert!(!trusted(&store, &a).await);
        let res = store.lookup(&a, &[]).await.unwrap().unwrap();
        assert_eq!(res.purged, vec![V], "a refusal only the purge caused");
        assert!(trusted(&store, &b).await && trusted(&store, &c).await);
        // Validated again after the purge: trusted again.
        record(a.clone(), labelled(&["item-1", "items"])).await;
        assert!(trusted(&store, &a).await);
        // A glob: every read key of every matching path.
        let glob = Purge {
            globs: vec!["/items/*".into()],
            ..Purge::default()
        };
        let report = store.purge(&glob).await.unwrap();
        assert_eq!(report.marks, 2);
        assert!(!trusted(&store, &a).await && !trusted(&store, &b).await);
        assert!(trusted(&store, &c).await);
        // An exact path, under any credential scope.
        let path = Purge {
            paths: vec!["/other".into()],
            ..Purge::default()
        };
        store.purge(&path).await.unwrap();
        let res = store.lookup(&c, &[]).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_none());
    }

    #[tokio::test]
    async fn validations_within_the_guard_after_a_purge_are_not_trusted() {
        let store = MemoryStore::with_limits(MemoryLimits {
            trust_guard: Duration::from_millis(60),
            ..MemoryLimits::default()
        });
        let k = key("/a", "");
        store
            .purge(&Purge::keys(vec![KeyId::of(b"k")]))
            .await
            .unwrap();
        // A GET that started before the purge may record old data after it.
        let e = store
            .record_with(&k, &[], &V, &tag("1"), true, &labelled(&["k"]))
            .await
            .unwrap();
        assert!(e.validated_at.is_none());
        assert!(!trusted(&store, &k).await);
        // The same guard does not hold back a variant the purge did not name.
        store
            .record_with(&key("/b", ""), &[], &V, &tag("1"), true, &labelled(&["j"]))
            .await
            .unwrap();
        assert!(trusted(&store, &key("/b", "")).await);
        tokio::time::sleep(Duration::from_millis(70)).await;
        store
            .record_with(&k, &[], &V, &tag("1"), true, &labelled(&["k"]))
            .await
            .unwrap();
        assert!(trusted(&store, &k).await);
    }

    #[tokio::test]
    async fn too_many_labels_are_never_trusted() {
        let store = unguarded();
        let k = key("/a", "");
        store.record(&k, &[], &V, &tag("1"), true).await.unwrap();
        assert!(trusted(&store, &k).await);
        let many: Vec<String> = (0..=crate::surrogate::MAX_LABELS)
            .map(|i| i.to_string())
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(labelled(&many), Labels::TooMany);
        store
            .record_with(&k, &[], &V, &tag("1"), true, &labelled(&many))
            .await
            .unwrap();
        let res = store.lookup(&k, &[]).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_none());
    }

    #[tokio::test]
    async fn dropping_live_purge_marks_raises_the_floor_never_re_trusts() {
        let store = MemoryStore::with_limits(MemoryLimits {
            max_invalidations: 3,
            trust_guard: Duration::ZERO,
            ..MemoryLimits::default()
        });
        let k = key("/a", "");
        store
            .record_with(&k, &[], &V, &tag("1"), true, &labelled(&["k0"]))
            .await
            .unwrap();
        store
            .purge(&Purge::keys(vec![KeyId::of(b"k0")]))
            .await
            .unwrap();
        assert!(!trusted(&store, &k).await);
        let mut raised = false;
        for i in 1..10 {
            let key_i = KeyId::of(format!("other{i}").as_bytes());
            let report = store.purge(&Purge::keys(vec![key_i])).await.unwrap();
            assert!(report.marks <= 3);
            raised |= report.floor_raised;
        }
        assert!(raised, "the cap dropped live marks");
        // k0's mark is gone, but the floor still refuses the old validation.
        assert!(!trusted(&store, &k).await);
        store
            .record_with(&k, &[], &V, &tag("1"), true, &labelled(&["k0"]))
            .await
            .unwrap();
        assert!(trusted(&store, &k).await);
    }

    #[tokio::test]
    async fn bounded_by_resource_count() {
        let store = MemoryStore::with_limits(MemoryLimits {
            max_resources: 10,
            ..MemoryLimits::default()
        });
        for i in 0..1000 {
            let k = key(&format!("/r/{i}"), "");
            store.record(&k, &[], &V, &tag("x"), false).await.unwrap();
        }
        assert_eq!(store.len(), 10);
        // The most recent ones survive.
        assert!(
            store
                .lookup(&key("/r/999", ""), &[])
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.lookup(&key("/r/0", ""), &[]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn forgotten_invalidations_fold_into_a_floor() {
        let store = MemoryStore::with_limits(MemoryLimits {
            max_invalidations: 2,
            ..MemoryLimits::default()
        });
        let k = key("/a", "");
        store.record(&k, &[], &V, &tag("1"), true).await.unwrap();
        store.invalidate(&k, &[]).await.unwrap();
        for i in 0..5 {
            store
                .invalidate(&key(&format!("/x{i}"), ""), &[])
                .await
                .unwrap();
        }
        let res = store.lookup(&k, &[]).await.unwrap().unwrap();
        assert!(res.variant(&V).unwrap().validated_at.is_none());
    }

    #[tokio::test]
    async fn idle_resources_expire() {
        let store = MemoryStore::with_limits(MemoryLimits {
            idle_ttl: Duration::from_millis(20),
            ..MemoryLimits::default()
        });
        store
            .record(&key("/a", ""), &[], &V, &tag("1"), false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(store.lookup(&key("/a", ""), &[]).await.unwrap().is_none());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn locks_fence_and_expire() {
        let store = MemoryStore::new();
        let k = key("/a", "");
        let first = store
            .try_lock(&k, Duration::from_millis(30))
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .try_lock(&k, Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = store
            .try_lock(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(second.token > first.token);
        // The expired holder cannot release the new lock.
        store.unlock(&first).await.unwrap();
        assert!(
            store
                .try_lock(&k, Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
        store.unlock(&second).await.unwrap();
        assert!(
            store
                .try_lock(&k, Duration::from_secs(1))
                .await
                .unwrap()
                .is_some()
        );
    }
}
