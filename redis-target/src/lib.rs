//! Which Redis deployment a store URL names, and its client: one parser for
//! the sidecar's store (`--redis`) and the operator's reachability check of
//! an external store, so both read a URL the same way.
//!
//! Supported forms:
//! - `redis://[user[:password]@]host[:port][/db]` — one server (AUTH with
//!   password, or an ACL user and password).
//! - `rediss://...` — the same over TLS (rustls; the system trust roots, or
//!   only the CA bundle given as [`Options::ca`]).
//! - `unix:///path/to/redis.sock[?db=N&user=..&pass=..]` / `redis+unix://`.
//! - `redis+sentinel://[user[:password]@]s1:port[,s2:port...]/<master name>[/db]`
//!   (`rediss+sentinel://` for TLS): the master named by the sentinels; the
//!   credentials are the master's (sentinels without AUTH).
//! - `redis+cluster://[user[:password]@]n1:port[,n2:port...]`
//!   (`rediss+cluster://`): Redis Cluster. Every key of a store shares one
//!   hash tag, so all scripts run on one node. No client-side cache
//!   (tracking pushes are per node): each lookup is one round trip.
//!
//! [`Credentials`] given apart from the URL (`--redis-username`,
//! `SAMETAG_REDIS_PASSWORD`) override the URL's userinfo. They are handed to
//! the client as values, never spliced into a URL string, so a password with
//! `@`, `:`, `/`, `%`, `#`, `?` or spaces needs no escaping.
#![forbid(unsafe_code)]

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, TlsCertificates, TlsMode};

/// An ACL username and password given apart from the URL. `Debug` never
/// prints the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// ACL user; `None`: the URL's, else `default`.
    pub username: Option<String>,
    /// Password; `None`: the URL's, if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A parsed `--redis` URL.
pub enum Target {
    Single(redis::Client),
    /// The sentinels' client and the master's name (asked again after
    /// connecting, so a primary a failover just replaced is refused).
    Sentinel(tokio::sync::Mutex<SentinelClient>, String),
    Cluster(ClusterClient),
}

/// Why a `--redis` URL is unusable.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error(
        "unsupported Redis URL scheme {0:?} (use redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://)"
    )]
    Scheme(String),
    #[error("invalid Redis URL: {0}")]
    Invalid(String),
}

/// The URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

struct Parts {
    tls: bool,
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<(String, u16)>,
    path: Vec<String>,
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UrlError::Invalid("bad percent-encoding".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Invalid("credentials are not UTF-8".into()))
}

fn parse_host(h: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| UrlError::Invalid(format!("bad host {h:?}")))?;
        (host, after.strip_prefix(':'))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::Invalid(format!("empty host in {h:?}")));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| UrlError::Invalid(format!("bad port in {h:?}")))?,
        None => 6379,
    };
    Ok((host.to_owned(), port))
}

impl Parts {
    /// The URL's credentials, overridden by those given apart.
    fn with(mut self, creds: &Credentials) -> Self {
        if creds.username.is_some() {
            self.user.clone_from(&creds.username);
        }
        if creds.password.is_some() {
            self.password.clone_from(&creds.password);
        }
        self
    }
}

