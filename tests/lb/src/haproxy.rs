//! Debian HAProxy in round robin, foreground (`-db`), with HTTP health checks
//! so it routes around a dead replica, and the retries a real deployment
//! would configure. Optionally it logs every request it forwards (status,
//! server, the validators the client sent), so a test can see what a real
//! client such as a browser sent and got.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::{free_addr, wait_listening};
use crate::proc::{Proc, Spec};
use crate::{HarnessError, Result, tools};

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    /// The frontend clients use (HTTP/1.1).
    pub addr: SocketAddr,
    /// A second frontend for HTTP/2 with prior knowledge (h2c), balancing
    /// over the same servers, also spoken to in h2c.
    pub h2_addr: SocketAddr,
    /// The process.
    pub proc: Proc,
    /// Where the access log goes (HAProxy's stdout), if it keeps one.
    access_log: Option<PathBuf>,
}

impl Haproxy {
    /// Balance over `servers` (named s0, s1, ...). Each response carries
    /// `X-LB-Server: sN` so tests can see which replica answered.
    pub async fn start(dir: &Path, servers: &[SocketAddr]) -> Result<Self> {
        Self::start_with(dir, servers, false).await
    }

    /// The same, and with `access_log` every request is logged for
    /// [`Haproxy::access_log`] (off by default: the benchmark runs through
    /// HAProxy too, and a log line per request would cost it throughput).
    pub async fn start_with(dir: &Path, servers: &[SocketAddr], access_log: bool) -> Result<Self> {
        // A port free a moment ago can be taken meanwhile (an outgoing
        // connection's ephemeral port): start again on fresh ports then.
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, servers, access_log).await {
                Err(HarnessError::NotReady { log, .. })
                    if attempt < 5 && log.contains("Address already in use") =>
                {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_once(dir: &Path, servers: &[SocketAddr], access_log: bool) -> Result<Self> {
        let bin = tools::require("haproxy")?;
        let addr = free_addr()?;
        let h2_addr = free_addr()?;
        let conf_path = dir.join("haproxy.cfg");
        std::fs::write(&conf_path, config(addr, h2_addr, servers, access_log))
            .map_err(|e| HarnessError::io("write haproxy.cfg", e))?;
        let log = dir.join("haproxy.log");
        let spec = Spec {
            name: "haproxy".into(),
            program: bin,
            args: vec![
                "-db".into(),
                "-f".into(),
                conf_path.to_string_lossy().into_owned(),
            ],
            env: vec![],
            log: log.clone(),
        };
        let mut proc = Proc::start(spec)?;
        wait_listening(addr, &mut proc, Duration::from_secs(10)).await?;
        wait_listening(h2_addr, &mut proc, Duration::from_secs(10)).await?;
        Ok(Haproxy {
            addr,
            h2_addr,
            proc,
            access_log: access_log.then_some(log),
        })
    }

    /// The base URL of the frontend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request logged so far, in the order HAProxy finished them
    /// (it logs a request when its response is complete). An error when
    /// HAProxy was started without an access log.
    pub fn access_log(&self) -> Result<Vec<Access>> {
        let path = self
            .access_log
            .as_ref()
            .ok_or_else(|| HarnessError::Parse {
                tool: "haproxy".into(),
                detail: "started without an access log (Haproxy::start_with(.., true))".into(),
            })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
        Ok(text.lines().filter_map(Access::parse).collect())
    }
}

/// One request from HAProxy's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Status sent to the client.
    pub status: u16,
    /// Request method.
    pub method: String,
    /// Bytes sent to the client (headers and body).
    pub bytes: u64,
    /// The server that answered (`s0`, ...; `<NOSRV>` when none did).
    pub server: String,
    /// The request URI as the client sent it.
    pub uri: String,
    /// The request's `If-None-Match`, whole.
    pub if_none_match: Option<String>,
    /// The request's `If-Modified-Since`.
    pub if_modified_since: Option<String>,
}

impl Access {
    /// The marker that starts each access log line.
    const MARK: &'static str = "sametag-access ";

    /// True when the request carried a validator (a revalidation).
    pub fn conditional(&self) -> bool {
        self.if_none_match.is_some() || self.if_modified_since.is_some()
    }

    /// One line of the format [`config`] sets; `None` for other lines
    /// (HAProxy's own messages share the file).
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix(Self::MARK)?;
        // The captured headers come last and may hold spaces (a date, a
        // list of tags): split them off by their names first.
        let (fields, headers) = rest.split_once(" inm=")?;
        let (inm, ims) = headers.split_once(" ims=")?;
        let header = |v: &str| (v != "-" && !v.is_empty()).then(|| v.to_owned());
        let mut f = fields.split(' ');
        let access = Access {
            status: f.next()?.parse().ok()?,
            method: f.next()?.to_owned(),
            bytes: f.next()?.parse().ok()?,
            server: f.next()?.to_owned(),
            uri: f.next()?.to_owned(),
            if_none_match: header(inm),
            if_modified_since: header(ims),
        };
        f.next().is_none().then_some(access)
    }
}

