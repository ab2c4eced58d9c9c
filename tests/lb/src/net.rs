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
///
/// Ports come from below the kernel's ephemeral range when there is room:
/// a port picked with `bind(:0)` is an ephemeral one, which an outgoing
/// connection may take before the server that was meant to get it binds it.
pub fn free_addr() -> Result<SocketAddr> {
    let (low, _) = ephemeral_range();
    for attempt in 0..200u32 {
        let candidate = if low > 12_000 && attempt < 150 {
            let span = u32::from(low) - 10_000;
            let pick = 10_000 + (getrandom_u32() % span);
            u16::try_from(pick).unwrap_or(0)
        } else {
            0
        };
        let Ok(l) = TcpListener::bind(("127.0.0.1", candidate)) else {
            continue;
        };
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
        std::io::Error::other("no fresh port after 200 tries"),
    ))
}

/// The kernel's ephemeral port range (Linux), or the IANA default.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((49_152, 65_535))
}

/// A random number without a dependency: the standard library's hasher is
/// randomly keyed per process, mixed with the time and a counter.
fn getrandom_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
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
