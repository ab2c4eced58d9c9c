//! The edges: app down (502), app slow (504), oversized and malformed
//! requests, huge tag lists, invalid UTF-8, hop-by-hop headers, protocol
//! upgrades, h2c, and the admin endpoints.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sametag_sidecar::admin::Admin;
use sametag_sidecar::metrics::Outcome;
use sametag_sidecar::store::memory::MemoryStore;
use sametag_sidecar::store::{
    Entry, Labels, Purge, PurgeReport, Resource, ResourceKey, Store, StoreError, StoreHealth,
    VariantKey, WriteLock,
};
use sametag_sidecar::tag::EntityTag;
use support::{App, Sidecar, body, get, raw, raw_status, send, send_raw_values};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn app_down_is_502_with_a_reason() {
    // A port nothing listens on: bind, note it, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sidecar = Sidecar::validate(addr).await;
    for method in ["GET", "HEAD", "PUT"] {
        let r = send(sidecar.addr, method, "/x", &[], "").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{method}");
        if method != "HEAD" {
            assert!(r.text().contains("refused"), "{}", r.text());
        }
    }
    assert_eq!(
        sidecar
            .metrics
            .requests_with(&http::Method::GET, Outcome::upstream_error),
        1
    );
}

#[tokio::test]
async fn app_reset_mid_response_is_502() {
    // Accepts, reads the request, and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let sidecar = Sidecar::validate(addr).await;
    let r = get(sidecar.addr, "/x", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn slow_app_is_504() {
    let app = App::start(|_req: http::Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(body("late"))
    })
    .await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let started = Instant::now();
    let r = get(sidecar.addr, "/x", &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    // A body that trickles slower than the timeout while being tagged: 504 too.
    let app = App::start(|_req: http::Request<Incoming>| async {
        Response::new(support::slow_body(3, 10, Duration::from_millis(300)))
    })
    .await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let r = get(sidecar.addr, "/x", &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn oversized_header_section_is_431() {
    let app = App::fixed("ok", "\"x\"").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let big = "a".repeat(200 * 1024);
    let response = raw(
        sidecar.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 431, "{response:.200}");
    // Too many header fields: 431 as well.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = raw(
        sidecar.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 431, "{response:.200}");
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn slow_client_header_section_times_out() {
    let app = App::fixed("ok", "\"x\"").await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the sidecar hung up"
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn malformed_preconditions() {
    let app = App::fixed("doc", "\"x\"").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let tag = get(sidecar.addr, "/doc", &[]).await.etag();
    // A garbled If-None-Match is ignored on GET: the full 200 is always safe.
    for value in ["nope", "\"unterminated", "W/", "\"a\" \"b\"", "*, \"a\""] {
        let r = get(sidecar.addr, "/doc", &[("if-none-match", value)]).await;
        assert_eq!(r.status, StatusCode::OK, "If-None-Match: {value}");
    }
    // A garbled If-Match can match nothing: 412, on reads and writes.
    for method in ["GET", "PUT", "DELETE"] {
        let r = send(
            sidecar.addr,
            method,
            "/doc",
            &[("if-match", "garbage")],
            "x",
        )
        .await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{method}");
    }
    // Writes never reached the app.
    assert_eq!(app.last_method(), http::Method::GET);
    // The valid tag still works next to all that.
    let r = get(sidecar.addr, "/doc", &[("if-none-match", &tag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn ten_thousand_entry_tag_lists() {
    let app = App::fixed("doc", "\"x\"").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let tag = get(sidecar.addr, "/doc", &[]).await.etag();
    let mut list: Vec<String> = (0..10_000).map(|i| format!("\"{i}\"")).collect();
    list.push(tag.clone());
    let list = list.join(",");
    let started = Instant::now();
    // Past the parser's bound (1024 entries) the field is treated as
    // malformed: ignored on GET (200, never a wrong 304)...
    let r = get(sidecar.addr, "/doc", &[("if-none-match", &list)]).await;
    assert_eq!(r.status, StatusCode::OK);
    // ...and failing closed on writes.
    let r = send(sidecar.addr, "PUT", "/doc", &[("if-match", &list)], "x").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(started.elapsed() < Duration::from_secs(2));
    // 1000 entries are within bounds and evaluated.
    let mut list: Vec<String> = (0..1000).map(|i| format!("\"{i}\"")).collect();
    list.push(tag);
    let r = get(sidecar.addr, "/doc", &[("if-none-match", &list.join(", "))]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn invalid_utf8_header_values() {
    let app = App::fixed("doc", "\"x\"").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let bad: &[u8] = b"\"caf\xe9\xff\"";
    // In a precondition: parsed as obs-text, matches nothing -> full 200.
    let r = send_raw_values(
        sidecar.addr,
        "GET",
        "/doc",
        &[("if-none-match", bad)],
        "",
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // In an ordinary field: passed to the app byte for byte.
    let r = send_raw_values(sidecar.addr, "GET", "/doc", &[("x-name", bad)], "", false).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.last_headers().get("x-name").unwrap().as_bytes(), bad);
    // In Host: a clear 400, the app is not asked.
    let hits = app.hits();
    let response = raw(
        sidecar.addr,
        b"GET /doc HTTP/1.1\r\nHost: caf\xe9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 400, "{response}");
    assert_eq!(app.hits(), hits);
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let app = App::start(|_req: http::Request<Incoming>| async {
        Response::builder()
            .header("connection", "x-app-hop")
            .header("x-app-hop", "1")
            .header("x-app-kept", "1")
            .body(body("ok"))
            .unwrap()
    })
    .await;
    let sidecar = Sidecar::validate(app.addr).await;
    let r = get(
        sidecar.addr,
        "/",
        &[
            ("connection", "x-client-hop"),
            ("x-client-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eDp5"),
            ("x-client-kept", "1"),
        ],
    )
    .await;
    let seen = app.last_headers();
    for gone in ["x-client-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the app: {seen:?}");
    }
    assert!(seen.get("x-client-kept").is_some());
    assert_eq!(seen.get("via").unwrap(), "1.1 sametag");
    assert!(r.headers.get("x-app-hop").is_none());
    assert!(r.headers.get("x-app-kept").is_some());
    assert_eq!(r.header("via"), "1.1 sametag");
}

#[tokio::test]
async fn websocket_upgrades_are_spliced() {
    // The app switches to WebSocket and echoes bytes.
    let app = App::start(|mut req: http::Request<Incoming>| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            loop {
                let n = match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(body(""))
            .unwrap()
    })
    .await;
    let sidecar = Sidecar::validate(app.addr).await;
    let mut stream = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let seen = app.last_headers();
    assert_eq!(seen.get("upgrade").unwrap(), "websocket");
    assert!(seen.get("sec-websocket-key").is_some());
    for msg in [&b"hello"[..], b"binary \x00\xff bytes"] {
        stream.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
}

#[tokio::test]
async fn h2c_requests_are_tagged_and_validated() {
    let app = App::fixed("over h2", "\"x\"").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let r = send_raw_values(sidecar.addr, "GET", "/doc", &[], "", true).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "over h2");
    let tag = r.etag();
    // The app speaks HTTP/1.1 and got the authority as Host.
    assert!(app.last_headers().get("host").is_some());
    assert_eq!(app.last_headers().get("via").unwrap(), "2 sametag");
    let r = send_raw_values(
        sidecar.addr,
        "GET",
        "/doc",
        &[("if-none-match", tag.as_bytes())],
        "",
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    // Same tag over HTTP/1.1.
    assert_eq!(get(sidecar.addr, "/doc", &[]).await.etag(), tag);
}

#[tokio::test]
async fn admin_endpoints_report_health_and_metrics() {
    let app = App::fixed("doc", "\"x\"").await;
    let store = Arc::new(MemoryStore::new());
    let sidecar = Sidecar::start(app.addr, "", store.clone()).await;
    let tag = get(sidecar.addr, "/doc", &[]).await.etag();
    get(sidecar.addr, "/doc", &[("if-none-match", &tag)]).await;
    send(
        sidecar.addr,
        "PUT",
        "/locked",
        &[("if-match", "\"no\"")],
        "",
    )
    .await;

    let ready = Arc::new(AtomicBool::new(true));
    let admin = Admin {
        metrics: sidecar.metrics.clone(),
        store,
        ready: ready.clone(),
        purge_token_file: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener, std::future::pending()));

    assert_eq!(get(addr, "/healthz", &[]).await.status, StatusCode::OK);
    assert_eq!(get(addr, "/readyz", &[]).await.status, StatusCode::OK);
    let m = get(addr, "/metrics", &[]).await.text();
    for line in [
        "sametag_requests_total{method=\"GET\",outcome=\"tagged_200\"} 1",
        "sametag_requests_total{method=\"GET\",outcome=\"not_modified\"} 1",
        "sametag_requests_total{method=\"PUT\",outcome=\"precondition_failed\"} 1",
        "sametag_not_modified_saved_bytes_total 3",
        "sametag_store_up 1",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    assert!(m.contains("sametag_store_operation_duration_seconds_bucket"));
    ready.store(false, std::sync::atomic::Ordering::Release);
    assert_eq!(
        get(addr, "/readyz", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(addr, "/nope", &[]).await.status, StatusCode::NOT_FOUND);
}

/// A store that is always down, as Redis is during an outage.
struct DownStore;

#[async_trait::async_trait]
impl Store for DownStore {
    async fn lookup(
        &self,
        _: &ResourceKey,
        _: &[Arc<str>],
    ) -> Result<Option<Resource>, StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    async fn record_with(
        &self,
        _: &ResourceKey,
        _: &[String],
        _: &VariantKey,
        _: &EntityTag,
        _: bool,
        _: &Labels,
    ) -> Result<Entry, StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    async fn invalidate(&self, _: &ResourceKey, _: &[Arc<str>]) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    async fn purge(&self, _: &Purge) -> Result<PurgeReport, StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    async fn try_lock(
        &self,
        _: &ResourceKey,
        _: Duration,
    ) -> Result<Option<WriteLock>, StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    async fn renew(&self, _: &WriteLock, _: Duration) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    async fn unlock(&self, _: &WriteLock) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }
    fn health(&self) -> StoreHealth {
        StoreHealth::Down
    }
}

#[tokio::test]
async fn store_down_reads_degrade_and_conditional_writes_fail_closed() {
    let state = Arc::new(std::sync::Mutex::new(Some("v1".to_owned())));
    let app = support::resource_app(state.clone(), "a").await;
    let policy = "mode: Trust\nmaxAge: 60s\n";
    let sidecar = Sidecar::start_with(app.addr, policy, Arc::new(DownStore), |c| {
        c.options.retry_after = Duration::from_secs(3);
    })
    .await;
    // Reads never fail: the tag is still content-derived (the same on every
    // replica), Last-Modified is the app's, and a match is still a 304.
    // The tag a replica whose store is up gives the same bytes.
    let healthy = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;
    let up_tag = get(healthy.addr, "/doc", &[]).await.etag();
    let r = get(sidecar.addr, "/doc", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let tag = r.etag();
    assert_eq!(
        tag, up_tag,
        "the degraded tag is the one the store would hold"
    );
    assert_eq!(r.header("last-modified"), "Tue, 01 Jan 2019 00:00:00 GMT");
    assert!(r.header("cache-status").contains("store-unavailable"));
    let r = get(sidecar.addr, "/doc", &[("if-none-match", &tag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.header("cache-status").contains("store-unavailable"));
    let head = send(sidecar.addr, "HEAD", "/doc", &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.etag(), tag);
    // All of them took the degraded path: the app answered, nothing came
    // from the store.
    let m = &sidecar.metrics;
    assert_eq!(
        m.requests_with(&http::Method::GET, Outcome::trusted_not_modified),
        0
    );
    assert_eq!(
        m.requests_with(&http::Method::GET, Outcome::not_modified),
        1
    );
    assert_eq!(app.hits(), 1 + 3, "one for the healthy replica, three here");
    // A conditional write cannot be serialised: 503 with Retry-After.
    let r = send(sidecar.addr, "PUT", "/doc", &[("if-match", &tag)], "v2").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), "3");
    assert_eq!(state.lock().unwrap().as_deref(), Some("v1"));
    // An unconditional write to a path a Trust route depends on cannot be
    // invalidated, so it is not forwarded either (trusted 304s elsewhere
    // would outlive it): 503, the app untouched.
    let r = send(sidecar.addr, "PUT", "/doc", &[], "v2").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), "3");
    assert_eq!(state.lock().unwrap().as_deref(), Some("v1"));
    // Where nothing is trusted (Validate), it needs no lock and goes through.
    let validate =
        Sidecar::start_with(app.addr, "mode: Validate\n", Arc::new(DownStore), |_| {}).await;
    let r = send(validate.addr, "PUT", "/doc", &[], "v2").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(state.lock().unwrap().as_deref(), Some("v2"));
}
