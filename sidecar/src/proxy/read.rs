//! GET and HEAD: trust → fetch the current representation → record →
//! respond.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, ETAG, LAST_MODIFIED, RANGE, VARY};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::{Body, empty, full};
use super::coalesce::FlightKey;
use super::compress::{Choice, vary_accept_encoding};
use super::current::{Fetched, Known, app_validators};
use super::error::ProxyError;
use super::hop::add_via;
use super::respond::{
    self, CACHE_STATUS, cache_status, cache_status_static, not_modified, parse_range,
    set_validators,
};
use super::{Answer, Context, Exchange, with_validators};
use crate::date::parse_http_date;
use crate::metrics::Outcome;
use crate::policy::Mode;
use crate::precondition::{Decision, Validators, evaluate};
use crate::store::VariantKey;

/// A read's current representation, after fetch and record.
pub(super) enum Current {
    /// Tagged and recorded, ready for the client's conditions.
    Tagged(Box<TaggedRead>),
    /// Not tagged (see `untaggable`): the app's answer, streaming.
    Untagged {
        head: http::response::Parts,
        body: Body,
        reason: &'static str,
    },
}

/// A tagged 200 before the client's conditions are applied: head (the
/// canonical validators, `Content-Length` and `Cache-Status` set), body and
/// what the store said.
pub(super) struct TaggedRead {
    pub(super) rparts: http::response::Parts,
    pub(super) body: Bytes,
    pub(super) validators: Validators,
    pub(super) cache_status: HeaderValue,
    /// Whether the store recorded the tag.
    pub(super) stored: bool,
    /// The response's `Vary` names and the variant they select.
    pub(super) vary: Vec<String>,
    pub(super) variant: VariantKey,
}

