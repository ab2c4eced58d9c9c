//! The Redis store against real `redis-server`s: the Lua scripts' atomicity,
//! agreement between replicas (one store handle per replica), locks,
//! TTLs and key layout, isolation, client-side caching and outages.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis_server::{RedisConfig, RedisServer};
use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use sametag_sidecar::store::{ResourceKey, Store, StoreError, StoreHealth, VariantKey};
use sametag_sidecar::tag::EntityTag;

fn key(path: &str) -> ResourceKey {
    ResourceKey {
        path: Arc::from(path),
        id: Arc::from(format!("example.test{path}")),
        lock: Arc::from(path),
    }
}

fn tag(s: &str) -> EntityTag {
    EntityTag {
        weak: false,
        opaque: s.to_owned(),
    }
}

fn opts() -> RedisOptions {
    RedisOptions {
        // Short backoff so restart tests are quick; the guard is covered by
        // its own test.
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        trust_guard: Duration::ZERO,
        // Tests run side by side: a slow answer is not an outage here.
        op_timeout: Duration::from_secs(1),
        ..RedisOptions::default()
    }
}

async fn store(url: &str, prefix: &str, o: RedisOptions) -> RedisStore {
    let s = RedisStore::connect(url, prefix, o).expect("valid url and prefix");
    assert!(
        s.wait_up(Duration::from_secs(5)).await,
        "store connects to {url}"
    );
    s
}

