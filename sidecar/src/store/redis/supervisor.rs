//! The connection supervisor: connects, sets up tracking and scripts,
//! checks that the server is the primary, bumps the epoch when an
//! invalidation was lost or the primary changed, installs the connection,
//! checks the primary's role and replicas while connected, and reconnects
//! with backoff when the connection is lost or the primary changed. Logs
//! one line per state change, never one per request.

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
    /// Reached a replica, or a primary the sentinels no longer name.
    NotPrimary,
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
        SetupError::NotPrimary(_) => State::NotPrimary,
    }
}

enum SetupError {
    Redis(RedisError),
    Timeout,
    NotPrimary(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Redis(e) => write!(f, "{e}"),
            SetupError::Timeout => f.write_str("connection setup timed out"),
            SetupError::NotPrimary(why) => f.write_str(why),
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
            Ok(up) => {
                tracing::info!(
                    url = %inner.url,
                    client_cache = up.tracking,
                    replicas = up.replicas,
                    wait_for_replicas = up.wait_for,
                    "redis store connected"
                );
                backoff.reset();
                watch_primary(&inner).await;
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
                tracing::debug!(url = %inner.url, error = %e, "redis store connection attempt failed");
                if state != Some(now) {
                    match now {
                        State::Auth => tracing::error!(
                            url = %inner.url,
                            error = %e,
                            "redis store authentication failed: check the password / ACL user in the Redis URL; retrying with backoff"
                        ),
                        State::NotPrimary => tracing::warn!(
                            url = %inner.url,
                            error = %e,
                            "redis store: not the primary (a failover in progress?); retrying with backoff"
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

/// What a successful connection attempt installed.
struct Connected {
    /// The client-side cache is on.
    tracking: bool,
    /// Replicas connected to the primary.
    replicas: u32,
    /// Replicas each lock and invalidation waits for.
    wait_for: u32,
}

/// One connection attempt; on success the connection is installed.
async fn connect_once(inner: &Arc<Inner>) -> Result<Connected, SetupError> {
    let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
    let pusher = || {
        let shared = inner.shared.clone();
        move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            on_push(&shared, id, info);
            Ok(())
        }
    };
    let opened = conn::open(
        &inner.target,
        pusher(),
        pusher(),
        inner.opts.connect_timeout,
        inner.opts.op_timeout,
    )
    .await?;
    let (mut c, writer) = (opened.main, opened.writer);
    // A new connection has no tracking on the server (a promoted replica
    // has no tracking table for us at all): turned on here every time, and
    // the cache starts empty when the connection is installed.
    let tracking = inner.opts.client_cache
        && matches!(c, Conn::Single(_))
        && enable_tracking(inner, &mut c).await;
    if matches!(c, Conn::Single(_)) {
        conn::load_scripts(&mut c).await?;
    }
    measure_offset(inner, &mut c).await?;
    let replicas = note_primary(inner, &mut c, opened.primary).await?;
    // Releases noted up to the last replay on this connection (which
    // replays every unsent one too).
    let mut replayed = None;
    inner.take_releases_unsent();
    loop {
        if inner.pending_bump.swap(false, Ordering::SeqCst)
            && let Err(e) = bump_epoch(inner, &mut c).await
        {
            inner.pending_bump.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        let noted = inner.releases_noted();
        if replayed != Some(noted) {
            repeat_releases(inner, &mut c).await?;
            replayed = Some(noted);
        }
        let mut live = inner.live.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the write lock, like the bump: a release noted
        // after the replay found no connection to run on (this one is not
        // installed yet), so it is replayed here before this one serves.
        if inner.pending_bump.load(Ordering::SeqCst) || replayed != Some(inner.releases_noted()) {
            continue;
        }
        // Tracking is on for this connection: from now on every change is
        // pushed to us, so the (empty) cache may start filling.
        inner.shared.cache.reset(tracking);
        inner.replicas_seen.store(replicas, Ordering::SeqCst);
        let wait_for = inner.opts.wait_replicas.count(replicas);
        inner.wait_for.store(wait_for, Ordering::SeqCst);
        *live = Some(Live {
            id,
            conn: c,
            writer,
        });
        inner.shared.live_id.store(id, Ordering::SeqCst);
        inner.metrics.up.set(1);
        return Ok(Connected {
            tracking,
            replicas,
            wait_for,
        });
    }
}

/// While connected: every [`RedisOptions::role_check`](super::RedisOptions)
/// (or at once after a `WAIT` fell short), check the primary's role; return
/// when the connection is gone or was given up.
async fn watch_primary(inner: &Inner) {
    loop {
        tokio::select! {
            () = inner.shared.down.notified() => return,
            () = tokio::time::sleep(inner.opts.role_check) => {}
            () = inner.recheck.notified() => {}
        }
        check_primary(inner).await;
        if inner.take_releases_unsent() {
            replay_unsent_releases(inner).await;
        }
    }
}

/// Replay the recent releases on the live connection after one failed
/// (see `Inner::release_unsent`): otherwise a lock whose release found no
/// connection, or an error, would block its resource for the rest of its
/// lease whenever no reconnect follows.
async fn replay_unsent_releases(inner: &Inner) {
    let mut c = {
        let live = inner.live.read().unwrap_or_else(|e| e.into_inner());
        match &*live {
            Some(l) => l.conn.clone(),
            None => return,
        }
    };
    let replay = repeat_releases(inner, &mut c);
    match tokio::time::timeout(inner.opts.op_timeout, replay).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "replaying lock releases failed; retried at the next check");
            inner.release_unsent();
        }
        Err(_) => inner.release_unsent(),
    }
}

/// One role check of the live connection: a server that became a replica,
/// changed its replication id, or lost the replicas writes wait for, is
/// given up (the supervisor resolves the primary again).
async fn check_primary(inner: &Inner) {
    let (id, mut c) = {
        let live = inner.live.read().unwrap_or_else(|e| e.into_inner());
        match &*live {
            Some(l) => (l.id, l.conn.clone()),
            None => return,
        }
    };
    if !matches!(c, Conn::Single(_)) {
        return;
    }
    let mut cmd = redis::cmd("INFO");
    cmd.arg("replication");
    let query = cmd.query_async::<String>(&mut c);
    let info = match tokio::time::timeout(inner.opts.op_timeout, query).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                inner.drop_live(id, &format!("the role check failed: {e}"));
            } else {
                tracing::debug!(error = %e, "redis role check refused");
            }
            return;
        }
        Err(_) => {
            inner.drop_live(id, "the role check timed out");
            return;
        }
    };
    let repl = Replication::parse(&info);
    if !repl.primary {
        inner.drop_live(
            id,
            "the server is now a replica (demoted by a failover): resolving the primary again",
        );
        return;
    }
    let known_replid = inner
        .identity
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|(_, replid)| replid.clone());
    if known_replid.is_some_and(|known| known != repl.replid) {
        inner.drop_live(
            id,
            "the primary's replication id changed (it was a replica meanwhile)",
        );
        return;
    }
    let seen = inner.replicas_seen.load(Ordering::SeqCst);
    // A replica left: it may have been promoted (Sentinel detaches the
    // one it promotes first), so writes here may be lost soon. Resolve the
    // primary again (and learn the replicas afresh if it is still this
    // one).
    if repl.replicas < seen {
        inner.drop_live(
            id,
            &format!(
                "a replica left the primary ({} connected, {seen} before): resolving the primary again",
                repl.replicas
            ),
        );
        return;
    }
    if repl.replicas > seen {
        inner.replicas_seen.store(repl.replicas, Ordering::SeqCst);
        let wait_for = inner.opts.wait_replicas.count(repl.replicas);
        if inner.wait_for.swap(wait_for, Ordering::SeqCst) != wait_for {
            tracing::info!(
                url = %inner.url,
                replicas = repl.replicas,
                wait_for,
                "redis store primary has replicas now: locks and invalidations wait for {wait_for} replica(s)"
            );
        }
    }
}

