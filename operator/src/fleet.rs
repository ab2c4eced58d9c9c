//! No silent mixed fleets: which pods of a namespace opted in for a store,
//! which of them carry its sidecar, and which run an outdated one; plus the
//! Services whose `targetPort` reaches the app past the sidecar.
//!
//! A pod admitted while the webhook was down (`failurePolicy: Ignore`) runs
//! without the sidecar and mints its own ETags again, so the replicas
//! disagree once more: the store's `SidecarsInjected` condition, an Event
//! and `sametag_pods_without_sidecar` say so. Pure functions over listed
//! objects, so they are tested without a cluster.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::children::STORE_LABEL;
use crate::crd::ETagStore;
use crate::webhook::inject::{self, INJECT, SIDECAR_NAME, STORE_ANNOTATION};

/// Condition type: every opted-in pod runs the current sidecar.
pub const SIDECARS_INJECTED: &str = "SidecarsInjected";
/// Reason: some opted-in pods run without the sidecar.
pub const PODS_WITHOUT_SIDECAR: &str = "PodsWithoutSidecar";
/// Reason: some injected pods run another sidecar image than the current.
pub const OUTDATED_SIDECAR: &str = "OutdatedSidecar";
/// Reason: every opted-in pod runs the current sidecar.
pub const ALL_INJECTED: &str = "AllInjected";
/// Reason: no pod opted in for the store.
pub const NO_PODS: &str = "NoOptedInPods";
/// Event reason for a Service whose targetPort bypasses the sidecar.
pub const SERVICE_BYPASSES_SIDECAR: &str = "ServiceBypassesSidecar";
/// How many pod names a condition message lists.
pub const NAMES_SHOWN: usize = 5;

/// The pods of one store, as one survey found them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Pods that opted in for the store, with or without the sidecar.
    pub opted_in: i32,
    /// Pods carrying the store's sidecar.
    pub injected: i32,
    /// Opted-in pods without the sidecar, by name (sorted).
    pub without_sidecar: Vec<String>,
    /// Injected pods running another image, `(pod, image)` (sorted).
    pub outdated: Vec<(String, String)>,
    /// The image the webhook injects now.
    pub image: String,
}

/// Whether a pod still counts: not finished, not being deleted.
fn live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The sidecar container of `pod`, if it has one.
fn sidecar(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == SIDECAR_NAME)
}

/// Survey `pods` (every pod of the store's namespace) for the store `name`.
/// `stores` names every store of the namespace (a pod that names none is
/// the only store's, or, with several, every store's: the webhook refused
/// it), `namespace_enabled` whether the namespace carries the opt-in label,
/// `image` the sidecar image the webhook would inject now.
pub fn survey(
    name: &str,
    stores: &[String],
    namespace_enabled: bool,
    pods: &[Pod],
    image: &str,
) -> Fleet {
    let mut fleet = Fleet {
        image: image.to_owned(),
        ..Fleet::default()
    };
    for pod in pods.iter().filter(|p| live(p)) {
        let pod_name = pod.name_any();
        match pod.labels().get(STORE_LABEL) {
            // Injected for this store (the webhook's label).
            Some(s) if s == name => {
                fleet.opted_in += 1;
                match sidecar(pod) {
                    Some(c) => {
                        fleet.injected += 1;
                        let running = c.image.clone().unwrap_or_default();
                        if running != image {
                            fleet.outdated.push((pod_name, running));
                        }
                    }
                    // Labelled by hand: admitted to Redis, but no sidecar.
                    None => fleet.without_sidecar.push(pod_name),
                }
            }
            // Another store's.
            Some(_) => {}
            None => {
                if sidecar(pod).is_some() || !inject::wants_injection(pod, namespace_enabled) {
                    continue;
                }
                let mine = match pod.annotations().get(STORE_ANNOTATION) {
                    Some(s) => s == name,
                    None => stores.iter().any(|s| s == name),
                };
                if mine {
                    fleet.opted_in += 1;
                    fleet.without_sidecar.push(pod_name);
                }
            }
        }
    }
    fleet.without_sidecar.sort();
    fleet.outdated.sort();
    fleet
}

