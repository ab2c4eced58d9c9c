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

/// Latency at a fixed request rate (oha, coordinated omission corrected).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FixedRate {
    /// Configuration key (`app`, `nginx`, `validate-mem`, ...).
    pub config: String,
    /// Requests per second asked for.
    pub rate: u64,
    /// Connections.
    pub conns: usize,
    /// Requests answered.
    pub requests: u64,
    /// Answers with a status outside 2xx/3xx, plus failed requests.
    pub errors: u64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// The mixed workload against the Trust sidecar on Redis: revalidations of
/// a hot tag, GETs of keys never seen, and writes, at once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Mixed {
    /// What the workload sent, per 100 requests.
    pub mix: String,
    /// Requests the sidecar counted.
    pub requests: f64,
    /// Of those, answered 304 from the store.
    pub trusted: f64,
    /// Redis round trips in the same window.
    pub redis_round_trips: f64,
    /// wrk's figures.
    pub wrk: WrkResult,
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
    /// Latency at a fixed rate, per configuration.
    #[serde(default)]
    pub fixed_rate: Vec<FixedRate>,
    /// Redis round trips on the mixed workload.
    #[serde(default)]
    pub mixed: Option<Mixed>,
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
    fixed_rate_table(&mut s, r);
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

/// A run counts only if every request got the answer the configuration is
/// for: no socket errors, no status outside 2xx/3xx, and (Trust) 304s
/// from the store for nearly all of them.
fn clean(run: &Run) -> bool {
    run.wrk.requests > 0
        && run.wrk.socket_errors == 0
        && run.wrk.non_2xx_3xx == 0
        && (!run.config.starts_with("trust304") || run.trusted_share.is_some_and(|t| t >= 0.99))
}

/// `met` only when the measurement is valid as well as good enough.
fn verdict(ok: bool, valid: bool) -> &'static str {
    match (valid, ok) {
        (false, _) => "NOT met (invalid run: errors or wrong answers)",
        (true, ok) => met(ok),
    }
}

/// Memory goals of the sidecar (MiB).
const IDLE_RSS_GOAL_MIB: f64 = 8.0;
const LOAD_RSS_GOAL_MIB: f64 = 32.0;
/// Redis round trips per Trust 304 under load.
const TRUST_RT_GOAL: f64 = 0.1;

fn goals(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## Goals\n\nA row says met only when its runs were clean (no socket errors, no status \
         outside 2xx/3xx, and for Trust runs ≥ 99% of answers 304 from the store).\n\n\
         | goal | where | measured | target | |\n|---|---|---|---|---|"
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
                let valid = clean(cr) && clean(b);
                let ratio = cr.wrk.rps / b.wrk.rps;
                let at = format!("{c}, {}, {conns} conns", size_name(size));
                let _ = writeln!(
                    s,
                    "| throughput (c)/(b) | {at} | {ratio:.2} | ≥ 1.0 | {} |",
                    verdict(ratio >= 1.0, valid)
                );
                let _ = writeln!(
                    s,
                    "| p99 (c) vs (b) | {at} | {:.2} ms vs {:.2} ms ({:.2}×) | ≤ 1.0× | {} |",
                    cr.wrk.p99_ms,
                    b.wrk.p99_ms,
                    cr.wrk.p99_ms / b.wrk.p99_ms,
                    verdict(cr.wrk.p99_ms <= b.wrk.p99_ms, valid)
                );
                match (cr.server_cpu_us_per_req, b.server_cpu_us_per_req) {
                    (Some(cc), Some(bc)) => {
                        let _ = writeln!(
                            s,
                            "| proxy CPU per request (c) vs (b) | {at} | {cc:.1} µs vs {bc:.1} µs ({:.2}×) | ≤ 1.0× | {} |",
                            cc / bc,
                            verdict(cc <= bc, valid)
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            s,
                            "| proxy CPU per request (c) vs (b) | {at} | not measured | ≤ 1.0× | NOT met (no figure) |"
                        );
                    }
                }
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
                verdict(ratio >= 0.8, clean(dr) && clean(e))
            );
            if d.ends_with("redis") {
                // Round trips per Trust 304: the barrier before trusting a
                // cached validation, shared by concurrent hits.
                let per_hit = match (dr.redis_rt_per_req, dr.trusted_share) {
                    (Some(rt), Some(t)) if t > 0.0 => Some(rt / t),
                    _ => None,
                };
                let _ = match per_hit {
                    Some(v) => writeln!(
                        s,
                        "| Redis round trips per Trust 304 | {d}, {conns} conns | {v:.4} | ≤ {TRUST_RT_GOAL} | {} |",
                        verdict(v <= TRUST_RT_GOAL, clean(dr))
                    ),
                    None => writeln!(
                        s,
                        "| Redis round trips per Trust 304 | {d}, {conns} conns | not measured | ≤ {TRUST_RT_GOAL} | NOT met (no figure) |"
                    ),
                };
            }
        }
    }
    if let Some(m) = &r.mixed {
        let valid = m.wrk.socket_errors == 0 && m.wrk.non_2xx_3xx == 0 && m.requests > 0.0;
        let avg = m.redis_round_trips / m.requests.max(1.0);
        let _ = writeln!(
            s,
            "| Redis round trips per request, mixed workload | trust304-redis: {} ({:.0}% answered 304 from the store) | {avg:.3} | ≤ 1 | {} |",
            m.mix,
            100.0 * m.trusted / m.requests.max(1.0),
            verdict(avg <= 1.0, valid)
        );
    } else {
        let _ = writeln!(
            s,
            "| Redis round trips per request, mixed workload | – | not measured | ≤ 1 | NOT met (no figure) |"
        );
    }
    fixed_rate_goals(s, r);
    for mem in &r.memory {
        let _ = writeln!(
            s,
            "| sidecar RSS idle | {} | {:.1} MiB | ≤ {IDLE_RSS_GOAL_MIB} MiB | {} |",
            mem.config,
            mib(mem.idle_kib),
            met(mem.idle_kib > 0 && mib(mem.idle_kib) <= IDLE_RSS_GOAL_MIB)
        );
        let peak = mem.load_max_kib.max(mem.hwm_kib);
        let _ = writeln!(
            s,
            "| sidecar RSS under load (VmHWM) | {} | {:.1} MiB | ≤ {LOAD_RSS_GOAL_MIB} MiB | {} |",
            mem.config,
            mib(peak),
            met(peak > 0 && mib(peak) <= LOAD_RSS_GOAL_MIB)
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
            verdict(
                sc.with.not_modified == sc.with.requests && sc.with.requests > 0,
                sc.with.failed == 0
            )
        );
        let _ = writeln!(
            s,
            "| seed scenario bytes | {} | {} B without → {} B with ({:.1}% saved) | fewer | {} |",
            sc.kind,
            sc.without.wire_bytes,
            sc.with.wire_bytes,
            100.0 * saved as f64 / sc.without.wire_bytes.max(1) as f64,
            verdict(
                sc.with.wire_bytes < sc.without.wire_bytes,
                sc.with.failed == 0
            )
        );
    }
    let _ = writeln!(s);
}

