//! The shared Redis store: every replica of an app agrees on Last-Modified,
//! trusted validations, invalidations and write locks through one Redis.
//!
//! - Atomic compare-and-set in Lua scripts (`redis/*.lua`), run by `EVALSHA`:
//!   one round trip per store call, none for hot keys thanks to a local
//!   cache kept exact by RESP3 `CLIENT TRACKING BCAST` pushes
//!   ([`cache`]).
//! - All keys of a store share the hash tag `{prefix}` ([`model`]), so the
//!   scripts never fail with CROSSSLOT on Redis Cluster.
//! - Times come from Redis `TIME`, never from a replica's clock.
//! - Outage: a supervisor task owns the connection, reconnects with
//!   backoff, logs one line per state change; every call fails fast with
//!   [`StoreError::Unavailable`] while down. A failed invalidation bumps the
//!   store's epoch on reconnect, so nothing validated before is trusted.
//!
//! ## Failover: nothing acknowledged is lost
//!
//! Redis replicates asynchronously, so a write the primary acknowledged
//! can vanish when a replica is promoted. Two kinds of writes must not:
//! a write lock (lost, a second writer takes it on the new primary: a lost
//! update) and an invalidation or purge (lost, a validation it ended is
//! trusted again, and the trust guard loses the write's mark: a stale
//! 304). Each is followed by `WAIT 1 <ms>` on a connection of its own
//! ([`conn::Opened::writer`]; `WAIT` blocks the connection it is sent on,
//! and must not hold up lookups). A write no replica acknowledged within
//! [`RedisOptions::wait_timeout`] (itself inside the op timeout) is a
//! store failure, never a success: the proxy answers 503 + `Retry-After`
//! and the write never reaches the app (a lock is released again, best
//! effort). One replica is enough: Sentinel promotes the replica with the
//! largest replication offset, which holds everything any replica acked.
//! Renewals wait too (a lost renewal could end a lease early on the new
//! primary). Releases do not wait: each is repeated on every new
//! connection for a few minutes (its fencing token makes a repeat
//! harmless), so one lost in a failover cannot leave the lock on the new
//! primary for a whole lease. Records (tag dates, trusted validations) do not: losing one
//! costs a later app call, never correctness, since the primary change
//! bumps the epoch; they stay one round trip on the read path.
//!
//! Why not `WAITAOF`: it proves the write reached an fsynced append-only
//! file, which protects against a restart of the same server, not against
//! promoting a replica; the managed store runs without AOF, and a restart
//! with a new run id already bumps the epoch. Redis 7.2+ only, too.
//!
//! With no replica connected (a single Redis) there is nothing to wait
//! for. How many replicas to wait for is [`RedisOptions::wait_replicas`]:
//! by default 1 once the primary reports a connected replica (learned on
//! connect from `INFO replication`, and raised by the periodic role check
//! when one appears; never lowered on a live connection, so a primary cut
//! off from its replicas refuses writes instead of accepting ones a
//! failover would drop).
//!
//! A primary change is a reconnect: a `READONLY`/`MASTERDOWN` reply, or
//! the role check (every [`RedisOptions::role_check`]) finding a replica, a
//! new replication id or a replica gone (Sentinel detaches the replica it
//! promotes first), drops the connection; the supervisor resolves the primary again
//! (through the sentinels for a sentinel URL, and asks them once more
//! after connecting, so a primary that was frozen through its own failover
//! is refused), re-enables `CLIENT TRACKING` on the new connection with an
//! empty client-side cache (a promoted replica has no tracking table for
//! us, and Redis never says a client lost it), and bumps the epoch when
//! the server's run id or replication id changed. No subscription to the
//! sentinels' `+switch-master`: a demoted primary is caught by `READONLY`
//! at the first write and by the role check within a second, a dead or
//! frozen one by the op timeout.

mod barrier;
mod cache;
mod conn;
mod model;
mod supervisor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::RedisResult;

use self::cache::{Cache, Cached, Hit};
use self::conn::{Conn, SCRIPTS};
pub use self::model::PrefixError;
use self::model::{ClockOffset, Hashes, Keys, RawHash, TrustRules};
use crate::store::{
    Entry, Labels, Purge, PurgeReport, Resource, ResourceKey, Store, StoreError, StoreHealth,
    VariantKey, WriteLock,
};
use crate::surrogate::GlobMarks;
use crate::tag::EntityTag;
use sametag_redis_target as target;
pub use sametag_redis_target::{Credentials, UrlError};

