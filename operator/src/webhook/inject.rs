//! Sidecar injection as a pure function: which pods opt in, which store they
//! use, and the pod with the sidecar added — turned into a JSON patch by
//! diffing the serialised pod before and after.
//!
//! The port move: the sidecar cannot bind the app's port (the app already
//! listens there in the shared network namespace, and sametag uses no
//! iptables). So the sidecar listens on a new port (15080 by default) that
//! takes over the app port's *name*, and the app's port entry is renamed
//! (`app-<name>`). Services whose `targetPort` names the port now reach the
//! sidecar, which forwards to `127.0.0.1:<app port>`. Services that target
//! the port by number keep reaching the app directly.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    KeyToPath, Pod, Probe, ResourceRequirements, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::children::{
    PURGE_TOKEN_KEY, SIDECAR_PASSWORD_KEY, SIDECAR_USER, STORE_LABEL, names,
    redis::restricted_container,
};
use crate::crd::ETagStore;
use crate::webhook::tuning::{self, Rejected};

/// Annotation/label that opts a pod in (`"true"`) or out (`"false"`).
pub const INJECT: &str = "sametag.dev/inject";
/// Namespace label value that opts every pod of the namespace in.
pub const NAMESPACE_ENABLED: &str = "enabled";
/// Annotation naming the ETagStore.
pub const STORE_ANNOTATION: &str = "sametag.dev/store";
/// Annotation naming the app port (name or number).
pub const PORT_ANNOTATION: &str = "sametag.dev/port";
/// Annotation set on injected pods.
pub const INJECTED: &str = "sametag.dev/injected";
/// Name of the injected container.
pub const SIDECAR_NAME: &str = "sametag-sidecar";
/// Volume holding the policy ConfigMap.
pub const POLICY_VOLUME: &str = "sametag-policy";
/// Where the policy is mounted.
pub const POLICY_DIR: &str = "/etc/sametag";
/// Volume holding the store's purge token (its `<store>-purge` Secret).
pub const PURGE_VOLUME: &str = "sametag-purge";
/// Where the purge token is mounted in the sidecar.
pub const PURGE_DIR: &str = "/etc/sametag-purge";
/// UID the sidecar runs as (distroless `nonroot`).
pub const SIDECAR_UID: i64 = 65532;
/// Name of the sidecar port when the app port has none.
pub const DEFAULT_PORT_NAME: &str = "sametag-http";

/// What the operator's flags contribute to an injection.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// Sidecar image when the store names none.
    pub default_image: String,
    /// Preferred sidecar port (the next free one is used when taken).
    pub sidecar_port: u16,
    /// Preferred sidecar admin port.
    pub admin_port: u16,
    /// Leave the sidecar's UID and GID to the platform (`--omit-uids`).
    pub omit_uids: bool,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            default_image: crate::config::DEFAULT_SIDECAR_IMAGE.into(),
            sidecar_port: 15080,
            admin_port: 9901,
            omit_uids: false,
        }
    }
}

/// Why a pod that asked for injection was not injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The store named by the annotation does not exist.
    #[error("ETagStore {0:?} (annotation {STORE_ANNOTATION}) does not exist in namespace {1}")]
    UnknownStore(String, String),
    /// No store in the namespace.
    #[error("no ETagStore in namespace {0}; create one or set {STORE_ANNOTATION}")]
    NoStore(String),
    /// Several stores and no annotation.
    #[error("{0} ETagStores in namespace {1}; set the {STORE_ANNOTATION} annotation to pick one")]
    Ambiguous(usize, String),
    /// `sametag.dev/port` names a port no container declares.
    #[error("annotation {PORT_ANNOTATION}={0:?} matches no container port")]
    PortNotFound(String),
    /// No annotation and no container declares a port.
    #[error("no container declares a port; set {PORT_ANNOTATION} to the port the app listens on")]
    NoAppPort,
    /// The pod has no containers.
    #[error("pod has no containers")]
    NoContainers,
    /// No free port left for the sidecar.
    #[error("no free port for the sidecar")]
    NoFreePort,
    /// The pod could not be serialised for the diff.
    #[error("serialize: {0}")]
    Serialize(String),
}

