//! The origin problem with a real browser: headless Chromium loads a page (a
//! stylesheet, a script, five images, all `Cache-Control: no-cache`) through
//! HAProxy in round robin to three app replicas that mint their own ETags,
//! and loads it again and again on one persistent profile, so every load
//! after the first revalidates every part of the page. Without sametag a
//! revalidation is a 304 only when it lands on the replica that minted the
//! cached tag; with a sidecar in front of each replica and one Redis, every
//! one is. HAProxy's access log says what the browser sent and got, the
//! sidecars' `/metrics` what they answered.
//!
//! Needs Debian's `chromium` (`bash tests/setup-packages.sh` installs it);
//! without it the test fails with the install command.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sametag_lb_e2e::chromium::{Chromium, element_text};
use sametag_lb_e2e::cluster::{Cluster, ClusterSpec, Kind, SametagSpec};
use sametag_lb_e2e::haproxy::Access;
use sametag_lb_e2e::sidecar::target_dir;
use sametag_lb_e2e::site::{ASSETS, PAGE, RENDERED};
use support::REPLICAS;

/// Page loads per run: the first fills the cache, the others revalidate.
const LOADS: usize = 5;

/// Longest one browser run may take (a first start creates the profile).
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// What other users read meanwhile (see [`others`]).
const OTHERS_PATH: &str = "/docs/a.json";

