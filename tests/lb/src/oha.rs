//! Running `oha` at a fixed request rate and reading its JSON report: the
//! latency a request sees when requests are sent on a schedule, corrected
//! for coordinated omission (a stalled server cannot slow the sender down
//! and hide its own stall, as it can with wrk's closed loop).

use std::time::Duration;

use serde_json::Value;

use crate::{HarnessError, Result, tools};

/// One fixed-rate run's figures.
#[derive(Clone, Debug, Default)]
pub struct OhaResult {
    /// Requests answered.
    pub requests: u64,
    /// Answers outside 2xx/3xx plus requests that failed.
    pub errors: u64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// How to run oha.
#[derive(Clone, Debug)]
pub struct OhaRun<'a> {
    /// Target URL.
    pub url: &'a str,
    /// Requests per second.
    pub rate: u64,
    /// Connections.
    pub conns: usize,
    /// Duration.
    pub duration: Duration,
}

/// Where `cargo install oha` puts it, when not on `PATH`.
fn oha() -> Result<std::path::PathBuf> {
    tools::require("oha").or_else(|e| {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
        home.map(|h| h.join("bin/oha"))
            .filter(|p| p.is_file())
            .ok_or(e)
    })
}

/// Run oha once and parse its report.
pub async fn run(r: &OhaRun<'_>) -> Result<OhaResult> {
    let out = tokio::process::Command::new(oha()?)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["-z", &format!("{}s", r.duration.as_secs().max(1))])
        .args(["-c", &r.conns.to_string()])
        .args(["-q", &r.rate.to_string()])
        .arg(r.url)
        .output()
        .await
        .map_err(|e| HarnessError::io("oha", e))?;
    let parse_error = |detail: String| HarnessError::Parse {
        tool: "oha".into(),
        detail,
    };
    if !out.status.success() {
        return Err(parse_error(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let report: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| parse_error(format!("not JSON ({e})")))?;
    parse(&report).ok_or_else(|| parse_error("no latency percentiles in the report".into()))
}

/// The figures of oha's JSON report (`latencyPercentiles` in seconds,
/// `statusCodeDistribution`, `errorDistribution`).
fn parse(report: &Value) -> Option<OhaResult> {
    let pct = &report["latencyPercentiles"];
    let ms = |k: &str| pct[k].as_f64().map(|s| s * 1000.0);
    let mut requests = 0;
    let mut errors = 0;
    for (code, n) in report["statusCodeDistribution"].as_object()? {
        let n = n.as_u64().unwrap_or(0);
        requests += n;
        if !code.starts_with('2') && !code.starts_with('3') {
            errors += n;
        }
    }
    if let Some(failed) = report["errorDistribution"].as_object() {
        // Requests still in flight when the run's time is up are cut off
        // by oha itself, not failed by the server.
        errors += failed
            .iter()
            .filter(|(why, _)| !why.contains("deadline"))
            .filter_map(|(_, n)| n.as_u64())
            .sum::<u64>();
    }
    Some(OhaResult {
        requests,
        errors,
        p50_ms: ms("p50")?,
        p99_ms: ms("p99")?,
        p999_ms: ms("p99.9")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_percentiles_statuses_and_errors() {
        let report = serde_json::json!({
            "latencyPercentiles": {"p50": 0.0005, "p99": 0.002, "p99.9": 0.004},
            "statusCodeDistribution": {"200": 990, "304": 5, "503": 5},
            "errorDistribution": {"connection closed": 2, "aborted due to deadline": 16}
        });
        let r = parse(&report).unwrap();
        assert_eq!((r.requests, r.errors), (1000, 7));
        assert!((r.p50_ms - 0.5).abs() < 1e-9 && (r.p999_ms - 4.0).abs() < 1e-9);
        assert!(parse(&serde_json::json!({"statusCodeDistribution": {}})).is_none());
    }
}
