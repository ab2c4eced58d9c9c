//! The request path, as named steps:
//! policy → key → precondition → forward → tag → record → respond.
//!
//! [`Proxy`] is the hyper `Service`. [`Context::dispatch`] is the table of
//! contents: it picks the route (policy), builds the store key, parses the
//! preconditions, and hands GET/HEAD to `read.rs` (trust → forward → tag →
//! record → respond) and everything else to `write.rs` (lock → evaluate →
//! forward → invalidate → unlock). Every failure becomes a response in one
//! place, [`Context::handle`] via [`ProxyError::into_response`]: store errors
//! on reads never get there (reads degrade to content-derived tags), on
//! conditional writes they are `StoreUnavailable` → 503 + `Retry-After`.

mod body;
mod budget;
mod coalesce;
mod compress;
mod current;
mod error;
mod forward;
mod hop;
mod lane;
mod range;
mod read;
mod respond;
mod server;
mod upgrade;
mod write;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

pub use body::{Body, BoxError};
pub use error::ProxyError;
pub use respond::plain;
pub use server::{ServeError, Server, ServerConfig};

use self::budget::TagBudget;
use self::forward::{ClientAddr, Upstream};
pub use self::lane::Lane;
use self::respond::set_validators;
use crate::access_log;
use crate::config::ProxyOptions;
use crate::key::{CanonicalTarget, VaryNames, key_of_target, vary_names};
use crate::metrics::{Metrics, Outcome};
use crate::policy::{Mode, Policy, PolicyHandle, Route};
use crate::precondition::{Conditions, Validators};
use crate::store::{Entry, ResourceKey, Store, StoreError};
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
    /// The app's keep-alive connections: each worker has its own, so an
    /// upstream connection is driven on the thread of the client connection
    /// that uses it.
    upstream: Upstream,
    /// Memory for response bodies held to be tagged, over all requests.
    budget: TagBudget,
    /// Revalidations in flight, shared by concurrent reads of every worker
    /// (`coalesce.rs`).
    flights: Arc<coalesce::Flights>,
    /// Which tags' representations may be compressed (`compress.rs`).
    eligibility: Arc<compress::Eligibility>,
}

/// The hyper service: a cheap handle on the shared [`Context`] and on the
/// client connection's upstream [`Lane`] and address.
#[derive(Clone)]
pub struct Proxy {
    ctx: Arc<Context>,
    lane: Lane,
    /// The client connection's peer (none for the template [`Proxy::new`]
    /// returns).
    peer: Option<SocketAddr>,
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
    /// The client connection's upstream connection (none for HTTP/2).
    lane: Option<Lane>,
}

/// What a step returns: the response and how to count it.
type Answer = Result<(Response<Body>, Outcome), ProxyError>;

/// A representation exists but carries no canonical tag (too large to hash,
/// `no-store`, `Vary: *`). Its tag contains a space, which no client can
/// send, so it can satisfy `If-Match: *` but never a listed tag.
fn untagged_marker() -> EntityTag {
    EntityTag::assemble(false, " untagged")
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
        let budget = TagBudget::new(options.tag_buffer_budget, &metrics);
        Self::with_context(Context {
            upstream: Context::upstream_of(&options, &metrics),
            options,
            store,
            policy,
            metrics,
            budget,
            flights: Arc::default(),
            eligibility: Arc::default(),
        })
    }

    /// The same proxy for another worker thread: everything shared (store,
    /// policy, metrics, budget, flights) but the upstream connections, which
    /// belong to the thread whose runtime drives them.
    pub fn for_worker(&self) -> Self {
        let ctx = &self.ctx;
        Self::with_context(Context {
            upstream: Context::upstream_of(&ctx.options, &ctx.metrics),
            options: ctx.options.clone(),
            store: ctx.store.clone(),
            policy: ctx.policy.clone(),
            metrics: ctx.metrics.clone(),
            budget: ctx.budget.clone(),
            flights: ctx.flights.clone(),
            eligibility: ctx.eligibility.clone(),
        })
    }

    fn with_context(ctx: Context) -> Self {
        let lane = ctx.upstream.lane();
        Self {
            ctx: Arc::new(ctx),
            lane,
            peer: None,
        }
    }

    /// The service for one new client connection from `peer`: same context,
    /// its own upstream lane; the app learns `peer` (`X-Forwarded-For`).
    pub fn for_connection(&self, peer: SocketAddr) -> Self {
        Self {
            ctx: self.ctx.clone(),
            lane: self.ctx.upstream.lane(),
            peer: Some(peer),
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

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let ctx = self.ctx.clone();
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ClientAddr(peer));
        }
        // HTTP/2 multiplexes requests on one connection: those use the pool.
        let lane = (req.version() != http::Version::HTTP_2).then(|| self.lane.clone());
        Box::pin(async move { Ok(ctx.handle(req, lane).await) })
    }
}

