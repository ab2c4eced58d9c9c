//! The NetworkPolicy in front of a managed Redis: only pods injected for this
//! store, the store's own Redis pods (replication), its sentinels and the operator may
//! connect, and only to the Redis port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, REDIS_PORT, STORE_LABEL, meta, names, selector_labels};
use crate::crd::ETagStore;

/// Label every namespace carries with its own name (Kubernetes ≥ 1.22).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Label on the operator's pods (the chart sets it).
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "sametag-operator");

fn selector(labels: BTreeMap<String, String>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    })
}

/// The operator's pods, in `operator_namespace`.
pub fn operator_peer(operator_namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: selector(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            operator_namespace.to_owned(),
        )])),
        pod_selector: selector(BTreeMap::from([(
            OPERATOR_POD_LABEL.0.to_owned(),
            OPERATOR_POD_LABEL.1.to_owned(),
        )])),
        ..NetworkPolicyPeer::default()
    }
}

/// The NetworkPolicy for `store`; `operator_namespace` is where the operator runs.
pub fn desired(store: &ETagStore, operator_namespace: &str) -> Result<NetworkPolicy, BuildError> {
    let name = store.metadata.name.clone().unwrap_or_default();
    let peer = |pods: BTreeMap<String, String>| NetworkPolicyPeer {
        pod_selector: selector(pods),
        ..NetworkPolicyPeer::default()
    };
    let from = vec![
        peer(BTreeMap::from([(STORE_LABEL.to_owned(), name.clone())])),
        peer(selector_labels(store)),
        // Failover mode: the sentinels ping, promote and reconfigure Redis.
        peer(super::sentinel::sentinel_selector(store)),
        operator_peer(operator_namespace),
    ];
    Ok(NetworkPolicy {
        metadata: meta(store, names::network_policy(&name))?,
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(selector_labels(store)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(REDIS_PORT)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;

    #[test]
    fn admits_only_injected_pods_replicas_and_operator() {
        let np = desired(&fixtures::managed(), "sametag-system").unwrap();
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "cache"
        );
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_owned()][..])
        );
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 1);
        let from = rules[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 4);
        assert_eq!(
            from[2]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/name"],
            "sametag-sentinel",
            "the sentinels reach Redis"
        );
        let injected = from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(injected[STORE_LABEL], "cache");
        assert!(
            from[0].namespace_selector.is_none(),
            "injected pods must be in the store's namespace"
        );
        let op = &from[3];
        assert_eq!(
            op.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[NAMESPACE_NAME_LABEL],
            "sametag-system"
        );
        assert_eq!(
            rules[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(6379))
        );
    }
}
