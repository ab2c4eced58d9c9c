//! The request path, as named steps:
//! policy → key → precondition → forward → tag → record → respond.
//!
//! [`Proxy`] is the hyper `Service`. [`Context::handle`] is the table of
//! contents: it picks the route, builds the store key, parses the
//! preconditions, and hands GET/HEAD to [`Context::read`] and everything
//! else to [`Context::write`]. Store errors become responses here and
//! nowhere else: reads degrade to content-derived tags, conditional writes
//! fail closed with 503.

mod body;
mod error;
mod forward;
mod hop;
mod respond;
mod server;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HOST, LAST_MODIFIED,
    RANGE, TRANSFER_ENCODING, VARY,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

pub use body::{Body, BoxError};
pub use error::ProxyError;
pub use server::{ServeError, Server, ServerConfig};

use self::body::{Buffered, boxed, buffer_and_tag, empty, full};
use self::forward::{Rewrite, Upstream};
use self::hop::{add_via, is_upgrade, strip_hop_by_hop};
use self::respond::{cache_status, not_modified, parse_range, set_validators};
use crate::config::ProxyOptions;
use crate::date::parse_http_date;
use crate::key::{CanonicalTarget, VaryNames, resource_key, variant_key, vary_names};
use crate::metrics::{Metrics, Outcome};
use crate::policy::{Mode, Policy, PolicyHandle, Route};
use crate::precondition::{Conditions, Decision, Validators, evaluate, is_write};
use crate::store::{Entry, Resource, ResourceKey, Store, StoreError, VariantKey, WriteLock};
use crate::tag::EntityTag;

/// Everything a request needs, shared by every connection.
pub struct Context {
    /// Timeouts, limits and the credential secret.
    options: ProxyOptions,
    /// Where tag state lives.
    store: Arc<dyn Store>,
    /// The current policy (hot-reloaded).
    policy: PolicyHandle,
    /// Metric families.
    metrics: Arc<Metrics>,
    /// The app's keep-alive pool.
    upstream: Upstream,
}

/// The hyper service: a cheap handle on the shared [`Context`].
#[derive(Clone)]
pub struct Proxy {
    ctx: Arc<Context>,
}

/// One request in flight: what every step after the key needs.
struct Exchange {
    parts: Parts,
    policy: Arc<Policy>,
    route: Route,
    key: ResourceKey,
    conditions: Conditions,
    /// The policy's invalidation globs covering this path.
    watched: Vec<Arc<str>>,
}

/// What a step returns: the response and how to count it.
type Answer = Result<(Response<Body>, Outcome), ProxyError>;

/// A representation exists but carries no canonical tag (too large to hash,
/// `no-store`, `Vary: *`). Its tag contains a space, which no client can
/// send, so it can satisfy `If-Match: *` but never a listed tag.
fn untagged_marker() -> EntityTag {
    EntityTag {
        weak: false,
        opaque: " untagged".to_owned(),
    }
}

// === impl Proxy ===

impl Proxy {
    /// A proxy to `options.upstream`.
    pub fn new(
        options: ProxyOptions,
        store: Arc<dyn Store>,
        policy: PolicyHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let upstream = Upstream::new(options.upstream.clone(), options.upstream_timeout);
        Self {
            ctx: Arc::new(Context {
                options,
                store,
                policy,
                metrics,
                upstream,
            }),
        }
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let ctx = self.ctx.clone();
        Box::pin(async move { Ok(ctx.handle(req).await) })
    }
}

// === impl Context ===

