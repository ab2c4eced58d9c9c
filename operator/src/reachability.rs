//! Whether the operator itself reaches an external store: connect (TLS with
//! the store's CA when it names one), authenticate as its ACL user and
//! `PING`, within [`TIMEOUT`]. An external store is Ready only after that,
//! and the `StoreReachable` condition names what failed. Credentials are
//! handed to the client as values, never put into a URL, and never appear
//! in a message.

use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError,
    TlsCertificates, TlsMode,
};

/// Condition type: whether the operator reached the external store.
pub const STORE_REACHABLE: &str = "StoreReachable";
/// Reason when it did.
pub const REACHABLE: &str = "Reachable";
/// Bound on one whole check (connect, TLS, AUTH, PING).
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What to reach and as whom.
pub struct Target<'a> {
    /// The store's URL (no credentials: the CRD refuses them).
    pub url: &'a str,
    /// ACL user; `None`: `default`.
    pub username: Option<&'a str>,
    /// Password, any characters.
    pub password: Option<&'a str>,
    /// PEM bundle to trust instead of the system roots.
    pub ca: Option<Vec<u8>>,
}

/// Why the store was not reached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unreachable {
    /// The URL does not parse.
    #[error("the Redis URL is invalid: {0}")]
    Url(String),
    /// The store refused the credentials.
    #[error(
        "Redis refused the credentials of user {user:?} (check spec.redis.external.username and the password in secretRef): {detail}"
    )]
    Auth {
        /// The user tried.
        user: String,
        /// What Redis said.
        detail: String,
    },
    /// TLS failed (certificate not trusted, wrong name, not TLS...).
    #[error("TLS to Redis failed (check spec.redis.external.caSecretRef): {0}")]
    Tls(String),
    /// No complete answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else: refused, unresolvable, reset, an error reply.
    #[error("cannot reach Redis: {0}")]
    Connect(String),
}

impl Unreachable {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Url(_) => "InvalidURL",
            Self::Auth { .. } => "AuthenticationFailed",
            Self::Tls(_) => "TLSFailed",
            Self::Timeout(_) => "StoreTimeout",
            Self::Connect(_) => "StoreUnreachable",
        }
    }
}

/// Connect, authenticate and PING `target` within [`TIMEOUT`].
pub async fn check(target: &Target<'_>) -> Result<(), Unreachable> {
    check_within(target, TIMEOUT).await
}

/// [`check`] with another bound (tests).
pub async fn check_within(target: &Target<'_>, timeout: Duration) -> Result<(), Unreachable> {
    // rediss needs a rustls provider; one installed already is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let user = target.username.unwrap_or("default").to_owned();
    let result = match tokio::time::timeout(timeout, ping(target, timeout)).await {
        Err(_) => Err(Unreachable::Timeout(timeout)),
        Ok(Ok(())) => Ok(()),
        Ok(Err(Failure::Url(e))) => Err(Unreachable::Url(e)),
        Ok(Err(Failure::Redis(e))) => Err(classify(&e, user)),
    };
    // Belt and braces: no message may echo the password.
    result.map_err(|e| match target.password {
        Some(pw) if !pw.is_empty() && e.to_string().contains(pw) => {
            Unreachable::Connect("an error that quoted the password (hidden)".into())
        }
        _ => e,
    })
}

enum Failure {
    Url(String),
    Redis(RedisError),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

fn classify(e: &RedisError, user: String) -> Unreachable {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if e.kind() == ErrorKind::AuthenticationFailed
        || [
            "wrongpass",
            "noauth",
            "invalid password",
            "invalid username-password",
            // The cluster client wraps it: "Failed to create initial
            // connections - Io: Password authentication failed".
            "authentication failed",
        ]
        .iter()
        .any(|m| lower.contains(m))
    {
        Unreachable::Auth { user, detail: text }
    } else if [
        "certificate",
        "tls",
        "handshake",
        "invalid peer",
        "unknownissuer",
    ]
    .iter()
    .any(|m| lower.contains(m))
    {
        Unreachable::Tls(text)
    } else if e.is_timeout() {
        Unreachable::Timeout(TIMEOUT)
    } else {
        Unreachable::Connect(text)
    }
}

/// The `host:port` list and the path segments of a URL.
type HostsAndPath = (Vec<(String, u16)>, Vec<String>);

/// `host:port` list and path segments of a sentinel or cluster URL.
fn hosts_and_path(rest: &str) -> Result<HostsAndPath, Failure> {
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts = authority
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            let (host, port) = match h.strip_prefix('[') {
                Some(v6) => {
                    let (host, after) = v6
                        .split_once(']')
                        .ok_or_else(|| Failure::Url(format!("bad host {h:?}")))?;
                    (host, after.strip_prefix(':'))
                }
                None => match h.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (h, None),
                },
            };
            let port = match port {
                Some(p) => p
                    .parse()
                    .map_err(|_| Failure::Url(format!("bad port in {h:?}")))?,
                None => 6379,
            };
            Ok((host.to_owned(), port))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    if hosts.is_empty() {
        return Err(Failure::Url("no host".into()));
    }
    let path = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((hosts, path))
}

