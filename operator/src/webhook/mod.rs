//! The mutating admission webhook: the AdmissionReview wire format around the
//! pure injection in [`inject`], the cluster view it consults (reflector
//! caches of ETagStores and namespace labels), and the HTTPS server.

pub mod config;
pub mod inject;
pub mod tls;
pub mod tuning;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::crd::ETagStore;
use crate::metrics::Metrics;
use inject::{InjectConfig, InjectError, NAMESPACE_ENABLED};

/// Largest AdmissionReview body read (pods are far smaller).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// What the handler needs to know about the cluster.
pub trait ClusterView: Send + Sync {
    /// ETagStores in `namespace`.
    fn stores(&self, namespace: &str) -> Vec<ETagStore>;
    /// Whether `namespace` carries `sametag.dev/inject=enabled`.
    fn namespace_enabled(&self, namespace: &str) -> bool;
}

/// How an admission review ended (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// The pod did not ask for injection (or is not a create).
    Skipped,
    /// The pod already has the sidecar: empty patch.
    AlreadyInjected,
    /// The pod asked but could not be injected: allowed with a warning.
    Warning,
    /// The request could not be read.
    Invalid,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::AlreadyInjected => "already_injected",
            Self::Warning => "warning",
            Self::Invalid => "invalid",
        }
    }
}

/// A warning worth an Event, and the object it is about.
#[derive(Clone, Debug)]
pub struct Notice {
    /// Event reason.
    pub reason: &'static str,
    /// Event note.
    pub message: String,
    /// The pod's controller (a ReplicaSet, Job, ...), which exists already.
    pub regarding: Option<ObjectReference>,
}

/// The answer to one review.
pub struct Reviewed {
    /// The AdmissionReview to send back.
    pub review: AdmissionReview<DynamicObject>,
    /// How it ended.
    pub outcome: Outcome,
    /// An Event to publish, if any.
    pub notice: Option<Notice>,
}

/// What an Event about `pod` refers to: its controller (a ReplicaSet, Job,
/// ...), which exists already; a bare pod by its name (it exists once
/// admitted; `kubectl get events` shows it).
fn owner_reference(pod: &Pod, namespace: &str) -> Option<ObjectReference> {
    let Some(o) = pod.owner_references().first() else {
        return pod.metadata.name.as_ref().map(|name| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        });
    };
    Some(ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace: Some(namespace.to_owned()),
        uid: Some(o.uid.clone()),
        ..ObjectReference::default()
    })
}

/// Answer an AdmissionReview body. Never denies a pod: anything that goes
/// wrong is an allowed response with a warning, so a pod is never broken.
pub fn review(body: &[u8], view: &dyn ClusterView, cfg: &InjectConfig) -> Reviewed {
    let invalid = |msg: String| Reviewed {
        review: AdmissionResponse::invalid(msg).into_review(),
        outcome: Outcome::Invalid,
        notice: None,
    };
    let parsed: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("not an AdmissionReview of a Pod: {e}")),
    };
    let req: AdmissionRequest<Pod> = match parsed.try_into() {
        Ok(r) => r,
        Err(e) => return invalid(format!("AdmissionReview without a request: {e}")),
    };
    let resp = AdmissionResponse::from(&req);
    let done = |resp: AdmissionResponse, outcome, notice| Reviewed {
        review: resp.into_review(),
        outcome,
        notice,
    };
    let (Operation::Create, Some(pod)) = (&req.operation, req.object.as_ref()) else {
        return done(resp, Outcome::Skipped, None);
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.namespace())
        .unwrap_or_else(|| "default".to_owned());
    if inject::already_injected(pod) {
        return done(resp, Outcome::AlreadyInjected, None);
    }
    if !inject::wants_injection(pod, view.namespace_enabled(&namespace)) {
        return done(resp, Outcome::Skipped, None);
    }
    let stores = view.stores(&namespace);
    let result = inject::choose_store(pod, &namespace, &stores)
        .and_then(|store| inject::patch(pod, &namespace, store, cfg));
    let warn = |resp: AdmissionResponse, e: InjectError| {
        let message = format!("sametag: sidecar not injected: {e}");
        let reason = match e {
            InjectError::UnknownStore(..) | InjectError::NoStore(_) => "ETagStoreNotFound",
            InjectError::Ambiguous(..) => "ETagStoreAmbiguous",
            _ => "InjectionFailed",
        };
        let notice = Notice {
            reason,
            message: message.clone(),
            regarding: owner_reference(pod, &namespace),
        };
        let mut resp = resp;
        resp.warnings = Some(vec![message]);
        done(resp, Outcome::Warning, Some(notice))
    };
    let reviewed = match result {
        Err(e) => warn(resp, e),
        Ok((p, _)) if p.0.is_empty() => done(resp, Outcome::AlreadyInjected, None),
        Ok((p, rejected)) => match resp.clone().with_patch(p) {
            Ok(mut r) => {
                // Injected with the defaults for what was invalid: say so.
                let notice = (!rejected.is_empty()).then(|| {
                    let lines: Vec<String> =
                        rejected.iter().map(|b| format!("sametag: {b}")).collect();
                    r.warnings = Some(lines.clone());
                    Notice {
                        reason: "InvalidAnnotation",
                        message: lines.join("; "),
                        regarding: owner_reference(pod, &namespace),
                    }
                });
                done(r, Outcome::Injected, notice)
            }
            Err(e) => warn(resp, InjectError::Serialize(e.to_string())),
        },
    };
    // A dry run (`kubectl apply --dry-run=server`, `sametag-operator
    // check`) must leave nothing behind, Events included.
    if req.dry_run {
        return Reviewed {
            notice: None,
            ..reviewed
        };
    }
    reviewed
}

