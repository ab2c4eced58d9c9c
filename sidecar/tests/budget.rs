//! The tag-buffer budget on real sockets: 64 concurrent 7 MiB tagged
//! responses over 64 HTTP/1.1 connections, and over one HTTP/2 connection
//! with 64 streams, all arrive whole while the sidecar process's peak RSS
//! stays under the 128 MiB the operator gives it; the budget is all given
//! back afterwards. A write's precondition check needs no budget, so a
//! spent budget never turns a right `If-Match` into a 412.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sametag_sidecar::proxy::Body;
use support::{App, Binary, body};
use tokio::net::TcpStream;

/// The size of each representation: under the default `maxBodyBytes`
/// (8 MiB), so every one is a candidate for tagging.
const SIZE: usize = 7 << 20;
const CONCURRENT: usize = 64;
/// The memory limit the operator injects for the sidecar container.
const LIMIT_KIB: u64 = 128 * 1024;

/// The representation: 7 MiB of a pattern that catches misplaced bytes.
fn doc() -> &'static Bytes {
    static DOC: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    DOC.get_or_init(|| Bytes::from((0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
}

/// An app serving the same 7 MiB at `/cl` (with Content-Length) and at
/// `/chunked` (no length, in 256 KiB chunks).
async fn big_app() -> App {
    App::start(move |req: Request<Incoming>| {
        let doc = doc().clone();
        async move {
            let body = if req.uri().path() == "/chunked" {
                chunks(doc)
            } else {
                body(doc)
            };
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(body)
                .unwrap()
        }
    })
    .await
}

/// `doc` as a stream of 256 KiB frames without a length.
fn chunks(doc: Bytes) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        for start in (0..doc.len()).step_by(256 << 10) {
            let end = (start + (256 << 10)).min(doc.len());
            if tx.send(doc.slice(start..end)).await.is_err() {
                return;
            }
        }
    });
    support::channel_body(rx)
}

/// What one response was: tagged or not, checked byte by byte as it
/// streams (the test never holds a whole body).
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Tagged(String),
    OverBudget,
}

async fn check(response: Response<Incoming>) -> Got {
    assert_eq!(response.status(), StatusCode::OK);
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut at = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the body arrives whole");
        if let Ok(data) = frame.into_data() {
            let expected = doc().get(at..at + data.len());
            assert!(expected == Some(&data[..]), "bytes {at}.. differ");
            at += data.len();
        }
    }
    assert_eq!(at, SIZE);
    if cache_status.contains("detail=over-budget") {
        assert_eq!(etag, None, "{cache_status}");
        Got::OverBudget
    } else {
        assert!(cache_status.contains("stored"), "{cache_status}");
        Got::Tagged(etag.expect("a tag"))
    }
}

/// Tagged and over-budget counts; every tagged response carries the one
/// tag of the representation.
fn tally(results: Vec<Got>) -> (usize, usize) {
    let mut tags: Vec<&String> = results
        .iter()
        .filter_map(|g| match g {
            Got::Tagged(t) => Some(t),
            Got::OverBudget => None,
        })
        .collect();
    tags.dedup();
    assert!(tags.len() <= 1, "one representation, one tag: {tags:?}");
    let tagged = results
        .iter()
        .filter(|g| matches!(g, Got::Tagged(_)))
        .count();
    (tagged, results.len() - tagged)
}

/// Wait for every response (all must complete, with the right bytes), then
/// check that some were tagged and memory stayed bounded.
async fn all_bounded(tasks: Vec<tokio::task::JoinHandle<Got>>, sidecar: &Binary, label: &str) {
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("all complete")
                .unwrap(),
        );
    }
    let (tagged, over) = tally(results);
    assert!(tagged > 0, "tagging still happens within the budget");
    assert_bounded(sidecar, label, tagged, over).await;
}

/// Peak RSS under the limit, and the budget given back once the bodies are
/// sent (the gauge reads 0).
async fn assert_bounded(sidecar: &Binary, what: &str, tagged: usize, over: usize) {
    let peak = sidecar.memory_kib("VmHWM");
    eprintln!("{what}: {tagged} tagged, {over} over budget, peak RSS {peak} KiB");
    assert!(peak < LIMIT_KIB, "{what}: peak RSS {peak} KiB");
    let mut held = f64::NAN;
    for _ in 0..100 {
        held = sidecar.metric("sametag_tag_buffer_bytes ").await;
        if held == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 0.0, "{what}: budget not given back");
    let refused = sidecar.metric("sametag_tag_buffer_refusals_total ").await;
    assert_eq!(refused as usize, over, "{what}: refusals counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_64_connections_of_7_mib_stay_under_the_memory_limit() {
    let app = big_app().await;
    let sidecar = Binary::start(app.addr, &[]);
    let addr = sidecar.addr;
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut tx, conn) =
                    hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let path = if i % 2 == 0 { "/cl" } else { "/chunked" };
                let req = Request::get(path)
                    .header("host", "shop")
                    .body(body(""))
                    .unwrap();
                check(tx.send_request(req).await.unwrap()).await
            })
        })
        .collect();
    all_bounded(tasks, &sidecar, "HTTP/1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_one_connection_64_streams_of_7_mib_stay_under_the_memory_limit() {
    let app = big_app().await;
    let sidecar = Binary::start(app.addr, &[]);
    let stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let mut h2 = h2.clone();
            let addr = sidecar.addr;
            tokio::spawn(async move {
                let path = if i % 2 == 0 { "/cl" } else { "/chunked" };
                let req = Request::get(format!("http://{addr}{path}"))
                    .body(body(""))
                    .unwrap();
                check(h2.send_request(req).await.unwrap()).await
            })
        })
        .collect();
    all_bounded(tasks, &sidecar, "HTTP/2").await;
}

#[tokio::test]
async fn a_write_is_judged_on_its_real_tag_while_the_budget_is_spent() {
    use std::sync::{Arc, Mutex};

    use sametag_sidecar::store::memory::MemoryStore;
    use support::{Sidecar, get, resource_app, send};

    let state = Arc::new(Mutex::new(Some("version 1".to_owned())));
    let app = resource_app(state.clone(), "a").await;
    let store = Arc::new(MemoryStore::new());
    let roomy = Sidecar::start(app.addr, "", store.clone()).await;
    // A replica whose budget is spent: it cannot hold even this body.
    let starved = Sidecar::start_with(app.addr, "", store, |c| {
        c.options.tag_buffer_budget = 4;
    })
    .await;

    let tag = get(roomy.addr, "/doc", &[]).await.etag();
    let untagged = get(starved.addr, "/doc", &[]).await;
    assert_eq!(untagged.text(), "version 1");
    assert!(
        untagged
            .header("cache-status")
            .contains("detail=over-budget"),
        "{:?}",
        untagged.headers
    );
    assert_eq!(untagged.header("etag"), "");

    // The write's precondition check hashes without holding the body, so
    // it needs no budget: the right tag wins, a wrong one still loses.
    let wrong = send(
        starved.addr,
        "PUT",
        "/doc",
        &[("if-match", "\"nope\"")],
        "x",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::PRECONDITION_FAILED);
    let right = send(
        starved.addr,
        "PUT",
        "/doc",
        &[("if-match", &tag)],
        "version 2",
    )
    .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text());
    assert_eq!(state.lock().unwrap().as_deref(), Some("version 2"));
}
