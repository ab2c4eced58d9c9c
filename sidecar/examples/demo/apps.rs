//! App replicas that behave like a static file server behind a balancer:
//! each mints its own ETag from its copy's mtime and size (as nginx does), so
//! replicas disagree about a resource that has the same bytes everywhere.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The site every replica serves: the same bytes on each (one shared
/// "database"), written through any replica.
#[derive(Clone, Default)]
pub struct Site {
    files: Arc<Mutex<BTreeMap<String, (Bytes, &'static str)>>>,
}

impl Site {
    /// A small site: a page, a script, a stylesheet and a JSON API resource.
    pub fn sample() -> Self {
        let site = Site::default();
        site.put(
            "/index.html",
            filler("<p>sametag demo</p>", 12 * 1024),
            "text/html",
        );
        site.put(
            "/app.js",
            filler("console.log(1);", 48 * 1024),
            "application/javascript",
        );
        site.put("/style.css", filler("p{margin:0}", 6 * 1024), "text/css");
        site.put(
            "/api/items",
            Bytes::from_static(br#"{"items":[1,2,3]}"#),
            "application/json",
        );
        site
    }

    pub fn paths(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn put(&self, path: &str, body: Bytes, content_type: &'static str) {
        self.lock().insert(path.to_owned(), (body, content_type));
    }

    fn get(&self, path: &str) -> Option<(Bytes, &'static str)> {
        self.lock().get(path).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, &'static str)>> {
        // A poisoned lock only means another demo task panicked; the map is fine.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn filler(seed: &str, len: usize) -> Bytes {
    Bytes::from(seed.repeat(len / seed.len() + 1).into_bytes()).slice(..len)
}

/// Starts one replica on a free loopback port. `mtime` is this replica's copy
/// time: it goes into the replica's own ETag and Last-Modified.
pub async fn start_replica(site: Site, mtime: SystemTime) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let site = site.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| serve(site.clone(), mtime, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn serve(
    site: Site,
    mtime: SystemTime,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::PUT {
        let content_type = match site.get(&path) {
            Some((_, ct)) => ct,
            None => "application/octet-stream",
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        site.put(&path, body, content_type);
        return Ok(status(StatusCode::NO_CONTENT));
    }
    let Some((body, content_type)) = site.get(&path) else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    // nginx's ETag: hex mtime and size. Same bytes, different mtime per replica.
    let secs = mtime
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let etag = format!("\"{secs:x}-{:x}\"", body.len());
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(mtime))
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache");
    if not_modified {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return Ok(builder
            .body(Full::default())
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR)));
    }
    Ok(builder
        .body(Full::new(body))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR)))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::default());
    *resp.status_mut() = code;
    resp
}
