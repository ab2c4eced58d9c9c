//! Shared support for the sidecar's integration tests: small hyper apps on
//! loopback port 0 (counting their hits and recording what they saw), sidecars
//! run in-process on port 0, and an HTTP client (HTTP/1.1, h2c, raw bytes);
//! real `redis-server`s ([`redis_server`]) and fleets of replicas sharing a
//! store of either kind ([`fleet`]).
#![allow(dead_code)]

pub mod fleet;
pub mod redis_server;
pub mod store_checks;

#[allow(unused_imports)]
pub use fleet::*;

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sametag_sidecar::metrics::Metrics;
use sametag_sidecar::policy::{Policy, PolicyHandle};
use sametag_sidecar::proxy::Body;
use sametag_sidecar::store::Store;
use sametag_sidecar::store::memory::MemoryStore;
use sametag_sidecar::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A boxed future for app handlers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What an app handler is.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<Response<Body>> + Send + Sync>;

/// A body of bytes in the sidecar's body type.
pub fn body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A test app: a real hyper server on 127.0.0.1:0.
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it received.
    pub hits: Arc<AtomicUsize>,
    /// The last request head it received.
    pub seen: Arc<Mutex<Option<http::request::Parts>>>,
    _stop: oneshot::Sender<()>,
}

impl App {
    /// Serve `handler` (HTTP/1.1 with upgrades).
    pub async fn start<F, Fut>(handler: F) -> App
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Option<http::request::Parts>>> = Arc::new(Mutex::new(None));
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (h, s) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let (handler, hits, seen) = (handler.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let (parts, b) = req.into_parts();
                        *seen.lock().unwrap() = Some(parts.clone());
                        let fut = handler(Request::from_parts(parts, b));
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            hits,
            seen,
            _stop: stop,
        }
    }

    /// An app that always answers `body` with its own ETag and Last-Modified
    /// (`app_tag`, `app_date`), like a server minting its own validators.
    pub async fn fixed(body_text: &'static str, app_tag: &'static str) -> App {
        App::start(move |_req| async move {
            Response::builder()
                .header("content-type", "text/plain")
                .header("etag", app_tag)
                .header("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT")
                .body(body(body_text))
                .unwrap()
        })
        .await
    }

    /// How many requests arrived so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The headers of the last request the app saw.
    pub fn last_headers(&self) -> HeaderMap {
        self.seen.lock().unwrap().as_ref().unwrap().headers.clone()
    }

    /// The method of the last request the app saw.
    pub fn last_method(&self) -> Method {
        self.seen.lock().unwrap().as_ref().unwrap().method.clone()
    }
}

/// An in-memory resource app: GET returns the current body (with app-minted
/// validators that differ per instance), PUT replaces it, DELETE removes it
/// (404 afterwards), POST appends.
pub async fn resource_app(state: Arc<Mutex<Option<String>>>, instance: &'static str) -> App {
    resource_app_with_delay(state, instance, Duration::ZERO).await
}

/// [`resource_app`] whose writes take `write_delay`.
pub async fn resource_app_with_delay(
    state: Arc<Mutex<Option<String>>>,
    instance: &'static str,
    write_delay: Duration,
) -> App {
    App::start(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            let method = req.method().clone();
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            match method {
                Method::GET => match state.lock().unwrap().clone() {
                    Some(text) => Response::builder()
                        .header("content-type", "text/plain")
                        .header("etag", format!("\"{instance}-{}\"", text.len()))
                        .header("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT")
                        .body(body(text))
                        .unwrap(),
                    None => status(StatusCode::NOT_FOUND),
                },
                Method::PUT | Method::POST => {
                    tokio::time::sleep(write_delay).await;
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let mut s = state.lock().unwrap();
                    let created = s.is_none();
                    if method == Method::POST {
                        let mut old = s.clone().unwrap_or_default();
                        old.push_str(&text);
                        *s = Some(old);
                    } else {
                        *s = Some(text);
                    }
                    let mut r = status(if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    });
                    r.headers_mut()
                        .insert("etag", HeaderValue::from_static("\"app-write\""));
                    r
                }
                Method::DELETE => {
                    tokio::time::sleep(write_delay).await;
                    *state.lock().unwrap() = None;
                    status(StatusCode::NO_CONTENT)
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED),
            }
        }
    })
    .await
}