/// Repeat the recent lock releases (`Inner::note_release`) on a new
/// connection before it serves writes: one pipelined round trip.
async fn repeat_releases(inner: &Inner, c: &mut Conn) -> Result<(), RedisError> {
    let releases = inner.recent_releases();
    if releases.is_empty() {
        return Ok(());
    }
    // The same keys as `RedisStore::unlock`: the lock and the store's
    // lock-deadline set.
    let deadlines = inner.shared.keys.lock_deadlines();
    if matches!(c, Conn::Cluster(_)) {
        for r in &releases {
            let _: i64 = SCRIPTS
                .unlock
                .key(&r.key)
                .key(&deadlines)
                .arg(&r.token)
                .arg(&r.holder)
                .invoke_async(c)
                .await?;
        }
        return Ok(());
    }
    let sha = SCRIPTS.unlock.get_hash();
    let mut p = redis::pipe();
    for r in &releases {
        p.cmd("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(&r.key)
            .arg(&deadlines)
            .arg(&r.token)
            .arg(&r.holder);
    }
    let released: Vec<i64> = p.query_async(c).await?;
    let released = released.iter().filter(|n| **n == 1).count();
    if released > 0 {
        tracing::info!(
            url = %inner.url,
            locks = released,
            "released write locks whose release was lost (the store was away or failed over)"
        );
    }
    Ok(())
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

/// Check that the server is the primary (and, for a sentinel URL, still
/// the one the sentinels name), and note its identity: a primary whose run
/// id (a restart) or replication id (a promotion, or a demotion and back)
/// changed since our last connection may lack invalidations the old one
/// acknowledged, so the epoch is bumped before serving from it. Returns
/// the replicas connected to it.
async fn note_primary(
    inner: &Inner,
    c: &mut Conn,
    resolved: Option<(String, u16)>,
) -> Result<u32, SetupError> {
    if !matches!(c, Conn::Single(_)) {
        // A cluster has one run id per node; its failovers are the
        // cluster's own business (and its replicas' acknowledgements).
        return Ok(0);
    }
    let (server, replication): (String, String) = redis::pipe()
        .cmd("INFO")
        .arg("server")
        .cmd("INFO")
        .arg("replication")
        .query_async(c)
        .await?;
    let repl = Replication::parse(&replication);
    if !repl.primary {
        return Err(SetupError::NotPrimary(
            "the server is a replica, not the primary".into(),
        ));
    }
    if let Some(resolved) = resolved {
        let named = conn::sentinel_primary(&inner.target, inner.opts.connect_timeout).await?;
        if named.as_ref() != Some(&resolved) {
            return Err(SetupError::NotPrimary(format!(
                "the sentinels now name {named:?} as the primary, not {}:{}",
                resolved.0, resolved.1
            )));
        }
    }
    let Some(run_id) = info_field(&server, "run_id") else {
        return Ok(repl.replicas);
    };
    let now = (run_id.to_owned(), repl.replid.clone());
    let mut known = inner.identity.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(before) = known.as_ref()
        && *before != now
    {
        tracing::warn!(
            url = %inner.url,
            before_run_id = %before.0,
            before_replid = %before.1,
            run_id = %now.0,
            replid = %now.1,
            "redis store primary changed (restarted, or failed over to another server): bumping the epoch"
        );
        inner.pending_bump.store(true, Ordering::SeqCst);
    }
    *known = Some(now);
    Ok(repl.replicas)
}

/// What `INFO replication` says about a server.
#[derive(Debug, PartialEq, Eq)]
struct Replication {
    primary: bool,
    /// Its replication id (new at every promotion).
    replid: String,
    /// Replicas connected to it.
    replicas: u32,
}

impl Replication {
    fn parse(info: &str) -> Self {
        Replication {
            primary: info_field(info, "role") == Some("master"),
            replid: info_field(info, "master_replid")
                .unwrap_or_default()
                .to_owned(),
            replicas: info_field(info, "connected_slaves")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// A field of an `INFO` section.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
        .filter(|v| !v.is_empty())
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
    use super::{Replication, info_field};

    #[test]
    fn run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(info_field(info, "run_id"), Some("abc123"));
        assert_eq!(info_field("# Server\r\nrun_id:\r\n", "run_id"), None);
        assert_eq!(info_field("", "run_id"), None);
    }

    #[test]
    fn replication_is_read_from_info() {
        let primary = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=1,state=online,offset=1,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_replid2:0000\r\n";
        assert_eq!(
            Replication::parse(primary),
            Replication {
                primary: true,
                replid: "abc".into(),
                replicas: 2
            }
        );
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nconnected_slaves:0\r\nmaster_replid:def\r\n";
        assert!(!Replication::parse(replica).primary);
        // `master_replid2` is not `master_replid`.
        assert_eq!(
            Replication::parse("role:master\r\nmaster_replid2:x\r\n").replid,
            ""
        );
    }
}
