//! The one-command benchmark (`bench/run.sh` wraps it): wrk against the app,
//! nginx, the sidecar (Validate, embedded store and Redis; Trust 304s) and a
//! bare hyper server, side by side in one run; sidecar memory and Redis round
//! trips; the seed scenario before/after; a perf profile. Writes
//! `results.json` and `RESULTS.md` into `--out`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use sametag_lb_e2e::client::Http;
use sametag_lb_e2e::cluster::{Cluster, ClusterSpec, Kind, SametagSpec};
use sametag_lb_e2e::net::{free_addr, wait_listening};
use sametag_lb_e2e::nginx::{Nginx, Role};
use sametag_lb_e2e::oha::{self, OhaRun};
use sametag_lb_e2e::proc::{Proc, Spec, cpu_ticks, rss_kib, with_children};
use sametag_lb_e2e::redis::Redis;
use sametag_lb_e2e::results::{
    self, FixedRate, Machine, Memory, Mixed, Profile, Results, Reval, Run, Scenario,
};
use sametag_lb_e2e::scenario::{Browser, RevalStats};
use sametag_lb_e2e::sidecar::{Sidecar, SidecarOpts, metric_sum, own_bin};
use sametag_lb_e2e::wrk::{self, WrkRun};
use sametag_lb_e2e::{HarnessError, Result, tools};

/// Benchmark sametag against nginx and a bare hyper server.
#[derive(Parser)]
struct Args {
    /// Where results.json and RESULTS.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 6)]
    duration: u64,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    conns: Vec<usize>,
    /// Body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 65536])]
    sizes: Vec<usize>,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Revalidation rounds in the seed scenario.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Skip the perf profile.
    #[arg(long)]
    no_profile: bool,
    /// Only rewrite RESULTS.md from the results.json already in --out (after
    /// a change to the report's layout); measures nothing.
    #[arg(long)]
    render_only: bool,
}

/// Every server of the side-by-side comparison.
struct Bed {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    app: (std::net::SocketAddr, Proc),
    hello: (std::net::SocketAddr, Proc),
    nginx: Nginx,
    _redis: Redis,
    validate_mem: Sidecar,
    validate_redis: Sidecar,
    trust_mem: Sidecar,
    trust_redis: Sidecar,
}

