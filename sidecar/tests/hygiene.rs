//! Connection hygiene on real sockets: silent sockets, half an HTTP/2
//! preface and half a header section are closed within the header-read
//! timeout (proxy and admin ports) while the process stays small; idle
//! connections are closed; a trickling request body gets 408 and its
//! upstream request is aborted; the connection cap refuses the next one.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sametag_sidecar::proxy::Body;
use sametag_sidecar::store::memory::MemoryStore;
use support::{App, Binary, Sidecar, body, ensure_fd_limit, get, raw_status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first bytes of an HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read until the peer closes (EOF or reset); `true` if it did by `deadline`.
async fn closed_by(mut stream: TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (408 to half a header section, h2 SETTINGS/GOAWAY)
            // is fine; the close must follow.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_partial_connections_are_closed_within_the_header_timeout() {
    ensure_fd_limit(4096);
    let app = App::fixed("doc", "\"app\"").await;
    let sidecar = Binary::start(app.addr, &["--header-read-timeout", "500ms"]);
    let rss_before = sidecar.memory_kib("VmRSS");

    // 1,000 silent sockets, 100 that stop inside the HTTP/2 preface, 100
    // after a whole preface, 100 inside an HTTP/1.1 header section; and a
    // few of each on the admin port.
    let mut sockets = Vec::new();
    let kinds: [(&[u8], usize); 4] = [
        (b"", 1000),
        (&H2_PREFACE[..10], 100),
        (H2_PREFACE, 100),
        (b"GET /doc HTTP/1.1\r\nHost: a\r\nX-Half: ", 100),
    ];
    for (bytes, count) in kinds {
        for i in 0..count {
            let target = if i < 5 { sidecar.admin } else { sidecar.addr };
            let mut stream = TcpStream::connect(target).await.unwrap();
            stream.write_all(bytes).await.unwrap();
            sockets.push(stream);
        }
    }
    let opened = Instant::now();
    let rss_loaded = sidecar.memory_kib("VmRSS");

    // All closed by the server: the timeout is 500 ms; allow 10 times that
    // on a busy machine (before the fix, none ever was).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let total = sockets.len();
    let waits: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(closed_by(s, deadline)))
        .collect();
    let mut open = 0;
    for wait in waits {
        if !wait.await.unwrap() {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "{open} of {total} connections still open {:?} after connecting",
        opened.elapsed()
    );
    let timed_out = sidecar
        .metric("sametag_connections_timed_out_total{listener=\"proxy\",reason=\"first-request\"}")
        .await;
    assert!(timed_out >= 1200.0, "{timed_out}");

    // Bounded memory: the process, not only its sockets.
    let peak = sidecar.memory_kib("VmHWM");
    eprintln!(
        "RSS before {rss_before} KiB, with {total} connections {rss_loaded} KiB, peak {peak} KiB"
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");

    // And it still serves.
    assert_eq!(get(sidecar.addr, "/doc", &[]).await.status, StatusCode::OK);
}

/// The `sametag_connections_timed_out_total` lines of the proxy listener.
fn timed_out(sidecar: &Sidecar) -> String {
    sidecar
        .metrics
        .encode(&MemoryStore::new())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("sametag_connections_timed_out_total{listener=\"proxy\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One HTTP/1.1 GET on `stream`, keeping the connection; the status code.
async fn get_on(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /doc HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    raw_status(&String::from_utf8_lossy(&buf[..n]))
}

#[tokio::test]
async fn idle_connections_are_closed_http1_and_http2() {
    let app = App::fixed("doc", "\"app\"").await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.header_read_timeout = Duration::from_secs(1);
        c.options.idle_timeout = Duration::from_millis(500);
    })
    .await;

    // HTTP/2: requests 300 ms apart keep it open past the idle timeout;
    // then nothing, and the server ends the connection (GOAWAY) so the
    // client's connection task finishes.
    let stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let h2_conn = tokio::spawn(conn);
    for _ in 0..5 {
        let req = Request::get(format!("http://{}/doc", sidecar.addr))
            .body(body(""))
            .unwrap();
        let response = h2.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), h2_conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open after 5s");

    // HTTP/1.1 keep-alive: one request, then nothing.
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    assert_eq!(get_on(&mut stream).await, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(
        closed_by(stream, deadline).await,
        "idle HTTP/1.1 connection"
    );
    let closed = timed_out(&sidecar);
    assert!(closed.contains("reason=\"idle\"} 2"), "{closed}");
}

#[tokio::test]
async fn http1_keep_alive_outlives_the_header_timeout_but_not_half_a_next_head() {
    let app = App::fixed("doc", "\"app\"").await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.header_read_timeout = Duration::from_millis(300);
        c.options.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    assert_eq!(get_on(&mut stream).await, 200);
    // Idle for four header timeouts: a load balancer's pooled connection
    // must still be usable (hyper's own header timer would have closed it).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_on(&mut stream).await, 200);
    // Half of the next head, then silence: closed long before the idle
    // timeout (30 s), within twice the header timeout plus slack.
    stream.write_all(b"GET /doc HTTP/1.1\r\nHo").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(closed_by(stream, deadline).await, "half a head kept open");
    let closed = timed_out(&sidecar);
    assert!(closed.contains("reason=\"header\"} 1"), "{closed}");
}

#[tokio::test]
async fn a_trickling_request_body_gets_408_and_the_app_request_is_aborted() {
    // The app reads the whole body before answering, like most apps.
    let body_failed = Arc::new(AtomicUsize::new(0));
    let failed = body_failed.clone();
    let app = App::start(move |req: Request<Incoming>| {
        let failed = failed.clone();
        async move {
            match req.into_body().collect().await {
                Ok(b) => Response::new(body(b.to_bytes())),
                Err(_) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    Response::new(body("unreachable"))
                }
            }
        }
    })
    .await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.body_read_timeout = Duration::from_millis(500);
        c.options.upstream_timeout = Duration::from_secs(10);
    })
    .await;

    // HTTP/1.1: 10 of 100 promised bytes, then silence.
    for target in ["/doc", "/doc?If-Match"] {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        let conditional = if target.ends_with("If-Match") {
            "If-Match: *\r\n"
        } else {
            ""
        };
        stream
            .write_all(
                format!(
                    "PUT {target} HTTP/1.1\r\nHost: a\r\n{conditional}Content-Length: 100\r\n\r\n0123456789"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(read.is_ok(), "connection still open after 8s: {text}");
        assert_eq!(raw_status(&text), 408, "{target}: {text}");
        assert!(started.elapsed() < Duration::from_secs(8));
    }

    // HTTP/2: a stream whose body stalls gets 408 on that stream.
    let stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
    let req = Request::put(format!("http://{}/doc", sidecar.addr))
        .body(support::channel_body(rx))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(8), h2.send_request(req))
        .await
        .expect("an answer within 8s")
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    drop(tx);

    // Each app request saw its body fail: the sidecar aborted it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while body_failed.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body_failed.load(Ordering::SeqCst), 3);
    assert_eq!(
        sidecar.metrics.requests_with(
            &http::Method::PUT,
            sametag_sidecar::metrics::Outcome::request_timeout
        ),
        3
    );
}

#[tokio::test]
async fn the_connection_cap_refuses_the_next_connection() {
    let app = App::fixed("doc", "\"app\"").await;
    let sidecar = Sidecar::start_with(app.addr, "", Arc::new(MemoryStore::new()), |c| {
        c.options.max_connections = 4;
    })
    .await;
    // Four kept-alive connections, each having been served.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        stream
            .write_all(b"GET /doc HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    // The fifth is closed at once, without an answer.
    let mut fifth = TcpStream::connect(sidecar.addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /doc HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fifth.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the fifth connection was kept open");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let refused = sidecar
        .metrics
        .encode(&MemoryStore::new())
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("sametag_connections_refused_total{listener=\"proxy\"} ")
                .map(str::to_owned)
        });
    assert_eq!(refused.as_deref(), Some("1"));

    // One closes: a new connection is served again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /doc HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
