//! The `ETagStore` custom resource (`sametag.dev/v1alpha1`): spec, status and
//! the CEL rules that guard it. Depends on nothing else in the crate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every sametag resource, annotation and label.
pub const GROUP: &str = "sametag.dev";
/// Default image of a managed store whose engine is Redis.
pub const DEFAULT_REDIS_IMAGE: &str = "docker.io/library/redis:7.4-alpine";
/// Default image of a managed store whose engine is Valkey.
pub const DEFAULT_VALKEY_IMAGE: &str = "docker.io/valkey/valkey:8.1-alpine";
/// Default `maxmemory` of a managed Redis.
pub const DEFAULT_MAXMEMORY: &str = "256mb";
/// Default body size above which the sidecar streams responses untagged.
pub const DEFAULT_MAX_BODY_BYTES: &str = "8Mi";

/// One shared ETag store for an app: a Redis (managed by the operator or
/// external), the sidecar policy, and how the sidecar is injected.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sametag.dev",
    version = "v1alpha1",
    kind = "ETagStore",
    plural = "etagstores",
    shortname = "ets",
    namespaced,
    status = "ETagStoreStatus",
    derive = "PartialEq",
    doc = "A shared ETag store and sidecar policy for one app",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.policy.mode"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.redis.primary"),
    printcolumn(name = "Injected", type_ = "string", json_path = ".status.injected"),
    printcolumn(name = "Sidecars", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"SidecarsInjected\")].reason"),
    printcolumn(name = "Replicas", type_ = "string", priority = 1, json_path = ".status.redis.replicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 40 characters starting with a letter (it names the Redis StatefulSet and Services)")
)]
#[serde(rename_all = "camelCase")]
pub struct ETagStoreSpec {
    /// Where the tags live: a Redis the operator runs (`managed`) or one you
    /// run (`external`). Defaults to a managed single-replica Redis.
    #[serde(default)]
    pub redis: RedisSpec,
    /// The sidecar policy: default mode and per-path routes. Mounted into
    /// every injected sidecar as `/etc/sametag/policy.yaml`.
    #[serde(default)]
    pub policy: PolicySpec,
    /// The injected sidecar container.
    #[serde(default)]
    pub sidecar: SidecarSpec,
}

// === Redis ===

/// Exactly one of `managed` or `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)")
    .message("spec.redis: set exactly one of managed or external"))]
pub struct RedisSpec {
    /// A Redis StatefulSet, Service, password Secret and NetworkPolicy owned
    /// by this ETagStore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// A Redis you run; the operator only checks that its Secret exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            managed: Some(ManagedRedis::default()),
            external: None,
        }
    }
}

/// A Redis run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || self.storage == oldSelf.storage)")
        .message("spec.redis.managed.storage cannot be changed after creation (StatefulSet volume claim templates are immutable)"),
    validation = Rule::new("!has(self.mode) || self.mode != 'Failover' || self.replicas >= 3")
        .message("spec.redis.managed.mode Failover needs replicas >= 3 (a primary and two replicas, one per sentinel vote)")
)]
pub struct ManagedRedis {
    /// Which server runs the store: `Redis` or `Valkey` (the store speaks
    /// the same protocol to both). Picks the default image; the pod runs
    /// whichever of `valkey-server`/`redis-server` the image has.
    #[serde(default)]
    pub engine: RedisEngine,
    /// Container image; unset: the engine's default
    /// (`docker.io/library/redis:7.4-alpine` or
    /// `docker.io/valkey/valkey:8.1-alpine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Pods in the StatefulSet. `Single` mode: pod 0 is the primary that the
    /// Service targets, the others are warm standbys (no failover). `Failover`
    /// mode (the default from 3 replicas): a primary and replicas watched by
    /// 3 sentinels that promote a replica when the primary fails. The image
    /// also runs the sentinels (`--sentinel`).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// `Single` or `Failover`; unset: `Failover` when `replicas >= 3`,
    /// `Single` below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RedisMode>,
    /// The sentinels of `Failover` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSpec>,
    /// Scheduling of the Redis (and sentinel) pods: affinity, tolerations,
    /// priority class, image pull secrets, node selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<RedisPodTemplate>,
    /// Resources of the Redis container; requests of 50m CPU and 64Mi
    /// (not BestEffort) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent storage. Without it Redis keeps tags in memory only
    /// (an emptyDir for /data, no RDB/AOF): losing them is safe, tags are
    /// re-derived from content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Redis `maxmemory`, e.g. `256mb`, `1gb`.
    #[serde(default = "default_maxmemory")]
    #[schemars(regex(pattern = r"^[0-9]+([kKmMgG][bB]?|[bB])?$"))]
    pub maxmemory: String,
    /// Redis `maxmemory-policy`.
    #[serde(default)]
    pub eviction_policy: EvictionPolicy,
}

