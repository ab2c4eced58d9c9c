//! Debian HAProxy in round robin, foreground (`-db`), with HTTP health checks
//! so it routes around a dead replica, and the retries a real deployment
//! would configure.

use std::net::SocketAddr;
use std::path::Path;
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
}

impl Haproxy {
    /// Balance over `servers` (named s0, s1, ...). Each response carries
    /// `X-LB-Server: sN` so tests can see which replica answered.
    pub async fn start(dir: &Path, servers: &[SocketAddr]) -> Result<Self> {
        // A port free a moment ago can be taken meanwhile (an outgoing
        // connection's ephemeral port): start again on fresh ports then.
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, servers).await {
                Err(HarnessError::NotReady { log, .. })
                    if attempt < 5 && log.contains("Address already in use") =>
                {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_once(dir: &Path, servers: &[SocketAddr]) -> Result<Self> {
        let bin = tools::require("haproxy")?;
        let addr = free_addr()?;
        let h2_addr = free_addr()?;
        let conf_path = dir.join("haproxy.cfg");
        std::fs::write(&conf_path, config(addr, h2_addr, servers))
            .map_err(|e| HarnessError::io("write haproxy.cfg", e))?;
        let spec = Spec {
            name: "haproxy".into(),
            program: bin,
            args: vec![
                "-db".into(),
                "-f".into(),
                conf_path.to_string_lossy().into_owned(),
            ],
            env: vec![],
            log: dir.join("haproxy.log"),
        };
        let mut proc = Proc::start(spec)?;
        wait_listening(addr, &mut proc, Duration::from_secs(10)).await?;
        wait_listening(h2_addr, &mut proc, Duration::from_secs(10)).await?;
        Ok(Haproxy {
            addr,
            h2_addr,
            proc,
        })
    }

    /// The base URL of the frontend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
fn config(addr: SocketAddr, h2_addr: SocketAddr, servers: &[SocketAddr]) -> String {
    let mut s = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         \x20 timeout check 1s\n  retries 3\n  option redispatch 1\n\
         \x20 retry-on conn-failure empty-response junk-response response-timeout 502 503 504\n\
         \x20 option httpchk GET /\n\
         \x20 default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2\n\
         frontend fe\n  bind {addr}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  http-response set-header X-LB-Server %s\n"
    );
    for (i, srv) in servers.iter().enumerate() {
        s.push_str(&format!("  server s{i} {srv} check\n"));
    }
    s.push_str(&format!(
        "frontend fe_h2\n  bind {h2_addr} proto h2\n  default_backend be_h2\n\
         backend be_h2\n  balance roundrobin\n  http-response set-header X-LB-Server %s\n"
    ));
    for (i, srv) in servers.iter().enumerate() {
        s.push_str(&format!("  server s{i} {srv} check proto h2\n"));
    }
    s
}
