//! What every scenario shares: the control plane, admin client, tools, and
//! the operator process (stopped and restarted by some scenarios).

use std::process::ExitStatus;
use std::time::Duration;

use sametag_k8s_e2e::controlplane::ControlPlane;
use sametag_k8s_e2e::operator::{Operator, OperatorConfig, sa_kubeconfig};
use sametag_k8s_e2e::redis::TestRedis;
use sametag_k8s_e2e::tools::Tools;
use sametag_k8s_e2e::{Error, Result, repo_root};

/// Release name; also the chart's full name (it contains "sametag").
pub const RELEASE: &str = "sametag";
/// Namespace the chart is installed into.
pub const NAMESPACE: &str = "sametag-system";
/// The chart's ServiceAccount (= full name).
pub const SERVICE_ACCOUNT: &str = "sametag";

/// Shared state of the suite.
pub struct Ctx {
    /// The running control plane.
    pub cp: ControlPlane,
    /// system:masters client (the "user" of the tests).
    pub admin: kube::Client,
    /// helm and kubectl bound to the admin kubeconfig.
    pub tools: Tools,
    /// How the operator runs (ports fixed across restarts).
    pub op_config: OperatorConfig,
    /// The operator, when running.
    pub operator: Option<Operator>,
    /// A real redis-server the external stores of the scenarios name (the
    /// operator pings a store before it is Ready); the default user takes
    /// either password the scenarios' Secrets hold.
    pub redis: TestRedis,
}

impl Ctx {
    /// Start the control plane and prepare (not start) the operator.
    pub async fn start() -> Result<Self> {
        let t = std::time::Instant::now();
        let cp = ControlPlane::start()?;
        eprintln!("control plane started in {:.1}s", t.elapsed().as_secs_f64());
        let admin = cp.admin_client().await?;
        let tools = Tools::new(cp.kubeconfig(), cp.dir.path())?;
        let sa_kc = cp.dir.path().join("operator-sa.kubeconfig");
        let t = std::time::Instant::now();
        let op_config = OperatorConfig::new(sa_kc, NAMESPACE, RELEASE, cp.dir.path())?;
        eprintln!(
            "operator binary ready in {:.1}s: {}",
            t.elapsed().as_secs_f64(),
            op_config.bin.display()
        );
        let redis = TestRedis::start(
            &["user default on >pw >s3cret ~* &* +@all".to_owned()],
            false,
        )?;
        Ok(Self {
            cp,
            admin,
            tools,
            op_config,
            operator: None,
            redis,
        })
    }

    /// Start the operator with a fresh token of the chart's ServiceAccount.
    pub async fn start_operator(&mut self) -> Result<()> {
        if self.operator.is_some() {
            return Ok(());
        }
        sa_kubeconfig(
            &self.admin,
            &self.cp.info,
            NAMESPACE,
            SERVICE_ACCOUNT,
            &self.op_config.kubeconfig,
        )
        .await?;
        self.operator = Some(Operator::start(self.op_config.clone()).await?);
        Ok(())
    }

    /// The URL of [`Ctx::redis`] (no credentials).
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// Stop the operator (SIGTERM).
    pub fn stop_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.stop();
        }
    }

    /// Stop the operator with SIGTERM and wait up to `timeout` for it to
    /// exit by itself (a graceful shutdown, not the SIGKILL fallback).
    pub async fn terminate_operator(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let op = self
            .operator
            .take()
            .ok_or_else(|| Error::Other("the operator is not running".into()))?;
        op.terminate_within(timeout).await
    }

    /// The operator's last log lines (empty before it started).
    pub fn operator_log_tail(&self, n: usize) -> String {
        sametag_k8s_e2e::tail(&self.op_config.log, n)
    }

    /// Copy the logs somewhere that outlives the temp dir; returns where.
    pub fn keep_logs(&self) -> String {
        let dest = repo_root().join("target/sametag-k8s-e2e-logs");
        let _ = std::fs::create_dir_all(&dest);
        for (src, name) in [
            (self.cp.log_path(), "controlplane.log"),
            (self.op_config.log.clone(), "operator.log"),
        ] {
            let _ = std::fs::copy(src, dest.join(name));
        }
        dest.display().to_string()
    }

    /// Fail unless the operator is running.
    pub fn require_operator(&self) -> Result<()> {
        if self.operator.is_some() {
            Ok(())
        } else {
            Err(Error::Other("the operator is not running".into()))
        }
    }
}
