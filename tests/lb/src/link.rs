//! A TCP relay in front of Redis for one sidecar, so a test can cut that
//! sidecar's store connection (a network partition between one pod and
//! Redis) while the other sidecars keep theirs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::{HarnessError, Result};

/// A running relay. Dropping it closes every relayed connection.
#[derive(Debug)]
pub struct Link {
    /// Where the sidecar connects instead of Redis.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    target: SocketAddr,
    blocked_until: Mutex<Option<Instant>>,
    relays: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Link {
    /// Relay a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::io("bind relay", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("relay address", e))?;
        let inner = Arc::new(Inner {
            target,
            blocked_until: Mutex::new(None),
            relays: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        Ok(Link {
            addr,
            inner,
            accept,
        })
    }

    /// `redis://` URL of the relay.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Close every relayed connection now and refuse new ones for `down`.
    pub fn cut(&self, down: Duration) {
        *lock(&self.inner.blocked_until) = Some(Instant::now() + down);
        for r in lock(&self.inner.relays).drain(..) {
            r.abort();
        }
    }

    /// Connections relayed and refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inner.accepted.load(Ordering::Relaxed),
            self.inner.refused.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        for r in lock(&self.inner.relays).drain(..) {
            r.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let blocked = lock(&inner.blocked_until).is_some_and(|t| Instant::now() < t);
        if blocked {
            // Dropped at once: the client sees the connection reset/closed.
            inner.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let target = inner.target;
        let task = tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        let mut relays = lock(&inner.relays);
        relays.retain(|r| !r.is_finished());
        relays.push(task.abort_handle());
    }
}
