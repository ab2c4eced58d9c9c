//! `steady:` routes, once per store (`in_memory::`, `in_redis::`): pages
//! that embed a fresh CSRF token and CSP nonce in every render get one tag
//! on every replica (a 304 across replicas), a real change gets a new one,
//! a write's `If-Match` is judged with the tag reads hand out, and a
//! pathological pattern over a body near `maxBodyBytes` completes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{App, Got, SharedStore, Sidecar, StoreKind, body, get, send, status};

const POLICY: &str = r#"
routes:
  - path: /page/**
    steady:
      - 'name="csrf_token" value="[A-Za-z0-9_-]*"'
      - 'nonce="[A-Za-z0-9+/=]*"'
"#;

/// An app replica rendering `text` into a page with a token and a nonce
/// new on every render (`renders` counts them across replicas); PUT
/// replaces `text`.
async fn page_app(text: Arc<Mutex<String>>, renders: Arc<AtomicUsize>, replica: usize) -> App {
    App::start(move |req: Request<Incoming>| {
        let (text, renders) = (text.clone(), renders.clone());
        async move {
            if req.method() == Method::PUT {
                let new = req.into_body().collect().await.unwrap().to_bytes();
                *text.lock().unwrap() = String::from_utf8_lossy(&new).into_owned();
                return status(StatusCode::NO_CONTENT);
            }
            let n = renders.fetch_add(1, Ordering::SeqCst);
            let page = format!(
                r#"<html><head><script nonce="r{replica}n{n}x{}">boot()</script></head><body><form><input type="hidden" name="csrf_token" value="tok-{replica}-{n}-{:x}"></form><p>{}</p></body></html>"#,
                n * 7919,
                n * 104_729,
                text.lock().unwrap()
            );
            Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("etag", format!("\"app{replica}-{n}\""))
                .body(body(page))
                .unwrap()
        }
    })
    .await
}

async fn renders_differing_only_in_noise_share_one_tag(kind: StoreKind) {
    let store = SharedStore::new(kind);
    let text = Arc::new(Mutex::new("hello".to_owned()));
    let renders = Arc::new(AtomicUsize::new(0));
    let (app0, app1) = (
        page_app(text.clone(), renders.clone(), 0).await,
        page_app(text.clone(), renders.clone(), 1).await,
    );
    let a = Sidecar::start(app0.addr, POLICY, store.replica().await).await;
    let b = Sidecar::start(app1.addr, POLICY, store.replica().await).await;

    let first = get(a.addr, "/page/home", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let tag = first.etag();
    let second = get(b.addr, "/page/home", &[]).await;
    assert_ne!(first.body, second.body, "every render has new noise");
    assert_eq!(
        second.etag(),
        tag,
        "one tag for both renders, on both replicas"
    );
    assert_eq!(
        second.header("last-modified"),
        first.header("last-modified")
    );
    // The body the client gets is the app's, token and all.
    assert!(second.text().contains(r#"name="csrf_token" value="tok-1-"#));

    // Revalidation through the other replica: 304, though the app rendered
    // a new token.
    let before = renders.load(Ordering::SeqCst);
    let revalidated = get(b.addr, "/page/home", &[("if-none-match", &tag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.etag(), tag);
    assert_eq!(
        renders.load(Ordering::SeqCst),
        before + 1,
        "the app rendered"
    );

    // A write judged with the same tag: its If-Match holds.
    let put = send(
        a.addr,
        "PUT",
        "/page/home",
        &[("if-match", &tag)],
        "changed",
    )
    .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.headers);

    // A real change is a new tag; the old one no longer matches.
    let changed = get(b.addr, "/page/home", &[("if-none-match", &tag)]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_ne!(changed.etag(), tag);
    assert!(changed.text().contains("<p>changed</p>"));
    let stale_write = send(a.addr, "PUT", "/page/home", &[("if-match", &tag)], "x").await;
    assert_eq!(stale_write.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(*text.lock().unwrap(), "changed");

    // Off the route, the same noise makes every render a new tag.
    let off = get(a.addr, "/other", &[]).await.etag();
    assert_ne!(get(b.addr, "/other", &[]).await.etag(), off);
}

/// A body near `maxBodyBytes` of the text pathological patterns choke
/// backtracking engines on: the sidecar tags it, twice alike, within a
/// generous bound (not a performance assertion: the point is that it ends).
async fn pathological_patterns_complete(kind: StoreKind) {
    const MAX: usize = 4 << 20;
    let policy = format!(
        r#"
maxBodyBytes: {MAX}
routes:
  - path: /big
    steady: ['(a*)*b', '(x+x+)+y', '.*[^A-Z]|[A-Z]', '(?s)(.*a){{12}}z']
"#
    );
    let big: Arc<Vec<u8>> = Arc::new(
        [
            vec![b'a'; MAX / 4],
            vec![b'x'; MAX / 4],
            vec![b'A'; MAX / 4],
            vec![b'a'; MAX / 4 - 1],
        ]
        .concat(),
    );
    let app = App::start(move |_req| {
        let big = big.clone();
        async move {
            Response::builder()
                .header("content-type", "text/plain")
                .body(body(big.as_ref().clone()))
                .unwrap()
        }
    })
    .await;
    let store = SharedStore::new(kind);
    let sidecar = Sidecar::start_with(app.addr, &policy, store.replica().await, |c| {
        c.options.upstream_timeout = Duration::from_secs(60);
    })
    .await;
    let run = async {
        let one = get_patiently(sidecar.addr, "/big", None).await;
        let two = get_patiently(sidecar.addr, "/big", Some(&one.etag())).await;
        (one, two)
    };
    let (one, two) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("tagging with pathological patterns ends");
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body.len(), MAX - 1);
    assert_eq!(two.status, StatusCode::NOT_MODIFIED);
}

/// A GET without the support client's 10 s bound (debug builds search
/// slowly; the caller bounds the whole exchange).
async fn get_patiently(addr: std::net::SocketAddr, path: &str, tag: Option<&str>) -> Got {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "big.test");
    if let Some(tag) = tag {
        req = req.header("if-none-match", tag);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    Got::collect(sender.send_request(req).await.unwrap()).await
}

support::over_stores! {
    renders_differing_only_in_noise_share_one_tag,
    pathological_patterns_complete,
}