/// What one run saw of the browser's requests.
#[derive(Debug, Default)]
struct Seen {
    /// Requests for the page's files.
    requests: usize,
    /// Of them, revalidations (a validator sent).
    conditional: usize,
    /// 304 answers (all to revalidations).
    not_modified: usize,
    /// Revalidations answered with the whole body again.
    conditional_200: usize,
    /// Bytes sent to the browser (headers and bodies).
    bytes: u64,
    /// Replicas that answered the browser.
    servers: BTreeSet<String>,
    /// The most distinct `If-None-Match` values the browser sent for one file.
    tags_per_file: usize,
    /// 304s the sidecars counted (`outcome="not_modified"`), with sametag.
    sidecar_not_modified: Option<u64>,
    /// Requests of the other users.
    others: u64,
    /// Wall time of each browser run.
    took: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_reloads_revalidate_through_round_robin() {
    let chromium = Chromium::find().unwrap_or_else(|e| panic!("{e}"));
    let shots = target_dir().join("test-artifacts").join("browser");
    std::fs::create_dir_all(&shots).unwrap_or_else(|e| panic!("create {}: {e}", shots.display()));
    let shots = shots.canonicalize().unwrap_or(shots);
    println!("browser: {}", chromium.version());

    let without = {
        let c = bed(None).await;
        browse(
            &c,
            &chromium,
            "without sametag",
            &shots.join("without-sametag.png"),
        )
        .await
    };
    let with = {
        let c = bed(Some(SametagSpec {
            redis: true,
            ..SametagSpec::default()
        }))
        .await;
        browse(
            &c,
            &chromium,
            "with sametag",
            &shots.join("with-sametag.png"),
        )
        .await
    };
    print_table(&without, &with);
    println!(
        "screenshots: {} and {}",
        shots.join("without-sametag.png").display(),
        shots.join("with-sametag.png").display()
    );

    let revalidations = (LOADS - 1) * ASSETS.len();
    for (label, s) in [("without sametag", &without), ("with sametag", &with)] {
        assert_eq!(s.requests, LOADS * ASSETS.len(), "{label}: {s:?}");
        assert_eq!(
            s.conditional, revalidations,
            "{label}: every load after the first revalidates each file: {s:?}"
        );
        assert_eq!(s.servers.len(), REPLICAS, "{label}: round robin: {s:?}");
    }
    // The origin problem: revalidations that reach another replica than the
    // one that minted the browser's tag get the whole body again.
    assert!(
        without.conditional_200 > 0 && without.not_modified < without.conditional,
        "without sametag some revalidations must miss: {without:?}"
    );
    assert_eq!(
        with.not_modified, with.conditional,
        "with sametag every revalidation is a 304: {with:?}"
    );
    assert_eq!(with.conditional_200, 0, "{with:?}");
    assert_eq!(
        with.tags_per_file, 1,
        "with sametag the browser only ever held one tag per file: {with:?}"
    );
    assert_eq!(
        with.sidecar_not_modified,
        Some(with.conditional as u64),
        "the sidecars answered each of the browser's revalidations with a 304: {with:?}"
    );
    assert!(with.bytes < without.bytes, "{with:?} vs {without:?}");
}

/// Three app replicas behind HAProxy (logging every request), with or
/// without a sidecar in front of each.
async fn bed(sametag: Option<SametagSpec>) -> Cluster {
    Cluster::start_logged(&ClusterSpec {
        kind: Kind::App,
        replicas: REPLICAS,
        sametag,
    })
    .await
    .unwrap_or_else(|e| panic!("starting the bed failed: {e}"))
}

/// Load the page `LOADS` times on one profile (a screenshot of the last
/// load in `shot`) while other users read through the same balancer, and
/// count what HAProxy logged for the browser.
async fn browse(c: &Cluster, chromium: &Chromium, label: &str, shot: &Path) -> Seen {
    let profile = c.dir().join("chromium-profile");
    let sidecar_304 = || c.sidecar_requests(&["outcome=\"not_modified\""]);
    let sidecar_before = sidecar_304().await.expect("sidecar metrics");
    let skip = access_log(c).len();
    let (stop, others) = others(c);
    let mut seen = Seen::default();
    for i in 1..=LOADS {
        let screenshot = (i == LOADS).then_some(shot);
        let load = chromium
            .load(&c.url(PAGE), &profile, screenshot, LOAD_LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{label}, load {i}: {e}"));
        assert!(
            load.dom.contains(RENDERED),
            "{label}, load {i}: the page did not render whole (stylesheet, script, images); \
             its #status says {:?}",
            element_text(&load.dom, "status")
        );
        seen.took.push(load.took);
        // HAProxy logs a request when its response is done: wait for this
        // load's, so the log splits into loads.
        wait_for_page_requests(c, skip, i * ASSETS.len()).await;
    }
    stop.store(true, Ordering::Relaxed);
    seen.others = others.await.expect("other users' task");

    let log: Vec<Access> = access_log(c).split_off(skip);
    let strays: Vec<&Access> = log
        .iter()
        .filter(|a| !a.uri.starts_with("/site/") && a.uri != OTHERS_PATH)
        .collect();
    assert!(
        strays.is_empty(),
        "{label}: the browser sent requests the page does not make: {strays:#?}"
    );
    let page: Vec<&Access> = log.iter().filter(|a| a.uri.starts_with("/site/")).collect();
    assert_eq!(
        page.len(),
        LOADS * ASSETS.len(),
        "{label}: one request per file and load: {page:#?}"
    );
    for (i, load) in page.chunks(ASSETS.len()).enumerate() {
        let files: BTreeSet<&str> = load.iter().map(|a| a.uri.as_str()).collect();
        let want: BTreeSet<&str> = ASSETS.iter().map(|a| a.path).collect();
        assert_eq!(files, want, "{label}, load {}: {load:#?}", i + 1);
        if i == 0 {
            assert!(
                load.iter().all(|a| !a.conditional() && a.status == 200),
                "{label}: the first load on a fresh profile fetches everything: {load:#?}"
            );
        } else {
            // A persistent disk cache: each file is revalidated with the tag
            // the browser got last time (a 200 from another replica replaces it).
            assert!(
                load.iter().all(|a| a.if_none_match.is_some()),
                "{label}, load {}: every file revalidated with If-None-Match: {load:#?}",
                i + 1
            );
        }
    }
    let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in &page {
        if let Some(t) = &a.if_none_match {
            tags.entry(a.uri.as_str()).or_default().insert(t);
        }
        assert!(
            a.status == 200 || a.status == 304,
            "{label}: unexpected status: {a:?}"
        );
        seen.requests += 1;
        seen.bytes += a.bytes;
        seen.servers.insert(a.server.clone());
        if a.conditional() {
            seen.conditional += 1;
            if a.status == 200 {
                seen.conditional_200 += 1;
            }
        }
        if a.status == 304 {
            seen.not_modified += 1;
        }
    }
    seen.tags_per_file = tags.values().map(BTreeSet::len).max().unwrap_or(0);
    if !c.sidecars.is_empty() {
        let after = sidecar_304().await.expect("sidecar metrics");
        seen.sidecar_not_modified = Some((after - sidecar_before) as u64);
    }
    seen
}

/// Other users of the site, reading a document through the same balancer at
/// random intervals until `stop`. Round robin hands each request to the next
/// replica; a browser alone would meet the replicas in a fixed rotation (with
/// 8 files a load and 3 replicas, each file on the next replica every time),
/// which production traffic from many clients never keeps.
fn others(c: &Cluster) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (http, url) = (c.http.clone(), c.url(OTHERS_PATH));
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(&url, &[]).await;
                assert!(
                    r.as_ref().is_ok_and(|r| r.status == 200),
                    "another user's read failed: {r:?}"
                );
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..15))).await;
            }
            sent.load(Ordering::Relaxed)
        })
    };
    (stop, task)
}

