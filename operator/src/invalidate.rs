//! `sametag-operator invalidate`: purge paths, globs and surrogate keys from
//! outside HTTP.
//!
//! For each store: read its purge token (`<store>-purge`), pick a ready pod
//! injected for it, and `POST /purge` to that sidecar's admin port through
//! the kube-apiserver's pod proxy. One sidecar is enough: the purge lands in
//! the store every replica shares, and the sidecar answers only once the
//! store acknowledged it. The token travels in `Sametag-Purge-Token`, since
//! the apiserver strips `Authorization` before proxying.

use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::children::{PURGE_TOKEN_KEY, STORE_LABEL, names};
use crate::config::InvalidateArgs;
use crate::crd::ETagStore;
use crate::webhook::inject::SIDECAR_NAME;

/// Name of the sidecar's admin container port (set by the webhook).
const ADMIN_PORT_NAME: &str = "sametag-admin";
/// The header the sidecar's purge API reads the token from.
const TOKEN_HEADER: &str = "sametag-purge-token";

/// Why one store could not be purged.
#[derive(Debug, thiserror::Error)]
pub enum InvalidateError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no ETagStore {0}")]
    NoStore(String),
    #[error("no ETagStores in {0}")]
    NoStores(String),
    #[error("Secret {0} holds no purge token (key {PURGE_TOKEN_KEY:?}); is the operator running?")]
    NoToken(String),
    #[error("no ready pod with the sametag sidecar (label {STORE_LABEL}={0})")]
    NoReadyPod(String),
    #[error("the sidecar refused the purge ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("every ready pod failed; last: {0}")]
    AllPodsFailed(String),
}

/// The purge API's request body.
#[derive(Serialize)]
struct PurgeBody<'a> {
    paths: &'a [String],
    keys: &'a [String],
}

/// Run the subcommand; prints one line per store. `Ok(false)` when a store
/// failed (already reported).
pub async fn run(args: InvalidateArgs) -> Result<bool, InvalidateError> {
    let client = Client::try_default().await?;
    let stores = stores(&client, &args).await?;
    let mut all_ok = true;
    for store in stores {
        let ns = store.namespace().unwrap_or_default();
        let name = store.name_any();
        match purge_store(&client, &ns, &name, &args).await {
            Ok((pod, answer)) => println!("ok    {ns}/{name} (via pod {pod}): {answer}"),
            Err(e) => {
                all_ok = false;
                println!("FAIL  {ns}/{name}: {e}");
            }
        }
    }
    Ok(all_ok)
}

/// The stores the flags name, in a stable order.
async fn stores(client: &Client, args: &InvalidateArgs) -> Result<Vec<ETagStore>, InvalidateError> {
    let (api, scope): (Api<ETagStore>, String) = if args.all_namespaces {
        (Api::all(client.clone()), "any namespace".into())
    } else {
        let ns = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        (
            Api::namespaced(client.clone(), &ns),
            format!("namespace {ns}"),
        )
    };
    let mut found = api.list(&ListParams::default()).await?.items;
    found.sort_by_key(|s| (s.namespace(), s.name_any()));
    if args.stores.is_empty() {
        if found.is_empty() {
            return Err(InvalidateError::NoStores(scope));
        }
        return Ok(found);
    }
    for wanted in &args.stores {
        if !found.iter().any(|s| s.name_any() == *wanted) {
            return Err(InvalidateError::NoStore(format!("{wanted} in {scope}")));
        }
    }
    found.retain(|s| args.stores.contains(&s.name_any()));
    Ok(found)
}

/// Purge in one store through the first ready sidecar that answers.
async fn purge_store(
    client: &Client,
    ns: &str,
    store: &str,
    args: &InvalidateArgs,
) -> Result<(String, String), InvalidateError> {
    let secret_name = names::purge(store);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = secrets
        .get_opt(&secret_name)
        .await?
        .and_then(|s| s.data?.remove(PURGE_TOKEN_KEY))
        .and_then(|v| String::from_utf8(v.0).ok())
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| InvalidateError::NoToken(format!("{ns}/{secret_name}")))?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{STORE_LABEL}={store}")))
        .await?;
    let targets: Vec<(String, i32)> = listed.items.iter().filter_map(ready_admin).collect();
    if targets.is_empty() {
        return Err(InvalidateError::NoReadyPod(store.to_owned()));
    }
    let body = serde_json::to_vec(&PurgeBody {
        paths: &args.paths,
        keys: &args.keys,
    })
    .map_err(|e| InvalidateError::AllPodsFailed(e.to_string()))?;
    let mut last = String::new();
    for (pod, port) in targets {
        match post(client, ns, &pod, port, &token, body.clone(), args.timeout).await {
            Ok(Answer::Done(text)) => return Ok((pod, text)),
            // The request itself is wrong (or the token): another pod
            // would say the same.
            Ok(Answer::Refused(status, body)) => {
                return Err(InvalidateError::Refused { status, body });
            }
            Ok(Answer::Failed(why)) => last = format!("pod {pod}: {why}"),
            Err(e) => last = format!("pod {pod}: {e}"),
        }
    }
    Err(InvalidateError::AllPodsFailed(last))
}

/// What one sidecar answered.
enum Answer {
    /// 2xx: the store acknowledged; the sidecar's summary.
    Done(String),
    /// 4xx: the request or the token is wrong.
    Refused(u16, String),
    /// 5xx, timeout: try another pod.
    Failed(String),
}

async fn post(
    client: &Client,
    ns: &str,
    pod: &str,
    port: i32,
    token: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, InvalidateError> {
    let uri = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/purge");
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(TOKEN_HEADER, token.trim())
        .body(kube::client::Body::from(body))
        .map_err(|e| InvalidateError::AllPodsFailed(e.to_string()))?;
    let sent = tokio::time::timeout(timeout, async {
        let response = client.send(req).await?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, kube::Error>((status, String::from_utf8_lossy(&bytes).trim().to_owned()))
    })
    .await;
    let (status, text) = match sent {
        Err(_) => return Ok(Answer::Failed(format!("no answer within {timeout:?}"))),
        Ok(r) => r?,
    };
    Ok(match status {
        200..=299 => Answer::Done(text),
        400..=499 => Answer::Refused(status, text),
        _ => Answer::Failed(format!("{status}: {text}")),
    })
}

/// A running, ready pod's name and its sidecar's admin port.
fn ready_admin(pod: &Pod) -> Option<(String, i32)> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let port = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name == SIDECAR_NAME)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))?
        .container_port;
    Some((pod.name_any(), port))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ready: &str, ports: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {
                "initContainers": [{"name": "sametag-sidecar", "ports": ports}],
                "containers": [{"name": "app"}]
            },
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_ready_injected_pod_yields_its_admin_port() {
        let ports = json!([{"name": "http", "containerPort": 15080},
                           {"name": "sametag-admin", "containerPort": 9902}]);
        assert_eq!(
            ready_admin(&pod("True", ports.clone())),
            Some(("web-1".into(), 9902))
        );
        assert_eq!(ready_admin(&pod("False", ports)), None);
        assert_eq!(
            ready_admin(&pod("True", json!([{"name": "http", "containerPort": 1}]))),
            None
        );
    }

    #[test]
    fn the_body_is_what_the_purge_api_reads() {
        let body = serde_json::to_value(PurgeBody {
            paths: &["/items/**".into()],
            keys: &["user-7".into()],
        })
        .unwrap();
        assert_eq!(body, json!({"paths": ["/items/**"], "keys": ["user-7"]}));
    }
}
