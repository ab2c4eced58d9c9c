//! The traffic a history is made of: several users (Authorization and/or
//! Cookie), several Host spellings of one Service, HTTP/1.1 and h2c, reads,
//! conditional reads and If-Match read-modify-writes on a few documents,
//! concurrently, every request recorded as an [`Op`].
//!
//! Writes come in rounds: every `slot`, each worker revalidates the slot's
//! document and writes it with `If-Match`, so writers through different
//! replicas, as different users and under different Host names, meet on one
//! document at once (exactly one should win, the rest get 412). Between
//! rounds the document is left alone long enough for Trust to be active
//! again (the slot times the number of documents exceeds the trust guard).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::client::Reply;
use crate::history::{Op, OpKind, Proto};

/// A document the workload uses.
#[derive(Clone, Debug)]
pub struct Doc {
    /// The app's name for it (`d0.json`).
    pub name: String,
    /// The request target every client uses for it (path and query).
    pub target: String,
}

/// A user: a name and the credential headers sent with every request.
#[derive(Clone, Debug)]
pub struct User {
    /// Name in the history.
    pub name: String,
    /// Credential headers.
    pub headers: Vec<(String, String)>,
}

/// The documents: one without a query, two with (the app routes on the
/// path; the query is part of the request the sidecar keys and locks).
pub fn docs() -> Vec<Doc> {
    [
        ("d0.json", "/docs/d0.json"),
        ("d1.json", "/docs/d1.json?view=full"),
        ("d2.json", "/docs/d2.json?lang=en&fields=all"),
    ]
    .iter()
    .map(|(n, t)| Doc {
        name: (*n).to_owned(),
        target: (*t).to_owned(),
    })
    .collect()
}

/// Users: bearer token, session cookie, both, and anonymous.
pub fn users() -> Vec<User> {
    let u = |name: &str, h: &[(&str, &str)]| User {
        name: name.to_owned(),
        headers: h
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    vec![
        u("alice", &[("authorization", "Bearer alice-token")]),
        u("bob", &[("cookie", "session=bob; theme=dark")]),
        u(
            "carol",
            &[
                ("authorization", "Basic Y2Fyb2w6c2VjcmV0"),
                ("cookie", "session=carol"),
            ],
        ),
        u("anonymous", &[]),
    ]
}

/// Spellings of one Service's name (a client picks one per request).
pub const HOSTS: &[&str] = &["shop", "shop.shop.svc.cluster.local", "SHOP:80"];

/// Initial body of a document: version 0.
pub fn initial_doc(name: &str) -> String {
    serde_json::json!({ "name": name, "version": 0, "writer": "init" }).to_string()
}

/// The version stamped in a document body.
pub fn version_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("version")?
        .as_u64()
}

/// Where operations go, shared by every worker and the fault injector.
#[derive(Debug)]
pub struct Recorder {
    t0: Instant,
    phase: Mutex<String>,
    ops: Mutex<Vec<Op>>,
    next_req: AtomicU64,
}

impl Recorder {
    /// A new history starting now, in phase `phase`.
    pub fn new(phase: &str) -> Arc<Self> {
        Arc::new(Recorder {
            t0: Instant::now(),
            phase: Mutex::new(phase.to_owned()),
            ops: Mutex::new(Vec::new()),
            next_req: AtomicU64::new(0),
        })
    }

    /// Time since the history began.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Operations that start from now on belong to `phase`.
    pub fn set_phase(&self, phase: &str) {
        *lock(&self.phase) = phase.to_owned();
    }

    /// The current phase.
    pub fn phase(&self) -> String {
        lock(&self.phase).clone()
    }

