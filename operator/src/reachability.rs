//! Whether the operator itself reaches an external store: connect (TLS with
//! the store's CA when it names one), authenticate as its ACL user and
//! `PING`, within [`TIMEOUT`]. An external store is Ready only after that,
//! and the `StoreReachable` condition names what failed. Credentials are
//! handed to the client as values, never put into a URL, and never appear
//! in a message.

use std::time::Duration;

use redis::{AsyncConnectionConfig, ErrorKind, RedisError};
use sametag_redis_target::{self as target, Credentials};

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

async fn ping(t: &Target<'_>, timeout: Duration) -> Result<(), Failure> {
    let opts = target::Options {
        ca: t.ca.clone(),
        credentials: Credentials {
            username: t.username.map(str::to_owned),
            password: t.password.map(str::to_owned),
        },
        ..target::Options::new(timeout)
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let ping = redis::cmd("PING");
    match target::parse(t.url, &opts).map_err(|e| Failure::Url(e.to_string()))? {
        target::Target::Single(client) => {
            let mut c = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            ping.query_async::<()>(&mut c).await?;
        }
        target::Target::Sentinel(sentinels, _) => {
            let mut c = sentinels
                .into_inner()
                .get_async_connection_with_config(&config)
                .await?;
            ping.query_async::<()>(&mut c).await?;
        }
        target::Target::Cluster(client) => {
            let mut c = client.get_async_connection().await?;
            ping.query_async::<()>(&mut c).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