impl Context {
    /// Serve one request; never fails (failures are responses).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let (response, outcome) = match self.dispatch(req).await {
            Ok(answer) => answer,
            Err(e) => {
                if let Some(kind) = e.upstream_kind() {
                    self.metrics.upstream_error(kind);
                }
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), %method, "request failed");
                let outcome = e.outcome();
                (e.into_response(self.options.retry_after), outcome)
            }
        };
        self.metrics.request(&method, outcome);
        tracing::debug!(%method, path = uri.path(), status = response.status().as_u16(), ?outcome, "request");
        response
    }

    /// The table of contents of a request.
    async fn dispatch(&self, req: Request<Incoming>) -> Answer {
        // Upgrades (WebSocket) are handed through untouched.
        if is_upgrade(req.version(), req.headers()) {
            let response = upgrade::pass_through(&self.upstream, req).await?;
            return Ok((response, Outcome::upgrade));
        }
        let (parts, body) = req.into_parts();
        check_host(&parts)?;

        // Step 1, policy: the route of the canonical path.
        let policy = self.policy.current();
        let path = CanonicalTarget::of(&parts).path;
        let route = policy.route(&path).clone();
        if route.mode == Mode::Bypass {
            return self.bypass(parts, body, &policy, &route).await;
        }

        // Step 2, key: resource and credential scope.
        let key = resource_key(&parts, route.shared, &self.options.credential_secret);
        let watched = policy.watched(&key.path);

        // Step 3, preconditions: parsed once, evaluated by the sidecar.
        let conditions = Conditions::from_headers(&parts.headers);
        if conditions.lacks_required_precondition(&parts.method, route.require_preconditions) {
            return Ok((
                respond::precondition_required(),
                Outcome::precondition_required,
            ));
        }

        let exchange = Exchange {
            parts,
            policy,
            route,
            key,
            conditions,
            watched,
        };
        // Steps 4-7 differ for reads and writes.
        if matches!(exchange.parts.method, Method::GET | Method::HEAD) {
            self.read(&exchange).await
        } else {
            self.write(&exchange, body).await
        }
    }

    /// GET and HEAD: trust → forward → tag → record → respond.
    async fn read(&self, ex: &Exchange) -> Answer {
        let head = ex.parts.method == Method::HEAD;

        // Trust: a fresh validation answers without the app.
        let mut fwd = if ex.conditions.is_empty() {
            "miss"
        } else {
            "stale"
        };
        if ex.route.mode == Mode::Trust && !ex.conditions.is_empty() {
            match self.trusted(ex).await {
                Trusted::Hit(response) => return Ok((response, Outcome::trusted_not_modified)),
                Trusted::Stale => fwd = "stale",
                Trusted::Miss => fwd = "miss",
            }
        }

        // Forward: conditionals and Range stripped, HEAD sent as GET (the
        // body is needed to hash; it is dropped below).
        let request = self.upstream.request(
            &ex.parts,
            empty(),
            Rewrite {
                strip_conditionals: true,
                method: Some(Method::GET),
            },
        )?;
        let response = self.upstream.send(request).await?;
        let (mut rparts, rbody) = response.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);

        // Tag: only a cacheable-shaped 200 within the size bound.
        if let Some(reason) = untaggable(&rparts.status, &rparts.headers) {
            return Ok(self.pass_through_read(ex, rparts, boxed(rbody), head, reason));
        }
        let deadline = tokio::time::Instant::now() + self.upstream.timeout();
        let max = ex.policy.max_body_bytes();
        let (body, tag) = match buffer_and_tag(&rparts.headers, rbody, max, deadline).await? {
            Buffered::TooLarge(body) => {
                return Ok(self.pass_through_read(ex, rparts, body, head, "too-large"));
            }
            Buffered::Complete { body, tag } => (body, tag),
        };

        // Record: the shared Last-Modified (and, in Trust, the validation).
        let vary = match vary_names(&rparts.headers) {
            VaryNames::Names(names) => names,
            VaryNames::Any => Vec::new(), // excluded by `untaggable`
        };
        let variant = variant_key(&vary, &ex.parts.headers);
        let (validators, stored) = self
            .record(ex, &vary, &variant, &tag, &rparts.headers)
            .await;
        set_validators(&mut rparts.headers, &validators);
        rparts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        cache_status(&mut rparts.headers, &format!("fwd={fwd}; {stored}"));

        // Respond: the sidecar's own precondition decision.
        match evaluate(&ex.conditions, &ex.parts.method, Some(&validators)) {
            Decision::NotModified => {
                self.metrics.saved(body.len() as u64);
                let mut response = not_modified(&rparts.headers, &validators);
                // The sidecar's own trace fields ride along with §15.4.5's set.
                add_via(response.headers_mut(), http::Version::HTTP_11);
                cache_status(response.headers_mut(), &format!("fwd={fwd}; {stored}"));
                Ok((response, Outcome::not_modified))
            }
            Decision::PreconditionFailed => Ok((
                with_validators(respond::precondition_failed(), &validators),
                Outcome::precondition_failed,
            )),
            Decision::Proceed { ignore_range } => {
                let range = ex
                    .parts
                    .headers
                    .get(RANGE)
                    .filter(|_| !ignore_range && !head);
                if let Some(answer) = range.and_then(|r| parse_range(r, body.len() as u64)) {
                    let response = respond::ranged(rparts.headers, &body, answer, head);
                    return Ok((response, Outcome::partial));
                }
                let body = if head { empty() } else { full(body) };
                Ok((Response::from_parts(rparts, body), Outcome::tagged_200))
            }
        }
    }

    /// A read whose response the sidecar does not tag: the app's status and
    /// body go through; its own `ETag` does not (it would disagree across
    /// replicas). A 404/410 still answers `If-Match` (no representation).
    fn pass_through_read(
        &self,
        ex: &Exchange,
        mut rparts: http::response::Parts,
        body: Body,
        head: bool,
        reason: &str,
    ) -> (Response<Body>, Outcome) {
        let gone = matches!(rparts.status, StatusCode::NOT_FOUND | StatusCode::GONE);
        if gone && evaluate(&ex.conditions, &ex.parts.method, None) == Decision::PreconditionFailed
        {
            return (respond::precondition_failed(), Outcome::precondition_failed);
        }
        if rparts.status == StatusCode::OK {
            rparts.headers.remove(ETAG);
        }
        cache_status(
            &mut rparts.headers,
            &format!(
                "fwd=uri-miss; fwd-status={}; detail={reason}",
                rparts.status.as_u16()
            ),
        );
        let body = if head { empty() } else { body };
        (Response::from_parts(rparts, body), Outcome::passthrough)
    }

    /// Trust mode: is there a validation of this variant younger than
    /// `maxAge`, not invalidated since, that makes the request a 304?
    async fn trusted(&self, ex: &Exchange) -> Trusted {
        let Some(resource) = self.lookup(ex).await else {
            return Trusted::Miss;
        };
        let variant = variant_key(&resource.vary, &ex.parts.headers);
        let Some(entry) = resource.variant(&variant) else {
            return Trusted::Miss;
        };
        if !is_fresh(entry, ex.route.max_age) {
            return Trusted::Stale;
        }
        let validators = Validators {
            tag: entry.tag.clone(),
            last_modified: Some(entry.last_modified),
        };
        if evaluate(&ex.conditions, &ex.parts.method, Some(&validators)) != Decision::NotModified {
            return Trusted::Stale;
        }
        let mut headers = HeaderMap::new();
        if !resource.vary.is_empty()
            && let Ok(v) = HeaderValue::from_str(&resource.vary.join(", "))
        {
            headers.insert(VARY, v);
        }
        let mut response = not_modified(&headers, &validators);
        add_via(response.headers_mut(), http::Version::HTTP_11);
        cache_status(response.headers_mut(), "hit");
        Trusted::Hit(response)
    }

    /// Read the store; a failure degrades to "nothing known" (and is counted).
    async fn lookup(&self, ex: &Exchange) -> Option<Resource> {
        let _timer = self.metrics.store_op("lookup");
        match self.store.lookup(&ex.key, &ex.watched).await {
            Ok(found) => found,
            Err(e) => {
                self.store_failed("lookup", &e);
                None
            }
        }
    }

    /// Record a freshly hashed tag. On a store failure the tag stays
    /// content-derived and `Last-Modified` is the app's (or absent).
    async fn record(
        &self,
        ex: &Exchange,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        app_headers: &HeaderMap,
    ) -> (Validators, &'static str) {
        let trust = ex.route.mode == Mode::Trust;
        let _timer = self.metrics.store_op("record");
        match self.store.record(&ex.key, vary, variant, tag, trust).await {
            Ok(entry) => (
                Validators {
                    tag: entry.tag,
                    last_modified: Some(entry.last_modified),
                },
                "stored",
            ),
            Err(e) => {
                self.store_failed("record", &e);
                let last_modified = app_headers
                    .get(LAST_MODIFIED)
                    .and_then(|v| parse_http_date(v.as_bytes()));
                (
                    Validators {
                        tag: tag.clone(),
                        last_modified,
                    },
                    "detail=store-unavailable",
                )
            }
        }
    }

    /// Writes and other methods: lock (if conditional) → evaluate against
    /// the current tag → forward → invalidate → unlock.
    async fn write(&self, ex: &Exchange, body: Incoming) -> Answer {
        let conditional = !ex.conditions.is_empty()
            && !matches!(
                ex.parts.method,
                Method::OPTIONS | Method::TRACE | Method::CONNECT
            );
        if !conditional {
            return self.forward_write(ex, body).await;
        }
        let lock = self.acquire(&ex.key).await?;
        let answer = self.write_locked(ex, body).await;
        let _timer = self.metrics.store_op("unlock");
        if let Err(e) = self.store.unlock(&lock).await {
            // The lease frees it soon; the write itself is done.
            self.store_failed("unlock", &e);
        }
        answer
    }

    /// A conditional write holding the resource's lock.
    async fn write_locked(&self, ex: &Exchange, body: Incoming) -> Answer {
        let current = self.current_validators(ex).await?;
        match evaluate(&ex.conditions, &ex.parts.method, current.as_ref()) {
            Decision::Proceed { .. } => self.forward_write(ex, body).await,
            Decision::NotModified | Decision::PreconditionFailed => {
                Ok((respond::precondition_failed(), Outcome::precondition_failed))
            }
        }
    }

    /// Forward a write; unless the app refused it (4xx), nothing validated
    /// before it is trusted again, and that holds before the client hears.
    async fn forward_write(&self, ex: &Exchange, body: Incoming) -> Answer {
        let request = self.upstream.request(
            &ex.parts,
            boxed(body),
            Rewrite {
                strip_conditionals: true,
                method: None,
            },
        )?;
        let sent = self.upstream.send(request).await;
        let refused = matches!(&sent, Ok(r) if r.status().is_client_error());
        if is_write(&ex.parts.method) && !refused {
            self.invalidate(&ex.key, &ex.route.invalidates).await;
        }
        let (mut rparts, rbody) = sent?.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        // The app's validators would disagree across replicas.
        rparts.headers.remove(ETAG);
        rparts.headers.remove(LAST_MODIFIED);
        cache_status(&mut rparts.headers, "fwd=method");
        let outcome = if is_write(&ex.parts.method) {
            Outcome::write
        } else {
            Outcome::passthrough
        };
        Ok((Response::from_parts(rparts, boxed(rbody)), outcome))
    }

    /// Invalidate after a write. A failure cannot undo the write; it is
    /// logged and counted, and the store's epoch bump on reconnect (Redis)
    /// stops stale trust.
    async fn invalidate(&self, key: &ResourceKey, globs: &[Arc<str>]) {
        let _timer = self.metrics.store_op("invalidate");
        if let Err(e) = self.store.invalidate(key, globs).await {
            self.store_failed("invalidate", &e);
        }
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
        let request = self.upstream.request(
            &parts,
            empty(),
            Rewrite {
                strip_conditionals: true,
                method: Some(Method::GET),
            },
        )?;
        let response = self.upstream.send(request).await?;
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
    async fn bypass(&self, parts: Parts, body: Incoming, policy: &Policy, route: &Route) -> Answer {
        let request = self.upstream.request(
            &parts,
            boxed(body),
            Rewrite {
                strip_conditionals: false,
                method: None,
            },
        )?;
        let sent = self.upstream.send(request).await;
        if is_write(&parts.method) && !matches!(&sent, Ok(r) if r.status().is_client_error()) {
            let key = resource_key(&parts, true, &self.options.credential_secret);
            let mut globs = route.invalidates.clone();
            globs.extend(policy.watched(&key.path));
            self.invalidate(&key, &globs).await;
        }
        let (mut rparts, rbody) = sent?.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        cache_status(&mut rparts.headers, "fwd=bypass");
        Ok((
            Response::from_parts(rparts, boxed(rbody)),
            Outcome::passthrough,
        ))
    }

    fn store_failed(&self, op: &'static str, e: &StoreError) {
        self.metrics.store_error(op);
        tracing::warn!(op, error = %e, "store operation failed");
    }
}

