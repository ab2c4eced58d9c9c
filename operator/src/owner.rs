//! Ownership of what the operator creates for itself at run time (the
//! webhook certificate Secret and the leader-election Lease): both carry an
//! ownerReference to the MutatingWebhookConfiguration, which the Helm release
//! owns, so when `helm uninstall` deletes that configuration the garbage
//! collector deletes them too and the release leaves nothing behind.
//!
//! The reference is neither `controller` nor `blockOwnerDeletion` (the latter
//! would need update rights on the configuration's finalizers). A namespaced
//! object may have a cluster-scoped owner. An object written with the uid of
//! a configuration that is already gone is collected as well, so writing the
//! last uid seen while the release is being uninstalled is harmless.

use std::fmt::Debug;

use k8s_openapi::Resource as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::children::FIELD_MANAGER;
use crate::error::{Error, Result};

/// How many times a write that lost a race (409) is retried from a fresh read.
const ATTEMPTS: usize = 3;

/// The ownerReference naming `cfg`; `None` unless it was read from the API
/// (a name and a uid are required).
pub fn owner_reference(cfg: &MutatingWebhookConfiguration) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: MutatingWebhookConfiguration::API_VERSION.to_owned(),
        kind: MutatingWebhookConfiguration::KIND.to_owned(),
        name: cfg.metadata.name.clone()?,
        uid: cfg.metadata.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// The ownerReference of the configuration `name`, `None` when it does not
/// exist (not installed yet, or uninstalled).
pub async fn webhook_config_owner(client: &Client, name: &str) -> Result<Option<OwnerReference>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    Ok(api.get_opt(name).await?.as_ref().and_then(owner_reference))
}

/// `refs` with `owner` in it, or `None` when `refs` already holds its uid.
/// A reference to the same group, kind and name with another uid (the
/// configuration was deleted and created again) is replaced; any other
/// reference is kept.
pub fn with_owner(refs: &[OwnerReference], owner: &OwnerReference) -> Option<Vec<OwnerReference>> {
    if refs.iter().any(|r| r.uid == owner.uid) {
        return None;
    }
    let mut out: Vec<OwnerReference> = refs
        .iter()
        .filter(|r| !same_object(r, owner))
        .cloned()
        .collect();
    out.push(owner.clone());
    Some(out)
}

/// The ownerReferences of an object being rewritten: those it had, with
/// `owner` added as [`with_owner`] does; `None` when there are none.
pub fn merged(
    previous: &[OwnerReference],
    owner: Option<&OwnerReference>,
) -> Option<Vec<OwnerReference>> {
    let refs = match owner.and_then(|o| with_owner(previous, o)) {
        Some(refs) => refs,
        None => previous.to_vec(),
    };
    (!refs.is_empty()).then_some(refs)
}

fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn same_object(a: &OwnerReference, b: &OwnerReference) -> bool {
    a.kind == b.kind && a.name == b.name && group(&a.api_version) == group(&b.api_version)
}

/// Whether `meta` names `owner` (by uid).
pub fn is_owned_by(meta: &ObjectMeta, owner: &OwnerReference) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner.uid)
}

/// A JSON merge patch setting `metadata.ownerReferences` to `refs`. It names
/// the resourceVersion that was read, so the write fails with 409 instead of
/// dropping a reference someone else added meanwhile; every other field (the
/// lease manager's spec, the Secret's data) is left alone.
pub fn owner_patch(resource_version: Option<&str>, refs: &[OwnerReference]) -> serde_json::Value {
    let mut meta = serde_json::json!({ "ownerReferences": refs });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = rv.into();
    }
    serde_json::json!({ "metadata": meta })
}

/// What [`adopt`] and [`ensure_lease`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The object does not exist.
    Missing,
    /// It already named the owner.
    AlreadyOwned,
    /// The owner was added to an existing object.
    Adopted,
    /// It was created with the owner.
    Created,
}

/// Add `owner` to the ownerReferences of the object `name` in `api`, when it
/// exists and lacks it (e.g. created by an older release, or before the
/// configuration existed).
pub async fn adopt<K>(api: &Api<K>, name: &str, owner: &OwnerReference) -> Result<Adoption>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    for attempt in 1..=ATTEMPTS {
        let Some(obj) = api.get_opt(name).await? else {
            return Ok(Adoption::Missing);
        };
        let Some(refs) = with_owner(obj.owner_references(), owner) else {
            return Ok(Adoption::AlreadyOwned);
        };
        let patch = owner_patch(obj.meta().resource_version.as_deref(), &refs);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(Adoption::Adopted),
            // Changed under us (the lease manager renews every few seconds):
            // read it again.
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Adoption::Missing),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!("{name} keeps changing")))
}

/// An empty Lease `name` owned by `owner`, as the lease manager would create
/// it (no spec: nobody holds it yet).
pub fn owned_lease(name: &str, owner: &OwnerReference) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: None,
    }
}