async fn start_own(dir: &Path, bin: &str, extra: &[&str]) -> Result<(std::net::SocketAddr, Proc)> {
    let addr = free_addr()?;
    let mut args = vec!["--listen".to_owned(), addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = Proc::start(Spec {
        name: bin.into(),
        program: own_bin(bin)?,
        args,
        env: vec![],
        log: dir.join(format!("{bin}.log")),
    })?;
    wait_listening(addr, &mut p, Duration::from_secs(10)).await?;
    Ok((addr, p))
}

impl Bed {
    async fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("sametag-bench-")
            .tempdir()
            .map_err(|e| HarnessError::io("temp dir", e))?;
        let dir = tmp.path().to_path_buf();
        let data = dir.join("data").to_string_lossy().into_owned();
        let app = start_own(
            &dir,
            "sametag-lb-app",
            &["--replica", "bench", "--data-dir", &data],
        )
        .await?;
        let hello = start_own(&dir, "sametag-hello", &[]).await?;
        let workers = nproc();
        let nginx = Nginx::start(
            &dir,
            "nginx-proxy",
            Role::Proxy {
                upstream: app.0,
                workers,
            },
        )
        .await?;
        let redis = Redis::start(&dir).await?;
        let trust = dir.join("trust.yaml");
        std::fs::write(&trust, "mode: Trust\nmaxAge: 300s\n")
            .map_err(|e| HarnessError::io("policy", e))?;
        let opts = |redis: bool, policy: Option<&Path>, prefix: &str| SidecarOpts {
            redis: redis.then(|| format!("redis://{}", redis_addr(&dir))),
            policy: policy.map(Path::to_path_buf),
            prefix: prefix.into(),
            extra_args: Vec::new(),
        };
        std::fs::write(dir.join("redis.addr"), redis.addr.to_string())
            .map_err(|e| HarnessError::io("addr", e))?;
        let validate_mem =
            Sidecar::start(&dir, "validate-mem", app.0, &opts(false, None, "vm:")).await?;
        let validate_redis =
            Sidecar::start(&dir, "validate-redis", app.0, &opts(true, None, "vr:")).await?;
        let trust_mem =
            Sidecar::start(&dir, "trust-mem", app.0, &opts(false, Some(&trust), "tm:")).await?;
        let trust_redis =
            Sidecar::start(&dir, "trust-redis", app.0, &opts(true, Some(&trust), "tr:")).await?;
        Ok(Bed {
            _dir: tmp,
            dir,
            app,
            hello,
            nginx,
            _redis: redis,
            validate_mem,
            validate_redis,
            trust_mem,
            trust_redis,
        })
    }

    fn sidecar(&self, config: &str) -> Option<&Sidecar> {
        match config {
            "validate-mem" => Some(&self.validate_mem),
            "validate-redis" => Some(&self.validate_redis),
            "trust304-mem" => Some(&self.trust_mem),
            "trust304-redis" => Some(&self.trust_redis),
            _ => None,
        }
    }

    /// The processes serving `config` (nginx: master and workers).
    fn server_pids(&self, config: &str) -> Vec<u32> {
        match config {
            "app" => self.app.1.pid().into_iter().collect(),
            "hello" => self.hello.1.pid().into_iter().collect(),
            "nginx" => self.nginx.proc.pid().map(with_children).unwrap_or_default(),
            other => self
                .sidecar(other)
                .and_then(|s| s.proc.pid())
                .into_iter()
                .collect(),
        }
    }

    fn addr(&self, config: &str) -> std::net::SocketAddr {
        match config {
            "app" => self.app.0,
            "nginx" => self.nginx.addr,
            "hello" => self.hello.0,
            other => self.sidecar(other).map(|s| s.listen).unwrap_or(self.app.0),
        }
    }
}

fn redis_addr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("redis.addr")).unwrap_or_default()
}

fn ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p)).sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let tool = |name: &str, flag: &str| {
        tools::require(name)
            .map(|p| sh(&p.to_string_lossy(), &[flag]))
            .unwrap_or_else(|e| e.to_string())
    };
    Machine {
        loadavg: (loadavg(), String::new()),
        nproc: nproc(),
        cpu,
        kernel: sh("uname", &["-r"]),
        versions: vec![
            ("nginx".into(), tool("nginx", "-v")),
            ("haproxy".into(), tool("haproxy", "-v")),
            ("redis-server".into(), tool("redis-server", "--version")),
            ("wrk".into(), tool("wrk", "-v")),
        ],
    }
}

/// Progress: one line per step.
struct Progress {
    step: usize,
    total: usize,
}

impl Progress {
    fn say(&mut self, msg: &str) {
        self.step += 1;
        println!("[bench {:>2}/{}] {msg}", self.step, self.total);
    }
}

/// Figures from a sidecar's /metrics.
#[derive(Default, Clone, Copy)]
struct Counters {
    requests: f64,
    trusted: f64,
    redis_rt: f64,
}

