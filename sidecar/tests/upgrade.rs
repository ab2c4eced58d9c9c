//! Protocol upgrades on real sockets: a WebSocket handshake is tunnelled to
//! the app in origin form with the client's Host; any other request carrying
//! `Upgrade` (a write asking to switch, `h2c`) is served as a plain request,
//! judged, locked and invalidating like any other.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use sametag_sidecar::store::Store;
use sametag_sidecar::store::memory::MemoryStore;
use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use support::{App, Sidecar, body, get, resource_app};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read one header section (through the blank line), byte by byte so nothing
/// after it is consumed.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte));
        read.await.expect("a header section within 5s").unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A raw TCP app, as an app routing on the raw request target sees the
/// wire: it records every request head it reads, answers a WebSocket
/// handshake with `101` and then echoes bytes.
async fn raw_websocket_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                seen.lock().unwrap().push(head);
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// A header's value in a raw head (lower-cased name), if present.
fn field(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn websocket_reaches_the_app_in_origin_form_with_the_clients_host() {
    let (app, heads) = raw_websocket_app().await;
    let sidecar = Sidecar::validate(app).await;
    // Two users, two names of the Service; an absolute-form target and a
    // dot segment reach the app as the origin-form path the sidecar judged.
    for (user, host, target) in [
        ("alice", "chat.example", "/ws?room=1"),
        ("bob", "chat.chat.svc.cluster.local", "/ws?room=1"),
        ("carol", "chat.example", "http://chat.example/ws?room=1"),
        ("dave", "chat.example", "/lobby/../ws?room=1"),
    ] {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        let handshake = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {user}\r\n\
             Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let answer = read_head(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        assert_eq!(
            field(&answer, "upgrade").as_deref(),
            Some("websocket"),
            "{answer}"
        );
        assert_eq!(
            field(&answer, "sec-websocket-accept").as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );

        let head = heads.lock().unwrap().last().cloned().unwrap();
        let request_line = head.lines().next().unwrap();
        assert_eq!(request_line, "GET /ws?room=1 HTTP/1.1", "{head}");
        assert_eq!(field(&head, "host").as_deref(), Some(host), "{head}");
        assert_eq!(
            field(&head, "authorization"),
            Some(format!("Bearer {user}"))
        );
        assert_eq!(field(&head, "upgrade").as_deref(), Some("websocket"));
        assert!(
            field(&head, "connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
            "{head}"
        );
        assert!(field(&head, "sec-websocket-key").is_some());
        assert_eq!(
            field(&head, "x-forwarded-for").as_deref(),
            Some("127.0.0.1")
        );

        // A masked text frame and some binary: bytes both ways, untouched.
        for msg in [
            &b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"[..],
            b"\x00\xff\r\n\r\n",
        ] {
            stream.write_all(msg).await.unwrap();
            let mut echo = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut echo))
                .await
                .expect("the echo within 2s")
                .unwrap();
            assert_eq!(echo, msg);
        }
    }
}

/// Send raw bytes on a fresh connection and read one response head and a
/// `Content-Length` body.
async fn exchange(addr: SocketAddr, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let head = read_head(stream).await;
    let len: usize = field(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8_lossy(&body).into_owned())
}

const TRUST: &str = "mode: Trust\nmaxAge: 60s\n";

/// Two replicas (an app and a sidecar each) on one store, with both stores:
/// a `PUT` asking to upgrade, through replica b under another Host name, is
/// judged (412 without reaching the app), locked, and ends replica a's
/// trusted 304s like any write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_asking_to_upgrade_is_judged_locked_and_invalidates() {
    let redis = support::redis_server::RedisServer::start();
    let options = RedisOptions {
        trust_guard: Duration::from_millis(200),
        ..RedisOptions::default()
    };
    let shared = RedisStore::connect(&redis.url(), "upgrade", options).unwrap();
    assert!(shared.wait_up(Duration::from_secs(5)).await);
    for store in [
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Arc::new(shared) as Arc<dyn Store>,
    ] {
        let state = Arc::new(Mutex::new(Some("v1".to_owned())));
        let app_a = resource_app(state.clone(), "a").await;
        let app_b = resource_app(state.clone(), "b").await;
        let a = Sidecar::start(app_a.addr, TRUST, store.clone()).await;
        let b = Sidecar::start(app_b.addr, TRUST, store.clone()).await;
        let alice = [("authorization", "Bearer alice"), ("host", "shop")];
        let tag = get(a.addr, "/doc?lang=en", &alice).await.etag();
        let cond = [alice[0], alice[1], ("if-none-match", tag.as_str())];
        let hit = get(a.addr, "/doc?lang=en", &cond).await;
        assert_eq!(hit.header("cache-status"), "sametag; hit");

        let put = |user: &str, if_match: &str, text: &str| {
            format!(
                "PUT /doc?lang=en HTTP/1.1\r\nHost: shop.example\r\nAuthorization: Bearer {user}\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nIf-Match: {if_match}\r\n\
                 Content-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        // A wrong If-Match: 412 from the sidecar; the PUT never reaches the
        // app (only the internal GET that judged it).
        let (head, _) = exchange(b.addr, &put("alice", "\"stale\"", "v2")).await;
        assert!(head.starts_with("HTTP/1.1 412"), "{head}");
        assert_eq!(state.lock().unwrap().as_deref(), Some("v1"));
        assert_eq!(app_b.last_method(), http::Method::GET);

        // The right If-Match: a normal write (no 101), without the upgrade
        // fields, that ends the trusted 304 for the old tag on replica a.
        let (head, _) = exchange(b.addr, &put("alice", &tag, "v2")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(field(&head, "upgrade"), None, "{head}");
        assert_eq!(state.lock().unwrap().as_deref(), Some("v2"));
        let seen = app_b.last_headers();
        assert_eq!(app_b.last_method(), http::Method::PUT);
        assert!(seen.get("upgrade").is_none(), "{seen:?}");
        assert!(seen.get("connection").is_none(), "{seen:?}");
        let r = get(a.addr, "/doc?lang=en", &cond).await;
        assert_eq!(r.status, StatusCode::OK, "no stale 304 after the write");
        assert_eq!(r.text(), "v2");

        // A second writer still holding v1's tag loses, as any write would.
        let (head, _) = exchange(a.addr, &put("bob", &tag, "v3")).await;
        assert!(head.starts_with("HTTP/1.1 412"), "{head}");
        assert_eq!(state.lock().unwrap().as_deref(), Some("v2"));
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn h2c_upgrade_is_refused_and_served_as_http11() {
    // An app that would switch to anything it is asked to.
    let app = App::start(|req: http::Request<Incoming>| async move {
        if req.headers().contains_key("upgrade") {
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "h2c")
                .body(body(""))
                .unwrap();
        }
        Response::builder()
            .header("content-type", "text/plain")
            .header("etag", "\"per-replica\"")
            .body(body("plain"))
            .unwrap()
    })
    .await;
    let sidecar = Sidecar::validate(app.addr).await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let request = "GET /doc HTTP/1.1\r\nHost: shop\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                   Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, text) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(text, "plain");
    let tag = field(&head, "etag").expect("tagged like any read");
    assert_ne!(tag, "\"per-replica\"");
    let seen = app.last_headers();
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the app: {seen:?}");
    }

    // The connection is still HTTP/1.1 and keeps serving, conditionals too.
    let again = format!("GET /doc HTTP/1.1\r\nHost: shop\r\nIf-None-Match: {tag}\r\n\r\n");
    stream.write_all(again.as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");

    // A WebSocket-or-h2c list is not a WebSocket handshake either.
    let (head, _) = exchange(
        sidecar.addr,
        "GET /doc HTTP/1.1\r\nHost: shop\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
