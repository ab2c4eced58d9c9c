//! Desired state of every object an ETagStore owns: one file per kind, each a
//! pure function of the store, plus the names and labels they share.

pub mod network_policy;
pub mod policy_config_map;
pub mod redis;
pub mod redis_config;
pub mod secret;
pub mod sentinel;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::ETagStore;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "sametag-operator";
/// Label on injected pods naming their store (the NetworkPolicy admits these).
pub const STORE_LABEL: &str = "sametag.dev/store";
/// Label on owned children naming their ETagStore (watch selector).
pub const OWNER_LABEL: &str = "sametag.dev/etagstore";
/// Key of the Redis password in the password Secret.
pub const PASSWORD_KEY: &str = "password";
/// Key of the sidecars' own Redis password (ACL user [`SIDECAR_USER`]) in
/// the password Secret of a managed store.
pub const SIDECAR_PASSWORD_KEY: &str = "sidecar-password";
/// Key of the rendered ACL users and `masterauth` (see
/// [`redis_config::auth_conf`]) in the password Secret of a managed store.
pub const AUTH_CONF_KEY: &str = "auth.conf";
/// Where the Redis pods mount [`AUTH_CONF_KEY`] (redis.conf includes it).
pub const AUTH_DIR: &str = "/etc/redis-auth";
/// The ACL user injected sidecars of a managed store authenticate as.
pub const SIDECAR_USER: &str = "sametag";
/// Key of the purge token in the purge-token Secret.
pub const PURGE_TOKEN_KEY: &str = "token";
/// Key of the policy file in the policy ConfigMap.
pub const POLICY_KEY: &str = "policy.yaml";
/// Key of the Redis configuration in its ConfigMap.
pub const REDIS_CONF_KEY: &str = "redis.conf";
/// Port Redis listens on.
pub const REDIS_PORT: i32 = 6379;

/// A child could not be built from the store.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Stores are namespaced; one without a namespace cannot own anything.
    #[error("ETagStore {0} has no namespace")]
    NoNamespace(String),
    /// Stores from the apiserver always have a uid; one without cannot own.
    #[error("ETagStore {0} has no uid yet")]
    NoUid(String),
    /// The policy could not be rendered as YAML.
    #[error("cannot render the policy of {0}: {1}")]
    Policy(String, serde_yaml_ng::Error),
    /// The sidecar's parser refuses the policy: writing it would crash-loop
    /// every injected sidecar, so the ConfigMap is not applied.
    #[error("spec.policy: {0}")]
    InvalidPolicy(sametag_policy::PolicyError),
}

/// Names of the children of one store.
pub mod names {
    /// The password Secret (managed Redis).
    pub fn secret(store: &str) -> String {
        format!("{store}-redis")
    }
    /// The Redis ConfigMap.
    pub fn redis_config(store: &str) -> String {
        format!("{store}-redis-config")
    }
    /// The Redis StatefulSet and the client Service.
    pub fn redis(store: &str) -> String {
        format!("{store}-redis")
    }
    /// The headless Service that governs the StatefulSet.
    pub fn headless(store: &str) -> String {
        format!("{store}-redis-headless")
    }
    /// The sentinel StatefulSet, its headless Service, PodDisruptionBudget
    /// and NetworkPolicy (failover mode).
    pub fn sentinel(store: &str) -> String {
        format!("{store}-sentinel")
    }
    /// The PodDisruptionBudget of the Redis pods (failover mode).
    pub fn redis_pdb(store: &str) -> String {
        format!("{store}-redis")
    }
    /// The NetworkPolicy in front of Redis.
    pub fn network_policy(store: &str) -> String {
        format!("{store}-redis")
    }
    /// The purge-token Secret (every store).
    pub fn purge(store: &str) -> String {
        format!("{store}-purge")
    }
    /// The sidecar policy ConfigMap.
    pub fn policy(store: &str) -> String {
        format!("{store}-policy")
    }
}

/// Labels shared by every child of `store`.
pub fn labels(store: &ETagStore) -> BTreeMap<String, String> {
    let mut l = selector_labels(store);
    l.insert("app.kubernetes.io/component".into(), "etag-store".into());
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l.insert(OWNER_LABEL.into(), store.name_any());
    l
}

/// The labels that select the Redis pods of `store`.
pub fn selector_labels(store: &ETagStore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "sametag-redis".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), store.name_any()),
    ])
}

/// Object metadata of a child called `name`, owned (controller=true) by `store`.
pub fn meta(store: &ETagStore, name: String) -> Result<ObjectMeta, BuildError> {
    let ns = store
        .namespace()
        .ok_or_else(|| BuildError::NoNamespace(store.name_any()))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(ns),
        labels: Some(labels(store)),
        owner_references: Some(vec![owner(store)?]),
        ..ObjectMeta::default()
    })
}

/// The controller owner reference to `store`.
pub fn owner(store: &ETagStore) -> Result<OwnerReference, BuildError> {
    if store.meta().uid.is_none() {
        return Err(BuildError::NoUid(store.name_any()));
    }
    store
        .controller_owner_ref(&())
        .ok_or_else(|| BuildError::NoUid(store.name_any()))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Stores for the builder, reconciler and webhook tests.
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::crd::{
        ETagStore, ETagStoreSpec, ExternalRedis, RedisSpec, SecretKeyRef, StorageSpec,
    };

    /// A managed store `cache` in namespace `shop` with defaults.
    pub fn managed() -> ETagStore {
        ETagStore {
            metadata: ObjectMeta {
                name: Some("cache".into()),
                namespace: Some("shop".into()),
                uid: Some("00000000-0000-0000-0000-000000000001".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: ETagStoreSpec::default(),
            status: None,
        }
    }

    /// `managed()` with 1Gi of persistent storage.
    pub fn with_storage() -> ETagStore {
        let mut s = managed();
        if let Some(m) = s.spec.redis.managed.as_mut() {
            m.storage = Some(StorageSpec {
                size: "1Gi".into(),
                storage_class_name: Some("fast".into()),
            });
        }
        s
    }

    /// An external store pointing at `redis://redis.shared.svc:6379/0`,
    /// password in Secret `shared-redis` key `pw`.
    pub fn external() -> ETagStore {
        let mut s = managed();
        s.spec.redis = RedisSpec {
            managed: None,
            external: Some(ExternalRedis {
                url: "redis://redis.shared.svc:6379/0".into(),
                secret_ref: SecretKeyRef {
                    name: "shared-redis".into(),
                    key: "pw".into(),
                },
                username: None,
                ca_secret_ref: None,
            }),
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_carries_controller_owner_and_labels() {
        let store = fixtures::managed();
        let m = meta(&store, "x".into()).unwrap();
        let o = &m.owner_references.unwrap()[0];
        assert_eq!(o.controller, Some(true));
        assert_eq!(o.kind, "ETagStore");
        assert_eq!(o.api_version, "sametag.dev/v1alpha1");
        assert_eq!(o.name, "cache");
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(m.labels.unwrap()[OWNER_LABEL], "cache");
    }

    #[test]
    fn no_uid_is_an_error() {
        let mut store = fixtures::managed();
        store.metadata.uid = None;
        assert!(matches!(
            meta(&store, "x".into()),
            Err(BuildError::NoUid(_))
        ));
    }
}
