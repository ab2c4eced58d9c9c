//! RFC 9110 §13.1–13.2 end to end through a real sidecar in front of a real
//! app: each precondition alone, the combinations where order matters, the
//! 304 header set, HEAD, Range/If-Range, Vary keys and credential isolation
//! (the key tests once per store: `in_memory::`, `in_redis::`).

mod support;

use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};
use hyper::body::Incoming;
use support::{App, Got, SharedStore, Sidecar, StoreKind, body, get, send};

const BODY: &str = "hello, conditional world";

fn date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn parse_date(s: &str) -> SystemTime {
    httpdate::parse_http_date(s).unwrap()
}

/// One app, one Validate sidecar, and the first (tagged) response.
async fn setup() -> (App, Sidecar, Got) {
    let app = App::fixed(BODY, "\"app-own-tag\"").await;
    let sidecar = Sidecar::validate(app.addr).await;
    let first = get(sidecar.addr, "/doc", &[]).await;
    (app, sidecar, first)
}

#[tokio::test]
async fn get_is_tagged_with_canonical_validators() {
    let (app, sidecar, first) = setup().await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), BODY);
    let tag = first.etag();
    assert!(
        tag.starts_with('"') && !tag.starts_with("W/"),
        "strong: {tag}"
    );
    assert_ne!(tag, "\"app-own-tag\"", "the app's own tag is replaced");
    // 128 bits base64url without padding: 22 characters.
    assert_eq!(tag.len(), 24, "{tag}");
    let lm = first.header("last-modified");
    assert_ne!(
        lm, "Tue, 01 Jan 2019 00:00:00 GMT",
        "the app's date is replaced"
    );
    assert!(parse_date(&lm) <= SystemTime::now());
    assert!(first.header("via").contains("1.1 sametag"));
    assert!(first.header("cache-status").starts_with("sametag;"));
    assert_eq!(first.header("content-length"), BODY.len().to_string());

    // Same bytes, same tag and date.
    let again = get(sidecar.addr, "/doc", &[]).await;
    assert_eq!(again.etag(), tag);
    assert_eq!(again.header("last-modified"), lm);
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn never_a_304_without_a_condition() {
    let (_app, sidecar, _first) = setup().await;
    for _ in 0..5 {
        let r = get(sidecar.addr, "/doc", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), BODY);
    }
}

#[tokio::test]
async fn if_none_match_alone() {
    let (app, sidecar, first) = setup().await;
    let tag = first.etag();
    let weak = format!("W/{tag}");
    let list = format!("\"nope\", {tag}");
    for (value, want) in [
        (tag.as_str(), StatusCode::NOT_MODIFIED),
        // Weak comparison: W/"x" matches "x".
        (weak.as_str(), StatusCode::NOT_MODIFIED),
        (list.as_str(), StatusCode::NOT_MODIFIED),
        ("*", StatusCode::NOT_MODIFIED),
        ("\"other\"", StatusCode::OK),
    ] {
        let r = get(sidecar.addr, "/doc", &[("if-none-match", value)]).await;
        assert_eq!(r.status, want, "If-None-Match: {value}");
        if want == StatusCode::OK {
            assert_eq!(r.text(), BODY);
        } else {
            assert!(r.body.is_empty());
            assert_eq!(r.etag(), tag);
        }
    }
    // The sidecar evaluated them: the app never saw a conditional header.
    let seen = app.last_headers();
    assert!(seen.get("if-none-match").is_none(), "{seen:?}");
}

#[tokio::test]
async fn if_match_alone() {
    let (_app, sidecar, first) = setup().await;
    let tag = first.etag();
    let weak = format!("W/{tag}");
    for (value, want) in [
        (tag.as_str(), StatusCode::OK),
        ("*", StatusCode::OK),
        // Strong comparison: a weak tag never matches.
        (weak.as_str(), StatusCode::PRECONDITION_FAILED),
        ("\"other\"", StatusCode::PRECONDITION_FAILED),
    ] {
        let r = get(sidecar.addr, "/doc", &[("if-match", value)]).await;
        assert_eq!(r.status, want, "If-Match: {value}");
    }
}

#[tokio::test]
async fn if_modified_since_alone() {
    let (_app, sidecar, first) = setup().await;
    let lm = first.header("last-modified");
    let lm_time = parse_date(&lm);
    let earlier = date(lm_time - Duration::from_secs(60));
    let future = date(SystemTime::now() + Duration::from_secs(3600));
    for (value, want) in [
        (lm.as_str(), StatusCode::NOT_MODIFIED),
        (earlier.as_str(), StatusCode::OK),
        // A date in the future is ignored: never pin a 304 on a bad clock.
        (future.as_str(), StatusCode::OK),
        ("not a date", StatusCode::OK),
    ] {
        let r = get(sidecar.addr, "/doc", &[("if-modified-since", value)]).await;
        assert_eq!(r.status, want, "If-Modified-Since: {value}");
    }
}

