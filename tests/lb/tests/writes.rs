//! Writes through the balancer: concurrent If-Match updates to one document
//! never lose an update, and Trust mode never serves a stale 304 after a
//! write through another replica.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sametag_lb_e2e::client::Http;
use sametag_lb_e2e::cluster::Kind;
use support::{
    TRUST_DOCS, bare, check_applied, read_counter, run_writers, with_sametag, with_sametag_args,
};

const WRITERS: usize = 6;
const PER_WRITER: u64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sametag_concurrent_updates_are_lost() {
    // The "before" picture: the app ignores If-Match (its tags are per
    // replica anyway), so concurrent read-modify-writes overwrite each other.
    let c = bare(Kind::App).await;
    let url = c.url("/docs/counter.json");
    let s = run_writers(&c.http, &url, WRITERS, PER_WRITER, Duration::from_secs(30)).await;
    let counter = read_counter(&c.http, &url).await;
    println!(
        "without sametag: {} writes acknowledged, {} 412s, counter {counter}",
        s.successes, s.conflicts
    );
    assert_eq!(s.successes, WRITERS as u64 * PER_WRITER);
    assert!(
        counter < s.successes,
        "expected lost updates without sametag"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_updates_lose_nothing() {
    for policy in [None, Some(TRUST_DOCS)] {
        let c = with_sametag(Kind::App, policy).await;
        let url = c.url("/docs/counter.json");
        let s = run_writers(&c.http, &url, WRITERS, PER_WRITER, Duration::from_secs(60)).await;
        let counter = read_counter(&c.http, &url).await;
        let applied = check_applied(&c, "counter.json", &s.acked);
        let planned = WRITERS as u64 * PER_WRITER;
        println!(
            "with sametag ({policy:?}): {} of {planned} planned writes, {} 412s, {} 503s, \
             applied {}, counter {counter}",
            s.successes, s.conflicts, s.unavailable, applied.applied
        );
        assert_eq!(s.failed_gets, 0, "{s:?}");
        assert!(s.other.is_empty() && s.transport_errors == 0, "{s:?}");
        // 503 means the lock or the store was unavailable: with Redis up
        // and every lock released after each write (also after a 412), none.
        assert_eq!(s.unavailable, 0, "unexpected 503s: {s:?}");
        assert_eq!(s.successes, planned, "every planned write must complete");
        applied.assert_no_lost_update();
        assert_eq!(
            applied.applied, s.successes,
            "writes applied but not acknowledged"
        );
        assert_eq!(
            counter, s.successes,
            "every successful write counted exactly once: {s:?}"
        );
        assert!(
            s.conflicts > 0,
            "concurrent writers must have met (412s): {s:?}"
        );
    }
}

/// App GETs served so far, summed over the replicas (asked directly).
async fn app_gets(http: &Http, c: &sametag_lb_e2e::cluster::Cluster) -> u64 {
    let mut n = 0;
    for a in &c.apps {
        let r = http
            .get(&format!("http://{}/__stats", a.addr), &[])
            .await
            .expect("stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        n += v["gets"].as_u64().unwrap_or(0);
    }
    n
}

/// The trust guard of the Trust test's sidecars: their upstream timeout,
/// which the sidecar also uses as the post-write trust guard (a validation
/// younger than it after a write is not trusted). With the default 30 s,
/// Trust would be off for the rest of the test after its first write.
const GUARD: Duration = Duration::from_secs(1);

fn is_hit(r: &sametag_lb_e2e::client::Reply) -> bool {
    r.status == 304
        && r.header("cache-status")
            .is_some_and(|c| c.contains("sametag; hit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_never_serves_a_stale_304_after_a_write() {
    let guard = format!("{}ms", GUARD.as_millis());
    let c = with_sametag_args(Kind::App, Some(TRUST_DOCS), &["--upstream-timeout", &guard]).await;
    let path = "/docs/b.json";
    let url = c.url(path);

    // Sequential: write through one replica, revalidate right away.
    let mut browser = sametag_lb_e2e::scenario::Browser::new(c.http.clone(), c.lb.url());
    browser.first_load(&[path.to_owned()]).await.expect("load");
    let warm = browser.revalidate_all(&[path.to_owned()], 3).await;
    assert_eq!(warm.not_modified, warm.requests, "{warm:?}");
    let gets_before = app_gets(&c.http, &c).await;
    let hot = browser.revalidate_all(&[path.to_owned()], 30).await;
    let gets_after = app_gets(&c.http, &c).await;
    assert_eq!(hot.not_modified, hot.requests, "{hot:?}");
    println!(
        "trust: 30 revalidations reached the app {} times",
        gets_after - gets_before
    );
    // `/__stats` is not counted as a GET by the app.
    assert!(
        gets_after - gets_before < 10,
        "Trust must answer revalidations without calling the app (app saw {})",
        gets_after - gets_before
    );
    // Each round: a write, a revalidation right after it (must be a 200),
    // then, past the guard, revalidations that Trust answers again.
    let rounds = 2..8u64;
    let mut seq_hits = 0;
    for v in rounds.clone() {
        let tag = browser.cache[path].etag.clone().expect("etag");
        let body = Bytes::from(format!("{{\"name\":\"b\",\"version\":{v}}}"));
        let w = c
            .http
            .put(&url, &[("if-match", &tag)], body.clone())
            .await
            .expect("put");
        assert!(w.status.is_success(), "write {v}: {}", w.status);
        let mut st = Default::default();
        let r = browser.revalidate(path, &mut st).await.expect("revalidate");
        assert_eq!(r.status, 200, "stale 304 right after write {v}");
        assert_eq!(r.body, body);
        tokio::time::sleep(GUARD + Duration::from_millis(200)).await;
        for _ in 0..4 {
            let r = browser.revalidate(path, &mut st).await.expect("revalidate");
            assert_eq!(r.status, 304, "unchanged since write {v}");
            seq_hits += u64::from(is_hit(&r));
        }
    }
    let n_rounds = rounds.end - rounds.start;
    println!("trust: {seq_hits} trusted 304s in {n_rounds} rounds after writes");
    // The first revalidation past the guard asks the app and re-trusts the
    // tag; the next ones are answered from the store.
    assert!(
        seq_hits >= 2 * n_rounds,
        "Trust must be active again past the guard after each write: {seq_hits} hits"
    );

    // Concurrent: readers revalidate in a loop while a writer writes, the
    // writes spaced past the guard so Trust is active between them. A 304
    // for a version older than one whose write had completed before the
    // revalidation started is a stale 304.
    let published = Arc::new(AtomicU64::new(rounds.end - 1));
    let stop = Instant::now() + Duration::from_secs(6);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (http, url, published) = (c.http.clone(), url.clone(), published.clone());
        readers.push(tokio::spawn(async move {
            let (mut stale, mut n304, mut n200, mut hits) = (0u64, 0u64, 0u64, 0u64);
            let mut cached: Option<(String, u64)> = None;
            while Instant::now() < stop {
                let done_before = published.load(Ordering::SeqCst);
                let h: Vec<(&str, &str)> = cached
                    .iter()
                    .map(|(t, _)| ("if-none-match", t.as_str()))
                    .collect();
                let Ok(r) = http.get(&url, &h).await else {
                    continue;
                };
                match r.status.as_u16() {
                    304 => {
                        n304 += 1;
                        hits += u64::from(is_hit(&r));
                        if cached.as_ref().is_some_and(|(_, v)| *v < done_before) {
                            stale += 1;
                        }
                    }
                    200 => {
                        n200 += 1;
                        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
                        let version = v["version"].as_u64().unwrap_or(0);
                        cached = r.header("etag").map(|t| (t.to_owned(), version));
                    }
                    s => panic!("reader got {s}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (stale, n304, n200, hits)
        }));
    }
    let writer = {
        let (http, url, published) = (c.http.clone(), url.clone(), published.clone());
        tokio::spawn(async move {
            let mut v = rounds.end;
            let mut writes = 0;
            while Instant::now() < stop {
                let body = Bytes::from(format!("{{\"name\":\"b\",\"version\":{v}}}"));
                let w = http.put(&url, &[], body).await.expect("put");
                assert!(w.status.is_success(), "{}", w.status);
                published.store(v, Ordering::SeqCst);
                v += 1;
                writes += 1;
                tokio::time::sleep(GUARD + Duration::from_millis(500)).await;
            }
            writes
        })
    };
    let writes = writer.await.expect("writer");
    let (mut stale, mut n304, mut n200, mut hits) = (0, 0, 0, 0);
    for r in readers {
        let (s, a, b, h) = r.await.expect("reader");
        stale += s;
        n304 += a;
        n200 += b;
        hits += h;
    }
    println!(
        "concurrent trust: {writes} writes, {n304} 304s ({hits} trusted), {n200} 200s, {stale} stale"
    );
    assert_eq!(stale, 0, "stale 304s after a completed write");
    assert!(writes >= 3 && n200 > 1, "{writes} writes, {n200} 200s");
    assert!(
        hits >= 50,
        "Trust must have answered between the writes: {hits} trusted 304s of {n304}"
    );
}