impl ManagedRedis {
    /// The image the pods run: `image`, else the engine's default. An image
    /// equal to the Redis default with engine `Valkey` is the default an
    /// older CRD filled in (it defaulted `image`), so it follows the engine.
    pub fn image(&self) -> &str {
        match (&self.image, self.engine) {
            (Some(i), RedisEngine::Valkey) if i == DEFAULT_REDIS_IMAGE => DEFAULT_VALKEY_IMAGE,
            (Some(i), _) => i,
            (None, engine) => engine.default_image(),
        }
    }
}

/// The server a managed store runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedisEngine {
    /// Redis (`redis-server`).
    #[default]
    Redis,
    /// Valkey (`valkey-server`), the Linux Foundation's fork of Redis.
    Valkey,
}

impl RedisEngine {
    /// The image a managed store of this engine runs unless `image` is set.
    pub fn default_image(self) -> &'static str {
        match self {
            Self::Redis => DEFAULT_REDIS_IMAGE,
            Self::Valkey => DEFAULT_VALKEY_IMAGE,
        }
    }
}

impl Default for ManagedRedis {
    fn default() -> Self {
        Self {
            engine: RedisEngine::default(),
            image: None,
            replicas: default_replicas(),
            mode: None,
            sentinel: None,
            pod_template: None,
            resources: None,
            storage: None,
            maxmemory: default_maxmemory(),
            eviction_policy: EvictionPolicy::default(),
        }
    }
}

/// How a managed store survives the loss of its primary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One primary (pod 0); other pods are warm standbys, no failover.
    Single,
    /// A primary, replicas and 3 sentinels (quorum 2) running Redis's own
    /// Sentinel failover; sidecars connect through the sentinels.
    Failover,
}

/// The sentinels of a `Failover` store.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SentinelSpec {
    /// How long the primary must be unreachable before the sentinels call
    /// it down (Sentinel `down-after-milliseconds`).
    #[serde(default = "default_down_after")]
    #[schemars(range(min = 1000, max = 60000))]
    pub down_after_milliseconds: i32,
    /// Sentinel `failover-timeout`: how long a failover may take before
    /// another sentinel retries it.
    #[serde(default = "default_failover_timeout")]
    #[schemars(range(min = 3000, max = 600000))]
    pub failover_timeout_milliseconds: i32,
    /// Resources of each sentinel container; requests of 10m CPU and 16Mi
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for SentinelSpec {
    fn default() -> Self {
        Self {
            down_after_milliseconds: default_down_after(),
            failover_timeout_milliseconds: default_failover_timeout(),
            resources: None,
        }
    }
}

/// Pod settings applied to the Redis and sentinel pods: the parts of a pod
/// template that clusters need to place them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisPodTemplate {
    /// Replaces the default (soft anti-affinity between the store's pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the Redis image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// A PersistentVolumeClaim template for each Redis pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, a Kubernetes quantity such as `1Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass of the claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// What Redis evicts when `maxmemory` is reached. Evicting tag state is
/// always safe (it is re-derived from content, and every tag-state key has a
/// TTL); evicting a held write lock is not (two writers could then hold it).
/// Locks have no TTL, so the default `volatile-lru` never evicts one;
/// `allkeys-*` policies can, under memory pressure.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// Evict the least recently used keys (held write locks too).
    AllkeysLru,
    /// Evict the least frequently used keys.
    AllkeysLfu,
    /// Evict random keys.
    AllkeysRandom,
    /// Evict least recently used keys with a TTL: tag state, never a lock.
    #[default]
    VolatileLru,
    /// Evict least frequently used keys with a TTL.
    VolatileLfu,
    /// Evict random keys with a TTL.
    VolatileRandom,
    /// Evict keys with the nearest expiry.
    VolatileTtl,
    /// Refuse writes when full.
    Noeviction,
}

