//! Failover mode of a managed store: Redis's own Sentinel failover.
//!
//! Three sentinels (quorum 2) run as their own StatefulSet `<store>-sentinel`
//! (the store's Redis image, `redis-server --sentinel`) rather than as a
//! container in each Redis pod: deleting, evicting or rolling the primary pod
//! (the most common disruption) then never takes a voter with it, a Redis
//! pod's restart does not restart a sentinel, and sentinels and Redis pods
//! have their own PodDisruptionBudgets. The Redis StatefulSet keeps its
//! shape; failover mode only swaps its start script and adds a preStop hook.
//!
//! Everything is addressed by stable pod DNS names through headless
//! Services (`resolve-hostnames`/`announce-hostnames`, and each Redis pod
//! announces its own name with `replica-announce-ip`), so a pod that comes
//! back with a new IP keeps its identity and sidecars can reach whatever the
//! sentinels name.
//!
//! Roles are the sentinels' to decide: a Redis pod starts as a replica of
//! the primary they name (pod 0 only on a store's first start, when no
//! sentinel answers yet). A primary that is shut down (deleted, evicted,
//! rolled) first hands its role over with `SENTINEL FAILOVER` in preStop,
//! so a graceful disruption costs a promotion, not `down-after-milliseconds`.
//! A primary that restarted without the hand-over (a crash, an OOM kill)
//! would come back empty yet still named by the sentinels: it asks them to
//! fail over before it starts, instead of serving an empty store as primary.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    LifecycleHandler, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction,
    TopologySpreadConstraint, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BuildError, PASSWORD_KEY, STORE_LABEL, meta, names, selector_labels};
use crate::crd::{ETagStore, ManagedRedis};

/// Port the sentinels listen on.
pub const SENTINEL_PORT: i32 = 26379;
/// Sentinels per store: quorum 2 of 3 survives the loss of any one.
pub const SENTINELS: i32 = 3;
/// Sentinels that must agree the primary is down.
pub const QUORUM: i32 = 2;

