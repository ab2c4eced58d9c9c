//! Replicas as production runs them: one store shared by several sidecars
//! (an `Arc<MemoryStore>` shared in-process behaves like replicas sharing
//! Redis), one app replica per sidecar over a shared database, the client
//! traffic real users send (several credentials, several Host spellings,
//! HTTP/1.1 and h2c) and macros that run one test body against every store
//! (and protocol).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sametag_sidecar::ServerConfig;
use sametag_sidecar::store::Store;
use sametag_sidecar::store::memory::{MemoryLimits, MemoryStore};
use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use tokio::net::TcpStream;

use super::redis_server::{Engine, RedisServer};
use super::{App, Got, Sidecar, body};

/// Which store backs the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// One `Arc<MemoryStore>` shared by every in-process sidecar.
    Memory,
    /// A real `redis-server` on a free port, one connection per sidecar.
    Redis,
    /// The Redis store on a real `valkey-server` instead.
    Valkey,
}

impl StoreKind {
    pub const ALL: [StoreKind; 3] = [StoreKind::Memory, StoreKind::Redis, StoreKind::Valkey];

    /// The server engine behind a Redis-protocol store (`None` for memory).
    pub fn engine(self) -> Option<Engine> {
        match self {
            StoreKind::Memory => None,
            StoreKind::Redis => Some(Engine::Redis),
            StoreKind::Valkey => Some(Engine::Valkey),
        }
    }

    /// Whether this kind's tests can run here (see [`Engine::available`]).
    pub fn available(self) -> bool {
        self.engine().is_none_or(Engine::available)
    }
}

/// How a client talks to a sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1, origin-form target and a `Host` header.
    H1,
    /// h2c with prior knowledge; the authority travels as `:authority`.
    H2,
}

/// One store that several replicas share.
pub struct SharedStore {
    pub kind: StoreKind,
    /// The server behind a Redis store (kill it, restart it, read its keys).
    pub redis: Option<RedisServer>,
    memory: Option<Arc<MemoryStore>>,
    trust_guard: Duration,
    /// Every Redis handle given out, for their metrics.
    handles: Mutex<Vec<RedisStore>>,
}

impl SharedStore {
    /// A store whose post-write trust guard is zero: the tests using it never
    /// read while writing, and the guard has tests of its own. Where a test
    /// re-trusts after a write, a non-zero guard would only add sleeps.
    pub fn new(kind: StoreKind) -> SharedStore {
        SharedStore::with_guard(kind, Duration::ZERO)
    }

    /// A store with this post-write trust guard (both kinds have one).
    pub fn with_guard(kind: StoreKind, trust_guard: Duration) -> SharedStore {
        let (redis, memory) = match kind {
            StoreKind::Memory => (
                None,
                Some(Arc::new(MemoryStore::with_limits(MemoryLimits {
                    trust_guard,
                    ..MemoryLimits::default()
                }))),
            ),
            StoreKind::Redis | StoreKind::Valkey => {
                let engine = kind.engine().unwrap_or_default();
                (Some(RedisServer::start_on(engine)), None)
            }
        };
        SharedStore {
            kind,
            redis,
            memory,
            trust_guard,
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Options for one replica's Redis connection.
    pub fn redis_options(&self) -> RedisOptions {
        super::redis_server::test_options(self.trust_guard)
    }

    /// The store handle of one more replica: the same `Arc` for memory, a
    /// connection of its own (connected) for Redis.
    pub async fn replica(&self) -> Arc<dyn Store> {
        if let Some(m) = &self.memory {
            return m.clone();
        }
        let redis = self.redis.as_ref().expect("a Redis store has a server");
        let store = RedisStore::connect(&redis.url(), "fleet", self.redis_options())
            .expect("valid URL and prefix");
        assert!(
            store.wait_up(Duration::from_secs(5)).await,
            "connects to redis"
        );
        self.handles.lock().unwrap().push(store.clone());
        Arc::new(store)
    }

    /// The Redis handles given out so far (empty for memory).
    pub fn redis_handles(&self) -> Vec<RedisStore> {
        self.handles.lock().unwrap().clone()
    }

    /// The Redis server (panics for a memory store).
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a Redis store")
    }
}

/// One secret for every replica, as the chart mounts it: the read key of a
/// personalised request is then the same on every replica.
pub const FLEET_SECRET: &[u8] = b"one credential secret for every replica";

/// A database shared by every app replica. Each replica still mints its
/// own validators (as nginx or a framework would), so only the sidecar
/// makes them agree.
#[derive(Default)]
pub struct Db {
    /// Documents by the app's own resolution of the target: dot segments
    /// removed (as most frameworks route), path + `?query`.
    pub docs: Mutex<HashMap<String, String>>,
    /// Every write the app applied: (method, raw target, document, body).
    pub applied: Mutex<Vec<(Method, String, String, String)>>,
    /// Every request target the app received, as sent: (method, target).
    pub seen: Mutex<Vec<(Method, String)>>,
    /// `Surrogate-Key` values the app labels documents with (GET/HEAD), by
    /// the same key as `docs`.
    pub labels: Mutex<HashMap<String, String>>,
}

impl Db {
    /// A database holding `docs` (path + query -> body).
    pub fn with(docs: &[(&str, &str)]) -> Arc<Db> {
        let db = Db::default();
        *db.docs.lock().unwrap() = docs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Arc::new(db)
    }