// === impl Context ===

impl Context {
    fn upstream_of(options: &ProxyOptions, metrics: &Metrics) -> Upstream {
        Upstream::new(
            options.upstream.clone(),
            options.upstream_timeout,
            options.forwarded_headers,
        )
        .with_body_timeout(options.body_read_timeout)
        .with_latency(metrics.upstream_duration())
    }

    /// Largest body tagged for `ex`: `--max-body-bytes` when given (a
    /// per-workload override), else the policy's `maxBodyBytes`.
    fn max_body_bytes(&self, ex: &Exchange) -> u64 {
        self.options
            .max_body_bytes
            .unwrap_or_else(|| ex.policy.max_body_bytes())
    }

    /// Serve one request, on `lane` when given; never fails (failures are
    /// responses).
    pub async fn handle(&self, req: Request<Incoming>, lane: Option<Lane>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let (response, outcome) = match self.dispatch(req, lane).await {
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
        let mut response = response;
        if !response.headers().contains_key(http::header::VIA) {
            // Answers the sidecar makes itself (412, 428, 502, ...) name it too.
            hop::add_via(response.headers_mut(), http::Version::HTTP_11);
        }
        self.metrics.request(&method, outcome);
        self.metrics
            .request_duration(outcome, response.status(), started.elapsed());
        tracing::debug!(%method, path = uri.path(), status = response.status().as_u16(), ?outcome, "request");
        if self.options.access_log {
            response = access_log::wrap(response, &method, &uri, outcome, started);
        }
        response
    }

    /// The table of contents of a request.
    async fn dispatch(&self, req: Request<Incoming>, lane: Option<Lane>) -> Answer {
        let (mut parts, body) = req.into_parts();
        check_host(&parts)?;

        // Step 1, policy: the route of the canonical path, which is also
        // what the app receives (it must serve what was judged).
        let policy = self.policy.current();
        let target = CanonicalTarget::of(&parts);
        canonicalise_target(&mut parts, &target)?;

        // Upgrades: a WebSocket GET is tunnelled (to what was judged); any
        // other `Upgrade` is dropped and the request served like any other,
        // so a write asking to switch protocols is still judged and locked.
        match upgrade::classify(&parts) {
            upgrade::Kind::WebSocket => {
                let response = upgrade::tunnel(&self.upstream, parts, body).await?;
                return Ok((response, Outcome::upgrade));
            }
            upgrade::Kind::Refused => upgrade::refuse(&mut parts.headers),
            upgrade::Kind::None => {}
        }
        let route = policy.route(&target.path).clone();
        if route.mode == Mode::Bypass {
            return self.bypass(parts, body, &policy, &route, lane).await;
        }

        // Step 2, key: resource and credential scope.
        let key = key_of_target(
            target,
            &parts.headers,
            route.shared,
            &self.options.credential_secret,
        );
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
            lane,
        };
        // Steps 4-7 differ for reads and writes.
        if matches!(exchange.parts.method, Method::GET | Method::HEAD) {
            self.read(&exchange).await
        } else {
            self.write(&exchange, body).await
        }
    }

    fn store_failed(&self, op: &'static str, e: &StoreError) {
        self.metrics.store_error(op);
        tracing::warn!(op, error = %e, "store operation failed");
    }
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
    if *status == StatusCode::PARTIAL_CONTENT {
        return Some("partial");
    }
    if *status != StatusCode::OK {
        return Some("status");
    }
    if current::is_no_store(headers) {
        return Some("no-store");
    }
    if vary_names(headers) == VaryNames::Any {
        return Some("vary-star");
    }
    None
}

/// Rewrite the request target to its canonical path (dot segments removed,
/// unreserved characters decoded) and query, so the app serves exactly what
/// the sidecar routed, keyed and locked. A target already canonical (the
/// usual case) is left alone.
fn canonicalise_target(parts: &mut Parts, target: &CanonicalTarget) -> Result<(), ProxyError> {
    let uri = &parts.uri;
    if uri.path() == target.path && uri.query() == target.query.as_deref() {
        return Ok(());
    }
    if !uri.path().starts_with('/') {
        return Ok(()); // `*` and other non-path targets
    }
    let path_and_query = match &target.query {
        Some(q) => format!("{}?{q}", target.path),
        None => target.path.clone(),
    };
    let mut builder = http::Uri::builder();
    if let Some(scheme) = uri.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = uri.authority() {
        builder = builder.authority(authority.clone());
    }
    parts.uri = builder
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target is not a URL"))?;
    Ok(())
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
