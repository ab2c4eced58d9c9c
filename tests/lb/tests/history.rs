//! The history checker behind HAProxy: 3 sidecars on one real redis-server,
//! one shared app (its documents are the database), a Trust route on the
//! documents. Several users (Authorization, Cookie, both, none) under three
//! spellings of one Service name, over HTTP/1.1 and h2c, read, revalidate and
//! If-Match-write three documents (two with query strings) concurrently;
//! every operation is recorded and the whole history is checked afterwards
//! (`sametag_lb_e2e::history`): no lost update, no stale 304, no failed GET,
//! write failures only inside fault windows.
//!
//! The sidecars run with `--upstream-timeout 1s`: it is also the trust
//! guard (a validation younger than that after a write is not trusted) and
//! sets the lock lease (2 × 1 s + 5 s = 7 s), so Trust is active between
//! write rounds and a slow app can outlast the lease within the time budget.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sametag_lb_e2e::app::applied_log;
use sametag_lb_e2e::cluster::{Cluster, ClusterSpec, Kind, SametagSpec};
use sametag_lb_e2e::history::{OpKind, Proto, Report, check};
use sametag_lb_e2e::sidecar::metric_sum;
use sametag_lb_e2e::workload::{
    self, Control, Recorder, User, Worker, docs, initial_doc, version_of,
};
use support::{REPLICAS, TRUST_DOCS};

/// The sidecars' upstream timeout, trust guard and lease base.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// The lock lease the sidecar derives from it (`ProxyOptions::lock_lease`).
const LOCK_LEASE: Duration = Duration::from_secs(UPSTREAM_TIMEOUT.as_secs() * 2 + 5);
/// One write round; a document is written every `SLOT × 3`, past the guard.
const SLOT: Duration = Duration::from_millis(700);
/// Concurrent clients.
const WORKERS: usize = 6;

