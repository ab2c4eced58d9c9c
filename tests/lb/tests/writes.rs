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
use support::{TRUST_DOCS, bare, read_counter, run_writers, with_sametag};

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
    println!("without sametag: {s:?}, counter {counter}");
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
        println!("with sametag ({policy:?}): {s:?}, counter {counter}");
        assert_eq!(s.failed_gets, 0, "{s:?}");
        assert!(s.other.is_empty() && s.transport_errors == 0, "{s:?}");
        assert!(s.successes > 0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_never_serves_a_stale_304_after_a_write() {
    let c = with_sametag(Kind::App, Some(TRUST_DOCS)).await;
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
    for v in 2..22u64 {
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
    }

    // Concurrent: readers revalidate in a loop while a writer writes. A 304
    // for a version older than one whose write had completed before the
    // revalidation started is a stale 304.
    let published = Arc::new(AtomicU64::new(21));
    let stop = Instant::now() + Duration::from_secs(5);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (http, url, published) = (c.http.clone(), url.clone(), published.clone());
        readers.push(tokio::spawn(async move {
            let (mut stale, mut n304, mut n200) = (0u64, 0u64, 0u64);
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
            }
            (stale, n304, n200)
        }));
    }
    let writer = {
        let (http, url, published) = (c.http.clone(), url.clone(), published.clone());
        tokio::spawn(async move {
            let mut v = 22u64;
            while Instant::now() < stop {
                let body = Bytes::from(format!("{{\"name\":\"b\",\"version\":{v}}}"));
                let w = http.put(&url, &[], body).await.expect("put");
                assert!(w.status.is_success(), "{}", w.status);
                published.store(v, Ordering::SeqCst);
                v += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    writer.await.expect("writer");
    let (mut stale, mut n304, mut n200) = (0, 0, 0);
    for r in readers {
        let (s, a, b) = r.await.expect("reader");
        stale += s;
        n304 += a;
        n200 += b;
    }
    println!("concurrent trust: {n304} 304s, {n200} 200s, {stale} stale");
    assert_eq!(stale, 0, "stale 304s after a completed write");
    assert!(n304 > 0 && n200 > 1);
}
