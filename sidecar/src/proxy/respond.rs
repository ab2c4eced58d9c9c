//! Building the responses the sidecar decides itself: 304, 412, 428, 206, and
//! the canonical validators and `Cache-Status` on everything it tags.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, CONTENT_TYPE, DATE, ETAG,
    EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::body::{Body, empty, full};
use crate::date::fmt_http_date;
use crate::precondition::Validators;

/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The headers a 304 keeps from the 200 it stands for (RFC 9110 §15.4.5),
/// plus the app's `Set-Cookie`.
const NOT_MODIFIED_KEEPS: [HeaderName; 6] = [
    CACHE_CONTROL,
    EXPIRES,
    VARY,
    CONTENT_LOCATION,
    DATE,
    SET_COOKIE,
];

/// Put the canonical `ETag` and `Last-Modified` in place of the app's.
pub fn set_validators(headers: &mut HeaderMap, validators: &Validators) {
    if let Ok(tag) = validators.tag.header_value() {
        headers.insert(ETAG, tag);
    }
    match validators.last_modified {
        Some(at) => {
            headers.insert(LAST_MODIFIED, last_modified_value(at));
        }
        None => {
            headers.remove(LAST_MODIFIED);
        }
    }
}

/// `Last-Modified` for `at`. Hot resources are answered over and over with
/// the same date, so each thread keeps the last one it formatted.
fn last_modified_value(at: SystemTime) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(SystemTime, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((t, value)) if *t == at => value.clone(),
        _ => {
            let value = http_date_value(at);
            *last = Some((at, value.clone()));
            value
        }
    })
}

/// An HTTP-date as a header value (IMF-fixdate is always visible ASCII).
fn http_date_value(t: SystemTime) -> HeaderValue {
    HeaderValue::try_from(fmt_http_date(t))
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// A 304 carrying exactly the headers §15.4.5 lists (taken from `source`,
/// the headers a 200 would have had) and the canonical validators.
pub fn not_modified(source: &HeaderMap, validators: &Validators) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    for name in NOT_MODIFIED_KEEPS.iter() {
        for value in source.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if !headers.contains_key(DATE) {
        insert_date(headers);
    }
    set_validators(headers, validators);
    response
}

/// A short plain-text response (the proxy's own answers, errors, and the
/// admin endpoints).
pub fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 412 Precondition Failed.
pub fn precondition_failed() -> Response<Body> {
    plain(StatusCode::PRECONDITION_FAILED, "precondition failed\n")
}

/// 428 Precondition Required (RFC 6585 §3).
pub fn precondition_required() -> Response<Body> {
    plain(
        StatusCode::PRECONDITION_REQUIRED,
        "this resource requires a conditional request: send If-Match with its current ETag\n",
    )
}

/// `Date: now`.
pub fn insert_date(headers: &mut HeaderMap) {
    headers.insert(DATE, date_now());
}

/// `Date` for now. An HTTP-date changes once a second, so each thread keeps
/// the last one it formatted (a 304 answered from the store needs one, and
/// formatting was a visible share of that path's CPU).
fn date_now() -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|last| match last {
        Some((at, value)) if *at == secs => value.clone(),
        _ => {
            let value = http_date_value(now);
            *last = Some((secs, value.clone()));
            value
        }
    })
}

/// Set `Cache-Status` to `sametag; <params>`.
pub fn cache_status(headers: &mut HeaderMap, params: &str) {
    let mut text = String::with_capacity(9 + params.len());
    text.push_str("sametag; ");
    text.push_str(params);
    if let Ok(value) = HeaderValue::try_from(text) {
        headers.insert(CACHE_STATUS.clone(), value);
    }
}

/// Set a `Cache-Status` known at compile time (`sametag; hit`).
pub fn cache_status_static(headers: &mut HeaderMap, value: &'static str) {
    headers.insert(CACHE_STATUS.clone(), HeaderValue::from_static(value));
}

/// The byte range a `Range` field asks for, when the sidecar can serve it
/// from a buffered body: one `bytes=` range. Anything else (several ranges,
/// another unit, garbage) is `None`: answer the whole representation, which
/// RFC 9110 §14.2 always allows.
pub enum RangeAnswer {
    /// Serve `start..=end` of the body.
    Partial { start: u64, end: u64 },
    /// Satisfiable by no byte of the body: 416.
    Unsatisfiable,
}

/// Interpret `Range` against a body of `len` bytes.
pub fn parse_range(value: &HeaderValue, len: u64) -> Option<RangeAnswer> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 {
            return Some(RangeAnswer::Unsatisfiable);
        }
        (len.saturating_sub(suffix), len.checked_sub(1)?)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            u64::MAX
        } else {
            last.parse().ok()?
        };
        if end < start {
            return None;
        }
        (start, end.min(len.saturating_sub(1)))
    };
    if len == 0 || start >= len {
        return Some(RangeAnswer::Unsatisfiable);
    }
    Some(RangeAnswer::Partial { start, end })
}

/// Turn a tagged 200 response (`headers` already final) into a 206 or 416.
pub fn ranged(
    mut headers: HeaderMap,
    body: &Bytes,
    answer: RangeAnswer,
    head: bool,
) -> Response<Body> {
    let len = body.len() as u64;
    headers.remove(CONTENT_LENGTH);
    match answer {
        RangeAnswer::Partial { start, end } => {
            let part = body.slice(start as usize..=end as usize);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                headers.insert(CONTENT_RANGE, v);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from(part.len()));
            let mut response = Response::new(if head { empty() } else { full(part) });
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            *response.headers_mut() = headers;
            response
        }
        RangeAnswer::Unsatisfiable => {
            let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(CONTENT_RANGE, v);
            }
            for name in [ETAG, LAST_MODIFIED] {
                if let Some(v) = headers.get(&name) {
                    response.headers_mut().insert(name, v.clone());
                }
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &'static str, len: u64) -> Option<(u64, u64)> {
        match parse_range(&HeaderValue::from_static(s), len)? {
            RangeAnswer::Partial { start, end } => Some((start, end)),
            RangeAnswer::Unsatisfiable => Some((u64::MAX, u64::MAX)),
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-4", 10), Some((0, 4)));
        assert_eq!(range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(range("bytes=-30", 10), Some((0, 9)));
        assert_eq!(range("bytes=3-100", 10), Some((3, 9)));
        assert_eq!(range("bytes=10-", 10), Some((u64::MAX, u64::MAX)));
        assert_eq!(range("bytes=0-1,3-4", 10), None);
        assert_eq!(range("items=0-1", 10), None);
        assert_eq!(range("bytes=4-1", 10), None);
    }
}
