//! The admin server: `/healthz` (the process serves), `/readyz` (the proxy
//! listens and is not draining) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::proxy::Body;
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
}

impl Admin {
    /// Answer one admin request.
    pub fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let store = match self.store.health() {
                    StoreHealth::Up => "store up",
                    StoreHealth::Down => "store down (reads degrade, conditional writes get 503)",
                };
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, format!("ready; {store}\n"))
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
                }
            }
            "/metrics" => match self.metrics.encode(self.store.as_ref()) {
                Ok(body) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding failed\n".into(),
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    /// Serve on `listener` until `shutdown` completes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    let admin = self.clone();
                    let service = service_fn(move |req| {
                        let response = admin.respond(&req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(crate::proxy::full_body(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