impl EvictionPolicy {
    /// The value Redis expects for `maxmemory-policy`.
    pub fn as_redis(self) -> &'static str {
        match self {
            Self::AllkeysLru => "allkeys-lru",
            Self::AllkeysLfu => "allkeys-lfu",
            Self::AllkeysRandom => "allkeys-random",
            Self::VolatileLru => "volatile-lru",
            Self::VolatileLfu => "volatile-lfu",
            Self::VolatileRandom => "volatile-random",
            Self::VolatileTtl => "volatile-ttl",
            Self::Noeviction => "noeviction",
        }
    }
}

/// A Redis the operator does not run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Redis URL without credentials: `redis://` or `rediss://` (one
    /// server), `redis+sentinel://` or `rediss+sentinel://` (`host:port`
    /// list of sentinels, then `/<master name>[/db]`), `redis+cluster://` or
    /// `rediss+cluster://` (`host:port` list of seed nodes), e.g.
    /// `rediss+sentinel://s1:26379,s2:26379/mymaster`. The password comes
    /// from `secretRef`, the ACL user from `username`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^rediss?([+](sentinel|cluster))?://[^/?#@]+')")
            .message("spec.redis.external.url must start with redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster:// followed by a host"),
        validation = Rule::new("!self.matches('^[a-z+]+://[^/]*@')")
            .message("spec.redis.external.url must not carry credentials; put the password in secretRef and the user in username")
    )]
    pub url: String,
    /// The Secret (in the ETagStore's namespace) holding the Redis password.
    /// Any characters work: it reaches the sidecar and the operator as a
    /// value, never inside a URL.
    pub secret_ref: SecretKeyRef,
    /// ACL user (Redis 6+) the sidecars and the operator authenticate as;
    /// unset: the `default` user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("!self.matches('[[:space:]@:/]')")
        .message("spec.redis.external.username must not contain whitespace, '@', ':' or '/'"))]
    pub username: Option<String>,
    /// A Secret (in the ETagStore's namespace) holding the PEM CA bundle
    /// that signed the store's TLS certificate (`rediss` schemes): the only
    /// roots trusted, by the operator and by every sidecar
    /// (`--redis-ca-file`). Unset: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
}

/// A PEM CA bundle in a Secret of the ETagStore's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A key in a Secret of the ETagStore's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

// === Policy ===

/// A regex (RE2 and Rust `regex` alike), escaped for a CEL string literal,
/// for the path globs the sidecar's glob parser (globset) can compile as far
/// as a regex can tell: every `[` opens a class that closes (`[]...]` and
/// `[!]...]` start with a literal `]`), every `{` closes (nested at most two
/// deep), no stray `}`, no trailing `\`. What no regex can see (a reversed
/// range such as `[z-a]`) the operator catches with the parser itself.
macro_rules! glob_regex {
    () => {
        r"(?s)^(?:[^\\[{}\\\\]|\\\\.|\\[(?:[!^].|[^!^])[^\\]]*\\]|\\{(?:[^\\[{}\\\\]|\\\\.|\\[(?:[!^].|[^!^])[^\\]]*\\]|\\{(?:[^\\[{}\\\\]|\\\\.|\\[(?:[!^].|[^!^])[^\\]]*\\])*\\})*\\})*$"
    };
}

/// The unescaped [`glob_regex!`], for tests that compare it with the parser.
#[cfg(test)]
pub(crate) fn glob_regex() -> String {
    glob_regex!().replace(r"\\", r"\")
}

/// What a glob rule says when it fails.
macro_rules! glob_message {
    ($field:literal) => {
        concat!(
            $field,
            " is not a valid glob: close every '[' with ']' and every '{' with '}' (nested at most two deep), no stray '}', no trailing '\\'"
        )
    };
}

/// How the sidecar treats a path.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every request reaches the app; a matching tag becomes a 304.
    #[default]
    Validate,
    /// A recently validated tag is answered from the store without calling the app.
    Trust,
    /// The sidecar leaves the request and response alone.
    Bypass,
}

