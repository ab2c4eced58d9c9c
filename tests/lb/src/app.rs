//! The dynamic test app: a JSON document service whose replicas share their
//! documents (a directory standing in for the database) but each mint their
//! own ETag (a random per-replica nonce) and `Last-Modified` (the replica's
//! start time), like real apps behind a balancer. It answers If-None-Match
//! against its own tag, ignores If-Match, and supports PUT.
//!
//! Writes behave like a database's: each PUT commits under an exclusive lock
//! on the shared directory (one writer at a time across all replica
//! processes), on its own task (a caller that goes away does not abort it),
//! and is appended to an applied-write log (`applied.jsonl`) that tests read
//! to check every acknowledged write landed exactly once. A *tracked* write,
//! a JSON object body with a `"req"` id, is stamped with the document's next
//! `"version"` (the previous one + 1) and answered `200 {"version": n}`.
//! Header `x-app-delay-ms: N` on a PUT makes the app take N ms before it
//! commits (a slow app).
//!
//! Routes: `GET /` health; `GET|PUT /docs/NAME`; `GET /bytes/N` (N bytes, for
//! the benchmark); `GET /site/...` (the web page of [`crate::site`], for the
//! browser test); `GET /__stats` (counters, `no-store`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest PUT body and `/bytes/N` size the app accepts.
const MAX_BODY: usize = 16 << 20;

/// Longest `x-app-delay-ms` honoured.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The applied-write log in the shared data directory (JSON lines).
pub const APPLIED_LOG: &str = "applied.jsonl";

/// One write the app applied, as logged.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// Document name.
    pub doc: String,
    /// The version stamped (tracked writes only).
    pub version: Option<u64>,
    /// The version the writer said it read (`"base"` in its body), if any.
    pub base: Option<u64>,
    /// The writer's id (`"writer"` in its body), if any.
    pub writer: Option<serde_json::Value>,
    /// The request id (`"req"` in its body), if any.
    pub req: Option<String>,
    /// The replica that applied it.
    pub replica: String,
}