/// The generated configuration.
///
/// - `balance roundrobin`: each request (not each connection) goes to the
///   next server, as production balancers do.
/// - `option httpchk GET /` every 200 ms, down after 2 failures: a dead
///   replica (or a sidecar whose app is down and answers 502) leaves the pool.
/// - `retries 3`, `option redispatch 1` and `retry-on conn-failure
///   empty-response junk-response response-timeout 502 503 504`: requests
///   caught by a replica dying or restarting are retried on another one.
///   HAProxy only replays requests it may (idempotent methods, whole request
///   buffered), like a real deployment.
/// - `fe_h2`/`be_h2`: the same servers over h2c end to end (`proto h2` on
///   both sides), so HTTP/2 clients reach the sidecars in HTTP/2.
/// - With `access_log`, a line per request on stdout (the process's log file)
///   in the format [`Access::parse`] reads. Validators are captured with
///   `req.fhdr` (the whole header; `req.hdr` would keep the last element of
///   a list only). `dontlognull`: connections closed without a request
///   (readiness probes, a browser's unused preconnects) are not requests.
fn config(
    addr: SocketAddr,
    h2_addr: SocketAddr,
    servers: &[SocketAddr],
    access_log: bool,
) -> String {
    let (global_log, frontend_log) = if access_log {
        (
            "  log stdout format raw local0\n",
            "  log global\n  option dontlognull\n\
             \x20 http-request capture req.fhdr(if-none-match) len 512\n\
             \x20 http-request capture req.fhdr(if-modified-since) len 64\n\
             \x20 log-format \"sametag-access %ST %HM %B %s %HU inm=%[capture.req.hdr(0)] ims=%[capture.req.hdr(1)]\"\n",
        )
    } else {
        ("", "")
    };
    let mut s = format!(
        "global\n  maxconn 4096\n{global_log}\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         \x20 timeout check 1s\n  retries 3\n  option redispatch 1\n\
         \x20 retry-on conn-failure empty-response junk-response response-timeout 502 503 504\n\
         \x20 option httpchk GET /\n\
         \x20 default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2\n\
         frontend fe\n  bind {addr}\n{frontend_log}  default_backend be\n\
         backend be\n  balance roundrobin\n  http-response set-header X-LB-Server %s\n"
    );
    for (i, srv) in servers.iter().enumerate() {
        s.push_str(&format!("  server s{i} {srv} check\n"));
    }
    s.push_str(&format!(
        "frontend fe_h2\n  bind {h2_addr} proto h2\n{frontend_log}  default_backend be_h2\n\
         backend be_h2\n  balance roundrobin\n  http-response set-header X-LB-Server %s\n"
    ));
    for (i, srv) in servers.iter().enumerate() {
        s.push_str(&format!("  server s{i} {srv} check proto h2\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_lines_and_skips_the_rest() {
        let a = Access::parse(
            "sametag-access 304 GET 187 s2 /site/app.js?v=1 inm=\"a\", W/\"b\" \
             ims=Tue, 01 Dec 2026 10:00:00 GMT",
        )
        .expect("parses");
        assert_eq!(a.status, 304);
        assert_eq!(a.method, "GET");
        assert_eq!(a.bytes, 187);
        assert_eq!(a.server, "s2");
        assert_eq!(a.uri, "/site/app.js?v=1");
        assert_eq!(a.if_none_match.as_deref(), Some("\"a\", W/\"b\""));
        assert_eq!(
            a.if_modified_since.as_deref(),
            Some("Tue, 01 Dec 2026 10:00:00 GMT")
        );
        assert!(a.conditional());

        let plain = Access::parse("sametag-access 200 GET 1226 s0 /site/index.html inm=- ims=-")
            .expect("parses");
        assert!(!plain.conditional());

        assert_eq!(
            Access::parse("[NOTICE]   (1) : New worker (2) forked"),
            None
        );
        assert_eq!(
            Access::parse("sametag-access 200 GET x s0 / inm=- ims=-"),
            None
        );
    }

    #[test]
    fn access_log_only_when_asked() {
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let plain = config(a, a, &[a], false);
        assert!(!plain.contains("log stdout") && !plain.contains("log-format"));
        let logged = config(a, a, &[a], true);
        assert!(logged.contains("log stdout"));
        assert_eq!(logged.matches("log-format \"sametag-access ").count(), 2);
    }
}