fn listed(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

impl Fleet {
    /// `injected/optedIn`, the `kubectl get ets` column.
    pub fn summary(&self) -> String {
        format!("{}/{}", self.injected, self.opted_in)
    }

    /// The `SidecarsInjected` condition: (status, reason, message).
    pub fn condition(&self) -> (bool, &'static str, String) {
        let outdated = || {
            let names: Vec<String> = self
                .outdated
                .iter()
                .map(|(pod, image)| format!("{pod} ({image})"))
                .collect();
            format!(
                "{} of {} injected pods run another sidecar image than {}: {}; restart their workloads to update them",
                self.outdated.len(),
                self.injected,
                self.image,
                listed(&names)
            )
        };
        if !self.without_sidecar.is_empty() {
            let mut message = format!(
                "{} of {} opted-in pods run without the sidecar (admitted while the webhook was unavailable, or refused by it) and mint their own ETags: {}; recreate them (kubectl rollout restart) once the webhook answers",
                self.without_sidecar.len(),
                self.opted_in,
                listed(&self.without_sidecar)
            );
            if !self.outdated.is_empty() {
                message = format!("{message}. Also: {}", outdated());
            }
            (false, PODS_WITHOUT_SIDECAR, message)
        } else if !self.outdated.is_empty() {
            (false, OUTDATED_SIDECAR, outdated())
        } else if self.opted_in == 0 {
            (true, NO_PODS, "no running pod opted in".to_owned())
        } else {
            (
                true,
                ALL_INJECTED,
                format!(
                    "{}/{} opted-in pods run the current sidecar ({})",
                    self.injected, self.opted_in, self.image
                ),
            )
        }
    }
}

/// A Service port that reaches the app of an injected pod directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bypass {
    /// The Service.
    pub service: String,
    /// Its port (name or number, as written).
    pub port: String,
    /// The app port it reaches.
    pub app_port: i32,
}

impl Bypass {
    /// The Event note.
    pub fn message(&self, namespace: &str) -> String {
        format!(
            "Service {namespace}/{} port {} targets the app's port {} directly, bypassing the sametag sidecar (its replicas answer with their own ETags): set targetPort to the port's name",
            self.service, self.port, self.app_port
        )
    }
}

/// The app port the sidecar of `pod` fronts (from its `SAMETAG_UPSTREAM`).
fn app_port(pod: &Pod) -> Option<i32> {
    let env = sidecar(pod)?.env.as_ref()?;
    let upstream = env.iter().find(|e| e.name == "SAMETAG_UPSTREAM")?;
    upstream.value.as_ref()?.rsplit_once(':')?.1.parse().ok()
}

/// `target` resolved against the container ports of `pod`.
fn resolve(pod: &Pod, target: &IntOrString) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => {
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }
    }
}

/// The ports of `services` that select an injected pod of `pods` (the
/// store's) and reach its app port instead of the sidecar: a numeric
/// `targetPort` equal to the app port (or none, which means the port number),
/// or the app port's new name.
pub fn bypasses(services: &[Service], pods: &[Pod]) -> Vec<Bypass> {
    let injected: Vec<(&Pod, i32)> = pods
        .iter()
        .filter(|p| live(p))
        .filter_map(|p| Some((p, app_port(p)?)))
        .collect();
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let selected = injected.iter().filter(|(p, _)| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        for (pod, app) in selected {
            for port in spec.ports.iter().flatten() {
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                if resolve(pod, &target) == Some(*app) {
                    let b = Bypass {
                        service: svc.name_any(),
                        port: port.name.clone().unwrap_or_else(|| port.port.to_string()),
                        app_port: *app,
                    };
                    if !out.contains(&b) {
                        out.push(b);
                    }
                }
            }
        }
    }
    out
}

/// The stores of the namespace (`stores`) that a change to the pod with
/// `meta` may concern: the store it was injected for, the one it names, or
/// every one (it may have opted in through the namespace label); none when
/// it opted out.
pub fn stores_for_pod(meta: &ObjectMeta, stores: &[String]) -> Vec<String> {
    let get = |m: &Option<std::collections::BTreeMap<String, String>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).cloned()
    };
    if let Some(s) = get(&meta.labels, STORE_LABEL) {
        return vec![s];
    }
    if get(&meta.annotations, INJECT).as_deref() == Some("false") {
        return Vec::new();
    }
    match get(&meta.annotations, STORE_ANNOTATION) {
        Some(s) => vec![s],
        None => stores.to_vec(),
    }
}