async fn ping(t: &Target<'_>, timeout: Duration) -> Result<(), Failure> {
    let certs = || TlsCertificates {
        client_tls: None,
        root_cert: t.ca.clone(),
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let (scheme, rest) = t
        .url
        .split_once("://")
        .ok_or_else(|| Failure::Url("missing scheme".into()))?;
    let tls = scheme.starts_with("rediss");
    let ping = redis::cmd("PING");
    match scheme {
        "redis" | "rediss" => {
            let info = t
                .url
                .into_connection_info()
                .map_err(|e| Failure::Url(e.to_string()))?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = t.username {
                settings = settings.set_username(u);
            }
            if let Some(pw) = t.password {
                settings = settings.set_password(pw);
            }
            let info = info.set_redis_settings(settings);
            let client = match (&t.ca, info.addr()) {
                (Some(_), ConnectionAddr::TcpTls { .. }) => {
                    redis::Client::build_with_tls(info, certs())?
                }
                _ => redis::Client::open(info)?,
            };
            let mut c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            ping.query_async::<()>(&mut c).await?;
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let (hosts, path) = hosts_and_path(rest)?;
            let master = path
                .first()
                .ok_or_else(|| Failure::Url("a sentinel URL needs /<master name>".into()))?;
            let db = match path.get(1) {
                Some(d) => d
                    .parse()
                    .map_err(|_| Failure::Url(format!("bad db {d:?}")))?,
                None => 0,
            };
            let addrs = hosts.into_iter().map(|(host, port)| {
                if tls {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                }
            });
            let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
                .set_client_to_redis_db(db);
            if tls {
                b = b
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if t.ca.is_some() {
                    b = b
                        .set_client_to_redis_certificates(certs())
                        .set_client_to_sentinel_certificates(certs());
                }
            }
            if let Some(u) = t.username {
                b = b.set_client_to_redis_username(u);
            }
            if let Some(pw) = t.password {
                b = b.set_client_to_redis_password(pw);
            }
            let mut c = b.build()?.get_async_connection_with_config(&config).await?;
            ping.query_async::<()>(&mut c).await?;
        }
        "redis+cluster" | "rediss+cluster" => {
            let (hosts, _) = hosts_and_path(rest)?;
            let nodes: Vec<String> = hosts
                .iter()
                .map(|(h, port)| {
                    let h = if h.contains(':') {
                        format!("[{h}]")
                    } else {
                        h.clone()
                    };
                    format!("{}://{h}:{port}", if tls { "rediss" } else { "redis" })
                })
                .collect();
            let mut b = ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(0);
            if tls && t.ca.is_some() {
                b = b.certs(certs());
            }
            if let Some(u) = t.username {
                b = b.username(u);
            }
            if let Some(pw) = t.password {
                b = b.password(pw);
            }
            let mut c = b.build()?.get_async_connection().await?;
            ping.query_async::<()>(&mut c).await?;
        }
        other => return Err(Failure::Url(format!("unsupported scheme {other:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_paths_parse() {
        let Ok((hosts, path)) = hosts_and_path("s1:26379,[::1]:1,h/m/2") else {
            panic!("parses");
        };
        assert_eq!(
            hosts,
            vec![
                ("s1".to_owned(), 26379),
                ("::1".to_owned(), 1),
                ("h".to_owned(), 6379)
            ]
        );
        assert_eq!(path, ["m", "2"]);
        assert!(hosts_and_path("h:x").is_err());
        assert!(hosts_and_path("/m").is_err());
    }

    #[tokio::test]
    async fn failures_are_named_without_the_password() {
        let pw = "p@ss w:/%#?";
        // Nothing listens on port 1.
        let t = Target {
            url: "redis://127.0.0.1:1",
            username: Some("app"),
            password: Some(pw),
            ca: None,
        };
        let e = check(&t).await.unwrap_err();
        assert_eq!(e.reason(), "StoreUnreachable", "{e}");
        assert!(!e.to_string().contains(pw));
        let bad = Target {
            url: "redis+sentinel://h:1",
            ..t
        };
        assert_eq!(check(&bad).await.unwrap_err().reason(), "InvalidURL");
        // A listener that never answers: the bound holds.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        let slow = Target {
            url: &url,
            username: None,
            password: None,
            ca: None,
        };
        let started = std::time::Instant::now();
        let e = check_within(&slow, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "StoreTimeout", "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
