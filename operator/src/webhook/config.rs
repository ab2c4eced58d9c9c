//! The MutatingWebhookConfiguration the operator applies itself with
//! `--manage-webhook-config`: the reference shape in `deploy/webhook.yaml`
//! (what the chart ships), adjusted to the flags.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ServiceReference};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::children::FIELD_MANAGER;
use crate::reconcile::{Error, Result};

/// The reference configuration (`operator/deploy/webhook.yaml`).
pub const REFERENCE: &str = include_str!("../../deploy/webhook.yaml");

/// Where the apiserver should call the webhook.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Service in the cluster.
    Service {
        /// Namespace of the Service (the operator's).
        namespace: String,
        /// Name of the Service.
        name: String,
        /// Port of the Service.
        port: i32,
    },
    /// A URL (a local process serving a real apiserver).
    Url(String),
}

/// The configuration named `name`, pointing at `target`, trusting `ca_pem`.
pub fn desired(name: &str, target: &Target, ca_pem: &str) -> Result<MutatingWebhookConfiguration> {
    let mut cfg: MutatingWebhookConfiguration = serde_yaml_ng::from_str(REFERENCE)
        .map_err(|e| Error::Tls(format!("deploy/webhook.yaml: {e}")))?;
    cfg.metadata.name = Some(name.to_owned());
    for wh in cfg.webhooks.iter_mut().flatten() {
        let cc = &mut wh.client_config;
        cc.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
        match target {
            Target::Url(url) => {
                cc.url = Some(url.clone());
                cc.service = None;
            }
            Target::Service {
                namespace,
                name,
                port,
            } => {
                cc.url = None;
                cc.service = Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some("/mutate".into()),
                    port: Some(*port),
                });
                // Never call ourselves for our own pods.
                for expr in wh
                    .namespace_selector
                    .iter_mut()
                    .flat_map(|s| s.match_expressions.iter_mut().flatten())
                    .filter(|e| e.key == "kubernetes.io/metadata.name")
                {
                    for v in expr.values.iter_mut().flatten() {
                        if v == "sametag-system" {
                            v.clone_from(namespace);
                        }
                    }
                }
            }
        }
    }
    Ok(cfg)
}

/// Server-side apply `cfg` (creating it when missing).
pub async fn apply(client: &Client, cfg: &MutatingWebhookConfiguration) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = cfg.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(cfg),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_safe_by_default() {
        let cfg = desired(
            "sametag",
            &Target::Url("https://127.0.0.1:1/mutate".into()),
            "CA",
        )
        .unwrap();
        let whs = cfg.webhooks.unwrap();
        assert_eq!(whs.len(), 2);
        for wh in &whs {
            assert_eq!(wh.failure_policy.as_deref(), Some("Ignore"));
            assert!(wh.timeout_seconds.unwrap() <= 5);
            assert_eq!(wh.side_effects, "None");
            assert_eq!(wh.admission_review_versions, ["v1"]);
            let rule = &wh.rules.as_ref().unwrap()[0];
            assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
            assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
            assert!(wh.namespace_selector.is_some() && wh.object_selector.is_some());
            assert_eq!(
                wh.client_config.url.as_deref(),
                Some("https://127.0.0.1:1/mutate")
            );
            assert!(wh.client_config.service.is_none());
        }
    }

    #[test]
    fn service_target_excludes_the_operator_namespace() {
        let t = Target::Service {
            namespace: "ops".into(),
            name: "hook".into(),
            port: 8443,
        };
        let cfg = desired("x", &t, "CA").unwrap();
        let wh = &cfg.webhooks.unwrap()[1];
        let svc = wh.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.namespace.as_str(), svc.name.as_str(), svc.port),
            ("ops", "hook", Some(8443))
        );
        let exprs = wh
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap();
        let names = exprs
            .iter()
            .find(|e| e.key == "kubernetes.io/metadata.name")
            .unwrap();
        assert!(names.values.as_ref().unwrap().contains(&"ops".to_owned()));
    }
}
