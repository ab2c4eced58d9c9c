//! Writes and other unsafe methods: lock (if conditional) → evaluate
//! against the current tag → forward → invalidate → unlock; and Bypass.

use std::sync::Arc;
use std::time::Duration;

use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{Buffered, boxed, buffer_and_tag};
use super::error::ProxyError;
use super::forward::Rewrite;
use super::hop::{add_via, strip_hop_by_hop};
use super::lane::Lane;
use super::respond::{self, cache_status_static};
use super::{Answer, Context, Exchange, is_fresh, untaggable, untagged_marker};
use crate::date::parse_http_date;
use crate::key::{VaryNames, resource_key, variant_key, vary_names};
use crate::metrics::Metrics;
use crate::metrics::Outcome;
use crate::policy::{Mode, Policy, Route};
use crate::precondition::{Decision, Validators, evaluate, is_write};
use crate::store::{ResourceKey, Store, WriteLock};

impl Context {
    /// Writes and other methods: lock (if conditional) → evaluate against
    /// the current tag → forward → invalidate → unlock.
    pub(super) async fn write(&self, ex: &Exchange, body: Incoming) -> Answer {
        let conditional = !ex.conditions.is_empty()
            && !matches!(
                ex.parts.method,
                Method::OPTIONS | Method::TRACE | Method::CONNECT
            );
        if !conditional {
            return self.forward_write(ex, body, None).await;
        }
        // Released when dropped, even if the client goes away mid-request.
        let guard = LockGuard {
            lock: Some(self.acquire(&ex.key).await?),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
        };
        let current = self.current_validators(ex).await?;
        match evaluate(&ex.conditions, &ex.parts.method, current.as_ref()) {
            Decision::Proceed { .. } => self.forward_write(ex, body, Some(guard)).await,
            Decision::NotModified | Decision::PreconditionFailed => {
                guard.release().await;
                Ok((respond::precondition_failed(), Outcome::precondition_failed))
            }
        }
    }

    /// Forward a write; unless the app refused it (4xx), nothing validated
    /// before it is trusted again, and that holds before the client hears.
    async fn forward_write(
        &self,
        ex: &Exchange,
        body: Incoming,
        guard: Option<LockGuard>,
    ) -> Answer {
        let request = self
            .upstream
            .request(&ex.parts, boxed(body), Rewrite::JUDGED)?;
        let invalidation =
            is_write(&ex.parts.method).then(|| (ex.key.clone(), ex.route.invalidates.clone()));
        let sent = self
            .send_write(request, ex.lane.clone(), invalidation, guard)
            .await;
        let (mut rparts, rbody) = sent?.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        // The app's validators would disagree across replicas.
        rparts.headers.remove(ETAG);
        rparts.headers.remove(LAST_MODIFIED);
        cache_status_static(&mut rparts.headers, "sametag; fwd=method");
        let outcome = if is_write(&ex.parts.method) {
            Outcome::write
        } else {
            Outcome::passthrough
        };
        Ok((Response::from_parts(rparts, boxed(rbody)), outcome))
    }