/// Tunables of the Redis store; [`Default`] suits production.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Bound on opening a connection (TCP, TLS, AUTH, HELLO).
    pub connect_timeout: Duration,
    /// Bound on every store call: past it the call fails `Unavailable` and
    /// the connection is replaced (a request is never held longer).
    pub op_timeout: Duration,
    /// TTL of resource hashes (refreshed when used). Every key but a write
    /// lock has a TTL, so a Redis with `maxmemory` and a `volatile-*`
    /// policy evicts tag state and never a held lock (`lock.lua`).
    pub entry_ttl: Duration,
    /// TTL of the meta hash (epoch, glob marks) and the clock.
    pub meta_ttl: Duration,
    /// A validation recorded less than this after an invalidation of its
    /// resource (or a watched glob) is not trusted: the app's GET may have
    /// overlapped the write and read the old state. Should cover the app's
    /// response time (the proxy's upstream timeout for strictness).
    pub trust_guard: Duration,
    /// The local cache (RESP3 client tracking). Off: every lookup is one
    /// round trip.
    pub client_cache: bool,
    /// Most resources the local cache holds.
    pub cache_capacity: usize,
    /// Longest a local cache entry lives without an invalidation.
    pub cache_ttl: Duration,
    /// Most variants kept per resource (a flood of `Vary` values resets it).
    pub max_variants: u32,
    /// Most purged globs remembered (every lookup reads them all). Past it
    /// the oldest are dropped and the purge floor raised.
    pub max_glob_marks: u32,
    /// Most purged surrogate keys remembered (a lookup reads only those of
    /// the resource's labels). Past it the oldest are dropped and the
    /// purge floor raised.
    pub max_key_marks: u32,
    /// No validation older than this is trusted (the longest `maxAge` a
    /// policy may give), so purge marks older than it and the guard are
    /// forgotten without raising the floor.
    pub max_trust_age: Duration,
    /// A PEM CA bundle to trust for `rediss://` instead of the system roots
    /// (a store with a private CA).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// ACL user and password given apart from the URL (they override its
    /// userinfo; never formatted into a URL).
    pub credentials: Credentials,
    /// Reconnect backoff: first delay and cap (doubling, with jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How many replicas must acknowledge a lock or an invalidation
    /// (`WAIT`) before it counts (see the module docs).
    pub wait_replicas: WaitReplicas,
    /// Longest a lock or an invalidation waits for its replicas; never more
    /// than three quarters of [`RedisOptions::op_timeout`].
    pub wait_timeout: Duration,
    /// How often the connected server's role, replication id and replicas
    /// are checked (one `INFO replication`).
    pub role_check: Duration,
}

/// How many replicas a lock or an invalidation waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitReplicas {
    /// One, once the primary reports a connected replica; none before.
    #[default]
    Auto,
    /// Exactly this many (0: never wait). Writes fail while fewer replicas
    /// acknowledge them.
    Exactly(u32),
}

impl std::str::FromStr for WaitReplicas {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(WaitReplicas::Auto);
        }
        s.parse()
            .map(WaitReplicas::Exactly)
            .map_err(|_| format!("expected `auto` or a number of replicas, got {s:?}"))
    }
}

impl WaitReplicas {
    /// Replicas to wait for on a connection whose primary had `seen`
    /// replicas connected at most.
    fn count(self, seen: u32) -> u32 {
        match self {
            WaitReplicas::Auto => seen.min(1),
            WaitReplicas::Exactly(n) => n,
        }
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            op_timeout: Duration::from_millis(300),
            entry_ttl: Duration::from_secs(24 * 3600),
            meta_ttl: Duration::from_secs(7 * 24 * 3600),
            trust_guard: Duration::from_secs(10),
            client_cache: true,
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(60),
            max_variants: 32,
            max_glob_marks: 256,
            max_key_marks: 100_000,
            max_trust_age: sametag_policy::MAX_MAX_AGE,
            tls_ca_file: None,
            credentials: Credentials::default(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            wait_replicas: WaitReplicas::Auto,
            wait_timeout: Duration::from_millis(200),
            role_check: Duration::from_secs(1),
        }
    }
}

/// Why a Redis store could not be created (bad configuration; an
/// unreachable Redis is not an error here, it is an outage).
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    #[error("cannot read the Redis TLS CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Round trips and cache hits, for `/metrics`. The per-request average is
/// `sametag_redis_round_trips_total / <requests>`.
#[derive(Clone, Debug, Default)]
pub struct RedisMetrics {
    /// Calls that went to Redis (each one round trip).
    pub round_trips: Counter,
    /// Lookups and records answered from the local cache (no round trip).
    pub cache_hits: Counter,
    /// Calls that failed (unreachable, timeout, protocol).
    pub errors: Counter,
    /// Epoch bumps after a failed invalidation, a Redis restart or a
    /// primary change.
    pub epoch_bumps: Counter,
    /// Locks and invalidations no replica acknowledged in time (each
    /// reported to the caller as a store failure).
    pub replica_wait_failures: Counter,
    /// 1 while connected. Not exported: `sametag_store_up` (read from
    /// [`Store::health`]) is the one store-up gauge for both stores.
    pub up: Gauge,
}

/// State shared with the connection's push handler (no connection inside,
/// so the connection can own a handle to it without a cycle).
pub(crate) struct Shared {
    keys: Keys,
    cache: Cache,
    /// Id of the installed connection; 0 while down.
    live_id: AtomicU64,
    /// Wakes the supervisor when the installed connection is lost.
    down: tokio::sync::Notify,
}

impl Shared {
    /// Connection `id` is gone: stop answering from the cache and wake the
    /// supervisor, once (whoever notices first: a failed call or the
    /// connection's own disconnect notice).
    pub(crate) fn mark_down(&self, id: u64) -> bool {
        if id != 0
            && self
                .live_id
                .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.cache.reset(false);
            self.down.notify_one();
            true
        } else {
            false
        }
    }
}

