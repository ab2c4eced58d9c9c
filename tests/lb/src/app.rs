//! The dynamic test app: a JSON document service whose replicas share their
//! documents (a directory standing in for the database) but each mint their
//! own ETag (a random per-replica nonce) and `Last-Modified` (the replica's
//! start time), like real apps behind a balancer. It answers If-None-Match
//! against its own tag, ignores If-Match, and supports PUT.
//!
//! Routes: `GET /` health; `GET|PUT /docs/NAME`; `GET /bytes/N` (N bytes, for
//! the benchmark); `GET /__stats` (counters, `no-store`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
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
        (m, p) if p.starts_with("/docs/") => {
            let name = &p["/docs/".len()..];
            if !valid_name(name) {
                simple(StatusCode::BAD_REQUEST, "bad document name\n")
            } else if m == Method::GET || m == Method::HEAD {
                state.gets.fetch_add(1, Ordering::Relaxed);
                get_doc(&state, &req, name)
            } else if m == Method::PUT {
                state.puts.fetch_add(1, Ordering::Relaxed);
                put_doc(&state, req, name).await
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
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(&body);
            let tag = format!("\"{:x}-{:x}\"", state.nonce, h.finish());
            represent(state, req, Bytes::from(body), tag, "application/json")
        }
        Err(_) => simple(StatusCode::NOT_FOUND, "no such document\n"),
    }
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

async fn put_doc(state: &State, req: Request<Incoming>, name: &str) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return simple(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
    };
    let dir = state.cfg.data_dir.join("docs");
    // Write then rename: a reader on another replica sees the old or the new
    // document, never half of one.
    let tmp = dir.join(format!(".{name}.{:x}.{}", state.nonce, fastrand::u64(..)));
    let res = std::fs::write(&tmp, &body).and_then(|_| std::fs::rename(&tmp, dir.join(name)));
    match res {
        Ok(()) => {
            let mut r = simple(StatusCode::NO_CONTENT, "");
            *r.body_mut() = Full::new(Bytes::new());
            r
        }
        Err(_) => simple(StatusCode::INTERNAL_SERVER_ERROR, "write failed\n"),
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