/// The outcome of the Trust step.
enum Trusted {
    /// Answered from the store.
    Hit(Response<Body>),
    /// Known, but too old, invalidated, or not a match: ask the app.
    Stale,
    /// Nothing known.
    Miss,
}

/// Whether a store entry's validation is younger than `max_age`.
fn is_fresh(entry: &Entry, max_age: Duration) -> bool {
    entry
        .validated_at
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .is_some_and(|age| age < max_age)
}

/// Why a read response cannot be tagged, if it cannot.
fn untaggable(status: &StatusCode, headers: &HeaderMap) -> Option<&'static str> {
    if *status != StatusCode::OK {
        return Some("status");
    }
    let no_store = headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|d| {
            let d = d.trim_ascii();
            d.eq_ignore_ascii_case(b"no-store")
        })
    });
    if no_store {
        return Some("no-store");
    }
    if vary_names(headers) == VaryNames::Any {
        return Some("vary-star");
    }
    None
}

/// `Host` must be a plain visible-ASCII field if present (a key is derived
/// from it and the app will see it).
fn check_host(parts: &Parts) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if first.is_some_and(|h| h.as_bytes().iter().any(|b| !b.is_ascii_graphic())) {
        return Err(ProxyError::BadRequest("Host header is not a valid host"));
    }
    Ok(())
}

/// A 412 carries the current validators so the client can retry.
fn with_validators(mut response: Response<Body>, validators: &Validators) -> Response<Body> {
    set_validators(response.headers_mut(), validators);
    response
}

/// A body of known bytes (for other servers in this crate).
pub fn full_body(bytes: bytes::Bytes) -> Body {
    full(bytes)
}
