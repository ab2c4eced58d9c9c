//! `POST /purge`: invalidation from outside HTTP (a batch job, a direct
//! database write, `sametag-operator invalidate`). Authenticated by a token
//! read from a file on every request (a rotated Secret works without a
//! restart), accepted as `Authorization: Bearer <token>` or
//! `Sametag-Purge-Token: <token>` (the apiserver's pod proxy strips
//! `Authorization`). Answers 200 only once the store has acknowledged the
//! purge, which means every replica would see it.

use std::path::Path;
use std::time::Duration;

use http::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::Admin;
use crate::proxy::{Body, plain};
use crate::surrogate::{MAX_PURGE_BODY_BYTES, PurgeBodyError, parse_purge};

/// The purge token header (for clients that cannot send `Authorization`).
pub static PURGE_TOKEN: HeaderName = HeaderName::from_static("sametag-purge-token");

/// How long a purge body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `POST /purge`.
pub(super) async fn purge(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let response = answer(admin, req).await;
    admin.metrics.purge_request(response.status().as_u16());
    response
}

async fn answer(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let Some(file) = &admin.purge_token_file else {
        return plain(
            StatusCode::FORBIDDEN,
            "purge is disabled: start the sidecar with --purge-token-file\n",
        );
    };
    let expected = match read_token(file).await {
        Ok(token) => token,
        Err(reason) => {
            tracing::warn!(file = %file.display(), %reason, "purge refused: no usable token");
            return plain(
                StatusCode::FORBIDDEN,
                format!("purge is disabled: {reason}\n"),
            );
        }
    };
    if !authorized(req.headers(), &expected) {
        let mut response = plain(
            StatusCode::UNAUTHORIZED,
            "missing or wrong purge token (Authorization: Bearer or Sametag-Purge-Token)\n",
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sametag-purge\""),
        );
        return response;
    }
    let too_large = || {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("purge body is larger than {MAX_PURGE_BODY_BYTES} bytes\n"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PURGE_BODY_BYTES as u64) {
        return too_large();
    }
    let limited = Limited::new(req.into_body(), MAX_PURGE_BODY_BYTES);
    let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "purge body could not be read\n"),
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                "purge body did not arrive in time\n",
            );
        }
    };
    let purge = match parse_purge(&body) {
        Ok(p) => p,
        Err(PurgeBodyError::TooLarge) => return too_large(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let _timer = admin.metrics.store_op("purge");
    match admin.store.purge(&purge).await {
        Ok(report) => {
            admin.metrics.purged(&purge, "api", &report);
            tracing::info!(
                paths = purge.paths.len(),
                globs = purge.globs.len(),
                keys = purge.keys.len(),
                floor_raised = report.floor_raised,
                "purged"
            );
            let summary = serde_json::json!({
                "paths": purge.paths.len(),
                "globs": purge.globs.len(),
                "keys": purge.keys.len(),
                "marks": report.marks,
                "floorRaised": report.floor_raised,
            });
            let mut response = plain(StatusCode::OK, format!("{summary}\n"));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => {
            admin.metrics.store_error("purge");
            tracing::warn!(error = %e, "purge failed");
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unavailable, nothing acknowledged: {e}\n"),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// The token in `file`, trimmed; an unreadable or empty file disables purge.
async fn read_token(file: &Path) -> Result<String, String> {
    let text = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| format!("cannot read the token file: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err("the token file is empty".into());
    }
    Ok(token.to_owned())
}

/// Whether the request carries `expected`, in either header.
fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    let bearer = headers.get_all(AUTHORIZATION).iter().filter_map(|v| {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let direct = headers
        .get_all(&PURGE_TOKEN)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::trim));
    bearer
        .chain(direct)
        .any(|given| constant_time_eq(given, expected))
}

/// Compare through fixed-size hashes, whose equality is constant-time, so
/// neither the token's length nor a common prefix leaks through timing.
fn constant_time_eq(given: &str, expected: &str) -> bool {
    blake3::hash(given.as_bytes()) == blake3::hash(expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_header_authorizes() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(authorized(&h, "s3cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  s3cret "));
        assert!(authorized(&h, "s3cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(!authorized(&h, "s3cret"));
        h.insert(&PURGE_TOKEN, HeaderValue::from_static("s3cret"));
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
    }
}
