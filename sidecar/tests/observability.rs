//! What operators see of a running sidecar binary: every metric the README
//! documents is on `/metrics` (with a real Redis, so the store's families
//! are there too), the exposition passes `promtool check metrics`, the new
//! histograms and gauges move, and `--access-log` writes one JSON line per
//! request under its own target (and nothing without the flag).

mod support;

#[path = "../../tests/common/prom.rs"]
mod prom;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{App, BIN, get, redis_server};

/// The binary with its log lines kept, killed when dropped.
struct Logged {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Logged {
    fn start(upstream: SocketAddr, args: &[&str]) -> Logged {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--upstream", &upstream.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("SAMETAG_ACCESS_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the binary");
        let stdout = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
                keep.lock().unwrap().push(v);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addrs = loop {
            let started = lines
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["fields"]["message"] == "sametag sidecar started")
                .cloned();
            if let Some(v) = started {
                let addr = |f: &str| v["fields"][f].as_str()?.parse::<SocketAddr>().ok();
                break addr("listen").zip(addr("admin"));
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some((addr, admin)) = addrs else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no start line with both addresses");
        };
        Logged {
            child,
            addr,
            admin,
            lines,
        }
    }

    /// Access-log lines so far.
    fn access_lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["target"] == "sametag::access")
            .cloned()
            .collect()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sample's value in `scrape` (the whole line up to the value must match).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_metrics_are_on_a_real_scrape_and_pass_promtool() {
    let redis = redis_server::RedisServer::start();
    let app = App::fixed("hello from the app\n", "\"app-own-tag\"").await;
    let sidecar = Logged::start(app.addr, &["--redis", &redis.url()]);

    // One tagged 200, one 304: the request and upstream histograms move.
    let first = get(sidecar.addr, "/doc", &[]).await;
    assert_eq!(first.status, 200);
    let tag = first.etag();
    let again = get(sidecar.addr, "/doc", &[("if-none-match", &tag)]).await;
    assert_eq!(again.status, 304);

    let scrape = get(sidecar.admin, "/metrics", &[]).await.text();
    let documented = prom::readme_metrics(&prom::readme(), "### Sidecar metrics");
    let missing = prom::missing(&documented, &scrape);
    assert!(
        missing.is_empty(),
        "documented in the README but not on /metrics: {missing:?}\n{scrape}"
    );
    // Every sametag family on /metrics is documented, too.
    let undocumented: Vec<String> = prom::exposed_names(&scrape)
        .into_iter()
        .filter(|n| n.starts_with("sametag_"))
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            !documented.iter().any(|d| d == n || d == base)
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "on /metrics but not in the README: {undocumented:?}"
    );
    prom::check_metrics(&scrape).unwrap_or_else(|e| panic!("{e}\n{scrape}"));

    for (series, at_least) in [
        (
            "sametag_request_duration_seconds_count{outcome=\"tagged_200\",status_class=\"2xx\"}",
            1.0,
        ),
        (
            "sametag_request_duration_seconds_count{outcome=\"not_modified\",status_class=\"3xx\"}",
            1.0,
        ),
        ("sametag_upstream_duration_seconds_count", 2.0),
        ("sametag_store_up", 1.0),
        ("sametag_tag_buffer_budget_bytes", (64u64 << 20) as f64),
        (
            "sametag_build_info{version=\"0.1.0\",component=\"sidecar\"}",
            1.0,
        ),
    ] {
        let got = sample(&scrape, series).unwrap_or(-1.0);
        assert!(
            got >= at_least,
            "{series} = {got}, want >= {at_least}\n{scrape}"
        );
    }
    assert_eq!(sample(&scrape, "sametag_tag_buffer_bytes"), Some(0.0));
    // One store-up gauge, for both stores.
    assert!(!scrape.contains("sametag_redis_up"), "{scrape}");
    // Without --access-log, no access lines.
    assert!(sidecar.access_lines().is_empty());

    // The store goes away: the one gauge says so.
    drop(redis);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = get(sidecar.admin, "/metrics", &[]).await.text();
        if sample(&scrape, "sametag_store_up") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "store_up stayed 1:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    let app = App::fixed("twenty bytes of body", "\"a\"").await;
    let sidecar = Logged::start(app.addr, &["--access-log"]);
    let first = get(sidecar.addr, "/items/7?full=1", &[]).await;
    assert_eq!(first.status, 200);
    let tag = first.etag();
    let again = get(sidecar.addr, "/items/7", &[("if-none-match", &tag)]).await;
    assert_eq!(again.status, 304);
    // A request the sidecar refuses itself is logged too.
    let bad = get(sidecar.addr, "/items/8", &[("host", "bad host")]).await;
    assert_eq!(bad.status, 400);

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = sidecar.access_lines();
        if lines.len() >= 3 {
            break lines;
        }
        assert!(Instant::now() < deadline, "access lines: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let f = |i: usize| lines[i]["fields"].clone();
    assert_eq!(f(0)["method"], "GET");
    assert_eq!(f(0)["path"], "/items/7");
    assert_eq!(f(0)["status"], 200);
    assert_eq!(f(0)["outcome"], "tagged_200");
    assert_eq!(f(0)["bytes"], 20);
    assert_eq!(f(0)["complete"], true);
    assert!(f(0)["duration_ms"].as_f64().unwrap() > 0.0, "{lines:?}");
    assert_eq!(f(1)["status"], 304);
    assert_eq!(f(1)["outcome"], "not_modified");
    assert_eq!(f(1)["bytes"], 0);
    assert_eq!(f(2)["status"], 400);
    assert_eq!(f(2)["outcome"], "bad_request");
    assert_eq!(lines[0]["level"], "INFO");
}
