//! Talking to the app: building the request the app sees, sending it on the
//! client connection's [`Lane`] (HTTP/1.x clients) or through the shared
//! keep-alive pool (HTTP/2 clients), and mapping transport failures to
//! [`ProxyError`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::histogram::Histogram;

use super::body::{Body, empty, with_deadline};
use super::error::ProxyError;
use super::hop::{add_forwarded, add_via, strip_hop_by_hop};
use super::lane::{IdleConnections, Lane};
use crate::precondition::CONDITIONAL_HEADERS;

/// The app behind the sidecar.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// For requests that cannot use a lane (HTTP/2 clients).
    client: Client<HttpConnector, Body>,
    /// Connections of client connections that ended, for new lanes.
    idle: IdleConnections,
    authority: Authority,
    timeout: Duration,
    /// Append the client to `X-Forwarded-For` (`--forwarded-headers`).
    forwarded_headers: bool,
    /// How long a client's request body may take to arrive.
    body_timeout: Duration,
    /// Where the time to the app's response head goes
    /// (`sametag_upstream_duration_seconds`); none: not measured.
    latency: Option<Histogram>,
}

/// The address of the client connection a request arrived on, put in the
/// request's extensions by the connection's service; `Upstream::request`
/// names it to the app in `X-Forwarded-For`. Extensions travel with the
/// request's `Parts`, so every request built from them (a read, a write's
/// internal GET, the write, a bypass, an upgrade) carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// How the request the app sees differs from the client's.
#[derive(Clone, Debug)]
pub struct Rewrite {
    /// Drop `If-*` (and `Range`): the sidecar evaluates them itself and must
    /// see the whole current representation to tag it.
    pub strip_conditionals: bool,
    /// With `strip_conditionals`, keep `Range`: an unconditional ranged GET
    /// the app may answer with its own 206 (`range.rs`).
    pub keep_range: bool,
    /// Send this method instead (HEAD goes out as GET so the body can be
    /// hashed; a write's precondition check uses an internal GET).
    pub method: Option<Method>,
}

impl Rewrite {
    /// The client's request as it is (bypass, upgrades).
    pub const AS_IS: Rewrite = Rewrite {
        strip_conditionals: false,
        keep_range: true,
        method: None,
    };
    /// A write the sidecar has already judged: its preconditions stay here.
    pub const JUDGED: Rewrite = Rewrite {
        strip_conditionals: true,
        keep_range: false,
        method: None,
    };
    /// A plain GET of the current representation, to hash it.
    pub const CURRENT: Rewrite = Rewrite {
        strip_conditionals: true,
        keep_range: false,
        method: Some(Method::GET),
    };
    /// An unconditional ranged GET, `Range` kept for the app to honour.
    pub const RANGED: Rewrite = Rewrite {
        strip_conditionals: true,
        keep_range: true,
        method: Some(Method::GET),
    };
}

impl Upstream {
    /// A pool to `authority`, answering within `timeout`; with
    /// `forwarded_headers` the app learns each request's client address.
    pub fn new(authority: Authority, timeout: Duration, forwarded_headers: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .http1_max_buf_size(super::lane::UPSTREAM_BUF)
            .build(connector);
        Self {
            client,
            idle: IdleConnections::default(),
            authority,
            timeout,
            forwarded_headers,
            body_timeout: timeout,
            latency: None,
        }
    }

    /// Observe the time to each response head from the app into `histogram`.
    pub fn with_latency(mut self, histogram: Histogram) -> Self {
        self.latency = Some(histogram);
        self
    }

    /// Fail a client's request body (and the request with 408) that has not
    /// arrived within `limit`.
    pub fn with_body_timeout(mut self, limit: Duration) -> Self {
        self.body_timeout = limit;
        self
    }

    /// The app's `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The response-head timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A lane for a new client connection.
    pub fn lane(&self) -> Lane {
        Lane::new(self.idle.clone())
    }

    /// GET the current representation of the resource `parts` names
    /// (conditionals and `Range` dropped, the client's method replaced) and
    /// wait for the response head.
    pub async fn get_current(
        &self,
        parts: &Parts,
        lane: Option<&Lane>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let request = self.request(parts, empty(), Rewrite::CURRENT)?;
        self.send(lane, request).await
    }

    /// Send `req` (on `lane` if given, else through the pool) and wait for
    /// the response head.
    pub async fn send(
        &self,
        lane: Option<&Lane>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.send_within(lane, req, self.timeout).await
    }

    /// [`Upstream::send`] waiting up to `limit` for the response head
    /// instead of the upstream timeout (a write's own task).
    pub async fn send_within(
        &self,
        lane: Option<&Lane>,
        req: Request<Body>,
        limit: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let exchange = async {
            match lane {
                Some(lane) => lane.send(&self.authority, self.timeout, req).await,
                None => self.client.request(req).await.map_err(|e| {
                    if e.is_connect() {
                        ProxyError::UpstreamConnect(e.into())
                    } else {
                        ProxyError::UpstreamProtocol(e.into())
                    }
                }),
            }
        };
        let started = Instant::now();
        match tokio::time::timeout(limit, exchange).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
            Ok(answer) => {
                if answer.is_ok()
                    && let Some(latency) = &self.latency
                {
                    latency.observe(started.elapsed().as_secs_f64());
                }
                answer.map_err(ProxyError::blame_client)
            }
        }
    }

    /// The request the app sees for a client request with `parts`.
    pub fn request(
        &self,
        parts: &Parts,
        body: Body,
        rewrite: Rewrite,
    ) -> Result<Request<Body>, ProxyError> {
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        if rewrite.strip_conditionals {
            for name in CONDITIONAL_HEADERS.iter() {
                headers.remove(name);
            }
            if !rewrite.keep_range {
                headers.remove(http::header::RANGE);
            }
        }
        // HTTP/2 carries the host in :authority; the app speaks HTTP/1.1 and
        // needs it as Host. An HTTP/1.0 request may have none at all: the
        // app then sees its own address, as from any HTTP/1.1 client.
        if !headers.contains_key(HOST) {
            let authority = parts.uri.authority().unwrap_or(&self.authority);
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
            headers.insert(HOST, host);
        }
        add_via(&mut headers, parts.version);
        if self.forwarded_headers {
            let peer = parts.extensions.get::<ClientAddr>().map(|c| c.0.ip());
            add_forwarded(&mut headers, peer);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadRequest("request target is not a URL"))?;
        let mut req = Request::new(with_deadline(body, self.body_timeout));
        *req.method_mut() = rewrite.method.unwrap_or_else(|| parts.method.clone());
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}