async fn bed(links: bool) -> Cluster {
    let c = Cluster::start(&ClusterSpec {
        kind: Kind::App,
        replicas: REPLICAS,
        sametag: Some(SametagSpec {
            redis: true,
            policy: Some(TRUST_DOCS.to_owned()),
            links,
            sidecar_args: vec![
                "--upstream-timeout".into(),
                format!("{}ms", UPSTREAM_TIMEOUT.as_millis()),
            ],
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("starting the bed failed: {e}"));
    for d in docs() {
        std::fs::write(c.data_dir.join("docs").join(&d.name), initial_doc(&d.name))
            .expect("write initial document");
    }
    c
}

/// `SAMETAG_HISTORY_ONE_IDENTITY=1`: every client anonymous under one Host
/// name. A diagnostic: it takes resource identity (users, Host spellings)
/// out of the picture, so what remains is what the faults alone cause.
fn one_identity() -> bool {
    std::env::var("SAMETAG_HISTORY_ONE_IDENTITY").is_ok_and(|v| v == "1")
}

/// The users clients run as (see [`one_identity`]).
fn users() -> Vec<User> {
    let all = workload::users();
    if one_identity() {
        all.into_iter().filter(|u| u.headers.is_empty()).collect()
    } else {
        all
    }
}

/// A client of the balancer (see [`one_identity`] for its Host names).
fn worker(id: usize, user: User, addr: SocketAddr, proto: Proto, rec: &Arc<Recorder>) -> Worker {
    let w = Worker::new(id, user, addr, proto, docs(), rec.clone());
    if one_identity() {
        w.hosts(&["shop"])
    } else {
        w
    }
}

/// Workers `0..n`: users in turn, HTTP/1.1 and h2c alternating.
fn workers(c: &Cluster, rec: &Arc<Recorder>) -> Vec<Worker> {
    let users = users();
    (0..WORKERS)
        .map(|i| {
            let (proto, addr) = if i % 2 == 0 {
                (Proto::H1, c.lb.addr)
            } else {
                (Proto::H2, c.lb.h2_addr)
            };
            // Every user on both protocols once there are enough workers.
            let user = users[(i + i / 2) % users.len()].clone();
            worker(i, user, addr, proto, rec)
        })
        .collect()
}

/// Each document's version as the app has it now.
fn finals(c: &Cluster) -> BTreeMap<String, u64> {
    docs()
        .into_iter()
        .map(|d| {
            let body = std::fs::read(c.data_dir.join("docs").join(&d.name)).expect("read doc");
            (d.name, version_of(&body).expect("version in document"))
        })
        .collect()
}

/// Sum of `sametag_requests_total` samples whose labels contain every one of
/// `labels`, over every sidecar still running.
async fn requests_with(c: &Cluster, labels: &[&str]) -> f64 {
    let mut n = 0.0;
    for s in &c.sidecars {
        if let Ok(text) = s.metrics(&c.http).await {
            let lines: String = text
                .lines()
                .filter(|l| labels.iter().all(|w| l.contains(w)))
                .map(|l| format!("{l}\n"))
                .collect();
            n += metric_sum(&lines, |name| name == "sametag_requests_total");
        }
    }
    n
}

/// Wait until every sidecar reports its store up (`sametag_store_up`).
async fn wait_store_up(c: &Cluster, limit: Duration) {
    let start = std::time::Instant::now();
    loop {
        let mut up = 0;
        for s in &c.sidecars {
            if let Ok(text) = s.metrics(&c.http).await
                && metric_sum(&text, |n| n == "sametag_store_up") >= 1.0
            {
                up += 1;
            }
        }
        if up == c.sidecars.len() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "sidecars did not reconnect to Redis within {limit:?} ({up} up)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_and_check(name: &str, r: &Report) {
    println!("history {name}: {}", r.summary());
    println!(
        "history {name}: 200={} 304={} (trusted {}) 412={} 503={} violations={}",
        r.status_count(OpKind::Read, 200) + r.status_count(OpKind::CondRead, 200),
        r.status_count(OpKind::CondRead, 304),
        r.trusted_hits,
        r.status_count(OpKind::Write, 412),
        r.status_count(OpKind::Write, 503),
        r.violation_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_without_faults_has_no_lost_update_and_no_stale_304() {
    let c = bed(false).await;
    let rec = Recorder::new("clean");
    let ctl = Control::new(SLOT);
    let tasks: Vec<_> = workers(&c, &rec)
        .into_iter()
        .map(|w| tokio::spawn(w.run(ctl.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(12)).await;
    ctl.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("worker");
    }
    let ops = rec.ops();
    let log = applied_log(&c.data_dir).expect("applied log");
    let r = check(&ops, &log, &finals(&c), |_| false);
    print_and_check("clean", &r);
    println!(
        "sidecars: trusted 304s {} (metrics), GET upstream errors {}",
        requests_with(&c, &["trusted_not_modified"]).await,
        requests_with(&c, &["GET", "upstream_"]).await
    );

    assert_eq!(r.violation_count(), 0, "{}", r.summary());
    // The run did what it claims: load on both protocols, contention, Trust.
    assert!(r.ops >= 300, "too few operations: {}", r.summary());
    assert!(
        r.by_proto.get(&Proto::H2).copied().unwrap_or(0) >= 100,
        "h2c traffic: {:?}",
        r.by_proto
    );
    assert!(r.acknowledged >= 8, "writes: {}", r.summary());
    assert!(
        r.status_count(OpKind::Write, 412) >= 8,
        "concurrent writers must have met (412s): {}",
        r.summary()
    );
    assert!(
        r.trusted_hits >= 30,
        "Trust must have answered 304s from the store: {}",
        r.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_faults_has_no_lost_update_and_no_stale_304() {
    let mut c = bed(true).await;
    let docs = docs();
    let rec = Recorder::new("warm");
    let ctl = Control::new(SLOT);
    let tasks: Vec<_> = workers(&c, &rec)
        .into_iter()
        .map(|w| tokio::spawn(w.run(ctl.clone())))
        .collect();
    // A client that was away: it keeps the tags it saw at the snapshot.
    let users = users();
    let mut laggard = worker(90, users[0].clone(), c.lb.addr, Proto::H1, &rec).steady("shop");
    // Sends the slow and the doomed writes straight to one sidecar.
    let mut injector = worker(
        91,
        users[users.len() - 1].clone(),
        c.lb.addr,
        Proto::H1,
        &rec,
    );
    // Write failures are allowed (and counted) in these windows only.
    let mut windows: Vec<(Duration, Duration)> = Vec::new();
    let pause = |d: Duration| tokio::time::sleep(d);
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    pause(secs(3)).await;

    // 1. Redis killed and started again from a snapshot taken before the
    // last writes: their invalidations are lost with it and the validations
    // trusted before it come back. No write is attempted while Redis is away
    // (a failed one would bump the epoch by itself), so only the new run id
    // can tell the sidecars.
    rec.set_phase("redis-quiet");
    ctl.writes.store(false, Ordering::SeqCst);
    pause(ms(1500)).await;
    for _ in 0..3 {
        for d in 0..docs.len() {
            laggard.revalidate(d).await;
        }
    }
    let redis = c.redis.as_ref().expect("redis");
    redis.save().await.expect("snapshot");
    let run_id = redis.run_id().await.expect("run id");
    rec.set_phase("redis-writes");
    ctl.writes.store(true, Ordering::SeqCst);
    pause(SLOT * 4).await;
    rec.set_phase("redis-down");
    ctl.writes.store(false, Ordering::SeqCst);
    // The round in flight ends before Redis goes.
    pause(ms(300)).await;
    let down = rec.now();
    c.redis.as_mut().expect("redis").kill();
    pause(secs(2)).await;
    let redis = c.redis.as_mut().expect("redis");
    redis.restart().await.expect("redis restart");
    assert_ne!(run_id, redis.run_id().await.expect("run id"));
    rec.set_phase("redis-back");
    // The laggard comes back once every sidecar has reconnected.
    wait_store_up(&c, secs(10)).await;
    for d in 0..docs.len() {
        laggard.revalidate(d).await;
    }
    ctl.writes.store(true, Ordering::SeqCst);
    windows.push((down, rec.now() + secs(6)));
    for _ in 0..4 {
        for d in 0..docs.len() {
            laggard.revalidate(d).await;
        }
        pause(ms(500)).await;
    }

    // 2. One sidecar's Redis connection cut; the others keep theirs.
    rec.set_phase("link-cut");
    let cut = rec.now();
    c.links[1].cut(secs(3));
    pause(secs(3)).await;
    rec.set_phase("link-back");
    windows.push((cut, rec.now() + secs(6)));
    pause(secs(2)).await;

    // 3. A sidecar SIGKILLed while a write it forwarded is in the app.
    rec.set_phase("sidecar-kill");
    assert!(
        c.sidecars[0].proc.is_running(),
        "s0 must be running before it is killed:\n{}",
        c.sidecars[0].proc.log_tail(30)
    );
    let killed = rec.now();
    let s0 = c.sidecars[0].listen;
    let doomed = tokio::spawn(async move {
        let delay = [("x-app-delay-ms".to_owned(), "600".to_owned())];
        injector.write_direct(0, s0, "s0", &delay, secs(5)).await;
        injector
    });
    pause(ms(300)).await;
    c.sidecars[0].proc.kill();
    let mut injector = doomed.await.expect("doomed write");
    pause(secs(1)).await;
    c.sidecars[0].restart().await.expect("sidecar restart");
    // The dead holder's lock frees when its lease ends.
    pause(LOCK_LEASE).await;
    windows.push((killed, rec.now() + secs(1)));

    // 4. An app slower than the lock's lease.
    rec.set_phase("slow-app");
    let slow = rec.now();
    let delay = [(
        "x-app-delay-ms".to_owned(),
        (LOCK_LEASE + secs(1)).as_millis().to_string(),
    )];
    let s1 = c.sidecars[1].listen;
    injector
        .write_direct(1, s1, "s1", &delay, LOCK_LEASE + secs(5))
        .await;
    // Whatever the sidecar answered, the app commits at the delay's end.
    let until = slow + LOCK_LEASE + secs(2);
    if let Some(rest) = until.checked_sub(rec.now()) {
        pause(rest).await;
    }
    windows.push((slow, rec.now() + secs(1)));

    rec.set_phase("calm");
    pause(secs(2)).await;
    ctl.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("worker");
    }

    let ops = rec.ops();
    if std::env::var("SAMETAG_HISTORY_DUMP").is_ok() {
        for o in &ops {
            println!("op {o}");
        }
    }
    let log = applied_log(&c.data_dir).expect("applied log");
    let in_window =
        |start: Duration, end: Duration| windows.iter().any(|(a, b)| end >= *a && start <= *b);
    let r = check(&ops, &log, &finals(&c), |op| in_window(op.start, op.end));
    print_and_check("faults", &r);
    println!(
        "fault windows: {windows:?}; link s1 (relayed, refused): {:?}",
        c.links[1].counts()
    );
    println!(
        "sidecars (since their last start): GET upstream errors {}, store_unavailable {}",
        requests_with(&c, &["GET", "upstream_"]).await,
        requests_with(&c, &["store_unavailable"]).await
    );
    for s in c.sidecars.iter_mut() {
        assert!(
            s.proc.is_running(),
            "{} crashed:\n{}",
            s.proc.name(),
            s.proc.log_tail(30)
        );
    }

    assert_eq!(r.violation_count(), 0, "{}", r.summary());
    assert!(r.ops >= 500, "too few operations: {}", r.summary());
    assert!(
        r.status_count(OpKind::Write, 412) > 0 && r.acknowledged >= 10,
        "writes: {}",
        r.summary()
    );
    assert!(r.trusted_hits > 0, "{}", r.summary());
}
