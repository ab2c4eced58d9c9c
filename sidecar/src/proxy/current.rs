//! The current representation: the one step the read path and a write's
//! precondition check share. What the store trusts for this request's read
//! key ([`Context::known`]), what the app serves now ([`Context::fetch`]),
//! and recording a freshly hashed tag ([`Context::record`]).
//!
//! Callers differ only in what a store failure means: a read degrades to
//! content-derived validators, a conditional write fails closed (503).

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{ETAG, LAST_MODIFIED};
use http::request::Parts;
use http::{HeaderMap, StatusCode, response};

use super::body::{Body, Buffered, Keep, boxed, buffer_and_tag};
use super::error::ProxyError;
use super::hop::strip_hop_by_hop;
use super::{Context, Exchange, is_fresh, untaggable};
use crate::date::parse_http_date;
use crate::key::{VaryNames, variant_key, vary_names};
use crate::policy::Mode;
use crate::precondition::Validators;
use crate::store::{Entry, Labels, StoreError, VariantKey, Vary};
use crate::surrogate;
use crate::tag::EntityTag;

/// What the store knows about the request's variant (Trust routes only).
pub(super) enum Known {
    /// A validation younger than `maxAge`, not invalidated since.
    Fresh {
        /// The store's validators for it.
        validators: Validators,
        /// The resource's `Vary` names (a trusted 304 repeats them).
        vary: Vary,
    },
    /// Known, but too old or invalidated.
    Stale {
        /// The resource's `Vary` names (with them, the request's variant).
        vary: Vary,
        /// When the validation that expired was made; `None` when a write
        /// ended it (or it was never trusted).
        validated_at: Option<SystemTime>,
    },
    /// Nothing known (or not a Trust route).
    Unknown,
}

/// The app's answer to a GET of the current representation.
pub(super) enum Fetched {
    /// A 200 the sidecar hashed: head (hop-by-hop fields and
    /// `Surrogate-Key` removed), body (empty from [`Context::fetch_tag`]),
    /// tag, the secondary key it is recorded under and its surrogate keys.
    Tagged {
        head: response::Parts,
        body: Bytes,
        tag: EntityTag,
        vary: Vec<String>,
        variant: VariantKey,
        labels: Labels,
    },
    /// Anything the sidecar does not tag (see [`untaggable`]), streaming.
    Untagged {
        head: response::Parts,
        body: Body,
        reason: &'static str,
    },
}

impl Context {
    /// The store's view of the request's variant. Only Trust routes ask.
    pub(super) async fn known(&self, ex: &Exchange) -> Result<Known, StoreError> {
        if ex.route.mode != Mode::Trust {
            return Ok(Known::Unknown);
        }
        let _timer = self.metrics.store_op("lookup");
        let found = self
            .store
            .lookup(&ex.key, &ex.watched)
            .await
            .inspect_err(|e| self.store_failed("lookup", e))?;
        let Some(resource) = found else {
            return Ok(Known::Unknown);
        };
        let variant = variant_key(&resource.vary, &ex.parts.headers);
        let Some(entry) = resource.variant(&variant) else {
            return Ok(Known::Unknown);
        };
        if !is_fresh(entry, ex.route.max_age) {
            let purged = resource.purged.contains(&variant);
            if purged {
                self.metrics.purge_refusal();
            }
            return Ok(Known::Stale {
                // A purged validation is never shared (`coalesce.rs`).
                validated_at: entry.validated_at.filter(|_| !purged),
                vary: resource.vary,
            });
        }
        Ok(Known::Fresh {
            validators: shared_validators(entry.clone()),
            vary: resource.vary,
        })
    }

    /// GET the current representation from the app (conditionals dropped,
    /// `Range` too unless the app may answer it: `range.rs`), as `parts`
    /// would see it, and hash it if it can be tagged, keeping the body within
    /// the tag-buffer budget (past it: untagged, `over-budget`).
    pub(super) async fn fetch(&self, ex: &Exchange, parts: &Parts) -> Result<Fetched, ProxyError> {
        self.fetch_keeping(ex, parts, Keep::Body(&self.budget))
            .await
    }

