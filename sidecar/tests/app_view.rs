//! What the app sees and what passes it untagged, on real sockets: the
//! client's address in `X-Forwarded-For` on every kind of request (and the
//! flag that turns it off), no per-replica validators on untagged responses,
//! and `Range` reaching an app that serves a representation too large to tag.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use sametag_sidecar::store::memory::MemoryStore;
use support::{App, Sidecar, body, get, send, send_raw_values};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What the app recorded of one request: method, path, X-Forwarded-For,
/// X-Forwarded-Proto ("" when absent).
type Seen = (Method, String, String, String);

/// An app that records the forwarded headers of every request; GET answers
/// a fixed document with its own validators, anything else 204.
async fn recording_app() -> (App, Arc<Mutex<Vec<Seen>>>) {
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = log.clone();
    let app = App::start(move |req: http::Request<Incoming>| {
        let field = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        record.lock().unwrap().push((
            req.method().clone(),
            req.uri().path().to_owned(),
            field("x-forwarded-for"),
            field("x-forwarded-proto"),
        ));
        let get = req.method() == Method::GET;
        async move {
            if get {
                Response::builder()
                    .header("content-type", "text/plain")
                    .header("etag", "\"app-own\"")
                    .body(body("the document"))
                    .unwrap()
            } else {
                support::status(StatusCode::NO_CONTENT)
            }
        }
    })
    .await;
    (app, log)
}

/// One HTTP/1.1 request from a client socket bound to `source`, read to the
/// end (`Connection: close`); the status code.
async fn raw_from(source: &str, to: SocketAddr, head: &str) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let request = format!("{head}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out));
    read.await.expect("the response within 5s").unwrap();
    support::raw_status(&String::from_utf8_lossy(&out))
}

fn take(log: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    std::mem::take(&mut *log.lock().unwrap())
}

const POLICY: &str = "routes:\n  - path: /raw/**\n    mode: Bypass\n";

#[tokio::test]
async fn the_app_learns_the_client_address_on_every_kind_of_request() {
    let (app, log) = recording_app().await;
    let sidecar = Sidecar::start(app.addr, POLICY, Arc::new(MemoryStore::new())).await;
    let doc = (Method::GET, "/doc".to_owned());

    // Two clients, two addresses: each sees its own.
    for source in ["127.0.0.1", "127.0.0.2"] {
        let head = format!("GET /doc HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer {source}\r\n");
        assert_eq!(raw_from(source, sidecar.addr, &head).await, 200);
        let seen = take(&log);
        assert_eq!(
            seen,
            [(
                doc.0.clone(),
                doc.1.clone(),
                source.to_owned(),
                "http".to_owned()
            )]
        );
    }

    // A chain built by proxies in front: appended to, and their scheme kept.
    let head = "GET /doc HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n\
                X-Forwarded-For: 10.4.5.6\r\nX-Forwarded-Proto: https\r\n";
    assert_eq!(raw_from("127.0.0.2", sidecar.addr, head).await, 200);
    assert_eq!(
        take(&log),
        [(
            doc.0.clone(),
            doc.1.clone(),
            "203.0.113.9, 10.1.2.3, 10.4.5.6, 127.0.0.2".to_owned(),
            "https".to_owned()
        )]
    );

    // A conditional write: the internal GET that judges it and the write.
    let tag = get(sidecar.addr, "/doc", &[]).await.etag();
    take(&log);
    let head =
        format!("PUT /doc HTTP/1.1\r\nHost: shop\r\nIf-Match: {tag}\r\nContent-Length: 0\r\n");
    assert_eq!(raw_from("127.0.0.2", sidecar.addr, &head).await, 204);
    let seen = take(&log);
    let kinds: Vec<(Method, &str)> = seen.iter().map(|s| (s.0.clone(), s.2.as_str())).collect();
    assert_eq!(
        kinds,
        [(Method::GET, "127.0.0.2"), (Method::PUT, "127.0.0.2")]
    );

    // Bypass, an unconditional write, and HTTP/2.
    let head = "GET /raw/x HTTP/1.1\r\nHost: shop\r\n";
    assert_eq!(raw_from("127.0.0.2", sidecar.addr, head).await, 200);
    let head = "POST /doc HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n";
    assert_eq!(raw_from("127.0.0.2", sidecar.addr, head).await, 204);
    let r = send_raw_values(sidecar.addr, "GET", "/doc", &[], "", true).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen: Vec<(String, String)> = take(&log).into_iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(
        seen,
        [
            ("/raw/x".to_owned(), "127.0.0.2".to_owned()),
            ("/doc".to_owned(), "127.0.0.2".to_owned()),
            ("/doc".to_owned(), "127.0.0.1".to_owned()),
        ]
    );
}

