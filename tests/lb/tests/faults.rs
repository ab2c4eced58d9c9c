//! Faults under load through the balancer: Redis killed and started again,
//! one app replica stopped and started, sidecars restarted (SIGTERM and
//! SIGKILL). Readers must see 0 failed GETs, writers no lost update (checked
//! against the app's applied-write log: every acknowledged write exactly
//! once, every applied write based on the value it replaced), and every
//! sidecar must be running before it is stopped and at the end.
//!
//! HAProxy is configured as a real deployment would be (see
//! `sametag_lb_e2e::haproxy`): health checks `GET /` every 200 ms and
//! `retries 3` + `option redispatch` + `retry-on conn-failure empty-response
//! junk-response response-timeout 502 503 504`, so a GET caught by a dying
//! replica (or by a sidecar whose app is down, which answers 502) is
//! replayed on another one.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sametag_lb_e2e::cluster::{Cluster, Kind};
use sametag_lb_e2e::scenario::{Browser, RevalStats};
use sametag_lb_e2e::sidecar::metric_sum;
use support::{TRUST_DOCS, check_applied, read_counter, run_writers, with_sametag};

/// GETs the sidecars answered with an error (502/504/400), before HAProxy's
/// retries hid them: `sametag_requests_total{method="GET"}` by outcome,
/// summed over the sidecars (counters restart with a sidecar, so the test
/// adds up what each process counted before it is stopped).
async fn sidecar_get_failures(c: &Cluster, only: Option<usize>) -> f64 {
    let mut n = 0.0;
    for (i, s) in c.sidecars.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let Ok(text) = s.metrics(&c.http).await else {
            continue;
        };
        let lines: String = text
            .lines()
            .filter(|l| l.contains("method=\"GET\""))
            .filter(|l| {
                ["upstream_error", "upstream_timeout", "bad_request"]
                    .iter()
                    .any(|o| l.contains(&format!("outcome=\"{o}\"")))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        n += metric_sum(&lines, |name| name == "sametag_requests_total");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_load_fail_no_get_and_lose_no_update() {
    let mut c = with_sametag(Kind::App, Some(TRUST_DOCS)).await;
    let paths: Vec<String> = ["/docs/a.json", "/docs/b.json", "/docs/c.json", "/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));

    // Readers: browsers revalidating in a loop (bounded by `stop` and a cap).
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (http, base, paths, stop, sent) = (
            c.http.clone(),
            c.lb.url(),
            paths.clone(),
            stop.clone(),
            sent.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut b = Browser::new(http, base);
            let mut s = RevalStats::default();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            if b.first_load(&paths).await.is_err() {
                s.failed += 1;
            }
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 200_000 {
                let p = &paths[i % paths.len()];
                if let Some(r) = b.revalidate(p, &mut s).await {
                    *statuses.entry(r.status.as_u16()).or_default() += 1;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            (s, statuses)
        }));
    }
    let writers = {
        let (http, url) = (c.http.clone(), c.url("/docs/counter.json"));
        tokio::spawn(
            async move { run_writers(&http, &url, 4, 10_000, Duration::from_secs(16)).await },
        )
    };

    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    let t0 = Instant::now();
    pause(1500).await;
    // The readers' pace before any fault: the floor for the whole run.
    let calm_rate = sent.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    let mut get_failures_before_retries = 0.0;
    println!("{:?} kill redis", t0.elapsed());
    c.redis.as_mut().expect("redis").kill();
    pause(2000).await;
    println!("{:?} start redis", t0.elapsed());
    c.redis
        .as_mut()
        .expect("redis")
        .restart()
        .await
        .expect("redis restart");
    pause(1500).await;
    println!("{:?} stop app1", t0.elapsed());
    c.apps[1].proc.kill();
    pause(2000).await;
    println!("{:?} start app1", t0.elapsed());
    c.apps[1].restart().await.expect("app restart");
    // s1 answered 502 to GETs (and health checks) while its app was down,
    // until HAProxy took it out: the fault took effect.
    let app_down_failures = sidecar_get_failures(&c, Some(1)).await;
    pause(1500).await;
    println!("{:?} SIGTERM sidecar s2 and start it again", t0.elapsed());
    assert!(
        c.sidecars[2].proc.is_running(),
        "s2 crashed before its scripted SIGTERM:\n{}",
        c.sidecars[2].proc.log_tail(30)
    );
    get_failures_before_retries += sidecar_get_failures(&c, Some(2)).await;
    let st = c.sidecars[2].proc.terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "sidecar must exit cleanly on SIGTERM: {st:?}"
    );
    c.sidecars[2].restart().await.expect("sidecar restart");
    pause(1500).await;
    println!("{:?} SIGKILL sidecar s0 and start it again", t0.elapsed());
    assert!(
        c.sidecars[0].proc.is_running(),
        "s0 crashed before its scripted SIGKILL:\n{}",
        c.sidecars[0].proc.log_tail(30)
    );
    get_failures_before_retries += sidecar_get_failures(&c, Some(0)).await;
    c.sidecars[0].proc.kill();
    pause(300).await;
    c.sidecars[0].restart().await.expect("sidecar restart");
    pause(2000).await;
    stop.store(true, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();

    let mut total = RevalStats::default();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for r in readers {
        let (s, st) = r.await.expect("reader");
        total.requests += s.requests;
        total.not_modified += s.not_modified;
        total.full += s.full;
        total.failed += s.failed;
        for (k, v) in st {
            *statuses.entry(k).or_default() += v;
        }
    }
    let w = writers.await.expect("writers");
    let counter = read_counter(&c.http, &c.url("/docs/counter.json")).await;
    // Every sidecar counted; s0 and s2 counted since their restart.
    get_failures_before_retries += sidecar_get_failures(&c, None).await;
    let applied = check_applied(&c, "counter.json", &w.acked);
    println!("reads: {total:?} statuses {statuses:?}");
    println!(
        "writes: {} acknowledged, {} 412s, {} 503s, {} transport errors, other {:?}, \
         {} failed GETs; applied {}; counter {counter}",
        w.successes,
        w.conflicts,
        w.unavailable,
        w.transport_errors,
        w.other,
        w.failed_gets,
        applied.applied
    );
    println!(
        "GETs: {} sent by readers ({calm_rate:.0}/s before the faults, {:.0}/s overall); \
         failed at the sidecars before HAProxy's retries: {get_failures_before_retries} \
         ({app_down_failures} by s1 while its app was down); after retries: {}",
        sent.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed) as f64 / elapsed,
        total.failed
    );

    // The load ran at a pace near the calm one throughout (a stalled reader
    // or a balancer with no server left would fall far below it).
    let floor = calm_rate * elapsed * 0.3;
    assert!(
        sent.load(Ordering::Relaxed) as f64 >= floor,
        "load must have run: {} requests, floor {floor:.0} ({calm_rate:.0}/s calm)",
        sent.load(Ordering::Relaxed)
    );
    assert_eq!(total.failed, 0, "failed GETs: statuses {statuses:?}");
    assert!(
        app_down_failures > 0.0,
        "s1 must have failed GETs while its app was down (before HAProxy retried them)"
    );
    assert!(w.successes > 0, "{w:?}");
    // A write whose response was lost (transport error, a 502 when a
    // replica died mid-write, or a PUT HAProxy replayed after an empty
    // response, which then meets 412) may or may not have happened; the
    // app's log says which. Acknowledged ones must be there exactly once,
    // and no applied write may have overwritten another (its base is the
    // counter value it replaced).
    applied.assert_no_lost_update();
    assert_eq!(
        counter, applied.applied,
        "the counter must count every applied write"
    );
    // HAProxy's health checks saw the stopped app (through its sidecar's
    // 502s) and took it out of rotation.
    let lb_log = std::fs::read_to_string(c.dir().join("haproxy.log")).unwrap_or_default();
    let downs: Vec<&str> = lb_log.lines().filter(|l| l.contains("is DOWN")).collect();
    println!("haproxy state changes: {downs:#?}");
    assert!(
        downs.iter().any(|l| l.contains("be/s1")),
        "HAProxy should have marked s1 down while its app was stopped:\n{lb_log}"
    );
    for s in c.sidecars.iter_mut() {
        assert!(
            s.proc.is_running(),
            "{} crashed:\n{}",
            s.proc.name(),
            s.proc.log_tail(30)
        );
    }
    for s in &c.sidecars {
        let h = c
            .http
            .get(&format!("http://{}/healthz", s.admin), &[])
            .await
            .expect("healthz");
        assert_eq!(h.status, 200, "{} unhealthy", s.proc.name());
    }
}
