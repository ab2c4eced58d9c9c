//! Writes and other methods: lock (if conditional) → judge against the
//! current representation → invalidate → forward → invalidate again →
//! unlock; and Bypass.
//!
//! Invalidating before forwarding as well as after means a crash (or a
//! lost store) between the app's commit and the second invalidation leaves
//! nothing trusted; the second one ends validations that raced the write.
//! A successful write's `Surrogate-Key` response header purges those keys
//! at the same point, before the client gets the response (the header
//! itself never reaches the client).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;

use super::body::boxed;
use super::current::{Fetched, Known, app_validators, is_no_store};
use super::error::ProxyError;
use super::forward::Rewrite;
use super::hop::{add_via, strip_hop_by_hop};
use super::lane::Lane;
use super::respond::{self, cache_status_static};
use super::{Answer, Context, Exchange, untagged_marker};
use crate::backoff::Backoff;
use crate::date::parse_http_date;
use crate::encoding::conditions_as_identity;
use crate::key::resource_key;
use crate::metrics::{Metrics, Outcome};
use crate::policy::{Mode, Policy, Route};
use crate::precondition::{Decision, Validators, evaluate};
use crate::store::{Purge, ResourceKey, Store, StoreError, WriteLock};
use crate::surrogate;

/// Who judges a conditional write's preconditions.
enum Judge {
    /// The sidecar, against the canonical validators (`None`: the resource
    /// has no current representation).
    Sidecar(Option<Validators>),
    /// A `no-store` API: its own validators. The sidecar checks them too
    /// (under the lock) and forwards the conditionals for the app to check.
    App(Validators),
}

/// What a write invalidates: the resource's path and these globs.
struct Invalidation {
    key: ResourceKey,
    globs: Vec<Arc<str>>,
    /// A Trust route depends on this path: a write that cannot invalidate
    /// must not be forwarded (503), or trusted 304s would outlive it.
    trust_watched: bool,
}

impl Context {
    /// Writes and other methods: lock (if conditional) → judge →
    /// invalidate → forward → invalidate → unlock.
    pub(super) async fn write(&self, ex: &Exchange, body: Incoming) -> Answer {
        let conditional = !ex.conditions.is_empty()
            && !matches!(
                ex.parts.method,
                Method::OPTIONS | Method::TRACE | Method::CONNECT
            );
        let mut rewrite = Rewrite::JUDGED;
        let guard = if conditional {
            // Released when dropped, even if the client goes away.
            let guard = self.acquire(&ex.key).await?;
            // A tag of any coding the sidecar derived (`encoding.rs`) names
            // the representation it was derived from.
            let mut conditions = Cow::Borrowed(&ex.conditions);
            let current = match self.judge(ex).await? {
                Judge::Sidecar(current) => {
                    conditions = conditions_as_identity(&ex.conditions);
                    current
                }
                Judge::App(current) => {
                    rewrite = Rewrite::AS_IS;
                    Some(current)
                }
            };
            match evaluate(&conditions, &ex.parts.method, current.as_ref()) {
                Decision::Proceed { .. } => {}
                Decision::NotModified | Decision::PreconditionFailed => {
                    guard.release().await;
                    return Ok((respond::precondition_failed(), Outcome::precondition_failed));
                }
            }
            Some(guard)
        } else {
            None
        };
        let invalidation = (!ex.parts.method.is_safe()).then(|| Invalidation {
            key: ex.key.clone(),
            globs: ex.route.invalidates.clone(),
            trust_watched: trust_watched(&ex.policy, &ex.route, &ex.key.path),
        });
        let request = self.upstream.request(&ex.parts, boxed(body), rewrite)?;
        let response = self
            .send_write(request, ex.lane.clone(), invalidation, guard)
            .await?;
        let (mut rparts, rbody) = response.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        // The app's validators would disagree across replicas, except a
        // `no-store` API's own, which its clients send back in `If-Match`.
        if !is_no_store(&rparts.headers) {
            rparts.headers.remove(ETAG);
            rparts.headers.remove(LAST_MODIFIED);
        }
        cache_status_static(&mut rparts.headers, "sametag; fwd=method");
        let outcome = if ex.parts.method.is_safe() {
            Outcome::passthrough
        } else {
            Outcome::write
        };
        Ok((Response::from_parts(rparts, boxed(rbody)), outcome))
    }