impl Context {
    /// GET and HEAD: trust → fetch → record → respond.
    pub(super) async fn read(&self, ex: &Exchange) -> Answer {
        let head = ex.parts.method == Method::HEAD;

        // Trust: a fresh validation answers without the app.
        // `Cache-Status: fwd=stale` when the client held a tag, else `miss`.
        let mut stale = !ex.conditions.is_empty();
        let mut flight = None;
        if ex.route.mode == Mode::Trust && !ex.conditions.is_empty() {
            match self.known(ex).await {
                Ok(Known::Fresh { validators, vary }) => {
                    if let Some(hit) = self.trusted_not_modified(ex, &validators, &vary) {
                        return Ok((hit, Outcome::trusted_not_modified));
                    }
                }
                // An expired validation: concurrent revalidations of this
                // variant share one fetch (`coalesce.rs`).
                Ok(Known::Stale { vary, validated_at }) => {
                    flight = FlightKey::of(ex, &vary, validated_at);
                }
                // A store failure degrades to Validate (already counted).
                Ok(Known::Unknown) | Err(_) => stale = false,
            }
        }

        // Fetch and record (shared with concurrent revalidations when
        // coalesced).
        let current = match flight {
            Some(flight) => self.coalesced(ex, flight, stale).await?,
            None => self.current(ex, stale).await?,
        };
        let TaggedRead {
            mut rparts,
            body,
            validators,
            cache_status: status,
            ..
        } = match current {
            Current::Untagged {
                head: h,
                body,
                reason,
            } => {
                return Ok(self.pass_through_read(ex, h, body, head, reason));
            }
            Current::Tagged(tagged) => *tagged,
        };
        // Compress (opt-in per route, `compress.rs`): the representation
        // this client gets, and so the tag its conditions are judged by
        // (per request: coalesced followers may take other codings).
        let choice = self.choose(ex, &mut rparts.headers, body.len(), &validators.tag);
        let validators = choice.validators(validators);
        if matches!(choice, Choice::Encode(..)) {
            set_validators(&mut rparts.headers, &validators);
        }

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
                if let Choice::Encode(coding, reservation) = choice {
                    // The whole encoded 200, `Range` or not.
                    let response = self.encoded(rparts, body, coding, reservation, head).await;
                    return Ok((response, Outcome::tagged_200));
                }
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

    /// Fetch the current representation (conditionals stripped, HEAD sent
    /// as GET: the body is needed to hash and dropped later; Range kept only
    /// when the app may answer it itself, `range.rs`), and record its tag:
    /// the shared `Last-Modified` and, in Trust, the validation. On a store
    /// failure the tag stays content-derived and `Last-Modified` is the
    /// app's (or absent).
    pub(super) async fn current(&self, ex: &Exchange, stale: bool) -> Result<Current, ProxyError> {
        let (mut rparts, body, tag, vary, variant, labels) = match self.fetch(ex, &ex.parts).await?
        {
            Fetched::Untagged { head, body, reason } => {
                return Ok(Current::Untagged { head, body, reason });
            }
            Fetched::Tagged {
                head,
                body,
                tag,
                vary,
                variant,
                labels,
            } => (head, body, tag, vary, variant, labels),
        };
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        let (validators, stored) = match self.record(ex, &vary, &variant, &tag, &labels).await {
            Ok(validators) => (validators, true),
            Err(_) => {
                let last_modified = rparts
                    .headers
                    .get(LAST_MODIFIED)
                    .and_then(|v| parse_http_date(v.as_bytes()));
                (Validators { tag, last_modified }, false)
            }
        };
        set_validators(&mut rparts.headers, &validators);
        rparts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let cache_status = forwarded_status(stale, stored);
        rparts
            .headers
            .insert(CACHE_STATUS.clone(), cache_status.clone());
        Ok(Current::Tagged(Box::new(TaggedRead {
            rparts,
            body,
            validators,
            cache_status,
            stored,
            vary,
            variant,
        })))
    }

    /// A read whose response the sidecar does not tag: the app's status and
    /// body go through. Its own `ETag` and `Last-Modified` do not (they would
    /// disagree across replicas, and a client revalidating with them through
    /// another replica would never match), except on a `no-store` 200, whose
    /// validators are the app's own by design: the sidecar judges the
    /// client's conditions against them and never Trust-answers them. A 206
    /// loses them too: it is a part of a representation too large to tag
    /// (`range.rs`), and a later `If-Range` is judged only against canonical
    /// tags. A 404/410 still answers `If-Match` (no representation).
    fn pass_through_read(
        &self,
        ex: &Exchange,
        mut rparts: http::response::Parts,
        body: Body,
        head: bool,
        reason: &str,
    ) -> (Response<Body>, Outcome) {
        add_via(&mut rparts.headers, http::Version::HTTP_11);
        let app = app_validators(rparts.status, &rparts.headers);
        let exists = rparts.status == StatusCode::OK;
        let gone = matches!(rparts.status, StatusCode::NOT_FOUND | StatusCode::GONE);
        if gone || app.is_some() {
            match evaluate(&ex.conditions, &ex.parts.method, app.as_ref()) {
                Decision::PreconditionFailed => {
                    return (respond::precondition_failed(), Outcome::precondition_failed);
                }
                Decision::NotModified if exists => {
                    if let Some(validators) = &app {
                        let mut response = not_modified(&rparts.headers, validators);
                        add_via(response.headers_mut(), http::Version::HTTP_11);
                        cache_status_static(
                            response.headers_mut(),
                            "sametag; fwd=uri-miss; detail=no-store",
                        );
                        return (response, Outcome::not_modified);
                    }
                }
                _ => {}
            }
        }
        if app.is_none() {
            rparts.headers.remove(ETAG);
            rparts.headers.remove(LAST_MODIFIED);
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

    /// A Trust hit: the store's validators make the request a 304 without
    /// the app. `None` when they do not (the app is asked).
    fn trusted_not_modified(
        &self,
        ex: &Exchange,
        validators: &Validators,
        vary: &[String],
    ) -> Option<Response<Body>> {
        // On a compress route, the tag of the coding this request gets.
        let validators = self.trusted_validators(ex, validators)?;
        if evaluate(&ex.conditions, &ex.parts.method, Some(&validators)) != Decision::NotModified {
            return None;
        }
        let mut headers = HeaderMap::new();
        if !vary.is_empty()
            && let Ok(v) = HeaderValue::from_str(&vary.join(", "))
        {
            headers.insert(VARY, v);
        }
        if !ex.route.compress.is_empty() {
            vary_accept_encoding(&mut headers);
        }
        let mut response = not_modified(&headers, &validators);
        add_via(response.headers_mut(), http::Version::HTTP_11);
        cache_status_static(response.headers_mut(), "sametag; hit");
        Some(response)
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