/// How long a lock release is repeated on new connections: longer than
/// any lease the proxy takes (its default is about a minute).
const RELEASE_MEMORY: Duration = Duration::from_secs(300);

/// Most releases remembered (their leases end the older ones anyway).
const MAX_RELEASES: usize = 10_000;

/// A lock release to repeat: `unlock.lua`'s lock key, token (empty when
/// the grant's reply was lost) and holder.
#[derive(Clone, Debug)]
pub(crate) struct Release {
    pub key: String,
    pub token: String,
    pub holder: String,
}

/// 64 random bits (a clock-and-pid mix if the OS has no randomness).
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    })
}

/// A resource's watched invalidation globs.
type Globs = Arc<[Arc<str>]>;

/// Purge globs as compiled, with the `(glob, stamp)` list they came from.
type CompiledGlobs = (Vec<(String, u64)>, Arc<GlobMarks<u64>>);

struct Live {
    id: u64,
    conn: Conn,
    /// Writes followed by `WAIT` ([`conn::Opened::writer`]).
    writer: Conn,
}

/// A write that must survive a failover, after its `WAIT`.
enum Durable<T> {
    /// Enough replicas have it (or none are waited for).
    Acked(T),
    /// The primary applied it, but too few replicas acknowledged it: the
    /// caller must report a failure (and may undo it).
    Unacked(T, StoreError),
}

pub(crate) struct Inner {
    shared: Arc<Shared>,
    target: target::Target,
    url: String,
    opts: RedisOptions,
    live: RwLock<Option<Live>>,
    next_id: AtomicU64,
    /// An invalidation failed (or Redis restarted): bump the epoch before
    /// serving again.
    pending_bump: AtomicBool,
    /// The run id and replication id of the primary last connected to (a
    /// change is a restart or a failover).
    identity: Mutex<Option<(String, String)>>,
    /// Replicas a durable write waits for on the live connection.
    wait_for: AtomicU32,
    /// Most replicas the live connection's primary reported connected.
    replicas_seen: AtomicU32,
    /// Wakes the supervisor to check the primary's role now (a `WAIT`
    /// fell short).
    recheck: tokio::sync::Notify,
    /// Recent lock releases, repeated on every new connection before it
    /// serves (see [`Inner::note_release`]).
    releases: Mutex<std::collections::VecDeque<(Instant, Release)>>,
    /// Releases noted so far: a connection being set up replays again if
    /// this moved on since its replay (the supervisor's `connect_once`).
    releases_noted: AtomicU64,
    /// A release failed on the live connection (or found none): the
    /// supervisor replays the releases at its next role check instead of
    /// waiting for a reconnect that may not come.
    releases_unsent: AtomicBool,
    /// The next lock holder id: a random start, then counted, so ids are
    /// unique per grant and across sidecars.
    next_holder: AtomicU64,
    offset_us: AtomicI64,
    down_reason: Mutex<String>,
    metrics: RedisMetrics,
    /// The watched globs each resource was last looked up with, so a
    /// trusted record can apply the guard to exactly those globs.
    watched: Mutex<HashMap<String, (Globs, Instant)>>,
    /// The purge globs last compiled, by their `(glob, stamp)` list.
    purge_globs: Mutex<Option<CompiledGlobs>>,
    /// Coalesced `PING`s before trusted cache hits (`barrier.rs`).
    barrier: barrier::Barrier,
}

