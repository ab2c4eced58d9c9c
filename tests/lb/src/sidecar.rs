//! The real `sametag-sidecar` binary: located (or built) once per process and
//! started with the flags of DESIGN.md ("Interfaces").
//!
//! Binary lookup, in order: `$SAMETAG_SIDECAR_BIN`; else
//! `<target>/release/sametag-sidecar` (or `debug/`) when it is newer than
//! every file of the sidecar crate and the workspace manifests; else
//! `cargo build -p sametag-sidecar --bin sametag-sidecar --release`
//! (`SAMETAG_SIDECAR_PROFILE=debug` builds the debug profile instead).
//! `<target>` is `$CARGO_TARGET_DIR` or the workspace's `target/`.
//!
//! Build the binary before `cargo test` (tests/run does): a nested cargo
//! waits for the outer one's lock on the target directory, so the build from
//! inside a test is a fallback, bounded by a timeout with a clear message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::client::Http;
use crate::net::{free_addr, wait_listening};
use crate::proc::{Proc, Spec};
use crate::{HarnessError, Result};

/// The workspace root (this crate lives in `tests/lb`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of the sidecar binary, building it first if needed (once per process).
pub fn sidecar_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

fn locate_or_build() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SAMETAG_SIDECAR_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::Build(format!(
                "SAMETAG_SIDECAR_BIN={} is not a file",
                p.display()
            )))
        };
    }
    let profile = std::env::var("SAMETAG_SIDECAR_PROFILE").unwrap_or_else(|_| "release".into());
    let dir = if profile == "debug" {
        "debug"
    } else {
        profile.as_str()
    };
    let bin = target_dir().join(dir).join("sametag-sidecar");
    if is_fresh(&bin) {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "sametag-sidecar",
        "--bin",
        "sametag-sidecar",
    ]);
    if profile == "release" {
        cmd.arg("--release");
    } else if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let out = output_within(&mut cmd, Duration::from_secs(900))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(HarnessError::Build(
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        ));
    }
    let dir = if profile == "debug" {
        "debug"
    } else {
        profile.as_str()
    };
    let bin = target_dir().join(dir).join("sametag-sidecar");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(HarnessError::Build(format!(
            "{} missing after build",
            bin.display()
        )))
    }
}

/// Run `cmd`, killing it after `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<std::process::Output> {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| HarnessError::io("run cargo build -p sametag-sidecar", e))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| HarnessError::io("cargo build -p sametag-sidecar", e)),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(HarnessError::Build(format!(
                "`cargo build -p sametag-sidecar --release` did not finish within {limit:?}; a cargo \
                 started from inside `cargo test` can wait forever on the outer cargo's target-dir \
                 lock: build it first (`cargo build -p sametag-sidecar --release`) or set \
                 SAMETAG_SIDECAR_BIN"
            )))
        }
    }
}

/// True when `bin` exists and is newer than every source of the sidecar
/// (its crate directory, the workspace manifest and lock file).
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = workspace_root();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for f in [root.join("Cargo.toml"), root.join("Cargo.lock")] {
        if let Ok(t) = f.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    let mut stack = vec![root.join("sidecar")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            // Fuzz targets and their build output are not part of the binary.
            if name == "target" || name == "fuzz" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => {
                    if let Ok(t) = m.modified() {
                        newest = newest.max(t);
                    }
                }
                Err(_) => {}
            }
        }
    }
    built >= newest
}

/// A sibling binary of this crate (`sametag-lb-app`, `sametag-hello`): next to
/// the running executable, or one level up from `deps/` for test binaries.
pub fn own_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| HarnessError::io("current_exe", e))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::Build(format!(
            "{} not found (build it with `cargo build -p sametag-lb-e2e --bins`)",
            p.display()
        )))
    }
}

/// How to start one sidecar.
#[derive(Clone, Debug, Default)]
pub struct SidecarOpts {
    /// Redis URL; `None`: the embedded store.
    pub redis: Option<String>,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// Key namespace in Redis.
    pub prefix: String,
    /// More flags, appended as given (e.g. `--upstream-timeout 1s`).
    pub extra_args: Vec<String>,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// Where clients (the balancer) connect.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// The app it fronts.
    pub upstream: SocketAddr,
    /// The process.
    pub proc: Proc,
}

impl Sidecar {
    /// Start a sidecar named `name` in front of `upstream`.
    pub async fn start(
        dir: &Path,
        name: &str,
        upstream: SocketAddr,
        opts: &SidecarOpts,
    ) -> Result<Self> {
        let bin = sidecar_bin()?;
        let listen = free_addr()?;
        let admin = free_addr()?;
        let mut args = vec![
            "--listen".to_owned(),
            listen.to_string(),
            "--upstream".into(),
            upstream.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--store-prefix".into(),
            opts.prefix.clone(),
        ];
        if let Some(r) = &opts.redis {
            args.extend(["--redis".into(), r.clone()]);
        }
        if let Some(p) = &opts.policy {
            args.extend(["--policy".into(), p.to_string_lossy().into_owned()]);
        }
        args.extend(opts.extra_args.iter().cloned());
        let log_level = std::env::var("SAMETAG_LB_SIDECAR_LOG").unwrap_or_else(|_| "warn".into());
        let spec = Spec {
            name: format!("sidecar {name}"),
            program: bin,
            args,
            env: vec![("RUST_LOG".into(), log_level)],
            log: dir.join(format!("sidecar-{name}.log")),
        };
        let mut proc = Proc::start(spec)?;
        wait_listening(listen, &mut proc, Duration::from_secs(15)).await?;
        wait_listening(admin, &mut proc, Duration::from_secs(15)).await?;
        Ok(Sidecar {
            listen,
            admin,
            upstream,
            proc,
        })
    }

    /// Start again with the same flags (after a kill or SIGTERM).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart()?;
        wait_listening(self.listen, &mut self.proc, Duration::from_secs(15)).await?;
        wait_listening(self.admin, &mut self.proc, Duration::from_secs(15)).await
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self, http: &Http) -> Result<String> {
        let r = http
            .get(&format!("http://{}/metrics", self.admin), &[])
            .await?;
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }
}

/// Sum of every sample in Prometheus text whose metric name satisfies `pick`
/// (labels ignored).
pub fn metric_sum(text: &str, pick: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            let name = &l[..name_end];
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            pick(name).then_some(value)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metric_samples_across_labels() {
        let text = "# HELP x\nsametag_store_ops_total{op=\"lookup\"} 3\n\
                    sametag_store_ops_total{op=\"record\"} 2\nother_total 9\n";
        assert_eq!(metric_sum(text, |n| n == "sametag_store_ops_total"), 5.0);
        assert_eq!(metric_sum(text, |n| n.contains("nothing")), 0.0);
    }
}
