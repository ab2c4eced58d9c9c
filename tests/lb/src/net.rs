//! Free loopback ports and readiness waits.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proc::Proc;
use crate::{HarnessError, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback address on a port that was free a moment ago and that this
/// process has not handed out before (tests run in parallel threads).
pub fn free_addr() -> Result<SocketAddr> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("bind :0", e))?;
        let addr = l
            .local_addr()
            .map_err(|e| HarnessError::io("local_addr", e))?;
        let mut g = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if g.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(HarnessError::io(
        "pick a free port",
        std::io::Error::other("no fresh port after 100 tries"),
    ))
}

/// Wait until `addr` accepts TCP connections, or fail with the process's log.
pub async fn wait_listening(addr: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !proc.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(HarnessError::NotReady {
        name: format!("{} on {addr}", proc.name()),
        waited: start.elapsed(),
        log: proc.log_tail(20),
    })
}