/// The sidecar's counters; a metric that is missing is an error, never a 0
/// (a renamed metric must not turn a goal row into "met").
async fn counters(http: &Http, s: &Sidecar, redis: bool) -> Result<Counters> {
    let text = s.metrics(http).await?;
    let missing = |name: &str| HarnessError::Parse {
        tool: "sidecar /metrics".into(),
        detail: format!("{name} is missing"),
    };
    let has = |name: &str| {
        text.lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
    };
    for name in ["sametag_requests_total"]
        .into_iter()
        .chain(redis.then_some("sametag_redis_round_trips_total"))
    {
        if !has(name) {
            return Err(missing(name));
        }
    }
    Ok(Counters {
        requests: metric_sum(&text, |n| n == "sametag_requests_total"),
        trusted: text
            .lines()
            .filter(|l| {
                l.starts_with("sametag_requests_total") && l.contains("trusted_not_modified")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
        redis_rt: metric_sum(&text, |n| n == "sametag_redis_round_trips_total"),
    })
}

/// Sample a process's VmRSS every 100 ms until `stop`; the highest value.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let max = AtomicU64::new(0);
        while !stop.load(Ordering::SeqCst) {
            if let Some((_, rss)) = rss_kib(pid) {
                max.fetch_max(rss, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max.load(Ordering::Relaxed)
    })
}

struct Ctx<'a> {
    bed: &'a Bed,
    http: Http,
    args: &'a Args,
    progress: Progress,
    results: Results,
    load_rss: std::collections::HashMap<String, u64>,
}

impl Ctx<'_> {
    async fn measure(
        &mut self,
        config: &str,
        size: usize,
        conns: usize,
        script: Option<&Path>,
    ) -> Result<()> {
        let path = if size == 0 {
            "/".to_owned()
        } else {
            format!("/bytes/{size}")
        };
        let path = if config.starts_with("trust304") {
            "/bytes/1024".to_owned()
        } else {
            path
        };
        let url = format!("http://{}{path}", self.bed.addr(config));
        self.progress.say(&format!(
            "{config:<15} body {:>6} conns {conns:>3}: wrk {} s",
            if size == 0 {
                "-".to_owned()
            } else {
                size.to_string()
            },
            self.args.duration
        ));
        let warm = WrkRun {
            url: &url,
            conns,
            threads: self.args.threads,
            duration: Duration::from_secs(1),
            script,
        };
        wrk::run(&warm).await?;
        let sidecar = self.bed.sidecar(config);
        let redis = config.ends_with("redis");
        let before = match sidecar {
            Some(s) => counters(&self.http, s, redis).await?,
            None => Counters::default(),
        };
        let server_pids = self.bed.server_pids(config);
        let app_pids: Vec<u32> = if matches!(config, "app" | "hello") {
            Vec::new()
        } else {
            self.bed.app.1.pid().into_iter().collect()
        };
        let (s0, a0) = (ticks(&server_pids), ticks(&app_pids));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sidecar
            .and_then(|s| s.proc.pid())
            .map(|pid| sample_rss(pid, stop.clone()));
        let run = WrkRun {
            duration: Duration::from_secs(self.args.duration),
            ..warm
        };
        let w = wrk::run(&run).await;
        stop.store(true, Ordering::SeqCst);
        let rss = match sampler {
            Some(h) => h.await.ok(),
            None => None,
        };
        let w = w?;
        let (s1, a1) = (ticks(&server_pids), ticks(&app_pids));
        // Clock ticks are 10 ms.
        let per_req = |d: u64| (w.requests > 0).then(|| d as f64 * 10_000.0 / w.requests as f64);
        let server_cpu = per_req(s1.saturating_sub(s0));
        let app_cpu = if app_pids.is_empty() {
            None
        } else {
            per_req(a1.saturating_sub(a0))
        };
        let (mut rt, mut trusted) = (None, None);
        if let Some(s) = sidecar {
            let after = counters(&self.http, s, redis).await?;
            let reqs = after.requests - before.requests;
            if reqs > 0.0 {
                if redis {
                    rt = Some((after.redis_rt - before.redis_rt) / reqs);
                }
                trusted = Some((after.trusted - before.trusted) / reqs);
            }
            if let Some(k) = rss {
                let e = self.load_rss.entry(config.to_owned()).or_default();
                *e = (*e).max(k);
            }
        }
        println!(
            "           -> {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, server CPU {:.1} µs/req, non-2xx/3xx {}, socket errors {}{}",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            server_cpu.unwrap_or(0.0),
            w.non_2xx_3xx,
            w.socket_errors,
            rt.map(|v| format!(", Redis RT/req {v:.4}"))
                .unwrap_or_default()
        );
        self.results.runs.push(Run {
            config: config.into(),
            size: if config.starts_with("trust304") || config == "hello" {
                0
            } else {
                size
            },
            conns,
            wrk: w,
            redis_rt_per_req: rt,
            trusted_share: trusted,
            sidecar_rss_max_kib: rss,
            server_cpu_us_per_req: server_cpu,
            app_cpu_us_per_req: app_cpu,
        });
        Ok(())
    }
}