/// Shell helper shared by the scripts: `ask` prints the primary the first
/// answering sentinel names (empty when none answers). Sentinels have no
/// password, so the cli must not send the Redis one (REDISCLI_AUTH). The
/// engine's binaries are found as the Redis pod's start script finds them:
/// whichever of `valkey-*`/`redis-*` the image has.
const ASK: &str = r#"cli=$(command -v valkey-cli || command -v redis-cli) || { echo "the image has neither valkey-cli nor redis-cli" >&2; exit 127; }
server=$(command -v valkey-server || command -v redis-server) || { echo "the image has neither valkey-server nor redis-server" >&2; exit 127; }
[ -z "${REDISCLI_AUTH:-}" ] || export VALKEYCLI_AUTH="$REDISCLI_AUTH"
ask() {
  for h in $SENTINEL_HOSTS; do
    a=$(env -u REDISCLI_AUTH -u VALKEYCLI_AUTH timeout 3 "$cli" -h "$h" -p 26379 --raw sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || a=""
    case "$a" in ""|*" "*|ERR*) continue ;; esac
    echo "$a"; return 0
  done
}
all_name_me() {
  for h in $SENTINEL_HOSTS; do
    a=$(env -u REDISCLI_AUTH -u VALKEYCLI_AUTH timeout 3 "$cli" -h "$h" -p 26379 --raw sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || a=""
    [ "$a" = "$me" ] && return 0
  done
  return 1
}
failover() {
  for h in $SENTINEL_HOSTS; do
    if env -u REDISCLI_AUTH -u VALKEYCLI_AUTH timeout 3 "$cli" -h "$h" -p 26379 sentinel failover "$MASTER_NAME" 2>/dev/null | grep -q OK; then return 0; fi
  done
  return 1
}
"#;

/// Start script of a Redis pod in failover mode (after [`ASK`]).
const REDIS_START: &str = r#"set -e
me="$(hostname).$ANNOUNCE_DOMAIN"
primary=$(ask)
if [ "$primary" = "$me" ] && failover; then
  # Restarted without handing over: a replica takes the role first.
  i=0
  while [ "$primary" = "$me" ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); primary=$(ask); done
fi
[ -n "$primary" ] || primary="$PRIMARY_HOST"
set -- /etc/redis/redis.conf --replica-announce-ip "$me"
if [ "$primary" != "$me" ]; then set -- "$@" --replicaof "$primary" 6379; fi
exec "$server" "$@""#;

/// preStop of a Redis pod: a primary hands its role over before it stops
/// and turns replica, so no write lands on it after the promotion, then
/// drops its clients so they ask the sentinels at once instead of getting
/// READONLY until the pod is gone (measured: 16 s of 503s without it).
const REDIS_PRE_STOP: &str = r#"me="$(hostname).$ANNOUNCE_DOMAIN"
[ "$("$cli" -p 6379 role 2>/dev/null | head -n 1)" = master ] || exit 0
failover || exit 0
i=0
while [ $i -lt 20 ]; do
  p=$(ask)
  if [ -n "$p" ] && [ "$p" != "$me" ]; then
    "$cli" -p 6379 replicaof "$p" 6379 >/dev/null 2>&1
    # The other sentinels learn the switch from the leader's hellos: wait
    # (up to 10 s) until none names this pod, so clients sent back to the
    # sentinels find the new primary at the first try.
    j=0
    while [ $j -lt 20 ] && all_name_me; do sleep 0.5; j=$((j+1)); done
    # Clients would get READONLY until this pod is gone: send them to the sentinels now.
    "$cli" -p 6379 client kill type normal >/dev/null 2>&1
    "$cli" -p 6379 client kill type pubsub >/dev/null 2>&1
    exit 0
  fi
  sleep 0.5; i=$((i+1))
done"#;

/// Start script of a sentinel (after [`ASK`]): monitor the primary the other
/// sentinels name (a replaced sentinel must not monitor a demoted pod), or
/// pod 0 on a store's first start.
const SENTINEL_START: &str = r#"set -e
me="$(hostname).$SENTINEL_DOMAIN"
primary=$(ask)
[ -n "$primary" ] || primary="$PRIMARY_HOST"
# Sentinel refuses a monitor target whose name does not resolve yet.
i=0
until [ "$(REDISCLI_AUTH="$REDIS_PASSWORD" VALKEYCLI_AUTH="$REDIS_PASSWORD" timeout 3 "$cli" -h "$primary" -p 6379 ping 2>/dev/null)" = PONG ] || [ $i -ge 60 ]; do i=$((i+1)); sleep 1; done
cat > /data/sentinel.conf <<EOF
port 26379
dir /data
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel monitor $MASTER_NAME $primary 6379 2
sentinel auth-pass $MASTER_NAME $REDIS_PASSWORD
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $MASTER_NAME 1
EOF
exec "$server" /data/sentinel.conf --sentinel"#;

/// The master name the sentinels monitor: the store's name.
pub fn master_name(store: &ETagStore) -> String {
    store.metadata.name.clone().unwrap_or_default()
}

/// The stable DNS names of the sentinels.
pub fn sentinel_hosts(store: &ETagStore) -> Vec<String> {
    let name = master_name(store);
    let ns = store.metadata.namespace.as_deref().unwrap_or_default();
    (0..SENTINELS)
        .map(|i| {
            format!(
                "{}-{i}.{}.{ns}.svc",
                names::sentinel(&name),
                names::sentinel(&name)
            )
        })
        .collect()
}

/// The `redis+sentinel://` endpoint (without credentials) sidecars use.
pub fn endpoint(store: &ETagStore) -> String {
    let hosts: Vec<String> = sentinel_hosts(store)
        .into_iter()
        .map(|h| format!("{h}:{SENTINEL_PORT}"))
        .collect();
    format!(
        "redis+sentinel://{}/{}",
        hosts.join(","),
        master_name(store)
    )
}

/// The labels that select the sentinel pods of `store`.
pub fn sentinel_selector(store: &ETagStore) -> BTreeMap<String, String> {
    let mut l = selector_labels(store);
    l.insert(
        "app.kubernetes.io/name".to_owned(),
        "sametag-sentinel".to_owned(),
    );
    l
}

fn sentinel_meta(store: &ETagStore, name: String) -> Result<ObjectMeta, BuildError> {
    let mut m = meta(store, name)?;
    if let Some(l) = m.labels.as_mut() {
        l.extend(sentinel_selector(store));
    }
    Ok(m)
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn password_env(store: &ETagStore) -> EnvVar {
    EnvVar {
        name: "REDIS_PASSWORD".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names::secret(&master_name(store)),
                key: PASSWORD_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The environment the scripts share: who the sentinels are, the master
/// name, and pod 0's name for a store's first start.
fn shared_env(store: &ETagStore) -> Vec<EnvVar> {
    let name = master_name(store);
    let ns = store.metadata.namespace.as_deref().unwrap_or_default();
    vec![
        env("SENTINEL_HOSTS", sentinel_hosts(store).join(" ")),
        env("MASTER_NAME", name.clone()),
        env(
            "PRIMARY_HOST",
            format!(
                "{}-0.{}.{ns}.svc",
                names::redis(&name),
                names::headless(&name)
            ),
        ),
    ]
}

/// Turn the Redis container of `sts` into a failover member: the sentinel
/// aware start script, its announced name, and the preStop hand-over.
pub fn make_failover_member(store: &ETagStore, sts: &mut StatefulSet) {
    let name = master_name(store);
    let ns = store.metadata.namespace.as_deref().unwrap_or_default();
    let Some(pod) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    // The hand-over waits up to ~10 s for the sentinels.
    pod.termination_grace_period_seconds = Some(40);
    let Some(c) = pod.containers.iter_mut().find(|c| c.name == "redis") else {
        return;
    };
    c.command = Some(vec![
        "sh".into(),
        "-c".into(),
        format!("{ASK}{REDIS_START}"),
    ]);
    let env = c.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != "PRIMARY_HOST");
    env.extend(shared_env(store));
    env.push(self::env(
        "ANNOUNCE_DOMAIN",
        format!("{}.{ns}.svc", names::headless(&name)),
    ));
    c.lifecycle = Some(k8s_openapi::api::core::v1::Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    format!("{ASK}{REDIS_PRE_STOP}"),
                ]),
            }),
            ..LifecycleHandler::default()
        }),
        ..k8s_openapi::api::core::v1::Lifecycle::default()
    });
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.into())),
        ("memory".to_owned(), Quantity(memory.into())),
    ])
}

