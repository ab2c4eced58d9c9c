//! Flags and environment into one validated [`Config`].
//!
//! Every flag also reads an environment variable (`SAMETAG_*`), so the
//! operator's webhook can configure the sidecar through `env` alone. Bad
//! values are clap errors: one line, exit status 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::redis::Credentials;
use clap::Parser;
use http::uri::Authority;
use sametag_policy::duration::{DurationError, DurationSyntax, parse_duration_with};

use crate::store::redis::WaitReplicas;

/// sametag sidecar: a reverse proxy in front of one app replica that gives
/// every replica the same ETag and Last-Modified for the same representation,
/// answers conditional requests itself (RFC 9110 §13) and, with a shared
/// Redis store, serialises conditional writes across replicas.
#[derive(Debug, Parser)]
#[command(name = "sametag-sidecar", version, about, long_about = None)]
pub struct Cli {
    /// Where clients connect (HTTP/1.1 and h2c).
    #[arg(long, env = "SAMETAG_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The app behind the sidecar, as host:port.
    #[arg(long, env = "SAMETAG_UPSTREAM", default_value = "127.0.0.1:8081", value_parser = parse_authority)]
    pub upstream: Authority,

    /// The shared store: redis://, rediss://, sentinel or cluster URL.
    /// Absent: an embedded in-memory store (one replica, local runs).
    #[arg(long = "redis", env = "SAMETAG_REDIS_URL")]
    pub redis: Option<String>,

    /// A PEM CA bundle to trust for a rediss:// store instead of the system
    /// roots (a store whose certificate a private CA signed).
    #[arg(long, env = "SAMETAG_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Replicas that must acknowledge a write lock or an invalidation
    /// (Redis `WAIT`) before it counts: `auto` (one once the primary has a
    /// connected replica, none without) or a number (0: never wait).
    #[arg(long, env = "SAMETAG_REDIS_WAIT_REPLICAS", default_value = "auto")]
    pub redis_wait_replicas: WaitReplicas,

    /// Longest a write lock or an invalidation waits for its replicas
    /// before the write fails with 503 (capped at three quarters of the
    /// 300 ms store call bound).
    #[arg(long, env = "SAMETAG_REDIS_WAIT_TIMEOUT", default_value = "200ms", value_parser = parse_duration)]
    pub redis_wait_timeout: Duration,
    /// ACL username for the store; overrides the URL's.
    #[arg(long, env = "SAMETAG_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Password for the store; overrides the URL's. Any characters work (it
    /// is never put into a URL). Prefer the environment variable: a flag is
    /// visible in `ps`.
    #[arg(long, env = "SAMETAG_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// At start, how long to wait for the first connection to the store
    /// before serving anyway (degraded: content-derived tags, the app's
    /// Last-Modified). Replicas that started together then agree from their
    /// first request. 0s: do not wait.
    #[arg(long, env = "SAMETAG_STORE_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub store_wait: Duration,

    /// Policy file (YAML, the shape of ETagStore.spec.policy), reloaded when
    /// it changes. Absent: Validate for every path.
    #[arg(long, env = "SAMETAG_POLICY")]
    pub policy: Option<PathBuf>,

    /// A missing --policy file is not an error: Validate for every path
    /// until the file appears (the reload picks it up). The operator sets
    /// it, so a sidecar whose policy ConfigMap is gone (its ETagStore was
    /// deleted) restarts degraded instead of crash-looping.
    #[arg(long, env = "SAMETAG_POLICY_OPTIONAL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub policy_optional: bool,

    /// Admin server: /metrics, /healthz, /readyz, POST /purge.
    #[arg(long, env = "SAMETAG_ADMIN", default_value = "0.0.0.0:9901")]
    pub admin: SocketAddr,

    /// A file holding the token POST /purge on the admin port requires
    /// (Authorization: Bearer or Sametag-Purge-Token), re-read on every
    /// purge so a rotated Secret works. Absent: purge is disabled (403).
    #[arg(long, env = "SAMETAG_PURGE_TOKEN_FILE")]
    pub purge_token_file: Option<PathBuf>,

    /// Key namespace in the store (every key starts with it).
    #[arg(long, env = "SAMETAG_STORE_PREFIX", default_value = "sametag")]
    pub store_prefix: String,

