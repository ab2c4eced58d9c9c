//! Route modes and writes end to end: Bypass untouched, Trust answering from
//! the store (and never after a write), conditional writes (412, 428, lock
//! contention across replicas, 503 when the lock stays busy), agreement of N
//! replicas, untagged pass-through (no-store, bodies over maxBodyBytes,
//! streamed without buffering). The tests whose outcome rests on the store
//! run once per store (`in_memory::`, `in_redis::`).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sametag_sidecar::store::memory::MemoryStore;
use sametag_sidecar::store::{ResourceKey, Store};
use support::{
    App, SharedStore, Sidecar, StoreKind, body, get, resource_app, resource_app_with_delay, send,
};

#[tokio::test]
async fn bypass_leaves_validators_and_conditionals_to_the_app() {
    let app = App::start(|req: http::Request<Incoming>| async move {
        let inm = req.headers().get("if-none-match").cloned();
        let mut r = if inm.as_ref().is_some_and(|v| v == "\"app-1\"") {
            support::status(StatusCode::NOT_MODIFIED)
        } else {
            Response::new(body("raw"))
        };
        r.headers_mut().insert("etag", "\"app-1\"".parse().unwrap());
        r
    })
    .await;
    let policy = "routes:\n  - path: /raw/**\n    mode: Bypass\n";
    let sidecar = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;
    let r = get(sidecar.addr, "/raw/x", &[]).await;
    assert_eq!(r.etag(), "\"app-1\"");
    assert_eq!(r.header("cache-status"), "sametag; fwd=bypass");
    let r = get(sidecar.addr, "/raw/x", &[("if-none-match", "\"app-1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        app.last_headers().get("if-none-match").unwrap(),
        "\"app-1\""
    );
    // Other paths are still tagged by the sidecar.
    let r = get(sidecar.addr, "/other", &[]).await;
    assert_ne!(r.etag(), "\"app-1\"");
}

/// Replicas behind one balancer see one Host.
const H: (&str, &str) = ("host", "app.example");

const TRUST: &str = "\
mode: Validate
routes:
  - path: /api/items/**
    mode: Trust
    maxAge: 60s
    invalidates: [/api/items]
  - path: /api/items
    mode: Trust
    maxAge: 60s
  - path: /short/**
    mode: Trust
    maxAge: 300ms
";

async fn trust_answers_from_the_store_without_the_app(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let state = Arc::new(Mutex::new(Some("item one".to_owned())));
    let app = resource_app(state, "a").await;
    let sidecar = Sidecar::start(app.addr, TRUST, shared.replica().await).await;
    let first = get(sidecar.addr, "/api/items/1", &[]).await;
    assert_eq!(app.hits(), 1);
    for _ in 0..5 {
        let r = get(
            sidecar.addr,
            "/api/items/1",
            &[("if-none-match", &first.etag())],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(r.header("cache-status"), "sametag; hit");
        assert_eq!(r.etag(), first.etag());
        assert_eq!(r.header("last-modified"), first.header("last-modified"));
    }
    // HEAD and If-Modified-Since are answered from the store too.
    let r = get(
        sidecar.addr,
        "/api/items/1",
        &[("if-modified-since", &first.header("last-modified"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(app.hits(), 1, "no request reached the app");
    // A request without a condition always reaches the app.
    let r = get(sidecar.addr, "/api/items/1", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.hits(), 2);
}

async fn trust_never_after_a_write_through_any_replica(kind: StoreKind) {
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let shared = SharedStore::new(kind);
    let app_a = resource_app(state.clone(), "a").await;
    let app_b = resource_app(state.clone(), "b").await;
    let a = Sidecar::start(app_a.addr, TRUST, shared.replica().await).await;
    let b = Sidecar::start(app_b.addr, TRUST, shared.replica().await).await;

    let v1 = get(a.addr, "/api/items/1", &[H]).await;
    let list = get(a.addr, "/api/items", &[H]).await;
    let r = get(b.addr, "/api/items/1", &[H, ("if-none-match", &v1.etag())]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_MODIFIED,
        "replica b trusts a's validation"
    );
    assert_eq!(app_b.hits(), 0);

    // A write through b invalidates the item and, via `invalidates`, the list.
    let w = send(b.addr, "PUT", "/api/items/1", &[H], "v2!").await;
    assert_eq!(w.status, StatusCode::OK);
    assert!(
        w.headers.get("etag").is_none(),
        "the app's write tag is dropped"
    );
    let r = get(a.addr, "/api/items/1", &[H, ("if-none-match", &v1.etag())]).await;
    assert_eq!(r.status, StatusCode::OK, "no stale 304 after a write");
    assert_eq!(r.text(), "v2!");
    assert_ne!(r.etag(), v1.etag());
    assert!(r.header("last-modified") > String::new());
    let hits = app_a.hits();
    let r = get(a.addr, "/api/items", &[H, ("if-none-match", &list.etag())]).await;
    assert_eq!(app_a.hits(), hits + 1, "the watched list was revalidated");
    assert_ne!(r.header("cache-status"), "sametag; hit");
}

async fn trust_expires_after_max_age(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let app = App::fixed("short lived", "\"x\"").await;
    let sidecar = Sidecar::start(app.addr, TRUST, shared.replica().await).await;
    let first = get(sidecar.addr, "/short/a", &[]).await;
    let r = get(
        sidecar.addr,
        "/short/a",
        &[("if-none-match", &first.etag())],
    )
    .await;
    assert_eq!(r.header("cache-status"), "sametag; hit");
    assert_eq!(app.hits(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(
        sidecar.addr,
        "/short/a",
        &[("if-none-match", &first.etag())],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("cache-status"), "sametag; fwd=stale; stored");
    assert_eq!(app.hits(), 2, "older than maxAge: the app is asked");
}

#[tokio::test]
async fn conditional_writes_are_checked_against_the_current_tag() {
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let app = resource_app(state.clone(), "a").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let v1 = get(sidecar.addr, "/doc", &[]).await;

    let ok = send(
        sidecar.addr,
        "PUT",
        "/doc",
        &[("if-match", &v1.etag())],
        "v2",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(app.last_headers().get("if-match").is_none(), "stripped");
    // The same If-Match is now stale: 412, and the app never sees the PUT.
    let stale = send(
        sidecar.addr,
        "PUT",
        "/doc",
        &[("if-match", &v1.etag())],
        "v3",
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(state.lock().unwrap().as_deref(), Some("v2"));
    assert_eq!(
        app.last_method(),
        http::Method::GET,
        "only the internal GET"
    );

    // Create-only: If-None-Match: * fails on an existing resource...
    let r = send(sidecar.addr, "PUT", "/doc", &[("if-none-match", "*")], "x").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // ...and succeeds once it is gone.
    let r = send(sidecar.addr, "DELETE", "/doc", &[], "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = send(
        sidecar.addr,
        "PUT",
        "/doc",
        &[("if-none-match", "*")],
        "new",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // If-Match: * on a missing resource fails.
    send(sidecar.addr, "DELETE", "/doc", &[], "").await;
    let r = send(sidecar.addr, "PUT", "/doc", &[("if-match", "*")], "x").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn require_preconditions_answers_428() {
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let app = resource_app(state.clone(), "a").await;
    let policy = "routes:\n  - path: /locked/**\n    requirePreconditions: true\n";
    let sidecar = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;
    for method in ["PUT", "PATCH", "DELETE", "POST"] {
        let r = send(sidecar.addr, method, "/locked/x", &[], "x").await;
        assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED, "{method}");
    }
    assert_eq!(app.hits(), 0);
    let r = get(sidecar.addr, "/locked/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "reads are not affected");
    let r = send(
        sidecar.addr,
        "PUT",
        "/locked/x",
        &[("if-match", &r.etag())],
        "v2",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(sidecar.addr, "PUT", "/elsewhere", &[], "x").await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn concurrent_conditional_writers_across_replicas_one_wins(kind: StoreKind) {
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let shared = SharedStore::new(kind);
    let slow = Duration::from_millis(200);
    let app_a = resource_app_with_delay(state.clone(), "a", slow).await;
    let app_b = resource_app_with_delay(state.clone(), "b", slow).await;
    let a = Sidecar::start(app_a.addr, "", shared.replica().await).await;
    let b = Sidecar::start(app_b.addr, "", shared.replica().await).await;
    let tag = get(a.addr, "/doc", &[H]).await.etag();
    assert_eq!(get(b.addr, "/doc", &[H]).await.etag(), tag, "agreement");

    let cond = [H, ("if-match", tag.as_str())];
    let (ra, rb) = tokio::join!(
        send(a.addr, "PUT", "/doc", &cond, "from a"),
        send(b.addr, "PUT", "/doc", &cond, "from b"),
    );
    let mut statuses = [ra.status, rb.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
        "exactly one writer wins"
    );
    let winner = if ra.status == StatusCode::OK {
        "from a"
    } else {
        "from b"
    };
    assert_eq!(
        state.lock().unwrap().as_deref(),
        Some(winner),
        "no lost update"
    );
}

#[tokio::test]
async fn busy_lock_answers_503_with_retry_after() {
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let app = resource_app(state, "a").await;
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let sidecar = Sidecar::start_with(app.addr, "", store.clone(), |c| {
        c.options.lock_wait = Duration::from_millis(150);
        c.options.retry_after = Duration::from_secs(7);
    })
    .await;
    let tag = get(sidecar.addr, "/doc", &[]).await.etag();
    // Another replica holds the lock (as the same key the proxy derives).
    let parts = http::Request::get("/doc")
        .header("host", sidecar.addr.to_string())
        .body(())
        .unwrap()
        .into_parts()
        .0;
    // Without credentials the secret plays no part in the key.
    let key: ResourceKey = sametag_sidecar::key::resource_key(&parts, false, b"any");
    let held = store
        .try_lock(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let r = send(sidecar.addr, "PUT", "/doc", &[("if-match", &tag)], "v2").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), "7");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it retried"
    );
    store.unlock(&held).await.unwrap();
    let r = send(sidecar.addr, "PUT", "/doc", &[("if-match", &tag)], "v2").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A write slower than the lock's lease keeps its lock (renewed while in
/// flight): a second writer through another replica waits, then loses with
/// 412, instead of taking the expired lock, judging against the state the
/// slow write has not committed yet, and winning too.
async fn a_write_slower_than_its_lease_keeps_the_lock(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let app = resource_app_with_delay(state.clone(), "a", Duration::from_millis(1200)).await;
    let short_lease = |c: &mut sametag_sidecar::ServerConfig| {
        c.options.lock_lease = Some(Duration::from_millis(300));
        c.options.lock_wait = Duration::from_secs(5);
    };
    let one = Sidecar::start_with(app.addr, "", shared.replica().await, short_lease).await;
    let two = Sidecar::start_with(app.addr, "", shared.replica().await, short_lease).await;
    let tag = get(one.addr, "/doc", &[]).await.etag();
    let (a1, a2) = (one.addr, two.addr);
    let (t1, t2) = (tag.clone(), tag.clone());
    let slow = tokio::spawn(async move {
        send(
            a1,
            "PUT",
            "/doc",
            &[("if-match", &t1), ("authorization", "Bearer alice")],
            "alice",
        )
        .await
    });
    // Well past the original lease, while the slow write is in flight.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = send(
        a2,
        "PUT",
        "/doc",
        &[("if-match", &t2), ("host", "shop.example")],
        "bob",
    )
    .await;
    let first = slow.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(second.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(state.lock().unwrap().as_deref(), Some("alice"));
    assert_eq!(one.metrics.lock_leases_lost(), 0);
}

/// A write the client stopped waiting for (504 at the upstream timeout) may
/// still be committed by the app: its lock is held until the app answers,
/// so a second writer through another replica waits and then loses with
/// 412 instead of winning on the state the slow write is about to replace.
async fn a_write_answered_504_keeps_its_lock_until_the_app_answers(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let app = resource_app_with_delay(state.clone(), "a", Duration::from_millis(1200)).await;
    let impatient = |c: &mut sametag_sidecar::ServerConfig| {
        c.options.upstream_timeout = Duration::from_millis(300);
        c.options.lock_wait = Duration::from_secs(5);
    };
    let one = Sidecar::start_with(app.addr, "", shared.replica().await, impatient).await;
    let two = Sidecar::start_with(app.addr, "", shared.replica().await, impatient).await;
    let tag = get(one.addr, "/doc", &[]).await.etag();
    let first = send(
        one.addr,
        "PUT",
        "/doc",
        &[("if-match", &tag), ("cookie", "u=alice")],
        "alice",
    )
    .await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    let second = send(
        two.addr,
        "PUT",
        "/doc",
        &[("if-match", &tag), ("host", "shop.example")],
        "bob",
    )
    .await;
    assert_eq!(
        second.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        second.text()
    );
    assert_eq!(state.lock().unwrap().as_deref(), Some("alice"));
}

async fn replicas_agree_on_etag_and_last_modified(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let tags = ["\"nginx-5f1a-1c\"", "W/\"apache-77-1c\"", "\"random-9\""];
    let mut sidecars = Vec::new();
    let mut apps = Vec::new();
    for (i, tag) in tags.into_iter().enumerate() {
        let app = App::start(move |_req: http::Request<Incoming>| async move {
            Response::builder()
                .header("content-type", "application/json")
                .header("etag", tag)
                .header(
                    "last-modified",
                    format!("Tue, 0{} Jan 2019 00:00:00 GMT", i + 1),
                )
                .body(body("{\"same\":true}"))
                .unwrap()
        })
        .await;
        sidecars.push(Sidecar::start(app.addr, "", shared.replica().await).await);
        apps.push(app);
    }
    let mut seen = Vec::new();
    for s in &sidecars {
        let r = get(s.addr, "/data", &[H]).await;
        seen.push((r.etag(), r.header("last-modified")));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    // A tag from one replica validates on every other.
    for s in &sidecars {
        let r = get(s.addr, "/data", &[H, ("if-none-match", &seen[0].0)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = get(s.addr, "/data", &[H, ("if-modified-since", &seen[0].1)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    }
}

#[tokio::test]
async fn vary_star_and_errors_pass_through_untagged() {
    let app = App::start(|req: http::Request<Incoming>| async move {
        match req.uri().path() {
            "/star" => Response::builder()
                .header("vary", "*")
                .body(body("star"))
                .unwrap(),
            _ => Response::builder()
                .status(500)
                .header("etag", "\"app-err\"")
                .body(body("boom"))
                .unwrap(),
        }
    })
    .await;
    let sidecar = Sidecar::validate(app.addr).await;
    let r = get(sidecar.addr, "/star", &[]).await;
    assert!(r.headers.get("etag").is_none());
    assert!(r.header("cache-status").contains("detail=vary-star"));
    let r = get(sidecar.addr, "/err", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.text(), "boom");
}

/// An API that answers `no-store` with its own ETag and expects `If-Match`
/// on writes keeps its optimistic concurrency through the sidecar: its
/// validators reach the client, conditional reads are judged against them,
/// and writes are judged against them under the lock and reach the app with
/// their `If-Match` (the app may insist on it). Nothing is recorded or
/// Trust-answered.
#[tokio::test]
async fn no_store_api_keeps_its_own_validators_and_if_match() {
    let version = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let v = version.clone();
    let app = App::start(move |req: http::Request<Incoming>| {
        let v = v.clone();
        async move {
            let current = format!("\"v{}\"", v.load(std::sync::atomic::Ordering::SeqCst));
            if req.method() == http::Method::PUT {
                // The app requires If-Match and checks it itself.
                let sent = req
                    .headers()
                    .get("if-match")
                    .map(|h| h.to_str().unwrap_or("").to_owned());
                return match sent {
                    None => support::status(StatusCode::PRECONDITION_REQUIRED),
                    Some(tag) if tag != current => support::status(StatusCode::PRECONDITION_FAILED),
                    Some(_) => {
                        let next = v.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        Response::builder()
                            .header("cache-control", "no-store")
                            .header("etag", format!("\"v{next}\""))
                            .body(body("saved"))
                            .unwrap()
                    }
                };
            }
            Response::builder()
                .header("cache-control", "no-store")
                .header("etag", current)
                .body(body("secret"))
                .unwrap()
        }
    })
    .await;
    let policy = "mode: Trust\nmaxAge: 60s\n";
    let sidecar = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;
    let r = get(sidecar.addr, "/secret", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.etag(), "\"v1\"");
    assert!(r.header("cache-status").contains("detail=no-store"));
    // Conditional reads: judged against the app's tag, never from the store.
    let r = get(sidecar.addr, "/secret", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.etag(), "\"v1\"");
    assert_ne!(r.header("cache-status"), "sametag; hit");
    let hits = app.hits();
    let r = get(sidecar.addr, "/secret", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        app.hits(),
        hits + 1,
        "a no-store resource is never Trust-answered"
    );
    // A write with the app's current tag goes through, If-Match intact.
    let r = send(
        sidecar.addr,
        "PUT",
        "/secret",
        &[("if-match", "\"v1\"")],
        "x",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.etag(), "\"v2\"", "the API's new tag reaches the client");
    assert_eq!(app.last_headers().get("if-match").unwrap(), "\"v1\"");
    // A stale tag is refused by the sidecar before the app sees it.
    let hits = app.hits();
    let r = send(
        sidecar.addr,
        "PUT",
        "/secret",
        &[("if-match", "\"v1\"")],
        "x",
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        app.last_method(),
        http::Method::GET,
        "only the check reached the app"
    );
    assert_eq!(app.hits(), hits + 1);
    assert_eq!(version.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn large_bodies_stream_through_untagged_without_buffering() {
    const CHUNK: usize = 4096;
    const CHUNKS: usize = 8;
    let app = App::start(|_req: http::Request<Incoming>| async move {
        // No Content-Length: the sidecar must find out by reading. Chunks
        // arrive 100 ms apart, so the whole body takes ~700 ms.
        let slow = support::slow_body(CHUNKS, CHUNK, Duration::from_millis(100));
        Response::builder()
            .header("etag", "\"app-big\"")
            .body(slow)
            .unwrap()
    })
    .await;
    let policy = "maxBodyBytes: 6Ki\n";
    let sidecar = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;

    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/big")
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("etag").is_none(), "untagged");
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut first_at = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Ok(data) = frame.into_data() {
            first_at.get_or_insert(started.elapsed());
            received.extend_from_slice(&data);
        }
    }
    let total = started.elapsed();
    assert_eq!(received.len(), CHUNK * CHUNKS, "intact");
    assert!(
        received
            .chunks(CHUNK)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8))
    );
    let first_at = first_at.unwrap();
    assert!(
        first_at + Duration::from_millis(300) < total,
        "first bytes at {first_at:?} must arrive well before the end at {total:?}"
    );
}

/// `--max-body-bytes` (the webhook's `config.sametag.dev/max-body-size`)
/// replaces the policy's `maxBodyBytes` in both directions.
#[tokio::test]
async fn max_body_bytes_option_overrides_the_policy() {
    let big = "x".repeat(64 * 1024);
    let app = App::start(move |_req: http::Request<Incoming>| {
        let big = big.clone();
        async move { Response::new(body(big)) }
    })
    .await;
    let lowered = Sidecar::start_with(
        app.addr,
        "maxBodyBytes: 1Mi\n",
        Arc::new(MemoryStore::new()),
        |c| c.options.max_body_bytes = Some(1024),
    )
    .await;
    let r = get(lowered.addr, "/big", &[]).await;
    assert!(r.headers.get("etag").is_none());
    assert!(r.header("cache-status").contains("too-large"));
    let raised = Sidecar::start_with(
        app.addr,
        "maxBodyBytes: 1Ki\n",
        Arc::new(MemoryStore::new()),
        |c| c.options.max_body_bytes = Some(1 << 20),
    )
    .await;
    get(raised.addr, "/big", &[]).await.etag();
}

#[tokio::test]
async fn declared_large_bodies_are_not_read_before_forwarding() {
    let big = "x".repeat(64 * 1024);
    let app = App::start(move |_req: http::Request<Incoming>| {
        let big = big.clone();
        async move { Response::new(body(big)) }
    })
    .await;
    let sidecar = Sidecar::start(
        app.addr,
        "maxBodyBytes: 1Ki\n",
        Arc::new(MemoryStore::new()),
    )
    .await;
    let r = get(sidecar.addr, "/big", &[]).await;
    assert_eq!(r.body.len(), 64 * 1024);
    assert!(r.headers.get("etag").is_none());
    assert!(r.header("cache-status").contains("too-large"));
    // Just under the bound: tagged.
    let sidecar = Sidecar::start(
        app.addr,
        "maxBodyBytes: 64Ki\n",
        Arc::new(MemoryStore::new()),
    )
    .await;
    let r = get(sidecar.addr, "/big", &[]).await;
    r.etag();
}

async fn a_client_leaving_mid_write_neither_loses_the_invalidation_nor_keeps_the_lock(
    kind: StoreKind,
) {
    let state = Arc::new(Mutex::new(Some("v1".to_owned())));
    let app = resource_app_with_delay(state.clone(), "a", Duration::from_millis(300)).await;
    let policy = "mode: Trust\nmaxAge: 60s\n";
    let shared = SharedStore::new(kind);
    let sidecar = Sidecar::start_with(app.addr, policy, shared.replica().await, |c| {
        c.options.lock_wait = Duration::from_millis(100);
    })
    .await;
    let v1 = get(sidecar.addr, "/doc", &[H]).await.etag();
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
        let req = format!(
            "PUT /doc HTTP/1.1\r\nHost: app.example\r\nIf-Match: {v1}\r\nContent-Length: 2\r\n\r\nv2"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    } // the client hangs up while the app is still writing
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state.lock().unwrap().as_deref(), Some("v2"));
    // The old tag is no longer trusted (the invalidation happened)...
    let r = get(sidecar.addr, "/doc", &[H, ("if-none-match", &v1)]).await;
    assert_eq!(r.status, StatusCode::OK);
    // ...and the lock is free for the next writer.
    let r = send(
        sidecar.addr,
        "PUT",
        "/doc",
        &[H, ("if-match", &r.etag())],
        "v3",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

support::over_stores! {
    trust_answers_from_the_store_without_the_app,
    trust_never_after_a_write_through_any_replica,
    trust_expires_after_max_age,
    concurrent_conditional_writers_across_replicas_one_wins,
    replicas_agree_on_etag_and_last_modified,
    a_client_leaving_mid_write_neither_loses_the_invalidation_nor_keeps_the_lock,
    a_write_slower_than_its_lease_keeps_the_lock,
    a_write_answered_504_keeps_its_lock_until_the_app_answers,
}
