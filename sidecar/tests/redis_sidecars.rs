//! Several in-process sidecars sharing one store, in front of app replicas
//! that mint their own, disagreeing validators: agreement, no stale 304 in
//! Trust and no lost update, over both stores (one `Arc<MemoryStore>`
//! shared in-process, or a real `redis-server` or `valkey-server`); and, for
//! both of those engines, outage
//! behaviour and the client-side cache (zero Redis commands for hot tags).
//! Prints the measured Redis round trips per request.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sametag_sidecar::metrics::{Metrics, Outcome};
use sametag_sidecar::policy::{Policy, PolicyHandle};
use sametag_sidecar::store::redis::RedisStore;
use sametag_sidecar::store::{Store, StoreHealth};
use sametag_sidecar::{Server, ServerConfig};
use support::redis_server::{RedisConfig, RedisServer, test_options};
use support::{SharedStore, StoreKind};

const POLICY: &str = "\
mode: Validate
routes:
  - path: /trust/**
    mode: Trust
    maxAge: 60s
";

/// The app's shared state (replicas share a database).
#[derive(Default)]
struct Backend {
    doc: Mutex<String>,
    counter: Mutex<u64>,
    hits: AtomicU64,
    minted: AtomicU64,
}

async fn app(
    n: u64,
    b: Arc<Backend>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    b.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let ok = |s: String| {
        // Every replica mints its own validators, as nginx/Apache would.
        let minted = b.minted.fetch_add(1, Ordering::SeqCst);
        let lm = SystemTime::now() - Duration::from_secs(1000 * (n + 1));
        Response::builder()
            .header("etag", format!("\"app{n}-{minted}\""))
            .header("last-modified", httpdate::fmt_http_date(lm))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(s)))
            .unwrap()
    };
    let no_content = || {
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let path = parts.uri.path();
    let resp = match (parts.method.clone(), path) {
        (Method::GET | Method::HEAD, "/doc" | "/trust/doc") => ok(b.doc.lock().unwrap().clone()),
        (Method::GET | Method::HEAD, "/trust/other") => ok("never written".to_owned()),
        (Method::PUT, "/doc" | "/trust/doc") => {
            *b.doc.lock().unwrap() = text;
            no_content()
        }
        (Method::GET, "/counter") => ok(b.counter.lock().unwrap().to_string()),
        (Method::PUT, "/counter") => match text.trim().parse() {
            Ok(v) => {
                *b.counter.lock().unwrap() = v;
                no_content()
            }
            Err(_) => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        },
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    };
    Ok(resp)
}

async fn serve_app(n: u64, b: Arc<Backend>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let b = b.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| app(n, b.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn sidecar(app: SocketAddr, store: Arc<dyn Store>) -> (SocketAddr, Arc<Metrics>) {
    let mut cfg = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        app.to_string().parse().unwrap(),
    );
    cfg.options.credential_secret = b"one secret for every replica".to_vec();
    cfg.options.upstream_timeout = Duration::from_secs(5);
    cfg.options.lock_wait = Duration::from_secs(5);
    cfg.policy = PolicyHandle::new(Policy::from_yaml(POLICY).unwrap());
    let metrics = cfg.metrics.clone();
    let server = Server::bind(cfg, store).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run(std::future::pending::<()>()));
    (addr, metrics)
}

struct Fleet {
    backend: Arc<Backend>,
    sidecars: Vec<SocketAddr>,
    /// Each sidecar's metrics and store handle.
    metrics: Vec<Arc<Metrics>>,
    replicas: Vec<Arc<dyn Store>>,
    /// The shared store; for Redis its server and every replica's handle.
    store: SharedStore,
    stores: Vec<RedisStore>,
}

async fn fleet(kind: StoreKind, n: u64) -> Fleet {
    let backend = Arc::new(Backend::default());
    *backend.doc.lock().unwrap() = "the same bytes on every replica".into();
    // The same guard for both kinds (see `store_opts`).
    let store = SharedStore::with_guard(kind, test_options(Duration::from_millis(500)).trust_guard);
    let mut sidecars = Vec::new();
    let mut metrics = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..n {
        let app = serve_app(i, backend.clone()).await;
        let replica = store.replica().await;
        let (addr, m) = sidecar(app, replica.clone()).await;
        sidecars.push(addr);
        metrics.push(m);
        replicas.push(replica);
    }
    let stores = store.redis_handles();
    Fleet {
        backend,
        sidecars,
        metrics,
        replicas,
        store,
        stores,
    }
}

impl Fleet {
    fn redis(&self) -> &RedisServer {
        self.store.redis.as_ref().expect("a Redis fleet")
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    c: &Http,
    method: Method,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{to}{path}"))
        .header("host", "app.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("request finished in time")
        .expect("request succeeded");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn total(stores: &[RedisStore], f: fn(&RedisStore) -> u64) -> u64 {
    stores.iter().map(f).sum()
}

async fn replicas_agree_and_revalidate_each_others_tags(kind: StoreKind) {
    let f = fleet(kind, 3).await;
    let c = client();
    let mut seen = Vec::new();
    for s in &f.sidecars {
        let (status, h, body) = send(&c, Method::GET, *s, "/doc", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "the same bytes on every replica");
        seen.push((header(&h, "etag"), header(&h, "last-modified")));
    }
    assert!(!seen[0].0.is_empty() && !seen[0].1.is_empty());
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "one ETag and Last-Modified: {seen:?}"
    );
    for s in &f.sidecars[1..] {
        let (status, h, _) = send(
            &c,
            Method::GET,
            *s,
            "/doc",
            &[("if-none-match", &seen[0].0)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(header(&h, "etag"), seen[0].0);
        let (status, _, _) = send(
            &c,
            Method::GET,
            *s,
            "/doc",
            &[("if-modified-since", &seen[0].1)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "date-only revalidation");
    }
}

async fn no_stale_304_in_trust_after_a_write_through_another_replica(kind: StoreKind) {
    let f = fleet(kind, 3).await;
    let c = client();
    for round in 0..5 {
        let (_, h, _) = send(&c, Method::GET, f.sidecars[0], "/trust/doc", &[], "").await;
        let old = header(&h, "etag");
        // Trusted on every replica (answered without the app after one
        // validation).
        for s in &f.sidecars {
            let (status, _, _) = send(
                &c,
                Method::GET,
                *s,
                "/trust/doc",
                &[("if-none-match", &old)],
                "",
            )
            .await;
            assert_eq!(status, StatusCode::NOT_MODIFIED);
        }
        // The guard keeps validations just after a write untrusted for a
        // moment; wait it out so trust is really established.
        tokio::time::sleep(Duration::from_millis(600)).await;
        send(
            &c,
            Method::GET,
            f.sidecars[0],
            "/trust/doc",
            &[("if-none-match", &old)],
            "",
        )
        .await;
        let hits = f.backend.hits.load(Ordering::SeqCst);
        for s in &f.sidecars {
            let (status, _, _) = send(
                &c,
                Method::GET,
                *s,
                "/trust/doc",
                &[("if-none-match", &old)],
                "",
            )
            .await;
            assert_eq!(status, StatusCode::NOT_MODIFIED);
        }
        assert_eq!(
            f.backend.hits.load(Ordering::SeqCst),
            hits,
            "trusted 304s skip the app"
        );

        let (status, _, _) = send(
            &c,
            Method::PUT,
            f.sidecars[0],
            "/trust/doc",
            &[],
            &format!("version {round}"),
        )
        .await;
        assert!(status.is_success(), "{status}");
        for s in &f.sidecars[1..] {
            let (status, h, body) = send(
                &c,
                Method::GET,
                *s,
                "/trust/doc",
                &[("if-none-match", &old)],
                "",
            )
            .await;
            assert_eq!(status, StatusCode::OK, "never a stale 304 after a write");
            assert_eq!(body, format!("version {round}"));
            assert_ne!(header(&h, "etag"), old);
        }
    }
}

async fn conditional_writes_through_three_replicas_lose_no_update(kind: StoreKind) {
    let f = fleet(kind, 3).await;
    let c = client();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (c, ok, failed) = (c.clone(), ok.clone(), failed.clone());
        let sidecars = f.sidecars.clone();
        tasks.push(tokio::spawn(async move {
            let mut others = Vec::new();
            for j in 0..8 {
                if Instant::now() > deadline {
                    break;
                }
                let get_via = sidecars[(i + j) % 3];
                let put_via = sidecars[(i + j + 1) % 3];
                let (status, h, body) = send(&c, Method::GET, get_via, "/counter", &[], "").await;
                assert_eq!(status, StatusCode::OK);
                let value: u64 = body.parse().unwrap();
                let tag = header(&h, "etag");
                let (status, h, _) = send(
                    &c,
                    Method::PUT,
                    put_via,
                    "/counter",
                    &[("if-match", &tag)],
                    &(value + 1).to_string(),
                )
                .await;
                if status.is_success() {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    others.push((status, header(&h, "retry-after")));
                }
            }
            others
        }));
    }
    for t in tasks {
        for (status, _) in t.await.unwrap() {
            assert_eq!(status, StatusCode::PRECONDITION_FAILED, "losers get 412");
        }
    }
    let counter = *f.backend.counter.lock().unwrap();
    let ok = ok.load(Ordering::SeqCst);
    assert!(ok > 0);
    assert_eq!(counter, ok, "every successful PUT counted exactly once");
    eprintln!(
        "lost-update run: {ok} PUTs won, {} got 412",
        failed.load(Ordering::SeqCst)
    );
}

/// `path`'s current tag, trusted on every replica (each conditional GET
/// answered from the store).
async fn trusted_everywhere(c: &Http, f: &Fleet, path: &str) -> String {
    let (_, h, _) = send(c, Method::GET, f.sidecars[0], path, &[], "").await;
    let tag = header(&h, "etag");
    for s in &f.sidecars {
        let mut answers = Vec::new();
        for _ in 0..5 {
            let (status, h, _) =
                send(c, Method::GET, *s, path, &[("if-none-match", &tag)], "").await;
            assert_eq!(status, StatusCode::NOT_MODIFIED);
            answers.push(header(&h, "cache-status"));
            if answers.last().is_some_and(|a| a == "sametag; hit") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            answers.last().map(String::as_str),
            Some("sametag; hit"),
            "{path} trusted on {s}: {answers:?}"
        );
    }
    tag
}

/// A counter's value in a sidecar's metrics text (0 when absent).
fn metric(m: &Metrics, store: &dyn Store, line_prefix: &str) -> u64 {
    m.encode(store)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

const LOOKUP_ERRORS: &str = "sametag_store_errors_total{op=\"lookup\"} ";

async fn redis_outage_fails_no_get_and_trust_resumes_only_after_revalidation(kind: StoreKind) {
    let mut f = fleet(kind, 3).await;
    let c = client();
    let tag = trusted_everywhere(&c, &f, "/trust/doc").await;
    // Validated before the outage and never written: only the epoch can end
    // its trust.
    let other = trusted_everywhere(&c, &f, "/trust/other").await;
    // Redis persists both validations: it comes back with its data.
    f.store.redis_mut().save();

    // Bounded GET load through all three while Redis is killed. The content
    // never changes, so every conditional GET is a 304 and every plain GET
    // carries the pre-outage tag, store or no store.
    let load = {
        let (c, sidecars, tag) = (c.clone(), f.sidecars.clone(), tag.clone());
        tokio::spawn(async move {
            let mut bad = Vec::new();
            for i in 0..300 {
                let cond: &[(&str, &str)] = if i % 2 == 0 {
                    &[("if-none-match", &tag)]
                } else {
                    &[]
                };
                let (status, h, _) =
                    send(&c, Method::GET, sidecars[i % 3], "/trust/doc", cond, "").await;
                let want = if cond.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_MODIFIED
                };
                if status != want || header(&h, "etag") != tag {
                    bad.push(format!("{i}: {status} {:?}", header(&h, "etag")));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            bad
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    f.store.redis_mut().kill();
    let bad = load.await.unwrap();
    assert!(bad.is_empty(), "GETs during the outage: {bad:?}");

    // Once every replica knows the store is down, reads take the degraded
    // path (Validate against the app, content-derived tags): the same tag
    // as before the outage, never a 304 from the store.
    let deadline = Instant::now() + Duration::from_secs(3);
    while f.stores.iter().any(|s| s.health() != StoreHealth::Down) {
        assert!(Instant::now() < deadline, "replicas notice the outage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let count = |outcome| -> u64 {
        f.metrics
            .iter()
            .map(|m| m.requests_with(&Method::GET, outcome))
            .sum()
    };
    let lookup_errors = |f: &Fleet| -> u64 {
        f.metrics
            .iter()
            .zip(&f.replicas)
            .map(|(m, s)| metric(m, s.as_ref(), LOOKUP_ERRORS))
            .sum()
    };
    let (trusted0, validated0, errors0) = (
        count(Outcome::trusted_not_modified),
        count(Outcome::not_modified),
        lookup_errors(&f),
    );
    let hits0 = f.backend.hits.load(Ordering::SeqCst);
    let degraded = 30;
    for i in 0..degraded {
        let (status, h, _) = send(
            &c,
            Method::GET,
            f.sidecars[i % 3],
            "/trust/doc",
            &[("if-none-match", &tag)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(
            header(&h, "etag"),
            tag,
            "the degraded tag is the pre-outage one"
        );
        let cache_status = header(&h, "cache-status");
        assert!(cache_status.contains("store-unavailable"), "{cache_status}");
    }
    assert_eq!(
        count(Outcome::trusted_not_modified),
        trusted0,
        "no 304 from the store"
    );
    assert_eq!(count(Outcome::not_modified), validated0 + degraded as u64);
    assert_eq!(
        f.backend.hits.load(Ordering::SeqCst),
        hits0 + degraded as u64,
        "every degraded read asked the app"
    );
    assert!(
        lookup_errors(&f) >= errors0 + degraded as u64,
        "each degraded read counted its failed lookup"
    );

    // Conditional writes fail closed.
    for s in &f.sidecars {
        let t0 = Instant::now();
        let (status, h, _) = send(
            &c,
            Method::PUT,
            *s,
            "/trust/doc",
            &[("if-match", &tag)],
            "x",
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!header(&h, "retry-after").is_empty());
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
    // An unconditional write to the Trust path cannot be invalidated, so
    // it fails closed too...
    let (status, _, _) = send(&c, Method::PUT, f.sidecars[0], "/trust/doc", &[], "lost").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(*f.backend.doc.lock().unwrap(), "lost");
    // ...while one to a Validate path goes through (the app's state behind
    // /trust/doc changes with it); its invalidation is lost.
    let (status, _, _) = send(
        &c,
        Method::PUT,
        f.sidecars[0],
        "/doc",
        &[],
        "changed in the outage",
    )
    .await;
    assert!(status.is_success());

    // Back with its data: both validations are in Redis again.
    f.store.redis_mut().restart();
    assert!(f.redis().dbsize() > 0, "redis kept its data");
    for s in &f.stores {
        assert!(s.wait_up(Duration::from_secs(5)).await);
    }
    // Every replica found a restarted Redis (a new run id) and bumped the
    // epoch once (the lost invalidation rides on the same bump).
    assert_eq!(total(&f.stores, |s| s.metrics().epoch_bumps.get()), 3);
    // Nothing from before the outage is trusted: the old tag reaches the
    // app and gets the new representation (a fresh validation)...
    let hits = f.backend.hits.load(Ordering::SeqCst);
    let (status, h, body) = send(
        &c,
        Method::GET,
        f.sidecars[2],
        "/trust/doc",
        &[("if-none-match", &tag)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "changed in the outage");
    assert_eq!(
        f.backend.hits.load(Ordering::SeqCst),
        hits + 1,
        "revalidated with the app"
    );
    let fresh = header(&h, "etag");
    assert_ne!(fresh, tag);
    // ...nor the resource nobody wrote: its unchanged tag is a 304, but
    // from the app (which validates it afresh).
    let hits = f.backend.hits.load(Ordering::SeqCst);
    let (status, h, _) = send(
        &c,
        Method::GET,
        f.sidecars[1],
        "/trust/other",
        &[("if-none-match", &other)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_ne!(
        header(&h, "cache-status"),
        "sametag; hit",
        "a never-written resource validated before the outage is not trusted"
    );
    assert_eq!(f.backend.hits.load(Ordering::SeqCst), hits + 1);
    // ...and only after it is Trust back, on every replica.
    let hits = f.backend.hits.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for s in &f.sidecars {
        let (status, h, _) = send(
            &c,
            Method::GET,
            *s,
            "/trust/doc",
            &[("if-none-match", &fresh)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        statuses.push(header(&h, "cache-status"));
    }
    assert_eq!(
        f.backend.hits.load(Ordering::SeqCst),
        hits,
        "trusted again: {statuses:?}"
    );
}

async fn a_redis_restarted_with_its_data_ends_trust(kind: StoreKind) {
    // No write and no lost invalidation: Redis restarts (a new run id) and
    // loads its dump, validations included. Invalidations the old process
    // acknowledged after its last save (or a failover's replication lag)
    // could be missing, so nothing validated before is trusted.
    let mut f = fleet(kind, 3).await;
    let c = client();
    let doc = trusted_everywhere(&c, &f, "/trust/doc").await;
    let other = trusted_everywhere(&c, &f, "/trust/other").await;
    let run_id = f.redis().run_id();
    f.store.redis_mut().restart_keeping_data();
    assert_ne!(f.redis().run_id(), run_id);
    assert!(f.redis().dbsize() > 0, "redis kept its data");
    // Every replica's connections broke; let them reconnect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &f.stores {
        assert!(s.wait_up(Duration::from_secs(5)).await);
    }
    // The first conditional GET of each resource after the restart asks the
    // app (a 304 all the same: the content did not change).
    let mut trusted = Vec::new();
    for (i, (path, tag)) in [("/trust/doc", &doc), ("/trust/other", &other)]
        .into_iter()
        .enumerate()
    {
        let hits = f.backend.hits.load(Ordering::SeqCst);
        let (status, h, _) = send(
            &c,
            Method::GET,
            f.sidecars[i + 1],
            path,
            &[("if-none-match", tag)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        if f.backend.hits.load(Ordering::SeqCst) == hits {
            trusted.push(format!("{path}: {}", header(&h, "cache-status")));
        }
    }
    assert!(
        trusted.is_empty(),
        "trusted after the restart without the app: {trusted:?}"
    );
}

async fn wrong_password_degrades_reads_and_refuses_conditional_writes(kind: StoreKind) {
    let redis = RedisServer::with(RedisConfig {
        password: Some("right".into()),
        engine: kind.engine().expect("a Redis-protocol store"),
        ..Default::default()
    });
    let backend = Arc::new(Backend::default());
    *backend.doc.lock().unwrap() = "doc".into();
    let app = serve_app(0, backend.clone()).await;
    let store = RedisStore::connect(
        &redis.url_with_password("wrong"),
        "pw",
        test_options(Duration::from_millis(500)),
    )
    .unwrap();
    let (s, _) = sidecar(app, Arc::new(store.clone())).await;
    let c = client();
    let (status, h, _) = send(&c, Method::GET, s, "/doc", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let tag = header(&h, "etag");
    assert!(!tag.is_empty(), "content-derived tag without the store");
    let (status, _, _) = send(&c, Method::GET, s, "/doc", &[("if-none-match", &tag)], "").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, _, _) = send(&c, Method::PUT, s, "/doc", &[("if-match", &tag)], "x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(redis.keys().is_empty());
}

async fn hot_tags_cost_no_redis_commands_and_round_trips_stay_low(kind: StoreKind) {
    let f = fleet(kind, 3).await;
    let redis = f.redis();
    let c = client();
    let (_, h, _) = send(&c, Method::GET, f.sidecars[0], "/trust/doc", &[], "").await;
    let tag = header(&h, "etag");
    // One validation per replica, then everything is hot.
    for s in &f.sidecars {
        send(
            &c,
            Method::GET,
            *s,
            "/trust/doc",
            &[("if-none-match", &tag)],
            "",
        )
        .await;
        send(&c, Method::GET, *s, "/doc", &[], "").await;
        send(&c, Method::GET, *s, "/doc", &[], "").await;
    }
    // Once the warm-up's write pushes have arrived (a read racing one is
    // conservatively not cached), one more round fills every cache.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for s in &f.sidecars {
        send(
            &c,
            Method::GET,
            *s,
            "/trust/doc",
            &[("if-none-match", &tag)],
            "",
        )
        .await;
        send(&c, Method::GET, *s, "/doc", &[], "").await;
    }
    let calls0 = redis.data_calls();
    let trips0 = total(&f.stores, |s| s.metrics().round_trips.get());
    let hot = 300;
    for i in 0..hot {
        let (status, _, _) = send(
            &c,
            Method::GET,
            f.sidecars[i % 3],
            "/trust/doc",
            &[("if-none-match", &tag)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
    }
    assert_eq!(
        redis.data_calls() - calls0,
        0,
        "hot trusted tags: no Redis commands"
    );
    // Each trusted hit costs one PING, the barrier that orders it after
    // every invalidation sent before it (no stale 304), and nothing else.
    let hot_trips = total(&f.stores, |s| s.metrics().round_trips.get()) - trips0;
    assert_eq!(hot_trips, hot as u64, "one barrier per trusted hit");

    // Validate-mode hot reads: the app is asked, the store is not.
    let trips0 = total(&f.stores, |s| s.metrics().round_trips.get());
    for i in 0..hot {
        let (status, _, _) = send(&c, Method::GET, f.sidecars[i % 3], "/doc", &[], "").await;
        assert_eq!(status, StatusCode::OK);
    }
    let validate_trips = total(&f.stores, |s| s.metrics().round_trips.get()) - trips0;

    // A write through replica 1 is honoured by the next request on 2 and 3.
    send(&c, Method::PUT, f.sidecars[0], "/trust/doc", &[], "new").await;
    for s in &f.sidecars[1..] {
        let (status, _, body) = send(
            &c,
            Method::GET,
            *s,
            "/trust/doc",
            &[("if-none-match", &tag)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "new");
    }

    // A mixed run: reads of both routes, conditional reads, some writes.
    let trips0 = total(&f.stores, |s| s.metrics().round_trips.get());
    let mixed = 600;
    let mut tag = String::new();
    for i in 0..mixed {
        let s = f.sidecars[i % 3];
        if i % 50 == 0 {
            send(&c, Method::PUT, s, "/trust/doc", &[], &format!("v{i}")).await;
        } else if i % 3 == 0 {
            let (_, h, _) = send(&c, Method::GET, s, "/trust/doc", &[], "").await;
            tag = header(&h, "etag");
        } else if i % 3 == 1 {
            send(
                &c,
                Method::GET,
                s,
                "/trust/doc",
                &[("if-none-match", &tag)],
                "",
            )
            .await;
        } else {
            send(&c, Method::GET, s, "/doc", &[], "").await;
        }
    }
    let mixed_trips = total(&f.stores, |s| s.metrics().round_trips.get()) - trips0;
    let avg = mixed_trips as f64 / mixed as f64;
    eprintln!(
        "redis round trips per request: hot trusted tags {:.3}, hot Validate reads {:.3}, mixed run {avg:.3} ({mixed_trips} for {mixed} requests)",
        hot_trips as f64 / hot as f64,
        validate_trips as f64 / hot as f64,
    );
    assert!(
        validate_trips <= 3,
        "hot Validate reads cost {validate_trips} round trips"
    );
    assert!(
        avg <= 1.0,
        "at most one round trip per request on average: {avg}"
    );
}

support::over_stores! {
    replicas_agree_and_revalidate_each_others_tags,
    no_stale_304_in_trust_after_a_write_through_another_replica,
    conditional_writes_through_three_replicas_lose_no_update,
}

support::over_engines! {
    redis_outage_fails_no_get_and_trust_resumes_only_after_revalidation,
    a_redis_restarted_with_its_data_ends_trust,
    wrong_password_degrades_reads_and_refuses_conditional_writes,
    hot_tags_cost_no_redis_commands_and_round_trips_stay_low,
}