    /// Invalidate (see the module docs), send a write to the app, then
    /// (unless the app refused it with a 4xx) invalidate again, then release
    /// the lock. The exchange runs as its own task: a client that
    /// disconnects cannot cut it short between the app applying the write
    /// and the invalidation every replica must see.
    async fn send_write(
        &self,
        request: http::Request<super::body::Body>,
        lane: Option<Lane>,
        invalidation: Option<Invalidation>,
        guard: Option<LockGuard>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        if let Some(inv) = &invalidation
            && let Err(e) = self.invalidate(inv).await
            && inv.trust_watched
        {
            // Fail closed: nothing has reached the app yet.
            return Err(ProxyError::StoreUnavailable(e));
        }
        let upstream = self.upstream.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let hold_limit = self.options.write_hold_limit();
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Not cut at the upstream timeout: a write the client stopped
            // waiting for (504) may still be committed by the app, so the
            // lock stays held (renewed) and the second invalidation waits
            // until the app has answered, or the hold limit gives up on it.
            let mut sent = upstream
                .send_within(lane.as_ref(), request, hold_limit)
                .await;
            let refused = matches!(&sent, Ok(r) if r.status().is_client_error());
            let named = match &mut sent {
                Ok(r) => surrogate::take_keys(r.headers_mut()),
                Err(_) => Vec::new(),
            };
            // Only an unsafe method that succeeded purges what it names.
            let purges =
                invalidation.is_some() && matches!(&sent, Ok(r) if r.status().is_success());
            if let Some(inv) = invalidation.filter(|_| !refused) {
                let _timer = metrics.store_op("invalidate");
                if let Err(e) = store.invalidate(&inv.key, &inv.globs).await {
                    // The first invalidation already ended earlier trust; the
                    // Redis store bumps its epoch on reconnect for the rest.
                    metrics.store_error("invalidate");
                    tracing::warn!(error = %e, "invalidation after a write failed");
                }
            }
            if purges && !named.is_empty() {
                let purge = Purge::keys(named);
                let _timer = metrics.store_op("purge");
                match store.purge(&purge).await {
                    Ok(report) => metrics.purged(&purge, "write", &report),
                    Err(e) => {
                        // The Redis store bumps its epoch on reconnect.
                        metrics.store_error("purge");
                        tracing::warn!(error = %e, "purging a write's surrogate keys failed");
                    }
                }
            }
            if let Some(guard) = guard {
                guard.release().await;
            }
            // The client may have been answered 504 already: then this
            // response is dropped here.
            let _ = answer.send(sent);
        });
        let timeout = self.upstream.timeout();
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(_)) => Err(ProxyError::UpstreamProtocol(
                "the write's task ended".into(),
            )),
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
        }
    }

    /// One invalidation, timed and counted.
    async fn invalidate(&self, inv: &Invalidation) -> Result<(), StoreError> {
        let _timer = self.metrics.store_op("invalidate");
        self.store
            .invalidate(&inv.key, &inv.globs)
            .await
            .inspect_err(|e| self.store_failed("invalidate", e))
    }

    /// The validators a conditional write is judged against: the store's if
    /// trusted and fresh, else the current representation fetched from the
    /// app with the writer's credentials (the read path's own step). A store
    /// failure fails the write closed.
    async fn judge(&self, ex: &Exchange) -> Result<Judge, ProxyError> {
        if let Known::Fresh { validators, .. } =
            self.known(ex).await.map_err(ProxyError::StoreUnavailable)?
        {
            return Ok(Judge::Sidecar(Some(validators)));
        }
        // A GET with the write's headers, minus its body and preconditions.
        let mut parts = ex.parts.clone();
        for name in [
            CONTENT_LENGTH,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
        ] {
            parts.headers.remove(name);
        }
        match self.fetch_tag(ex, &parts).await? {
            Fetched::Tagged {
                tag,
                vary,
                variant,
                labels,
                ..
            } => {
                let validators = self
                    .record(ex, &vary, &variant, &tag, &labels)
                    .await
                    .map_err(ProxyError::StoreUnavailable)?;
                Ok(Judge::Sidecar(Some(validators)))
            }
            Fetched::Untagged { head, .. } => {
                if let Some(validators) = app_validators(head.status, &head.headers) {
                    return Ok(Judge::App(validators));
                }
                if head.status != StatusCode::OK {
                    // No current representation (404, 405, ...): `If-Match`
                    // fails, `If-None-Match: *` holds.
                    return Ok(Judge::Sidecar(None));
                }
                // It exists but carries no canonical tag: only `If-Match: *`.
                let last_modified = head
                    .headers
                    .get(LAST_MODIFIED)
                    .and_then(|v| parse_http_date(v.as_bytes()));
                Ok(Judge::Sidecar(Some(Validators {
                    tag: untagged_marker(),
                    last_modified,
                })))
            }
        }
    }

    /// Take the resource's write lock, retrying with backoff until
    /// `lock_wait` has passed; the lease is renewed while it is held.
    async fn acquire(&self, key: &ResourceKey) -> Result<LockGuard, ProxyError> {
        let deadline = tokio::time::Instant::now() + self.options.lock_wait;
        let lease = self.options.lock_lease();
        let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
        loop {
            let attempt = {
                let _timer = self.metrics.store_op("lock");
                self.store.try_lock(key, lease).await
            };
            match attempt {
                Ok(Some(lock)) => {
                    return Ok(LockGuard::hold(
                        lock,
                        lease,
                        self.store.clone(),
                        self.metrics.clone(),
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    self.store_failed("lock", &e);
                    return Err(ProxyError::StoreUnavailable(e));
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ProxyError::LockBusy);
            }
            // The last attempt happens at the deadline.
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
    }

    /// Bypass: forward untouched (hop-by-hop aside); unsafe methods still
    /// invalidate so a Trust route never serves what a bypassed write
    /// changed.
    pub(super) async fn bypass(
        &self,
        parts: Parts,
        body: Incoming,
        policy: &Policy,
        route: &Route,
        lane: Option<Lane>,
    ) -> Answer {
        let request = self.upstream.request(&parts, boxed(body), Rewrite::AS_IS)?;
        let response = if parts.method.is_safe() {
            // Nothing to invalidate: no need for the write's own task.
            self.upstream.send(lane.as_ref(), request).await?
        } else {
            let key = resource_key(&parts, true, &self.options.credential_secret);
            let mut globs = route.invalidates.clone();
            globs.extend(policy.watched(&key.path));
            let trust_watched = trust_watched(policy, route, &key.path);
            let invalidation = Invalidation {
                key,
                globs,
                trust_watched,
            };
            self.send_write(request, lane, Some(invalidation), None)
                .await?
        };
        let (mut rparts, rbody) = response.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        surrogate::take_keys(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        cache_status_static(&mut rparts.headers, "sametag; fwd=bypass");
        Ok((
            Response::from_parts(rparts, boxed(rbody)),
            Outcome::passthrough,
        ))
    }
}

/// Whether a Trust route depends on `path`: its own route is Trust, or a
/// Trust route lists a glob matching it in `invalidates`.
fn trust_watched(policy: &Policy, route: &Route, path: &str) -> bool {
    if route.mode == Mode::Trust {
        return true;
    }
    let watched = policy.watched(path);
    !watched.is_empty()
        && policy
            .routes()
            .iter()
            .chain(std::iter::once(policy.default_route()))
            .any(|r| r.mode == Mode::Trust && r.invalidates.iter().any(|g| watched.contains(g)))
}

/// A held write lock: its lease is renewed while held, and it is released
/// when dropped (by a spawned unlock) if it was not released explicitly, so
/// a cancelled request never keeps a resource locked until the lease ends.
pub(super) struct LockGuard {
    lock: Option<WriteLock>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    renewal: tokio::task::AbortHandle,
}

impl LockGuard {
    /// Hold `lock`, renewing its `lease` every third of it: a write slower
    /// than the lease (a slow app, a slow upload) keeps its lock, and a
    /// crashed holder's lock ends one lease after its last renewal.
    fn hold(
        lock: WriteLock,
        lease: Duration,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let renewal = {
            let (lock, store, metrics) = (lock.clone(), store.clone(), metrics.clone());
            tokio::spawn(async move {
                let every = (lease / 3).max(Duration::from_millis(10));
                loop {
                    tokio::time::sleep(every).await;
                    match store.renew(&lock, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            metrics.lock_lease_lost();
                            tracing::warn!(
                                path = %lock.resource.path,
                                "a write lock's lease ended while its write was in flight; another write may have run concurrently"
                            );
                            return;
                        }
                        // The store is away; the lease still runs. Retry.
                        Err(e) => {
                            metrics.store_error("renew");
                            tracing::warn!(error = %e, "renewing a write lock failed");
                        }
                    }
                }
            })
            .abort_handle()
        };
        Self {
            lock: Some(lock),
            store,
            metrics,
            renewal,
        }
    }

    /// Release now.
    async fn release(mut self) {
        self.renewal.abort();
        if let Some(lock) = self.lock.take() {
            let _timer = self.metrics.store_op("unlock");
            if let Err(e) = self.store.unlock(&lock).await {
                // The lease frees it soon.
                self.metrics.store_error("unlock");
                tracing::warn!(error = %e, "unlock failed");
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewal.abort();
        let Some(lock) = self.lock.take() else { return };
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.unlock(&lock).await;
            });
        }
    }
}