    /// A fresh request id for a write.
    pub fn req_id(&self, worker: usize) -> String {
        format!(
            "w{worker}-{}",
            self.next_req.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn push(&self, op: Op) {
        lock(&self.ops).push(op);
    }

    /// Every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection (reopened after an error), so the Host header or
/// `:authority` can be any spelling while the socket goes to the balancer.
pub struct Wire {
    addr: SocketAddr,
    proto: Proto,
    timeout: Duration,
    sender: Option<Sender>,
}

impl Wire {
    /// A client of `addr` speaking `proto`, each exchange bounded by `timeout`.
    pub fn new(addr: SocketAddr, proto: Proto, timeout: Duration) -> Self {
        Wire {
            addr,
            proto,
            timeout,
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut Sender, String> {
        if self.sender.is_none() {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = tcp.set_nodelay(true);
            let io = TokioIo::new(tcp);
            let sender = match self.proto {
                Proto::H1 => {
                    let (s, conn) = hyper::client::conn::http1::handshake(io)
                        .await
                        .map_err(|e| format!("h1 handshake: {e}"))?;
                    tokio::spawn(conn);
                    Sender::H1(s)
                }
                Proto::H2 => {
                    let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                    tokio::spawn(conn);
                    Sender::H2(s)
                }
            };
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| "no connection".to_owned())
    }

    /// One exchange; the connection is dropped after any error.
    pub async fn send(
        &mut self,
        method: Method,
        host: &str,
        target: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let limit = self.timeout;
        let res = tokio::time::timeout(limit, self.send_inner(method, host, target, headers, body))
            .await
            .unwrap_or_else(|_| Err(format!("no response within {limit:?}")));
        if res.is_err() {
            self.sender = None;
        }
        res
    }

    async fn send_inner(
        &mut self,
        method: Method,
        host: &str,
        target: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let proto = self.proto;
        let mut b = Request::builder().method(method);
        b = match proto {
            // Origin form and a Host header, as HTTP/1.1 clients send.
            Proto::H1 => b.uri(target).header("host", host),
            // `:authority` carries the name in HTTP/2.
            Proto::H2 => b.uri(format!("http://{host}{target}")),
        };
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = match self.connect().await? {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| format!("h1 not ready: {e}"))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| format!("h2 not ready: {e}"))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Switches the test flips while workers run.
#[derive(Debug)]
pub struct Control {
    /// Write rounds happen while set.
    pub writes: AtomicBool,
    /// Workers stop when set.
    pub stop: AtomicBool,
    /// Length of a write round.
    pub slot: Duration,
}

impl Control {
    /// Writes on, running, rounds every `slot`.
    pub fn new(slot: Duration) -> Arc<Self> {
        Arc::new(Control {
            writes: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            slot,
        })
    }
}

/// What one client knows of a document: the last tag and its version.
#[derive(Clone, Debug, Default)]
struct Seen {
    tag: Option<String>,
    version: Option<u64>,
}

/// One client: a user, a protocol, its own view of each document.
pub struct Worker {
    /// Its number in the history.
    pub id: usize,
    /// Who it is.
    pub user: User,
    wire: Wire,
    proto: Proto,
    docs: Vec<Doc>,
    seen: Vec<Seen>,
    rec: Arc<Recorder>,
    rng: fastrand::Rng,
    steady_host: Option<&'static str>,
    hosts: &'static [&'static str],
}

impl Worker {
    /// A client of the balancer at `addr`.
    pub fn new(
        id: usize,
        user: User,
        addr: SocketAddr,
        proto: Proto,
        docs: Vec<Doc>,
        rec: Arc<Recorder>,
    ) -> Self {
        let n = docs.len();
        Worker {
            id,
            user,
            wire: Wire::new(addr, proto, Duration::from_secs(10)),
            proto,
            docs,
            seen: vec![Seen::default(); n],
            rec,
            rng: fastrand::Rng::with_seed(0x5a3e_7a90 + id as u64),
            steady_host: None,
            hosts: HOSTS,
        }
    }

    /// Pick Host names from `hosts` instead of [`HOSTS`].
    pub fn hosts(mut self, hosts: &'static [&'static str]) -> Self {
        self.hosts = hosts;
        self
    }

    /// Always this Host, and always conditional once a tag is known (a
    /// browser tab that comes back later with what it had).
    pub fn steady(mut self, host: &'static str) -> Self {
        self.steady_host = Some(host);
        self
    }

    /// Run until `ctl.stop`: reads and conditional reads with a little think
    /// time, and one If-Match write per round.
    pub async fn run(mut self, ctl: Arc<Control>) {
        let mut last_round = None;
        while !ctl.stop.load(Ordering::SeqCst) {
            let round = self.rec.now().as_millis() / ctl.slot.as_millis().max(1);
            if ctl.writes.load(Ordering::SeqCst) && last_round != Some(round) && round > 0 {
                last_round = Some(round);
                let doc = (round % self.docs.len() as u128) as usize;
                tokio::time::sleep(Duration::from_millis(self.rng.u64(0..5))).await;
                self.read_modify_write(doc).await;
                continue;
            }
            let doc = self.rng.usize(0..self.docs.len());
            self.revalidate(doc).await;
            tokio::time::sleep(Duration::from_millis(self.rng.u64(3..12))).await;
        }
    }

    fn host(&mut self) -> &'static str {
        self.steady_host
            .unwrap_or_else(|| self.hosts[self.rng.usize(0..self.hosts.len())])
    }

    /// A GET: conditional (`If-None-Match` with the last tag) when a tag is
    /// known, else plain. Updates what the worker knows on a 200.
    pub async fn revalidate(&mut self, doc: usize) -> Option<u16> {
        let seen = self.seen[doc].clone();
        let mut headers = self.user.headers.clone();
        // Mostly conditional; now and then a plain reload.
        let plain = self.steady_host.is_none() && self.rng.u8(0..10) == 0;
        let kind = match &seen.tag {
            Some(tag) if !plain => {
                headers.push(("if-none-match".into(), tag.clone()));
                OpKind::CondRead
            }
            _ => OpKind::Read,
        };
        let host = self.host();
        let target = self.docs[doc].target.clone();
        let (mut op, reply) = self
            .exchange(
                doc,
                kind,
                host,
                Method::GET,
                &target,
                &headers,
                Bytes::new(),
            )
            .await;
        if kind == OpKind::CondRead {
            op.etag_sent = seen.tag.clone();
            op.version_sent = seen.version;
        }
        let status = op.status;
        if let Some(r) = reply
            && r.status == 200
        {
            op.version_received = version_of(&r.body);
            self.seen[doc] = Seen {
                tag: op.etag_received.clone(),
                version: op.version_received,
            };
        }
        self.rec.push(op);
        status
    }

    /// Revalidate, then PUT with `If-Match` on the tag seen, the body
    /// based on its version.
    pub async fn read_modify_write(&mut self, doc: usize) {
        self.revalidate(doc).await;
        self.write_seen(doc, None).await;
    }

    /// PUT with `If-Match` on the tag last seen; `direct` names the sidecar
    /// when the wire goes to one instead of the balancer.
    async fn write_seen(&mut self, doc: usize, direct: Option<&str>) {
        let seen = self.seen[doc].clone();
        let (Some(tag), Some(base)) = (seen.tag, seen.version) else {
            return;
        };
        let req = self.rec.req_id(self.id);
        let body = serde_json::json!({
            "name": self.docs[doc].name,
            "writer": format!("{}/{}", self.user.name, self.id),
            "req": req,
            "base": base,
        })
        .to_string();
        let mut headers = self.user.headers.clone();
        headers.push(("if-match".into(), tag.clone()));
        headers.push(("content-type".into(), "application/json".into()));
        let host = self.host();
        let target = self.docs[doc].target.clone();
        let (mut op, reply) = self
            .exchange(
                doc,
                OpKind::Write,
                host,
                Method::PUT,
                &target,
                &headers,
                Bytes::from(body),
            )
            .await;
        op.etag_sent = Some(tag);
        op.version_sent = Some(base);
        op.req = Some(req);
        if let Some(name) = direct {
            op.server = Some(format!("direct {name}"));
        }
        if let Some(r) = reply
            && r.status.is_success()
        {
            op.version_received = version_of(&r.body);
        }
        self.rec.push(op);
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        doc: usize,
        kind: OpKind,
        host: &str,
        method: Method,
        target: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> (Op, Option<Reply>) {
        let phase = self.rec.phase();
        let start = self.rec.now();
        let res = self.wire.send(method, host, target, headers, body).await;
        let end = self.rec.now();
        let mut op = Op {
            worker: self.id,
            user: self.user.name.clone(),
            host: host.to_owned(),
            proto: self.proto,
            phase,
            doc: self.docs[doc].name.clone(),
            target: target.to_owned(),
            kind,
            start,
            end,
            status: None,
            error: None,
            etag_sent: None,
            version_sent: None,
            etag_received: None,
            version_received: None,
            req: None,
            cache_status: None,
            server: None,
        };
        match res {
            Ok(r) => {
                op.status = Some(r.status.as_u16());
                op.etag_received = r.header("etag").map(str::to_owned);
                op.cache_status = r.header("cache-status").map(str::to_owned);
                op.server = r.header("x-lb-server").map(str::to_owned);
                (op, Some(r))
            }
            Err(e) => {
                op.error = Some(e);
                (op, None)
            }
        }
    }

    /// Revalidate through the balancer, then send the write straight to one
    /// sidecar (`sidecar`, named `name` in the history) with `extra` headers
    /// (e.g. the app's delay knob), waiting up to `timeout` for its answer.
    pub async fn write_direct(
        &mut self,
        doc: usize,
        sidecar: SocketAddr,
        name: &str,
        extra: &[(String, String)],
        timeout: Duration,
    ) {
        self.revalidate(doc).await;
        let balancer = std::mem::replace(&mut self.wire, Wire::new(sidecar, Proto::H1, timeout));
        let proto = std::mem::replace(&mut self.proto, Proto::H1);
        let n = self.user.headers.len();
        self.user.headers.extend(extra.iter().cloned());
        self.write_seen(doc, Some(name)).await;
        self.user.headers.truncate(n);
        self.wire = balancer;
        self.proto = proto;
    }
}