/// An empty response with `status`.
pub fn status(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(body(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// A sidecar running in-process on 127.0.0.1:0.
pub struct Sidecar {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Its metric families.
    pub metrics: Arc<Metrics>,
    /// Its policy (replace to change it live).
    pub policy: PolicyHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    /// A sidecar in front of `upstream` with a policy (YAML) and a store.
    pub async fn start(upstream: SocketAddr, policy: &str, store: Arc<dyn Store>) -> Sidecar {
        Sidecar::start_with(upstream, policy, store, |_| {}).await
    }

    /// A sidecar with its own fresh memory store.
    pub async fn validate(upstream: SocketAddr) -> Sidecar {
        Sidecar::start(upstream, "", Arc::new(MemoryStore::new())).await
    }

    /// Like [`Sidecar::start`], adjusting the configuration first.
    pub async fn start_with(
        upstream: SocketAddr,
        policy: &str,
        store: Arc<dyn Store>,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Sidecar {
        let policy = PolicyHandle::new(Policy::from_yaml(policy).unwrap());
        let mut config = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            upstream.to_string().parse().unwrap(),
        );
        config.policy = policy.clone();
        config.options.upstream_timeout = Duration::from_secs(5);
        config.drain_timeout = Duration::from_secs(5);
        adjust(&mut config);
        let metrics = config.metrics.clone();
        let server = Server::bind(config, store).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Sidecar {
            addr,
            metrics,
            policy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop accepting and wait for in-flight requests to drain.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A response, collected.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// Collect a response: status, headers and the whole body.
    pub async fn collect(response: Response<Incoming>) -> Got {
        let (parts, b) = response.into_parts();
        let body = b.collect().await.unwrap().to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    }

    /// The ETag, panicking when absent.
    pub fn etag(&self) -> String {
        let tag = self.header("etag");
        assert!(!tag.is_empty(), "no ETag in {:?}", self.headers);
        tag
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client(h2: bool) -> Client<HttpConnector, Body> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(h2);
    builder.build(HttpConnector::new())
}

/// Send a request over HTTP/1.1 and collect the response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    req_body: &str,
) -> Got {
    send_raw_values(
        addr,
        method,
        path,
        &headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes()))
            .collect::<Vec<_>>(),
        req_body,
        false,
    )
    .await
}

/// GET with headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    send(addr, "GET", path, headers, "").await
}

/// Send with header values given as bytes (for invalid UTF-8), optionally h2c.
pub async fn send_raw_values(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    req_body: &str,
    h2: bool,
) -> Got {
    let mut req = Request::new(body(req_body.to_owned()));
    *req.method_mut() = Method::from_bytes(method.as_bytes()).unwrap();
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    let response = tokio::time::timeout(Duration::from_secs(10), client(h2).request(req))
        .await
        .expect("response within 10s")
        .expect("a response");
    Got::collect(response).await
}

/// Write raw bytes on a fresh connection and read until the peer closes (or
/// 5 seconds pass). For requests a well-behaved client cannot send.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response text.
pub fn raw_status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A body of `n` chunks of `size` bytes (chunk i filled with byte i), one
/// every `gap`, without a Content-Length.
pub fn slow_body(n: usize, size: usize, gap: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Bytes::from(vec![i as u8; size])).await.is_err() {
                return;
            }
        }
    });
    ChannelBody(rx).boxed_unsync()
}

/// A body of whatever is sent on `rx`, ending when the sender is dropped.
pub fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    ChannelBody(rx).boxed_unsync()
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = sametag_sidecar::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// The sidecar binary this package builds.
pub const BIN: &str = env!("CARGO_BIN_EXE_sametag-sidecar");

/// A sidecar binary, killed when dropped.
pub struct Binary {
    pub child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
}

impl Binary {
    /// Start the binary in front of `upstream` with extra `args`, and wait
    /// for its start line.
    pub fn start(upstream: SocketAddr, args: &[&str]) -> Binary {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--upstream", &upstream.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the binary");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut started = None;
        for line in lines.by_ref().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "sametag sidecar started" {
                started = Some((v["fields"]["listen"].clone(), v["fields"]["admin"].clone()));
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addrs = started.and_then(|(listen, admin)| {
            Some((
                listen.as_str()?.parse().ok()?,
                admin.as_str()?.parse().ok()?,
            ))
        });
        let Some((addr, admin)) = addrs else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no start line with both addresses");
        };
        Binary { child, addr, admin }
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// The value of one metric line on the admin port (0 when absent).
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let text = get(self.admin, "/metrics", &[]).await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Soft limit on open files, raised to the hard limit when lower than
/// `want` (children inherit it).
pub fn ensure_fd_limit(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    if soft.parse::<u64>().is_ok_and(|s| s >= want) {
        return;
    }
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "open-file limit {soft} < {want} and prlimit could not raise it"
    );
}
