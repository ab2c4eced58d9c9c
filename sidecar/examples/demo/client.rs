//! A browser's revalidation traffic: fetch every resource once, then
//! revalidate it round after round with the validators it was given.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One answer, as the client saw it.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body_bytes: usize,
}

impl Answer {
    pub fn header(&self, name: header::HeaderName) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Sends one request on a fresh connection, so a layer-4 balancer picks a
/// new backend for every request.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, String)],
    body: Bytes,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "demo.local")
        .header(header::CONNECTION, "close");
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body_bytes: body.len(),
    })
}

/// What one replay measured.
#[derive(Default)]
pub struct Tally {
    pub revalidations: usize,
    pub not_modified: usize,
    pub body_bytes: usize,
    pub errors: usize,
    /// Distinct ETags per path across replicas (asked directly).
    pub etags_per_path: BTreeMap<String, BTreeSet<String>>,
    /// Distinct Last-Modified values per path across replicas.
    pub dates_per_path: BTreeMap<String, BTreeSet<String>>,
    /// 304s given for a resource that had changed (must stay 0).
    pub stale_304: usize,
}

/// Fetch every path once through `balancer`, then revalidate `rounds` times.
pub async fn replay(balancer: SocketAddr, paths: &[String], rounds: usize, tally: &mut Tally) {
    let mut validators: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for path in paths {
        if let Ok(a) = send(balancer, Method::GET, path, &[], Bytes::new()).await {
            validators.insert(
                path.clone(),
                (a.header(header::ETAG), a.header(header::LAST_MODIFIED)),
            );
        }
    }
    // A page's resources are not revalidated in a fixed order; a fixed order
    // against a round-robin balancer would be a pathological special case.
    let mut order: Vec<&String> = paths.iter().collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..rounds {
        shuffle(&mut order, &mut seed);
        for &path in &order {
            let headers = conditional_headers(validators.get(path));
            tally.revalidations += 1;
            match send(balancer, Method::GET, path, &headers, Bytes::new()).await {
                Ok(a) if a.status == StatusCode::NOT_MODIFIED => tally.not_modified += 1,
                Ok(a) if a.status == StatusCode::OK => {
                    tally.body_bytes += a.body_bytes;
                    validators.insert(
                        path.clone(),
                        (a.header(header::ETAG), a.header(header::LAST_MODIFIED)),
                    );
                }
                _ => tally.errors += 1,
            }
        }
    }
}

/// Ask each backend directly which validators it gives every path.
pub async fn agreement(backends: &[SocketAddr], paths: &[String], tally: &mut Tally) {
    for path in paths {
        for backend in backends {
            if let Ok(a) = send(*backend, Method::GET, path, &[], Bytes::new()).await {
                let etag = a.header(header::ETAG).unwrap_or_else(|| "(none)".into());
                let date = a
                    .header(header::LAST_MODIFIED)
                    .unwrap_or_else(|| "(none)".into());
                tally
                    .etags_per_path
                    .entry(path.clone())
                    .or_default()
                    .insert(etag);
                tally
                    .dates_per_path
                    .entry(path.clone())
                    .or_default()
                    .insert(date);
            }
        }
    }
}

/// Change `path` through the balancer, then revalidate the old validators
/// `tries` times (landing on different replicas): any 304 is stale.
pub async fn change_and_check(balancer: SocketAddr, path: &str, tries: usize, tally: &mut Tally) {
    let Ok(before) = send(balancer, Method::GET, path, &[], Bytes::new()).await else {
        tally.errors += 1;
        return;
    };
    let old = (
        before.header(header::ETAG),
        before.header(header::LAST_MODIFIED),
    );
    let new_body = Bytes::from(format!("{{\"items\":[1,2,3,{}]}}", before.body_bytes));
    if send(balancer, Method::PUT, path, &[], new_body)
        .await
        .is_err()
    {
        tally.errors += 1;
    }
    for _ in 0..tries {
        let headers = conditional_headers(Some(&old));
        match send(balancer, Method::GET, path, &headers, Bytes::new()).await {
            Ok(a) if a.status == StatusCode::NOT_MODIFIED => tally.stale_304 += 1,
            Ok(_) => {}
            Err(_) => tally.errors += 1,
        }
    }
}

/// Fisher–Yates with xorshift64: deterministic, so runs are comparable.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let j = (*seed % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn conditional_headers(
    v: Option<&(Option<String>, Option<String>)>,
) -> Vec<(header::HeaderName, String)> {
    let mut headers = Vec::new();
    if let Some((etag, date)) = v {
        if let Some(etag) = etag {
            headers.push((header::IF_NONE_MATCH, etag.clone()));
        }
        if let Some(date) = date {
            headers.push((header::IF_MODIFIED_SINCE, date.clone()));
        }
    }
    headers
}