    /// How long to wait for the app's response head (and a tagged body)
    /// before answering 504: 500ms, 30s, 5m, 1h.
    #[arg(long, env = "SAMETAG_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Retry-After sent with 503 (store or write lock unavailable for a
    /// conditional write).
    #[arg(long, env = "SAMETAG_RETRY_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub retry_after: Duration,

    /// How long a conditional write waits for another replica's write lock on
    /// the same resource before answering 503.
    #[arg(long, env = "SAMETAG_LOCK_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub lock_wait: Duration,

    /// Secret for the keyed hash of credentials (Authorization, Cookie) in
    /// store keys. Every replica sharing a store must use the same one.
    /// Default: derived from the Redis URL (which carries the store's
    /// password) with --redis; random per process with the embedded store.
    #[arg(long, env = "SAMETAG_CREDENTIAL_SECRET", hide_env_values = true)]
    pub credential_secret: Option<String>,

    /// How long SIGTERM/SIGINT waits for in-flight requests before exiting.
    #[arg(long, env = "SAMETAG_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How long a client may take to send a request's header section; a
    /// connection that sends no complete request head (nothing, half an
    /// HTTP/2 preface, half a header section) within it is closed.
    #[arg(long, env = "SAMETAG_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a client may take to send a whole request body; past it the
    /// request fails with 408 and the app's request is aborted. Keep it
    /// under --upstream-timeout, which also runs while the body streams.
    #[arg(long, env = "SAMETAG_BODY_READ_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// A client connection with no request in flight for this long is
    /// closed (HTTP/2: GOAWAY). Keep it above the load balancer's own idle
    /// timeout, so the balancer, not the sidecar, ends idle connections.
    #[arg(long, env = "SAMETAG_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Client connections open at once; more are closed as soon as accepted
    /// (counted in sametag_connections_refused_total).
    #[arg(long, env = "SAMETAG_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Memory for response bodies held to be tagged, over all requests
    /// (8Mi, 64Mi, 1Gi or bytes). A response that does not fit streams
    /// through untagged. The default is half the 128Mi limit the operator
    /// gives the sidecar: the rest is connection buffers and the store.
    #[arg(long, env = "SAMETAG_TAG_BUFFER_BUDGET", default_value = "64Mi", value_parser = parse_size)]
    pub tag_buffer_budget: u64,

    /// Overrides the policy's maxBodyBytes for this replica (1 to 1Gi:
    /// 8Mi, 512Ki, bytes): larger responses stream through untagged. The
    /// webhook sets it from a pod's `config.sametag.dev/max-body-size`.
    #[arg(long, env = "SAMETAG_MAX_BODY_BYTES", value_parser = parse_max_body_bytes)]
    pub max_body_bytes: Option<u64>,

    /// How often the policy file is checked for changes.
    #[arg(long, env = "SAMETAG_POLICY_RELOAD", default_value = "2s", value_parser = parse_duration)]
    pub policy_reload: Duration,

    /// Tell the app who asked: append the client's address to
    /// X-Forwarded-For and set X-Forwarded-Proto (if absent) on every
    /// request it sees. `--forwarded-headers=false` leaves both untouched.
    #[arg(long, env = "SAMETAG_FORWARDED_HEADERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub forwarded_headers: bool,

    /// Worker threads serving the proxy port (0: one per CPU the process may
    /// use, cgroup limits included). Each has its own single-threaded
    /// runtime and listening socket (SO_REUSEPORT), so a connection and its
    /// upstream connection never change threads.
    #[arg(long, env = "SAMETAG_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// One JSON line per request (method, path, status, outcome, duration,
    /// bytes) in the log, under the tracing target `sametag::access`.
    #[arg(long, env = "SAMETAG_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub access_log: bool,
}

