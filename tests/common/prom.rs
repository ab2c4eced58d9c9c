//! Metric checks shared by the sidecar's suite and the Kubernetes tier
//! (included with `#[path]`; std only): the metric names the README's
//! tables document, the names a real scrape exposes, and Debian's
//! `promtool` (package `prometheus`, installed by `tests/setup-packages.sh`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's README.
pub fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .expect("workspace root")
        .join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names (first column) of the table under the README heading
/// `heading` (e.g. `### Sidecar metrics`), up to the next heading.
pub fn readme_metrics(readme: &str, heading: &str) -> Vec<String> {
    let mut inside = false;
    let mut names = Vec::new();
    for line in readme.lines() {
        if line.starts_with('#') {
            inside = line.trim() == heading;
            continue;
        }
        if inside
            && let Some(rest) = line.strip_prefix("| `")
            && let Some(name) = rest.split('`').next()
        {
            names.push(name.to_owned());
        }
    }
    assert!(
        !names.is_empty(),
        "no metric table under {heading:?} in the README"
    );
    names
}

/// Every name a scrape can be queried by: families by their name (an
/// OpenMetrics counter family `x` as `x_total`), even with no series yet,
/// and every sample name.
pub fn exposed_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                });
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// README names missing from `scrape`.
pub fn missing(documented: &[String], scrape: &str) -> Vec<String> {
    let exposed = exposed_names(scrape);
    documented
        .iter()
        .filter(|n| !exposed.contains(*n))
        .cloned()
        .collect()
}

/// `scrape` (OpenMetrics text) in the Prometheus text format 0.0.4 that
/// `promtool check metrics` parses: the one difference that matters is
/// that an OpenMetrics counter family `x` has samples `x_total`, which the
/// older format names `x_total` in `# HELP`/`# TYPE` too; `# UNIT` and
/// `# EOF` do not exist there. Samples are left as they are.
pub fn to_prometheus_text(scrape: &str) -> String {
    let counters: BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            let name = parts.next()?;
            (parts.next()? == "counter").then_some(name)
        })
        .collect();
    let mut out = String::new();
    for line in scrape.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Debian's promtool; the test fails with how to get it when it is missing.
pub fn promtool_path() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("promtool not found: install Debian's `prometheus` package (bash tests/setup-packages.sh)")
    })
}

/// Run `promtool args...` with `stdin`; Ok(output) when it exits 0.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(promtool_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run promtool: {e}"))?;
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    drop(input);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "promtool {} failed ({}):\n{text}",
            args.join(" "),
            out.status
        ))
    }
}

/// `promtool check metrics` on a real scrape: lint clean (names, units,
/// `_total` on counters, help texts).
pub fn check_metrics(scrape: &str) -> Result<(), String> {
    promtool(&["check", "metrics"], Some(&to_prometheus_text(scrape))).map(|_| ())
}

/// The `sametag_*` metric names a PromQL expression reads; a histogram's
/// `_bucket`/`_sum`/`_count` series by the histogram's name when
/// `histograms` has it.
pub fn promql_metric_names(expr: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            // Skip string literals: label values are not metric names.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("sametag_") {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| histograms.contains(*b))
                    .unwrap_or(word);
                names.insert(base.to_owned());
            }
            continue;
        }
        i += 1;
    }
    names
}
