//! Invalidation from outside HTTP: `Surrogate-Key` labels, `POST /purge` on
//! the admin port and the purge marks of both stores. After a purge returns,
//! no replica answers a trusted 304 for what it named (under any Host name,
//! user or query), what it did not name keeps its trusted 304s, the header
//! never reaches a client, and losing purge state never re-trusts.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use sametag_sidecar::admin::Admin;
use sametag_sidecar::metrics::Metrics;
use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use sametag_sidecar::store::{KeyId, Labels, Purge, ResourceKey, Store};
use support::fleet::call;
use support::redis_server::{RedisServer, test_options};
use support::store_checks::{V, key, tag};
use support::{Db, Fleet, Got, Proto, StoreKind, over_stores};

const POLICY: &str = "\
mode: Validate
routes:
  - path: /trust/**
    mode: Trust
    maxAge: 60s
  - path: /bypass/**
    mode: Bypass
";

/// Distinct read keys of one path: Host names, users, queries.
const HOSTS: [&str; 3] = ["app.example", "app.internal:8080", "www.app.example"];
const USERS: [&[(&str, &str)]; 3] = [
    &[],
    &[("authorization", "Bearer alice")],
    &[("cookie", "session=bob")],
];
const QUERIES: [&str; 2] = ["", "?page=2"];

/// One read key's spelling: Host, credentials, query.
type Combo = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// Every (host, user, query) combination.
fn combos() -> Vec<Combo> {
    let mut out = Vec::new();
    for h in HOSTS {
        for u in USERS {
            for q in QUERIES {
                out.push((h, u, q));
            }
        }
    }
    out
}

/// A token file in the temp directory, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(token: &str) -> TokenFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "sametag-purge-token-{}-{nanos}",
            std::process::id()
        ));
        std::fs::write(&path, token).unwrap();
        TokenFile(path)
    }

    fn rotate(&self, token: &str) {
        std::fs::write(&self.0, token).unwrap();
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An admin server over one more replica's store handle (a purge reaches
/// one pod; every other replica must see it).
async fn admin(store: Arc<dyn Store>, token_file: Option<PathBuf>) -> (SocketAddr, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let admin = Admin {
        metrics: metrics.clone(),
        store,
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        purge_token_file: token_file,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener, std::future::pending()));
    (addr, metrics)
}

async fn post_purge(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> Got {
    call(addr, Proto::H1, "POST", "admin", "/purge", headers, body).await
}

const TOKEN: &str = "s3cret-purge-token";

/// A fleet of 3 over `db` and an admin with the token.
async fn fleet_with_admin(
    kind: StoreKind,
    db: Arc<Db>,
) -> (Fleet, SocketAddr, Arc<Metrics>, TokenFile) {
    let fleet = Fleet::start(kind, 3, POLICY, db).await;
    let token = TokenFile::new(&format!("{TOKEN}\n"));
    let (addr, metrics) = admin(fleet.store.replica().await, Some(token.0.clone())).await;
    (fleet, addr, metrics, token)
}

/// GET `target` through sidecar `i` unconditionally: its tag.
async fn warm(fleet: &Fleet, i: usize, host: &str, user: &[(&str, &str)], target: &str) -> String {
    let got = call(fleet.addr(i), Proto::H1, "GET", host, target, user, "").await;
    assert_eq!(got.status, StatusCode::OK, "{host}{target}");
    assert!(got.header("surrogate-key").is_empty(), "stripped");
    got.etag()
}

/// A conditional GET through sidecar `i`: whether it was a trusted 304
/// (answered from the store, app not called).
async fn trusted_304(
    fleet: &Fleet,
    i: usize,
    host: &str,
    user: &[(&str, &str)],
    target: &str,
    tag: &str,
) -> bool {
    let mut headers = user.to_vec();
    headers.push(("if-none-match", tag));
    let got = call(fleet.addr(i), Proto::H1, "GET", host, target, &headers, "").await;
    assert_eq!(got.status, StatusCode::NOT_MODIFIED, "{host}{target}");
    assert!(got.header("surrogate-key").is_empty(), "stripped");
    let status = got.header("cache-status");
    if status != "sametag; hit" {
        eprintln!("{host}{target} on replica {}: {status}", i % 3);
    }
    status == "sametag; hit"
}

/// A precondition: a trusted 304 within three tries. A miss re-validates;
/// on a loaded machine a store call can time out (the read degrades), and a
/// validation another replica just recorded reaches this replica's cache
/// with Redis' push. (The checks after a purge are single tries: a miss
/// there is what they assert.)
async fn trusted_soon(
    fleet: &Fleet,
    i: usize,
    host: &str,
    user: &[(&str, &str)],
    target: &str,
    tag: &str,
) -> bool {
    for _ in 0..3 {
        if trusted_304(fleet, i, host, user, target, tag).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The labelled documents of the API test, each under every query.
const DOCS: [(&str, &str); 5] = [
    ("/trust/a/1", "a1 group"),
    ("/trust/a/2", "a2 group"),
    ("/trust/b/1", "b1"),
    ("/trust/c/1", "c1"),
    ("/trust/keep", "keep"),
];

fn labelled_db() -> Arc<Db> {
    let db = Db::with(&[]);
    for (path, labels) in DOCS {
        for q in QUERIES {
            let doc = format!("{path}{q}");
            db.docs
                .lock()
                .unwrap()
                .insert(doc.clone(), format!("body of {doc}"));
            db.label(&doc, labels);
        }
    }
    db
}

/// One round: every read key of every document is a trusted 304 on every
/// replica (their local caches warm); the purge returns 200; then each read
/// key (checked once, on rotating replicas: a forwarded check validates
/// again) is a trusted 304 exactly when `affected` does not name its path.
async fn round(
    fleet: &Fleet,
    admin: SocketAddr,
    tags: &[(String, String)],
    body: &str,
    affected: &[&str],
) {
    let combos = combos();
    for (n, (path, _)) in DOCS.iter().enumerate() {
        for (c, (host, user, q)) in combos.iter().enumerate() {
            let target = format!("{path}{q}");
            let tag = &tags[n * combos.len() + c].1;
            for i in 0..3 {
                let hit = trusted_soon(fleet, i, host, user, &target, tag).await;
                assert!(
                    hit,
                    "before {body}: {host}{target} {user:?} trusted on replica {i}"
                );
            }
        }
    }
    let got = post_purge(
        admin,
        &[("authorization", &format!("Bearer {TOKEN}"))],
        body,
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    for (n, (path, _)) in DOCS.iter().enumerate() {
        for (c, (host, user, q)) in combos.iter().enumerate() {
            let target = format!("{path}{q}");
            let tag = &tags[n * combos.len() + c].1;
            let i = n + c;
            let refusals = fleet.sidecars[i % 3].metrics.purge_refusals();
            let hit = trusted_304(fleet, i, host, user, &target, tag).await;
            let what = format!("after {body}: {host}{target} {user:?} on replica {}", i % 3);
            if affected.contains(path) {
                assert!(!hit, "{what}");
            } else if !hit {
                // A loaded machine may time a store call out (the read
                // degrades); a purge mark must not be why.
                let now = fleet.sidecars[i % 3].metrics.purge_refusals();
                assert_eq!(now, refusals, "{what}: refused by a purge");
            }
        }
    }
}

async fn purge_api_by_path_glob_and_key(kind: StoreKind) {
    let (fleet, admin, metrics, _token) = fleet_with_admin(kind, labelled_db()).await;
    let mut tags = Vec::new();
    for (path, _) in DOCS {
        for (host, user, q) in combos() {
            let target = format!("{path}{q}");
            tags.push((target.clone(), warm(&fleet, 0, host, user, &target).await));
        }
    }
    round(
        &fleet,
        admin,
        &tags,
        r#"{"paths": ["/trust/b/1"]}"#,
        &["/trust/b/1"],
    )
    .await;
    round(
        &fleet,
        admin,
        &tags,
        r#"{"paths": ["/trust/c/*"]}"#,
        &["/trust/c/1"],
    )
    .await;
    round(
        &fleet,
        admin,
        &tags,
        r#"{"keys": ["group"]}"#,
        &["/trust/a/1", "/trust/a/2"],
    )
    .await;
    round(
        &fleet,
        admin,
        &tags,
        r#"{"paths": ["/trust/a/**"], "keys": ["b1"]}"#,
        &["/trust/a/1", "/trust/a/2", "/trust/b/1"],
    )
    .await;
    assert_eq!(metrics.purges_with("path", "api"), 1);
    assert_eq!(metrics.purges_with("glob", "api"), 2);
    assert_eq!(metrics.purges_with("key", "api"), 2);
    let refused: u64 = fleet
        .sidecars
        .iter()
        .map(|s| s.metrics.purge_refusals())
        .sum();
    assert!(refused > 0, "refusals because of purge marks are counted");
}

/// 200 resources share a key; a write whose response names it purges all.
async fn a_write_response_purges_a_key_shared_by_many(kind: StoreKind) {
    let db = Db::with(&[("/trust/other", "x")]);
    for i in 0..200 {
        let doc = format!("/trust/many/{i}");
        db.docs
            .lock()
            .unwrap()
            .insert(doc.clone(), format!("item {i}"));
        db.label(&doc, &format!("item-{i} shared"));
    }
    let fleet = Fleet::start(kind, 3, POLICY, db).await;
    let mut tags = Vec::new();
    for i in 0..200 {
        let target = format!("/trust/many/{i}");
        let tag = warm(&fleet, i, "app.example", &[], &target).await;
        assert!(trusted_soon(&fleet, i + 1, "app.example", &[], &target, &tag).await);
        tags.push(tag);
    }
    // A write to another resource whose response names the shared key.
    let got = call(
        fleet.addr(0),
        Proto::H1,
        "PUT",
        "app.example",
        "/trust/other",
        &[("x-surrogate-key", "shared unrelated")],
        "y",
    )
    .await;
    assert!(got.status.is_success());
    assert!(
        got.header("surrogate-key").is_empty(),
        "stripped from the write's response"
    );
    assert_eq!(fleet.sidecars[0].metrics.purges_with("key", "write"), 2);
    for (i, tag) in tags.iter().enumerate() {
        let target = format!("/trust/many/{i}");
        assert!(
            !trusted_304(&fleet, i + 2, "app.example", &[], &target, tag).await,
            "{target} after the write's purge"
        );
    }
    // A write the app refused purges nothing.
    let got = call(
        fleet.addr(1),
        Proto::H1,
        "DELETE",
        "app.example",
        "/trust/absent",
        &[("x-surrogate-key", "shared")],
        "",
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(got.header("surrogate-key").is_empty());
    assert_eq!(fleet.sidecars[1].metrics.purges_with("key", "write"), 0);
    assert!(trusted_soon(&fleet, 2, "app.example", &[], "/trust/many/0", &tags[0]).await);
}

/// `Surrogate-Key` never reaches a client: tagged, trusted, Validate,
/// Bypass, 404, HEAD, writes.
async fn the_header_never_reaches_a_client(kind: StoreKind) {
    let db = Db::with(&[("/doc", "v"), ("/trust/doc", "t"), ("/bypass/doc", "b")]);
    for doc in ["/doc", "/trust/doc", "/bypass/doc", "/missing"] {
        db.label(doc, "k1 k2");
    }
    let fleet = Fleet::start(kind, 2, POLICY, db).await;
    for (method, target, headers) in [
        ("GET", "/doc", vec![]),
        ("HEAD", "/doc", vec![]),
        ("GET", "/trust/doc", vec![]),
        ("GET", "/bypass/doc", vec![]),
        ("GET", "/missing", vec![]),
        ("PUT", "/doc", vec![("x-surrogate-key", "k1")]),
        ("PUT", "/bypass/doc", vec![("x-surrogate-key", "k1")]),
        ("DELETE", "/nothing", vec![("x-surrogate-key", "k1")]),
        ("OPTIONS", "/doc", vec![("x-surrogate-key", "k1")]),
    ] {
        let body = if matches!(method, "GET" | "HEAD") {
            ""
        } else {
            "b"
        };
        for proto in [Proto::H1, Proto::H2] {
            let got = call(
                fleet.addr(0),
                proto,
                method,
                "app.example",
                target,
                &headers,
                body,
            )
            .await;
            assert!(
                got.header("surrogate-key").is_empty(),
                "{method} {target} {proto:?}: {:?}",
                got.headers
            );
        }
    }
}

/// Purge needs the token; nothing is purged without it; bad bodies are 400.
async fn purge_api_refuses_what_it_must(kind: StoreKind) {
    let (fleet, admin, metrics, token) = fleet_with_admin(kind, labelled_db()).await;
    let tag = warm(&fleet, 0, "app.example", &[], "/trust/keep").await;
    let body = r#"{"keys": ["keep"]}"#;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Basic czNjcmV0")],
        vec![("sametag-purge-token", "wrong")],
    ] {
        let got = post_purge(admin, &headers, body).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(
            got.header("www-authenticate"),
            "Bearer realm=\"sametag-purge\""
        );
    }
    assert!(
        trusted_304(&fleet, 1, "app.example", &[], "/trust/keep", &tag).await,
        "nothing purged without the token"
    );
    let auth = format!("Bearer {TOKEN}");
    for (body, want) in [
        ("not json", StatusCode::BAD_REQUEST),
        ("{}", StatusCode::BAD_REQUEST),
        (r#"{"paths": ["relative"]}"#, StatusCode::BAD_REQUEST),
        (r#"{"paths": ["/a/[b"]}"#, StatusCode::BAD_REQUEST),
        (r#"{"keys": ["two words"]}"#, StatusCode::BAD_REQUEST),
        (r#"{"unknown": 1}"#, StatusCode::BAD_REQUEST),
    ] {
        let got = post_purge(admin, &[("authorization", &auth)], body).await;
        assert_eq!(got.status, want, "{body}: {}", got.text());
        assert_eq!(got.text().lines().count(), 1, "one line: {}", got.text());
    }
    // Just over the bound (the client finishes sending before the answer).
    let huge = format!(r#"{{"keys": ["{}"]}}"#, "k".repeat(256 * 1024));
    let got = post_purge(admin, &[("authorization", &auth)], &huge).await;
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
    let got = call(admin, Proto::H1, "GET", "admin", "/purge", &[], "").await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(got.header("allow"), "POST");
    assert!(trusted_304(&fleet, 2, "app.example", &[], "/trust/keep", &tag).await);

    // The other header (the apiserver's pod proxy strips Authorization).
    let got = post_purge(admin, &[("sametag-purge-token", TOKEN)], body).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let summary: serde_json::Value = serde_json::from_str(&got.text()).unwrap();
    assert_eq!(summary["keys"], 1);
    assert_eq!(got.header("content-type"), "application/json");
    assert!(!trusted_304(&fleet, 0, "app.example", &[], "/trust/keep", &tag).await);

    // A rotated Secret: the file is re-read on every purge.
    token.rotate("  rotated\n");
    let got = post_purge(admin, &[("authorization", &auth)], body).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    let got = post_purge(admin, &[("authorization", "Bearer rotated")], body).await;
    assert_eq!(got.status, StatusCode::OK);
    token.rotate("");
    let got = post_purge(admin, &[("authorization", "Bearer rotated")], body).await;
    assert_eq!(
        got.status,
        StatusCode::FORBIDDEN,
        "an empty token file disables purge"
    );

    // No token file at all: purge is disabled.
    let (off, _) = admin_without_token(&fleet).await;
    let got = post_purge(off, &[("authorization", &auth)], body).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(got.text().contains("--purge-token-file"), "{}", got.text());
    // GET endpoints are as they were.
    let got = call(admin, Proto::H1, "GET", "admin", "/healthz", &[], "").await;
    assert_eq!(got.status, StatusCode::OK);
    let m = call(admin, Proto::H1, "GET", "admin", "/metrics", &[], "")
        .await
        .text();
    for line in [
        "sametag_purges_total{kind=\"key\",source=\"api\"} 2",
        "sametag_purge_requests_total{code=\"401\"} 5",
        "sametag_purge_requests_total{code=\"200\"} 2",
        "sametag_purge_marks ",
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
    assert_eq!(metrics.purges_with("key", "api"), 2);
}

async fn admin_without_token(fleet: &Fleet) -> (SocketAddr, Arc<Metrics>) {
    admin(fleet.store.replica().await, None).await
}

over_stores! {
    purge_api_by_path_glob_and_key,
    a_write_response_purges_a_key_shared_by_many,
    the_header_never_reaches_a_client,
    purge_api_refuses_what_it_must,
}

// === The Redis store's purge state, through its Store API ===

/// Three replicas' handles on one Redis.
async fn replicas(redis: &RedisServer, prefix: &str, o: RedisOptions) -> Vec<RedisStore> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let s = RedisStore::connect(&redis.url(), prefix, o.clone()).unwrap();
        assert!(s.wait_up(Duration::from_secs(5)).await);
        out.push(s);
    }
    out
}

fn labels(keys: &[&str]) -> Labels {
    Labels::of(keys.iter().map(|k| KeyId::of(k.as_bytes())).collect())
}

async fn record(s: &RedisStore, k: &ResourceKey, keys: &[&str]) {
    s.record_with(k, &[], &V(), &tag("t"), true, &labels(keys))
        .await
        .unwrap();
}

/// Whether every replica's next lookup trusts `k` (asserting they agree
/// when `all_agree`). A lookup answered from a replica's local cache counts.
async fn trusted_on(stores: &[RedisStore], k: &ResourceKey) -> Vec<bool> {
    let mut out = Vec::new();
    for s in stores {
        let r = s.lookup(k, &[]).await.unwrap();
        out.push(
            r.and_then(|r| r.variant(&V()).and_then(|e| e.validated_at))
                .is_some(),
        );
    }
    out
}

/// Warm every replica's cache with trusted lookups (a validation recorded
/// through one replica reaches the others' caches once their reader has
/// applied its push).
async fn all_trust(stores: &[RedisStore], k: &ResourceKey) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while trusted_on(stores, k).await != vec![true; stores.len()] {
        assert!(
            std::time::Instant::now() < deadline,
            "{k:?} trusted everywhere"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn none_trust(found: Vec<bool>, what: &str) {
    assert_eq!(found, vec![false; found.len()], "{what}");
}

async fn redis_losing_purge_state_never_re_trusts(kind: StoreKind) {
    let redis = RedisServer::start_on(kind.engine().expect("a Redis-protocol store"));
    let s = replicas(&redis, "purge", test_options(Duration::ZERO)).await;
    let (a, b) = (key("/a"), key("/b"));
    record(&s[0], &a, &["ka"]).await;
    record(&s[0], &b, &["kb"]).await;
    all_trust(&s, &a).await;
    all_trust(&s, &b).await;

    // The key-mark hash deleted: nothing labelled is trusted anywhere,
    // from a local cache or not.
    s[1].purge(&Purge::keys(vec![KeyId::of(b"ka")]))
        .await
        .unwrap();
    none_trust(trusted_on(&s, &a).await, "a after its key was purged");
    let mut admin = redis.admin();
    let _: () = redis::cmd("DEL")
        .arg("{purge}:k")
        .query(&mut admin)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    none_trust(trusted_on(&s, &a).await, "a after the key marks were lost");
    none_trust(trusted_on(&s, &b).await, "b after the key marks were lost");
    // The next validation bumps the epoch (floor raised) and is trusted.
    record(&s[2], &a, &["ka"]).await;
    all_trust(&s, &a).await;
    none_trust(trusted_on(&s, &b).await, "b validated before the loss");
    record(&s[0], &b, &["kb"]).await;
    all_trust(&s, &b).await;

    // The purge hash (glob marks, floor) deleted.
    s[0].purge(&Purge {
        globs: vec!["/a".into()],
        ..Purge::default()
    })
    .await
    .unwrap();
    none_trust(trusted_on(&s, &a).await, "a after its glob was purged");
    let _: () = redis::cmd("DEL")
        .arg("{purge}:x")
        .query(&mut admin)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    none_trust(trusted_on(&s, &a).await, "a after the glob marks were lost");
    none_trust(trusted_on(&s, &b).await, "b after the glob marks were lost");
    record(&s[0], &a, &["ka"]).await;
    record(&s[0], &b, &["kb"]).await;
    all_trust(&s, &a).await;
    all_trust(&s, &b).await;

    // The order set lost while marks stand: the next purge starts over
    // (marks it cannot prune are dropped) and raises the floor.
    let unrelated = Purge {
        globs: vec!["/elsewhere/**".into()],
        ..Purge::default()
    };
    s[2].purge(&unrelated).await.unwrap();
    all_trust(&s, &a).await;
    let _: () = redis::cmd("DEL")
        .arg("{purge}:z:x")
        .query(&mut admin)
        .unwrap();
    let report = s[1]
        .purge(&Purge::keys(vec![KeyId::of(b"zz")]))
        .await
        .unwrap();
    assert_eq!(report.marks, 1, "{report:?}");
    none_trust(trusted_on(&s, &a).await, "a after the mark order was lost");
    none_trust(trusted_on(&s, &b).await, "b after the mark order was lost");

    // FLUSHALL: everything gone, nothing trusted.
    record(&s[0], &a, &["ka"]).await;
    all_trust(&s, &a).await;
    let _: () = redis::cmd("FLUSHALL").query(&mut admin).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let found: Vec<bool> = trusted_on(&s, &a).await;
    none_trust(found, "a after FLUSHALL");
}

async fn redis_mark_cap_raises_the_floor_and_the_guard_holds(kind: StoreKind) {
    let redis = RedisServer::start_on(kind.engine().expect("a Redis-protocol store"));
    let o = RedisOptions {
        max_key_marks: 3,
        max_glob_marks: 2,
        ..test_options(Duration::ZERO)
    };
    let s = replicas(&redis, "cap", o).await;
    let (a, b) = (key("/a"), key("/b"));
    record(&s[0], &a, &["k0"]).await;
    all_trust(&s, &a).await;
    s[0].purge(&Purge::keys(vec![KeyId::of(b"k0")]))
        .await
        .unwrap();
    record(&s[0], &b, &["kb"]).await;
    all_trust(&s, &b).await;
    let mut raised = false;
    for i in 1..8 {
        let id = KeyId::of(format!("other{i}").as_bytes());
        let report = s[1].purge(&Purge::keys(vec![id])).await.unwrap();
        assert!(report.marks <= 3, "{report:?}");
        raised |= report.floor_raised;
    }
    assert!(raised, "the cap dropped live marks");
    none_trust(
        trusted_on(&s, &a).await,
        "a: its mark dropped, the floor holds",
    );
    none_trust(trusted_on(&s, &b).await, "b: older than the floor");
    // Glob marks have their own cap.
    for i in 0..5 {
        let report = s[2]
            .purge(&Purge {
                globs: vec![format!("/g{i}/**").into()],
                ..Purge::default()
            })
            .await
            .unwrap();
        assert!(report.marks <= 5, "{report:?}");
    }
    let mut admin = redis.admin();
    let globs: i64 = redis::cmd("ZCARD")
        .arg("{cap}:z:x")
        .query(&mut admin)
        .unwrap();
    assert_eq!(globs, 2);

    // The guard: a validation recorded within it after a purge of one of
    // its keys is not trusted (the GET may have read the old data).
    drop(s);
    let s = replicas(
        &redis,
        "guard",
        RedisOptions {
            trust_guard: Duration::from_millis(300),
            ..test_options(Duration::ZERO)
        },
    )
    .await;
    let c = key("/c");
    s[0].purge(&Purge::keys(vec![KeyId::of(b"kc")]))
        .await
        .unwrap();
    record(&s[1], &c, &["kc"]).await;
    none_trust(trusted_on(&s, &c).await, "c recorded within the guard");
    // An unrelated key recorded now is trusted at once.
    let d = key("/d");
    record(&s[1], &d, &["kd"]).await;
    all_trust(&s, &d).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    record(&s[1], &c, &["kc"]).await;
    all_trust(&s, &c).await;
    // Too many labels: never trusted.
    let many: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    record(&s[0], &c, &many).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    none_trust(trusted_on(&s, &c).await, "c with too many labels");
}

async fn purge_api_answers_503_while_the_store_is_down(kind: StoreKind) {
    let mut redis = RedisServer::start_on(kind.engine().expect("a Redis-protocol store"));
    let s = replicas(&redis, "down", test_options(Duration::ZERO)).await;
    let token = TokenFile::new(TOKEN);
    let (addr, metrics) = admin(Arc::new(s[0].clone()), Some(token.0.clone())).await;
    let body = r#"{"keys": ["k"]}"#;
    let got = post_purge(addr, &[("sametag-purge-token", TOKEN)], body).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    redis.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s[0].health() == sametag_sidecar::store::StoreHealth::Up {
        assert!(std::time::Instant::now() < deadline, "the store notices");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = post_purge(addr, &[("sametag-purge-token", TOKEN)], body).await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        got.text()
    );
    assert_eq!(got.header("retry-after"), "1");
    assert_eq!(
        metrics.purges_with("key", "api"),
        1,
        "only the acknowledged one"
    );
}

support::over_engines! {
    redis_losing_purge_state_never_re_trusts,
    redis_mark_cap_raises_the_floor_and_the_guard_holds,
    purge_api_answers_503_while_the_store_is_down,
}
