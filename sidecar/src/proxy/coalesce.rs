//! Coalesced revalidation (single flight): when a Trust validation expires
//! under load, the conditional GETs of one variant that arrive while its
//! revalidation is in flight share that one app call instead of each
//! calling the app.
//!
//! Who shares: GET and HEAD without `Range` on a Trust route whose stored
//! validation has expired (`Known::Stale` with a validation time), keyed by
//! the read key ([`ResourceKey::id`]: credential scope included, so two
//! users never share), the variant (the request's values of the stored
//! `Vary` names) and the time of the expired validation. That time keeps a
//! request that arrives after a write out of a flight that began before
//! it: the write ends the validation (the store then reports none), so such
//! a request never joins, and a flight is closed to joiners the moment its
//! answer is ready.
//!
//! What is shared: the leader's tagged, recorded 200 (head, `Bytes`,
//! validators); each follower then applies its own conditions (304 or 200,
//! HEAD without body), after checking that the answer's own `Vary` selects
//! the follower's variant. An answer that is not a tagged 200 (an upstream
//! error, a timeout, an untagged response, which streams and cannot be
//! shared) or a leader that goes away (its client disconnected: dropping
//! its future drops the flight's sender) makes every follower fetch for
//! itself. A follower waits at most twice the upstream timeout plus a
//! second, the longest a leader's fetch and record can take.
//!
//! Bounded: an entry lives from its leader's start until it publishes or is
//! dropped (a guard removes it, cancellation included), and at most
//! [`MAX_FLIGHTS`] are in flight; past that requests fetch alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use tokio::sync::watch;

use super::error::ProxyError;
use super::read::{Current, TaggedRead};
use super::respond::CACHE_STATUS;
use super::{Context, Exchange};
use crate::key::variant_key;
use crate::precondition::Validators;
use crate::store::VariantKey;

/// Most flights in progress at once.
pub(super) const MAX_FLIGHTS: usize = 4096;

/// What requests must have in common to share a fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    id: Arc<str>,
    variant: VariantKey,
    validated_at: SystemTime,
}

impl FlightKey {
    /// The key of a conditional read whose validation expired; `None` when
    /// it may not share (a `Range` request, or no expired validation: a
    /// write ended it, or it was never trusted).
    pub(super) fn of(
        ex: &Exchange,
        vary: &[String],
        validated_at: Option<SystemTime>,
    ) -> Option<FlightKey> {
        if ex.parts.headers.contains_key(http::header::RANGE) {
            return None;
        }
        Some(FlightKey {
            id: ex.key.id.clone(),
            variant: variant_key(vary, &ex.parts.headers),
            validated_at: validated_at?,
        })
    }
}

/// A leader's answer, as followers receive it.
struct Shared {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    validators: Validators,
    stored: bool,
    vary: Vec<String>,
    variant: VariantKey,
}

type Slot = watch::Receiver<Option<Arc<Shared>>>;

/// The flights in progress.
#[derive(Default)]
pub(super) struct Flights {
    inflight: Mutex<HashMap<FlightKey, (u64, Slot)>>,
    next: AtomicU64,
}

/// A request's part in a flight.
enum Role<'a> {
    /// Fetch, then publish.
    Leader(Leader<'a>),
    /// Wait for the leader.
    Follower(Slot),
    /// Too many flights: fetch without sharing.
    Alone,
}

/// The leader's hold on its flight: removed from the map when published or
/// dropped; dropping the sender unpublished tells the followers to fetch.
struct Leader<'a> {
    flights: &'a Flights,
    key: FlightKey,
    id: u64,
    tx: watch::Sender<Option<Arc<Shared>>>,
}

// === impl Flights ===

impl Flights {
    fn join(&self, key: FlightKey) -> Role<'_> {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, slot)) = map.get(&key) {
            return Role::Follower(slot.clone());
        }
        if map.len() >= MAX_FLIGHTS {
            return Role::Alone;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), (id, rx));
        Role::Leader(Leader {
            flights: self,
            key,
            id,
            tx,
        })
    }

    /// Flights in progress now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

// === impl Leader ===

impl Leader<'_> {
    /// Close the flight to joiners, then hand `shared` to those who joined.
    fn publish(self, shared: Arc<Shared>) {
        self.close();
        self.tx.send_replace(Some(shared));
    }

    fn close(&self) {
        let mut map = self
            .flights
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // After `publish` this finds nothing of its own to remove.
        self.close();
    }
}

// === impl Context ===