fn access_log(c: &Cluster) -> Vec<Access> {
    c.lb.access_log()
        .unwrap_or_else(|e| panic!("HAProxy's access log: {e}"))
}

/// Wait until HAProxy logged `n` requests for the page after the first
/// `skip` lines.
async fn wait_for_page_requests(c: &Cluster, skip: usize, n: usize) {
    let start = Instant::now();
    loop {
        let log = access_log(c);
        let got = log
            .iter()
            .skip(skip)
            .filter(|a| a.uri.starts_with("/site/"))
            .count();
        if got >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "HAProxy logged {got} of the page's {n} requests; log since the start: {:#?}",
            &log[skip.min(log.len())..]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_table(without: &Seen, with: &Seen) {
    let pct = |n: usize, of: usize| {
        if of == 0 {
            format!("{n}")
        } else {
            format!("{n} ({:.0}%)", 100.0 * n as f64 / of as f64)
        }
    };
    let rows = [
        (
            "requests for the page's files",
            without.requests.to_string(),
            with.requests.to_string(),
        ),
        (
            "conditional (revalidations)",
            without.conditional.to_string(),
            with.conditional.to_string(),
        ),
        (
            "304 Not Modified",
            pct(without.not_modified, without.conditional),
            pct(with.not_modified, with.conditional),
        ),
        (
            "revalidations answered 200",
            without.conditional_200.to_string(),
            with.conditional_200.to_string(),
        ),
        (
            "ETags the browser held (max per file)",
            without.tags_per_file.to_string(),
            with.tags_per_file.to_string(),
        ),
        (
            "304s counted by the sidecars",
            "-".into(),
            with.sidecar_not_modified
                .map_or("-".into(), |n| n.to_string()),
        ),
        (
            "bytes to the browser",
            without.bytes.to_string(),
            with.bytes.to_string(),
        ),
        (
            "other users' requests meanwhile",
            without.others.to_string(),
            with.others.to_string(),
        ),
        (
            "slowest browser run (ms)",
            slowest(&without.took),
            slowest(&with.took),
        ),
    ];
    println!(
        "\nChromium, {LOADS} loads of {PAGE} ({} files) through HAProxy round robin to {REPLICAS} replicas",
        ASSETS.len()
    );
    println!("{:<38}{:>17}{:>17}", "", "without sametag", "with sametag");
    for (name, a, b) in &rows {
        println!("{name:<38}{a:>17}{b:>17}");
    }
}

fn slowest(took: &[Duration]) -> String {
    took.iter()
        .max()
        .map_or("-".into(), |d| d.as_millis().to_string())
}

/// A page that never arrives: the browser is killed at the limit, with all
/// its helper processes, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_past_its_limit_is_killed_with_its_output() {
    let chromium = Chromium::find().unwrap_or_else(|e| panic!("{e}"));
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("profile");
    let start = Instant::now();
    let err = chromium
        .load(&url, &profile, None, Duration::from_secs(3))
        .await
        .expect_err("a page that never arrives cannot load");
    let msg = err.to_string();
    assert!(msg.contains("did not finish within 3s"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(10), "{msg}");
    held.abort();
    // Nothing of that browser is left running (a killed process may take a
    // moment to go).
    let needle = format!("--user-data-dir={}", profile.display());
    let running = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .filter(|c| c.contains(&needle))
                    .collect()
            })
            .unwrap_or_default()
    };
    let gone = Instant::now();
    while !running().is_empty() && gone.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        running().is_empty(),
        "browser processes left behind: {:#?}",
        running()
    );
}
