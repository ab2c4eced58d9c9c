//! Conditional requests (RFC 9110 §13): parse the five precondition fields
//! once, then evaluate them in the order of §13.2.2 against the current
//! validators of the selected representation.
//!
//! The RFC leaves some malformed inputs open; this module reads them as
//! follows, always choosing the answer that cannot do harm (a full `200`, or
//! refusing a write), never a `304` the request did not clearly ask for:
//!
//! - **Order** (§13.2.2): `If-Match`; else `If-Unmodified-Since`; then
//!   `If-None-Match`; else (GET/HEAD only) `If-Modified-Since`; then
//!   `If-Range` (GET with `Range` only).
//! - **Methods**: CONNECT, OPTIONS and TRACE select no representation, so
//!   every precondition is ignored for them (§13.2.1).
//! - **`If-Match`** uses strong comparison. `*` is true only if a current
//!   representation exists; a list with no current representation is false.
//!   An unparseable (or over-long, see [`crate::tag::MAX_LIST_ENTRIES`])
//!   value cannot match anything, so it fails closed: `412`. An empty list is
//!   a valid empty list and so also `412`. The "unless it can be determined
//!   that the state-changing request has already succeeded" escape is not
//!   taken: the sidecar cannot know, so a false `If-Match` is always `412`.
//! - **`If-Unmodified-Since`** (only without `If-Match`): ignored when not a
//!   single valid HTTP-date, or when the resource has no modification date
//!   (§13.1.4). False (`412`) when the last modification is later than the
//!   date, compared in whole seconds.
//! - **`If-None-Match`** uses weak comparison. `*` is false when a current
//!   representation exists. False means `304` for GET/HEAD and `412`
//!   otherwise. An unparseable value is *ignored* for GET/HEAD (a full `200`
//!   is always correct) but *fails closed* (`412`) for other methods, so a
//!   garbled create-only `If-None-Match: *` can never overwrite.
//! - **`If-Modified-Since`** (GET/HEAD only, and only when the request has no
//!   `If-None-Match` at all, even a malformed one: §13.1.3 says "contains"):
//!   ignored when not a single valid HTTP-date, when later than the server's
//!   current time (RFC 2616 §14.25 called such a date invalid; RFC 9110 is
//!   silent, and a client clock running ahead must not pin a `304`), or when
//!   there is no modification date. `304` when the last modification, in
//!   whole seconds, is at or before the date.
//! - **`If-Range`** (GET with `Range` only): true only for a strong tag that
//!   strongly matches the current one. A weak tag, a date (the sidecar never
//!   vouches that a date is a strong validator), a malformed value, or no
//!   current representation are all false: ignore `Range`, send `200`.
//! - A request carrying none of these fields always gets
//!   `Proceed { ignore_range: false }`: never a `304` or `412`.

use std::time::SystemTime;

use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, HeaderName, Method};

use crate::date::{parse_http_date, truncate_to_secs};
use crate::tag::{EntityTag, TagError, TagList, parse_list_lines};

/// The precondition fields. The sidecar evaluates them itself, so the proxy
/// removes them before forwarding to the app (Validate and Trust modes).
pub const CONDITIONAL_HEADERS: [HeaderName; 5] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

/// A parsed `If-Range` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfRange {
    /// An entity tag (only a strong one can ever match).
    Tag(EntityTag),
    /// An HTTP-date (never treated as a strong validator here).
    Date(SystemTime),
    /// Neither: the condition is false.
    Malformed,
}

/// The preconditions of one request, parsed from its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// `If-Match`: `Err` when present but unparseable (fails closed).
    pub if_match: Option<Result<TagList, TagError>>,
    /// `If-None-Match`: `Err` when present but unparseable.
    pub if_none_match: Option<Result<TagList, TagError>>,
    /// `If-Modified-Since`, only if it is exactly one valid HTTP-date.
    pub if_modified_since: Option<SystemTime>,
    /// `If-Unmodified-Since`, only if it is exactly one valid HTTP-date.
    pub if_unmodified_since: Option<SystemTime>,
    /// `If-Range`, if present.
    pub if_range: Option<IfRange>,
    /// Whether the request carried a `Range` field (`If-Range` needs one).
    pub has_range: bool,
    /// Whether any of [`CONDITIONAL_HEADERS`] was present at all, valid or not.
    pub any_present: bool,
}

/// The validators of the selected representation, as the store (or a fresh
/// response from the app) knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validators {
    /// The canonical strong tag.
    pub tag: EntityTag,
    /// The shared `Last-Modified`; `None` when unknown (store down and the
    /// app sent none): date conditions are then ignored, as §13.1.3-4 say.
    pub last_modified: Option<SystemTime>,
}

/// What to do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Perform the method. `ignore_range`: answer the whole representation
    /// (`200`) even though the request has a `Range` (`If-Range` was false).
    Proceed { ignore_range: bool },
    /// `304 Not Modified` (GET/HEAD only).
    NotModified,
    /// `412 Precondition Failed`.
    PreconditionFailed,
}

