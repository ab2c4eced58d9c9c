//! Coalesced revalidation, once per store (`in_memory::`, `in_redis::`):
//! when a Trust validation expires, the concurrent conditional reads of one
//! variant share one app call; each still gets its own answer. A leader
//! that fails or goes away does not fail its followers; different users
//! and different `Vary` values never share.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use sametag_sidecar::proxy::BoxError;
use support::{App, Got, Proto, SharedStore, Sidecar, StoreKind, body, call};

const POLICY: &str = "routes: [{path: /doc/**, mode: Trust, maxAge: 300ms}]";
const EXPIRY: Duration = Duration::from_millis(450);

/// How the next GET fails, if it does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    None,
    /// A 503 (untagged: cannot be shared).
    Unavailable,
    /// The body breaks off mid-stream (an upstream error: 502).
    BrokenBody,
}

/// A slow app: GETs (counted) wait `delay_ms`, then answer
/// `text` for the caller (`Authorization` or `Cookie`) in its
/// `Accept-Language`, with `Vary: Accept-Language`.
struct SlowApp {
    app: App,
    gets: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    text: Arc<Mutex<String>>,
    fail_next: Arc<Mutex<Failure>>,
}

impl SlowApp {
    async fn start() -> SlowApp {
        let gets = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let text = Arc::new(Mutex::new("v1".to_owned()));
        let fail_next = Arc::new(Mutex::new(Failure::None));
        let (g, d, t, f) = (
            gets.clone(),
            delay_ms.clone(),
            text.clone(),
            fail_next.clone(),
        );
        let app = App::start(move |req: Request<Incoming>| {
            let (gets, delay, text, fail) = (g.clone(), d.clone(), t.clone(), f.clone());
            async move {
                assert_eq!(req.method(), Method::GET);
                gets.fetch_add(1, Ordering::SeqCst);
                let failure = std::mem::replace(&mut *fail.lock().unwrap(), Failure::None);
                tokio::time::sleep(Duration::from_millis(delay.load(Ordering::SeqCst))).await;
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                };
                let who = format!("{}{}", header("authorization"), header("cookie"));
                let page = format!(
                    "{} for {who} in {}",
                    text.lock().unwrap(),
                    header("accept-language")
                );
                match failure {
                    Failure::None => Response::builder()
                        .header("content-type", "text/plain")
                        .header("vary", "Accept-Language")
                        .body(body(page))
                        .unwrap(),
                    Failure::Unavailable => Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(body("try later"))
                        .unwrap(),
                    Failure::BrokenBody => Response::builder()
                        .header("content-type", "text/plain")
                        .body(broken_body())
                        .unwrap(),
                }
            }
        })
        .await;
        SlowApp {
            app,
            gets,
            delay_ms,
            text,
            fail_next,
        }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// A body that yields a chunk, then an error.
fn broken_body() -> sametag_sidecar::proxy::Body {
    use http_body_util::BodyExt;
    struct Broken(bool);
    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            let first = !self.0;
            self.0 = true;
            std::task::Poll::Ready(Some(if first {
                Ok(http_body::Frame::data(Bytes::from_static(b"half a")))
            } else {
                Err("broken".into())
            }))
        }
    }
    Broken(false).boxed_unsync()
}

/// A conditional read on a fresh connection.
async fn read(
    addr: std::net::SocketAddr,
    proto: Proto,
    method: &str,
    tag: &str,
    extra: &[(&str, &str)],
) -> Got {
    let mut headers = vec![("if-none-match", tag)];
    headers.extend_from_slice(extra);
    call(addr, proto, method, "doc.test", "/doc/1", &headers, "").await
}

/// One tag recorded and trusted for `extra`'s user and language, then
/// expired.
async fn primed(sidecar: &Sidecar, extra: &[(&str, &str)]) -> String {
    let first = call(
        sidecar.addr,
        Proto::H1,
        "GET",
        "doc.test",
        "/doc/1",
        extra,
        "",
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    first.etag()
}

async fn fifty_revalidations_make_one_app_call(kind: StoreKind) {
    let store = SharedStore::new(kind);
    let app = SlowApp::start().await;
    let sidecar = Sidecar::start(app.app.addr, POLICY, store.replica().await).await;
    let tag = primed(&sidecar, &[]).await;
    tokio::time::sleep(EXPIRY).await;
    app.slow(2000);
    let before = app.gets();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = sidecar.addr;
        let current = i % 2 == 0;
        let sent = if current {
            tag.clone()
        } else {
            "\"old\"".to_owned()
        };
        let method = if i % 5 == 0 { "HEAD" } else { "GET" };
        let proto = if i % 3 == 0 { Proto::H2 } else { Proto::H1 };
        tasks.push(tokio::spawn(async move {
            (current, method, read(addr, proto, method, &sent, &[]).await)
        }));
    }
    for t in tasks {
        let (current, method, got) = t.await.unwrap();
        assert_eq!(got.etag(), tag);
        if current {
            assert_eq!(got.status, StatusCode::NOT_MODIFIED, "{:?}", got.headers);
            assert!(got.body.is_empty());
        } else {
            assert_eq!(got.status, StatusCode::OK, "{:?}", got.headers);
            let want = if method == "HEAD" { "" } else { "v1 for  in " };
            assert_eq!(got.text(), want);
            assert_eq!(got.header("content-length"), "11");
        }
    }
    assert_eq!(app.gets(), before + 1, "one app call for 50 revalidations");
    let m = &sidecar.metrics;
    assert_eq!(m.coalesced_with("shared"), 49);
    assert_eq!(m.coalesced_with("refetched"), 0);
    // The shared fetch validated the tag again: trusted 304s from here.
    let hit = read(sidecar.addr, Proto::H1, "GET", &tag, &[]).await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hit.header("cache-status"), "sametag; hit");
    assert_eq!(app.gets(), before + 1);
}

