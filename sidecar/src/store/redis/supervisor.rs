//! The connection supervisor: connects, sets up tracking and scripts,
//! bumps the epoch when an invalidation was lost, installs the connection,
//! and reconnects with backoff when it is lost. Logs one line per state
//! change, never one per request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::{PushInfo, PushKind, RedisError, Value};

use super::conn::{self, Conn, SCRIPTS};
use super::{Inner, Live, Shared};
use crate::backoff::Backoff;
use crate::store::redis::cache::Hit;
use crate::store::redis::model::KeyKind;

/// Stops the supervisor when the last store handle is dropped.
pub(crate) struct Guard(tokio::task::AbortHandle);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn spawn(inner: Arc<Inner>) -> Guard {
    Guard(tokio::spawn(run(inner)).abort_handle())
}

/// What kind of trouble, for "log once per change".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unreachable,
    Auth,
    Other,
}

fn classify(e: &SetupError) -> State {
    match e {
        SetupError::Redis(e) => {
            let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
            if auth {
                State::Auth
            } else if e.is_io_error()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_connection_dropped()
            {
                State::Unreachable
            } else {
                State::Other
            }
        }
        SetupError::Timeout => State::Unreachable,
    }
}

enum SetupError {
    Redis(RedisError),
    Timeout,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Redis(e) => write!(f, "{e}"),
            SetupError::Timeout => f.write_str("connection setup timed out"),
        }
    }
}

impl From<RedisError> for SetupError {
    fn from(e: RedisError) -> Self {
        SetupError::Redis(e)
    }
}

async fn run(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.opts.backoff_min, inner.opts.backoff_max);
    let mut state: Option<State> = None;
    loop {
        let budget = inner.opts.connect_timeout + inner.opts.op_timeout * 4;
        let attempt = match tokio::time::timeout(budget, connect_once(&inner)).await {
            Ok(r) => r,
            Err(_) => Err(SetupError::Timeout),
        };
        match attempt {
            Ok(tracking) => {
                tracing::info!(
                    url = %inner.url,
                    client_cache = tracking,
                    "redis store connected"
                );
                backoff.reset();
                inner.shared.down.notified().await;
                *inner.live.write().unwrap_or_else(|e| e.into_inner()) = None;
                inner.metrics.up.set(0);
                let reason = {
                    let mut r = inner.down_reason.lock().unwrap_or_else(|e| e.into_inner());
                    let reason = if r.is_empty() {
                        "connection closed".to_owned()
                    } else {
                        r.clone()
                    };
                    r.clear();
                    reason
                };
                tracing::warn!(
                    url = %inner.url,
                    %reason,
                    "redis store connection lost; store calls fail fast (GET/HEAD degrade, conditional writes get 503) until it is back"
                );
                state = Some(State::Unreachable);
            }
            Err(e) => {
                let now = classify(&e);
                if state != Some(now) {
                    match now {
                        State::Auth => tracing::error!(
                            url = %inner.url,
                            error = %e,
                            "redis store authentication failed: check the password / ACL user in the Redis URL; retrying with backoff"
                        ),
                        _ => tracing::warn!(
                            url = %inner.url,
                            error = %e,
                            "redis store unreachable; retrying with backoff"
                        ),
                    }
                    state = Some(now);
                }
                // Wrong credentials will not fix themselves quickly.
                let delay = if now == State::Auth {
                    backoff.max_delay()
                } else {
                    backoff.next_delay()
                };
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Handle a push from connection `id` (runs on the connection's reader,
/// before any later reply is delivered).
fn on_push(shared: &Shared, id: u64, info: PushInfo) {
    match info.kind {
        PushKind::Invalidate => match info.data.first() {
            Some(Value::Array(keys)) => {
                for k in keys {
                    let name = match k {
                        Value::BulkString(b) => String::from_utf8_lossy(b),
                        Value::SimpleString(s) => s.as_str().into(),
                        _ => continue,
                    };
                    match shared.keys.classify(&name) {
                        KeyKind::Resource(r) => {
                            shared.cache.invalidate(Hit::Resource(r.to_owned()))
                        }
                        KeyKind::Path(p) => shared.cache.invalidate(Hit::Path(p.to_owned())),
                        KeyKind::Meta => shared.cache.invalidate(Hit::Meta),
                        KeyKind::Purge => shared.cache.invalidate(Hit::Purge),
                        KeyKind::Keys => shared.cache.invalidate(Hit::Keys),
                        KeyKind::Other => {}
                    }
                }
            }
            // FLUSHALL / FLUSHDB: everything is gone.
            _ => shared
                .cache
                .reset(shared.live_id.load(Ordering::SeqCst) == id),
        },
        PushKind::Disconnection => {
            shared.mark_down(id);
        }
        _ => {}
    }
}

/// One connection attempt; on success the connection is installed and the
/// return says whether the client-side cache is on.
async fn connect_once(inner: &Arc<Inner>) -> Result<bool, SetupError> {
    let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
    let shared = inner.shared.clone();
    let push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
        on_push(&shared, id, info);
        Ok(())
    };
    let mut c = conn::open(
        &inner.target,
        push,
        inner.opts.connect_timeout,
        inner.opts.op_timeout,
    )
    .await?;
    let tracking = inner.opts.client_cache
        && matches!(c, Conn::Single(_))
        && enable_tracking(inner, &mut c).await;
    if matches!(c, Conn::Single(_)) {
        conn::load_scripts(&mut c).await?;
    }
    measure_offset(inner, &mut c).await?;
    note_run_id(inner, &mut c).await?;
    loop {
        if inner.pending_bump.swap(false, Ordering::SeqCst)
            && let Err(e) = bump_epoch(inner, &mut c).await
        {
            inner.pending_bump.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        let mut live = inner.live.write().unwrap_or_else(|e| e.into_inner());
        if inner.pending_bump.load(Ordering::SeqCst) {
            continue;
        }
        // Tracking is on for this connection: from now on every change is
        // pushed to us, so the (empty) cache may start filling.
        inner.shared.cache.reset(tracking);
        *live = Some(Live { id, conn: c });
        inner.shared.live_id.store(id, Ordering::SeqCst);
        inner.metrics.up.set(1);
        return Ok(tracking);
    }
}

async fn enable_tracking(inner: &Inner, c: &mut Conn) -> bool {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    for p in inner.shared.keys.tracking_prefixes() {
        cmd.arg("PREFIX").arg(p);
    }
    match cmd.query_async::<()>(c).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "redis CLIENT TRACKING unavailable; running without the client-side cache");
            false
        }
    }
}

async fn measure_offset(inner: &Inner, c: &mut Conn) -> Result<(), RedisError> {
    let local_us = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    };
    let before = SystemTime::now();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(c).await?;
    let after = SystemTime::now();
    let local = (local_us(before) + local_us(after)) / 2;
    inner
        .offset_us
        .store(secs * 1_000_000 + micros - local, Ordering::Relaxed);
    Ok(())
}

