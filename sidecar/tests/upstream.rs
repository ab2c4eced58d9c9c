//! Upstream connections: an HTTP/1.x client connection keeps one upstream
//! connection (its lane), the next client connection reuses it, and an app
//! that closes idle connections costs no failed request.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An app that counts the connections it accepts and answers every request
/// with `200 hello`, keeping connections alive.
async fn counting_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"hello"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// One keep-alive client connection to `addr`.
async fn client(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` on `sender`; the status and body.
async fn get(sender: &mut http1::SendRequest<Empty<Bytes>>, path: &str) -> (StatusCode, Bytes) {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "app.test")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test]
async fn a_keep_alive_client_keeps_one_upstream_connection() {
    let (app, accepted) = counting_app().await;
    let sidecar = Sidecar::validate(app).await;

    let mut first = client(sidecar.addr).await;
    for i in 0..20 {
        let (status, body) = get(&mut first, &format!("/r/{i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"hello");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 requests, one upstream connection"
    );

    // The next client connection takes over the idle upstream connection
    // once the sidecar has seen the first one close (it reads the EOF at
    // once; the pause only orders the two connections).
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = client(sidecar.addr).await;
    for _ in 0..5 {
        let (status, _) = get(&mut second, "/again").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the second client connection reuses the first one's upstream connection"
    );
    sidecar.shutdown().await;
}

/// An app that answers one request per connection with keep-alive framing
/// (no `Connection: close`), then closes the connection shortly after, as
/// an app with a short keep-alive timeout does.
async fn closing_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_app_closing_idle_connections_fails_no_request() {
    let (app, accepted) = closing_app().await;
    let sidecar = Sidecar::validate(app).await;
    let mut c = client(sidecar.addr).await;
    for i in 0..8 {
        let (status, body) = get(&mut c, &format!("/item/{i}")).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(&body[..], b"ok");
        // Long enough for the app to have closed the connection.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        8,
        "a new connection per request"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn the_app_sees_origin_form_and_always_a_host() {
    let app = support::App::fixed("doc", "\"app-tag\"").await;
    let sidecar = Sidecar::validate(app.addr).await;

    // HTTP/1.0 without Host (a load balancer's health check, say): the app
    // gets an HTTP/1.1 request that names the app itself.
    let response = support::raw(sidecar.addr, b"GET /doc?x=1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(support::raw_status(&response), 200, "{response}");
    let seen = app.seen.lock().unwrap().clone().unwrap();
    assert_eq!(seen.uri.to_string(), "/doc?x=1", "origin form");
    assert_eq!(seen.headers["host"], app.addr.to_string().as_str());

    // The client's own Host goes through unchanged.
    let mut c = client(sidecar.addr).await;
    let (status, _) = get(&mut c, "/doc").await;
    assert_eq!(status, StatusCode::OK);
    let seen = app.seen.lock().unwrap().clone().unwrap();
    assert_eq!(seen.uri.to_string(), "/doc");
    assert_eq!(seen.headers["host"], "app.test");
    sidecar.shutdown().await;
}

/// `PUT /big` with `If-Match: *` on `sender`; the status.
async fn put_if_match_any(sender: &mut http1::SendRequest<Empty<Bytes>>) -> StatusCode {
    sender.ready().await.unwrap();
    let req = Request::put("/big")
        .header("host", "app.test")
        .header("if-match", "*")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn a_write_after_an_unread_check_body_reuses_the_lane_safely() {
    // The write's precondition check reads the current representation; this
    // one is over maxBodyBytes, so the check stops reading it. The write
    // must still go out on the same client connection, not wait for the
    // unread body (which would end in a 504 after the upstream timeout).
    let app = support::App::start(|req: http::Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::PUT {
            let mut r = http::Response::new(support::body(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        } else {
            http::Response::new(support::body(vec![b'x'; 256 * 1024]))
        }
    })
    .await;
    let sidecar = Sidecar::start(
        app.addr,
        "maxBodyBytes: 1024\n",
        Arc::new(sametag_sidecar::store::memory::MemoryStore::new()),
    )
    .await;
    let mut c = client(sidecar.addr).await;
    for _ in 0..3 {
        assert_eq!(put_if_match_any(&mut c).await, StatusCode::NO_CONTENT);
        let (status, body) = get(&mut c, "/big").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 256 * 1024);
    }
    sidecar.shutdown().await;
}