/// Maps a pod's change to the stores it may concern, from the controller's
/// cache of ETagStores.
pub fn pod_mapper(
    stores: Store<ETagStore>,
) -> impl Fn(PartialObjectMeta<Pod>) -> Vec<ObjectRef<ETagStore>> + Send + Sync + 'static {
    move |pod| {
        let Some(ns) = pod.namespace() else {
            return Vec::new();
        };
        let here: Vec<String> = stores
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
            .map(|s| s.name_any())
            .collect();
        stores_for_pod(&pod.metadata, &here)
            .iter()
            .map(|s| ObjectRef::new(s).within(&ns))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;
    use crate::webhook::inject::InjectConfig;
    use serde_json::json;

    fn pod(name: &str, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "shop", "annotations": annotations, "labels": {"app": "web"} },
            "spec": { "containers": [{ "name": "app", "image": "app:1",
                "ports": [{ "name": "http", "containerPort": 8080 }] }] },
        }))
        .unwrap()
    }

    fn injected(name: &str, image: Option<&str>) -> Pod {
        let mut store = fixtures::managed();
        store.spec.sidecar.image = image.map(str::to_owned);
        let p = pod(name, json!({ INJECT: "true" }));
        inject::inject(&p, "shop", &store, &InjectConfig::default()).unwrap()
    }

    const IMAGE: &str = crate::config::DEFAULT_SIDECAR_IMAGE;

    #[test]
    fn counts_injected_uninjected_and_outdated_pods() {
        let mut done = pod("done", json!({ INJECT: "true" }));
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        let pods = vec![
            injected("a", None),
            injected("b", Some("old:1")),
            pod("c", json!({ INJECT: "true" })),
            pod("d", json!({ INJECT: "true", STORE_ANNOTATION: "other" })),
            pod("e", json!({})),
            pod("f", json!({ INJECT: "false" })),
            done,
        ];
        let stores = vec!["cache".to_owned(), "other".to_owned()];
        let f = survey("cache", &stores, false, &pods, IMAGE);
        assert_eq!((f.opted_in, f.injected), (3, 2), "{f:?}");
        assert_eq!(f.without_sidecar, ["c"]);
        assert_eq!(f.outdated, [("b".to_owned(), "old:1".to_owned())]);
        assert_eq!(f.summary(), "2/3");
        let (ok, reason, message) = f.condition();
        assert!(!ok);
        assert_eq!(reason, PODS_WITHOUT_SIDECAR);
        assert!(
            message.contains("1 of 3") && message.contains(": c;"),
            "{message}"
        );
        assert!(message.contains("b (old:1)"), "{message}");
        // The namespace label opts `e` in too.
        let f = survey("cache", &["cache".to_owned()], true, &pods, IMAGE);
        assert_eq!(f.without_sidecar, ["c", "e"]);
        // Another store's pod is not ours.
        let f = survey("other", &stores, false, &pods, IMAGE);
        assert_eq!((f.opted_in, f.injected), (2, 0));
    }

    #[test]
    fn outdated_alone_and_all_injected() {
        let f = survey("cache", &[], false, &[injected("a", Some("old:1"))], IMAGE);
        assert_eq!(f.condition().1, OUTDATED_SIDECAR);
        let f = survey("cache", &[], false, &[injected("a", None)], IMAGE);
        let (ok, reason, message) = f.condition();
        assert!(ok && reason == ALL_INJECTED, "{message}");
        assert_eq!(
            survey("cache", &[], false, &[], IMAGE).condition().1,
            NO_PODS
        );
    }

    #[test]
    fn message_names_at_most_a_few_pods() {
        let pods: Vec<Pod> = (0..8)
            .map(|i| pod(&format!("p{i}"), json!({ INJECT: "true" })))
            .collect();
        let f = survey("cache", &["cache".to_owned()], false, &pods, IMAGE);
        let (_, _, message) = f.condition();
        assert!(message.contains("p4 and 3 more"), "{message}");
        assert!(!message.contains("p5"), "{message}");
    }

    fn service(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "selector": { "app": "web" },
                      "ports": [{ "name": "web", "port": 80, "targetPort": target }] },
        }))
        .unwrap()
    }

    #[test]
    fn numeric_target_port_bypasses_the_sidecar_named_does_not() {
        let pods = [injected("a", None)];
        let b = bypasses(&[service(json!(8080))], &pods);
        assert_eq!(
            b,
            [Bypass {
                service: "web".into(),
                port: "web".into(),
                app_port: 8080
            }]
        );
        assert!(b[0].message("shop").contains("targetPort"));
        // The name moved to the sidecar: it reaches the sidecar.
        assert!(bypasses(&[service(json!("http"))], &pods).is_empty());
        // The app port's new name reaches the app.
        assert_eq!(bypasses(&[service(json!("app-http"))], &pods).len(), 1);
        // Another numeric port (metrics, ...) is not app traffic.
        assert!(bypasses(&[service(json!(9090))], &pods).is_empty());
        // A Service selecting no injected pod says nothing.
        assert!(bypasses(&[service(json!(8080))], &[pod("x", json!({}))]).is_empty());
    }

    #[test]
    fn a_pod_wakes_the_stores_it_may_concern() {
        let stores = ["a".to_owned(), "b".to_owned()];
        let m = |v: serde_json::Value| pod("p", v).metadata;
        assert_eq!(stores_for_pod(&m(json!({})), &stores), ["a", "b"]);
        assert_eq!(
            stores_for_pod(&m(json!({ STORE_ANNOTATION: "b" })), &stores),
            ["b"]
        );
        assert!(stores_for_pod(&m(json!({ INJECT: "false" })), &stores).is_empty());
        let injected = injected("x", None).metadata;
        assert_eq!(stores_for_pod(&injected, &stores), ["cache"]);
    }
}
