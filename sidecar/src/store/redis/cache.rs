//! The local (client-side) cache of resource, path, meta and purge hashes
//! (and each resource's label marks), kept exact by
//! Redis' RESP3 `CLIENT TRACKING ... BCAST` invalidation pushes.
//!
//! Why our own cache rather than the redis crate's `cache-aio`: the store
//! reads through Lua scripts (atomic snapshots) which that cache does not
//! cover, and it inserts a reply after the reply was handed over, so an
//! invalidation that races in between can leave a stale entry. Here every
//! read takes a [`Ticket`] before it is sent; invalidation pushes are applied
//! synchronously on the connection's reader (before any later reply is
//! delivered) and logged with a sequence number, and an insert is refused if
//! an invalidation of the same key (or a flush) happened after its ticket.
//! On connection loss the whole cache is flushed and disabled until tracking
//! is on again on the new connection.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::model::RawHash;

/// Taken before a read is sent; an insert is only accepted if nothing the
/// read returned was invalidated since.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket(u64);

/// Which cached key an invalidation hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Hit {
    Resource(String),
    Path(String),
    Meta,
    /// The purge hash (glob marks, floor).
    Purge,
    /// The key-mark hash: every resource's label marks are stale.
    Keys,
}

struct Slot<T = Arc<RawHash>> {
    hash: T,
    until: Instant,
}

/// A resource hash and the marks of its labels, read together: one is
/// never served with the other from a different read.
type ResourcePair = (Arc<RawHash>, Arc<RawHash>);

struct State {
    enabled: bool,
    seq: u64,
    /// Tickets older than this are refused (flush, or the log was pruned).
    floor: u64,
    resources: HashMap<String, Slot<ResourcePair>>,
    /// Path hashes by path id (an empty hash caches "absent").
    paths: HashMap<String, Slot>,
    meta: Option<Slot>,
    purge: Option<Slot>,
    /// Recent invalidations: (sequence, when, what).
    log: VecDeque<(u64, Instant, Hit)>,
}

/// See the module docs.
pub(crate) struct Cache {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
    /// How long invalidations are remembered for in-flight reads (longer
    /// than any read may take: reads time out well before).
    log_window: Duration,
    pushed: tokio::sync::Notify,
}

