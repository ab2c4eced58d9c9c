//! Checks on a [`Store`] shared by replicas, for the store tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sametag_sidecar::store::{ResourceKey, Store, VariantKey};
use sametag_sidecar::tag::EntityTag;

/// The resource at `path` (host `example.test`, no query).
pub fn key(path: &str) -> ResourceKey {
    ResourceKey {
        path: Arc::from(path),
        id: Arc::from(format!("example.test{path}")),
        lock: Arc::from(path),
    }
}

/// A strong tag.
pub fn tag(s: &str) -> EntityTag {
    EntityTag::strong(s).expect("a valid test tag")
}

/// The variant of a response without `Vary`.
pub const V: fn() -> VariantKey = VariantKey::default;

/// B's very next lookup of `k` carries no validation.
pub async fn assert_untrusted_now(
    b: &dyn Store,
    k: &ResourceKey,
    watched: &[Arc<str>],
    what: &str,
) {
    let r = b.lookup(k, watched).await.unwrap().unwrap();
    assert_eq!(r.variant(&V()).unwrap().validated_at, None, "{what}");
}

/// Within 500 ms, B's lookup of `k` is trusted (`trusted`) or not. Trust is
/// never late to end (see [`assert_untrusted_now`]), but a validation A just
/// recorded reaches B only once B's reader has applied A's push: until then
/// B may answer "not trusted" from its cache, which is safe.
pub async fn assert_trust_soon(
    b: &dyn Store,
    k: &ResourceKey,
    watched: &[Arc<str>],
    trusted: bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        // "Nothing known" (a cached miss not yet emptied) is "not trusted".
        let found = b.lookup(k, watched).await.unwrap();
        let validated = found.and_then(|r| r.variant(&V()).and_then(|e| e.validated_at));
        if validated.is_some() == trusted {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not so after 500 ms");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
