//! GET and HEAD: trust → forward → tag → record → respond.

use http::header::{CONTENT_LENGTH, ETAG, LAST_MODIFIED, RANGE, VARY};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::{Body, Buffered, boxed, buffer_and_tag, empty, full};
use super::hop::{add_via, strip_hop_by_hop};
use super::respond::{
    self, CACHE_STATUS, cache_status, cache_status_static, not_modified, parse_range,
    set_validators,
};
use super::{Answer, Context, Exchange, is_fresh, untaggable, with_validators};
use crate::date::parse_http_date;
use crate::key::{VaryNames, variant_key, vary_names};
use crate::metrics::Outcome;
use crate::policy::Mode;
use crate::precondition::{Decision, Validators, evaluate};
use crate::store::{Resource, VariantKey};
use crate::tag::EntityTag;

/// The outcome of the Trust step.
enum Trusted {
    /// Answered from the store.
    Hit(Response<Body>),
    /// Known, but too old, invalidated, or not a match: ask the app.
    Stale,
    /// Nothing known.
    Miss,
}

impl Context {
    /// GET and HEAD: trust → forward → tag → record → respond.
    pub(super) async fn read(&self, ex: &Exchange) -> Answer {
        let head = ex.parts.method == Method::HEAD;

        // Trust: a fresh validation answers without the app.
        // `Cache-Status: fwd=stale` when the client held a tag, else `miss`.
        let mut stale = !ex.conditions.is_empty();
        if ex.route.mode == Mode::Trust && !ex.conditions.is_empty() {
            match self.trusted(ex).await {
                Trusted::Hit(response) => return Ok((response, Outcome::trusted_not_modified)),
                Trusted::Stale => stale = true,
                Trusted::Miss => stale = false,
            }
        }

        // Forward: conditionals and Range stripped, HEAD sent as GET (the
        // body is needed to hash; it is dropped below).
        let response = self
            .upstream
            .get_current(&ex.parts, ex.lane.as_ref())
            .await?;
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
        let status = forwarded_status(stale, stored);
        rparts.headers.insert(CACHE_STATUS.clone(), status.clone());

        // Respond: the sidecar's own precondition decision.
        match evaluate(&ex.conditions, &ex.parts.method, Some(&validators)) {
            Decision::NotModified => {
                self.metrics.saved(body.len() as u64);
                let mut response = not_modified(&rparts.headers, &validators);
                // The sidecar's own trace fields ride along with §15.4.5's set.
                add_via(response.headers_mut(), http::Version::HTTP_11);
                response.headers_mut().insert(CACHE_STATUS.clone(), status);
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
        cache_status_static(response.headers_mut(), "sametag; hit");
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

    /// Record a freshly hashed tag; `true` when the store took it. On a store
    /// failure the tag stays content-derived and `Last-Modified` is the
    /// app's (or absent).
    async fn record(
        &self,
        ex: &Exchange,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        app_headers: &HeaderMap,
    ) -> (Validators, bool) {
        let trust = ex.route.mode == Mode::Trust;
        let _timer = self.metrics.store_op("record");
        match self.store.record(&ex.key, vary, variant, tag, trust).await {
            Ok(entry) => (
                Validators {
                    tag: entry.tag,
                    last_modified: Some(entry.last_modified),
                },
                true,
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
                    false,
                )
            }
        }
    }
}

/// `Cache-Status` of a forwarded read: a few fixed strings, so no per-request
/// formatting.
fn forwarded_status(stale: bool, stored: bool) -> HeaderValue {
    HeaderValue::from_static(match (stale, stored) {
        (false, true) => "sametag; fwd=miss; stored",
        (true, true) => "sametag; fwd=stale; stored",
        (false, false) => "sametag; fwd=miss; detail=store-unavailable",
        (true, false) => "sametag; fwd=stale; detail=store-unavailable",
    })
}
