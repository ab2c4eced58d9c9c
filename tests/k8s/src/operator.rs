//! `sametag-operator run` as a local process, the way the tests run it: the
//! webhook on a loopback port reached through `clientConfig.url`, and the
//! Kubernetes identity of the chart's ServiceAccount (a TokenRequest token),
//! so every call it makes is checked against the chart's RBAC.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::controlplane::{ReadyInfo, write_token_kubeconfig};
use crate::{Error, Result, bins, free_port, tail, wait};

/// How to run the operator; ports are fixed at creation so a restarted
/// operator serves at the URL the webhook configuration already names.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The operator binary.
    pub bin: PathBuf,
    /// Kubeconfig with the ServiceAccount's token.
    pub kubeconfig: PathBuf,
    /// Namespace the chart was installed in.
    pub namespace: String,
    /// The chart's full name (MutatingWebhookConfiguration name).
    pub fullname: String,
    /// HTTPS webhook port on 127.0.0.1.
    pub webhook_port: u16,
    /// Plain-HTTP metrics/health port on 127.0.0.1.
    pub metrics_port: u16,
    /// Where its log goes (appended across restarts).
    pub log: PathBuf,
    /// Its identity in the leader Lease.
    pub identity: String,
    /// Flags appended to [`OperatorConfig::args`] (a scenario's overrides).
    pub extra_args: Vec<String>,
}

impl OperatorConfig {
    /// Pick free ports; the kubeconfig is made by [`sa_kubeconfig`].
    pub fn new(
        kubeconfig: PathBuf,
        namespace: &str,
        fullname: &str,
        scratch: &Path,
    ) -> Result<Self> {
        Ok(Self {
            bin: bins::operator_bin()?,
            kubeconfig,
            namespace: namespace.into(),
            fullname: fullname.into(),
            webhook_port: free_port()?,
            metrics_port: free_port()?,
            log: scratch.join("operator.log"),
            identity: "e2e-operator".into(),
            extra_args: Vec::new(),
        })
    }

    /// A second replica: same cluster identity and Lease, its own ports,
    /// log and Lease identity.
    pub fn replica(&self, identity: &str, scratch: &Path) -> Result<Self> {
        Ok(Self {
            webhook_port: free_port()?,
            metrics_port: free_port()?,
            log: scratch.join(format!("{identity}.log")),
            identity: identity.into(),
            ..self.clone()
        })
    }

    /// The webhook URL to put in the chart's `webhook.url`.
    pub fn webhook_url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.webhook_port)
    }

    /// The leader-election Lease (in `namespace`), named as the chart names it.
    pub fn lease_name(&self) -> String {
        format!("{}-operator", self.fullname)
    }

    /// The arguments of `sametag-operator`. Leader election is on, as with
    /// the chart's replicaCount > 1, so the Lease really exists; the identity
    /// is fixed, so a restarted operator holds the Lease again at once.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "run".into(),
            format!("--namespace={}", self.namespace),
            format!("--webhook-listen=127.0.0.1:{}", self.webhook_port),
            format!("--webhook-url={}", self.webhook_url()),
            format!("--webhook-config-name={}", self.fullname),
            format!("--webhook-service={}-webhook", self.fullname),
            format!("--cert-secret={}-webhook-tls", self.fullname),
            format!("--metrics-listen=127.0.0.1:{}", self.metrics_port),
            "--leader-elect=true".into(),
            format!("--lease-name={}", self.lease_name()),
            format!("--identity={}", self.identity),
            "--log-format=text".into(),
            "--log=info,sametag_operator=debug".into(),
            // Fast resync so status.injectedPods follows within a test.
            "--resync=5s".into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running operator process; dropping it kills it.
pub struct Operator {
    child: Child,
    /// How it was started.
    pub config: OperatorConfig,
}

impl Operator {
    /// Start the operator and wait until `/readyz` answers 200.
    pub async fn start(config: OperatorConfig) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log)
            .map_err(|source| Error::Io {
                what: "open the operator log".into(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| Error::Io {
            what: "dup the operator log".into(),
            source,
        })?;
        let child = Command::new(&config.bin)
            .args(config.args())
            .env("KUBECONFIG", &config.kubeconfig)
            .env_remove("SAMETAG_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Io {
                what: format!("start {}", config.bin.display()),
                source,
            })?;
        let mut op = Self { child, config };
        let port = op.config.metrics_port;
        let ready = wait::until(
            "the operator's /readyz",
            Duration::from_secs(60),
            || async move { Ok((http_get_status(port, "/readyz").await? == 200).then_some(())) },
        )
        .await;
        if let Err(e) = ready {
            let exited = op.child.try_wait().ok().flatten();
            return Err(Error::Other(format!(
                "{e}; operator exit status: {exited:?}; log tail:\n{}",
                tail(&op.config.log, 40)
            )));
        }
        Ok(op)
    }

    /// Stop it with SIGTERM (bounded wait, then SIGKILL).
    pub fn stop(mut self) -> OperatorConfig {
        self.terminate();
        self.config.clone()
    }

    /// Send SIGTERM and wait up to `timeout` for the process to exit on its
    /// own; its exit status, or an error (after a SIGKILL) if it did not.
    pub async fn terminate_within(mut self, timeout: Duration) -> Result<ExitStatus> {
        let pid = self.child.id();
        send_sigterm(pid)?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(Error::Other(format!(
                        "the operator (pid {pid}) did not exit within {}s of SIGTERM; killed",
                        timeout.as_secs_f64()
                    )));
                }
                Err(source) => {
                    return Err(Error::Io {
                        what: format!("wait for the operator (pid {pid})"),
                        source,
                    });
                }
            }
        }
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.config.log, n)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// `kill -TERM pid` (the crate forbids the unsafe a direct libc call needs).
fn send_sigterm(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .map_err(|source| Error::Io {
            what: "run kill".into(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!("kill -TERM {pid}: {status}")))
    }
}

/// A kubeconfig that authenticates as `system:serviceaccount:<ns>:<sa>` with
/// a token from the TokenRequest API, as a pod's projected token would.
pub async fn sa_kubeconfig(
    admin: &kube::Client,
    info: &ReadyInfo,
    namespace: &str,
    service_account: &str,
    path: &Path,
) -> Result<PathBuf> {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(7200),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let resp = sas
        .create_token_request(service_account, &PostParams::default(), &req)
        .await?;
    let token = resp
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::Other("TokenRequest returned no status".into()))?;
    write_token_kubeconfig(path, info, &token, namespace)?;
    Ok(path.to_path_buf())
}

/// Plain HTTP/1.0 GET on 127.0.0.1:port; returns the status code.
pub async fn http_get_status(port: u16, path: &str) -> Result<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}

/// Plain HTTP/1.0 GET on 127.0.0.1:port; returns the status code and body.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(io("connect"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .map_err(io("write"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(io("read"))?;
        let text = String::from_utf8_lossy(&buf);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::Other(format!("bad HTTP response: {:.80}", text)))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("GET {path}"),
            secs: 5,
            detail: String::new(),
        })?
}