/// The Redis [`Store`]. Cheap to clone; the supervisor stops when the last
/// clone is dropped.
///
/// Wiring (`main.rs`): `RedisStore::connect(&url, &prefix, RedisOptions::default())?`
/// inside the tokio runtime, then `store.register_metrics(&mut registry)`.
/// It returns at once; Redis being down at start is an outage, not an error.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    _guard: Arc<supervisor::Guard>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl RedisStore {
    /// Parse `url` (see [`target`] for the forms), keep keys under
    /// `{prefix}`, and start connecting in the background. Must be called
    /// inside a tokio runtime.
    pub fn connect(url: &str, prefix: &str, opts: RedisOptions) -> Result<Self, RedisConfigError> {
        let keys = Keys::new(prefix)?;
        // rediss:// needs a rustls crypto provider; an already installed
        // one (by another part of the process) is fine too. Only then: its
        // setup would map pages of code a plain-TCP store never runs.
        if url.starts_with("rediss") {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let ca = match &opts.tls_ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| RedisConfigError::CaFile {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let target = target::parse(
            url,
            &target::Options {
                connect_timeout: opts.connect_timeout,
                response_timeout: opts.op_timeout,
                ca,
                credentials: opts.credentials.clone(),
            },
        )?;
        let client_cache = opts.client_cache && !matches!(target, target::Target::Cluster(_));
        let opts = RedisOptions {
            client_cache,
            ..opts
        };
        let inner = Arc::new(Inner {
            shared: Arc::new(Shared {
                keys,
                // Remember invalidations longer than any read may take.
                cache: Cache::new(
                    opts.cache_capacity,
                    opts.cache_ttl,
                    opts.op_timeout * 4 + Duration::from_secs(1),
                ),
                live_id: AtomicU64::new(0),
                down: tokio::sync::Notify::new(),
            }),
            target,
            url: target::redact(url),
            opts,
            live: RwLock::new(None),
            next_id: AtomicU64::new(1),
            pending_bump: AtomicBool::new(false),
            identity: Mutex::new(None),
            wait_for: AtomicU32::new(0),
            replicas_seen: AtomicU32::new(0),
            recheck: tokio::sync::Notify::new(),
            releases: Mutex::new(std::collections::VecDeque::new()),
            releases_noted: AtomicU64::new(0),
            releases_unsent: AtomicBool::new(false),
            next_holder: AtomicU64::new(random_u64()),
            offset_us: AtomicI64::new(0),
            down_reason: Mutex::new(String::new()),
            metrics: RedisMetrics::default(),
            watched: Mutex::new(HashMap::new()),
            purge_globs: Mutex::new(None),
            barrier: barrier::Barrier::default(),
        });
        let guard = supervisor::spawn(inner.clone());
        Ok(Self {
            inner,
            _guard: Arc::new(guard),
        })
    }

    /// Register the store's metric families (`sametag_redis_*`; whether
    /// Redis is reachable is `sametag_store_up`, for every store).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        registry.register(
            "sametag_redis_round_trips",
            "Store calls that went to Redis (one round trip each)",
            m.round_trips.clone(),
        );
        registry.register(
            "sametag_redis_cache_hits",
            "Store calls answered from the client-side cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "sametag_redis_errors",
            "Store calls that failed",
            m.errors.clone(),
        );
        registry.register(
            "sametag_redis_epoch_bumps",
            "Epoch bumps after an invalidation failed during an outage, Redis restarted or the primary changed",
            m.epoch_bumps.clone(),
        );
        registry.register(
            "sametag_redis_replica_wait_failures",
            "Locks and invalidations no replica acknowledged in time (reported as store failures)",
            m.replica_wait_failures.clone(),
        );
    }

    /// The live counters (tests and benchmarks read them directly).
    pub fn metrics(&self) -> &RedisMetrics {
        &self.inner.metrics
    }

    /// Wait until connected, at most `timeout`. True when up.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.health() == StoreHealth::Up {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.health() == StoreHealth::Up
    }
}

// === impl Inner ===

