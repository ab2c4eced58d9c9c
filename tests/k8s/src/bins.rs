//! Where the binaries come from: the harness tools from
//! `$SAMETAG_HARNESS_BIN_DIR` or the newest complete `tests/.cache/bin-*`
//! directory, the operator from `$SAMETAG_OPERATOR_BIN` or cargo's target dir.
//! A missing tool is an error that says how to build it, never a skip.

use std::path::{Path, PathBuf};

use crate::{Error, Result, repo_root};

/// The tools `tests/harness/build.sh` builds.
pub const HARNESS_TOOLS: [&str; 3] = ["controlplane", "kubectl", "helm"];

/// The directory holding `controlplane`, `kubectl` and `helm`.
pub fn harness_bin_dir() -> Result<PathBuf> {
    find_bin_dir(
        std::env::var_os("SAMETAG_HARNESS_BIN_DIR"),
        &repo_root().join("tests/.cache"),
    )
}

/// [`harness_bin_dir`] with its inputs explicit: the env var's value and the
/// cache root.
fn find_bin_dir(from_env: Option<std::ffi::OsString>, cache: &Path) -> Result<PathBuf> {
    if let Some(dir) = from_env {
        let dir = PathBuf::from(dir);
        return match missing_tools(&dir) {
            None => Ok(dir),
            Some(m) => Err(Error::MissingBinary(format!(
                "SAMETAG_HARNESS_BIN_DIR={} lacks {m}; run `bash tests/harness/build.sh` and export \
                 SAMETAG_HARNESS_BIN_DIR=<the directory it prints last>",
                dir.display()
            ))),
        };
    }
    // The directory build.sh uses for the pinned versions.
    if let Some(dir) = pinned_dir(cache)
        && missing_tools(&dir).is_none()
    {
        return Ok(dir);
    }
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bin-"))
        .filter(|e| missing_tools(&e.path()).is_none())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p).ok_or_else(|| {
        Error::MissingBinary(format!(
            "the Kubernetes e2e tests need a real kube-apiserver, etcd, kubectl and helm: run \
             `bash tests/harness/build.sh` (a cold build takes 10-25 minutes, cached afterwards) \
             and export SAMETAG_HARNESS_BIN_DIR=<the directory it prints last>; nothing found in {}",
            cache.display()
        ))
    })
}

/// `tests/.cache/bin-k8s-<K8S_VERSION>-helm-<HELM_VERSION>` from versions.env.
fn pinned_dir(cache: &Path) -> Option<PathBuf> {
    let env = std::fs::read_to_string(repo_root().join("tests/harness/versions.env")).ok()?;
    let get = |key: &str| {
        env.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
    };
    Some(cache.join(format!(
        "bin-k8s-{}-helm-{}",
        get("K8S_VERSION")?,
        get("HELM_VERSION")?
    )))
}

fn missing_tools(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = HARNESS_TOOLS
        .iter()
        .copied()
        .filter(|t| !dir.join(t).is_file())
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// One harness tool by name.
pub fn tool(name: &str) -> Result<PathBuf> {
    Ok(harness_bin_dir()?.join(name))
}

/// The `sametag-operator` binary: `$SAMETAG_OPERATOR_BIN`, else
/// `<target>/debug/sametag-operator`, built with cargo when missing.
pub fn operator_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SAMETAG_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug/sametag-operator");
    // Always ask cargo: it is a no-op when the binary is current, and a stale
    // operator would make these tests test old code.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "sametag-operator",
            "--bin",
            "sametag-operator",
        ])
        .current_dir(repo_root())
        .output()
        .map_err(|source| Error::Io {
            what: "run cargo build -p sametag-operator".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: "cargo build -p sametag-operator".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::MissingBinary(format!(
            "{} not found after cargo build",
            bin.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_fail_with_the_build_command() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err =
            find_bin_dir(Some(empty.path().into()), empty.path()).expect_err("empty dir must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("tests/harness/build.sh") && msg.contains("controlplane, kubectl, helm"),
            "{msg}"
        );

        let err =
            find_bin_dir(None, &empty.path().join("no-cache")).expect_err("no cache must fail");
        assert!(err.to_string().contains("tests/harness/build.sh"), "{err}");
    }

    #[test]
    fn a_complete_dir_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin-k8s-vX-helm-vY");
        std::fs::create_dir(&bin).expect("mkdir");
        for t in HARNESS_TOOLS {
            std::fs::write(bin.join(t), b"").expect("touch");
        }
        assert_eq!(
            find_bin_dir(Some(bin.clone().into()), dir.path()).expect("env dir"),
            bin
        );
        assert_eq!(find_bin_dir(None, dir.path()).expect("scanned"), bin);
    }
}