impl Context {
    /// [`Context::current`], shared with the concurrent reads of `key`.
    pub(super) async fn coalesced(
        &self,
        ex: &Exchange,
        key: FlightKey,
        stale: bool,
    ) -> Result<Current, ProxyError> {
        let slot = match self.flights.join(key) {
            Role::Alone => return self.current(ex, stale).await,
            Role::Leader(leader) => {
                // Cancelled here: `leader` is dropped, followers fetch.
                let current = self.current(ex, stale).await?;
                if let Current::Tagged(tagged) = &current {
                    leader.publish(Arc::new(Shared::of(tagged)));
                }
                return Ok(current);
            }
            Role::Follower(slot) => slot,
        };
        if let Some(shared) = self.wait(slot).await
            && variant_key(&shared.vary, &ex.parts.headers) == shared.variant
        {
            self.metrics.coalesced("shared");
            return Ok(Current::Tagged(Box::new(shared.for_follower())));
        }
        // The leader failed, went away, or answered another variant.
        self.metrics.coalesced("refetched");
        self.current(ex, stale).await
    }

    /// The leader's answer, `None` when it has none to give.
    async fn wait(&self, mut slot: Slot) -> Option<Arc<Shared>> {
        let limit = self.upstream.timeout() * 2 + Duration::from_secs(1);
        let published = tokio::time::timeout(limit, slot.wait_for(Option::is_some)).await;
        match published {
            Ok(Ok(shared)) => shared.clone(),
            _ => None,
        }
    }
}

// === impl Shared ===

impl Shared {
    fn of(t: &TaggedRead) -> Shared {
        Shared {
            status: t.rparts.status,
            version: t.rparts.version,
            headers: t.rparts.headers.clone(),
            body: t.body.clone(),
            validators: t.validators.clone(),
            stored: t.stored,
            vary: t.vary.clone(),
            variant: t.variant.clone(),
        }
    }

    /// The answer as a follower's own: `Cache-Status` says it was collapsed
    /// into another request (RFC 9211 `collapsed`).
    fn for_follower(&self) -> TaggedRead {
        let (mut rparts, ()) = http::Response::new(()).into_parts();
        rparts.status = self.status;
        rparts.version = self.version;
        rparts.headers = self.headers.clone();
        let cache_status = HeaderValue::from_static(if self.stored {
            "sametag; fwd=stale; collapsed; stored"
        } else {
            "sametag; fwd=stale; collapsed; detail=store-unavailable"
        });
        rparts
            .headers
            .insert(CACHE_STATUS.clone(), cache_status.clone());
        TaggedRead {
            rparts,
            body: self.body.clone(),
            validators: self.validators.clone(),
            cache_status,
            stored: self.stored,
            vary: self.vary.clone(),
            variant: self.variant.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, variant: &str) -> FlightKey {
        FlightKey {
            id: Arc::from(id),
            variant: VariantKey(variant.to_owned()),
            validated_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn shared(body: &'static str) -> Arc<Shared> {
        Arc::new(Shared {
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            validators: Validators {
                tag: crate::tag::EntityTag::strong("t").unwrap(),
                last_modified: None,
            },
            stored: true,
            vary: Vec::new(),
            variant: VariantKey::default(),
        })
    }

    #[tokio::test]
    async fn followers_get_the_published_answer_and_the_entry_goes() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join(key("a", "")) else {
            panic!("the first is the leader")
        };
        let Role::Follower(mut slot) = flights.join(key("a", "")) else {
            panic!("the second follows")
        };
        // Other read keys and variants have flights of their own.
        assert!(matches!(flights.join(key("b", "")), Role::Leader(_)));
        assert!(matches!(flights.join(key("a", "v")), Role::Leader(_)));
        assert_eq!(flights.len(), 1, "dropped leaders left nothing behind");
        leader.publish(shared("x"));
        assert_eq!(flights.len(), 0, "closed to joiners once published");
        let got = slot.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(got.unwrap().body, "x");
        // A later request leads a new flight.
        assert!(matches!(flights.join(key("a", "")), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join(key("a", "")) else {
            panic!("leader")
        };
        let Role::Follower(mut slot) = flights.join(key("a", "")) else {
            panic!("follower")
        };
        let waiting = tokio::spawn(async move { slot.wait_for(Option::is_some).await.is_err() });
        drop(leader);
        assert!(waiting.await.unwrap(), "the follower sees the leader gone");
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn flights_are_bounded() {
        let flights = Flights::default();
        let leaders: Vec<Role<'_>> = (0..MAX_FLIGHTS)
            .map(|i| flights.join(key(&i.to_string(), "")))
            .collect();
        assert!(leaders.iter().all(|r| matches!(r, Role::Leader(_))));
        assert!(matches!(flights.join(key("one more", "")), Role::Alone));
        drop(leaders);
        assert_eq!(flights.len(), 0);
    }
}