impl Ctx<'_> {
    /// Latency of `config` at `rate` requests per second (oha).
    async fn fixed_rate(&mut self, config: &str, rate: u64, conns: usize) -> Result<()> {
        let url = format!("http://{}/bytes/1024", self.bed.addr(config));
        self.progress.say(&format!(
            "{config:<15} fixed rate {rate} req/s, {conns} conns: oha {} s",
            self.args.duration
        ));
        let o = oha::run(&OhaRun {
            url: &url,
            rate,
            conns,
            duration: Duration::from_secs(self.args.duration),
        })
        .await?;
        println!(
            "           -> {} requests, {} errors, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
            o.requests, o.errors, o.p50_ms, o.p99_ms, o.p999_ms
        );
        self.results.fixed_rate.push(FixedRate {
            config: config.into(),
            rate,
            conns,
            requests: o.requests,
            errors: o.errors,
            p50_ms: o.p50_ms,
            p99_ms: o.p99_ms,
            p999_ms: o.p999_ms,
        });
        Ok(())
    }

    /// Redis round trips per request on the mixed workload, through the
    /// Trust sidecar on Redis.
    async fn mixed(&mut self, script: &Path, conns: usize) -> Result<()> {
        let s = &self.bed.trust_redis;
        let url = format!("http://{}/bytes/1024", s.listen);
        self.progress.say(&format!(
            "mixed workload on trust304-redis, {conns} conns: wrk {} s",
            self.args.duration
        ));
        let before = counters(&self.http, s, true).await?;
        let w = wrk::run(&WrkRun {
            url: &url,
            conns,
            threads: self.args.threads,
            duration: Duration::from_secs(self.args.duration),
            script: Some(script),
        })
        .await?;
        let after = counters(&self.http, s, true).await?;
        let m = Mixed {
            mix: MIX.into(),
            requests: after.requests - before.requests,
            trusted: after.trusted - before.trusted,
            redis_round_trips: after.redis_rt - before.redis_rt,
            wrk: w,
        };
        println!(
            "           -> {:.0} requests, {:.1}% trusted 304s, {:.3} Redis round trips per request, non-2xx/3xx {}, socket errors {}",
            m.requests,
            100.0 * m.trusted / m.requests.max(1.0),
            m.redis_round_trips / m.requests.max(1.0),
            m.wrk.non_2xx_3xx,
            m.wrk.socket_errors
        );
        self.results.mixed = Some(m);
        Ok(())
    }
}

/// A wrk Lua script that revalidates with `etag`.
fn inm_script(dir: &Path, name: &str, etag: &str) -> Result<PathBuf> {
    let p = dir.join(format!("{name}.lua"));
    let lua = format!(
        "wrk.headers[\"If-None-Match\"] = '{}'\n",
        etag.replace('\'', "")
    );
    std::fs::write(&p, lua).map_err(|e| HarnessError::io("write lua", e))?;
    Ok(p)
}

/// The mixed workload's wrk script, per 20 requests: 1 write (a PUT to one
/// of 16 documents), 2 GETs of keys no one asked for before, and 17
/// revalidations of the hot tag `etag`.
const MIX: &str =
    "per 100 requests: 5 PUTs, 10 GETs of never-seen keys, 85 If-None-Match GETs of a hot tag";

