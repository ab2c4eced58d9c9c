//! Shared helpers for the end-to-end tests.
#![allow(dead_code)]

use sametag_lb_e2e::cluster::{Cluster, ClusterSpec, Kind, SametagSpec};

/// Replicas behind the balancer.
pub const REPLICAS: usize = 3;

/// A bed without sametag.
pub async fn bare(kind: Kind) -> Cluster {
    Cluster::start(&ClusterSpec {
        kind,
        replicas: REPLICAS,
        sametag: None,
    })
    .await
    .unwrap_or_else(|e| panic!("starting the bed failed: {e}"))
}

/// A bed with a sidecar per replica sharing one real Redis.
pub async fn with_sametag(kind: Kind, policy: Option<&str>) -> Cluster {
    with_sametag_args(kind, policy, &[]).await
}

/// The same, with more sidecar flags.
pub async fn with_sametag_args(kind: Kind, policy: Option<&str>, args: &[&str]) -> Cluster {
    Cluster::start(&ClusterSpec {
        kind,
        replicas: REPLICAS,
        sametag: Some(SametagSpec {
            redis: true,
            policy: policy.map(str::to_owned),
            sidecar_args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..SametagSpec::default()
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("starting the bed failed: {e}"))
}

/// Trust for documents, Validate elsewhere.
pub const TRUST_DOCS: &str =
    "mode: Validate\nroutes:\n  - path: /docs/**\n    mode: Trust\n    maxAge: 60s\n";

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sametag_lb_e2e::client::Http;

/// What one writer saw.
#[derive(Clone, Debug, Default)]
pub struct WriteStats {
    /// Writes answered 2xx.
    pub successes: u64,
    /// 412: someone else wrote first (the correct outcome for the loser).
    pub conflicts: u64,
    /// 503: the store was unreachable and the write failed closed.
    pub unavailable: u64,
    /// GETs that failed (status or transport).
    pub failed_gets: u64,
    /// Other statuses seen on writes.
    pub other: BTreeMap<u16, u64>,
    /// Writes that failed at the transport level (outcome unknown).
    pub transport_errors: u64,
    /// Request ids of the writes answered 2xx.
    pub acked: Vec<String>,
}

impl WriteStats {
    /// Add another writer's counts.
    pub fn merge(&mut self, o: &WriteStats) {
        self.successes += o.successes;
        self.conflicts += o.conflicts;
        self.unavailable += o.unavailable;
        self.failed_gets += o.failed_gets;
        self.transport_errors += o.transport_errors;
        self.acked.extend(o.acked.iter().cloned());
        for (k, v) in &o.other {
            *self.other.entry(*k).or_default() += v;
        }
    }
}

/// The counter in a document body.
pub fn counter_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("counter")?
        .as_u64()
}

/// Read-modify-write `url`'s counter with If-Match until `target` increments
/// succeeded or `deadline` passed.
pub async fn increment_worker(
    http: Http,
    url: String,
    id: usize,
    target: u64,
    deadline: Instant,
) -> WriteStats {
    let mut s = WriteStats::default();
    let mut seq = 0u64;
    while s.successes < target && Instant::now() < deadline {
        let r = match http.get(&url, &[]).await {
            Ok(r) if r.status == 200 => r,
            _ => {
                s.failed_gets += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (Some(n), Some(tag)) = (counter_of(&r.body), r.header("etag").map(str::to_owned))
        else {
            s.failed_gets += 1;
            continue;
        };
        seq += 1;
        // `req` makes it a tracked write in the app's applied-write log;
        // `base` is the counter (= the document's version) it was read at.
        let req = format!("w{id}-{seq}");
        let body = serde_json::json!({ "counter": n + 1, "writer": id, "req": req, "base": n })
            .to_string();
        match http
            .put(
                &url,
                &[("if-match", &tag), ("content-type", "application/json")],
                Bytes::from(body),
            )
            .await
        {
            Ok(w) if w.status.is_success() => {
                s.successes += 1;
                s.acked.push(req);
            }
            Ok(w) if w.status == 412 => s.conflicts += 1,
            // Counted, not retried silently: a test that expects none
            // asserts `unavailable == 0`.
            Ok(w) if w.status == 503 => {
                s.unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(w) => *s.other.entry(w.status.as_u16()).or_default() += 1,
            Err(_) => s.transport_errors += 1,
        }
    }
    s
}

/// Run `writers` concurrent increment workers on `url`.
pub async fn run_writers(
    http: &Http,
    url: &str,
    writers: usize,
    target: u64,
    budget: Duration,
) -> WriteStats {
    let deadline = Instant::now() + budget;
    let tasks: Vec<_> = (0..writers)
        .map(|id| {
            tokio::spawn(increment_worker(
                http.clone(),
                url.to_owned(),
                id,
                target,
                deadline,
            ))
        })
        .collect();
    let mut total = WriteStats::default();
    for t in tasks {
        total.merge(&t.await.expect("writer task"));
    }
    total
}

/// The counter as the app has it now (read through the balancer).
pub async fn read_counter(http: &Http, url: &str) -> u64 {
    let r = http.get(url, &[]).await.expect("read counter");
    assert_eq!(r.status, 200);
    counter_of(&r.body).expect("counter in document")
}

/// What the app's applied-write log says about one document's tracked writes.
#[derive(Debug, Default)]
pub struct AppliedCheck {
    /// Writes the app applied.
    pub applied: u64,
    /// Acknowledged writes not applied exactly once (id, times applied).
    pub not_exactly_once: Vec<(String, usize)>,
    /// Applied writes whose base was not the version they replaced (a lost
    /// update: something written in between was overwritten).
    pub stale_base: Vec<String>,
}

impl AppliedCheck {
    /// No lost update: every acknowledged write applied exactly once, and
    /// none applied on a stale base.
    pub fn assert_no_lost_update(&self) {
        assert!(
            self.not_exactly_once.is_empty(),
            "acknowledged writes not applied exactly once: {:?}",
            self.not_exactly_once
        );
        assert!(
            self.stale_base.is_empty(),
            "lost updates (applied on a stale base): {:#?}",
            self.stale_base
        );
    }
}

/// Check `doc`'s applied-write log against the acknowledged request ids.
pub fn check_applied(c: &Cluster, doc: &str, acked: &[String]) -> AppliedCheck {
    let log = sametag_lb_e2e::app::applied_log(&c.data_dir).expect("applied log");
    let mut out = AppliedCheck::default();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for a in log.iter().filter(|a| a.doc == doc && a.version.is_some()) {
        out.applied += 1;
        if let Some(r) = a.req.as_deref() {
            *times.entry(r).or_default() += 1;
        }
        if let (Some(base), Some(v)) = (a.base, a.version)
            && base + 1 != v
        {
            out.stale_base.push(format!("{a:?}"));
        }
    }
    for r in acked {
        let n = times.get(r.as_str()).copied().unwrap_or(0);
        if n != 1 {
            out.not_exactly_once.push((r.clone(), n));
        }
    }
    out
}
