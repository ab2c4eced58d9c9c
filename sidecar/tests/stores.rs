//! The store contract, once per store (`in_memory::`, `in_redis::`): one
//! shared Last-Modified per tag, trust shared by every replica and ended at
//! once by an invalidation, the post-write trust guard, exclusive, fenced,
//! leased write locks, and the resource identity (a write ends trust for
//! every read key of its path and locks by path and query, whoever writes
//! under whichever Host). Replicas of the embedded store share one
//! `Arc<MemoryStore>`; Redis replicas each have their own connection to one
//! real `redis-server`.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sametag_sidecar::store::{ResourceKey, Store};
use support::store_checks::{V, assert_trust_soon, assert_untrusted_now, key, tag};
use support::{SharedStore, StoreKind};

async fn last_modified_is_set_once_under_concurrency_and_strictly_increases(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let replicas = [
        shared.replica().await,
        shared.replica().await,
        shared.replica().await,
    ];
    let k = key("/doc");
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = replicas[i % 3].clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            s.record(&k, &[], &V(), &tag("A"), i % 2 == 0)
                .await
                .unwrap()
        }));
    }
    let mut dates = Vec::new();
    for t in tasks {
        dates.push(t.await.unwrap().last_modified);
    }
    assert!(
        dates.iter().all(|d| *d == dates[0]),
        "one shared Last-Modified: {dates:?}"
    );
    // Every replica reads the same one.
    for s in &replicas {
        let r = s.lookup(&k, &[]).await.unwrap().unwrap();
        assert_eq!(r.variant(&V()).unwrap().last_modified, dates[0]);
    }
    // Tag changes within the same second still move the date forward.
    let mut last = dates[0];
    for (i, t) in ["B", "C", "D"].iter().enumerate() {
        let e = replicas[i % 3]
            .record(&k, &[], &V(), &tag(t), false)
            .await
            .unwrap();
        assert!(e.last_modified > last, "strictly increasing");
        last = e.last_modified;
    }
    // The date comes from the store's clock, not far from now.
    let skew = SystemTime::now()
        .duration_since(dates[0])
        .unwrap_or_default();
    assert!(skew < Duration::from_secs(5));
}

async fn trust_is_shared_and_invalidation_is_seen_at_once(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let (a, b) = (shared.replica().await, shared.replica().await);
    let k = key("/api/items/1");
    let watched: Vec<Arc<str>> = vec!["/api/items/**".into()];
    assert!(b.lookup(&k, &watched).await.unwrap().is_none());
    let e = a.record(&k, &[], &V(), &tag("T1"), true).await.unwrap();
    assert!(e.validated_at.is_some());
    // B sees A's validation (and caches it) once A's push has emptied the
    // "nothing here" B cached above.
    assert_trust_soon(b.as_ref(), &k, &watched, true, "B sees A's validation").await;
    for _ in 0..3 {
        let r = b.lookup(&k, &watched).await.unwrap().unwrap();
        let v = r.variant(&V()).unwrap();
        assert_eq!(v.tag, tag("T1"));
        let age = SystemTime::now()
            .duration_since(v.validated_at.unwrap())
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(2),
            "validated_at is recent in local time: {age:?}"
        );
    }
    // A write through A: B's very next lookup is untrusted (Redis pushed
    // the invalidation to B before answering A, and B's barrier PING is
    // answered after that push).
    a.invalidate(&k, &[]).await.unwrap();
    assert_untrusted_now(b.as_ref(), &k, &watched, "no trust after invalidate").await;
    // Revalidated, then a write elsewhere that invalidates a watched glob.
    a.record(&k, &[], &V(), &tag("T1"), true).await.unwrap();
    assert_trust_soon(b.as_ref(), &k, &watched, true, "B sees the new validation").await;
    a.invalidate(&key("/api/items"), &["/api/items/**".into()])
        .await
        .unwrap();
    assert_untrusted_now(b.as_ref(), &k, &watched, "glob invalidation un-trusts").await;
    // A glob this path does not watch does not matter.
    a.record(&k, &[], &V(), &tag("T1"), true).await.unwrap();
    a.invalidate(&key("/other"), &["/other/**".into()])
        .await
        .unwrap();
    assert_trust_soon(b.as_ref(), &k, &watched, true, "B sees the new validation").await;
    // A new tag drops the old validation.
    a.record(&k, &[], &V(), &tag("T2"), false).await.unwrap();
    // A tag change (unlike an invalidation) is not waited for: B hears of
    // it through its push a moment later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = b.lookup(&k, &watched).await.unwrap().unwrap();
    assert_eq!(r.variants[0].1.tag, tag("T2"));
    assert_eq!(r.variants[0].1.validated_at, None);
}