/// The leader-election Lease, owned by `owner`: adopted when it exists,
/// created when it does not. Run before the lease manager starts (which then
/// finds it instead of creating an unowned one) and again whenever the
/// configuration is seen, which also brings back a Lease the garbage
/// collector removed along with a deleted configuration.
pub async fn ensure_lease(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: &OwnerReference,
) -> Result<Adoption> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    for _ in 0..ATTEMPTS {
        match adopt(&api, name, owner).await? {
            Adoption::Missing => {}
            done => return Ok(done),
        }
        match api
            .create(&PostParams::default(), &owned_lease(name, owner))
            .await
        {
            Ok(_) => return Ok(Adoption::Created),
            // Another replica (or its lease manager) created it: adopt that one.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "Lease {namespace}/{name} keeps changing"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mwc(name: Option<&str>, uid: Option<&str>) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: name.map(Into::into),
                uid: uid.map(Into::into),
                ..ObjectMeta::default()
            },
            webhooks: None,
        }
    }

    fn owner(uid: &str) -> OwnerReference {
        owner_reference(&mwc(Some("sametag"), Some(uid))).unwrap()
    }

    #[test]
    fn reference_names_the_configuration_without_controller_or_blocking() {
        let r = owner("u-1");
        assert_eq!(r.api_version, "admissionregistration.k8s.io/v1");
        assert_eq!(r.kind, "MutatingWebhookConfiguration");
        assert_eq!((r.name.as_str(), r.uid.as_str()), ("sametag", "u-1"));
        assert_eq!(r.controller, None);
        assert_eq!(r.block_owner_deletion, None);
        // Serialized, the optional fields are absent (no RBAC on finalizers needed).
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "name": "sametag",
                "uid": "u-1",
            })
        );
    }

    #[test]
    fn no_reference_to_an_object_not_read_from_the_api() {
        assert_eq!(owner_reference(&mwc(Some("sametag"), None)), None);
        assert_eq!(owner_reference(&mwc(None, Some("u"))), None);
    }

    #[test]
    fn with_owner_adds_once_keeps_others_and_replaces_a_stale_uid() {
        let ours = owner("u-2");
        assert_eq!(with_owner(&[], &ours), Some(vec![ours.clone()]));
        assert_eq!(with_owner(std::slice::from_ref(&ours), &ours), None);

        let other = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "sametag".into(),
            uid: "d-1".into(),
            ..OwnerReference::default()
        };
        let stale = owner("u-1");
        let got = with_owner(&[other.clone(), stale], &ours).unwrap();
        assert_eq!(got, vec![other, ours.clone()]);

        // Same name in another group is another object: kept.
        let lookalike = OwnerReference {
            api_version: "example.com/v1".into(),
            ..owner("x-1")
        };
        let got = with_owner(std::slice::from_ref(&lookalike), &ours).unwrap();
        assert_eq!(got, vec![lookalike, ours]);
    }

    #[test]
    fn merged_keeps_previous_owners_and_adds_ours() {
        let ours = owner("u-2");
        assert_eq!(merged(&[], None), None);
        assert_eq!(merged(&[], Some(&ours)), Some(vec![ours.clone()]));
        assert_eq!(merged(&[owner("u-1")], None), Some(vec![owner("u-1")]));
        assert_eq!(
            merged(&[owner("u-1")], Some(&ours)),
            Some(vec![ours.clone()])
        );
        assert_eq!(
            merged(std::slice::from_ref(&ours), Some(&ours)),
            Some(vec![ours])
        );
    }

    #[test]
    fn is_owned_by_compares_uids() {
        let meta = ObjectMeta {
            owner_references: Some(vec![owner("u-1")]),
            ..ObjectMeta::default()
        };
        assert!(is_owned_by(&meta, &owner("u-1")));
        assert!(!is_owned_by(&meta, &owner("u-2")));
        assert!(!is_owned_by(&ObjectMeta::default(), &owner("u-1")));
    }

    #[test]
    fn patch_touches_only_owner_references_and_pins_the_version() {
        let p = owner_patch(Some("42"), &[owner("u-1")]);
        assert_eq!(
            p,
            serde_json::json!({"metadata": {
                "resourceVersion": "42",
                "ownerReferences": [{
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "MutatingWebhookConfiguration",
                    "name": "sametag",
                    "uid": "u-1",
                }],
            }})
        );
        let p = owner_patch(None, &[]);
        assert_eq!(p, serde_json::json!({"metadata": {"ownerReferences": []}}));
    }

    #[test]
    fn owned_lease_is_empty_and_owned() {
        let l = owned_lease("sametag-operator", &owner("u-1"));
        assert_eq!(l.metadata.name.as_deref(), Some("sametag-operator"));
        assert_eq!(l.metadata.owner_references, Some(vec![owner("u-1")]));
        assert!(l.spec.is_none(), "nobody holds a new Lease");
    }
}