/// What the proxy itself needs, independent of where its store and policy
/// come from. [`ProxyOptions::new`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The app, `host:port`.
    pub upstream: Authority,
    /// Limit for the app's response head and for reading a body to tag.
    pub upstream_timeout: Duration,
    /// `Retry-After` on 503.
    pub retry_after: Duration,
    /// How long a conditional write retries for the resource's lock.
    pub lock_wait: Duration,
    /// Limit for a client's request header section to arrive.
    pub header_read_timeout: Duration,
    /// Largest request header section accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Limit for a client's whole request body to arrive (then 408).
    pub body_read_timeout: Duration,
    /// Client connections with no request in flight this long are closed.
    pub idle_timeout: Duration,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Bytes of response bodies held for tagging, over all requests.
    pub tag_buffer_budget: u64,
    /// Overrides the policy's `maxBodyBytes`; `None`: the policy's.
    pub max_body_bytes: Option<u64>,
    /// Secret keying the credential hash in store keys.
    pub credential_secret: Vec<u8>,
    /// A write lock's lease; `None`: [`ProxyOptions::lock_lease`]'s default.
    /// Renewed every third of it while the write is in flight.
    pub lock_lease: Option<Duration>,
    /// Append the client's address to `X-Forwarded-For` (and set
    /// `X-Forwarded-Proto` if absent) on what the app sees.
    pub forwarded_headers: bool,
    /// Log every request (`access_log.rs`).
    pub access_log: bool,
}

impl ProxyOptions {
    /// Defaults for an app at `upstream`, with a random credential secret.
    pub fn new(upstream: Authority) -> Self {
        Self {
            upstream,
            upstream_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
            lock_wait: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 128 * 1024,
            body_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            tag_buffer_budget: 64 << 20,
            max_body_bytes: None,
            credential_secret: random_secret(),
            lock_lease: None,
            forwarded_headers: true,
            access_log: false,
        }
    }

    /// How long a forwarded write is waited for after its client got 504
    /// (ten upstream timeouts): until then its lock is held (renewed) and
    /// its second invalidation waits, because the app may still commit it.
    pub fn write_hold_limit(&self) -> Duration {
        self.upstream_timeout * 10
    }

    /// How long a write lock is leased: by default long enough for the
    /// internal GET and the write itself, short enough that a crashed
    /// holder frees it soon. Renewal keeps a longer write covered.
    pub fn lock_lease(&self) -> Duration {
        self.lock_lease
            .unwrap_or(self.upstream_timeout * 2 + Duration::from_secs(5))
    }
}

/// The validated configuration of the binary.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client-facing address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The purge token's file; `None`: purge disabled.
    pub purge_token_file: Option<PathBuf>,
    /// Redis URL; `None`: the embedded store.
    pub redis: Option<String>,
    /// CA bundle for `rediss://`.
    pub redis_ca_file: Option<PathBuf>,
    /// Replicas a lock or an invalidation waits for.
    pub redis_wait_replicas: WaitReplicas,
    /// How long it waits for them.
    pub redis_wait_timeout: Duration,
    /// ACL user and password given apart from the URL.
    pub redis_credentials: Credentials,
    /// How long start-up waits for the store.
    pub store_wait: Duration,
    /// Policy file; `None`: Validate everywhere.
    pub policy: Option<PathBuf>,
    /// A missing policy file means Validate everywhere until it appears.
    pub policy_optional: bool,
    /// Store key namespace.
    pub store_prefix: String,
    /// Drain limit on shutdown.
    pub drain_timeout: Duration,
    /// Policy file poll interval.
    pub policy_reload: Duration,
    /// The proxy's own options.
    pub proxy: ProxyOptions,
    /// Worker threads on the proxy port (at least 1).
    pub workers: usize,
}

impl Cli {
    /// Validate and resolve defaults that depend on other flags.
    pub fn into_config(self) -> Config {
        let redis_credentials = Credentials {
            username: self.redis_username.filter(|u| !u.is_empty()),
            password: self.redis_password.filter(|p| !p.is_empty()),
        };
        let credential_secret = credential_secret(
            self.credential_secret.as_deref(),
            self.redis.as_deref(),
            &redis_credentials,
            &self.store_prefix,
        );
        Config {
            listen: self.listen,
            admin: self.admin,
            purge_token_file: self.purge_token_file,
            policy: self.policy,
            policy_optional: self.policy_optional,
            drain_timeout: self.drain_timeout,
            policy_reload: self.policy_reload,
            proxy: ProxyOptions {
                upstream: self.upstream,
                upstream_timeout: self.upstream_timeout,
                retry_after: self.retry_after,
                lock_wait: self.lock_wait,
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: 128 * 1024,
                body_read_timeout: self.body_read_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections as usize,
                tag_buffer_budget: self.tag_buffer_budget,
                max_body_bytes: self.max_body_bytes,
                credential_secret,
                lock_lease: None,
                forwarded_headers: self.forwarded_headers,
                access_log: self.access_log,
            },
            redis: self.redis,
            redis_ca_file: self.redis_ca_file,
            redis_wait_replicas: self.redis_wait_replicas,
            redis_wait_timeout: self.redis_wait_timeout,
            redis_credentials,
            store_wait: self.store_wait,
            store_prefix: self.store_prefix,
            workers: match self.workers {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            },
        }
    }
}

