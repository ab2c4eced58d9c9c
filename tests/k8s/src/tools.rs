//! `helm` and `kubectl` from the harness bin dir, run against one kubeconfig
//! with their caches and config in a scratch directory (never `$HOME`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result, bins, repo_root};

/// The CLI tools, bound to one cluster.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The helm binary.
    pub helm: PathBuf,
    /// The kubectl binary.
    pub kubectl: PathBuf,
    /// Kubeconfig both use.
    pub kubeconfig: PathBuf,
    /// Scratch dir for helm's cache/config/data.
    pub home: PathBuf,
}

impl Tools {
    /// Tools for `kubeconfig`, keeping their state under `scratch`.
    pub fn new(kubeconfig: &Path, scratch: &Path) -> Result<Self> {
        let home = scratch.join("tool-home");
        std::fs::create_dir_all(&home).map_err(|source| Error::Io {
            what: "create tool home".into(),
            source,
        })?;
        Ok(Self {
            helm: bins::tool("helm")?,
            kubectl: bins::tool("kubectl")?,
            kubeconfig: kubeconfig.to_path_buf(),
            home,
        })
    }

    /// The chart's directory in this repository.
    pub fn chart_dir() -> PathBuf {
        repo_root().join("charts/sametag")
    }

    /// Run helm; fail with its output when it exits non-zero.
    pub async fn helm<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run(&self.helm.clone(), args).await
    }

    /// Run kubectl; fail with its output when it exits non-zero.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run(&self.kubectl.clone(), args).await
    }

    async fn run<I, S>(&self, bin: &Path, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let cmdline = format!(
            "{} {}",
            bin.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .map_err(|_| Error::Timeout {
                what: cmdline.clone(),
                secs: 180,
                detail: String::new(),
            })?
            .map_err(|source| Error::Io {
                what: cmdline.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(Error::Command {
                cmd: cmdline,
                status: out.status.to_string(),
                output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            })
        }
    }
}