// === impl CachedView ===

/// A [`ClusterView`] over reflector caches, shared by every request.
#[derive(Clone)]
pub struct CachedView {
    /// One cache over every namespace, or one per watched namespace.
    stores: Vec<Store<ETagStore>>,
    namespaces: Vec<Store<PartialObjectMeta<Namespace>>>,
}

impl ClusterView for CachedView {
    fn stores(&self, namespace: &str) -> Vec<ETagStore> {
        let mut v: Vec<ETagStore> = self
            .stores
            .iter()
            .flat_map(|c| c.state())
            .filter(|s| s.namespace().as_deref() == Some(namespace))
            .map(|s| (*s).clone())
            .collect();
        v.sort_by_key(|s| s.name_any());
        v
    }

    fn namespace_enabled(&self, namespace: &str) -> bool {
        self.namespaces
            .iter()
            .find_map(|c| c.get(&reflector::ObjectRef::new(namespace)))
            .is_some_and(|ns| {
                ns.labels()
                    .get(inject::INJECT)
                    .is_some_and(|v| v == NAMESPACE_ENABLED)
            })
    }
}

impl CachedView {
    /// Whether both caches have listed once.
    pub async fn ready(&self) {
        for c in &self.stores {
            let _ = c.wait_until_ready().await;
        }
        for c in &self.namespaces {
            let _ = c.wait_until_ready().await;
        }
    }
}

/// Start the caches; the returned future drives them and never ends. With
/// `namespaces`, only those namespaces' stores and labels are cached (one
/// watch each, the Namespace by a `metadata.name` field selector, which
/// RBAC `resourceNames` can allow), so the webhook needs no cluster-wide
/// read; pods elsewhere never reach it (the chart's namespaceSelector).
pub fn cached_view(
    client: Client,
    namespaces: &[String],
) -> (CachedView, impl Future<Output = ()> + Send + use<>) {
    let mut drivers = Vec::new();
    let mut view = CachedView {
        stores: Vec::new(),
        namespaces: Vec::new(),
    };
    let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(Some).collect()
    };
    for scope in scopes {
        let (stores, stores_w) = reflector::store::<ETagStore>();
        let (labels, labels_w) = reflector::store::<PartialObjectMeta<Namespace>>();
        let (store_api, ns_config) = match scope {
            Some(ns) => (
                Api::<ETagStore>::namespaced(client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={ns}")),
            ),
            None => (Api::all(client.clone()), watcher::Config::default()),
        };
        let s = reflector::reflector(stores_w, watcher(store_api, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .for_each(|_| async {});
        let n = reflector::reflector(
            labels_w,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                ns_config,
            ),
        )
        .default_backoff()
        .touched_objects()
        .for_each(|_| async {});
        drivers.push(
            async move {
                tokio::join!(s, n);
            }
            .boxed(),
        );
        view.stores.push(stores);
        view.namespaces.push(labels);
    }
    (view, async move {
        futures::future::join_all(drivers).await;
    })
}

// === server ===

/// Shared state of the HTTPS server.
pub struct Webhook {
    /// Where stores and namespace labels come from.
    pub view: Arc<dyn ClusterView>,
    /// Injection settings from the flags.
    pub config: InjectConfig,
    /// Admission metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes warning Events (absent in tests).
    pub recorder: Option<Recorder>,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

impl Webhook {
    /// Handle one HTTP request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/mutate") => {}
            (&Method::GET, "/healthz") => return Ok(text(StatusCode::OK, "ok\n")),
            _ => return Ok(text(StatusCode::NOT_FOUND, "not found\n")),
        }
        let _timer = self.metrics.admission_started();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Ok(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body too large or unreadable\n",
                ));
            }
        };
        let reviewed = review(&body, self.view.as_ref(), &self.config);
        self.metrics.admitted(reviewed.outcome.label());
        if let (Some(notice), Some(recorder)) = (reviewed.notice, self.recorder.clone()) {
            tracing::warn!(reason = notice.reason, message = %notice.message, "admission warning");
            if let Some(regarding) = notice.regarding {
                // Best effort and off the request path: admission stays fast.
                tokio::spawn(async move {
                    let ev = Event {
                        type_: EventType::Warning,
                        reason: notice.reason.into(),
                        note: Some(notice.message),
                        action: "Inject".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&ev, &regarding).await {
                        tracing::debug!(error = %e, "cannot publish injection event");
                    }
                });
            }
        }
        let json = serde_json::to_vec(&reviewed.review).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(json)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

/// Serve `/mutate` over TLS on `listener` until the process ends.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, state: Arc<Webhook>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            // A client that never finishes the handshake must not hold a task forever.
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| state.clone().handle(req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

#[cfg(test)]
#[path = "review_tests.rs"]
mod tests;