impl Cache {
    pub(crate) fn new(capacity: usize, ttl: Duration, log_window: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                enabled: false,
                seq: 0,
                floor: 0,
                resources: HashMap::new(),
                paths: HashMap::new(),
                meta: None,
                purge: None,
                log: VecDeque::new(),
            }),
            capacity,
            ttl,
            log_window,
            pushed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave it inconsistent in a
        // way that matters more than losing the cache: recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for a read about to be sent, or `None` while disabled.
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        let s = self.lock();
        s.enabled.then_some(Ticket(s.seq))
    }

    /// The cached resource hash of read key `id` (with its label marks),
    /// the path hash of `path` (an empty hash caches "absent"), meta and
    /// the purge hash: all or nothing.
    pub(crate) fn get(&self, id: &str, path: &str) -> Option<Cached> {
        let s = self.lock();
        if !s.enabled {
            return None;
        }
        let now = Instant::now();
        let res = s.resources.get(id).filter(|e| e.until > now)?;
        let path = s.paths.get(path).filter(|e| e.until > now)?;
        let meta = s.meta.as_ref().filter(|e| e.until > now)?;
        let purge = s.purge.as_ref().filter(|e| e.until > now)?;
        Some(Cached {
            res: res.hash.0.clone(),
            path: path.hash.clone(),
            meta: meta.hash.clone(),
            purge: purge.hash.clone(),
            labels: res.hash.1.clone(),
        })
    }

    /// Remember what a read returned, unless it was invalidated meanwhile.
    pub(crate) fn insert(&self, ticket: Ticket, id: &str, path_id: &str, read: Cached) {
        let mut s = self.lock();
        if !s.enabled || ticket.0 < s.floor {
            return;
        }
        let (mut res_ok, mut path_ok, mut meta_ok, mut purge_ok) = (true, true, true, true);
        for (seq, _, hit) in &s.log {
            if *seq <= ticket.0 {
                continue;
            }
            match hit {
                Hit::Meta => meta_ok = false,
                Hit::Purge => purge_ok = false,
                Hit::Keys => res_ok = false,
                Hit::Resource(r) if r == id => res_ok = false,
                Hit::Path(p) if p == path_id => path_ok = false,
                Hit::Resource(_) | Hit::Path(_) => {}
            }
        }
        let until = Instant::now() + self.ttl;
        if meta_ok {
            s.meta = Some(Slot {
                hash: read.meta,
                until,
            });
        }
        if purge_ok {
            s.purge = Some(Slot {
                hash: read.purge,
                until,
            });
        }
        let capacity = self.capacity;
        if res_ok {
            let pair = (read.res, read.labels);
            bounded_insert(&mut s.resources, capacity, id, pair, until);
        }
        if path_ok {
            bounded_insert(&mut s.paths, capacity, path_id, read.path, until);
        }
    }

    /// A tracked key changed (an invalidation push, or our own write).
    pub(crate) fn invalidate(&self, hit: Hit) {
        let mut s = self.lock();
        s.seq += 1;
        let seq = s.seq;
        match &hit {
            Hit::Meta => s.meta = None,
            Hit::Purge => s.purge = None,
            Hit::Keys => s.resources.clear(),
            Hit::Resource(id) => {
                s.resources.remove(id);
            }
            Hit::Path(id) => {
                s.paths.remove(id);
            }
        }
        let now = Instant::now();
        s.log.push_back((seq, now, hit));
        self.pushed.notify_waiters();
        while let Some((old_seq, at, _)) = s.log.front() {
            if now.duration_since(*at) <= self.log_window && s.log.len() <= 100_000 {
                break;
            }
            // Tickets from before a pruned entry can no longer be checked.
            s.floor = s.floor.max(*old_seq);
            s.log.pop_front();
        }
    }

    /// Forget everything and refuse inserts from earlier tickets (flush
    /// pushes, connection loss, reconnects). `enabled` says whether the
    /// cache may be used from now on (tracking active).
    pub(crate) fn reset(&self, enabled: bool) {
        let mut s = self.lock();
        s.seq += 1;
        s.floor = s.seq;
        s.resources.clear();
        s.paths.clear();
        s.meta = None;
        s.purge = None;
        s.log.clear();
        s.enabled = enabled;
        self.pushed.notify_waiters();
    }

    /// Whether `hit` was invalidated (or everything reset) after `ticket`.
    pub(crate) fn invalidated_since(&self, ticket: Ticket, hit: &Hit) -> bool {
        let s = self.lock();
        ticket.0 < s.floor || s.log.iter().any(|(seq, _, h)| *seq > ticket.0 && h == hit)
    }

    /// Wakes writers waiting for their own invalidation push.
    pub(crate) fn pushed(&self) -> &tokio::sync::Notify {
        &self.pushed
    }

    /// Number of cached resources (tests, metrics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().resources.len()
    }
}

/// The hashes a lookup needs, as cached or just read.
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) res: Arc<RawHash>,
    pub(crate) path: Arc<RawHash>,
    pub(crate) meta: Arc<RawHash>,
    pub(crate) purge: Arc<RawHash>,
    /// The key-mark hash's `e` and the marks of `res`'s labels.
    pub(crate) labels: Arc<RawHash>,
}

impl Cached {
    /// From a script's flat replies.
    pub(crate) fn from_flat(
        res: Vec<String>,
        meta: Vec<String>,
        path: Vec<String>,
        purge: Vec<String>,
        labels: Vec<String>,
    ) -> Cached {
        use super::model::pairs;
        Cached {
            res: Arc::new(pairs(res)),
            path: Arc::new(pairs(path)),
            meta: Arc::new(pairs(meta)),
            purge: Arc::new(pairs(purge)),
            labels: Arc::new(pairs(labels)),
        }
    }
}

