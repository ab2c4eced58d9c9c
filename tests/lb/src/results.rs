//! The benchmark's result model (serialised to `results.json`) and the
//! Markdown report with every goal and its measured ratio.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::wrk::WrkResult;

/// The machine the numbers come from.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// CPU model name.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Tool versions (name, version line).
    pub versions: Vec<(String, String)>,
    /// /proc/loadavg when the run started and when it ended: other work on
    /// the machine skews absolute numbers (ratios less so).
    pub loadavg: (String, String),
}

/// One wrk measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// Configuration key: `app`, `nginx`, `validate-mem`, `validate-redis`,
    /// `trust304-mem`, `trust304-redis`, `hello`.
    pub config: String,
    /// Body size in bytes (0 for hello and 304 runs).
    pub size: usize,
    /// Connections.
    pub conns: usize,
    /// wrk's figures.
    pub wrk: WrkResult,
    /// Redis round trips per request (sidecar /metrics delta).
    pub redis_rt_per_req: Option<f64>,
    /// Share of requests answered 304 from the store (Trust).
    pub trusted_share: Option<f64>,
    /// Highest sidecar VmRSS seen during the run, KiB.
    pub sidecar_rss_max_kib: Option<u64>,
    /// CPU time of the server under test (the proxy, or the app/hello when
    /// measured directly) per request, microseconds. Robust to other load on
    /// the machine, unlike req/s.
    pub server_cpu_us_per_req: Option<f64>,
    /// CPU time of the app per request behind a proxy, microseconds.
    pub app_cpu_us_per_req: Option<f64>,
}

/// The seed scenario's figures for one bed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reval {
    /// Revalidations sent.
    pub requests: u64,
    /// 304s.
    pub not_modified: u64,
    /// Failed requests.
    pub failed: u64,
    /// Approximate bytes received.
    pub wire_bytes: u64,
    /// Distinct ETags for one resource (max over resources).
    pub max_tags_per_resource: usize,
}

impl Reval {
    /// 304 share.
    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.not_modified as f64 / self.requests as f64
        }
    }
}

/// Seed scenario, before and after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    /// `nginx static` or `json app`.
    pub kind: String,
    /// Without sametag.
    pub without: Reval,
    /// With sametag (Redis store).
    pub with: Reval,
}

/// Sidecar memory for one configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Memory {
    /// Configuration key.
    pub config: String,
    /// VmRSS after start and one request, KiB.
    pub idle_kib: u64,
    /// Highest VmRSS sampled under load, KiB.
    pub load_max_kib: u64,
    /// VmHWM at the end, KiB.
    pub hwm_kib: u64,
}

/// A flat CPU profile of one sidecar under load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Profile {
    /// What ran.
    pub name: String,
    /// Top symbols by self time: (percent, symbol).
    pub top: Vec<(f64, String)>,
    /// Self time grouped by concern: (category, percent).
    pub categories: Vec<(String, f64)>,
}

/// Everything one benchmark run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// Machine.
    pub machine: Machine,
    /// When (UTC, from `date -u`).
    pub when: String,
    /// Seconds per wrk run.
    pub duration_s: u64,
    /// wrk threads.
    pub threads: usize,
    /// All wrk runs.
    pub runs: Vec<Run>,
    /// Seed scenarios.
    pub scenarios: Vec<Scenario>,
    /// Sidecar memory.
    pub memory: Vec<Memory>,
    /// Profiles.
    pub profiles: Vec<Profile>,
}

