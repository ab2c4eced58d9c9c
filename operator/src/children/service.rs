//! The Services of a managed store: a client Service that reaches only the
//! primary (pod 0), and the headless Service that governs the StatefulSet.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, REDIS_PORT, meta, names, selector_labels};
use crate::crd::ETagStore;

/// Label the StatefulSet controller puts on each pod with its name.
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

fn port() -> ServicePort {
    ServicePort {
        name: Some("redis".into()),
        port: REDIS_PORT,
        target_port: Some(IntOrString::String("redis".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The client Service `<store>-redis`: sidecars of a Single store connect
/// here. It selects the primary only (pod 0, or in failover mode the pod the
/// sentinels name: `primary`), because the other pods are read-only replicas.
pub fn desired(store: &ETagStore, primary: Option<&str>) -> Result<Service, BuildError> {
    let name = store.metadata.name.clone().unwrap_or_default();
    let mut selector = selector_labels(store);
    let pod = primary.map_or_else(|| format!("{}-0", names::redis(&name)), str::to_owned);
    selector.insert(POD_NAME_LABEL.into(), pod);
    Ok(Service {
        metadata: meta(store, names::redis(&name))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The headless Service `<store>-redis-headless`: stable pod DNS names so
/// replicas find the primary.
pub fn headless(store: &ETagStore) -> Result<Service, BuildError> {
    let name = store.metadata.name.clone().unwrap_or_default();
    Ok(Service {
        metadata: meta(store, names::headless(&name))?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(store)),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The URL sidecars use for a managed store, without the password.
pub fn endpoint(store: &ETagStore) -> String {
    format!(
        "redis://{}.{}.svc:{REDIS_PORT}",
        names::redis(store.metadata.name.as_deref().unwrap_or_default()),
        store.metadata.namespace.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;

    #[test]
    fn client_service_follows_the_named_primary() {
        let s = desired(&fixtures::managed(), Some("cache-redis-2")).unwrap();
        assert_eq!(
            s.spec.unwrap().selector.unwrap()[POD_NAME_LABEL],
            "cache-redis-2"
        );
    }

    #[test]
    fn client_service_targets_the_primary_only() {
        let s = desired(&fixtures::managed(), None).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("cache-redis"));
        let spec = s.spec.unwrap();
        assert_eq!(
            spec.selector.as_ref().unwrap()[POD_NAME_LABEL],
            "cache-redis-0"
        );
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 6379);
    }

    #[test]
    fn headless_service_is_headless() {
        let s = headless(&fixtures::managed()).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("cache-redis-headless"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert!(!spec.selector.unwrap().contains_key(POD_NAME_LABEL));
    }

    #[test]
    fn endpoint_names_the_client_service() {
        assert_eq!(
            endpoint(&fixtures::managed()),
            "redis://cache-redis.shop.svc:6379"
        );
    }
}