fn mixed_script(dir: &Path, etag: &str) -> Result<PathBuf> {
    let p = dir.join("mixed.lua");
    let lua = format!(
        r#"local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local k = n % 20
  local id = tostring(tid) .. "-" .. tostring(n)
  if k == 0 then
    return wrk.format("PUT", "/docs/mix" .. tostring(n % 16), {{["Content-Type"] = "text/plain"}}, "v" .. id)
  elseif k <= 2 then
    return wrk.format("GET", "/bytes/1024?cold=" .. id)
  else
    return wrk.format("GET", "/bytes/1024", {{["If-None-Match"] = '{tag}'}})
  end
end
"#,
        tag = etag.replace('\'', "")
    );
    std::fs::write(&p, lua).map_err(|e| HarnessError::io("write lua", e))?;
    Ok(p)
}

fn reval(s: &RevalStats) -> Reval {
    Reval {
        requests: s.requests,
        not_modified: s.not_modified,
        failed: s.failed,
        wire_bytes: s.wire_bytes,
        max_tags_per_resource: s.max_tags_per_resource(),
    }
}

async fn seed_scenario(kind: Kind, rounds: usize) -> Result<Scenario> {
    let mut out = Vec::new();
    for sametag in [
        None,
        Some(SametagSpec {
            redis: true,
            policy: None,
            ..SametagSpec::default()
        }),
    ] {
        let c = Cluster::start(&ClusterSpec {
            kind,
            replicas: 3,
            sametag,
        })
        .await?;
        let paths = c.resources();
        let mut b = Browser::new(c.http.clone(), c.lb.url());
        b.first_load(&paths).await?;
        out.push(reval(&b.revalidate_all(&paths, rounds).await));
    }
    let with = out.pop().unwrap_or_default();
    let without = out.pop().unwrap_or_default();
    Ok(Scenario {
        kind: match kind {
            Kind::Static => "nginx static".into(),
            Kind::App => "json app".into(),
        },
        without,
        with,
    })
}

/// Configurations measured at a fixed rate.
const FIXED_RATE_CONFIGS: [&str; 4] = ["app", "nginx", "validate-mem", "validate-redis"];
/// Configurations profiled (nginx: every worker).
const PROFILED: [&str; 5] = [
    "nginx",
    "validate-mem",
    "validate-redis",
    "trust304-mem",
    "trust304-redis",
];

/// Flat perf profile of `pids` for `secs` while `load` runs.
async fn profile(
    name: &str,
    pids: &[u32],
    dir: &Path,
    secs: u64,
    load: WrkRun<'_>,
) -> Result<Profile> {
    let perf = tools::require("perf")?;
    let data = dir.join(format!("perf-{name}.data"));
    let pid_list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let rec = tokio::process::Command::new(&perf)
        .args(["record", "-F", "999", "-p", &pid_list, "-o"])
        .arg(&data)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| HarnessError::io("perf record", e))?;
    let (_, rec) = tokio::join!(wrk::run(&load), rec.wait_with_output());
    rec.map_err(|e| HarnessError::io("perf record", e))?;
    let out = tokio::process::Command::new(&perf)
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "symbol",
            "-i",
        ])
        .arg(&data)
        .output()
        .await
        .map_err(|e| HarnessError::io("perf report", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut top = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let l = line.trim();
        let Some((pct, rest)) = l.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        top.push((pct, rest.trim().to_owned()));
    }
    let mut cats: Vec<(String, f64)> = Vec::new();
    for (pct, sym) in &top {
        let c = category(sym);
        match cats.iter_mut().find(|(k, _)| k == c) {
            Some(e) => e.1 += pct,
            None => cats.push((c.to_owned(), *pct)),
        }
    }
    cats.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Profile {
        name: name.to_owned(),
        top,
        categories: cats,
    })
}

