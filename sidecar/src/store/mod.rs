//! The ETag store: what every replica must agree on, behind one trait.
//!
//! A content hash alone already gives every replica the same tag for the same
//! bytes. The store adds what a hash cannot: one shared `Last-Modified` per
//! tag, trusted validations (Trust mode answers 304 without the app),
//! invalidation every replica sees at once, and per-resource write locks.
//!
//! Two implementations: [`memory::MemoryStore`] (embedded, one replica) and
//! the shared Redis store. Store errors never reach a client directly: the
//! proxy decides (GET/HEAD degrade to Validate, conditional writes get 503).

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use crate::surrogate::{KeyId, Labels, Purge, PurgeReport};
use crate::tag::EntityTag;

/// The two identities of a request (DESIGN "Keys"), never confused:
/// - the read key [`id`](Self::id): canonical authority + path + query and
///   the credential scope of personalised requests; tag state lives here;
/// - the resource: [`path`](Self::path) is what a write invalidates (every
///   read key of the path, whatever the Host spelling, query or user) and
///   [`lock`](Self::lock) (path + query) what a conditional write locks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    /// The canonical path; invalidation (and glob matching) works on it.
    pub path: Arc<str>,
    /// The read key (without the store prefix): unique per authority, path,
    /// query and credential scope. Safe to embed in a Redis key.
    pub id: Arc<str>,
    /// The lock key: canonical path and query only, no Host, no user. Safe
    /// to embed in a Redis key.
    pub lock: Arc<str>,
}

/// One representation of a resource, chosen by the values of the request
/// headers the response named in `Vary` (a cache's secondary key). The empty
/// string is the variant of a response without `Vary`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VariantKey(pub String);

/// Lower-case header names from a response's `Vary`, shared (a lookup hands
/// out the stored list without copying it).
pub type Vary = Arc<[String]>;

/// What the store holds for one variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The canonical (strong, content-derived) tag last recorded.
    pub tag: EntityTag,
    /// Shared `Last-Modified`: when the store first saw this tag for this
    /// resource, whole seconds. Strictly increases when the tag changes, so a
    /// date-only client never gets a 304 for a change within one second.
    pub last_modified: SystemTime,
    /// When a replica last validated `tag` against the app, if that validation
    /// is still trusted: no invalidation of the resource (or of a watched
    /// glob) since, and no epoch bump. `None`: must ask the app.
    pub validated_at: Option<SystemTime>,
}

/// Everything the store knows about one resource, read in one round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// Lower-case header names from the last response's `Vary`.
    pub vary: Vary,
    /// Known variants.
    pub variants: Vec<(VariantKey, Entry)>,
    /// Variants whose validation only a purge (a glob or key mark, or the
    /// purge floor) keeps from being trusted: for the refusal metric.
    pub purged: Vec<VariantKey>,
}

impl Resource {
    /// The entry of one variant, if known.
    pub fn variant(&self, key: &VariantKey) -> Option<&Entry> {
        self.variants.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }
}

/// A held write lock on [`ResourceKey::lock`]. The fencing token increases
/// with every grant on a resource, so a holder whose lease expired cannot
/// release (or renew) a newer lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteLock {
    pub resource: ResourceKey,
    pub token: u64,
    /// Who asked, chosen before asking (unique per grant): a grant whose
    /// reply was lost, so whose token is unknown, can still be released by
    /// its holder (the Redis store; the memory store leaves it 0).
    pub holder: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (connection refused, timeout, auth).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
}

/// Whether the store is reachable right now (for `/metrics` and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    Up,
    Down,
}

/// The seam between the proxy and where tag state lives.
///
/// Every method is one round trip (or none) so a request costs at most one
/// store call on the common path.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything known about `resource`. `watched` are the policy's
    /// invalidation globs that match `resource.path`: a validation is only
    /// reported as trusted (`Entry::validated_at`) if it is newer than every
    /// invalidation of the resource itself and of each watched glob.
    async fn lookup(
        &self,
        resource: &ResourceKey,
        watched: &[Arc<str>],
    ) -> Result<Option<Resource>, StoreError>;

    /// The app just produced `tag` for `variant`. Atomically: keep the tag's
    /// first-seen `Last-Modified` if the tag is unchanged, else record it as
    /// new (set-if-absent across replicas). With `trust`, also mark the tag
    /// validated now, labelled with the response's surrogate keys
    /// (`labels`; [`Labels::TooMany`] clears the validation instead: it is
    /// never trusted). `vary` is stored for the next lookup's secondary key.
    /// Returns the shared entry.
    async fn record_with(
        &self,
        resource: &ResourceKey,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        trust: bool,
        labels: &Labels,
    ) -> Result<Entry, StoreError>;

    /// [`Store::record_with`] for a response without surrogate keys.
    async fn record(
        &self,
        resource: &ResourceKey,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        trust: bool,
    ) -> Result<Entry, StoreError> {
        self.record_with(resource, vary, variant, tag, trust, &Labels::NONE)
            .await
    }

    /// A write to `resource.path` is about to be forwarded, or was: nothing
    /// validated before now for any read key of that path (any Host, query
    /// or user), or for any path matching one of `globs`, is trusted again.
    /// Returns only once every replica would see it.
    async fn invalidate(
        &self,
        resource: &ResourceKey,
        globs: &[Arc<str>],
    ) -> Result<(), StoreError>;

    /// Invalidation from outside HTTP: every exact path gets a new
    /// generation (as a write's invalidation), every glob and key a mark
    /// with a fresh stamp. A validation is trusted again only if it is at
    /// least the trust guard newer than every mark that applies to it (its
    /// path matches the glob, its labels hold the key). Marks are bounded:
    /// past the cap the oldest are dropped and a floor raised that
    /// un-trusts everything older. Returns only once every replica would
    /// see it (as [`Store::invalidate`]).
    async fn purge(&self, purge: &Purge) -> Result<PurgeReport, StoreError>;

    /// Try once to take the write lock on `resource.lock` for `lease`. `None` when
    /// another holder has it (the caller retries with backoff until its own
    /// deadline). A holder that crashes loses the lock when the lease ends.
    async fn try_lock(
        &self,
        resource: &ResourceKey,
        lease: Duration,
    ) -> Result<Option<WriteLock>, StoreError>;

    /// Extend a held lock's lease to `lease` from now. `false` when the lock
    /// is no longer ours (the lease ended and it expired or another holder
    /// took it).
    async fn renew(&self, lock: &WriteLock, lease: Duration) -> Result<bool, StoreError>;

    /// Release a lock; a no-op if its lease already ended and another holder
    /// (with a higher token) has the resource.
    async fn unlock(&self, lock: &WriteLock) -> Result<(), StoreError>;

    /// Current reachability, without a round trip.
    fn health(&self) -> StoreHealth;
}