fn flag(map: Option<&BTreeMap<String, String>>, key: &str) -> Option<bool> {
    match map?.get(key)?.as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Whether `pod` opted in: its own annotation (or label) wins, then the
/// namespace label.
pub fn wants_injection(pod: &Pod, namespace_enabled: bool) -> bool {
    let own = flag(pod.metadata.annotations.as_ref(), INJECT)
        .or_else(|| flag(pod.metadata.labels.as_ref(), INJECT));
    own.unwrap_or(namespace_enabled)
}

/// Whether `pod` already carries the sidecar.
pub fn already_injected(pod: &Pod) -> bool {
    pod.annotations().get(INJECTED).is_some_and(|v| v == "true")
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| ics.iter().any(|c| c.name == SIDECAR_NAME))
}

/// The store `pod` uses among `stores` (those of its namespace).
pub fn choose_store<'a>(
    pod: &Pod,
    namespace: &str,
    stores: &'a [ETagStore],
) -> Result<&'a ETagStore, InjectError> {
    match pod.annotations().get(STORE_ANNOTATION) {
        Some(name) => stores
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            .ok_or_else(|| InjectError::UnknownStore(name.clone(), namespace.to_owned())),
        None => match stores {
            [only] => Ok(only),
            [] => Err(InjectError::NoStore(namespace.to_owned())),
            many => Err(InjectError::Ambiguous(many.len(), namespace.to_owned())),
        },
    }
}

/// The JSON patch that injects the sidecar for `store` into `pod` (empty when
/// the pod already has it), and the tuning annotations it left out.
pub fn patch(
    pod: &Pod,
    namespace: &str,
    store: &ETagStore,
    cfg: &InjectConfig,
) -> Result<(json_patch::Patch, Vec<Rejected>), InjectError> {
    let (after, rejected) = inject_tuned(pod, namespace, store, cfg)?;
    let ser = |p: &Pod| serde_json::to_value(p).map_err(|e| InjectError::Serialize(e.to_string()));
    Ok((json_patch::diff(&ser(pod)?, &ser(&after)?), rejected))
}

/// The app port: which container, which port entry (if declared), its number.
struct AppPort {
    container: usize,
    entry: Option<usize>,
    number: i32,
}

fn find_app_port(pod: &Pod) -> Result<AppPort, InjectError> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    let ports = |c: &Container| c.ports.clone().unwrap_or_default();
    match pod.annotations().get(PORT_ANNOTATION) {
        Some(want) => {
            let by_number = want.parse::<i32>().ok();
            for (ci, c) in containers.iter().enumerate() {
                for (pi, p) in ports(c).iter().enumerate() {
                    if p.name.as_deref() == Some(want.as_str())
                        || Some(p.container_port) == by_number
                    {
                        return Ok(AppPort {
                            container: ci,
                            entry: Some(pi),
                            number: p.container_port,
                        });
                    }
                }
            }
            match by_number {
                // An undeclared numeric port: the app still listens there.
                Some(n) if (1..=65535).contains(&n) => Ok(AppPort {
                    container: 0,
                    entry: None,
                    number: n,
                }),
                _ => Err(InjectError::PortNotFound(want.clone())),
            }
        }
        None => containers
            .iter()
            .enumerate()
            .find_map(|(ci, c)| {
                ports(c).first().map(|p| AppPort {
                    container: ci,
                    entry: Some(0),
                    number: p.container_port,
                })
            })
            .ok_or(InjectError::NoAppPort),
    }
}

fn free_port(preferred: u16, used: &BTreeSet<i32>) -> Result<i32, InjectError> {
    (i32::from(preferred)..=65535)
        .find(|p| !used.contains(p))
        .ok_or(InjectError::NoFreePort)
}

/// `app-<name>`, a valid IANA service name of at most 15 characters, not in `taken`.
fn renamed(name: &str, taken: &BTreeSet<String>) -> String {
    let base: String = format!("app-{name}").chars().take(15).collect();
    let base = base.trim_end_matches('-').to_owned();
    if !taken.contains(&base) {
        return base;
    }
    (2..100)
        .map(|i| {
            let suffix = format!("-{i}");
            let head: String = base.chars().take(15 - suffix.len()).collect();
            format!("{}{suffix}", head.trim_end_matches('-'))
        })
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| "sametag-app".to_owned())
}

fn rename_probe_port(probe: &mut Option<Probe>, from: &str, to: &str) {
    let Some(p) = probe.as_mut() else { return };
    let swap = |port: &mut IntOrString| {
        if *port == IntOrString::String(from.to_owned()) {
            *port = IntOrString::String(to.to_owned());
        }
    };
    if let Some(h) = p.http_get.as_mut() {
        swap(&mut h.port);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        swap(&mut t.port);
    }
}