/// The credential-hash secret: the explicit one; else, for a shared store,
/// one every replica derives alike from the Redis URL and the credentials
/// given apart from it (one of them holds the store's password, which only
/// this app's replicas know) and the prefix; else a random one, which is
/// fine for the embedded store (one process).
pub fn credential_secret(
    explicit: Option<&str>,
    redis: Option<&str>,
    creds: &Credentials,
    prefix: &str,
) -> Vec<u8> {
    if let Some(secret) = explicit {
        return secret.as_bytes().to_vec();
    }
    if let Some(url) = redis {
        let mut hasher = blake3::Hasher::new_derive_key("sametag.dev 2026 credential secret v1");
        hasher.update(&(prefix.len() as u64).to_le_bytes());
        hasher.update(prefix.as_bytes());
        hasher.update(url.as_bytes());
        // Length-prefixed, so no two (user, password) pairs hash alike; a
        // URL-only setup hashes exactly as before.
        for part in [&creds.username, &creds.password].into_iter().flatten() {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        return hasher.finalize().as_bytes().to_vec();
    }
    let mut hasher = blake3::Hasher::new_derive_key("sametag.dev 2026 credential secret v1");
    hasher.update(prefix.as_bytes());
    hasher.update(&random_secret());
    hasher.finalize().as_bytes().to_vec()
}

/// 32 random bytes from the operating system. If the OS cannot provide them
/// (never seen on Linux), fall back to time and address entropy: the secret
/// only has to be unguessable to clients, not cryptographically perfect.
fn random_secret() -> Vec<u8> {
    let mut buf = [0u8; 32];
    if getrandom::fill(&mut buf).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&now.as_nanos().to_le_bytes());
        hasher.update(&std::process::id().to_le_bytes());
        hasher.update(&(&buf as *const _ as usize).to_le_bytes());
        buf = *hasher.finalize().as_bytes();
    }
    buf.to_vec()
}

fn parse_authority(s: &str) -> Result<Authority, String> {
    let authority: Authority = s.parse().map_err(|e| format!("not a host:port ({e})"))?;
    if authority.port_u16().is_none() {
        return Err("missing port (expected host:port)".into());
    }
    Ok(authority)
}

/// Durations read like the policy file's: `500ms`, `30s`, `5m`, `1h`, `1m30s`.
fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    parse_duration_with(s, DurationSyntax::SIDECAR_FLAG)
}

/// `--max-body-bytes`: exactly what the policy's `maxBodyBytes` accepts.
fn parse_max_body_bytes(s: &str) -> Result<u64, String> {
    crate::policy::parse_max_body_bytes(s)
}

