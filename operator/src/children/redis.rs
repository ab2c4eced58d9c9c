//! The Redis StatefulSet of a managed store: pod 0 is the primary, further
//! pods replicate it (in failover mode the sentinels pick the primary:
//! [`sentinel::make_failover_member`]); restricted security context, probes,
//! default requests, soft spreading, and either an emptyDir or a
//! PersistentVolumeClaim for /data.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    AUTH_CONF_KEY, AUTH_DIR, BuildError, PASSWORD_KEY, REDIS_PORT, meta, names, redis_config,
    selector_labels, sentinel,
};
use crate::crd::{ETagStore, ManagedRedis};

/// UID/GID of the `redis` user in the official images.
pub const REDIS_UID: i64 = 999;
/// Annotation on the pod template carrying a hash of redis.conf, so a config
/// change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "sametag.dev/config-hash";

// Pod 0 is the primary; the others replicate it. A shell picks the role
// because only the pod index (downward API label) tells them apart. The
// server is whichever the image has (engine-neutral: Valkey's images ship
// `valkey-server`, with or without `redis-*` links). No password on this
// command line (`ps` would show it): redis.conf includes the ACL users and
// masterauth from the Secret mounted at AUTH_DIR.
pub const START_SCRIPT: &str = r#"set -e
set -- /etc/redis/redis.conf
if [ "${POD_INDEX:-0}" != "0" ]; then set -- "$@" --replicaof "$PRIMARY_HOST" 6379; fi
server=$(command -v valkey-server || command -v redis-server) || { echo "the image has neither valkey-server nor redis-server" >&2; exit 127; }
exec "$server" "$@""#;

/// The readiness probe: a PING with whichever CLI the image has; the
/// password comes from the environment, never from argv (`redis-cli` reads
/// `REDISCLI_AUTH`, `valkey-cli` `VALKEYCLI_AUTH`).
pub const READY_PROBE: &str = r#"cli=$(command -v valkey-cli || command -v redis-cli) && VALKEYCLI_AUTH="$REDISCLI_AUTH" "$cli" -p 6379 ping | grep -q PONG"#;