/// `pod` with the sidecar for `store` added (unchanged if already injected).
pub fn inject(
    pod: &Pod,
    namespace: &str,
    store: &ETagStore,
    cfg: &InjectConfig,
) -> Result<Pod, InjectError> {
    inject_tuned(pod, namespace, store, cfg).map(|(pod, _)| pod)
}

/// [`inject`], and the `config.sametag.dev/*` annotations it left out
/// because their values are invalid (see [`tuning`]).
pub fn inject_tuned(
    pod: &Pod,
    namespace: &str,
    store: &ETagStore,
    cfg: &InjectConfig,
) -> Result<(Pod, Vec<Rejected>), InjectError> {
    if already_injected(pod) {
        return Ok((pod.clone(), Vec::new()));
    }
    let (tuning, mut rejected) = tuning::read(pod.metadata.annotations.as_ref());
    let app = find_app_port(pod)?;
    let mut out = pod.clone();
    let Some(spec) = out.spec.as_mut() else {
        return Err(InjectError::NoContainers);
    };

    let all_ports = || {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
    };
    let mut used: BTreeSet<i32> = all_ports().map(|p| p.container_port).collect();
    used.insert(app.number);
    let taken_names: BTreeSet<String> = all_ports().filter_map(|p| p.name.clone()).collect();
    let listen = free_port(cfg.sidecar_port, &used)?;
    used.insert(listen);
    let admin = free_port(cfg.admin_port, &used)?;

    // Move the app port's name to the sidecar so Services that target it by
    // name reach the sidecar; the app keeps its port under a new name.
    let mut port_name = DEFAULT_PORT_NAME.to_owned();
    if let Some(entry) = app.entry {
        let c = &mut spec.containers[app.container];
        if let Some(p) = c.ports.as_mut().and_then(|ps| ps.get_mut(entry))
            && let Some(old) = p.name.clone()
        {
            let new = renamed(&old, &taken_names);
            p.name = Some(new.clone());
            for probe in [
                &mut c.readiness_probe,
                &mut c.liveness_probe,
                &mut c.startup_probe,
            ] {
                rename_probe_port(probe, &old, &new);
            }
            port_name = old;
        }
    }

    let mut container = sidecar(namespace, store, cfg, listen, admin, &port_name, app.number);
    rejected.extend(tuning.apply(spec, &mut container));
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(container);
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: POLICY_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::policy(&store.name_any()),
            optional: Some(true),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    // Every reference but an external store's CA bundle (`ca_volume`) is
    // optional, so a pod never waits on its store: one
    // admitted before the store's first reconcile starts, and so does a
    // sidecar restarting after its ETagStore was deleted (its children are
    // garbage-collected). Without the password the store refuses the
    // sidecar, which serves degraded (content-derived tags, Validate); without the policy
    // file it uses the default policy (SAMETAG_POLICY_OPTIONAL); without the
    // purge token, purges are refused.
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: PURGE_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::purge(&store.name_any())),
            optional: Some(true),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    if let Some(ca) = ca_volume(store) {
        spec.volumes.get_or_insert_with(Vec::new).push(ca);
    }
    out.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(STORE_LABEL.into(), store.name_any());
    out.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED.into(), "true".into());
    Ok((out, rejected))
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// Where the sidecar mounts an external store's CA bundle.
pub const REDIS_CA_DIR: &str = "/etc/sametag-redis-ca";
/// Volume holding an external store's CA bundle.
pub const REDIS_CA_VOLUME: &str = "sametag-redis-ca";
/// File name of the CA bundle inside [`REDIS_CA_DIR`].
const REDIS_CA_FILE: &str = "ca.crt";

/// How the sidecar reaches the store: the URL (never with credentials), the
/// ACL user, the password's Secret key (`SAMETAG_REDIS_PASSWORD`: a value
/// the sidecar hands to the client as is, so any character works) and the
/// CA bundle's Secret key, if any.
struct RedisEnv {
    url: String,
    username: Option<String>,
    password: SecretKeySelector,
    ca: Option<(String, String)>,
}