fn category(sym: &str) -> &'static str {
    let s = sym.to_ascii_lowercase();
    let has = |k: &[&str]| k.iter().any(|k| s.contains(k));
    if has(&["blake3"]) {
        "hashing (BLAKE3)"
    } else if s.starts_with("[k]") {
        "kernel (network syscalls, scheduling)"
    } else if has(&[
        "malloc", "free", "realloc", "calloc", "mallocx", "sdallocx", "je_", "alloc::",
    ]) {
        "allocation (malloc/free)"
    } else if has(&["memcpy", "memmove", "memset", "memcmp"]) {
        "memcpy/memmove"
    } else if has(&["futex", "mutex", "rwlock", "parking_lot", "lock"]) {
        "locks"
    } else if has(&["redis", "combine"]) {
        "redis client"
    } else if has(&["hyper", "httparse", "http::", "h2::"]) {
        "hyper / HTTP parsing"
    } else if has(&["tokio"]) {
        "tokio runtime"
    } else if has(&["prometheus", "tracing"]) {
        "metrics / tracing"
    } else if has(&["sametag"]) {
        "sametag code"
    } else {
        "other"
    }
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.out).map_err(|e| HarnessError::io("create out dir", e))?;
    let sizes = args.sizes.clone();
    let conns = args.conns.clone();
    let total = 1
        + sizes.len() * conns.len() * 4
        + conns.len() * 3
        + FIXED_RATE_CONFIGS.len()
        + 1
        + 2
        + if args.no_profile { 0 } else { PROFILED.len() }
        + 1;
    let mut progress = Progress { step: 0, total };
    progress.say("starting app, hello, nginx proxy, redis-server and four sidecars");
    let bed = Bed::start().await?;
    let http = Http::default();
    // Idle: after start and one request each.
    let mut idle = Vec::new();
    for c in [
        "validate-mem",
        "validate-redis",
        "trust304-mem",
        "trust304-redis",
    ] {
        let s = bed
            .sidecar(c)
            .ok_or_else(|| HarnessError::Build(c.into()))?;
        let _ = http
            .get(&format!("http://{}/bytes/1024", s.listen), &[])
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        idle.push((c, s.proc.rss_kib().map(|(_, rss)| rss).unwrap_or(0)));
    }
    let mut ctx = Ctx {
        bed: &bed,
        http: http.clone(),
        args: &args,
        progress,
        results: Results {
            machine: machine(),
            when: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            duration_s: args.duration,
            threads: args.threads,
            ..Default::default()
        },
        load_rss: Default::default(),
    };
    for &size in &sizes {
        for &c in &conns {
            for config in ["app", "nginx", "validate-mem", "validate-redis"] {
                ctx.measure(config, size, c, None).await?;
            }
        }
    }
    // Trust 304s: tag the resource once, then revalidate it with wrk.
    let mut scripts = Vec::new();
    for (config, s) in [
        ("trust304-mem", &bed.trust_mem),
        ("trust304-redis", &bed.trust_redis),
    ] {
        let url = format!("http://{}/bytes/1024", s.listen);
        let r = http.get(&url, &[]).await?;
        let tag = r.header("etag").unwrap_or_default().to_owned();
        let check = http.get(&url, &[("if-none-match", &tag)]).await?;
        if check.status != 304 {
            return Err(HarnessError::Parse {
                tool: "sidecar".into(),
                detail: format!(
                    "{config}: If-None-Match {tag} got {} (want 304)",
                    check.status
                ),
            });
        }
        scripts.push((config, inm_script(&bed.dir, config, &tag)?));
    }
    for &c in &conns {
        for (config, script) in &scripts {
            ctx.measure(config, 0, c, Some(script)).await?;
        }
        ctx.measure("hello", 0, c, None).await?;
    }
    // Fixed rate: half of nginx's maximum for 1 KiB at the fewest
    // connections, the same schedule for every configuration.
    let c0 = *conns.first().unwrap_or(&16);
    let nginx_max = ctx
        .results
        .find("nginx", 1024, c0)
        .or_else(|| ctx.results.runs.iter().find(|r| r.config == "nginx"))
        .map_or(0.0, |r| r.wrk.rps);
    let rate = ((nginx_max / 2.0) as u64).max(100);
    for config in FIXED_RATE_CONFIGS {
        ctx.fixed_rate(config, rate, c0).await?;
    }
    let hot_tag = http
        .get(
            &format!("http://{}/bytes/1024", bed.trust_redis.listen),
            &[],
        )
        .await?
        .header("etag")
        .unwrap_or_default()
        .to_owned();
    let mixed = mixed_script(&bed.dir, &hot_tag)?;
    ctx.mixed(&mixed, *conns.last().unwrap_or(&64)).await?;
    for kind in [Kind::Static, Kind::App] {
        ctx.progress.say(&format!(
            "seed scenario ({kind:?}): 3 replicas behind HAProxy, without and with sametag"
        ));
        let sc = seed_scenario(kind, args.rounds).await?;
        println!(
            "           -> 304 rate {:.1}% without, {:.1}% with; bytes {} -> {}",
            100.0 * sc.without.rate(),
            100.0 * sc.with.rate(),
            sc.without.wire_bytes,
            sc.with.wire_bytes
        );
        ctx.results.scenarios.push(sc);
    }
    if !args.no_profile {
        let c = *conns.last().unwrap_or(&64);
        for config in PROFILED {
            let script = scripts
                .iter()
                .find(|(name, _)| *name == config)
                .map(|(_, p)| p.as_path());
            ctx.progress
                .say(&format!("perf profile: {config}, 1 KiB, {c} conns"));
            let url = format!("http://{}/bytes/1024", bed.addr(config));
            let load = WrkRun {
                url: &url,
                conns: c,
                threads: args.threads,
                duration: Duration::from_secs(5),
                script,
            };
            let pids = bed.server_pids(config);
            if pids.is_empty() {
                println!("           -> profile skipped: {config} not running");
                continue;
            }
            match profile(config, &pids, &bed.dir, 4, load).await {
                Ok(p) => ctx.results.profiles.push(p),
                Err(e) => println!("           -> profile skipped: {e}"),
            }
        }
    }
    ctx.progress.say("writing results");
    ctx.results.machine.loadavg.1 = loadavg();
    for (c, idle_kib) in idle {
        let s = bed
            .sidecar(c)
            .ok_or_else(|| HarnessError::Build(c.into()))?;
        let hwm = s.proc.rss_kib().map(|(h, _)| h).unwrap_or(0);
        ctx.results.memory.push(Memory {
            config: c.into(),
            idle_kib,
            load_max_kib: ctx.load_rss.get(c).copied().unwrap_or(0),
            hwm_kib: hwm,
        });
    }
    let json = serde_json::to_string_pretty(&ctx.results).map_err(|e| HarnessError::Parse {
        tool: "serde_json".into(),
        detail: e.to_string(),
    })?;
    std::fs::write(args.out.join("results.json"), json)
        .map_err(|e| HarnessError::io("write results.json", e))?;
    std::fs::write(args.out.join("RESULTS.md"), results::markdown(&ctx.results))
        .map_err(|e| HarnessError::io("write RESULTS.md", e))?;
    println!("results: {}", args.out.join("RESULTS.md").display());
    Ok(())
}

/// Rewrite `out/RESULTS.md` from `out/results.json`.
fn render_only(out: &Path) -> Result<()> {
    let json = std::fs::read_to_string(out.join("results.json"))
        .map_err(|e| HarnessError::io("read results.json", e))?;
    let results: Results = serde_json::from_str(&json)
        .map_err(|e| HarnessError::io("parse results.json", std::io::Error::other(e)))?;
    std::fs::write(out.join("RESULTS.md"), results::markdown(&results))
        .map_err(|e| HarnessError::io("write RESULTS.md", e))?;
    println!("results: {}", out.join("RESULTS.md").display());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let done = if args.render_only {
        render_only(&args.out)
    } else {
        run(args).await
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sametag-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