#[tokio::test]
async fn if_unmodified_since_alone() {
    let (_app, sidecar, first) = setup().await;
    let lm_time = parse_date(&first.header("last-modified"));
    let earlier = date(lm_time - Duration::from_secs(60));
    let same = date(lm_time);
    for (value, want) in [
        (same.as_str(), StatusCode::OK),
        (earlier.as_str(), StatusCode::PRECONDITION_FAILED),
        ("garbage", StatusCode::OK),
    ] {
        let r = get(sidecar.addr, "/doc", &[("if-unmodified-since", value)]).await;
        assert_eq!(r.status, want, "If-Unmodified-Since: {value}");
    }
}

#[tokio::test]
async fn order_if_match_before_if_none_match() {
    let (_app, sidecar, first) = setup().await;
    let tag = first.etag();
    // If-Match fails first: 412, even though If-None-Match would give 304.
    let r = get(
        sidecar.addr,
        "/doc",
        &[("if-match", "\"other\""), ("if-none-match", &tag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // If-Match holds, then If-None-Match decides: 304.
    let r = get(
        sidecar.addr,
        "/doc",
        &[("if-match", &tag), ("if-none-match", &tag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn order_if_unmodified_since_ignored_with_if_match() {
    let (_app, sidecar, first) = setup().await;
    let tag = first.etag();
    let lm_time = parse_date(&first.header("last-modified"));
    let earlier = date(lm_time - Duration::from_secs(60));
    // Alone it fails; with a matching If-Match it is not evaluated.
    let r = get(
        sidecar.addr,
        "/doc",
        &[("if-match", &tag), ("if-unmodified-since", &earlier)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn order_if_modified_since_ignored_with_if_none_match() {
    let (_app, sidecar, first) = setup().await;
    let lm = first.header("last-modified");
    // If-None-Match does not match -> 200, although the date alone says 304.
    let r = get(
        sidecar.addr,
        "/doc",
        &[("if-none-match", "\"other\""), ("if-modified-since", &lm)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), BODY);
    // And the reverse: a matching tag wins over an old date.
    let old = date(parse_date(&lm) - Duration::from_secs(3600));
    let r = get(
        sidecar.addr,
        "/doc",
        &[
            ("if-none-match", &first.etag()),
            ("if-modified-since", &old),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn if_unmodified_since_then_if_none_match() {
    let (_app, sidecar, first) = setup().await;
    let lm = first.header("last-modified");
    let earlier = date(parse_date(&lm) - Duration::from_secs(60));
    // IUS fails before INM is looked at.
    let r = get(
        sidecar.addr,
        "/doc",
        &[
            ("if-unmodified-since", &earlier),
            ("if-none-match", &first.etag()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn range_and_if_range() {
    let (app, sidecar, first) = setup().await;
    let tag = first.etag();
    let r = get(sidecar.addr, "/doc", &[("range", "bytes=0-4")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), &BODY[..5]);
    assert_eq!(
        r.header("content-range"),
        format!("bytes 0-4/{}", BODY.len())
    );
    assert_eq!(r.etag(), tag);
    // The app saw neither Range nor If-Range: the sidecar needs the whole body.
    let r = get(
        sidecar.addr,
        "/doc",
        &[("range", "bytes=0-4"), ("if-range", &tag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(app.last_headers().get("range").is_none());
    assert!(app.last_headers().get("if-range").is_none());
    // A stale or weak validator, or a date: the whole representation.
    let weak = format!("W/{tag}");
    let lm = first.header("last-modified");
    for if_range in ["\"stale\"", weak.as_str(), lm.as_str()] {
        let r = get(
            sidecar.addr,
            "/doc",
            &[("range", "bytes=0-4"), ("if-range", if_range)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "If-Range: {if_range}");
        assert_eq!(r.text(), BODY);
    }
    let r = get(sidecar.addr, "/doc", &[("range", "bytes=1000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn not_modified_carries_exactly_the_rfc_header_set() {
    let app = App::start(|_req: http::Request<Incoming>| async {
        Response::builder()
            .header("content-type", "text/html")
            .header("cache-control", "max-age=60")
            .header("expires", "Thu, 01 Jan 2037 00:00:00 GMT")
            .header("vary", "Accept-Encoding")
            .header("content-location", "/doc.html")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-app-private", "secret")
            .header("etag", "\"app\"")
            .header("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT")
            .body(body("<p>x</p>"))
            .unwrap()
    })
    .await;
    let sidecar = Sidecar::validate(app.addr).await;
    let first = get(sidecar.addr, "/doc", &[]).await;
    let r = get(sidecar.addr, "/doc", &[("if-none-match", &first.etag())]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let mut names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "cache-control",
            "cache-status",
            "content-location",
            "date",
            "etag",
            "expires",
            "last-modified",
            "set-cookie",
            "vary",
            "via",
        ],
        "{:?}",
        r.headers
    );
    assert_eq!(r.headers.get_all("set-cookie").iter().count(), 2);
    assert_eq!(r.etag(), first.etag());
    assert_eq!(r.header("last-modified"), first.header("last-modified"));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn head_gets_the_same_tag_as_get() {
    let (app, sidecar, first) = setup().await;
    let head = send(sidecar.addr, "HEAD", "/doc", &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.etag(), first.etag());
    assert_eq!(head.header("last-modified"), first.header("last-modified"));
    assert_eq!(head.header("content-length"), BODY.len().to_string());
    // The app got a GET so the body could be hashed.
    assert_eq!(app.last_method(), http::Method::GET);
    let head = send(
        sidecar.addr,
        "HEAD",
        "/doc",
        &[("if-none-match", &first.etag())],
        "",
    )
    .await;
    assert_eq!(head.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn vary_selects_the_variant() {
    let app = App::start(|req: http::Request<Incoming>| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "en".into());
        Response::builder()
            .header("vary", "Accept-Language")
            .header("content-language", lang.clone())
            .body(body(format!("greeting in {lang}")))
            .unwrap()
    })
    .await;
    let sidecar = Sidecar::validate(app.addr).await;
    let en = get(sidecar.addr, "/hi", &[("accept-language", "en")]).await;
    let fr = get(sidecar.addr, "/hi", &[("accept-language", "fr")]).await;
    assert_ne!(en.etag(), fr.etag());
    assert_eq!(en.header("vary"), "Accept-Language");
    // The English tag does not validate the French variant.
    let r = get(
        sidecar.addr,
        "/hi",
        &[("accept-language", "fr"), ("if-none-match", &en.etag())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "greeting in fr");
    let r = get(
        sidecar.addr,
        "/hi",
        &[("accept-language", "en"), ("if-none-match", &en.etag())],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

const TRUST: &str = "mode: Trust\nmaxAge: 60s\n";

/// An app whose body depends on the caller.
async fn personal_app() -> App {
    App::start(|req: http::Request<Incoming>| async move {
        let who = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Response::builder()
            .header("cache-control", "private")
            .body(body(format!("inbox of {who}")))
            .unwrap()
    })
    .await
}

async fn credentials_never_share_tag_state(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let app = personal_app().await;
    let sidecar = Sidecar::start(app.addr, TRUST, shared.replica().await).await;
    let alice = [("authorization", "Bearer alice")];
    let a = get(sidecar.addr, "/inbox", &alice).await;
    // Alice revalidates: answered from the store, the app is not asked.
    let hits = app.hits();
    let r = get(
        sidecar.addr,
        "/inbox",
        &[
            ("authorization", "Bearer alice"),
            ("if-none-match", &a.etag()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("cache-status"), "sametag; hit");
    assert_eq!(app.hits(), hits);
    // Bob presents Alice's tag: his scope knows nothing, the app is asked,
    // and he gets his own inbox.
    let r = get(
        sidecar.addr,
        "/inbox",
        &[
            ("authorization", "Bearer bob"),
            ("if-none-match", &a.etag()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "inbox of Bearer bob");
    assert_eq!(app.hits(), hits + 1);
}

async fn shared_routes_use_one_key_for_all_users(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let app = App::fixed("public page", "\"x\"").await;
    let policy = "mode: Trust\nmaxAge: 60s\nroutes:\n  - path: /public/**\n    mode: Trust\n    maxAge: 60s\n    shared: true\n";
    let sidecar = Sidecar::start(app.addr, policy, shared.replica().await).await;
    let a = get(sidecar.addr, "/public/p", &[("cookie", "session=a")]).await;
    let hits = app.hits();
    let r = get(
        sidecar.addr,
        "/public/p",
        &[("cookie", "session=b"), ("if-none-match", &a.etag())],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(app.hits(), hits);
}

async fn equivalent_spellings_share_one_key(kind: StoreKind) {
    let shared = SharedStore::new(kind);
    let app = App::fixed("page", "\"x\"").await;
    let sidecar = Sidecar::start(app.addr, TRUST, shared.replica().await).await;
    let a = get(sidecar.addr, "/~user/page", &[("host", "Example.COM:80")]).await;
    let hits = app.hits();
    let r = get(
        sidecar.addr,
        "/%7Euser/page",
        &[("host", "example.com"), ("if-none-match", &a.etag())],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(app.hits(), hits, "answered from the same key");
    // Path case is not merged.
    let r = get(
        sidecar.addr,
        "/~User/page",
        &[("host", "example.com"), ("if-none-match", &a.etag())],
    )
    .await;
    assert_eq!(app.hits(), hits + 1, "a different resource: {:?}", r.status);
}

support::over_stores! {
    credentials_never_share_tag_state,
    shared_routes_use_one_key_for_all_users,
    equivalent_spellings_share_one_key,
}