impl Inner {
    fn offset(&self) -> ClockOffset {
        ClockOffset {
            server_minus_local_us: self.offset_us.load(Ordering::Relaxed),
        }
    }

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// A lock survives a failover (its acquisition waited for a replica),
    /// but its release may not: it may fail while the store is away, or be
    /// applied by the old primary (and a replica that is not the one
    /// promoted) after the promotion. Left alone, the resource would stay
    /// locked on the new primary for a whole lease (a minute by default).
    /// So every release of the last [`RELEASE_MEMORY`] is remembered and
    /// repeated on each new connection before it serves; the fencing token
    /// makes a repeat harmless (it deletes only that holder's own lock).
    /// A lock call that timed out or lost its connection may have been
    /// granted all the same: it is remembered by its holder alone.
    fn note_release(&self, release: Release) {
        let mut releases = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while releases
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RELEASE_MEMORY)
            || releases.len() >= MAX_RELEASES
        {
            releases.pop_front();
        }
        releases.push_back((now, release));
        self.releases_noted.fetch_add(1, Ordering::SeqCst);
    }

    /// A noted release could not be sent: the supervisor replays the
    /// releases at its next role check (not at once: a store refusing
    /// every unlock must not turn this into a busy loop).
    pub(crate) fn release_unsent(&self) {
        self.releases_unsent.store(true, Ordering::SeqCst);
    }

    /// Whether a release could not be sent since the last call (cleared).
    pub(crate) fn take_releases_unsent(&self) -> bool {
        self.releases_unsent.swap(false, Ordering::SeqCst)
    }

    /// How many releases were noted so far.
    pub(crate) fn releases_noted(&self) -> u64 {
        self.releases_noted.load(Ordering::SeqCst)
    }

    /// The releases to repeat on a new connection.
    pub(crate) fn recent_releases(&self) -> Vec<Release> {
        let releases = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        releases
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= RELEASE_MEMORY)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Give up connection `id` if it is still the installed one, and wake
    /// the supervisor to reconnect.
    pub(crate) fn drop_live(&self, id: u64, reason: &str) {
        if self.shared.live_id.load(Ordering::SeqCst) == id {
            *self.down_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_owned();
            self.shared.mark_down(id);
        }
    }

    /// Run one call against the installed connection, bounded by the
    /// operation timeout. `bump_on_failure`: this is an invalidation; if it
    /// fails, the epoch must be bumped on reconnect.
    async fn run<T, F, Fut>(&self, bump_on_failure: bool, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_on(false, bump_on_failure, f).await
    }

    /// A write that must survive a failover (a lock, a renewal, an
    /// invalidation, a purge): run on the writer connection, then `WAIT`
    /// for the replicas the live connection needs, within the same op
    /// timeout (see the module docs).
    async fn run_durable<T, F, Fut>(
        &self,
        bump_on_failure: bool,
        f: F,
    ) -> Result<Durable<T>, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let want = self.wait_for.load(Ordering::SeqCst);
        let budget = self
            .opts
            .wait_timeout
            .min(self.opts.op_timeout * 3 / 4)
            .max(Duration::from_millis(1));
        let (value, acked, ms) = self
            .run_on(true, bump_on_failure, |c| async move {
                let mut w = c.clone();
                let value = f(c).await?;
                if want == 0 {
                    return Ok((value, 0, 0));
                }
                // WAIT 0 would block forever: at least 1 ms.
                let ms = Inner::ms(budget.saturating_sub(started.elapsed()));
                let acked: i64 = redis::cmd("WAIT")
                    .arg(want)
                    .arg(ms)
                    .query_async(&mut w)
                    .await?;
                Ok((value, acked, ms))
            })
            .await?;
        if want == 0 {
            return Ok(Durable::Acked(value));
        }
        self.metrics.round_trips.inc();
        if acked >= i64::from(want) {
            return Ok(Durable::Acked(value));
        }
        self.metrics.errors.inc();
        self.metrics.replica_wait_failures.inc();
        if bump_on_failure {
            // Applied on this primary only: if it fails over now, the
            // invalidation is gone (the new primary's run id bumps the
            // epoch too; this covers a reconnect to the same server).
            self.pending_bump.store(true, Ordering::SeqCst);
        }
        // Perhaps this is no longer the primary: check now, not at the
        // next tick.
        self.recheck.notify_one();
        Ok(Durable::Unacked(
            value,
            StoreError::Unavailable(format!(
                "redis: {acked} of {want} replica(s) acknowledged the write within {ms} ms (WAIT); not counted as done"
            )),
        ))
    }

    /// [`Inner::run`] on the main connection or (`writer`) the writer.
    async fn run_on<T, F, Fut>(
        &self,
        writer: bool,
        bump_on_failure: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (id, conn) = {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            match &*live {
                Some(l) if self.shared.live_id.load(Ordering::SeqCst) == l.id => {
                    let conn = if writer { &l.writer } else { &l.conn };
                    (l.id, conn.clone())
                }
                _ => {
                    // Set while holding the lock: a reconnect installing a
                    // connection checks the flag under the write lock.
                    if bump_on_failure {
                        self.pending_bump.store(true, Ordering::SeqCst);
                    }
                    self.metrics.errors.inc();
                    return Err(StoreError::Unavailable("redis is not connected".into()));
                }
            }
        };
        self.metrics.round_trips.inc();
        let result = tokio::time::timeout(self.opts.op_timeout, f(conn)).await;
        let err = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => {
                self.metrics.errors.inc();
                if bump_on_failure {
                    self.pending_bump.store(true, Ordering::SeqCst);
                }
                self.drop_live(id, "a call timed out");
                return Err(StoreError::Unavailable(format!(
                    "redis did not answer within {:?}",
                    self.opts.op_timeout
                )));
            }
        };
        self.metrics.errors.inc();
        let connection_lost = err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error();
        if bump_on_failure {
            self.pending_bump.store(true, Ordering::SeqCst);
        }
        if connection_lost || bump_on_failure {
            self.drop_live(id, &err.to_string());
            Err(StoreError::Unavailable(err.to_string()))
        } else if not_primary(&err) {
            // A demoted primary (or a replica that lost its primary): find
            // the primary again now rather than failing every write.
            self.drop_live(id, &format!("the server is no longer the primary: {err}"));
            Err(StoreError::Unavailable(err.to_string()))
        } else if matches!(err.code(), Some("OOM" | "LOADING" | "BUSY")) {
            // Reachable but refusing work (maxmemory without eviction, a
            // replica, a failover, a busy script): an outage for the caller.
            Err(StoreError::Unavailable(err.to_string()))
        } else {
            Err(StoreError::Protocol(err.to_string()))
        }
    }

    /// Redis queues a write's invalidation pushes to every tracking
    /// connection (ours included) in the same event-loop step, right after
    /// the write's reply. Waiting (briefly, bounded) until our own push has
    /// arrived means every other replica's push is in its socket too, so
    /// a client told "done" by this replica finds the others invalidated.
    async fn await_own_push(&self, ticket: cache::Ticket, hit: Hit) {
        let cache = &self.shared.cache;
        let deadline =
            tokio::time::Instant::now() + self.opts.op_timeout.min(Duration::from_millis(100));
        loop {
            let notified = cache.pushed().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cache.invalidated_since(ticket, &hit) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Wait until every invalidation push Redis sent before now has been
    /// applied to the local cache (`barrier.rs`).
    async fn read_barrier(self: &Arc<Self>) -> Result<(), StoreError> {
        self.barrier
            .pass(|round| {
                let inner = self.clone();
                tokio::spawn(async move {
                    let answered = inner
                        .run(false, |mut c| async move {
                            redis::cmd("PING").query_async::<()>(&mut c).await
                        })
                        .await;
                    inner
                        .barrier
                        .finish(round, answered.err().map(|e| e.to_string()));
                });
            })
            .await
            .map_err(|why| StoreError::Unavailable(why.to_string()))
    }

    fn remember_watched(&self, id: &str, watched: &[Arc<str>]) {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= 10_000 && !w.contains_key(id) {
            let now = Instant::now();
            w.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
            if w.len() >= 10_000 {
                w.clear();
            }
        }
        w.insert(id.to_owned(), (watched.into(), Instant::now()));
    }

    /// Build what a lookup reports from the hashes it read.
    fn build(&self, c: &Cached, resource: &ResourceKey, watched: &[Arc<str>]) -> Option<Resource> {
        let hashes = Hashes {
            res: &c.res,
            path: &c.path,
            meta: &c.meta,
            purge: &c.purge,
            keys: &c.labels,
        };
        let globs = self.purge_globs(&c.purge);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let now_us = i128::try_from(now).unwrap_or(i128::MAX)
            + i128::from(self.offset().server_minus_local_us);
        let rules = TrustRules {
            guard_us: u64::try_from(self.opts.trust_guard.as_micros()).unwrap_or(u64::MAX),
            max_age_us: u64::try_from(self.opts.max_trust_age.as_micros()).unwrap_or(u64::MAX),
            now_us: u64::try_from(now_us.max(0)).unwrap_or(u64::MAX),
        };
        model::build_resource(
            hashes,
            &resource.path,
            watched,
            &globs,
            rules,
            self.offset(),
        )
    }

    /// The purge globs of a purge hash, compiled once per change.
    fn purge_globs(&self, purge: &RawHash) -> Arc<GlobMarks<u64>> {
        let marks = model::glob_marks(purge);
        if marks.is_empty() {
            return Arc::new(GlobMarks::empty());
        }
        let mut cached = self.purge_globs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((list, set)) = &*cached
            && list.len() == marks.len()
            && list
                .iter()
                .zip(&marks)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
        {
            return set.clone();
        }
        let set = Arc::new(GlobMarks::compile(marks.iter().copied()));
        let list = marks.iter().map(|(g, s)| ((*g).to_owned(), *s)).collect();
        *cached = Some((list, set.clone()));
        set
    }

    fn watched_of(&self, id: &str) -> Option<Globs> {
        let w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        w.get(id).map(|(g, _)| g.clone())
    }
}

fn entry_from_cache(
    res: &RawHash,
    vary: &str,
    variant: &VariantKey,
    tag: &str,
) -> Option<SystemTime> {
    if res.get("vary").map(String::as_str) != Some(vary) {
        return None;
    }
    if res.get(&format!("t|{}", variant.0)).map(String::as_str) != Some(tag) {
        return None;
    }
    let lm: u64 = res.get(&format!("m|{}", variant.0))?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(lm))
}