/// Split `[user[:password]@]h1:p1,h2:p2[/path...]`.
fn parts(rest: &str, tls: bool) -> Result<Parts, UrlError> {
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => (
                Some(percent_decode(u)?).filter(|u| !u.is_empty()),
                Some(percent_decode(p)?),
            ),
            None => (Some(percent_decode(ui)?).filter(|u| !u.is_empty()), None),
        },
    };
    let hosts = hostlist
        .split(',')
        .filter(|h| !h.is_empty())
        .map(parse_host)
        .collect::<Result<Vec<_>, _>>()?;
    if hosts.is_empty() {
        return Err(UrlError::Invalid("no host".into()));
    }
    Ok(Parts {
        tls,
        user,
        password,
        hosts,
        path: path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// How to build a [`Target`]'s client besides its URL.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bound on connecting (cluster nodes; the others take it per connection).
    pub connect_timeout: Duration,
    /// Bound on one reply (cluster nodes; the others take it per connection).
    pub response_timeout: Duration,
    /// A PEM bundle to trust for TLS instead of the system roots.
    pub ca: Option<Vec<u8>>,
    /// Override the URL's credentials.
    pub credentials: Credentials,
}

impl Options {
    /// Both bounds `timeout`, the system roots, the URL's credentials.
    pub fn new(timeout: Duration) -> Self {
        Self {
            connect_timeout: timeout,
            response_timeout: timeout,
            ca: None,
            credentials: Credentials::default(),
        }
    }
}

/// Parse a store URL (see the module docs) into its client. Speaks RESP3
/// everywhere so tracking invalidations arrive on the data connection.
pub fn parse(url: &str, opts: &Options) -> Result<Target, UrlError> {
    let Options {
        connect_timeout,
        response_timeout,
        ca,
        credentials: creds,
    } = opts;
    let certs = || TlsCertificates {
        client_tls: None,
        root_cert: ca.clone(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| UrlError::Invalid("missing scheme".into()))?;
    let invalid = |e: redis::RedisError| UrlError::Invalid(e.to_string());
    match scheme {
        "redis" | "rediss" | "unix" | "redis+unix" => {
            let info = url.into_connection_info().map_err(invalid)?;
            let mut settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            if let Some(u) = &creds.username {
                settings = settings.set_username(u);
            }
            if let Some(pw) = &creds.password {
                settings = settings.set_password(pw);
            }
            let info = info.set_redis_settings(settings);
            let client = match (&ca, info.addr()) {
                (Some(_), ConnectionAddr::TcpTls { .. }) => {
                    redis::Client::build_with_tls(info, certs())
                }
                _ => redis::Client::open(info),
            };
            Ok(Target::Single(client.map_err(invalid)?))
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let p = parts(rest, scheme.starts_with("rediss"))?.with(creds);
            let master = p
                .path
                .first()
                .ok_or_else(|| UrlError::Invalid("sentinel URL needs /<master name>".into()))?;
            let db = match p.path.get(1) {
                Some(d) => d
                    .parse()
                    .map_err(|_| UrlError::Invalid(format!("bad db {d:?}")))?,
                None => 0,
            };
            let addrs = p.hosts.iter().map(|(h, port)| {
                if p.tls {
                    ConnectionAddr::TcpTls {
                        host: h.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(h.clone(), *port)
                }
            });
            let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                .map_err(invalid)?
                .set_client_to_redis_protocol(ProtocolVersion::RESP3)
                .set_client_to_redis_db(db);
            if p.tls {
                b = b
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if ca.is_some() {
                    b = b
                        .set_client_to_redis_certificates(certs())
                        .set_client_to_sentinel_certificates(certs());
                }
            }
            if let Some(u) = &p.user {
                b = b.set_client_to_redis_username(u);
            }
            if let Some(pw) = &p.password {
                b = b.set_client_to_redis_password(pw);
            }
            Ok(Target::Sentinel(
                tokio::sync::Mutex::new(b.build().map_err(invalid)?),
                master.clone(),
            ))
        }
        "redis+cluster" | "rediss+cluster" => {
            let p = parts(rest, scheme.starts_with("rediss"))?.with(creds);
            let nodes: Vec<String> = p
                .hosts
                .iter()
                .map(|(h, port)| {
                    let h = if h.contains(':') {
                        format!("[{h}]")
                    } else {
                        h.clone()
                    };
                    format!("{}://{h}:{port}", if p.tls { "rediss" } else { "redis" })
                })
                .collect();
            let mut b = ClusterClientBuilder::new(nodes)
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(*connect_timeout)
                .response_timeout(*response_timeout)
                .retries(1);
            if p.tls && ca.is_some() {
                b = b.certs(certs());
            }
            if let Some(u) = &p.user {
                b = b.username(u);
            }
            if let Some(pw) = &p.password {
                b = b.password(pw);
            }
            Ok(Target::Cluster(b.build().map_err(invalid)?))
        }
        other => Err(UrlError::Scheme(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(300);

    #[test]
    fn forms_parse() {
        assert!(matches!(
            parse("redis://127.0.0.1:6379", &Options::new(T)),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            parse("redis://u:p%40ss@127.0.0.1:1/2", &Options::new(T)),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            parse("rediss://h:6380", &Options::new(T)),
            Ok(Target::Single(_))
        ));
        assert!(matches!(
            parse(
                "redis+sentinel://:pw@h1:26379,h2:26379/mymaster",
                &Options::new(T)
            ),
            Ok(Target::Sentinel(..))
        ));
        assert!(matches!(
            parse("redis+cluster://h1:7000,[::1]:7001", &Options::new(T)),
            Ok(Target::Cluster(_))
        ));
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        assert!(matches!(
            parse("http://x", &Options::new(T)),
            Err(UrlError::Scheme(_))
        ));
        assert!(parse("nonsense", &Options::new(T)).is_err());
        assert!(parse("redis+sentinel://h1:26379", &Options::new(T)).is_err());
        assert!(parse("redis+cluster://h1:notaport", &Options::new(T)).is_err());
    }

    #[test]
    fn parts_decode_credentials() {
        let p = parts("alice:p%40ss@h1:1,[::1]:2,h2/m/3", false).unwrap();
        assert_eq!(p.user.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("p@ss"));
        assert_eq!(
            p.hosts,
            vec![("h1".into(), 1), ("::1".into(), 2), ("h2".into(), 6379)]
        );
        assert_eq!(p.path, vec!["m".to_owned(), "3".to_owned()]);
        assert!(parts("h:x", false).is_err());
        assert!(parts("/m", false).is_err());
        assert!(parts("[::1", false).is_err());
    }

    #[test]
    fn separate_credentials_override_the_url_and_stay_out_of_debug() {
        let creds = Credentials {
            username: Some("app".into()),
            password: Some("p@ss:w/o%rd #?x".into()),
        };
        let p = parts("u:old@h1:1/m", false).unwrap().with(&creds);
        assert_eq!(p.user.as_deref(), Some("app"));
        assert_eq!(p.password.as_deref(), Some("p@ss:w/o%rd #?x"));
        let kept = parts("u:old@h1:1/m", false)
            .unwrap()
            .with(&Credentials::default());
        assert_eq!(kept.password.as_deref(), Some("old"));
        assert!(!format!("{creds:?}").contains("p@ss"));
        for url in [
            "redis://h:1",
            "rediss+sentinel://h:1/m",
            "redis+cluster://h:1",
        ] {
            let opts = Options {
                credentials: creds.clone(),
                ..Options::new(T)
            };
            assert!(parse(url, &opts).is_ok(), "{url}");
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert!(!redact("redis://:secret@h").contains("secret"));
    }
}