impl Results {
    /// The run of `config` at `size` and `conns`.
    pub fn find(&self, config: &str, size: usize, conns: usize) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.config == config && r.size == size && r.conns == conns)
    }

    fn sizes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .runs
            .iter()
            .filter(|r| r.config == "app")
            .map(|r| r.size)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn conns(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.runs.iter().map(|r| r.conns).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# sametag benchmark results\n");
    let _ = writeln!(
        s,
        "Produced by `bench/run.sh` on {} — every figure below comes from this one run, \
         all configurations measured side by side on the same machine.\n",
        r.when
    );
    let _ = writeln!(
        s,
        "## Machine\n\n- CPUs (nproc): {}\n- CPU: {}\n- Kernel: {}",
        m.nproc, m.cpu, m.kernel
    );
    for (k, v) in &m.versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- Load average (1/5/15 min) at start: {}; at end: {}",
        m.loadavg.0, m.loadavg.1
    );
    let _ = writeln!(
        s,
        "\nLoad generator: wrk, {} threads, {} s per run after a 1 s warm-up, on the same {} CPUs as \
         the servers (so absolute numbers are low and every configuration pays the same tax; \
         only the ratios matter).\n",
        r.threads, r.duration_s, m.nproc
    );
    let _ = writeln!(
        s,
        "Configurations: (a) `app` the JSON app directly; (b) `nginx` nginx `proxy_pass` to the app \
         with a keep-alive upstream (worker_processes = nproc); (c) `validate-mem` / `validate-redis` \
         the sidecar in Validate mode (every request reaches the app, the body is hashed and tagged) \
         with the embedded store / with Redis; (d) `trust304-mem` / `trust304-redis` the sidecar \
         answering If-None-Match GETs in Trust mode (304 without the app); (e) `hello` a bare hyper \
         server (the ceiling for a hyper proxy here).\n"
    );
    goals(&mut s, r);
    table(&mut s, r);
    scenarios(&mut s, r);
    profiles(&mut s, r);
    let _ = writeln!(
        s,
        "\n## Plots\n\n![throughput](throughput.png)\n\n![latency](latency.png)\n\n![revalidation](revalidation.png)\n\n\
         Raw data: [results.json](results.json). Analysis and suggestions (written by hand for \
         the committed run): [ANALYSIS.md](ANALYSIS.md)."
    );
    s
}

fn goals(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Goals\n\n| goal | where | measured | target | |\n|---|---|---|---|---|"
    );
    for size in r.sizes() {
        for conns in r.conns() {
            let Some(b) = r.find("nginx", size, conns) else {
                continue;
            };
            for c in ["validate-mem", "validate-redis"] {
                let Some(cr) = r.find(c, size, conns) else {
                    continue;
                };
                let ratio = cr.wrk.rps / b.wrk.rps;
                let _ = writeln!(
                    s,
                    "| throughput (c)/(b) | {c}, {}, {conns} conns | {ratio:.2} | ≥ 1.0 | {} |",
                    size_name(size),
                    met(ratio >= 1.0)
                );
                if let (Some(cc), Some(bc)) = (cr.server_cpu_us_per_req, b.server_cpu_us_per_req) {
                    let _ = writeln!(
                        s,
                        "| (info) proxy CPU per request (c) vs (b) | {c}, {}, {conns} conns | {cc:.1} µs vs {bc:.1} µs ({:.2}×) | – | |",
                        size_name(size),
                        cc / bc
                    );
                }
                let _ = writeln!(
                    s,
                    "| p99 (c) vs (b) | {c}, {}, {conns} conns | {:.2} ms vs {:.2} ms ({:.2}×) | ≤ | {} |",
                    size_name(size),
                    cr.wrk.p99_ms,
                    b.wrk.p99_ms,
                    cr.wrk.p99_ms / b.wrk.p99_ms,
                    met(cr.wrk.p99_ms <= b.wrk.p99_ms)
                );
            }
        }
    }
    for conns in r.conns() {
        let Some(e) = r.find("hello", 0, conns) else {
            continue;
        };
        for d in ["trust304-mem", "trust304-redis"] {
            let Some(dr) = r.find(d, 0, conns) else {
                continue;
            };
            let ratio = dr.wrk.rps / e.wrk.rps;
            let _ = writeln!(
                s,
                "| Trust 304 (d)/(e) | {d}, {conns} conns | {ratio:.2} | ≥ 0.8 | {} |",
                met(ratio >= 0.8)
            );
        }
    }
    for mem in &r.memory {
        let _ = writeln!(
            s,
            "| sidecar RSS idle | {} | {:.1} MiB | ≤ 16 MiB | {} |",
            mem.config,
            mib(mem.idle_kib),
            met(mib(mem.idle_kib) <= 16.0)
        );
        let peak = mem.load_max_kib.max(mem.hwm_kib);
        let _ = writeln!(
            s,
            "| sidecar RSS under load (VmHWM) | {} | {:.1} MiB | ≤ 64 MiB | {} |",
            mem.config,
            mib(peak),
            met(mib(peak) <= 64.0)
        );
    }
    let rt: Vec<(&Run, f64)> = r
        .runs
        .iter()
        .filter_map(|x| x.redis_rt_per_req.map(|v| (x, v)))
        .collect();
    let validate: Vec<f64> = rt
        .iter()
        .filter(|(x, _)| x.config == "validate-redis")
        .map(|(_, v)| *v)
        .collect();
    if !validate.is_empty() {
        let avg = validate.iter().sum::<f64>() / validate.len() as f64;
        let _ = writeln!(
            s,
            "| Redis round trips / request | validate-redis, all runs (avg) | {avg:.4} | ≤ 1 | {} |",
            met(avg <= 1.0)
        );
    }
    let hot: Vec<f64> = rt
        .iter()
        .filter(|(x, _)| x.config == "trust304-redis")
        .map(|(_, v)| *v)
        .collect();
    if !hot.is_empty() {
        let max = hot.iter().cloned().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| Redis round trips / request, hot tags | trust304-redis (max over runs) | {max:.4} | 0 | {} |",
            met(max < 0.001)
        );
    }
    for sc in &r.scenarios {
        let saved = sc.without.wire_bytes.saturating_sub(sc.with.wire_bytes);
        let _ = writeln!(
            s,
            "| seed scenario 304 rate | {} | {:.1}% without → {:.1}% with | 100% with | {} |",
            sc.kind,
            100.0 * sc.without.rate(),
            100.0 * sc.with.rate(),
            met(sc.with.not_modified == sc.with.requests && sc.with.requests > 0)
        );
        let _ = writeln!(
            s,
            "| seed scenario bytes | {} | {} B without → {} B with ({:.1}% saved) | fewer | {} |",
            sc.kind,
            sc.without.wire_bytes,
            sc.with.wire_bytes,
            100.0 * saved as f64 / sc.without.wire_bytes.max(1) as f64,
            met(sc.with.wire_bytes < sc.without.wire_bytes)
        );
    }
    let _ = writeln!(s);
}

