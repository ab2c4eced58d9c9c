//! Compression by the sidecar (`compress:` on a route): each coding gets
//! its own strong tag, the same on every replica, decoding to the app's
//! bytes; a 304 for every coding on every replica in Validate and Trust
//! (both stores, HTTP/1.1 and h2c); identity for clients that take no
//! coding; already-encoded and non-text responses untouched; `Vary` on
//! every tagged answer; writes accept the tag of any coding.

mod support;

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use sametag_sidecar::policy::Coding;
use sametag_sidecar::store::memory::MemoryStore;
use support::{App, Db, Fleet, Got, Proto, Sidecar, StoreKind, body, call, get};

const POLICY: &str = "\
routes:
  - path: /t/**
    mode: Trust
    maxAge: 60s
    compress: [br, zstd, gzip]
  - path: /v/**
    compress: [br, zstd, gzip]
  - path: /g/**
    compress: [gzip]
";

const HOST: &str = "shop.example";

/// A text document well over the minimum size.
fn doc(name: &str) -> String {
    (0..80)
        .map(|i| format!("{name} line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect()
}

fn db() -> Arc<Db> {
    Db::with(&[
        ("/t/doc", &doc("trusted")),
        ("/v/doc", &doc("validated")),
        ("/g/doc", &doc("gzip only")),
        ("/t/small", "tiny"),
        ("/v/small", "tiny"),
    ])
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(bytes).unwrap(),
        "" => out = bytes.to_vec(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

fn has_vary_accept_encoding(r: &Got) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding"))
}

/// One GET through replica `i` of `f`.
async fn fetch(f: &Fleet, i: usize, proto: Proto, path: &str, headers: &[(&str, &str)]) -> Got {
    call(f.addr(i), proto, "GET", HOST, path, headers, "").await
}

async fn every_coding_has_its_own_tag_on_every_replica_and_revalidates(
    kind: StoreKind,
    proto: Proto,
) {
    let f = Fleet::start(kind, 3, POLICY, db()).await;
    for path in ["/v/doc", "/t/doc"] {
        let text = f.db.doc(path).unwrap();
        // Identity: no Accept-Encoding.
        let plain = fetch(&f, 0, proto, path, &[]).await;
        assert_eq!(plain.status, StatusCode::OK);
        assert_eq!(plain.header("content-encoding"), "");
        assert_eq!(plain.text(), text);
        assert!(has_vary_accept_encoding(&plain), "{:?}", plain.headers);
        let identity = plain.etag();
        assert!(!identity.starts_with("W/"));

        let mut tags = vec![identity.clone()];
        for coding in Coding::ALL {
            let name = coding.as_str();
            let mut tag = None;
            for i in 0..3 {
                let r = fetch(&f, i, proto, path, &[("accept-encoding", name)]).await;
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(r.header("content-encoding"), name, "{path} replica {i}");
                assert_eq!(r.header("content-length"), r.body.len().to_string());
                assert!(r.body.len() < text.len() / 2, "{name} shrinks");
                assert_eq!(decode(name, &r.body), text.as_bytes(), "{name} decodes");
                assert!(has_vary_accept_encoding(&r));
                assert!(!r.etag().starts_with("W/"), "strong");
                // Every replica derives the same tag and Last-Modified.
                match &tag {
                    None => tag = Some((r.etag(), r.header("last-modified"))),
                    Some((t, lm)) => {
                        assert_eq!(&r.etag(), t, "{path} {name} replica {i}");
                        assert_eq!(&r.header("last-modified"), lm);
                    }
                }
            }
            let (tag, _) = tag.unwrap();
            tags.push(tag.clone());
            // A 304 for this coding on every replica.
            for i in 0..3 {
                let r = fetch(
                    &f,
                    i,
                    proto,
                    path,
                    &[("accept-encoding", name), ("if-none-match", &tag)],
                )
                .await;
                assert_eq!(
                    r.status,
                    StatusCode::NOT_MODIFIED,
                    "{path} {name} replica {i}"
                );
                assert_eq!(r.etag(), tag);
                assert!(r.body.is_empty());
                assert!(has_vary_accept_encoding(&r), "304 carries Vary");
            }
        }
        let mut distinct = tags.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "one tag per coding: {tags:?}");

        // The identity tag revalidates only a request that gets identity.
        for i in 0..3 {
            let r = fetch(&f, i, proto, path, &[("if-none-match", &identity)]).await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED);
            let r = fetch(
                &f,
                i,
                proto,
                path,
                &[("accept-encoding", "br"), ("if-none-match", &identity)],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "identity tag, br negotiated");
            assert_eq!(r.header("content-encoding"), "br");
            // Another coding's tag is another representation.
            let r = fetch(
                &f,
                i,
                proto,
                path,
                &[("accept-encoding", "gzip"), ("if-none-match", &tags[1])],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("content-encoding"), "gzip");
            assert_eq!(r.etag(), tags[3]);
            // A browser's list revalidates the tag of the coding it gets.
            let r = fetch(
                &f,
                i,
                proto,
                path,
                &[
                    ("accept-encoding", "gzip, deflate, br, zstd"),
                    ("if-none-match", &tags[1]),
                ],
            )
            .await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED);
            assert_eq!(r.etag(), tags[1]);
        }
    }

    // Trust: once validated, every coding's 304 comes from the store.
    let hits = f.apps.iter().map(App::hits).sum::<usize>();
    let br = fetch(&f, 0, proto, "/t/doc", &[("accept-encoding", "br")]).await;
    for i in 0..3 {
        let mut status = String::new();
        for _ in 0..20 {
            let r = fetch(
                &f,
                i,
                proto,
                "/t/doc",
                &[("accept-encoding", "br"), ("if-none-match", &br.etag())],
            )
            .await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED);
            status = r.header("cache-status");
            if status == "sametag; hit" {
                assert!(has_vary_accept_encoding(&r), "a trusted 304 carries Vary");
                assert_eq!(r.etag(), br.etag());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, "sametag; hit", "replica {i}");
    }
    let after = f.apps.iter().map(App::hits).sum::<usize>();
    assert!(after <= hits + 1 + 3 * 20, "{hits} -> {after}");
}

async fn clients_that_take_no_coding_get_identity(kind: StoreKind, proto: Proto) {
    let f = Fleet::start(kind, 2, POLICY, db()).await;
    let identity = fetch(&f, 0, proto, "/v/doc", &[]).await.etag();
    for ae in [
        "",
        "identity",
        "br;q=0, zstd;q=0, gzip;q=0",
        "deflate",
        "gzip;q=0.5, identity",
        "*;q=0",
    ] {
        let r = fetch(&f, 1, proto, "/v/doc", &[("accept-encoding", ae)]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-encoding"), "", "{ae:?}");
        assert_eq!(r.etag(), identity, "{ae:?}");
        assert!(has_vary_accept_encoding(&r));
    }
    // A route that offers only gzip: a br-only client gets identity.
    let r = fetch(&f, 0, proto, "/g/doc", &[("accept-encoding", "br")]).await;
    assert_eq!(r.header("content-encoding"), "");
    let r = fetch(&f, 0, proto, "/g/doc", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    // Server preference breaks ties; client weights win over it.
    let r = fetch(
        &f,
        0,
        proto,
        "/v/doc",
        &[("accept-encoding", "gzip, zstd, br")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "br");
    let r = fetch(
        &f,
        0,
        proto,
        "/v/doc",
        &[("accept-encoding", "br;q=0.5, zstd")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "zstd");
}

async fn small_bodies_stay_identity_and_trust_still_answers(kind: StoreKind, proto: Proto) {
    let f = Fleet::start(kind, 2, POLICY, db()).await;
    for path in ["/v/small", "/t/small"] {
        let r = fetch(&f, 0, proto, path, &[("accept-encoding", "br")]).await;
        assert_eq!(r.header("content-encoding"), "", "{path}");
        assert_eq!(r.text(), "tiny");
        assert!(has_vary_accept_encoding(&r));
        let tag = r.etag();
        // Every replica: a 304 for the identity tag with a br-taking client.
        for i in 0..2 {
            let r = fetch(
                &f,
                i,
                proto,
                path,
                &[("accept-encoding", "br"), ("if-none-match", &tag)],
            )
            .await;
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{path} replica {i}");
            assert_eq!(r.etag(), tag);
            assert!(has_vary_accept_encoding(&r));
        }
    }
    // Trust: a replica that has seen the small body answers from the store.
    let tag = fetch(&f, 1, proto, "/t/small", &[]).await.etag();
    let mut status = String::new();
    for _ in 0..20 {
        let r = fetch(
            &f,
            1,
            proto,
            "/t/small",
            &[("accept-encoding", "gzip, br"), ("if-none-match", &tag)],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        status = r.header("cache-status");
        if status == "sametag; hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "sametag; hit");
}

async fn writes_accept_the_tag_of_any_coding(kind: StoreKind, proto: Proto) {
    let f = Fleet::start(kind, 3, POLICY, db()).await;
    for path in ["/v/doc", "/t/doc"] {
        let br = fetch(&f, 0, proto, path, &[("accept-encoding", "br")]).await;
        let gzip = fetch(&f, 1, proto, path, &[("accept-encoding", "gzip")]).await;
        // A made-up profile of the current tag is no tag of ours.
        let identity = br.etag().trim_end_matches(".br5\"").to_owned() + "\"";
        let forged = br.etag().replace(".br5", ".br4");
        let r = call(
            f.addr(2),
            proto,
            "PUT",
            HOST,
            path,
            &[("if-match", &forged)],
            "x",
        )
        .await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{path}");
        // The browser PUTs with the tag its compressed GET carried.
        let new = doc("replaced");
        let r = call(
            f.addr(2),
            proto,
            "PUT",
            HOST,
            path,
            &[("if-match", &br.etag())],
            &new,
        )
        .await;
        assert!(r.status.is_success(), "{path}: {}", r.status);
        assert_eq!(f.db.doc(path).as_deref(), Some(new.as_str()));
        // The other coding's tag of the old representation is stale now.
        let r = call(
            f.addr(0),
            proto,
            "PUT",
            HOST,
            path,
            &[("if-match", &gzip.etag())],
            "lost",
        )
        .await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        let r = call(
            f.addr(1),
            proto,
            "PUT",
            HOST,
            path,
            &[("if-match", &identity)],
            "lost",
        )
        .await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(f.db.doc(path).as_deref(), Some(new.as_str()));
        // If-None-Match with a coding's tag of the current one fails a write.
        let now = fetch(&f, 1, proto, path, &[("accept-encoding", "zstd")]).await;
        assert_eq!(decode("zstd", &now.body), new.as_bytes());
        let r = call(
            f.addr(0),
            proto,
            "PUT",
            HOST,
            path,
            &[("if-none-match", &now.etag())],
            "x",
        )
        .await;
        assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
        // And the old br tag no longer revalidates anywhere.
        for i in 0..3 {
            let r = fetch(
                &f,
                i,
                proto,
                path,
                &[("accept-encoding", "br"), ("if-none-match", &br.etag())],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{path} replica {i}");
            assert_eq!(decode("br", &r.body), new.as_bytes());
        }
    }
}

async fn head_and_range_match_get(kind: StoreKind, proto: Proto) {
    let f = Fleet::start(kind, 2, POLICY, db()).await;
    let ae = ("accept-encoding", "zstd");
    let get = fetch(&f, 0, proto, "/v/doc", &[ae]).await;
    let head = call(f.addr(1), proto, "HEAD", HOST, "/v/doc", &[ae], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    for h in [
        "etag",
        "content-encoding",
        "content-length",
        "vary",
        "last-modified",
    ] {
        assert_eq!(head.header(h), get.header(h), "{h}");
    }
    // A range of an encoded representation: the whole encoded 200.
    let r = fetch(&f, 1, proto, "/v/doc", &[ae, ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.etag(), get.etag());
    assert_eq!(r.body, get.body);
    // Identity keeps its ranges.
    let r = fetch(&f, 1, proto, "/v/doc", &[("range", "bytes=0-9")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.len(), 10);
}

support::over_stores_and_protocols! {
    every_coding_has_its_own_tag_on_every_replica_and_revalidates,
    clients_that_take_no_coding_get_identity,
    small_bodies_stay_identity_and_trust_still_answers,
    writes_accept_the_tag_of_any_coding,
    head_and_range_match_get,
}

/// An app that answers `/gz` already gzip-encoded, `/png` as an image,
/// `/nt` with `no-transform`, and `/vary` with a `Vary` of its own.
async fn special_app() -> App {
    App::start(|req| async move {
        let text = doc("special");
        let mut r = Response::builder().header("content-type", "text/plain");
        let bytes: Bytes = match req.uri().path() {
            "/gz" => {
                r = r.header("content-encoding", "gzip");
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut e, text.as_bytes()).unwrap();
                e.finish().unwrap().into()
            }
            "/png" => {
                r = Response::builder().header("content-type", "image/png");
                vec![7u8; 4096].into()
            }
            "/nt" => {
                r = r.header("cache-control", "max-age=10, no-transform");
                text.into()
            }
            _ => {
                r = r.header("vary", "Accept-Language");
                text.into()
            }
        };
        r.body(body(bytes)).unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_encoded_and_untransformable_responses_are_left_alone() {
    let app = special_app().await;
    let sidecar = Sidecar::start(
        app.addr,
        "routes: [{path: '/**', compress: [br, gzip]}]",
        Arc::new(MemoryStore::new()),
    )
    .await;
    let ae = ("accept-encoding", "br, gzip");
    // The app's gzip goes through byte for byte, tagged from those bytes.
    let r = get(sidecar.addr, "/gz", &[ae]).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(decode("gzip", &r.body), doc("special").as_bytes());
    assert!(
        !r.etag().contains('.'),
        "a content-derived tag: {}",
        r.etag()
    );
    let again = get(sidecar.addr, "/gz", &[("if-none-match", &r.etag()), ae]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    // Not compressible, or the app said no-transform: identity.
    for path in ["/png", "/nt"] {
        let r = get(sidecar.addr, path, &[ae]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-encoding"), "", "{path}");
        assert!(!r.etag().contains('.'), "{path}");
    }
    // The app's own Vary is kept beside Accept-Encoding.
    let r = get(sidecar.addr, "/text", &[ae]).await;
    assert_eq!(r.header("content-encoding"), "br");
    let vary: Vec<String> = r
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(vary.join(",").contains("accept-language"), "{vary:?}");
    assert!(has_vary_accept_encoding(&r));
    let m = &sidecar.metrics;
    assert_eq!(m.compressed_with("br"), 1);
    assert_eq!(m.compressed_with("gzip"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_compress_are_unchanged() {
    let app = special_app().await;
    let sidecar = Sidecar::validate(app.addr).await;
    let r = get(sidecar.addr, "/text", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.header("vary"), "Accept-Language");
    assert!(!has_vary_accept_encoding(&r));
}