/// Read one response (head and `Content-Length` body) from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    head
}

#[tokio::test]
async fn concurrent_clients_each_get_their_own_address() {
    // Upstream connections move between client connections (a lane's
    // connection returns to the idle stack): the address must travel with
    // each request, not with the connection to the app.
    let (app, log) = recording_app().await;
    let sidecar = Sidecar::validate(app.addr).await;
    let clients = (2..18).map(|i| {
        let to = sidecar.addr;
        tokio::spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            socket
                .bind(format!("127.0.0.{i}:0").parse().unwrap())
                .unwrap();
            let mut stream = socket.connect(to).await.unwrap();
            for j in 0..5 {
                let request = format!("GET /c/{i}/{j} HTTP/1.1\r\nHost: shop\r\n\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                let head = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
                    .await
                    .expect("a response within 5s");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    let seen = take(&log);
    assert_eq!(seen.len(), 16 * 5);
    for (_, path, xff, _) in seen {
        let client = path.split('/').nth(2).unwrap();
        assert_eq!(xff, format!("127.0.0.{client}"), "{path}");
    }
}

#[tokio::test]
async fn forwarded_headers_can_be_turned_off() {
    let (app, log) = recording_app().await;
    let sidecar = Sidecar::start_with(app.addr, POLICY, Arc::new(MemoryStore::new()), |c| {
        c.options.forwarded_headers = false;
    })
    .await;
    let r = get(sidecar.addr, "/doc", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(sidecar.addr, "/raw/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen: Vec<(String, String)> = take(&log).into_iter().map(|s| (s.2, s.3)).collect();
    assert_eq!(
        seen,
        [
            ("203.0.113.9".to_owned(), String::new()),
            (String::new(), String::new())
        ],
        "the client's own field untouched, nothing added"
    );
}

#[tokio::test]
async fn untagged_responses_carry_no_app_validators() {
    let app = App::start(|req: http::Request<Incoming>| async move {
        let (status, cache_control, size) = match req.uri().path() {
            "/missing" => (StatusCode::NOT_FOUND, "max-age=60", 10),
            "/gone" => (StatusCode::GONE, "max-age=60", 10),
            "/big" => (StatusCode::OK, "max-age=60", 100_000),
            _ => (StatusCode::OK, "max-age=60", 10),
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .header("cache-control", cache_control)
            .header("etag", "\"replica-7\"")
            .header("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT")
            .body(body(vec![b'x'; size]))
            .unwrap()
    })
    .await;
    let policy = "maxBodyBytes: 64Ki\n";
    let sidecar = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;
    // (A `no-store` 200 keeps the app's validators by design: modes.rs.)
    for path in ["/missing", "/gone", "/big"] {
        for method in ["GET", "HEAD"] {
            let r = send(
                sidecar.addr,
                method,
                path,
                &[("authorization", "Bearer a")],
                "",
            )
            .await;
            assert!(r.headers.get("etag").is_none(), "{method} {path}: {r:?}");
            assert!(
                r.headers.get("last-modified").is_none(),
                "{method} {path}: {r:?}"
            );
            assert!(
                r.header("cache-status").contains("fwd=uri-miss"),
                "{method} {path}: {r:?}"
            );
        }
    }
    // A taggable 200 gets the canonical validators instead of the app's.
    let r = get(sidecar.addr, "/doc", &[]).await;
    assert_ne!(r.etag(), "\"replica-7\"");
    assert_ne!(r.header("last-modified"), "Tue, 01 Jan 2019 00:00:00 GMT");
}

/// `n` bytes of a recognisable pattern.
fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// An app that honours a single `Range: bytes=a-b` (or `a-`), like a file
/// server, minting its own validators, and counts the body bytes it sends.
async fn range_app(content: Bytes) -> (App, Arc<AtomicUsize>) {
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let app = App::start(move |req: http::Request<Incoming>| {
        let content = content.clone();
        let counter = counter.clone();
        let range = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| {
                let first: usize = a.parse().ok()?;
                let last: usize = if b.is_empty() {
                    content.len() - 1
                } else {
                    b.parse().ok()?
                };
                (first <= last && last < content.len()).then_some((first, last))
            });
        async move {
            let builder = Response::builder()
                .header("content-type", "video/mp4")
                .header("accept-ranges", "bytes")
                .header("etag", "\"replica-3\"")
                .header("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT");
            let (builder, part) = match range {
                Some((first, last)) => (
                    builder.status(StatusCode::PARTIAL_CONTENT).header(
                        "content-range",
                        format!("bytes {first}-{last}/{}", content.len()),
                    ),
                    content.slice(first..=last),
                ),
                None => (builder, content),
            };
            counter.fetch_add(part.len(), Ordering::SeqCst);
            builder.body(body(part)).unwrap()
        }
    })
    .await;
    (app, sent)
}

#[tokio::test]
async fn a_seek_into_a_body_too_large_to_tag_is_served_by_the_app() {
    const LEN: usize = 256 * 1024;
    let content = pattern(LEN);
    let (app, sent) = range_app(content.clone()).await;
    let policy = "mode: Trust\nmaxAge: 60s\nmaxBodyBytes: 64Ki\n";
    let sidecar = Sidecar::start(app.addr, policy, Arc::new(MemoryStore::new())).await;
    let user = ("authorization", "Bearer alice");
    for h2 in [false, true] {
        sent.store(0, Ordering::SeqCst);
        let r = send_raw_values(
            sidecar.addr,
            "GET",
            "/video.mp4?quality=hd",
            &[(user.0, user.1.as_bytes()), ("range", b"bytes=1000-1999")],
            "",
            h2,
        )
        .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "h2={h2}");
        assert_eq!(r.body, content.slice(1000..2000));
        assert_eq!(r.header("content-range"), format!("bytes 1000-1999/{LEN}"));
        assert_eq!(app.last_headers().get("range").unwrap(), "bytes=1000-1999");
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1000,
            "the app sent only the part"
        );
        // A part of an untagged representation: no per-replica validators.
        assert!(r.headers.get("etag").is_none(), "{r:?}");
        assert!(r.headers.get("last-modified").is_none(), "{r:?}");
        assert_eq!(
            r.header("cache-status"),
            "sametag; fwd=uri-miss; fwd-status=206; detail=partial"
        );
    }

    // With If-Range the sidecar judges, against a canonical tag this
    // representation does not have: the whole body, as RFC 9110 allows.
    sent.store(0, Ordering::SeqCst);
    let r = get(
        sidecar.addr,
        "/video.mp4",
        &[
            user,
            ("range", "bytes=1000-1999"),
            ("if-range", "\"replica-3\""),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), LEN);
    assert!(app.last_headers().get("range").is_none());
    assert!(app.last_headers().get("if-range").is_none());
}

#[tokio::test]
async fn a_range_of_a_taggable_body_carries_the_canonical_tag() {
    const LEN: usize = 4000;
    let content = pattern(LEN);
    let (app, sent) = range_app(content.clone()).await;
    let sidecar = Sidecar::start(
        app.addr,
        "mode: Trust\nmaxAge: 60s\n",
        Arc::new(MemoryStore::new()),
    )
    .await;
    let whole = get(sidecar.addr, "/clip.mp4", &[]).await;
    let tag = whole.etag();
    assert_ne!(tag, "\"replica-3\"");

    // The app honours the Range; the sidecar still answers with its own 206
    // of the tagged representation.
    let hits = app.hits();
    let r = get(sidecar.addr, "/clip.mp4", &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, content.slice(1000..2000));
    assert_eq!(r.header("content-range"), format!("bytes 1000-1999/{LEN}"));
    assert_eq!(r.etag(), tag);
    assert_eq!(r.header("last-modified"), whole.header("last-modified"));
    assert_eq!(app.hits(), hits + 2, "the part, then the whole to tag");

    // `bytes=0-` is the whole representation: tagged from the one answer.
    let hits = app.hits();
    sent.store(0, Ordering::SeqCst);
    let r = get(sidecar.addr, "/clip.mp4", &[("range", "bytes=0-")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, content);
    assert_eq!(r.etag(), tag);
    assert_eq!(app.hits(), hits + 1);
    assert_eq!(sent.load(Ordering::SeqCst), LEN);

    // With If-Range the sidecar judges it against the canonical tag.
    let r = get(
        sidecar.addr,
        "/clip.mp4",
        &[("range", "bytes=0-9"), ("if-range", &tag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, content.slice(0..10));
    assert!(app.last_headers().get("range").is_none());
}
