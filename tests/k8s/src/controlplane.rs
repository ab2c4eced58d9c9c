//! A real control plane (etcd, kube-apiserver, kube-controller-manager) in a
//! child process: the harness's `controlplane` binary. Stopped with SIGTERM
//! on drop; if the test process dies first, the child sees its stdin close
//! and stops itself.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{Error, Result, bins, tail};

/// What the harness writes to its ready file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadyInfo {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Admin kubeconfig (a token user in system:masters).
    pub kubeconfig: PathBuf,
    /// The CA that signed the apiserver's serving certificate.
    pub ca_file: PathBuf,
}

/// A running control plane. Dropping it stops it.
pub struct ControlPlane {
    child: Child,
    // Held open so the child can detect our death (EOF on its stdin).
    _stdin: Option<ChildStdin>,
    /// Ready-file contents.
    pub info: ReadyInfo,
    /// Scratch directory of this run: logs, kubeconfigs, helm state.
    pub dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Start the control plane and wait (up to 3 minutes) until the apiserver
    /// serves and the controller-manager runs.
    pub fn start() -> Result<Self> {
        let bin = bins::tool("controlplane")?;
        let dir = tempfile::Builder::new()
            .prefix("sametag-k8s-e2e-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "create a temp dir".into(),
                source,
            })?;
        let log_path = dir.path().join("controlplane.log");
        let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
            what: "create the control plane log".into(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            what: "dup the log".into(),
            source,
        })?;
        let ready = dir.path().join("ready.json");
        let mut child = Command::new(&bin)
            .arg("--kubeconfig")
            .arg(dir.path().join("admin.kubeconfig"))
            .arg("--ready-file")
            .arg(&ready)
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Io {
                what: format!("start {}", bin.display()),
                source,
            })?;
        let stdin = child.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(info) = serde_json::from_str::<ReadyInfo>(&text)
            {
                eprintln!(
                    "control plane ready at {} (log: {})",
                    info.server,
                    log_path.display()
                );
                return Ok(Self {
                    child,
                    _stdin: stdin,
                    info,
                    dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Other(format!(
                    "the control plane exited ({status}) before it was ready; log tail:\n{}",
                    tail(&log_path, 40)
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(Error::Timeout {
                    what: "the control plane".into(),
                    secs: 180,
                    detail: format!("; log tail:\n{}", tail(&log_path, 40)),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.info.kubeconfig
    }

    /// The control plane's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("controlplane.log")
    }

    /// An admin client (system:masters).
    pub async fn admin_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(self.kubeconfig()).await
    }
}

/// A client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| Error::Other(format!("read {}: {e}", path.display())))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Other(format!("kubeconfig {}: {e}", path.display())))?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Write a kubeconfig for `server` that authenticates with a bearer token
/// (e.g. a ServiceAccount token from the TokenRequest API).
pub fn write_token_kubeconfig(
    path: &Path,
    info: &ReadyInfo,
    token: &str,
    namespace: &str,
) -> Result<()> {
    let ca = std::fs::read(&info.ca_file).map_err(|source| Error::Io {
        what: format!("read {}", info.ca_file.display()),
        source,
    })?;
    let ca_b64 = base64_encode(&ca);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca_b64}\nusers:\n- name: sa\n  user:\n    token: {token}\n\
         contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: sa\n    namespace: {namespace}\n\
         current-context: e2e\n",
        server = info.server
    );
    std::fs::write(path, text).map_err(|source| Error::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // SIGTERM: the apiserver drains, etcd closes, the data dir is removed.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (kubeconfig `*-data` fields), without another dependency.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64_encode;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
        }
    }
}
