//! A real redis-server on a free loopback port, data in a temp dir; it can
//! be killed and started again on the same port. No automatic persistence:
//! a restart comes back empty unless the test took a snapshot ([`Redis::save`]),
//! which the restart then loads (as a restart or failover that keeps data,
//! up to the last snapshot, does).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::net::{free_addr, wait_listening};
use crate::proc::{Proc, Spec};
use crate::{HarnessError, Result, tools};

/// A running redis-server.
#[derive(Debug)]
pub struct Redis {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
}

impl Redis {
    /// Start one in `dir`.
    pub async fn start(dir: &Path) -> Result<Self> {
        let bin = tools::require("redis-server")?;
        let addr = free_addr()?;
        let spec = Spec {
            name: "redis-server".into(),
            program: bin,
            args: [
                "--port",
                &addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            env: vec![],
            log: dir.join("redis.log"),
        };
        let mut proc = Proc::start(spec)?;
        wait_listening(addr, &mut proc, Duration::from_secs(10)).await?;
        Ok(Redis { addr, proc })
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// SIGKILL (what was not snapshotted is lost).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start again on the same port and wait until it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart()?;
        wait_listening(self.addr, &mut self.proc, Duration::from_secs(10)).await
    }

    /// Write a snapshot that the next start loads: `BGSAVE` (the server
    /// keeps answering; a blocking `SAVE` would stall every client past its
    /// timeout), then wait until it is on disk.
    pub async fn save(&self) -> Result<()> {
        let before = self.command(&["LASTSAVE"]).await?;
        let reply = self.command(&["BGSAVE"]).await?;
        if !reply.starts_with("Background saving") {
            return Err(self.error(format!("BGSAVE answered {reply}")));
        }
        let start = std::time::Instant::now();
        let mut seen_running = false;
        while start.elapsed() < Duration::from_secs(10) {
            let info = self.command(&["INFO", "persistence"]).await?;
            let running = info.contains("rdb_bgsave_in_progress:1");
            seen_running |= running;
            // LASTSAVE has one-second resolution: a save that finished
            // before the first poll shows only there.
            if !running && (seen_running || self.command(&["LASTSAVE"]).await? != before) {
                return if info.contains("rdb_last_bgsave_status:ok") {
                    Ok(())
                } else {
                    Err(self.error("BGSAVE failed".into()))
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.error("BGSAVE did not finish within 10s".into()))
    }

    /// `INFO server`'s `run_id` (changes with every start).
    pub async fn run_id(&self) -> Result<String> {
        let info = self.command(&["INFO", "server"]).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| self.error("no run_id in INFO".into()))
    }

    /// Send one command and return its reply as text (simple string, error,
    /// integer or bulk string; enough for administration in tests).
    pub async fn command(&self, args: &[&str]) -> Result<String> {
        let io = |e: std::io::Error| HarnessError::io(format!("redis {args:?}"), e);
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let run = async {
            let mut s = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(io)?;
            s.write_all(req.as_bytes()).await.map_err(io)?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.map_err(io)?;
            let line = line.trim_end();
            match line.split_at_checked(1) {
                Some(("+" | ":", rest)) => Ok(rest.to_owned()),
                Some(("-", rest)) => Err(self.error(rest.to_owned())),
                Some(("$", n)) => {
                    let n: usize = n.parse().map_err(|_| self.error(line.to_owned()))?;
                    let mut buf = vec![0; n + 2];
                    r.read_exact(&mut buf).await.map_err(io)?;
                    buf.truncate(n);
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
                _ => Err(self.error(format!("unexpected reply {line:?}"))),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| self.error(format!("{args:?}: no reply within 10s")))?
    }

    fn error(&self, reason: String) -> HarnessError {
        HarnessError::Redis {
            addr: self.addr.to_string(),
            reason,
        }
    }
}