/// The StatefulSet running Redis for `store`; with `omit_uids` the platform
/// picks the UID, GID and fsGroup (OpenShift restricted-v2).
pub fn desired(
    store: &ETagStore,
    redis: &ManagedRedis,
    omit_uids: bool,
) -> Result<StatefulSet, BuildError> {
    let uid = (!omit_uids).then_some(REDIS_UID);
    let name = store.metadata.name.clone().unwrap_or_default();
    let ns = store.metadata.namespace.clone().unwrap_or_default();
    let conf = redis_config::redis_conf(store, redis);
    let mut pod_labels = super::labels(store);
    pod_labels.extend(selector_labels(store));

    let secret_env = |var: &str| EnvVar {
        name: var.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names::secret(&name),
                key: PASSWORD_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let env = vec![
        // redis-cli reads the password from here (probes), keeping it off argv.
        secret_env("REDISCLI_AUTH"),
        EnvVar {
            name: "POD_INDEX".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.labels['apps.kubernetes.io/pod-index']".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        EnvVar {
            name: "PRIMARY_HOST".into(),
            value: Some(format!(
                "{}-0.{}.{ns}.svc",
                names::redis(&name),
                names::headless(&name)
            )),
            ..EnvVar::default()
        },
    ];

    let tcp = || TCPSocketAction {
        port: IntOrString::String("redis".into()),
        ..TCPSocketAction::default()
    };
    let container = Container {
        name: "redis".into(),
        image: Some(redis.image().to_owned()),
        command: Some(vec!["sh".into(), "-c".into(), START_SCRIPT.into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(
            redis
                .resources
                .clone()
                .unwrap_or_else(sentinel::default_redis_resources),
        ),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/redis".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "auth".into(),
                mount_path: AUTH_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        startup_probe: Some(Probe {
            tcp_socket: Some(tcp()),
            period_seconds: Some(2),
            failure_threshold: Some(30),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), READY_PROBE.into()]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(tcp()),
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        security_context: Some(restricted_container(uid)),
        ..Container::default()
    };

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::redis_config(&name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    // The ACL users and masterauth (redis.conf includes them), readable by
    // the pod's group only.
    volumes.push(Volume {
        name: "auth".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::secret(&name)),
            items: Some(vec![KeyToPath {
                key: AUTH_CONF_KEY.into(),
                path: AUTH_CONF_KEY.into(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    let claims = match &redis.storage {
        Some(storage) => Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(super::labels(store)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(storage.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]),
        None => {
            // The root filesystem is read-only; Redis still needs a writable dir.
            volumes.push(Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            None
        }
    };

    let mut pod = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod(uid)),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    sentinel::schedule(&mut pod, redis, selector_labels(store));
    let mut sts = StatefulSet {
        metadata: meta(store, names::redis(&name))?,
        spec: Some(StatefulSetSpec {
            replicas: Some(redis.replicas),
            service_name: Some(names::headless(&name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(store)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        format!("{:016x}", fnv1a(conf.as_bytes())),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        status: None,
    };
    if redis.failover() {
        sentinel::make_failover_member(store, &mut sts);
    }
    Ok(sts)
}

/// The `restricted` Pod Security Standard for a pod running as `uid`
/// (`None`: as the platform assigns); its containers take
/// [`restricted_container`].
pub fn restricted_pod(uid: Option<i64>) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: uid,
        run_as_group: uid,
        fs_group: uid,
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// The `restricted` Pod Security Standard for a container running as `uid`
/// (`None`: as the platform assigns).
pub fn restricted_container(uid: Option<i64>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: uid,
        run_as_group: uid,
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

// Stable across builds and platforms (std's hasher is not), so upgrading the
// operator does not roll Redis pods for nothing.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;

    fn sts(store: &ETagStore) -> StatefulSet {
        desired(store, store.managed().unwrap(), false).unwrap()
    }

    #[test]
    fn omit_uids_leaves_them_to_the_platform() {
        let store = fixtures::managed();
        let sts = desired(&store, store.managed().unwrap(), true).unwrap();
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(
            (psc.run_as_user, psc.run_as_group, psc.fs_group),
            (None, None, None)
        );
        assert_eq!(psc.run_as_non_root, Some(true));
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn restricted_probed_single_primary_by_default() {
        let s = sts(&fixtures::managed());
        assert_eq!(s.metadata.name.as_deref(), Some("cache-redis"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("cache-redis-headless"));
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(
            c.startup_probe.is_some() && c.readiness_probe.is_some() && c.liveness_probe.is_some()
        );
        // /data is writable through an emptyDir when no storage is requested.
        let vols = pod.volumes.unwrap();
        assert!(
            vols.iter()
                .any(|v| v.name == "data" && v.empty_dir.is_some())
        );
        // No password on redis-server's command line (`ps`): the ACL users
        // come from the Secret's auth.conf, mounted where redis.conf
        // includes it.
        let command = c.command.as_ref().unwrap().join(" ");
        assert!(
            !command.contains("PASSWORD") && !command.contains("pass"),
            "{command}"
        );
        assert!(c.args.is_none());
        let auth = vols.iter().find(|v| v.name == "auth").unwrap();
        let secret = auth.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("cache-redis"));
        assert_eq!(secret.items.as_ref().unwrap()[0].key, "auth.conf");
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "auth" && m.mount_path == "/etc/redis-auth")
        );
        // The probes' password from the Secret, never a literal.
        let env = c.env.as_ref().unwrap();
        let pw = env.iter().find(|e| e.name == "REDISCLI_AUTH").unwrap();
        assert!(pw.value.is_none());
        assert_eq!(
            pw.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "cache-redis"
        );
        // The selector matches the template labels.
        let tl = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(tl.get(&k), Some(&v));
        }
    }

    #[test]
    fn storage_uses_claims_instead_of_empty_dir() {
        let s = sts(&fixtures::with_storage());
        let spec = s.spec.unwrap();
        let claims = spec.volume_claim_templates.unwrap();
        let c = claims[0].spec.as_ref().unwrap();
        assert_eq!(c.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "1Gi"
        );
        let vols = spec.template.spec.unwrap().volumes.unwrap();
        assert!(!vols.iter().any(|v| v.name == "data"));
    }

    #[test]
    fn config_change_changes_the_template_hash() {
        let a = sts(&fixtures::managed());
        let mut store = fixtures::managed();
        store.spec.redis.managed.as_mut().unwrap().maxmemory = "1gb".into();
        let b = sts(&store);
        let hash = |s: &StatefulSet| {
            s.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&sts(&fixtures::managed())));
    }

    #[test]
    fn default_requests_and_soft_spreading_in_every_mode() {
        let pod = sts(&fixtures::managed())
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let req = pod.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert!(
            req.contains_key("cpu") && req.contains_key("memory"),
            "not BestEffort"
        );
        assert_eq!(
            pod.topology_spread_constraints.unwrap()[0].when_unsatisfiable,
            "ScheduleAnyway"
        );
        // Single mode keeps the pod-index start script and no preStop.
        let c = &pod.containers[0];
        assert!(c.command.as_ref().unwrap()[2].contains("POD_INDEX"));
        assert!(c.lifecycle.is_none());
    }

    #[test]
    fn three_replicas_mean_failover_unless_single_is_asked() {
        let mut store = fixtures::managed();
        store.spec.redis.managed.as_mut().unwrap().replicas = 3;
        let pod = sts(&store).spec.unwrap().template.spec.unwrap();
        assert!(pod.containers[0].lifecycle.is_some(), "failover member");
        store.spec.redis.managed.as_mut().unwrap().mode = Some(crate::crd::RedisMode::Single);
        let pod = sts(&store).spec.unwrap().template.spec.unwrap();
        assert!(pod.containers[0].lifecycle.is_none(), "warm standbys");
    }

    #[test]
    fn replicas_follow_the_spec() {
        let mut store = fixtures::managed();
        store.spec.redis.managed.as_mut().unwrap().replicas = 3;
        assert_eq!(sts(&store).spec.unwrap().replicas, Some(3));
    }
}