/// Requests of a Redis container that sets none: Burstable, not BestEffort
/// (first evicted under node pressure), no limits (Redis bounds its own
/// memory with `maxmemory`).
pub fn default_redis_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities("50m", "64Mi")),
        ..ResourceRequirements::default()
    }
}

/// Requests and limits of a sentinel that sets none (it holds a few KiB).
pub fn default_sentinel_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities("10m", "16Mi")),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("64Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Spread `selector`'s pods over nodes when the cluster can (soft: a
/// one-node cluster still schedules them all), then apply the store's
/// `podTemplate` (its affinity replaces the default one).
pub fn schedule(pod: &mut PodSpec, redis: &ManagedRedis, selector: BTreeMap<String, String>) {
    let select = || {
        Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        })
    };
    pod.affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: select(),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });
    pod.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: select(),
        ..TopologySpreadConstraint::default()
    }]);
    let Some(t) = &redis.pod_template else {
        return;
    };
    if let Some(a) = &t.affinity {
        pod.affinity = Some(a.clone());
    }
    if !t.tolerations.is_empty() {
        pod.tolerations = Some(t.tolerations.clone());
    }
    if let Some(p) = &t.priority_class_name {
        pod.priority_class_name = Some(p.clone());
    }
    if !t.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(t.image_pull_secrets.clone());
    }
    if !t.node_selector.is_empty() {
        pod.node_selector = Some(t.node_selector.clone());
    }
}