/// The sidecar policy; the same shape as the sidecar's `--policy` file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    // Top-level maxAge is the default of every Trust route (DESIGN's own
    // example pairs `mode: Validate` with it), so it needs some Trust path.
    validation = Rule::new("!has(self.maxAge) || self.mode == 'Trust' || (has(self.routes) && self.routes.exists(r, has(r.mode) && r.mode == 'Trust'))")
        .message("spec.policy.maxAge is only allowed with mode Trust (top level or on some route: it is the Trust routes' default)"),
    validation = Rule::new("!has(self.routes) || self.routes.all(r, !has(r.maxAge) || (has(r.mode) ? r.mode == 'Trust' : self.mode == 'Trust'))")
        .message("routes[].maxAge is only allowed with mode Trust (the route's mode, or spec.policy.mode when the route sets none)"),
    validation = Rule::new("!has(self.routes) || self.routes.all(r, (has(r.mode) ? r.mode != 'Bypass' : self.mode != 'Bypass') || ((!has(r.invalidates) || size(r.invalidates) == 0) && !(has(r.shared) && r.shared) && !(has(r.requirePreconditions) && r.requirePreconditions) && (!has(r.compress) || size(r.compress) == 0)))")
        .message("routes[]: invalidates, shared, requirePreconditions and compress are not allowed with mode Bypass (the sidecar leaves Bypass routes to the app)")
)]
pub struct PolicySpec {
    /// Mode for paths that no route matches.
    #[serde(default)]
    pub mode: Mode,
    /// How long a validation is trusted in Trust routes that set no maxAge
    /// of their own (default 30s), e.g. `30s`, `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')")
        .message("maxAge must be more than 0 and at most 24h"))]
    pub max_age: Option<String>,
    /// Bodies larger than this stream through untagged: bytes or a quantity such as `8Mi`.
    #[serde(default = "default_max_body_bytes")]
    // `string(self)` reads both forms of an int-or-string alike; an integer
    // (or a string of digits) is bounded like the sidecar bounds it. A
    // suffixed quantity over 1Gi is left to the operator's parser check.
    #[x_kube(validation = Rule::new("string(self).matches('^0*[1-9][0-9]{0,15}(k|M|G|T|Ki|Mi|Gi|Ti)?$') && (!string(self).matches('^[0-9]+$') || int(string(self)) <= 1073741824)")
        .message("maxBodyBytes must be a byte count from 1 to 1Gi: an integer, or a quantity such as 8Mi, 512Ki or 1M"))]
    pub max_body_bytes: IntOrString,
    /// Routes, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub routes: Vec<Route>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            max_age: None,
            max_body_bytes: default_max_body_bytes(),
            routes: Vec::new(),
        }
    }
}

/// A path glob and how the sidecar treats it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Path glob (`*` within a segment, `**` across segments), e.g. `/api/items/**`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message("routes[].path must start with '/'"),
        validation = Rule::new("!self.contains('***')").message("routes[].path: '***' is not a valid glob"),
        validation = Rule::new("!self.matches('\\\\s')").message("routes[].path must not contain whitespace"),
        validation = Rule::new(concat!("self.matches('", glob_regex!(), "')"))
            .message(glob_message!("routes[].path"))
    )]
    pub path: String,
    /// Mode for this route; the top-level mode when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Trust only: how long a validation is trusted on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')")
        .message("maxAge must be more than 0 and at most 24h"))]
    pub max_age: Option<String>,
    /// Path globs that a successful write on this route also invalidates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("self.all(p, p.startsWith('/'))")
            .message("routes[].invalidates entries must start with '/'"),
        validation = Rule::new(concat!("self.all(p, p.matches('", glob_regex!(), "'))"))
            .message(glob_message!("a routes[].invalidates entry"))
    )]
    pub invalidates: Vec<InvalidateGlob>,
    /// One key for all users even when requests carry credentials.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// Writes without `If-Match`/`If-Unmodified-Since` get 428.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_preconditions: bool,
    /// Regexes (Rust `regex` syntax) whose matches the tag leaves out, for
    /// text that changes on every render (a CSRF token, a CSP nonce); the
    /// body sent is unchanged. The sidecar's parser checks them (Degraded
    /// InvalidPolicy when it refuses one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub steady: Vec<SteadyPattern>,
    /// Content codings the sidecar applies to tagged text responses by
    /// `Accept-Encoding`, preferred first (e.g. `[br, zstd, gzip]`); each
    /// coding gets its own strong tag. Empty: off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3), extend("x-kubernetes-list-type" = "set"))]
    pub compress: Vec<Coding>,
}