fn redis_env(namespace: &str, store: &ETagStore) -> RedisEnv {
    let name = store.name_any();
    match (&store.spec.redis.managed, &store.spec.redis.external) {
        (None, Some(ext)) => RedisEnv {
            url: ext.url.clone(),
            username: ext.username.clone(),
            password: SecretKeySelector {
                name: ext.secret_ref.name.clone(),
                key: ext.secret_ref.key.clone(),
                optional: Some(true),
            },
            ca: ext
                .ca_secret_ref
                .as_ref()
                .map(|c| (c.name.clone(), c.key.clone())),
        },
        (managed, _) => RedisEnv {
            // Failover: the sentinels name the primary; the credentials are
            // the primary's (sentinels have no AUTH).
            url: if managed.as_ref().is_some_and(|m| m.failover()) {
                crate::children::sentinel::endpoint(store)
            } else {
                format!("redis://{}.{namespace}.svc:6379", names::redis(&name))
            },
            // The managed store's ACL user, confined to this store's keys.
            username: Some(SIDECAR_USER.to_owned()),
            password: SecretKeySelector {
                name: names::secret(&name),
                key: SIDECAR_PASSWORD_KEY.into(),
                optional: Some(true),
            },
            ca: None,
        },
    }
}

fn sidecar(
    namespace: &str,
    store: &ETagStore,
    cfg: &InjectConfig,
    listen: i32,
    admin: i32,
    port_name: &str,
    app_port: i32,
) -> Container {
    let redis = redis_env(namespace, store);
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(admin),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let sc = &store.spec.sidecar;
    let mut container = Container {
        name: SIDECAR_NAME.into(),
        image: Some(
            sc.image
                .clone()
                .unwrap_or_else(|| cfg.default_image.clone()),
        ),
        image_pull_policy: sc.image_pull_policy.map(|p| p.as_str().to_owned()),
        // A native sidecar: starts before and outlives the app containers.
        restart_policy: Some("Always".into()),
        env: Some(vec![
            env("SAMETAG_LISTEN", format!("0.0.0.0:{listen}")),
            env("SAMETAG_UPSTREAM", format!("127.0.0.1:{app_port}")),
            EnvVar {
                name: "SAMETAG_REDIS_PASSWORD".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(redis.password),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            env("SAMETAG_REDIS_URL", redis.url),
            env("SAMETAG_POLICY", format!("{POLICY_DIR}/policy.yaml")),
            env("SAMETAG_POLICY_OPTIONAL", "true".into()),
            env(
                "SAMETAG_STORE_PREFIX",
                format!("{namespace}/{}", store.name_any()),
            ),
            env("SAMETAG_ADMIN", format!("0.0.0.0:{admin}")),
            env(
                "SAMETAG_PURGE_TOKEN_FILE",
                format!("{PURGE_DIR}/{PURGE_TOKEN_KEY}"),
            ),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(port_name.to_owned()),
                container_port: listen,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("sametag-admin".into()),
                container_port: admin,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: POLICY_VOLUME.into(),
                mount_path: POLICY_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: PURGE_VOLUME.into(),
                mount_path: PURGE_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        startup_probe: Some(probe("/healthz", 1, 30)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(sc.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted_container(
            (!cfg.omit_uids).then_some(SIDECAR_UID),
        )),
        ..Container::default()
    };
    let env = container.env.get_or_insert_with(Vec::new);
    if let Some(user) = redis.username {
        env.push(self::env("SAMETAG_REDIS_USERNAME", user));
    }
    if redis.ca.is_some() {
        env.push(self::env(
            "SAMETAG_REDIS_CA_FILE",
            format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}"),
        ));
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: REDIS_CA_VOLUME.into(),
                mount_path: REDIS_CA_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
    }
    container
}

/// The volume holding the store's CA bundle as `ca.crt`, if it names one.
/// Not optional: without its CA the sidecar could not verify the store, so
/// the pod waits for the Secret (an Event says which) rather than start
/// and crash-loop.
fn ca_volume(store: &ETagStore) -> Option<Volume> {
    let ca = store.spec.redis.external.as_ref()?.ca_secret_ref.as_ref()?;
    Some(Volume {
        name: REDIS_CA_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ca.name.clone()),
            items: Some(vec![KeyToPath {
                key: ca.key.clone(),
                path: REDIS_CA_FILE.into(),
                ..KeyToPath::default()
            }]),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    })
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".into())),
            ("memory".to_owned(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("128Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
