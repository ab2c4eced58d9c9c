//! A real redis-server on a free loopback port, no persistence, data in a
//! temp dir; it can be killed and started again on the same port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::net::{free_addr, wait_listening};
use crate::proc::{Proc, Spec};
use crate::{Result, tools};

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

    /// SIGKILL (all data is lost: no persistence).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start again on the same port and wait until it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.restart()?;
        wait_listening(self.addr, &mut self.proc, Duration::from_secs(10)).await
    }
}
