//! The MutatingWebhookConfiguration the operator applies itself with
//! `--manage-webhook-config`: the reference shape in `deploy/webhook.yaml`
//! (what the chart ships), adjusted to the flags.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ServiceReference};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::children::FIELD_MANAGER;
use crate::error::{Error, Result};

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

/// The configuration named `name`, pointing at `target`, trusting `ca_pem`
/// (`None`: left for cert-manager's CA injector to fill in).
pub fn desired(
    name: &str,
    target: &Target,
    ca_pem: Option<&str>,
) -> Result<MutatingWebhookConfiguration> {
    let mut cfg: MutatingWebhookConfiguration = serde_yaml_ng::from_str(REFERENCE)
        .map_err(|e| Error::Tls(format!("deploy/webhook.yaml: {e}")))?;
    cfg.metadata.name = Some(name.to_owned());
    set_client_config(&mut cfg, ca_pem, target);
    if let Target::Service { namespace, .. } = target {
        // Never call ourselves for our own pods.
        for expr in cfg
            .webhooks
            .iter_mut()
            .flatten()
            .flat_map(|wh| wh.namespace_selector.iter_mut())
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
    Ok(cfg)
}

/// The one place a webhook's `clientConfig` is written, whether the operator
/// owns the whole configuration or only patches the chart's: `caBundle`
/// (unless `ca_pem` is `None`, when cert-manager injects it) and where the
/// apiserver calls, `url` or the Service reference (the other one removed).
/// Returns whether anything changed.
pub fn set_client_config(
    cfg: &mut MutatingWebhookConfiguration,
    ca_pem: Option<&str>,
    target: &Target,
) -> bool {
    let mut changed = false;
    for wh in cfg.webhooks.iter_mut().flatten() {
        let cc = &mut wh.client_config;
        if let Some(ca) = ca_pem {
            let bundle = ByteString(ca.as_bytes().to_vec());
            if cc.ca_bundle.as_ref() != Some(&bundle) {
                cc.ca_bundle = Some(bundle);
                changed = true;
            }
        }
        let (url, service) = match target {
            Target::Url(url) => (Some(url.clone()), None),
            Target::Service {
                namespace,
                name,
                port,
            } => (
                None,
                Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some("/mutate".into()),
                    port: Some(*port),
                }),
            ),
        };
        if cc.url != url || cc.service != service {
            cc.url = url;
            cc.service = service;
            changed = true;
        }
    }
    changed
}

/// Update the clientConfig of the existing configuration `name` (the chart's)
/// as [`set_client_config`] says; whether anything changed. A missing
/// configuration is not an error (the chart may not have created it yet).
pub async fn patch(
    client: &Client,
    name: &str,
    ca_pem: Option<&str>,
    target: &Target,
) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut cfg) = api.get_opt(name).await? else {
        tracing::warn!(
            config = name,
            "MutatingWebhookConfiguration not found; clientConfig not updated"
        );
        return Ok(false);
    };
    if !set_client_config(&mut cfg, ca_pem, target) {
        return Ok(false);
    }
    // A replace with the resourceVersion read: a concurrent edit is a 409,
    // retried by the caller's loop, never silently overwritten.
    api.replace(name, &PostParams::default(), &cfg).await?;
    tracing::info!(config = name, "webhook configuration clientConfig updated");
    Ok(true)
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
            Some("CA"),
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
        let cfg = desired("x", &t, Some("CA")).unwrap();
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

    #[test]
    fn client_config_gets_ca_and_target_once() {
        let mut cfg: MutatingWebhookConfiguration = serde_yaml_ng::from_str(REFERENCE).unwrap();
        let url = Target::Url("https://127.0.0.1:9443/mutate".into());
        assert!(set_client_config(&mut cfg, Some("CA"), &url));
        for wh in cfg.webhooks.as_ref().unwrap() {
            assert_eq!(wh.client_config.ca_bundle.as_ref().unwrap().0, b"CA");
            assert_eq!(
                wh.client_config.url.as_deref(),
                Some("https://127.0.0.1:9443/mutate")
            );
            assert!(wh.client_config.service.is_none());
        }
        assert!(!set_client_config(&mut cfg, Some("CA"), &url), "idempotent");
        // Back to the Service: the url goes, the CA stays.
        let svc = Target::Service {
            namespace: "ops".into(),
            name: "hook".into(),
            port: 443,
        };
        assert!(set_client_config(&mut cfg, Some("CA"), &svc));
        for wh in cfg.webhooks.as_ref().unwrap() {
            assert!(wh.client_config.url.is_none());
            assert_eq!(wh.client_config.service.as_ref().unwrap().name, "hook");
            assert_eq!(wh.client_config.ca_bundle.as_ref().unwrap().0, b"CA");
        }
    }

    #[test]
    fn cert_manager_mode_leaves_the_ca_bundle_alone() {
        let mut cfg = desired("x", &Target::Url("https://h/mutate".into()), None).unwrap();
        for wh in cfg.webhooks.as_ref().unwrap() {
            assert!(wh.client_config.ca_bundle.is_none());
        }
        for wh in cfg.webhooks.iter_mut().flatten() {
            wh.client_config.ca_bundle = Some(ByteString(b"INJECTED".to_vec()));
        }
        assert!(!set_client_config(
            &mut cfg,
            None,
            &Target::Url("https://h/mutate".into())
        ));
        for wh in cfg.webhooks.as_ref().unwrap() {
            assert_eq!(wh.client_config.ca_bundle.as_ref().unwrap().0, b"INJECTED");
        }
    }
}