/// The sentinel StatefulSet: 3 pods, started in parallel.
pub fn desired(
    store: &ETagStore,
    redis: &ManagedRedis,
    omit_uids: bool,
) -> Result<StatefulSet, BuildError> {
    let name = master_name(store);
    let ns = store.metadata.namespace.clone().unwrap_or_default();
    let uid = (!omit_uids).then_some(super::redis::REDIS_UID);
    let spec = redis.sentinel_spec();
    let mut env = vec![password_env(store)];
    env.extend(shared_env(store));
    env.extend([
        self::env(
            "SENTINEL_DOMAIN",
            format!("{}.{ns}.svc", names::sentinel(&name)),
        ),
        self::env("DOWN_AFTER_MS", spec.down_after_milliseconds.to_string()),
        self::env(
            "FAILOVER_TIMEOUT_MS",
            spec.failover_timeout_milliseconds.to_string(),
        ),
    ]);
    let container = Container {
        name: "sentinel".into(),
        image: Some(redis.image().to_owned()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("{ASK}{SENTINEL_START}"),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("sentinel".into()),
            container_port: SENTINEL_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(default_sentinel_resources),
        ),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]),
        // The start script may wait up to a minute for the primary.
        startup_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("sentinel".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(60),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "cli=$(command -v valkey-cli || command -v redis-cli) && \"$cli\" -p 26379 ping | grep -q PONG".into(),
                ]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("sentinel".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        security_context: Some(super::redis::restricted_container(uid)),
        ..Container::default()
    };
    let mut pod = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(super::redis::restricted_pod(uid)),
        containers: vec![container],
        // Sentinel rewrites its configuration file: a writable /data.
        volumes: Some(vec![Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    schedule(&mut pod, redis, sentinel_selector(store));
    let mut labels = super::labels(store);
    labels.extend(sentinel_selector(store));
    Ok(StatefulSet {
        metadata: sentinel_meta(store, names::sentinel(&name))?,
        spec: Some(StatefulSetSpec {
            replicas: Some(SENTINELS),
            service_name: Some(names::sentinel(&name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(sentinel_selector(store)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

/// The headless Service `<store>-sentinel`: the sentinels' stable DNS names
/// (published before they are ready, so they find each other at start).
pub fn headless(store: &ETagStore) -> Result<Service, BuildError> {
    let name = master_name(store);
    Ok(Service {
        metadata: sentinel_meta(store, names::sentinel(&name))?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(sentinel_selector(store)),
            ports: Some(vec![ServicePort {
                name: Some("sentinel".into()),
                port: SENTINEL_PORT,
                target_port: Some(IntOrString::String("sentinel".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn pdb(meta: ObjectMeta, selector: BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            // A pod that never became ready (bad image) may still be evicted.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// PodDisruptionBudget of the Redis pods: one down at a time, so a drain
/// never takes the primary and the replica it fails over to together.
pub fn redis_pdb(store: &ETagStore) -> Result<PodDisruptionBudget, BuildError> {
    let name = master_name(store);
    Ok(pdb(
        meta(store, names::redis_pdb(&name))?,
        selector_labels(store),
    ))
}

/// PodDisruptionBudget of the sentinels: two of three keep the quorum.
pub fn sentinel_pdb(store: &ETagStore) -> Result<PodDisruptionBudget, BuildError> {
    let name = master_name(store);
    Ok(pdb(
        sentinel_meta(store, names::sentinel(&name))?,
        sentinel_selector(store),
    ))
}

/// The NetworkPolicy in front of the sentinels: injected pods (sidecars ask
/// them for the primary), the store's Redis pods and sentinels, and the
/// operator; only the sentinel port.
pub fn network_policy(
    store: &ETagStore,
    operator_namespace: &str,
) -> Result<NetworkPolicy, BuildError> {
    let name = master_name(store);
    let peer = |labels: BTreeMap<String, String>| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let operator = super::network_policy::operator_peer(operator_namespace);
    Ok(NetworkPolicy {
        metadata: sentinel_meta(store, names::sentinel(&name))?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(sentinel_selector(store)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    peer(BTreeMap::from([(STORE_LABEL.to_owned(), name.clone())])),
                    peer(selector_labels(store)),
                    peer(sentinel_selector(store)),
                    operator,
                ]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(SENTINEL_PORT)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The pod name in a host the sentinels announce
/// (`cache-redis-1.cache-redis-headless.shop.svc` -> `cache-redis-1`).
/// An IP (a sentinel without announced hostnames) is kept whole.
pub fn pod_of(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    host.split('.').next().unwrap_or(host)
}

/// What the sentinels said: the primary most of them name (ties: the
/// smaller name), with how many named it.
pub fn primary_from_answers(answers: &[Option<String>]) -> Option<(String, usize)> {
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for a in answers.iter().flatten() {
        *votes.entry(pod_of(a)).or_default() += 1;
    }
    let best = votes.values().copied().max()?;
    votes
        .into_iter()
        .find(|(_, n)| *n == best)
        .map(|(p, n)| (p.to_owned(), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;

    fn failover_store() -> ETagStore {
        let mut s = fixtures::managed();
        s.spec.redis.managed.as_mut().unwrap().replicas = 3;
        s
    }

    #[test]
    fn endpoint_lists_every_sentinel_and_the_master_name() {
        assert_eq!(
            endpoint(&failover_store()),
            "redis+sentinel://cache-sentinel-0.cache-sentinel.shop.svc:26379,\
             cache-sentinel-1.cache-sentinel.shop.svc:26379,\
             cache-sentinel-2.cache-sentinel.shop.svc:26379/cache"
        );
    }

    #[test]
    fn three_parallel_sentinels_with_requests_announcing_hostnames() {
        let store = failover_store();
        let sts = desired(&store, store.managed().unwrap(), false).unwrap();
        assert_eq!(sts.metadata.name.as_deref(), Some("cache-sentinel"));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("cache-sentinel"));
        let sel = spec.selector.match_labels.unwrap();
        assert_eq!(sel["app.kubernetes.io/name"], "sametag-sentinel");
        let tl = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in &sel {
            assert_eq!(tl.get(k), Some(v));
        }
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let script = &c.command.as_ref().unwrap()[2];
        for want in [
            "sentinel resolve-hostnames yes",
            "sentinel announce-hostnames yes",
            "sentinel announce-ip $me",
            "sentinel monitor $MASTER_NAME $primary 6379 2",
            "--sentinel",
        ] {
            assert!(script.contains(want), "{want} missing: {script}");
        }
        assert!(
            !script.contains("requirepass"),
            "sentinels have no password"
        );
        let env = c.env.as_ref().unwrap();
        let val = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
                .unwrap()
        };
        assert_eq!(val("DOWN_AFTER_MS"), "5000");
        assert_eq!(val("FAILOVER_TIMEOUT_MS"), "10000");
        assert_eq!(val("MASTER_NAME"), "cache");
        assert_eq!(
            val("PRIMARY_HOST"),
            "cache-redis-0.cache-redis-headless.shop.svc"
        );
        assert_eq!(val("SENTINEL_DOMAIN"), "cache-sentinel.shop.svc");
        // The password comes from the Secret, never a literal.
        let pw = env.iter().find(|e| e.name == "REDIS_PASSWORD").unwrap();
        assert!(pw.value.is_none() && pw.value_from.is_some());
        assert!(
            c.resources.as_ref().unwrap().requests.is_some(),
            "not BestEffort"
        );
        // Soft spreading: a one-node cluster still schedules every pod.
        let tsc = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(tsc.when_unsatisfiable, "ScheduleAnyway");
        let aa = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        assert!(
            aa.required_during_scheduling_ignored_during_execution
                .is_none()
        );
        assert!(
            aa.preferred_during_scheduling_ignored_during_execution
                .is_some()
        );
    }

    #[test]
    fn failover_member_asks_the_sentinels_and_hands_over_in_pre_stop() {
        let store = failover_store();
        let mut sts =
            super::super::redis::desired(&store, store.managed().unwrap(), false).unwrap();
        make_failover_member(&store, &mut sts);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let script = &c.command.as_ref().unwrap()[2];
        assert!(script.contains("get-master-addr-by-name"), "{script}");
        assert!(script.contains("--replica-announce-ip"), "{script}");
        let pre = &c
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap()[2];
        assert!(pre.contains("sentinel failover"), "{pre}");
        assert!(pre.contains("replicaof"), "{pre}");
        assert!(pre.contains("client kill type normal"), "{pre}");
        let env = c.env.as_ref().unwrap();
        assert_eq!(env.iter().filter(|e| e.name == "PRIMARY_HOST").count(), 1);
        assert!(env.iter().any(|e| e.name == "SENTINEL_HOSTS"
            && e.value.as_deref() == Some("cache-sentinel-0.cache-sentinel.shop.svc cache-sentinel-1.cache-sentinel.shop.svc cache-sentinel-2.cache-sentinel.shop.svc")));
        assert!(pod.termination_grace_period_seconds.unwrap() >= 30);
    }

    #[test]
    fn pdbs_allow_one_disruption_each() {
        let store = failover_store();
        for (p, sel) in [
            (redis_pdb(&store).unwrap(), "sametag-redis"),
            (sentinel_pdb(&store).unwrap(), "sametag-sentinel"),
        ] {
            let spec = p.spec.unwrap();
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(
                spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/name"],
                sel
            );
        }
    }

    #[test]
    fn pod_template_is_applied_and_its_affinity_replaces_the_default() {
        use k8s_openapi::api::core::v1::{LocalObjectReference, NodeAffinity, Toleration};
        let mut store = failover_store();
        let m = store.spec.redis.managed.as_mut().unwrap();
        m.pod_template = Some(crate::crd::RedisPodTemplate {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity::default()),
                ..Affinity::default()
            }),
            tolerations: vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }],
            priority_class_name: Some("critical".into()),
            image_pull_secrets: vec![LocalObjectReference {
                name: "regcred".into(),
            }],
            node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
        });
        let sts = desired(&store, store.managed().unwrap(), false).unwrap();
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let aff = pod.affinity.unwrap();
        assert!(aff.node_affinity.is_some() && aff.pod_anti_affinity.is_none());
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
    }

    #[test]
    fn network_policy_admits_sidecars_redis_sentinels_on_the_sentinel_port() {
        let np = network_policy(&failover_store(), "sametag-system").unwrap();
        let spec = np.spec.unwrap();
        let rule = &spec.ingress.unwrap()[0];
        assert_eq!(rule.from.as_ref().unwrap().len(), 4);
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(26379))
        );
    }

    #[test]
    fn primary_is_what_most_sentinels_name() {
        let h = |p: &str| Some(format!("{p}.cache-redis-headless.shop.svc"));
        assert_eq!(
            primary_from_answers(&[h("cache-redis-1"), h("cache-redis-1"), h("cache-redis-0")]),
            Some(("cache-redis-1".into(), 2))
        );
        assert_eq!(
            primary_from_answers(&[None, h("cache-redis-2"), None]),
            Some(("cache-redis-2".into(), 1))
        );
        assert_eq!(primary_from_answers(&[None, None]), None);
        // An IP (no announce-hostnames) is kept whole.
        assert_eq!(pod_of("10.0.0.7"), "10.0.0.7");
    }
}