    /// [`Context::fetch`] for its tag alone (a write's precondition check):
    /// the body is hashed and dropped as it arrives (`Tagged` holds none),
    /// so the tag-buffer budget is never needed and a write is never judged
    /// against "untagged" because other responses were using memory. On a
    /// `steady:` route it is held whole (within `maxBodyBytes`) and tagged
    /// as a read tags it, so `If-Match` is judged with the tag reads hand
    /// out.
    pub(super) async fn fetch_tag(
        &self,
        ex: &Exchange,
        parts: &Parts,
    ) -> Result<Fetched, ProxyError> {
        self.fetch_keeping(ex, parts, Keep::TagOnly).await
    }

    async fn fetch_keeping(
        &self,
        ex: &Exchange,
        parts: &Parts,
        keep: Keep<'_>,
    ) -> Result<Fetched, ProxyError> {
        let response = self.current_or_part(ex, parts).await?;
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        // Labels for the store, never for the client (tagged or not).
        let labels = Labels::of(surrogate::take_keys(&mut head.headers));
        if let Some(reason) = untaggable(&head.status, &head.headers) {
            return Ok(Fetched::Untagged {
                head,
                body: boxed(body),
                reason,
            });
        }
        let deadline = tokio::time::Instant::now() + self.upstream.timeout();
        let max = self.max_body_bytes(ex);
        let steady = ex.route.steady.as_ref();
        match buffer_and_tag(&head.headers, body, max, keep, steady, deadline).await? {
            Buffered::TooLarge(body) => Ok(Fetched::Untagged {
                head,
                body,
                reason: "too-large",
            }),
            Buffered::OverBudget(body) => Ok(Fetched::Untagged {
                head,
                body,
                reason: "over-budget",
            }),
            Buffered::Complete { body, tag } => {
                let vary = match vary_names(&head.headers) {
                    VaryNames::Names(names) => names,
                    VaryNames::Any => Vec::new(), // excluded by `untaggable`
                };
                let variant = variant_key(&vary, &parts.headers);
                Ok(Fetched::Tagged {
                    head,
                    body,
                    tag,
                    vary,
                    variant,
                    labels,
                })
            }
        }
    }

    /// Record a freshly hashed tag (and, on a Trust route, the validation
    /// with its surrogate keys): the shared validators every replica hands
    /// out for it.
    pub(super) async fn record(
        &self,
        ex: &Exchange,
        vary: &[String],
        variant: &VariantKey,
        tag: &EntityTag,
        labels: &Labels,
    ) -> Result<Validators, StoreError> {
        let trust = ex.route.mode == Mode::Trust;
        let _timer = self.metrics.store_op("record");
        let entry = self
            .store
            .record_with(&ex.key, vary, variant, tag, trust, labels)
            .await
            .inspect_err(|e| self.store_failed("record", e))?;
        Ok(shared_validators(entry))
    }
}

/// The validators every replica hands out for a store entry.
fn shared_validators(entry: Entry) -> Validators {
    Validators {
        tag: entry.tag,
        last_modified: Some(entry.last_modified),
    }
}

/// Whether a response says `Cache-Control: no-store`.
pub(super) fn is_no_store(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-store"))
        })
}

/// The app's own validators of a `no-store` 200: such an API keeps its
/// optimistic concurrency (its `ETag` is what clients send back in
/// `If-Match`), and the sidecar never tags, records or Trust-answers it.
/// `None` when the app sent no usable `ETag`.
pub(super) fn app_validators(status: StatusCode, headers: &HeaderMap) -> Option<Validators> {
    if status != StatusCode::OK || !is_no_store(headers) {
        return None;
    }
    let tag = EntityTag::parse(headers.get(ETAG)?.as_bytes()).ok()?;
    let last_modified = headers
        .get(LAST_MODIFIED)
        .and_then(|v| parse_http_date(v.as_bytes()));
    Some(Validators { tag, last_modified })
}
