//! The cluster the control-plane benchmark measures, set up as the e2e suite
//! sets up its own: the harness's control plane, the chart installed with
//! helm (webhook URL pointing at a local operator), and `sametag-operator`
//! running with the chart's ServiceAccount token.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;

use crate::controlplane::ControlPlane;
use crate::operator::{Operator, OperatorConfig, sa_kubeconfig};
use crate::tools::Tools;
use crate::{Error, Result, wait};

/// Helm release; also the chart's full name.
pub const RELEASE: &str = "sametag";
/// Namespace of the release and the operator.
pub const NAMESPACE: &str = "sametag-system";

/// A running control plane with the chart and the operator.
pub struct Cluster {
    /// The operator (declared first: dropped before the control plane).
    pub operator: Operator,
    /// Admin client (system:masters).
    pub admin: kube::Client,
    /// The webhook's CA (PEM), as patched into the caBundle.
    pub ca_pem: Vec<u8>,
    /// `gitVersion` of the apiserver.
    pub kubernetes: String,
    /// The control plane.
    pub cp: ControlPlane,
}

impl Cluster {
    /// Start everything; `say` gets one line per step.
    pub async fn start(mut say: impl FnMut(&str)) -> Result<Self> {
        say("starting etcd + kube-apiserver + kube-controller-manager (harness)");
        let cp = tokio::task::spawn_blocking(ControlPlane::start)
            .await
            .map_err(|e| Error::Other(format!("control plane start: {e}")))??;
        let admin = cp.admin_client().await?;
        let kubernetes = admin.apiserver_version().await?.git_version;
        say("helm install the chart; start sametag-operator with its ServiceAccount token");
        let tools = Tools::new(cp.kubeconfig(), cp.dir.path())?;
        let sa_kc = cp.dir.path().join("operator-sa.kubeconfig");
        let config = OperatorConfig::new(sa_kc, NAMESPACE, RELEASE, cp.dir.path())?;
        let chart = Tools::chart_dir();
        tools
            .helm([
                "install",
                RELEASE,
                chart.to_str().unwrap_or_default(),
                "--namespace",
                NAMESPACE,
                "--create-namespace",
                "--set",
                &format!("webhook.url={}", config.webhook_url()),
            ])
            .await?;
        sa_kubeconfig(&admin, &cp.info, NAMESPACE, RELEASE, &config.kubeconfig).await?;
        let operator = Operator::start(config).await?;
        let ca_pem = ca_bundle(&admin).await?;
        Ok(Self {
            operator,
            admin,
            ca_pem,
            kubernetes,
            cp,
        })
    }
}

/// The caBundle of the chart's webhooks, once the operator has patched it in.
async fn ca_bundle(admin: &kube::Client) -> Result<Vec<u8>> {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    wait::until(
        "the operator to patch the webhook caBundle",
        Duration::from_secs(60),
        || {
            let mwcs = mwcs.clone();
            async move {
                let hooks = mwcs.get(RELEASE).await?.webhooks.unwrap_or_default();
                let bundles: Vec<Vec<u8>> = hooks
                    .iter()
                    .filter_map(|h| h.client_config.ca_bundle.as_ref().map(|b| b.0.clone()))
                    .collect();
                Ok((!hooks.is_empty() && bundles.len() == hooks.len()).then(|| bundles[0].clone()))
            }
        },
    )
    .await
}
