//! Wakes the ETagStores whose external Redis password Secret changed, so a
//! created, replaced or deleted Secret shows in their status at once instead
//! of after the Degraded requeue; and the store whose child name a Secret
//! carries (`<store>-redis`, `<store>-purge`), so a foreign Secret that took
//! the name, and its removal, show at once too (the owned-children watch
//! only sees Secrets the store labelled).
//!
//! Only Secret metadata is watched (`Api<PartialObjectMeta<Secret>>` makes
//! kube request metadata only): a new resourceVersion is all the controller
//! needs, and the operator never receives other apps' Secret data.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::children::names;
use crate::crd::ETagStore;

/// The stores among `stores` that live in `secret_ns` and name `secret_name`
/// in `spec.redis.external.secretRef` (a Secret is always looked up in the
/// store's own namespace) or `caSecretRef`, or whose own Secret would have that name.
pub fn stores_referencing(
    secret_ns: &str,
    secret_name: &str,
    stores: &[Arc<ETagStore>],
) -> Vec<ObjectRef<ETagStore>> {
    stores
        .iter()
        .filter(|s| s.meta().namespace.as_deref() == Some(secret_ns))
        .filter(|s| {
            let name = s.name_any();
            s.spec.redis.external.as_ref().is_some_and(|e| {
                e.secret_ref.name == secret_name
                    || e.ca_secret_ref
                        .as_ref()
                        .is_some_and(|c| c.name == secret_name)
            }) || names::secret(&name) == secret_name
                || names::purge(&name) == secret_name
        })
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// Maps a changed Secret to the stores that reference it, read from the
/// controller's own cache of ETagStores (empty until it first syncs; the
/// controller reconciles every store on start anyway).
pub fn mapper(
    stores: Store<ETagStore>,
) -> impl Fn(PartialObjectMeta<Secret>) -> Vec<ObjectRef<ETagStore>> + Send + Sync + 'static {
    move |secret| match secret.namespace() {
        Some(ns) => stores_referencing(&ns, &secret.name_any(), &stores.state()),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;

    fn external(ns: &str, name: &str, secret: &str) -> Arc<ETagStore> {
        let mut s = fixtures::external();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        if let Some(e) = s.spec.redis.external.as_mut() {
            e.secret_ref.name = secret.into();
        }
        Arc::new(s)
    }

    fn managed(ns: &str, name: &str) -> Arc<ETagStore> {
        let mut s = fixtures::managed();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        Arc::new(s)
    }

    fn names(refs: Vec<ObjectRef<ETagStore>>) -> Vec<(String, String)> {
        let mut v: Vec<_> = refs
            .into_iter()
            .map(|r| (r.namespace.unwrap_or_default(), r.name))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_store_naming_the_secret_in_its_namespace_is_enqueued() {
        let stores = vec![
            external("shop", "a", "redis-pass"),
            external("shop", "b", "redis-pass"),
            external("shop", "c", "other"),
            external("blog", "d", "redis-pass"),
            managed("shop", "e"),
        ];
        assert_eq!(
            names(stores_referencing("shop", "redis-pass", &stores)),
            vec![
                ("shop".to_string(), "a".to_string()),
                ("shop".to_string(), "b".to_string())
            ]
        );
        assert_eq!(
            names(stores_referencing("blog", "redis-pass", &stores)),
            vec![("blog".to_string(), "d".to_string())]
        );
    }

    #[test]
    fn unreferenced_secrets_enqueue_nothing() {
        let stores = vec![external("shop", "a", "redis-pass"), managed("shop", "e")];
        // Same name, other namespace; other name, same namespace.
        assert!(stores_referencing("blog", "redis-pass", &stores).is_empty());
        assert!(stores_referencing("shop", "unrelated", &stores).is_empty());
        assert!(stores_referencing("shop", "redis-pass", &[]).is_empty());
    }

    #[test]
    fn a_secret_with_a_child_name_wakes_its_store() {
        let stores = vec![managed("shop", "e"), external("shop", "x", "pw")];
        for name in ["e-redis", "e-purge"] {
            assert_eq!(
                names(stores_referencing("shop", name, &stores)),
                vec![("shop".to_string(), "e".to_string())]
            );
            assert!(stores_referencing("blog", name, &stores).is_empty());
        }
        assert_eq!(
            names(stores_referencing("shop", "x-purge", &stores)),
            vec![("shop".to_string(), "x".to_string())]
        );
    }

    #[test]
    fn mapper_reads_the_shared_store_and_ignores_unnamespaced_objects() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher::Event;

        let (reader, mut writer) = store::<ETagStore>();
        writer.apply_watcher_event(&Event::Apply(
            (*external("shop", "a", "redis-pass")).clone(),
        ));
        let map = mapper(reader);

        let mut secret = PartialObjectMeta::<Secret>::default();
        secret.metadata.name = Some("redis-pass".into());
        secret.metadata.namespace = Some("shop".into());
        assert_eq!(
            names(map(secret.clone())),
            vec![("shop".to_string(), "a".to_string())]
        );
        secret.metadata.namespace = None;
        assert!(map(secret).is_empty());
    }

    #[test]
    fn the_ca_secret_wakes_its_store() {
        let mut s = fixtures::external();
        if let Some(e) = s.spec.redis.external.as_mut() {
            e.ca_secret_ref = Some(crate::crd::CaSecretRef {
                name: "redis-ca".into(),
                key: "ca.crt".into(),
            });
        }
        let stores = [Arc::new(s)];
        assert_eq!(stores_referencing("shop", "redis-ca", &stores).len(), 1);
        assert!(stores_referencing("other", "redis-ca", &stores).is_empty());
    }
}