/// A content coding the sidecar can apply.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Coding {
    /// Brotli.
    Br,
    /// Zstandard.
    Zstd,
    /// gzip.
    Gzip,
}

/// A path glob in `invalidates`; bounded so the CEL cost stays small (the
/// apiserver refuses the CRD if the glob rule's worst case, 128 routes x 32
/// globs of this length, exceeds its cost budget: 512 did, by 3.1x).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct InvalidateGlob(#[schemars(length(min = 1, max = 128))] pub String);

/// A `steady` regex; the sidecar bounds its length and compiled size.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct SteadyPattern(#[schemars(length(min = 1, max = 256))] pub String);

// === Sidecar ===

/// The injected sidecar container.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image; the operator's `--sidecar-image` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Sidecar resources; small defaults when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Image pull policy of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
}

/// Kubernetes image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when absent.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The string Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

// === Status ===

/// Observed state of an ETagStore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ETagStoreStatus {
    /// `Ready`, `Progressing`, `Degraded` and `SidecarsInjected`, each with
    /// a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the operator last saw of a managed Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,
    /// Redis URL sidecars use, without the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Running pods that carry this store's sidecar (labelled
    /// `sametag.dev/store=<name>` by the webhook).
    #[serde(default)]
    pub injected_pods: i32,
    /// Running pods that opted in for this store (annotation
    /// `sametag.dev/inject: "true"` or the namespace label), with or without
    /// the sidecar.
    #[serde(default)]
    pub opted_in_pods: i32,
    /// Injected pods whose sidecar image is not the one the webhook injects
    /// now (`spec.sidecar.image` or the operator's `--sidecar-image`).
    #[serde(default)]
    pub outdated_pods: i32,
    /// `injectedPods/optedInPods`, for `kubectl get ets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<String>,
}

/// Observed state of a managed Redis.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// `Single` or `Failover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RedisMode>,
    /// The pod serving as primary: pod 0 in Single mode; in Failover mode
    /// the one the sentinels name (`SENTINEL get-master-addr-by-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// How many sentinels answered the last query and named `primary`, of
    /// how many asked (e.g. `3/3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinels: Option<String>,
    /// Replicas the sentinels have linked and see up, of the replicas the
    /// store runs (e.g. `2/2`; the fewest any sentinel naming the primary
    /// reported). A Redis pod back with a new IP counts only once the
    /// sentinels link it again; a failover meanwhile reconfigures it late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
}

// === helpers ===

impl ETagStore {
    /// Whether the operator runs Redis for this store.
    pub fn managed(&self) -> Option<&ManagedRedis> {
        self.spec.redis.managed.as_ref()
    }
}

impl ManagedRedis {
    /// The effective mode: `mode`, else Failover from 3 replicas.
    pub fn effective_mode(&self) -> RedisMode {
        self.mode.unwrap_or(if self.replicas >= 3 {
            RedisMode::Failover
        } else {
            RedisMode::Single
        })
    }

    /// Whether sentinels run for this store.
    pub fn failover(&self) -> bool {
        self.effective_mode() == RedisMode::Failover
    }

    /// The sentinel settings, defaults when unset.
    pub fn sentinel_spec(&self) -> SentinelSpec {
        self.sentinel.clone().unwrap_or_default()
    }
}

/// The CRD as YAML, exactly what `crds/etagstores.sametag.dev.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&ETagStore::crd())
}

fn default_replicas() -> i32 {
    1
}
fn default_down_after() -> i32 {
    5000
}
fn default_failover_timeout() -> i32 {
    10000
}
fn default_maxmemory() -> String {
    DEFAULT_MAXMEMORY.to_owned()
}
fn default_ca_key() -> String {
    "ca.crt".to_owned()
}
fn default_secret_key() -> String {
    "password".to_owned()
}
fn default_max_body_bytes() -> IntOrString {
    IntOrString::String(DEFAULT_MAX_BODY_BYTES.to_owned())
}
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
