//! The embedded in-memory store: one replica, local runs and the demo.
//!
//! A real store, not a test double: bounded in memory (a cap on resources,
//! least recently used evicted first, and an idle TTL), shared `Last-Modified`
//! that strictly increases per resource when its tag changes, trusted
//! validations, invalidation by path and by glob ordered by one monotonic
//! sequence, and write locks with fencing tokens and leases. Several proxies in
//! one process can share one `Arc<MemoryStore>` and agree exactly as replicas
//! sharing Redis do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Entry, Resource, ResourceKey, Store, StoreError, StoreHealth, VariantKey, WriteLock};
use crate::tag::EntityTag;

/// How much the store may hold.
#[derive(Clone, Copy, Debug)]
pub struct MemoryLimits {
    /// Most resources kept; the least recently used go first.
    pub max_resources: usize,
    /// Most variants kept per resource (distinct `Vary` values).
    pub max_variants: usize,
    /// Most invalidation records kept (paths and globs). Older ones fold into
    /// a floor: validations older than the floor are never trusted, so
    /// forgetting an invalidation can only make the store more cautious.
    pub max_invalidations: usize,
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
    /// Invalidations by canonical path and by glob, each with its sequence.
    invalidations: HashMap<Invalidated, (u64, Instant)>,
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
    Glob(Arc<str>),
}

#[derive(Debug)]
struct ResourceState {
    vary: Vec<String>,
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
    /// When (wall clock, sequence, monotonic clock) the tag was last
    /// validated in Trust mode.
    validated: Option<(SystemTime, u64, Instant)>,
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
        let (barrier, barrier_at) = inner.barrier(&resource.path, watched);
        let guard = self.limits.trust_guard;
        inner.touch(&resource.id);
        let Some(state) = inner.resources.get(&resource.id) else {
            return Ok(None);
        };
        let mut variants: Vec<(VariantKey, Entry)> = state
            .variants
            .iter()
            .map(|(key, v)| {
                let validated_at = v
                    .validated
                    .filter(|(_, seq, clock)| {
                        *seq > barrier && barrier_at.is_none_or(|b| *clock >= b + guard)
                    })
                    .map(|(at, _, _)| at);
                (
                    key.clone(),
                    Entry {
                        tag: v.tag.clone(),
                        last_modified: v.last_modified,
                        validated_at,
                    },
                )
            })
            .collect();
        variants.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(Resource {
            vary: state.vary.clone(),
            variants,
        }))
    }

    async fn record(
        &self,
        resource: &ResourceKey,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        trust: bool,
    ) -> Result<Entry, StoreError> {
        let mut inner = self.lock();
        inner.expire(&self.limits);
        inner.seq += 1;
        let seq = inner.seq;
        let now = SystemTime::now();
        let clock = Instant::now();
        // A validation inside the guard is stored but not reported trusted,
        // exactly as `lookup` (and the Redis store) would report it.
        let (barrier, barrier_at) = inner.barrier(&resource.path, &[]);
        let guard = self.limits.trust_guard;
        let state = inner
            .resources
            .entry(resource.id.clone())
            .or_insert_with(|| ResourceState {
                vary: Vec::new(),
                variants: HashMap::new(),
                newest_last_modified: UNIX_EPOCH,
                last_used: seq,
                last_used_at: clock,
            });
        state.vary = vary.to_vec();
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
            entry.validated = Some((now, seq, clock));
        }
        let last_modified = entry.last_modified;
        let out = Entry {
            tag: entry.tag.clone(),
            last_modified,
            validated_at: entry
                .validated
                .filter(|(_, seq, clock)| {
                    *seq > barrier && barrier_at.is_none_or(|b| *clock >= b + guard)
                })
                .map(|(at, _, _)| at),
        };
        state.newest_last_modified = state.newest_last_modified.max(last_modified);
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
        inner.seq += 1;
        let seq = inner.seq;
        // By path, not by read key: a write by one user under one Host name
        // changes what every user under every Host name would see.
        inner.mark(Invalidated::Path(resource.path.clone()), seq, &self.limits);
        for glob in globs {
            inner.mark(Invalidated::Glob(glob.clone()), seq, &self.limits);
        }
        Ok(())
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
    /// The newest sequence a validation of `path` must beat to be trusted,
    /// and when the newest relevant invalidation happened.
    fn barrier(&self, path: &Arc<str>, watched: &[Arc<str>]) -> (u64, Option<Instant>) {
        let mut barrier = (self.floor, self.floor_at);
        let path = std::iter::once(Invalidated::Path(path.clone()));
        let globs = watched.iter().map(|g| Invalidated::Glob(g.clone()));
        for what in path.chain(globs) {
            if let Some((seq, at)) = self.invalidations.get(&what) {
                barrier.0 = barrier.0.max(*seq);
                barrier.1 = Some(barrier.1.map_or(*at, |b| b.max(*at)));
            }
        }
        barrier
    }

    fn mark(&mut self, what: Invalidated, seq: u64, limits: &MemoryLimits) {
        if let Some((old, _)) = self
            .invalidations
            .insert(what.clone(), (seq, Instant::now()))
        {
            self.invalidation_order.remove(&old);
        }
        self.invalidation_order.insert(seq, what);
        while self.invalidations.len() > limits.max_invalidations.max(1) {
            let Some((old_seq, old)) = self.invalidation_order.pop_first() else {
                break;
            };
            if let Some((_, at)) = self.invalidations.remove(&old) {
                self.floor_at = Some(self.floor_at.map_or(at, |f| f.max(at)));
            }
            self.floor = self.floor.max(old_seq);
        }
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
        EntityTag {
            weak: false,
            opaque: s.to_owned(),
        }
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