/// Latency a proxy adds over the app alone at the same fixed rate, as a
/// sidecar benchmark measures it: the sidecar's against nginx's.
fn fixed_rate_goals(s: &mut String, r: &Results) {
    let find = |c: &str| r.fixed_rate.iter().find(|f| f.config == c);
    let (Some(app), Some(nginx)) = (find("app"), find("nginx")) else {
        if !r.fixed_rate.is_empty() {
            let _ = writeln!(
                s,
                "| latency added at a fixed rate | – | app or nginx run missing | ≤ nginx's | NOT met (no figure) |"
            );
        }
        return;
    };
    let added = |f: &FixedRate| {
        (
            f.p50_ms - app.p50_ms,
            f.p99_ms - app.p99_ms,
            f.p999_ms - app.p999_ms,
        )
    };
    let (n50, n99, n999) = added(nginx);
    for c in ["validate-mem", "validate-redis"] {
        let Some(f) = find(c) else { continue };
        let (a50, a99, a999) = added(f);
        let valid = f.errors == 0 && nginx.errors == 0 && app.errors == 0 && f.requests > 0;
        let _ = writeln!(
            s,
            "| latency added at {} req/s (p50 / p99 / p99.9) | {c} vs nginx | {a50:.3} / {a99:.3} / {a999:.3} ms vs {n50:.3} / {n99:.3} / {n999:.3} ms | p99 ≤ nginx's | {} |",
            f.rate,
            verdict(a99 <= n99, valid)
        );
    }
}

fn fixed_rate_table(s: &mut String, r: &Results) {
    if r.fixed_rate.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Latency at a fixed rate\n\noha at a fixed request rate (half of nginx's maximum \
         measured above), with coordinated-omission correction: the latency a request would \
         have seen had it been sent on schedule. Added latency = the configuration's \
         percentile minus the app's own.\n\n\
         | config | rate req/s | conns | requests | errors | p50 ms | p99 ms | p99.9 ms |\n|---|---|---|---|---|---|---|---|"
    );
    for f in &r.fixed_rate {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            f.config, f.rate, f.conns, f.requests, f.errors, f.p50_ms, f.p99_ms, f.p999_ms
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
        "## Where the time goes (perf, flat self time of the server's processes, 1 KiB at the most connections)\n\n\
         CPU per request for each configuration is in the table above (server CPU µs/req). \
         \"sametag code\" counts symbols of sametag's own crates; generic hyper/tokio code \
         instantiated for sametag's types and inlined into them counts where perf puts it.\n"
    );
    for p in &r.profiles {
        // `+ 0.0`: an empty float sum is -0.0, printed "-0.0".
        let own: f64 = p
            .categories
            .iter()
            .filter(|(c, _)| c == "sametag code")
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0;
        let _ = writeln!(
            s,
            "### {}\n\nsametag's own code: {own:.1}% of self time.\n\n| category | self % |\n|---|---|",
            p.name
        );
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
