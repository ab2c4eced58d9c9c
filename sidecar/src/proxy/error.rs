//! Why a request could not be served normally, and the one place where each
//! such failure becomes a response (store errors included).

use std::time::Duration;

use http::header::{CONNECTION, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::body::{Body, BoxError};
use super::respond::plain;
use crate::metrics::Outcome;
use crate::store::StoreError;

/// A failure on the request path. Each variant maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The app refused or reset the connection.
    #[error("the app refused the connection")]
    UpstreamConnect(#[source] BoxError),
    /// The app closed the connection or answered something that is not HTTP.
    #[error("the app closed the connection or sent an invalid response")]
    UpstreamProtocol(#[source] BoxError),
    /// The app's response head did not arrive in time.
    #[error("the app did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    /// The app's body failed while the sidecar was reading it to tag it.
    #[error("the app's response body failed")]
    UpstreamBody(#[source] BoxError),
    /// The app's body did not arrive in time while being tagged.
    #[error("the app's response body did not arrive in time")]
    UpstreamBodyTimeout,
    /// A conditional write needs the store and it is unreachable.
    #[error("the tag store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// Another writer held the resource's lock for longer than we wait.
    #[error("another write to this resource is in progress")]
    LockBusy,
    /// The client's request body did not arrive in time (`--body-read-timeout`).
    #[error("the request body did not arrive within {0:?}")]
    RequestBodyTimeout(Duration),
    /// The request cannot be proxied (e.g. a target that is no URL).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl ProxyError {
    /// The status this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) | Self::UpstreamBody(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout(_) | Self::UpstreamBodyTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StoreUnavailable(_) | Self::LockBusy => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The metric outcome of this failure.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) | Self::UpstreamBody(_) => {
                Outcome::upstream_error
            }
            Self::UpstreamTimeout(_) | Self::UpstreamBodyTimeout => Outcome::upstream_timeout,
            Self::StoreUnavailable(_) | Self::LockBusy => Outcome::store_unavailable,
            Self::BadRequest(_) => Outcome::bad_request,
            Self::RequestBodyTimeout(_) => Outcome::request_timeout,
        }
    }

    /// The upstream-error metric label, for failures talking to the app.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Self::UpstreamConnect(_) => Some("connect"),
            Self::UpstreamProtocol(_) => Some("protocol"),
            Self::UpstreamBody(_) => Some("body"),
            Self::UpstreamTimeout(_) | Self::UpstreamBodyTimeout => Some("timeout"),
            _ => None,
        }
    }

    /// A failure sending to the app that was the client's own body running
    /// out of time is the client's: 408, not 502.
    pub fn blame_client(self) -> Self {
        if let Self::UpstreamConnect(e) | Self::UpstreamProtocol(e) = &self {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            while let Some(err) = cause {
                if let Some(timeout) = err.downcast_ref::<RequestBodyTimeout>() {
                    return Self::RequestBodyTimeout(timeout.0);
                }
                cause = err.source();
            }
        }
        self
    }

    /// A short plain-text response; 503s carry `Retry-After`; a 408 closes
    /// the connection (the rest of the body is never read).
    pub fn into_response(self, retry_after: Duration) -> Response<Body> {
        let status = self.status();
        let mut response = plain(status, format!("{self}\n"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let secs = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The error a request body wrapped by `body::with_deadline` fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct RequestBodyTimeout(pub Duration);