    /// Send a write to the app, then (unless the app refused it with a 4xx)
    /// invalidate, then release the lock. This runs as its own task: a
    /// client that disconnects cannot cut it short between the app applying
    /// the write and the invalidation every replica must see.
    async fn send_write(
        &self,
        request: http::Request<super::body::Body>,
        lane: Option<Lane>,
        invalidation: Option<(ResourceKey, Vec<Arc<str>>)>,
        guard: Option<LockGuard>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        let upstream = self.upstream.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            let sent = upstream.send(lane.as_ref(), request).await;
            let refused = matches!(&sent, Ok(r) if r.status().is_client_error());
            if let Some((key, globs)) = invalidation.filter(|_| !refused) {
                let _timer = metrics.store_op("invalidate");
                if let Err(e) = store.invalidate(&key, &globs).await {
                    // A failure cannot undo the write; the Redis store bumps
                    // its epoch on reconnect so stale trust ends there.
                    metrics.store_error("invalidate");
                    tracing::warn!(error = %e, "invalidation after a write failed");
                }
            }
            if let Some(guard) = guard {
                guard.release().await;
            }
            sent
        });
        task.await
            .map_err(|e| ProxyError::UpstreamProtocol(e.into()))?
    }

    /// The validators a conditional write is judged against: the store's if
    /// trusted and fresh, else a fresh internal GET to the app.
    async fn current_validators(&self, ex: &Exchange) -> Result<Option<Validators>, ProxyError> {
        if ex.route.mode == Mode::Trust {
            let _timer = self.metrics.store_op("lookup");
            let found = self.store.lookup(&ex.key, &ex.watched).await.map_err(|e| {
                self.store_failed("lookup", &e);
                ProxyError::StoreUnavailable(e)
            })?;
            if let Some(resource) = found {
                let variant = variant_key(&resource.vary, &ex.parts.headers);
                if let Some(entry) = resource.variant(&variant)
                    && is_fresh(entry, ex.route.max_age)
                {
                    return Ok(Some(Validators {
                        tag: entry.tag.clone(),
                        last_modified: Some(entry.last_modified),
                    }));
                }
            }
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
        let response = self.upstream.get_current(&parts, ex.lane.as_ref()).await?;
        let (rparts, rbody) = response.into_parts();
        let last_modified = rparts
            .headers
            .get(LAST_MODIFIED)
            .and_then(|v| parse_http_date(v.as_bytes()));
        if rparts.status != StatusCode::OK {
            // No current representation (404, 405, ...): `If-Match` fails,
            // `If-None-Match: *` holds.
            return Ok(None);
        }
        if untaggable(&rparts.status, &rparts.headers).is_some() {
            return Ok(Some(Validators {
                tag: untagged_marker(),
                last_modified,
            }));
        }
        let deadline = tokio::time::Instant::now() + self.upstream.timeout();
        let max = ex.policy.max_body_bytes();
        let tag = match buffer_and_tag(&rparts.headers, rbody, max, deadline).await? {
            Buffered::Complete { tag, .. } => tag,
            Buffered::TooLarge(_) => {
                return Ok(Some(Validators {
                    tag: untagged_marker(),
                    last_modified,
                }));
            }
        };
        let vary = match vary_names(&rparts.headers) {
            VaryNames::Names(names) => names,
            VaryNames::Any => Vec::new(),
        };
        let variant = variant_key(&vary, &parts.headers);
        let trust = ex.route.mode == Mode::Trust;
        let _timer = self.metrics.store_op("record");
        let entry = self
            .store
            .record(&ex.key, &vary, &variant, &tag, trust)
            .await
            .map_err(|e| {
                self.store_failed("record", &e);
                ProxyError::StoreUnavailable(e)
            })?;
        Ok(Some(Validators {
            tag: entry.tag,
            last_modified: Some(entry.last_modified),
        }))
    }

    /// Take the resource's write lock, retrying with backoff until
    /// `lock_wait` has passed.
    async fn acquire(&self, key: &ResourceKey) -> Result<WriteLock, ProxyError> {
        let deadline = tokio::time::Instant::now() + self.options.lock_wait;
        let lease = self.options.lock_lease();
        let mut backoff = Duration::from_millis(2);
        loop {
            let attempt = {
                let _timer = self.metrics.store_op("lock");
                self.store.try_lock(key, lease).await
            };
            match attempt {
                Ok(Some(lock)) => return Ok(lock),
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
            // Jitter so replicas retrying together do not collide again; the
            // last attempt happens at the deadline.
            let jitter = Duration::from_micros(u64::from(getrandom::u32().unwrap_or(0) % 1000));
            tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Bypass: forward untouched (hop-by-hop aside); writes still invalidate
    /// so a Trust route never serves what a bypassed write changed.
    pub(super) async fn bypass(
        &self,
        parts: Parts,
        body: Incoming,
        policy: &Policy,
        route: &Route,
        lane: Option<Lane>,
    ) -> Answer {
        let request = self.upstream.request(&parts, boxed(body), Rewrite::AS_IS)?;
        let response = if is_write(&parts.method) {
            let key = resource_key(&parts, true, &self.options.credential_secret);
            let mut globs = route.invalidates.clone();
            globs.extend(policy.watched(&key.path));
            self.send_write(request, lane, Some((key, globs)), None)
                .await?
        } else {
            // Nothing to invalidate: no need for the write's own task.
            self.upstream.send(lane.as_ref(), request).await?
        };
        let (mut rparts, rbody) = response.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        cache_status_static(&mut rparts.headers, "sametag; fwd=bypass");
        Ok((
            Response::from_parts(rparts, boxed(rbody)),
            Outcome::passthrough,
        ))
    }
}

/// A held write lock, released when dropped (by a spawned unlock) if it was
/// not released explicitly: a cancelled request never keeps a resource
/// locked until the lease ends.
pub(super) struct LockGuard {
    lock: Option<WriteLock>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl LockGuard {
    /// Release now.
    async fn release(mut self) {
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
        let Some(lock) = self.lock.take() else { return };
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.unlock(&lock).await;
            });
        }
    }
}
