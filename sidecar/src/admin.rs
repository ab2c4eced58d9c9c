//! The admin server: `/healthz` (the process serves), `/readyz` (the proxy
//! listens and is not draining), `/metrics` (Prometheus text) and
//! `POST /purge` (`purge.rs`).

mod purge;

pub use purge::PURGE_TOKEN;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::accept::{Acceptor, ConnectionLimits};
use crate::metrics::Metrics;
use crate::proxy::{Body, plain};
use crate::store::{Store, StoreHealth};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct Admin {
    /// The proxy's metric families.
    pub metrics: Arc<Metrics>,
    /// The store, for its health gauge.
    pub store: Arc<dyn Store>,
    /// Set once the proxy listens; cleared when it starts draining.
    pub ready: Arc<AtomicBool>,
    /// The file holding the purge token (re-read on every purge); `None`:
    /// `POST /purge` is disabled (403).
    pub purge_token_file: Option<PathBuf>,
}

impl Admin {
    /// Answer one admin request: `/purge` (async: it waits for the store),
    /// everything else at once.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/purge" {
            return purge::purge(self, req).await;
        }
        self.respond(&req)
    }

    /// Answer one admin request.
    pub fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let store = match self.store.health() {
                    StoreHealth::Up => "store up",
                    StoreHealth::Down => "store down (reads degrade, conditional writes get 503)",
                };
                if self.ready.load(Ordering::Acquire) {
                    plain(StatusCode::OK, format!("ready; {store}\n"))
                } else {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/metrics" => match self.metrics.encode(self.store.as_ref()) {
                Ok(body) => {
                    let mut response = plain(StatusCode::OK, body);
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            },
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Serve on `listener` until `shutdown` completes, with the default
    /// connection limits ([`ConnectionLimits::admin`]).
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let limits = ConnectionLimits::admin(Duration::from_secs(10), Duration::from_secs(300));
        self.serve_with(listener, limits, shutdown).await;
    }

    /// Serve on `listener` with `limits` until `shutdown` completes.
    pub async fn serve_with(
        self,
        listener: TcpListener,
        limits: ConnectionLimits,
        shutdown: impl Future<Output = ()>,
    ) {
        let acceptor = Acceptor {
            listener,
            name: "admin",
            permits: limits.permits(),
            limits,
            metrics: self.metrics.clone(),
            drain_timeout: Duration::from_secs(5),
        };
        let make = move |_peer| {
            let admin = self.clone();
            service_fn(move |req| {
                let admin = admin.clone();
                // The accept loop needs an `Unpin` future.
                Box::pin(async move { Ok::<_, Infallible>(admin.handle(req).await) })
            })
        };
        acceptor.run(make, shutdown).await;
    }
}