async fn trust_guard_refuses_validations_right_after_a_write(kind: StoreKind) {
    let shared = SharedStore::with_guard(kind, Duration::from_millis(400));
    let (a, b) = (shared.replica().await, shared.replica().await);
    let k = key("/g");
    a.lookup(&k, &[]).await.unwrap();
    a.invalidate(&k, &[]).await.unwrap();
    // A GET that overlapped the write might have read the old state: not
    // trusted by any replica, and the recorded entry says so (the trait's
    // `validated_at` is set only for a validation that is trusted).
    let e = a.record(&k, &[], &V(), &tag("X"), true).await.unwrap();
    assert_untrusted_now(b.as_ref(), &k, &[], "within the guard").await;
    assert_eq!(e.validated_at, None, "record's entry within the guard");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let e = a.record(&k, &[], &V(), &tag("X"), true).await.unwrap();
    assert!(e.validated_at.is_some());
    assert_trust_soon(b.as_ref(), &k, &[], true, "past the guard").await;
}

async fn locks_are_exclusive_fenced_and_leased(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let (a, b) = (shared.replica().await, shared.replica().await);
    let k = key("/counter");
    let l1 = a
        .try_lock(&k, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("free lock");
    assert!(
        b.try_lock(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "exclusive"
    );
    // Only the holder's token releases.
    let fake = sametag_sidecar::store::WriteLock {
        resource: k.clone(),
        token: l1.token + 1,
        holder: l1.holder.wrapping_add(1),
    };
    b.unlock(&fake).await.unwrap();
    assert!(
        b.try_lock(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    a.unlock(&l1).await.unwrap();
    let l2 = b
        .try_lock(&k, Duration::from_millis(150))
        .await
        .unwrap()
        .expect("released");
    assert!(l2.token > l1.token, "fencing tokens increase");
    // B "crashes": its lease ends and A gets the lock with a newer token.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let l3 = a
        .try_lock(&k, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("lease expired");
    assert!(l3.token > l2.token);
    // The late holder's unlock does not release the new holder's lock.
    b.unlock(&l2).await.unwrap();
    assert!(
        b.try_lock(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    // Many contenders at once: exactly one wins.
    a.unlock(&l3).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            s.try_lock(&k, Duration::from_secs(5)).await.unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}

/// The resource, not the read key: a write by Alice under one Host name
/// ends the trusted validations of every read key of the path (Bob's, under
/// another Host), seen from every replica; the lock is one per path and
/// query, whoever asks; renewal extends only the holder's lease.
async fn writes_end_trust_for_every_read_key_of_the_path_and_lock_by_path_and_query(
    kind: StoreKind,
) {
    let shared = SharedStore::new(kind);
    let (a, b) = (shared.replica().await, shared.replica().await);
    let read_key = |id: &str, path: &str, query: &str| ResourceKey {
        path: Arc::from(path),
        id: Arc::from(id),
        lock: Arc::from(format!("{path}?{query}")),
    };
    let alice = read_key("shop/doc?id=1|alice", "/doc", "id=1");
    let bob = read_key("shop.example/doc?id=1|bob", "/doc", "id=1");
    let bob_other_query = read_key("shop/doc?id=2|bob", "/doc", "id=2");
    let unrelated = read_key("shop/other|bob", "/other", "");
    for k in [&bob, &bob_other_query, &unrelated] {
        b.record(k, &[], &V(), &tag("T"), true).await.unwrap();
    }
    let trusted = |s: &Arc<dyn Store>, k: &ResourceKey| {
        let (s, k) = (s.clone(), k.clone());
        async move {
            s.lookup(&k, &[])
                .await
                .unwrap()
                .is_some_and(|r| r.variants.iter().any(|(_, e)| e.validated_at.is_some()))
        }
    };
    for s in [&a, &b] {
        assert!(trusted(s, &bob).await && trusted(s, &unrelated).await);
    }
    a.invalidate(&alice, &[]).await.unwrap();
    for s in [&a, &b] {
        assert!(
            !trusted(s, &bob).await,
            "Bob's trust ends with Alice's write"
        );
        assert!(
            !trusted(s, &bob_other_query).await,
            "invalidation covers every query of the path"
        );
        assert!(trusted(s, &unrelated).await, "other paths keep theirs");
    }

    let held = a
        .try_lock(&alice, Duration::from_millis(400))
        .await
        .unwrap()
        .expect("free");
    assert!(
        b.try_lock(&bob, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "one lock for the path and query, whatever the Host or user"
    );
    let other = b
        .try_lock(&bob_other_query, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("another query is another lock");
    b.unlock(&other).await.unwrap();
    // Renewed past its first lease, the lock is still held.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(a.renew(&held, Duration::from_millis(400)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        b.try_lock(&bob, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    // Expired and taken by another: renewal reports the loss.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bobs = b
        .try_lock(&bob, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("expired");
    assert!(!a.renew(&held, Duration::from_secs(5)).await.unwrap());
    b.unlock(&bobs).await.unwrap();
}

support::over_stores! {
    last_modified_is_set_once_under_concurrency_and_strictly_increases,
    trust_is_shared_and_invalidation_is_seen_at_once,
    trust_guard_refuses_validations_right_after_a_write,
    locks_are_exclusive_fenced_and_leased,
    writes_end_trust_for_every_read_key_of_the_path_and_lock_by_path_and_query,
}