/// Insert into a map of at most `capacity` slots: expired ones go first,
/// then an arbitrary live one.
fn bounded_insert<T>(
    map: &mut HashMap<String, Slot<T>>,
    capacity: usize,
    id: &str,
    hash: T,
    until: Instant,
) {
    if map.len() >= capacity && !map.contains_key(id) {
        let now = Instant::now();
        map.retain(|_, e| e.until > now);
        if map.len() >= capacity
            && let Some(k) = map.keys().next().cloned()
        {
            map.remove(&k);
        }
    }
    map.insert(id.to_owned(), Slot { hash, until });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> Arc<RawHash> {
        Arc::new(RawHash::from([("vary".to_owned(), v.to_owned())]))
    }

    fn read(res: &str, meta: &str) -> Cached {
        Cached {
            res: h(res),
            path: h("p"),
            meta: h(meta),
            purge: h("x"),
            labels: h("k"),
        }
    }

    fn cache() -> Cache {
        let c = Cache::new(2, Duration::from_secs(60), Duration::from_secs(5));
        c.reset(true);
        c
    }

    #[test]
    fn disabled_cache_never_answers() {
        let c = Cache::new(2, Duration::from_secs(60), Duration::from_secs(5));
        assert!(c.ticket().is_none());
        assert!(c.get("a", "P").is_none());
    }

    #[test]
    fn insert_then_hit_then_invalidate() {
        let c = cache();
        let t = c.ticket().unwrap();
        c.insert(t, "a", "P", read("1", "m"));
        assert_eq!(c.get("a", "P").unwrap().res.get("vary").unwrap(), "1");
        c.invalidate(Hit::Resource("a".into()));
        assert!(c.get("a", "P").is_none());
        // A path invalidation hides every read key of the path.
        let t = c.ticket().unwrap();
        c.insert(t, "a", "P", read("1", "m"));
        c.insert(t, "b", "P", read("2", "m"));
        c.invalidate(Hit::Path("P".into()));
        assert!(c.get("a", "P").is_none() && c.get("b", "P").is_none());
        // ...and a read racing it cannot put the old path state back.
        c.insert(t, "a", "P", read("1", "m"));
        assert!(c.get("a", "P").is_none());
    }

    #[test]
    fn invalidation_racing_a_read_wins() {
        let c = cache();
        let t = c.ticket().unwrap();
        // The push arrives between the read's reply and its insert.
        c.invalidate(Hit::Resource("a".into()));
        c.insert(t, "a", "P", read("stale", "m"));
        assert!(c.get("a", "P").is_none());
        // An unrelated key's invalidation does not block the insert.
        let t = c.ticket().unwrap();
        c.invalidate(Hit::Resource("b".into()));
        c.insert(t, "a", "P", read("fresh", "m"));
        assert!(c.get("a", "P").is_some());
        // A meta invalidation blocks meta (so the pair is not served).
        let t = c.ticket().unwrap();
        c.invalidate(Hit::Meta);
        c.insert(t, "a", "P", read("x", "m2"));
        assert!(c.get("a", "P").is_none());
        // A purge (glob marks) or key-mark change hides every resource,
        // and a read racing it cannot put the old marks back.
        let t = c.ticket().unwrap();
        c.insert(t, "a", "P", read("x", "m"));
        assert!(c.get("a", "P").is_some());
        let t = c.ticket().unwrap();
        c.invalidate(Hit::Purge);
        assert!(c.get("a", "P").is_none());
        c.insert(t, "a", "P", read("x", "m"));
        assert!(c.get("a", "P").is_none());
        let t = c.ticket().unwrap();
        c.insert(t, "a", "P", read("x", "m"));
        c.invalidate(Hit::Keys);
        assert!(c.get("a", "P").is_none());
        c.insert(t, "a", "P", read("x", "m"));
        assert!(c.get("a", "P").is_none());
    }

    #[test]
    fn reset_refuses_older_tickets() {
        let c = cache();
        let t = c.ticket().unwrap();
        c.reset(true);
        c.insert(t, "a", "P", read("1", "m"));
        assert!(c.get("a", "P").is_none());
        c.reset(false);
        assert!(c.ticket().is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = cache();
        for id in ["a", "b", "c", "d"] {
            let t = c.ticket().unwrap();
            c.insert(t, id, "P", read(id, "m"));
        }
        assert!(c.len() <= 2);
    }
}
