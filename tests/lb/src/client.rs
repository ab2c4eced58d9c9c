//! A small HTTP/1.1 client with keep-alive and a per-request deadline.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{HarnessError, Result};

/// A response read to the end.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Approximate bytes on the wire: status line, headers and body.
    pub fn wire_bytes(&self) -> u64 {
        let head: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        (17 + head + 2 + self.body.len()) as u64
    }
}

/// A pooled keep-alive client.
#[derive(Clone, Debug)]
pub struct Http {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Default for Http {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl Http {
    /// A client whose requests fail after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        Http { inner, timeout }
    }

    /// Send one request and read the whole response.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply> {
        let err = |reason: String| HarnessError::Http {
            url: url.to_owned(),
            reason,
        };
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).map_err(|e| err(e.to_string()))?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| err(format!("{e:?}")))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| err(format!("no response within {:?}", self.timeout)))?
    }

    /// GET with extra headers.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// PUT a body with extra headers.
    pub async fn put(&self, url: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Reply> {
        self.send(Method::PUT, url, headers, body).await
    }
}
