//! Small typed views over ETagStores as a user sees them through the API
//! (dynamic objects, not the operator's Rust types, so the tests check the
//! served schema), plus helpers for owned children and namespaces.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ObjectMeta, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::{Error, Result, wait};

/// The ETagStore resource.
pub fn etagstore_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sametag.dev", "v1alpha1", "ETagStore"),
        "etagstores",
    )
}

/// ETagStores in `ns`.
pub fn etagstores(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &etagstore_resource())
}

/// Build an ETagStore object from a name and a spec.
pub fn etagstore(name: &str, spec: Value) -> Result<DynamicObject> {
    let v = serde_json::json!({
        "apiVersion": "sametag.dev/v1alpha1",
        "kind": "ETagStore",
        "metadata": { "name": name },
        "spec": spec,
    });
    serde_json::from_value(v).map_err(|e| Error::Other(format!("ETagStore object: {e}")))
}

/// Create a namespace with labels (ignores AlreadyExists).
pub async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    match nss.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // The serviceaccount controller creates `default`; Pods need it.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    wait::until(
        &format!("ServiceAccount {name}/default"),
        Duration::from_secs(60),
        || {
            let sas = sas.clone();
            async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
        },
    )
    .await
}

/// A condition of `obj.status.conditions` by type: (status, reason, message).
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// Compact status summary for failure messages.
pub fn status_summary(obj: &DynamicObject) -> String {
    serde_json::to_string(&obj.data["status"]).unwrap_or_default()
}

/// Wait until the store's condition `type_` has `status`, and the status
/// describes the current generation. Returns the object.
pub async fn wait_condition(
    api: &Api<DynamicObject>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> Result<DynamicObject> {
    wait::until(
        &format!("ETagStore {name} {type_}={status}"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let obj = api.get(name).await?;
                let current =
                    obj.data["status"]["observedGeneration"].as_i64() == obj.metadata.generation;
                let ok = condition(&obj, type_).is_some_and(|(s, _, _)| s == status);
                if current && ok {
                    Ok(Some(obj))
                } else {
                    // Not yet: an Err keeps polling and ends up in the timeout message.
                    Err(Error::Other(format!(
                        "generation {:?}, status {}",
                        obj.metadata.generation,
                        status_summary(&obj)
                    )))
                }
            }
        },
    )
    .await
}

/// Whether `meta` has an owner reference to `uid` (controller=true).
pub fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.uid == uid && r.controller == Some(true))
    })
}