/// Every write applied so far to the documents under `data_dir`, in commit
/// order (lines that do not parse are skipped: none are expected).
pub fn applied_log(data_dir: &Path) -> std::io::Result<Vec<Applied>> {
    let text = match std::fs::read_to_string(data_dir.join(APPLIED_LOG)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// How one replica is configured.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Replica name, sent as `X-Replica`.
    pub replica: String,
    /// Shared document directory (every replica gets the same one).
    pub data_dir: PathBuf,
}

struct State {
    cfg: AppConfig,
    nonce: u64,
    started: String,
    gets: AtomicU64,
    puts: AtomicU64,
    blobs: RwLock<HashMap<usize, Bytes>>,
}

/// Serve the app on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cfg: AppConfig) -> std::io::Result<()> {
    std::fs::create_dir_all(cfg.data_dir.join("docs"))?;
    let state = Arc::new(State {
        cfg,
        nonce: std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
        started: http_date(SystemTime::now()),
        gets: AtomicU64::new(0),
        puts: AtomicU64::new(0),
        blobs: RwLock::new(HashMap::new()),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors and the like: back off, keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/") => simple(StatusCode::OK, "ok\n"),
        (Method::GET, "/__stats") => {
            let body = serde_json::json!({
                "replica": state.cfg.replica,
                "gets": state.gets.load(Ordering::Relaxed),
                "puts": state.puts.load(Ordering::Relaxed),
            });
            let mut r = simple(StatusCode::OK, &body.to_string());
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        (Method::GET | Method::HEAD, p) if p.starts_with("/bytes/") => {
            match p["/bytes/".len()..].parse::<usize>() {
                Ok(n) if n <= MAX_BODY => {
                    state.gets.fetch_add(1, Ordering::Relaxed);
                    let body = blob(&state, n);
                    let tag = format!("\"{:x}-b{n}\"", state.nonce);
                    represent(&state, &req, body, tag, "application/octet-stream")
                }
                _ => simple(StatusCode::BAD_REQUEST, "bad size\n"),
            }
        }
        (Method::GET | Method::HEAD, p) if p.starts_with("/site/") => match crate::site::find(p) {
            Some(a) => {
                state.gets.fetch_add(1, Ordering::Relaxed);
                let tag = format!("\"{:x}-{:x}\"", state.nonce, content_hash(a.body));
                represent(
                    &state,
                    &req,
                    Bytes::from_static(a.body),
                    tag,
                    a.content_type,
                )
            }
            None => simple(StatusCode::NOT_FOUND, "not found\n"),
        },
        (m, p) if p.starts_with("/docs/") => {
            let name = &p["/docs/".len()..];
            if !valid_name(name) {
                simple(StatusCode::BAD_REQUEST, "bad document name\n")
            } else if m == Method::GET || m == Method::HEAD {
                state.gets.fetch_add(1, Ordering::Relaxed);
                get_doc(&state, &req, name)
            } else if m == Method::PUT {
                state.puts.fetch_add(1, Ordering::Relaxed);
                put_doc(state.clone(), req, name).await
            } else {
                simple(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or PUT\n")
            }
        }
        _ => simple(StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = resp;
    if let Ok(v) = http::HeaderValue::from_str(&state.cfg.replica) {
        resp.headers_mut().insert("x-replica", v);
    }
    Ok(resp)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

fn blob(state: &State, n: usize) -> Bytes {
    if let Some(b) = state.blobs.read().ok().and_then(|m| m.get(&n).cloned()) {
        return b;
    }
    let b = Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());
    if let Ok(mut m) = state.blobs.write() {
        m.insert(n, b.clone());
    }
    b
}

fn get_doc(state: &State, req: &Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    match std::fs::read(state.cfg.data_dir.join("docs").join(name)) {
        Ok(body) => {
            let tag = format!("\"{:x}-{:x}\"", state.nonce, content_hash(&body));
            represent(state, req, Bytes::from(body), tag, "application/json")
        }
        Err(_) => simple(StatusCode::NOT_FOUND, "no such document\n"),
    }
}

/// The content part of the app's tags (the replica's nonce is the other).
fn content_hash(body: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(body);
    h.finish()
}

/// A 200 with this replica's validators, or a 304 when If-None-Match names
/// this replica's tag (the app's own, replica-local revalidation).
fn represent(
    state: &State,
    req: &Request<Incoming>,
    body: Bytes,
    tag: String,
    ctype: &'static str,
) -> Response<Full<Bytes>> {
    let inm_hit = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/") == tag);
    let (status, body) = if inm_hit {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if req.method() == Method::HEAD {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, body)
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::ETAG, tag)
        .header(header::LAST_MODIFIED, &state.started)
        .header(header::CACHE_CONTROL, "no-cache");
    if status == StatusCode::OK {
        b = b.header(header::CONTENT_TYPE, ctype);
    }
    b.body(Full::new(body))
        .unwrap_or_else(|_| simple(StatusCode::INTERNAL_SERVER_ERROR, "response\n"))
}

async fn put_doc(state: Arc<State>, req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let delay = req
        .headers()
        .get("x-app-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_DELAY));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return simple(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
    };
    let name = name.to_owned();
    // A transaction in flight commits even if the caller hangs up: the
    // sidecar being killed mid-write must not undo (or half-do) the write.
    let commit = tokio::spawn(async move {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        tokio::task::spawn_blocking(move || commit(&state, &name, &body)).await
    });
    match commit.await {
        Ok(Ok(Ok(Some(version)))) => {
            let mut r = simple(StatusCode::OK, &format!("{{\"version\":{version}}}"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Ok(Ok(Ok(None))) => {
            let mut r = simple(StatusCode::NO_CONTENT, "");
            *r.body_mut() = Full::new(Bytes::new());
            r
        }
        _ => simple(StatusCode::INTERNAL_SERVER_ERROR, "write failed\n"),
    }
}

/// Apply one PUT under the shared lock; the stamped version for a tracked
/// write.
fn commit(state: &State, name: &str, body: &[u8]) -> std::io::Result<Option<u64>> {
    let data = &state.cfg.data_dir;
    let dir = data.join("docs");
    // Across replica processes: the read of the current version, the write
    // and the log line are one step. Released when `_lock` is dropped.
    let _lock = DirLock::acquire(data.join("db.lock"))?;
    let mut tracked = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) if m.contains_key("req") => Some(m),
        _ => None,
    };
    let field = |m: &serde_json::Map<String, serde_json::Value>, k: &str| m.get(k).cloned();
    let mut entry = Applied {
        doc: name.to_owned(),
        version: None,
        base: None,
        writer: None,
        req: None,
        replica: state.cfg.replica.clone(),
    };
    let bytes = match tracked.as_mut() {
        Some(m) => {
            let previous = std::fs::read(dir.join(name))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            let version = previous + 1;
            m.insert("version".into(), version.into());
            entry.version = Some(version);
            entry.base = m.get("base").and_then(serde_json::Value::as_u64);
            entry.writer = field(m, "writer");
            entry.req = m.get("req").and_then(|v| v.as_str()).map(str::to_owned);
            serde_json::to_vec(m).map_err(std::io::Error::other)?
        }
        None => {
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(body) {
                entry.writer = field(&m, "writer");
            }
            body.to_vec()
        }
    };
    // Write then rename: a reader on another replica sees the old or the new
    // document, never half of one.
    let tmp = dir.join(format!(".{name}.{:x}.{}", state.nonce, fastrand::u64(..)));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(data.join(APPLIED_LOG))?
        .write_all(&line)?;
    Ok(entry.version)
}

/// A lock shared by the replica processes: a file created exclusively
/// (`O_EXCL`), removed on drop. It is held for a few file operations only,
/// so one older than [`DirLock::STALE`] was left by a replica killed while
/// holding it, and is broken.
struct DirLock(PathBuf);

impl DirLock {
    const STALE: Duration = Duration::from_secs(1);
    const WAIT: Duration = Duration::from_secs(10);

    fn acquire(path: PathBuf) -> std::io::Result<Self> {
        let deadline = std::time::Instant::now() + Self::WAIT;
        loop {
            match std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(DirLock(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Self::STALE);
                    if stale {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if std::time::Instant::now() > deadline {
                        return Err(std::io::Error::other("database lock busy"));
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn simple(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// IMF-fixdate (RFC 9110 §5.6.7) for `t`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[(days.rem_euclid(7)) as usize],
        d,
        MO[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_matches_known_values() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn document_names_are_confined() {
        assert!(valid_name("counter.json"));
        assert!(!valid_name("../etc/passwd"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
    }
}