fn table(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## All runs\n\n| config | body | conns | req/s | p50 ms | p99 ms | server CPU µs/req | app CPU µs/req | non-2xx/3xx | socket errors | Redis RT/req | Trust-304 share | sidecar max RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for x in &r.runs {
        let opt =
            |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} |",
            x.config,
            if x.size == 0 {
                "–".to_owned()
            } else {
                size_name(x.size)
            },
            x.conns,
            x.wrk.rps,
            x.wrk.p50_ms,
            x.wrk.p99_ms,
            opt(x.server_cpu_us_per_req, 1),
            opt(x.app_cpu_us_per_req, 1),
            x.wrk.non_2xx_3xx,
            x.wrk.socket_errors,
            opt(x.redis_rt_per_req, 4),
            opt(x.trusted_share, 3),
            opt(x.sidecar_rss_max_kib.map(mib), 1),
        );
    }
    let _ = writeln!(s);
}

fn scenarios(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Seed scenario (a browser revalidating through round-robin HAProxy, 3 replicas)\n\n\
         | replicas | sametag | revalidations | 304 | 304 rate | bytes received | distinct ETags per resource | failed |\n|---|---|---|---|---|---|---|---|"
    );
    for sc in &r.scenarios {
        for (name, v) in [("without", &sc.without), ("with (Redis)", &sc.with)] {
            let _ = writeln!(
                s,
                "| {} | {name} | {} | {} | {:.1}% | {} | {} | {} |",
                sc.kind,
                v.requests,
                v.not_modified,
                100.0 * v.rate(),
                v.wire_bytes,
                v.max_tags_per_resource,
                v.failed
            );
        }
    }
    let _ = writeln!(s);
}

fn profiles(s: &mut String, r: &Results) {
    if r.profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Where the time goes (perf, flat self time of the sidecar process)\n"
    );
    for p in &r.profiles {
        let _ = writeln!(s, "### {}\n\n| category | self % |\n|---|---|", p.name);
        for (c, v) in &p.categories {
            let _ = writeln!(s, "| {c} | {v:.1} |");
        }
        let _ = writeln!(s, "\nTop symbols:\n\n| self % | symbol |\n|---|---|");
        for (v, sym) in p.top.iter().take(15) {
            let sym = sym.trim().replace('|', "\\|");
            let sym: String = sym.chars().take(110).collect();
            let _ = writeln!(s, "| {v:.2} | `{sym}` |");
        }
        let _ = writeln!(s);
    }
}