    /// Label document `key` with a `Surrogate-Key` value.
    pub fn label(&self, key: &str, value: &str) {
        self.labels
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
    }

    /// The current body of a document.
    pub fn doc(&self, key: &str) -> Option<String> {
        self.docs.lock().unwrap().get(key).cloned()
    }

    /// Writes applied so far.
    pub fn applied_count(&self) -> usize {
        self.applied.lock().unwrap().len()
    }

    /// Targets of the requests with `method` the app received.
    pub fn targets(&self, method: &Method) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

/// RFC 3986 §5.2.4, as an app's router would apply it (`%2e` included).
pub fn remove_dot_segments(path: &str) -> String {
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// App replica `instance` over `db`. GET/HEAD: the document (200) with
/// this replica's own ETag and Last-Modified, or 404 carrying them too.
/// PUT replaces, DELETE removes, any other method (PATCH, POST, PURGE,
/// MOVE, ...) appends ` +METHOD`. Writes take `x-delay-ms` (a header the
/// client sends) to widen race windows. GETs carry the document's
/// `Surrogate-Key` labels ([`Db::label`]); a write echoes the client's
/// `x-surrogate-key` as its response's `Surrogate-Key`.
pub async fn db_app(db: Arc<Db>, instance: usize) -> App {
    App::start(move |req: Request<Incoming>| {
        let db = db.clone();
        async move {
            let (parts, b) = req.into_parts();
            let bytes = b.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let target = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            db.seen
                .lock()
                .unwrap()
                .push((parts.method.clone(), target.clone()));
            let mut doc = remove_dot_segments(parts.uri.path());
            if let Some(q) = parts.uri.query() {
                doc.push('?');
                doc.push_str(q);
            }
            // Per-process validators, as a real server mints them.
            let own = |r: http::response::Builder, what: &str| {
                let lm = SystemTime::now() - Duration::from_secs(1000 * (instance as u64 + 1));
                r.header("etag", format!("\"app{instance}-{what}\""))
                    .header("last-modified", httpdate::fmt_http_date(lm))
            };
            let labels = db.labels.lock().unwrap().get(&doc).cloned();
            if parts.method == Method::GET || parts.method == Method::HEAD {
                let found = db.doc(&doc);
                let labelled = |r: http::response::Builder| match &labels {
                    Some(l) => r.header("surrogate-key", l.as_str()),
                    None => r,
                };
                return match found {
                    Some(text) => labelled(own(Response::builder(), &text.len().to_string()))
                        .header("content-type", "text/plain")
                        .body(body(text))
                        .unwrap(),
                    None => labelled(own(
                        Response::builder().status(StatusCode::NOT_FOUND),
                        "404",
                    ))
                    .body(body("no such document"))
                    .unwrap(),
                };
            }
            let delay = parts
                .headers
                .get("x-delay-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let status = {
                let mut docs = db.docs.lock().unwrap();
                let status = match parts.method {
                    Method::PUT => {
                        let created = docs.insert(doc.clone(), text.clone()).is_none();
                        if created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        }
                    }
                    Method::DELETE => match docs.remove(&doc) {
                        Some(_) => StatusCode::NO_CONTENT,
                        None => StatusCode::NOT_FOUND,
                    },
                    ref m => match docs.get_mut(&doc) {
                        Some(d) => {
                            d.push_str(&format!(" +{m}"));
                            StatusCode::OK
                        }
                        None => StatusCode::NOT_FOUND,
                    },
                };
                if status.is_success() {
                    db.applied
                        .lock()
                        .unwrap()
                        .push((parts.method.clone(), target, doc, text));
                }
                status
            };
            let mut response = own(Response::builder().status(status), "write");
            if let Some(keys) = parts.headers.get("x-surrogate-key") {
                response = response.header("surrogate-key", keys);
            }
            response.body(body(Bytes::new())).unwrap()
        }
    })
    .await
}

/// `n` app replicas over one database, a sidecar in front of each, all
/// sharing one store.
pub struct Fleet {
    pub store: SharedStore,
    pub db: Arc<Db>,
    pub apps: Vec<App>,
    pub sidecars: Vec<Sidecar>,
}

impl Fleet {
    /// `n` replicas with `policy` (YAML) over `db`, upstream timeout 5 s,
    /// lock wait 5 s, one credential secret.
    pub async fn start(kind: StoreKind, n: usize, policy: &str, db: Arc<Db>) -> Fleet {
        Fleet::start_with(SharedStore::new(kind), n, policy, db, |_| {}).await
    }