const V: fn() -> VariantKey = VariantKey::default;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_modified_is_set_once_under_concurrency_and_strictly_increases() {
    let redis = RedisServer::start();
    let replicas = [
        store(&redis.url(), "lm", opts()).await,
        store(&redis.url(), "lm", opts()).await,
        store(&redis.url(), "lm", opts()).await,
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
    // The date comes from Redis, not far from now.
    let skew = SystemTime::now()
        .duration_since(dates[0])
        .unwrap_or_default();
    assert!(skew < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_is_shared_and_invalidation_is_seen_at_once() {
    let redis = RedisServer::start();
    let a = store(&redis.url(), "trust", opts()).await;
    let b = store(&redis.url(), "trust", opts()).await;
    let k = key("/api/items/1");
    let watched: Vec<Arc<str>> = vec!["/api/items/**".into()];
    assert!(b.lookup(&k, &watched).await.unwrap().is_none());
    let e = a.record(&k, &[], &V(), &tag("T1"), true).await.unwrap();
    assert!(e.validated_at.is_some());
    // B sees A's validation (and caches it) once A's push has emptied the
    // "nothing here" B cached above.
    assert_trust_soon(&b, &k, &watched, true, "B sees A's validation").await;
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
    assert_untrusted_now(&b, &k, &watched, "no trust after invalidate").await;
    // Revalidated, then a write elsewhere that invalidates a watched glob.
    a.record(&k, &[], &V(), &tag("T1"), true).await.unwrap();
    assert_trust_soon(&b, &k, &watched, true, "B sees the new validation").await;
    a.invalidate(&key("/api/items"), &["/api/items/**".into()])
        .await
        .unwrap();
    assert_untrusted_now(&b, &k, &watched, "glob invalidation un-trusts").await;
    // A glob this path does not watch does not matter.
    a.record(&k, &[], &V(), &tag("T1"), true).await.unwrap();
    a.invalidate(&key("/other"), &["/other/**".into()])
        .await
        .unwrap();
    assert_trust_soon(&b, &k, &watched, true, "B sees the new validation").await;
    // A new tag drops the old validation.
    a.record(&k, &[], &V(), &tag("T2"), false).await.unwrap();
    // A tag change (unlike an invalidation) is not waited for: B hears of
    // it through its push a moment later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = b.lookup(&k, &watched).await.unwrap().unwrap();
    assert_eq!(r.variants[0].1.tag, tag("T2"));
    assert_eq!(r.variants[0].1.validated_at, None);
}

/// B's very next lookup of `k` carries no validation.
async fn assert_untrusted_now(b: &RedisStore, k: &ResourceKey, watched: &[Arc<str>], what: &str) {
    let r = b.lookup(k, watched).await.unwrap().unwrap();
    assert_eq!(r.variant(&V()).unwrap().validated_at, None, "{what}");
}

/// Within 500 ms, B's lookup of `k` is trusted (`trusted`) or not. Trust is
/// never late to end (see [`assert_untrusted_now`]), but a validation A just
/// recorded reaches B only once B's reader has applied A's push: until then
/// B may answer "not trusted" from its cache, which is safe.
async fn assert_trust_soon(
    b: &RedisStore,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_guard_refuses_validations_right_after_a_write() {
    let redis = RedisServer::start();
    let o = RedisOptions {
        trust_guard: Duration::from_millis(400),
        ..opts()
    };
    let a = store(&redis.url(), "guard", o.clone()).await;
    let k = key("/g");
    a.lookup(&k, &[]).await.unwrap();
    a.invalidate(&k, &[]).await.unwrap();
    // A GET that overlapped the write might have read the old state.
    let e = a.record(&k, &[], &V(), &tag("X"), true).await.unwrap();
    assert_eq!(e.validated_at, None);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let e = a.record(&k, &[], &V(), &tag("X"), true).await.unwrap();
    assert!(e.validated_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_exclusive_fenced_and_leased() {
    let redis = RedisServer::start();
    let a = store(&redis.url(), "locks", opts()).await;
    let b = store(&redis.url(), "locks", opts()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_ttl_and_one_hash_tag() {
    let redis = RedisServer::start();
    // A cluster-enabled server, only to ask CLUSTER KEYSLOT.
    let slots = RedisServer::with(RedisConfig {
        extra: vec!["cluster-enabled yes".into()],
        ..Default::default()
    });
    let s = store(&redis.url(), "layout:1", opts()).await;
    for i in 0..5 {
        let k = key(&format!("/p/{i}?q={{x}}"));
        s.record(
            &k,
            &["accept-encoding".into()],
            &VariantKey("gzip".into()),
            &tag("t"),
            true,
        )
        .await
        .unwrap();
        s.lookup(&k, &["/p/**".into()]).await.unwrap();
    }
    s.invalidate(&key("/p/0?q={x}"), &["/p/**".into()])
        .await
        .unwrap();
    let _held = s
        .try_lock(&key("/p/1"), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let keys = redis.keys();
    assert!(keys.len() >= 8, "resources, meta, clock, lock: {keys:?}");
    let mut admin = redis.admin();
    let mut slot_admin = slots.admin();
    let mut seen_slots = std::collections::HashSet::new();
    for k in &keys {
        assert!(k.starts_with("{layout:1}:"), "{k}");
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut admin).unwrap();
        assert!(ttl > 0, "{k} has a TTL ({ttl})");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut slot_admin)
            .unwrap();
        seen_slots.insert(slot);
    }
    assert_eq!(seen_slots.len(), 1, "one slot for the whole store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_isolated_by_prefix_and_by_server() {
    let shared = RedisServer::start();
    let a = store(&shared.url(), "tenant-a", opts()).await;
    let b = store(&shared.url(), "tenant-b", opts()).await;
    let k = key("/same");
    a.record(&k, &[], &V(), &tag("A"), true).await.unwrap();
    assert!(
        b.lookup(&k, &[]).await.unwrap().is_none(),
        "other prefix sees nothing"
    );
    b.invalidate(&k, &["/**".into()]).await.unwrap();
    assert!(
        a.lookup(&k, &[]).await.unwrap().unwrap().variants[0]
            .1
            .validated_at
            .is_some()
    );

    // Two servers, two passwords (one an ACL user).
    let r1 = RedisServer::with_password("pw-one");
    let r2 = RedisServer::with(RedisConfig {
        acl_user: Some(("sidecar".into(), "pw-two".into())),
        extra: vec!["user default off".into()],
        ..Default::default()
    });
    let s1 = store(&r1.url(), "app", opts()).await;
    let s2 = store(&r2.url(), "app", opts()).await;
    s1.record(&k, &[], &V(), &tag("one"), false).await.unwrap();
    assert!(s2.lookup(&k, &[]).await.unwrap().is_none());
    assert!(!r1.keys().is_empty());
    assert!(r2.keys().is_empty());

    // The wrong password: an outage, not a crash; fast errors.
    let wrong = RedisStore::connect(&r1.url_with_password("nope"), "app", opts()).unwrap();
    assert!(!wrong.wait_up(Duration::from_millis(500)).await);
    assert_eq!(wrong.health(), StoreHealth::Down);
    let t0 = Instant::now();
    let err = wrong.lookup(&k, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(t0.elapsed() < Duration::from_millis(100));
    // r1's data is untouched by the failed logins.
    assert_eq!(
        s1.lookup(&k, &[]).await.unwrap().unwrap().variants[0].1.tag,
        tag("one")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_lookups_cost_no_redis_commands_and_invalidations_still_arrive() {
    let redis = RedisServer::start();
    let a = store(&redis.url(), "cache", opts()).await;
    let b = store(&redis.url(), "cache", opts()).await;
    let k = key("/hot");
    let w: Vec<Arc<str>> = vec!["/hot/**".into()];
    a.record(&k, &[], &V(), &tag("H"), true).await.unwrap();
    // Let A's write pushes arrive (a read that races one is conservatively
    // not cached), then warm B's cache.
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.lookup(&k, &w).await.unwrap();
    b.lookup(&k, &w).await.unwrap();
    let hits0 = b.metrics().cache_hits.get();
    let trips0 = b.metrics().round_trips.get();
    let calls0 = redis.data_calls();
    for _ in 0..200 {
        let r = b.lookup(&k, &w).await.unwrap().unwrap();
        assert!(r.variants[0].1.validated_at.is_some());
        // Validate mode's record of an unchanged tag is local too.
        b.record(&k, &[], &V(), &tag("H"), false).await.unwrap();
    }
    assert_eq!(redis.data_calls() - calls0, 0, "no commands reached redis");
    // Each trusted lookup pays one PING, the barrier behind invalidations
    // already sent; the unchanged-tag records pay nothing.
    assert_eq!(b.metrics().round_trips.get() - trips0, 200);
    assert_eq!(b.metrics().cache_hits.get() - hits0, 400);
    // Another replica writes: the very next lookup here is fresh.
    a.invalidate(&k, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = b.lookup(&k, &w).await.unwrap().unwrap();
    assert_eq!(r.variants[0].1.validated_at, None);
    a.record(&k, &[], &V(), &tag("H2"), false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        b.lookup(&k, &w).await.unwrap().unwrap().variants[0].1.tag,
        tag("H2")
    );
    // Validate mode never looks up: records of an unchanged tag still
    // become local after one read-only round trip.
    let c = store(&redis.url(), "cache", opts()).await;
    let k2 = key("/validate-only");
    let trips0 = c.metrics().round_trips.get();
    for _ in 0..20 {
        c.record(&k2, &[], &V(), &tag("V"), false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(c.metrics().round_trips.get() - trips0 <= 2);
    // FLUSHALL empties the caches too.
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.admin()).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(b.lookup(&k, &w).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_then_bumps_the_epoch_on_reconnect() {
    let mut redis = RedisServer::start();
    let a = store(&redis.url(), "outage", opts()).await;
    let b = store(&redis.url(), "outage", opts()).await;
    let k = key("/o");
    // A second resource, validated before the outage and never written.
    let other = key("/o2");
    a.record(&k, &[], &V(), &tag("O"), true).await.unwrap();
    b.record(&other, &[], &V(), &tag("P"), true).await.unwrap();
    assert!(
        b.lookup(&k, &[]).await.unwrap().unwrap().variants[0]
            .1
            .validated_at
            .is_some()
    );
    // Redis persists what it holds (both validations) before it dies.
    redis.save();

    redis.kill();
    // Every call fails quickly and says Unavailable; health follows.
    for s in [&a, &b] {
        let t0 = Instant::now();
        assert!(matches!(
            s.lookup(&k, &[]).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            s.try_lock(&k, Duration::from_secs(1)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            t0.elapsed() < Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
    }
    // A write forwarded during the outage could not invalidate.
    assert!(a.invalidate(&k, &[]).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(2);
    while (a.health(), b.health()) != (StoreHealth::Down, StoreHealth::Down)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.health(), StoreHealth::Down);

    // Redis comes back on the same port with its data (both validations
    // included) and a new run id (a restart); both reconnect on their own
    // and bump the epoch once; A's lost invalidation rides on the same bump.
    redis.restart();
    assert!(redis.dbsize() > 0, "redis kept its data");
    assert!(a.wait_up(Duration::from_secs(5)).await);
    assert!(b.wait_up(Duration::from_secs(5)).await);
    assert_eq!(a.metrics().epoch_bumps.get(), 1);
    assert_eq!(b.metrics().epoch_bumps.get(), 1);
    // Nothing trusted until a fresh validation: not the resource whose
    // invalidation was lost, and not the one nobody wrote, though Redis
    // still holds both tags.
    for (k, t) in [(&other, "P"), (&k, "O")] {
        for s in [&a, &b] {
            let r = s.lookup(k, &[]).await.unwrap().expect("data kept");
            let e = r.variant(&V()).unwrap();
            assert_eq!(e.tag, tag(t));
            assert_eq!(
                e.validated_at, None,
                "{} untrusted after the outage",
                k.path
            );
        }
    }
    let e = b.record(&k, &[], &V(), &tag("O"), true).await.unwrap();
    assert!(e.validated_at.is_some());
    assert_trust_soon(&a, &k, &[], true, "A sees B's fresh validation").await;
    assert_untrusted_now(&a, &other, &[], "still untrusted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_bump_untrusts_validations_that_survived_the_outage() {
    // Redis keeps its data (the same process throughout); A's invalidation
    // times out while Redis is paused (as during a network partition), so
    // A bumps on reconnect.
    let redis = RedisServer::start();
    let run_id = redis.run_id();
    let a = store(&redis.url(), "epoch", opts()).await;
    let b = store(&redis.url(), "epoch", opts()).await;
    let k = key("/e");
    // Validated before the partition and never written: only the epoch can
    // end its trust.
    let other = key("/never-written");
    b.record(&k, &[], &V(), &tag("E"), true).await.unwrap();
    b.record(&other, &[], &V(), &tag("N"), true).await.unwrap();
    assert_trust_soon(&a, &other, &[], true, "A sees B's validation").await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query(&mut redis.admin())
        .unwrap();
    let failed = a.invalidate(&k, &[]).await;
    assert!(
        failed.is_err(),
        "invalidate times out while redis is paused"
    );
    assert!(a.wait_up(Duration::from_secs(5)).await);
    assert!(a.metrics().epoch_bumps.get() >= 1);
    assert_eq!(redis.run_id(), run_id, "the same Redis, with its data");
    // B's validations from before are no longer trusted, by anyone: the
    // never-written resource included, whose tag Redis still holds.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for s in [&a, &b] {
        for (k, t) in [(&other, "N"), (&k, "E")] {
            let r = s.lookup(k, &[]).await.unwrap().expect("data kept");
            let e = r.variant(&V()).unwrap();
            assert_eq!(e.tag, tag(t));
            assert_eq!(e.validated_at, None, "{} untrusted after the bump", k.path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_with_its_data_ends_trust() {
    // No write during the restart, no lost invalidation: but invalidations
    // the old process acknowledged after its last save (or a failover's
    // replication lag) may be gone, so a new run id ends every trust.
    let mut redis = RedisServer::start();
    let a = store(&redis.url(), "runid", opts()).await;
    let b = store(&redis.url(), "runid", opts()).await;
    let k = key("/r");
    a.record(&k, &[], &V(), &tag("R"), true).await.unwrap();
    assert_trust_soon(&b, &k, &[], true, "B sees A's validation").await;
    let run_id = redis.run_id();
    redis.restart_keeping_data();
    assert_ne!(redis.run_id(), run_id, "a new process");
    assert!(redis.dbsize() > 0, "redis kept its data");
    // Both notice the restart (their connections broke) and reconnect.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        seen.clear();
        for s in [&a, &b] {
            seen.push(
                s.lookup(&k, &[]).await.map(|r| {
                    r.and_then(|r| r.variant(&V()).map(|e| (e.tag.clone(), e.validated_at)))
                }),
            );
        }
        if seen.iter().all(|r| r.is_ok()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (s, r) in ["A", "B"].iter().zip(&seen) {
        let (t, validated_at) = r.as_ref().expect("reconnected").clone().expect("data kept");
        assert_eq!(t, tag("R"));
        assert_eq!(
            validated_at, None,
            "{s}: a validation from before the restart is not trusted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_maxmemory_keeps_the_store_healthy() {
    let redis = RedisServer::with(RedisConfig {
        extra: vec![
            "maxmemory 2mb".into(),
            "maxmemory-policy allkeys-lru".into(),
        ],
        ..Default::default()
    });
    let s = store(&redis.url(), "evict", opts()).await;
    let big = "x".repeat(2000);
    for i in 0..3000 {
        let k = key(&format!("/{i}/{big}"));
        s.record(&k, &[], &V(), &tag("t"), i % 2 == 0)
            .await
            .unwrap();
    }
    assert_eq!(s.health(), StoreHealth::Up);
    assert!(redis.keys().len() < 3000, "redis evicted keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_a_clear_error() {
    assert!(RedisStore::connect("http://127.0.0.1:1", "p", opts()).is_err());
    assert!(RedisStore::connect("redis://127.0.0.1:1", "a{b}", opts()).is_err());
    assert!(RedisStore::connect("redis://127.0.0.1:1", "", opts()).is_err());
    // Nothing listening: an outage, not an error.
    let s = RedisStore::connect("redis://127.0.0.1:1", "p", opts()).unwrap();
    assert!(matches!(
        s.lookup(&key("/"), &[]).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password() {
    let redis = RedisServer::with(RedisConfig {
        tls: true,
        password: Some("tls-pw".into()),
        ..Default::default()
    });
    let o = RedisOptions {
        tls_ca_file: Some(redis.ca_file()),
        ..opts()
    };
    assert!(redis.url().starts_with("rediss://"));
    let a = store(&redis.url(), "tls", o.clone()).await;
    let b = store(&redis.url(), "tls", o).await;
    let k = key("/tls");
    a.record(&k, &[], &V(), &tag("S"), true).await.unwrap();
    let r = b.lookup(&k, &[]).await.unwrap().unwrap();
    assert!(r.variants[0].1.validated_at.is_some());
    // A certificate the system roots do not trust: an outage, not a crash.
    let untrusted = RedisStore::connect(&redis.url(), "tls", opts()).unwrap();
    assert!(!untrusted.wait_up(Duration::from_millis(500)).await);
    assert!(matches!(
        untrusted.lookup(&k, &[]).await,
        Err(StoreError::Unavailable(_))
    ));
    // A missing CA file is a configuration error.
    let missing = RedisOptions {
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..opts()
    };
    assert!(RedisStore::connect(&redis.url(), "tls", missing).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_runs_every_script_in_one_slot() {
    let (nodes, url) = redis_server::start_cluster();
    let a = store(&url, "clustered", opts()).await;
    let b = store(&url, "clustered", opts()).await;
    let watched: Vec<Arc<str>> = vec!["/c/**".into()];
    for i in 0..20 {
        let k = key(&format!("/c/{i}"));
        // Multi-key scripts: resource + meta + clock, lock + clock.
        a.record(&k, &[], &V(), &tag("C"), true).await.unwrap();
        let r = b.lookup(&k, &watched).await.unwrap().unwrap();
        assert!(r.variants[0].1.validated_at.is_some());
        let l = b
            .try_lock(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(
            a.try_lock(&k, Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
        b.unlock(&l).await.unwrap();
    }
    a.invalidate(&key("/c"), &["/c/**".into()]).await.unwrap();
    let r = b.lookup(&key("/c/3"), &watched).await.unwrap().unwrap();
    assert_eq!(r.variants[0].1.validated_at, None);
    // All of the store's keys sit on one node (one slot).
    let holding: Vec<usize> = nodes.iter().map(|n| n.keys().len()).collect();
    assert_eq!(holding.iter().filter(|c| **c > 0).count(), 1, "{holding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_urls_reach_the_master() {
    let master = RedisServer::with_password("sentinel-pw");
    let sentinel = redis_server::Sentinel::start(&master);
    let url = format!(
        "redis+sentinel://:sentinel-pw@127.0.0.1:{}/mymaster",
        sentinel.port
    );
    let a = store(&url, "sentinel", opts()).await;
    let b = store(&url, "sentinel", opts()).await;
    let k = key("/s");
    a.record(&k, &[], &V(), &tag("S"), true).await.unwrap();
    assert!(
        b.lookup(&k, &[]).await.unwrap().unwrap().variants[0]
            .1
            .validated_at
            .is_some()
    );
    assert!(master.keys().iter().all(|k| k.starts_with("{sentinel}:")));
    assert!(!master.keys().is_empty());
}

/// The resource, not the read key: a write by Alice under one Host name
/// ends the trusted validations of every read key of the path (Bob's, under
/// another Host), seen from every replica; the lock is one per path and
/// query, whoever asks; renewal extends only the holder's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_end_trust_for_every_read_key_of_the_path_and_lock_by_path_and_query() {
    let redis = RedisServer::start();
    let a = store(&redis.url(), "paths", opts()).await;
    let b = store(&redis.url(), "paths", opts()).await;
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
    let trusted = |s: &RedisStore, k: &ResourceKey| {
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