/// A Redis whose run id changed since our last connection was restarted or
/// failed over: whatever it lost (invalidations not yet persisted or
/// replicated) may have trusted validations standing, so bump the epoch
/// before serving from it.
async fn note_run_id(inner: &Inner, c: &mut Conn) -> Result<(), RedisError> {
    if !matches!(c, Conn::Single(_)) {
        // A cluster has one run id per node; its failovers are the
        // cluster's own business (and its replicas' acknowledgements).
        return Ok(());
    }
    let info: String = redis::cmd("INFO").arg("server").query_async(c).await?;
    let Some(run_id) = run_id_of(&info) else {
        return Ok(());
    };
    let mut known = inner.run_id.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(before) = known.as_deref()
        && before != run_id
    {
        tracing::warn!(
            url = %inner.url,
            before,
            now = run_id,
            "redis store was restarted or failed over (new run id): bumping the epoch"
        );
        inner.pending_bump.store(true, Ordering::SeqCst);
    }
    *known = Some(run_id.to_owned());
    Ok(())
}

/// The `run_id` field of `INFO server`.
fn run_id_of(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

async fn bump_epoch(inner: &Inner, c: &mut Conn) -> Result<(), RedisError> {
    let meta_ttl = u64::try_from(inner.opts.meta_ttl.as_millis()).unwrap_or(u64::MAX);
    let keys = &inner.shared.keys;
    let epoch: String = SCRIPTS
        .epoch
        .key(keys.meta())
        .key(keys.clock())
        .key(keys.purge())
        .key(keys.key_marks())
        .arg(meta_ttl)
        .invoke_async(c)
        .await?;
    inner.metrics.epoch_bumps.inc();
    tracing::warn!(
        url = %inner.url,
        %epoch,
        "redis store epoch bumped: an invalidation may be lost (a write's invalidation failed, or the store restarted), so no earlier validation is trusted"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::run_id_of;

    #[test]
    fn run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(run_id_of(info), Some("abc123"));
        assert_eq!(run_id_of("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_of(""), None);
    }
}