impl Conditions {
    /// Parse the precondition fields of a request. Never fails: malformed
    /// values are recorded as such and evaluated per the module docs.
    pub fn from_headers(headers: &HeaderMap) -> Conditions {
        let list = |name: &HeaderName| {
            let mut lines = headers.get_all(name).iter().peekable();
            lines.peek()?;
            Some(parse_list_lines(lines.map(|v| v.as_bytes())))
        };
        let if_range = single(headers, &IF_RANGE).map(|v| match v {
            Some(v) => parse_if_range(v),
            None => IfRange::Malformed,
        });
        Conditions {
            if_match: list(&IF_MATCH),
            if_none_match: list(&IF_NONE_MATCH),
            if_modified_since: single(headers, &IF_MODIFIED_SINCE)
                .flatten()
                .and_then(parse_http_date),
            if_unmodified_since: single(headers, &IF_UNMODIFIED_SINCE)
                .flatten()
                .and_then(parse_http_date),
            if_range,
            has_range: headers.contains_key(RANGE),
            any_present: CONDITIONAL_HEADERS.iter().any(|h| headers.contains_key(h)),
        }
    }

    /// True when the request carried no precondition field at all.
    pub fn is_empty(&self) -> bool {
        !self.any_present
    }

    /// Whether a write carries a precondition the sidecar will enforce
    /// (`If-Match` even if malformed, since it fails closed; a valid
    /// `If-Unmodified-Since`; any `If-None-Match`, since on a write a
    /// malformed one fails closed too). Such writes take the store lock.
    pub fn has_write_precondition(&self) -> bool {
        self.if_match.is_some()
            || self.if_unmodified_since.is_some()
            || self.if_none_match.is_some()
    }

    /// Whether a route with `requirePreconditions` must answer `428
    /// Precondition Required` (RFC 6585): a write without any precondition.
    pub fn lacks_required_precondition(&self, method: &Method, required: bool) -> bool {
        required && is_write(method) && !self.has_write_precondition()
    }
}

/// The methods the sidecar treats as writes: every method that is not safe
/// (RFC 9110 §9.2.1), standard or not (`PROPPATCH`, `MOVE`, `PURGE`, ...).
pub fn is_write(method: &Method) -> bool {
    !method.is_safe()
}

/// Evaluate `conditions` for `method` against the current representation
/// (`None`: the resource has none), at the current time.
///
/// Apply the decision only when the same request without conditions would
/// get a `2xx` (RFC 9110 §13.2.1): a `404` or a redirect from the app wins
/// over any precondition, and a GET whose app response is not a `200` must
/// be passed through, never turned into a `304`.
pub fn evaluate(
    conditions: &Conditions,
    method: &Method,
    current: Option<&Validators>,
) -> Decision {
    evaluate_at(conditions, method, current, SystemTime::now())
}

/// [`evaluate`] with an explicit "now" (only `If-Modified-Since` uses it).
pub fn evaluate_at(
    c: &Conditions,
    method: &Method,
    current: Option<&Validators>,
    now: SystemTime,
) -> Decision {
    if matches!(*method, Method::CONNECT | Method::OPTIONS | Method::TRACE) {
        return Decision::Proceed {
            ignore_range: false,
        };
    }
    let safe = matches!(*method, Method::GET | Method::HEAD);
    let last_modified = current.and_then(|v| v.last_modified).map(truncate_to_secs);

    // Step 1 and 2: If-Match, else If-Unmodified-Since.
    if let Some(if_match) = &c.if_match {
        let holds = match (if_match, current) {
            (Ok(list), Some(v)) => list.matches_strong(&v.tag),
            _ => false,
        };
        if !holds {
            return Decision::PreconditionFailed;
        }
    } else if let (Some(date), Some(lm)) = (c.if_unmodified_since, last_modified)
        && lm > date
    {
        return Decision::PreconditionFailed;
    }

    // Step 3 and 4: If-None-Match, else If-Modified-Since.
    match &c.if_none_match {
        Some(Ok(list)) => {
            if current.is_some_and(|v| list.matches_weak(&v.tag)) {
                return if safe {
                    Decision::NotModified
                } else {
                    Decision::PreconditionFailed
                };
            }
        }
        // Garbled on a write: fail closed. On GET/HEAD: ignore (and, being
        // present, it still rules out If-Modified-Since).
        Some(Err(_)) if !safe => return Decision::PreconditionFailed,
        Some(Err(_)) => {}
        None => {
            if safe
                && let (Some(date), Some(lm)) = (c.if_modified_since, last_modified)
                && date <= now
                && lm <= date
            {
                return Decision::NotModified;
            }
        }
    }

    // Step 5: If-Range.
    let ignore_range = *method == Method::GET
        && c.has_range
        && match &c.if_range {
            None => false,
            Some(IfRange::Tag(t)) => !current.is_some_and(|v| t.strong_eq(&v.tag)),
            Some(IfRange::Date(_) | IfRange::Malformed) => true,
        };
    Decision::Proceed { ignore_range }
}

/// The value of a field that must occur once: `None` if absent,
/// `Some(None)` if repeated (a list where one value is allowed).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Option<&'a [u8]>> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    Some(all.next().is_none().then_some(first.as_bytes()))
}

fn parse_if_range(v: &[u8]) -> IfRange {
    let trimmed = v.trim_ascii_start();
    if trimmed.starts_with(b"\"") || trimmed.starts_with(b"W/") {
        EntityTag::parse(v).map_or(IfRange::Malformed, IfRange::Tag)
    } else {
        parse_http_date(v).map_or(IfRange::Malformed, IfRange::Date)
    }
}

#[cfg(test)]
mod tests;