    /// Like [`Fleet::start`] with a given store and a configuration tweak.
    pub async fn start_with(
        store: SharedStore,
        n: usize,
        policy: &str,
        db: Arc<Db>,
        adjust: impl Fn(&mut ServerConfig),
    ) -> Fleet {
        let mut apps = Vec::new();
        let mut sidecars = Vec::new();
        for i in 0..n {
            let app = db_app(db.clone(), i).await;
            let replica = store.replica().await;
            sidecars.push(
                Sidecar::start_with(app.addr, policy, replica, |c| {
                    c.options.credential_secret = FLEET_SECRET.to_vec();
                    c.options.lock_wait = Duration::from_secs(5);
                    adjust(c);
                })
                .await,
            );
            apps.push(app);
        }
        Fleet {
            store,
            db,
            apps,
            sidecars,
        }
    }

    /// Where sidecar `i` listens.
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.sidecars[i % self.sidecars.len()].addr
    }
}

/// One request on a fresh connection, as a browser or service client sends
/// it: HTTP/1.1 in origin form with `Host: authority`, or h2c with
/// `:authority`. The target goes out byte for byte (dot segments kept).
pub async fn call(
    addr: std::net::SocketAddr,
    proto: Proto,
    method: &str,
    authority: &str,
    target: &str,
    headers: &[(&str, &str)],
    req_body: &str,
) -> Got {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri = match proto {
        Proto::H1 => target.to_owned(),
        Proto::H2 => format!("http://{authority}{target}"),
    };
    let mut req = Request::builder().method(method).uri(uri);
    if proto == Proto::H1 {
        req = req.header(HOST, authority);
    }
    let mut req = req
        .body(Full::new(Bytes::from(req_body.to_owned())))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let exchange = async move {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        match proto {
            Proto::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await
            }
            Proto::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await
            }
        }
    };
    let response = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .expect("a response within 15 s")
        .expect("a response");
    Got::collect(response).await
}

/// One test per store: `over_stores! { a, b }` defines `in_memory::a`,
/// `in_redis::a`, `in_valkey::a`, ..., each calling `a(StoreKind)` in the
/// test file.
#[allow(unused_macros)]
macro_rules! over_stores {
    ($($name:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Memory).await
                }
            )*
        }
        mod in_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Redis).await
                }
            )*
        }
        mod in_valkey {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::support::StoreKind::Valkey.available() {
                        super::$name($crate::support::StoreKind::Valkey).await
                    }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use over_stores;

/// One test per store and protocol: `over_stores_and_protocols! { a }`
/// defines `memory_h1::a`, `memory_h2::a`, `redis_h1::a`, `redis_h2::a`,
/// `valkey_h1::a`, `valkey_h2::a`, each calling `a(StoreKind, Proto)` in the
/// test file.
#[allow(unused_macros)]
macro_rules! over_stores_and_protocols {
    ($($name:ident),* $(,)?) => {
        $crate::support::over_stores_and_protocols!(@one memory_h1, Memory, H1; $($name),*);
        $crate::support::over_stores_and_protocols!(@one memory_h2, Memory, H2; $($name),*);
        $crate::support::over_stores_and_protocols!(@one redis_h1, Redis, H1; $($name),*);
        $crate::support::over_stores_and_protocols!(@one redis_h2, Redis, H2; $($name),*);
        $crate::support::over_stores_and_protocols!(@one valkey_h1, Valkey, H1; $($name),*);
        $crate::support::over_stores_and_protocols!(@one valkey_h2, Valkey, H2; $($name),*);
    };
    (@one $module:ident, $kind:ident, $proto:ident; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::support::StoreKind::$kind.available() {
                        super::$name(
                            $crate::support::StoreKind::$kind,
                            $crate::support::Proto::$proto,
                        )
                        .await
                    }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use over_stores_and_protocols;

/// One test per server engine, for tests of the Redis store only:
/// `over_engines! { a }` defines `on_redis::a` and `on_valkey::a`, each
/// calling `a(StoreKind::Redis | StoreKind::Valkey)` in the test file.
#[allow(unused_macros)]
macro_rules! over_engines {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Redis).await
                }
            )*
        }
        mod on_valkey {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::support::StoreKind::Valkey.available() {
                        super::$name($crate::support::StoreKind::Valkey).await
                    }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use over_engines;