/// Sizes read like the policy file's `maxBodyBytes`: `64Mi`, `512Ki`, bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    crate::policy::parse_quantity(s.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults_and_env_names() {
        let cli = Cli::try_parse_from(["sametag-sidecar"]).unwrap();
        assert_eq!(cli.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.upstream.as_str(), "127.0.0.1:8081");
        assert_eq!(cli.admin.to_string(), "0.0.0.0:9901");
        assert_eq!(cli.upstream_timeout, Duration::from_secs(30));
        assert!(cli.forwarded_headers);
        let options = cli.into_config().proxy;
        let defaults = ProxyOptions::new(options.upstream.clone());
        assert_eq!(options.tag_buffer_budget, 64 << 20);
        assert_eq!(options.tag_buffer_budget, defaults.tag_buffer_budget);
        assert_eq!(options.max_connections, defaults.max_connections);
        assert_eq!(options.idle_timeout, defaults.idle_timeout);
        assert_eq!(options.body_read_timeout, defaults.body_read_timeout);
        assert!(Cli::try_parse_from(["sametag-sidecar", "--max-connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["sametag-sidecar", "--tag-buffer-budget", "lots"]).is_err());
        assert!(Cli::try_parse_from(["sametag-sidecar", "--upstream", "nohost"]).is_err());
        assert_eq!(options.max_body_bytes, None);
        let big = Cli::try_parse_from(["sametag-sidecar", "--max-body-bytes", "32Mi"]).unwrap();
        assert_eq!(big.into_config().proxy.max_body_bytes, Some(32 << 20));
        for bad in ["0", "2Gi", "lots"] {
            assert!(
                Cli::try_parse_from(["sametag-sidecar", "--max-body-bytes", bad]).is_err(),
                "{bad}"
            );
        }
        let off = Cli::try_parse_from(["sametag-sidecar", "--forwarded-headers=false"]).unwrap();
        assert!(!off.into_config().proxy.forwarded_headers);
        assert!(Cli::try_parse_from(["sametag-sidecar", "--forwarded-headers=maybe"]).is_err());
        // The access log: off unless asked, by the bare flag or a value.
        assert!(!Cli::try_parse_from(["sametag-sidecar"]).unwrap().access_log);
        for on in [&["--access-log"][..], &["--access-log=true"][..]] {
            let cli =
                Cli::try_parse_from(std::iter::once("sametag-sidecar").chain(on.iter().copied()));
            assert!(cli.unwrap().into_config().proxy.access_log, "{on:?}");
        }
        assert!(Cli::try_parse_from(["sametag-sidecar", "--access-log=loud"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["sametag-sidecar"])
                .unwrap()
                .into_config()
                .purge_token_file,
            None
        );
        let purge =
            Cli::try_parse_from(["sametag-sidecar", "--purge-token-file", "/etc/t"]).unwrap();
        assert_eq!(
            purge.into_config().purge_token_file,
            Some(PathBuf::from("/etc/t"))
        );
    }

    #[test]
    fn shared_store_secret_is_shared_and_embedded_is_random() {
        let none = Credentials::default();
        let a = credential_secret(None, Some("redis://:pw@r:6379"), &none, "p");
        let b = credential_secret(None, Some("redis://:pw@r:6379"), &none, "p");
        assert_eq!(a, b);
        assert_ne!(
            a,
            credential_secret(None, Some("redis://:other@r:6379"), &none, "p")
        );
        assert_ne!(
            credential_secret(None, None, &none, "p"),
            credential_secret(None, None, &none, "p")
        );
        assert_eq!(
            credential_secret(Some("s"), None, &none, "p"),
            b"s".to_vec()
        );
        // A password given apart from the URL keys the secret like one inside it.
        let with = |pw: &str| Credentials {
            username: Some("app".into()),
            password: Some(pw.into()),
        };
        let url = Some("redis://r:6379");
        assert_eq!(
            credential_secret(None, url, &with("x y@z"), "p"),
            credential_secret(None, url, &with("x y@z"), "p")
        );
        assert_ne!(
            credential_secret(None, url, &with("x y@z"), "p"),
            credential_secret(None, url, &with("other"), "p")
        );
        assert_ne!(
            credential_secret(None, url, &with("x y@z"), "p"),
            credential_secret(None, url, &none, "p")
        );
    }

    #[test]
    fn redis_credentials_come_from_the_environment() {
        // Flags here (the env is process-wide; clap reads both the same way).
        let cli = Cli::try_parse_from([
            "sametag-sidecar",
            "--redis-username",
            "app",
            "--redis-password",
            "p@ss w:/%#?",
        ])
        .unwrap()
        .into_config();
        assert_eq!(cli.redis_credentials.username.as_deref(), Some("app"));
        assert_eq!(
            cli.redis_credentials.password.as_deref(),
            Some("p@ss w:/%#?")
        );
        let empty = Cli::try_parse_from(["sametag-sidecar", "--redis-password", ""])
            .unwrap()
            .into_config();
        assert_eq!(empty.redis_credentials, Credentials::default());
    }
}
