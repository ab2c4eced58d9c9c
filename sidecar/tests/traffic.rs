//! Real traffic through several replicas sharing one store, over both stores
//! and over HTTP/1.1 and h2c: several users (Authorization, Cookie), several
//! Host names for one Service, query strings, dot segments and unsafe
//! methods beyond PUT/PATCH/DELETE/POST. The app replicas share one database
//! (their state), so a lost update or a stale 304 is real, not simulated.
//!
//! What a write locks and invalidates is the resource: the canonical path
//! (plus the query for the lock), whoever writes and whichever Host name
//! they use (DESIGN "Keys").

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{Db, Fleet, Got, Proto, StoreKind, call};

const POLICY: &str = "\
mode: Validate
routes:
  - path: /t/**
    mode: Trust
    maxAge: 60s
";

const ALICE: &[(&str, &str)] = &[("authorization", "Bearer alice")];
const BOB: &[(&str, &str)] = &[("authorization", "Bearer bob")];
const CAROL: &[(&str, &str)] = &[("cookie", "session=carol")];
const ANON: &[(&str, &str)] = &[];

/// Names under which one Service is reached.
const SHOP: &str = "shop";
const SHOP_FQDN: &str = "shop.shop.svc.cluster.local";
const SHOP_PORT: &str = "SHOP:80";

/// How long the app takes to apply a contended write: long enough that
/// both writers' precondition checks would see the old state if nothing
/// serialised them.
const WRITE_DELAY_MS: &str = "60";

/// One read-modify-write client.
#[derive(Clone, Copy)]
struct Writer {
    name: &'static str,
    via: SocketAddr,
    host: &'static str,
    target: &'static str,
    creds: &'static [(&'static str, &'static str)],
}

impl Writer {
    async fn get(&self, proto: Proto, extra: &[(&str, &str)]) -> Got {
        let mut h = self.creds.to_vec();
        h.extend_from_slice(extra);
        call(self.via, proto, "GET", self.host, self.target, &h, "").await
    }

    async fn send(&self, proto: Proto, method: &str, extra: &[(&str, &str)], body: &str) -> Got {
        let mut h = self.creds.to_vec();
        h.extend_from_slice(extra);
        call(self.via, proto, method, self.host, self.target, &h, body).await
    }

    /// GET, then PUT `body` with `If-Match` of what it read.
    async fn read_modify_write(&self, proto: Proto, body: &str) -> (String, Got) {
        let read = self.get(proto, &[]).await;
        assert_eq!(
            read.status,
            StatusCode::OK,
            "{} reads {}",
            self.name,
            self.target
        );
        let tag = read.etag();
        let put = self
            .send(
                proto,
                "PUT",
                &[("if-match", &tag), ("x-delay-ms", WRITE_DELAY_MS)],
                body,
            )
            .await;
        (tag, put)
    }
}

/// Two writers read the same document, then write it concurrently with
/// `If-Match`: the description of a round that did not have exactly one
/// winner (2xx) and one loser (412), or `None`.
async fn race(round: usize, proto: Proto, a: Writer, b: Writer) -> Option<String> {
    // Both read first, so both hold the same (current) tag.
    let (ra, rb) = (a.get(proto, &[]).await, b.get(proto, &[]).await);
    assert_eq!(
        ra.etag(),
        rb.etag(),
        "round {round}: one document, one tag for {} and {}",
        a.name,
        b.name
    );
    let body_a = format!("round {round} by {}", a.name);
    let body_b = format!("round {round} by {}", b.name);
    let ((_, wa), (_, wb)) = tokio::join!(
        a.read_modify_write(proto, &body_a),
        b.read_modify_write(proto, &body_b)
    );
    let won = |g: &Got| g.status.is_success();
    let lost = |g: &Got| g.status == StatusCode::PRECONDITION_FAILED;
    if (won(&wa) && lost(&wb)) || (lost(&wa) && won(&wb)) {
        None
    } else {
        Some(format!(
            "round {round}: {} ({} via {}) got {}, {} ({} via {}) got {}",
            a.name, a.host, a.target, wa.status, b.name, b.host, b.target, wb.status
        ))
    }
}

/// Runs `rounds` races, each between the pair `pick(round)` returns, and
/// checks every round had exactly one winner and the app applied exactly
/// one write per round.
async fn races(f: &Fleet, proto: Proto, rounds: usize, pick: impl Fn(usize) -> (Writer, Writer)) {
    let applied0 = f.db.applied_count();
    let mut bad = Vec::new();
    for round in 0..rounds {
        let (a, b) = pick(round);
        if let Some(what) = race(round, proto, a, b).await {
            bad.push(what);
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {rounds} rounds without exactly one winner (lost updates):\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert_eq!(
        f.db.applied_count() - applied0,
        rounds,
        "one applied write per round"
    );
}

async fn two_users_one_document_one_winner_per_round(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/doc", "v0")]);
    let f = Fleet::start(kind, 2, POLICY, db.clone()).await;
    let users = [("alice", ALICE), ("bob", BOB), ("carol (cookie)", CAROL)];
    let pairs = [(0, 1), (0, 2), (1, 2), (2, 0)];
    races(&f, proto, 20, |round| {
        let (i, j) = pairs[round % pairs.len()];
        let w = |k: usize, via: usize| Writer {
            name: users[k].0,
            via: f.addr(via),
            host: SHOP,
            target: "/doc",
            creds: users[k].1,
        };
        (w(i, round), w(j, round + 1))
    })
    .await;
}

async fn two_host_names_one_document_one_winner_per_round(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/doc?id=1", "v0")]);
    let f = Fleet::start(kind, 2, POLICY, db.clone()).await;
    let hosts = [SHOP, SHOP_FQDN, SHOP_PORT];
    let pairs = [(0, 1), (1, 2), (0, 2), (1, 0)];
    races(&f, proto, 20, |round| {
        let (i, j) = pairs[round % pairs.len()];
        let w = |k: usize, via: usize| Writer {
            name: hosts[k],
            via: f.addr(via),
            host: hosts[k],
            target: "/doc?id=1",
            creds: ANON,
        };
        (w(i, round), w(j, round + 1))
    })
    .await;
}

/// The lock is per path and query: a write held on `?id=1` locks out
/// `?id=1` under every Host name, and never `?id=2`.
async fn the_lock_covers_every_host_name_and_only_its_query(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/doc?id=1", "one"), ("/doc?id=2", "two")]);
    let f = Fleet::start_with(
        support::SharedStore::new(kind),
        2,
        POLICY,
        db.clone(),
        |c| c.options.lock_wait = Duration::from_millis(300),
    )
    .await;
    let one = |via, host| Writer {
        name: "one",
        via,
        host,
        target: "/doc?id=1",
        creds: ANON,
    };
    let two = Writer {
        name: "two",
        via: f.addr(1),
        host: SHOP_FQDN,
        target: "/doc?id=2",
        creds: ANON,
    };
    let holder = one(f.addr(0), SHOP);
    let tag1 = holder.get(proto, &[]).await.etag();
    let tag2 = two.get(proto, &[]).await.etag();
    // A slow write to id=1 holds its lock for 1.5 s.
    let held = tokio::spawn(async move {
        holder
            .send(
                proto,
                "PUT",
                &[("if-match", &tag1), ("x-delay-ms", "1500")],
                "one, slowly",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // id=2 is another lock: its write goes through at once.
    let w2 = two
        .send(proto, "PUT", &[("if-match", &tag2)], "two, at once")
        .await;
    // id=1 under another Host name (and HTTP/2 or not) is the same lock:
    // busy past lock_wait, so 503, and the app never sees it.
    let tag1_again = one(f.addr(1), SHOP_FQDN).get(proto, &[]).await.etag();
    let w1 = one(f.addr(1), SHOP_FQDN)
        .send(proto, "PUT", &[("if-match", &tag1_again)], "one, racing")
        .await;
    let held = held.await.unwrap();
    assert!(held.status.is_success(), "the slow write: {}", held.status);
    assert!(
        w2.status.is_success(),
        "a write to ?id=2 is not locked out by ?id=1: {}",
        w2.status
    );
    assert!(
        matches!(
            w1.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::PRECONDITION_FAILED
        ),
        "?id=1 under Host {SHOP_FQDN} is the same lock as under {SHOP}: {}",
        w1.status
    );
    assert_eq!(db.doc("/doc?id=1").as_deref(), Some("one, slowly"));
    assert_eq!(db.doc("/doc?id=2").as_deref(), Some("two, at once"));
}

/// A reader's tag, trusted on every replica: the reader revalidates on each
/// until the 304 comes from the store (a replica may not have heard of
/// another's fresh validation yet, and then asks the app once, which
/// validates it there).
async fn trust_everywhere(f: &Fleet, proto: Proto, reader: Writer) -> String {
    let first = reader.get(proto, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let tag = first.etag();
    for i in 0..f.sidecars.len() {
        let on = Writer {
            via: f.addr(i),
            ..reader
        };
        let mut answers = Vec::new();
        for _ in 0..5 {
            let r = on.get(proto, &[("if-none-match", &tag)]).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_MODIFIED,
                "{} on replica {i}",
                reader.name
            );
            answers.push(r.header("cache-status"));
            if answers.last().is_some_and(|s| s == "sametag; hit") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            answers.last().map(String::as_str),
            Some("sametag; hit"),
            "{} trusted on replica {i}: {answers:?}",
            reader.name
        );
    }
    tag
}

/// After a write, `reader` presenting `old` gets the new representation on
/// every replica, never a 304: the failures, or `None`.
async fn stale_304s(
    f: &Fleet,
    proto: Proto,
    reader: Writer,
    old: &str,
    new_body: &str,
) -> Vec<String> {
    let mut stale = Vec::new();
    for i in 0..f.sidecars.len() {
        let r = Writer {
            via: f.addr(i),
            ..reader
        }
        .get(proto, &[("if-none-match", old)])
        .await;
        if r.status != StatusCode::OK || r.text() != new_body {
            stale.push(format!(
                "{} ({}, {}) on replica {i}: {} {:?} cache-status {:?}",
                reader.name,
                reader.host,
                reader.target,
                r.status,
                r.text(),
                r.header("cache-status")
            ));
        }
    }
    stale
}

async fn trust_ends_for_every_user_and_host_name_after_a_write(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/t/doc", "v0")]);
    let f = Fleet::start(kind, 3, POLICY, db.clone()).await;
    let reader = |name, creds, host| Writer {
        name,
        via: f.addr(0),
        host,
        target: "/t/doc",
        creds,
    };
    let readers = [
        reader("bob", BOB, SHOP),
        reader("carol (cookie)", CAROL, SHOP_PORT),
        reader("anonymous", ANON, "shop.example"),
    ];
    let mut stale = Vec::new();
    // Round 0: Alice's conditional PUT; round 1: an unconditional PATCH.
    for round in 0..2 {
        let mut tags = Vec::new();
        for r in readers {
            tags.push(trust_everywhere(&f, proto, r).await);
        }
        let alice = Writer {
            name: "alice",
            via: f.addr(round + 1),
            host: SHOP_FQDN,
            target: "/t/doc",
            creds: ALICE,
        };
        let expected = if round == 0 {
            let (_, w) = alice.read_modify_write(proto, "by alice").await;
            assert!(w.status.is_success(), "alice's PUT: {}", w.status);
            "by alice".to_owned()
        } else {
            let w = alice.send(proto, "PATCH", &[], "").await;
            assert!(w.status.is_success(), "alice's PATCH: {}", w.status);
            "by alice +PATCH".to_owned()
        };
        assert_eq!(db.doc("/t/doc").as_deref(), Some(expected.as_str()));
        for (r, tag) in readers.into_iter().zip(&tags) {
            stale.extend(stale_304s(&f, proto, r, tag, &expected).await);
        }
    }
    assert!(
        stale.is_empty(),
        "stale 304s after alice's writes:\n{}",
        stale.join("\n")
    );
}

async fn trust_ends_for_a_query_read_under_another_host_name(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/t/doc?id=1", "one")]);
    let f = Fleet::start(kind, 3, POLICY, db.clone()).await;
    let reader = Writer {
        name: "reader",
        via: f.addr(0),
        host: SHOP,
        target: "/t/doc?id=1",
        creds: ANON,
    };
    let tag = trust_everywhere(&f, proto, reader).await;
    let writer = Writer {
        name: "writer",
        via: f.addr(2),
        host: SHOP_FQDN,
        ..reader
    };
    let (_, w) = writer.read_modify_write(proto, "one, changed").await;
    assert!(w.status.is_success(), "{}", w.status);
    let stale = stale_304s(&f, proto, reader, &tag, "one, changed").await;
    assert!(stale.is_empty(), "stale 304s:\n{}", stale.join("\n"));
}

/// PURGE and MOVE (WebDAV) change state like any unsafe method.
async fn every_unsafe_method_ends_trust(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/t/doc", "v0")]);
    let f = Fleet::start(kind, 3, POLICY, db.clone()).await;
    let reader = Writer {
        name: "bob",
        via: f.addr(0),
        host: SHOP,
        target: "/t/doc",
        creds: BOB,
    };
    let mut stale = Vec::new();
    let mut expected = "v0".to_owned();
    for (i, method) in ["PURGE", "MOVE"].into_iter().enumerate() {
        let tag = trust_everywhere(&f, proto, reader).await;
        let w = Writer {
            via: f.addr(i + 1),
            ..reader
        }
        .send(proto, method, &[], "")
        .await;
        assert!(w.status.is_success(), "{method}: {}", w.status);
        expected.push_str(&format!(" +{method}"));
        assert_eq!(db.doc("/t/doc").as_deref(), Some(expected.as_str()));
        for s in stale_304s(&f, proto, reader, &tag, &expected).await {
            stale.push(format!("after {method}: {s}"));
        }
    }
    assert!(stale.is_empty(), "stale 304s:\n{}", stale.join("\n"));
}

/// Spellings of `/docs/a` with dot segments (RFC 3986 §6.2.2.3).
const DOTTED: [&str; 3] = ["/docs/./a", "/docs/x/../a", "/docs/%2e/a"];
const TRUST_DOTTED: [&str; 3] = ["/t/docs/./a", "/t/docs/x/../a", "/t/docs/%2e/a"];

async fn dot_segment_writes_lock_the_canonical_resource(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/docs/a", "v0")]);
    let f = Fleet::start(kind, 2, POLICY, db.clone()).await;
    races(&f, proto, 12, |round| {
        let plain = Writer {
            name: "alice",
            via: f.addr(round),
            host: SHOP,
            target: "/docs/a",
            creds: ALICE,
        };
        let dotted = Writer {
            name: "bob",
            via: f.addr(round + 1),
            host: SHOP,
            target: DOTTED[round % DOTTED.len()],
            creds: BOB,
        };
        (plain, dotted)
    })
    .await;
    // What the sidecar judged is what the app received.
    let mut targets = db.targets(&Method::PUT);
    targets.extend(db.targets(&Method::GET));
    let dotted: Vec<&String> = targets.iter().filter(|t| *t != "/docs/a").collect();
    assert!(
        dotted.is_empty(),
        "the app received non-canonical targets: {dotted:?}"
    );
}

async fn dot_segment_writes_end_trust_of_the_canonical_resource(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[("/t/docs/a", "v0")]);
    let f = Fleet::start(kind, 3, POLICY, db.clone()).await;
    let reader = Writer {
        name: "bob",
        via: f.addr(0),
        host: SHOP,
        target: "/t/docs/a",
        creds: BOB,
    };
    let mut stale = Vec::new();
    for (i, target) in TRUST_DOTTED.into_iter().enumerate() {
        let tag = trust_everywhere(&f, proto, reader).await;
        let body = format!("written via {target}");
        let (_, w) = Writer {
            name: "alice",
            via: f.addr(i + 1),
            host: SHOP_FQDN,
            target,
            creds: ALICE,
        }
        .read_modify_write(proto, &body)
        .await;
        assert!(w.status.is_success(), "{target}: {}", w.status);
        stale.extend(stale_304s(&f, proto, reader, &tag, &body).await);
    }
    assert!(stale.is_empty(), "stale 304s:\n{}", stale.join("\n"));
    let seen = db.targets(&Method::PUT);
    assert!(
        seen.iter().all(|t| t == "/t/docs/a"),
        "the app received non-canonical targets: {seen:?}"
    );
}

/// A 404 is not tagged; the app's own validators (different on every
/// replica) must not reach the client either.
async fn not_found_carries_no_per_replica_validators(kind: StoreKind, proto: Proto) {
    let db = Db::with(&[]);
    let f = Fleet::start(kind, 2, POLICY, db).await;
    let mut seen = Vec::new();
    for i in 0..2 {
        for target in ["/missing", "/t/missing"] {
            let r = call(f.addr(i), proto, "GET", SHOP, target, &[], "").await;
            assert_eq!(r.status, StatusCode::NOT_FOUND);
            assert!(
                !r.header("etag").contains("app"),
                "replica {i} {target}: the app's own ETag {:?}",
                r.header("etag")
            );
            seen.push((target, r.header("etag"), r.header("last-modified")));
        }
    }
    assert_eq!(seen[0], seen[2], "replicas agree on /missing: {seen:?}");
    assert_eq!(seen[1], seen[3], "replicas agree on /t/missing: {seen:?}");
}

support::over_stores_and_protocols! {
    two_users_one_document_one_winner_per_round,
    two_host_names_one_document_one_winner_per_round,
    the_lock_covers_every_host_name_and_only_its_query,
    trust_ends_for_every_user_and_host_name_after_a_write,
    trust_ends_for_a_query_read_under_another_host_name,
    every_unsafe_method_ends_trust,
    dot_segment_writes_lock_the_canonical_resource,
    dot_segment_writes_end_trust_of_the_canonical_resource,
    not_found_carries_no_per_replica_validators,
}
