//! Running Debian `wrk` and reading its report (`--latency` output).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{HarnessError, Result, tools};

/// One wrk run's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Responses with a status outside 2xx/3xx.
    pub non_2xx_3xx: u64,
    /// Socket errors (connect, read, write, timeout).
    pub socket_errors: u64,
}

/// How to run wrk.
#[derive(Clone, Debug)]
pub struct WrkRun<'a> {
    /// Target URL.
    pub url: &'a str,
    /// Open connections.
    pub conns: usize,
    /// wrk threads.
    pub threads: usize,
    /// Duration.
    pub duration: Duration,
    /// Optional Lua script (e.g. one that sets If-None-Match).
    pub script: Option<&'a Path>,
}

/// Run wrk once and parse its report.
pub async fn run(r: &WrkRun<'_>) -> Result<WrkResult> {
    let bin = tools::require("wrk")?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-t")
        .arg(r.threads.min(r.conns).to_string())
        .arg("-c")
        .arg(r.conns.to_string())
        .arg("-d")
        .arg(format!("{}s", r.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency");
    if let Some(s) = r.script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(r.url);
    let out = cmd
        .output()
        .await
        .map_err(|e| HarnessError::io("run wrk", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(HarnessError::Parse {
            tool: "wrk".into(),
            detail: format!(
                "exit {:?}: {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    parse(&text)
}

/// Parse wrk's `--latency` report.
pub fn parse(text: &str) -> Result<WrkResult> {
    let missing = |what: &str| HarnessError::Parse {
        tool: "wrk".into(),
        detail: format!("no {what} in:\n{text}"),
    };
    let mut r = WrkResult::default();
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in text.lines().map(str::trim) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = duration_ms(v),
            (Some("99%"), Some(v)) => p99 = duration_ms(v),
            (Some(n), Some("requests")) => r.requests = n.parse().unwrap_or(0),
            (Some("Non-2xx"), _) => {
                r.non_2xx_3xx = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }
            (Some("Socket"), Some("errors:")) => {
                r.socket_errors = line
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            }
            _ => {}
        }
    }
    r.rps = rps.ok_or_else(|| missing("Requests/sec"))?;
    r.p50_ms = p50.ok_or_else(|| missing("50% latency"))?;
    r.p99_ms = p99.ok_or_else(|| missing("99% latency"))?;
    Ok(r)
}

/// `512.00us`, `1.20ms`, `2.00s`, `1.00m` in milliseconds.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://127.0.0.1:1/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   250.00us  100.00us   5.00ms   90.00%
    Req/Sec    30.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  210.00us
     75%  300.00us
     90%  400.00us
     99%    1.50ms
  300000 requests in 5.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  60000.50
Transfer/sec:      8.00MB
";

    #[test]
    fn parses_a_report() {
        let r = parse(SAMPLE).expect("parse");
        assert_eq!(r.rps, 60000.5);
        assert!((r.p50_ms - 0.21).abs() < 1e-9);
        assert!((r.p99_ms - 1.5).abs() < 1e-9);
        assert_eq!(r.requests, 300_000);
        assert_eq!(r.socket_errors, 3);
        assert_eq!(r.non_2xx_3xx, 7);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("unable to connect").is_err());
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("x"), None);
    }
}