/// A reply saying the server is not (or no longer) a writable primary.
fn not_primary(err: &redis::RedisError) -> bool {
    matches!(err.code(), Some("READONLY" | "MASTERDOWN"))
        || err.to_string().contains("read only replica")
}

fn parse_u64(s: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Protocol(format!("expected a number from redis, got {s:?}")))
}

#[async_trait]
impl Store for RedisStore {
    async fn lookup(
        &self,
        resource: &ResourceKey,
        watched: &[Arc<str>],
    ) -> Result<Option<Resource>, StoreError> {
        let inner = &self.inner;
        inner.remember_watched(&resource.id, watched);
        let cache = &inner.shared.cache;
        let path_id = model::path_id(&resource.path);
        let build = |c: &Cached| inner.build(c, resource, watched);
        if let Some(cached) = cache.get(&resource.id, &path_id) {
            let found = build(&cached);
            let trusted = found
                .as_ref()
                .is_some_and(|r| r.variants.iter().any(|(_, e)| e.validated_at.is_some()));
            if !trusted {
                // Nothing here can answer without the app: no barrier needed.
                inner.metrics.cache_hits.inc();
                return Ok(found);
            }
            // A write through another replica returns only after Redis has
            // sent us its invalidation push, which our reader may not have
            // applied yet: pass a barrier (a PING sent after this request
            // arrived, shared with concurrent hits) before trusting.
            inner.read_barrier().await?;
            if let Some(cached) = cache.get(&resource.id, &path_id) {
                inner.metrics.cache_hits.inc();
                return Ok(build(&cached));
            }
        }
        let ticket = cache.ticket();
        let keys = &inner.shared.keys;
        let (rk, mk, pk, xk, kk) = (
            keys.resource(&resource.id),
            keys.meta(),
            keys.path(&path_id),
            keys.purge(),
            keys.key_marks(),
        );
        type Reply = (
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
        );
        let (res, meta, path, purge, labels): Reply = inner
            .run(false, |mut c| async move {
                let mut inv = SCRIPTS.lookup.key(rk);
                inv.key(mk).key(pk).key(xk).key(kk);
                inv.invoke_async(&mut c).await
            })
            .await?;
        let read = Cached::from_flat(res, meta, path, purge, labels);
        let found = build(&read);
        if let Some(t) = ticket {
            cache.insert(t, &resource.id, &path_id, read);
        }
        Ok(found)
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
        let inner = &self.inner;
        let labels = match labels {
            Labels::Keys(ids) => ids
                .iter()
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            Labels::TooMany => "*".to_owned(),
        };
        let (vary, tag_s) = (model::encode_vary(vary), model::encode_tag(tag));
        let path_id = model::path_id(&resource.path);
        if !trust
            && let Some(cached) = inner.shared.cache.get(&resource.id, &path_id)
            && let Some(last_modified) = entry_from_cache(&cached.res, &vary, variant, &tag_s)
        {
            // The tag is already recorded with its date: nothing to write.
            inner.metrics.cache_hits.inc();
            return Ok(Entry {
                tag: tag.clone(),
                last_modified,
                validated_at: None,
            });
        }
        let keys = &inner.shared.keys;
        let (rk, mk, ck, pk, xk, kk) = (
            keys.resource(&resource.id),
            keys.meta(),
            keys.clock(),
            keys.path(&path_id),
            keys.purge(),
            keys.key_marks(),
        );
        let globs = inner.watched_of(&resource.id);
        let o = &inner.opts;
        let (ttl, meta_ttl) = (Inner::ms(o.entry_ttl), Inner::ms(o.meta_ttl));
        let guard_us = u64::try_from(o.trust_guard.as_micros()).unwrap_or(u64::MAX);
        let max_variants = o.max_variants.max(1);
        let variant_s = variant.0.clone();
        // Taken before the call: if the script wrote, Redis' push for that
        // write drops what we insert below; if it only read, it stays.
        let ticket = inner.shared.cache.ticket();
        type Reply = (
            String,
            Option<String>,
            Option<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
        );
        let (lm, va, _ve, res, meta, path, purge, label_marks): Reply = inner
            .run(false, |mut c| async move {
                let mut inv = SCRIPTS.record.key(rk);
                inv.key(mk).key(ck).key(pk).key(xk).key(kk);
                inv.arg(vary)
                    .arg(variant_s)
                    .arg(tag_s)
                    .arg(if trust { "1" } else { "0" });
                inv.arg(ttl).arg(meta_ttl).arg(max_variants).arg(guard_us);
                inv.arg(if globs.is_some() { "0" } else { "1" });
                inv.arg(labels);
                for g in globs.iter().flat_map(|g| g.iter()) {
                    inv.arg(g.as_ref());
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        if let Some(t) = ticket {
            let read = Cached::from_flat(res, meta, path, purge, label_marks);
            inner.shared.cache.insert(t, &resource.id, &path_id, read);
        }
        let validated_at = match va {
            Some(a) => Some(inner.offset().to_local(parse_u64(&a)?)),
            None => None,
        };
        Ok(Entry {
            tag: tag.clone(),
            last_modified: UNIX_EPOCH + Duration::from_secs(parse_u64(&lm)?),
            validated_at,
        })
    }

    async fn invalidate(
        &self,
        resource: &ResourceKey,
        globs: &[Arc<str>],
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let cache = &inner.shared.cache;
        let path_id = model::path_id(&resource.path);
        // Our own reads must not be served from the cache once this
        // returns, even before Redis' push for our write arrives.
        let forget = || {
            cache.invalidate(Hit::Path(path_id.clone()));
            if !globs.is_empty() {
                cache.invalidate(Hit::Meta);
            }
        };
        forget();
        let ticket = cache.ticket();
        let keys = &inner.shared.keys;
        let (pk, mk, ck) = (keys.path(&path_id), keys.meta(), keys.clock());
        let meta_ttl = Inner::ms(inner.opts.meta_ttl);
        let globs_owned: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        let done = inner
            .run_durable(true, |mut c| async move {
                let mut inv = SCRIPTS.invalidate.key(pk);
                inv.key(mk).key(ck).arg(meta_ttl);
                for g in globs_owned {
                    inv.arg(g);
                }
                inv.invoke_async::<String>(&mut c).await
            })
            .await?;
        if let Some(t) = ticket {
            inner.await_own_push(t, Hit::Path(path_id.clone())).await;
        }
        forget();
        match done {
            Durable::Acked(_) => Ok(()),
            Durable::Unacked(_, e) => Err(e),
        }
    }

    async fn purge(&self, purge: &Purge) -> Result<PurgeReport, StoreError> {
        let inner = &self.inner;
        let cache = &inner.shared.cache;
        let path_ids: Vec<String> = purge.paths.iter().map(|p| model::path_id(p)).collect();
        // What this purge changes in every replica's cache; our own reads
        // must not be served from it once this returns.
        let mut hits: Vec<Hit> = path_ids.iter().cloned().map(Hit::Path).collect();
        hits.push(Hit::Purge);
        hits.push(Hit::Keys);
        let forget = || {
            for hit in &hits {
                cache.invalidate(hit.clone());
            }
        };
        forget();
        let ticket = cache.ticket();
        let keys = &inner.shared.keys;
        let [glob_order, key_order] = keys.mark_order();
        let o = &inner.opts;
        let horizon =
            u64::try_from((o.max_trust_age + o.trust_guard).as_micros()).unwrap_or(u64::MAX);
        let mut script = SCRIPTS.purge.key(keys.meta());
        script
            .key(keys.clock())
            .key(keys.purge())
            .key(keys.key_marks())
            .key(glob_order)
            .key(key_order);
        for id in &path_ids {
            script.key(keys.path(id));
        }
        script
            .arg(Inner::ms(o.meta_ttl))
            .arg(o.max_glob_marks.max(1))
            .arg(o.max_key_marks.max(1))
            .arg(horizon)
            .arg(purge.globs.len());
        for g in &purge.globs {
            script.arg(g.as_ref());
        }
        for k in &purge.keys {
            script.arg(k.as_str());
        }
        // A purge that may have failed half-way bumps the epoch on reconnect,
        // as a write's invalidation does.
        let done = inner
            .run_durable(true, |mut c| async move {
                script.invoke_async::<(String, i64, i64)>(&mut c).await
            })
            .await?;
        if let Some(t) = ticket {
            // Every key the script wrote is pushed in the same event-loop
            // step; the purge hash always changes (its stamps or TTL).
            inner.await_own_push(t, Hit::Purge).await;
        }
        forget();
        let (_stamp, raised, held) = match done {
            Durable::Acked(v) => v,
            Durable::Unacked(_, e) => return Err(e),
        };
        Ok(PurgeReport {
            marks: u64::try_from(held).unwrap_or(0),
            floor_raised: raised == 1,
        })
    }

    async fn try_lock(
        &self,
        resource: &ResourceKey,
        lease: Duration,
    ) -> Result<Option<WriteLock>, StoreError> {
        let inner = &self.inner;
        let keys = &inner.shared.keys;
        let (lk, ck, dk) = (
            keys.lock(&resource.lock),
            keys.clock(),
            keys.lock_deadlines(),
        );
        let (lease, clock_ttl) = (Inner::ms(lease), Inner::ms(inner.opts.meta_ttl));
        let holder = inner.next_holder.fetch_add(1, Ordering::Relaxed);
        let done = inner
            .run_durable(false, |mut c| {
                let lk = lk.clone();
                async move {
                    SCRIPTS
                        .lock
                        .key(lk)
                        .key(ck)
                        .key(dk)
                        .arg(lease)
                        .arg(clock_ttl)
                        .arg(holder)
                        .invoke_async::<Option<String>>(&mut c)
                        .await
                }
            })
            .await;
        let lock = |token| WriteLock {
            resource: resource.clone(),
            token,
            holder,
        };
        let token = match done {
            Ok(Durable::Acked(token)) => token,
            // Held by someone else: nothing was written.
            Ok(Durable::Unacked(None, _)) => None,
            Ok(Durable::Unacked(Some(token), e)) => {
                // Taken on this primary only: give it back (best effort;
                // the lease ends it otherwise) so other writers need not
                // wait for the lease.
                let _ = self.unlock(&lock(parse_u64(&token).unwrap_or(0))).await;
                return Err(e);
            }
            Err(e) => {
                // Perhaps granted, its reply lost (a timeout, a connection
                // cut in a failover): left alone it would block every
                // writer of this resource for a lease. Released by its
                // holder on the next connection (this one is dropped).
                inner.note_release(Release {
                    key: lk,
                    token: String::new(),
                    holder: holder.to_string(),
                });
                inner.release_unsent();
                return Err(e);
            }
        };
        match token {
            Some(t) => Ok(Some(lock(parse_u64(&t)?))),
            None => Ok(None),
        }
    }

    async fn renew(&self, lock: &WriteLock, lease: Duration) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let lk = inner.shared.keys.lock(&lock.resource.lock);
        let dk = inner.shared.keys.lock_deadlines();
        let (token, lease) = (lock.token.to_string(), Inner::ms(lease));
        let done = inner
            .run_durable(false, |mut c| async move {
                SCRIPTS
                    .renew
                    .key(lk)
                    .key(dk)
                    .arg(token)
                    .arg(lease)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        match done {
            Durable::Acked(renewed) => Ok(renewed == 1),
            // The holder retries; the lease still runs.
            Durable::Unacked(_, e) => Err(e),
        }
    }

    async fn unlock(&self, lock: &WriteLock) -> Result<(), StoreError> {
        let inner = &self.inner;
        let lk = inner.shared.keys.lock(&lock.resource.lock);
        let dk = inner.shared.keys.lock_deadlines();
        let release = Release {
            key: lk,
            token: lock.token.to_string(),
            holder: lock.holder.to_string(),
        };
        // Repeated on every new connection for a while, so a release lost
        // in a failover does not leave the lock on the new primary.
        inner.note_release(release.clone());
        let done: Result<i64, _> = inner
            .run(false, |mut c| async move {
                SCRIPTS
                    .unlock
                    .key(release.key)
                    .key(dk)
                    .arg(release.token)
                    .arg(release.holder)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if done.is_err() {
            inner.release_unsent();
        }
        done.map(drop)
    }

    fn health(&self) -> StoreHealth {
        if self.inner.shared.live_id.load(Ordering::SeqCst) != 0 {
            StoreHealth::Up
        } else {
            StoreHealth::Down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WaitReplicas;

    #[test]
    fn wait_replicas_parse_and_count() {
        assert_eq!("auto".parse(), Ok(WaitReplicas::Auto));
        assert_eq!("AUTO".parse(), Ok(WaitReplicas::Auto));
        assert_eq!("2".parse(), Ok(WaitReplicas::Exactly(2)));
        assert!("two".parse::<WaitReplicas>().is_err());
        // Auto: one replica once the primary has any, none without.
        assert_eq!(WaitReplicas::Auto.count(0), 0);
        assert_eq!(WaitReplicas::Auto.count(3), 1);
        assert_eq!(WaitReplicas::Exactly(2).count(0), 2);
        assert_eq!(WaitReplicas::Exactly(0).count(5), 0);
    }
}