async fn a_failing_leader_does_not_fail_its_followers(kind: StoreKind) {
    let store = SharedStore::new(kind);
    let app = SlowApp::start().await;
    let sidecar = Sidecar::start(app.app.addr, POLICY, store.replica().await).await;
    let tag = primed(&sidecar, &[]).await;
    for (failure, leader_status) in [
        (Failure::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        (Failure::BrokenBody, StatusCode::BAD_GATEWAY),
    ] {
        tokio::time::sleep(EXPIRY).await;
        app.slow(1500);
        *app.fail_next.lock().unwrap() = failure;
        let before = app.gets();
        let refetched = sidecar.metrics.coalesced_with("refetched");
        let addr = sidecar.addr;
        let leader = {
            let tag = tag.clone();
            tokio::spawn(async move { read(addr, Proto::H1, "GET", &tag, &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let followers: Vec<_> = (0..10)
            .map(|_| {
                let tag = tag.clone();
                tokio::spawn(async move { read(addr, Proto::H1, "GET", &tag, &[]).await })
            })
            .collect();
        assert_eq!(leader.await.unwrap().status, leader_status);
        for f in followers {
            let got = f.await.unwrap();
            assert_eq!(got.status, StatusCode::NOT_MODIFIED, "{:?}", got.headers);
            assert_eq!(got.etag(), tag);
        }
        assert!(
            app.gets() >= before + 2,
            "the followers asked the app again"
        );
        assert!(sidecar.metrics.coalesced_with("refetched") >= refetched + 10);
    }
}

async fn a_cancelled_leader_does_not_strand_its_followers(kind: StoreKind) {
    let store = SharedStore::new(kind);
    let app = SlowApp::start().await;
    let sidecar = Sidecar::start(app.app.addr, POLICY, store.replica().await).await;
    let tag = primed(&sidecar, &[]).await;
    tokio::time::sleep(EXPIRY).await;
    app.slow(1500);
    let addr = sidecar.addr;
    // The leader's client gives up (an h2 stream reset ends its request).
    let leader = {
        let tag = tag.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(400),
                read(addr, Proto::H2, "GET", &tag, &[]),
            )
            .await
            .is_err()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let followers: Vec<_> = (0..10)
        .map(|i| {
            let tag = tag.clone();
            let sent = if i % 2 == 0 {
                tag.clone()
            } else {
                "\"old\"".to_owned()
            };
            tokio::spawn(async move { read(addr, Proto::H1, "GET", &sent, &[]).await })
        })
        .collect();
    assert!(leader.await.unwrap(), "the leader's client gave up");
    for (i, f) in followers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("followers are not stranded")
            .unwrap();
        let want = if i % 2 == 0 {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        };
        assert_eq!(got.status, want, "{:?}", got.headers);
        assert_eq!(got.etag(), tag);
    }
    assert!(
        sidecar.metrics.coalesced_with("refetched") >= 1,
        "the followers noticed the leader was gone"
    );
}

async fn users_and_variants_never_share(kind: StoreKind) {
    let store = SharedStore::new(kind);
    let app = SlowApp::start().await;
    let sidecar = Sidecar::start(app.app.addr, POLICY, store.replica().await).await;
    let callers: [&[(&str, &str)]; 4] = [
        &[("authorization", "Bearer alice"), ("accept-language", "en")],
        &[("authorization", "Bearer alice"), ("accept-language", "de")],
        &[("cookie", "session=bob"), ("accept-language", "en")],
        &[("cookie", "session=bob"), ("accept-language", "de")],
    ];
    let mut tags = Vec::new();
    for c in callers {
        tags.push(primed(&sidecar, c).await);
        // The second GET learns the Vary names and records the variant.
        primed(&sidecar, c).await;
    }
    tokio::time::sleep(EXPIRY).await;
    app.slow(1500);
    *app.text.lock().unwrap() = "v2".to_owned();
    let before = app.gets();
    let mut tasks = Vec::new();
    for (i, c) in callers.iter().enumerate() {
        for _ in 0..5 {
            let addr = sidecar.addr;
            let extra: Vec<(String, String)> = c
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let tag = tags[i].clone();
            tasks.push(tokio::spawn(async move {
                let extra: Vec<(&str, &str)> = extra
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (i, read(addr, Proto::H1, "GET", &tag, &extra).await)
            }));
        }
    }
    for t in tasks {
        let (i, got) = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "a changed document");
        let who = callers[i]
            .iter()
            .find(|(k, _)| *k != "accept-language")
            .unwrap()
            .1;
        let lang = callers[i][1].1;
        assert_eq!(got.text(), format!("v2 for {who} in {lang}"));
        assert_ne!(got.etag(), tags[i]);
    }
    assert_eq!(
        app.gets(),
        before + 4,
        "one call per user and language, never one for all"
    );
    assert_eq!(sidecar.metrics.coalesced_with("shared"), 16);
}

support::over_stores! {
    fifty_revalidations_make_one_app_call,
    a_failing_leader_does_not_fail_its_followers,
    a_cancelled_leader_does_not_strand_its_followers,
    users_and_variants_never_share,
}
