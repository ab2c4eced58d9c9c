//! The measurements of `sametag-cp-bench`, against a [`Cluster`]: admission
//! latency (the webhook itself, and pod creates through the apiserver with
//! and without the webhook), then managed ETagStores created one after
//! another, timed from the client's clock through watches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DynamicObject, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams,
};
use kube::core::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::cluster::Cluster;
use super::webhook::{WebhookClient, admission_review, check_injected};
use super::{Buckets, ControlPlaneResults, Latency, StoreTiming, admission_histogram};
use crate::ets::{condition, create_namespace, etagstore, etagstores, wait_condition};
use crate::{Error, Result};

/// Namespace of the injection measurements (an external store `web`).
pub const INJECT_NS: &str = "cpbench-inject";
/// Namespace of the measured managed stores.
pub const STORES_NS: &str = "cpbench-stores";
/// Label the operator puts on every child, valued with the store's name.
const OWNER_LABEL: &str = "sametag.dev/etagstore";
/// Bound on one admission request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a store's children appearing, and on its Ready.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many requests per admission series, whatever the flags say.
pub const MAX_REQUESTS: usize = 2000;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Params {
    /// Pods per second in each admission series.
    pub rate: u32,
    /// Seconds per admission series.
    pub seconds: u32,
    /// Managed stores created one after another.
    pub stores: usize,
}

impl Params {
    /// Requests per admission series (bounded by [`MAX_REQUESTS`]).
    pub fn requests(&self) -> usize {
        (self.rate as usize * self.seconds as usize).clamp(1, MAX_REQUESTS)
    }
}

/// One progress line per step: `[cp-bench  3/8] ...`.
pub struct Progress {
    step: usize,
    total: usize,
}

impl Progress {
    /// A counter for `total` steps.
    pub fn new(total: usize) -> Self {
        Self { step: 0, total }
    }

    /// Print the next step.
    pub fn say(&mut self, msg: &str) {
        self.step += 1;
        println!("[cp-bench {:>2}/{}] {msg}", self.step, self.total);
    }
}

/// Steps [`run`] reports (the cluster start adds 2).
pub fn steps(p: &Params) -> usize {
    3 + p.stores
}

/// What the bench does to make Redis "ready" without a kubelet.
pub const READY_SIMULATION: &str = "the k8s tier runs no kubelet and no StatefulSet controller, so no \
Redis pod ever starts. Once a store's children exist and its status says Ready=False (waiting for \
Redis), the bench patches the Redis StatefulSet's `status` subresource to `replicas`, \
`readyReplicas`, `availableReplicas`, `currentReplicas` and `updatedReplicas` = `spec.replicas` \
and `observedGeneration` = `metadata.generation`, as the StatefulSet controller would once the \
kubelet reported the pod ready. The operator reads only `status.readyReplicas` of that \
StatefulSet (operator/src/reconcile.rs) and learns of the change through its watch on owned \
StatefulSets; the time is from sending the patch to the ETagStore watch event with Ready=True \
for the current generation.";

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// Run every measurement; fills everything but the machine fields.
pub async fn run(
    cluster: &Cluster,
    params: &Params,
    progress: &mut Progress,
) -> Result<ControlPlaneResults> {
    let mut r = ControlPlaneResults {
        rate_per_s: params.rate,
        seconds: params.seconds,
        kubernetes: cluster.kubernetes.clone(),
        operator_bin: {
            let bin = &cluster.operator.config.bin;
            let bin = bin.canonicalize().unwrap_or_else(|_| bin.clone());
            bin.strip_prefix(crate::repo_root())
                .unwrap_or(&bin)
                .display()
                .to_string()
        },
        ready_simulation: READY_SIMULATION.into(),
        ..Default::default()
    };
    progress.say(&format!(
        "namespace {INJECT_NS} with a Ready external ETagStore `web` (the pods' store)"
    ));
    // The operator makes an external store Ready only once it pinged it.
    let redis = crate::redis::TestRedis::start(&["requirepass pw".to_owned()], false)?;
    injection_store(&cluster.admin, &redis.url()).await?;

    let n = params.requests();
    progress.say(&format!(
        "webhook itself: {n} AdmissionReviews at {}/s over HTTPS (h2, the operator's CA)",
        params.rate
    ));
    let metrics_port = cluster.operator.config.metrics_port;
    let client =
        WebhookClient::connect(cluster.operator.config.webhook_port, &cluster.ca_pem).await?;
    r.webhook_transport = "TLS 1.3, HTTP/2, one keep-alive connection, as the apiserver".into();
    // Warm-up: the webhook's own store cache may not hold `web` yet (it is
    // a separate watch from the controller's), and the first reviews pay
    // for lazy initialisation.
    let t = Instant::now();
    let mut last = String::new();
    let mut ok = 0;
    for i in 0.. {
        let uid = format!("warmup-{i}");
        match check_injected(&client.review(review_body(&uid)?).await?, &uid) {
            Ok(()) => ok += 1,
            Err(e) => (ok, last) = (0, e.to_string()),
        }
        if ok == 20 {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(err(format!(
                "the webhook never injected within 30s: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !last.is_empty() {
        println!(
            "           -> the webhook injected only after {:.1}s (its store cache lagged): {last:.120}",
            t.elapsed().as_secs_f64()
        );
    }
    let before = scrape_histogram(metrics_port).await;
    let bodies: Vec<(String, Bytes)> = (0..n)
        .map(|i| {
            let uid = format!("cpbench-{i}");
            review_body(&uid).map(|b| (uid, b))
        })
        .collect::<Result<_>>()?;
    let bodies = Arc::new(bodies);
    let (webhook, first_error) = fixed_rate(params.rate, n, |i| {
        let (client, bodies) = (client.clone(), bodies.clone());
        async move {
            let (uid, body) = &bodies[i];
            check_injected(&client.review(body.clone()).await?, uid)
        }
    })
    .await;
    report("webhook", &webhook, first_error);
    r.webhook = webhook;
    match (before, scrape_histogram(metrics_port).await) {
        (_, Err(e)) => r.webhook_metric_note = format!("cannot read the operator's /metrics: {e}"),
        (_, Ok(None)) => {
            r.webhook_metric_note = "the operator exports no admission duration histogram: no \
                 `*admission*duration*_bucket` series on its /metrics"
                .into()
        }
        (b, Ok(Some(after))) => {
            let s = after.since(b.ok().flatten().as_ref());
            println!(
                "           -> operator histogram {}: {} observations, p99 bucket {:?} ms",
                s.metric, s.count, s.p99_le_ms
            );
            r.webhook_metric = Some(s);
        }
    }

    progress.say(&format!(
        "apiserver: {n} dry-run pod creates opted in and {n} not, interleaved, {}/s each",
        params.rate
    ));
    let (injected, plain) = apiserver_creates(&cluster.admin, params.rate, n).await?;
    r.create_injected = injected;
    r.create_plain = plain;

    let seen = ChildWatch::start(&cluster.admin).await?;
    for i in 0..params.stores {
        let name = format!("s{i:02}");
        progress.say(&format!(
            "ETagStore {STORES_NS}/{name} ({}/{}): create → children → Redis ready → Ready",
            i + 1,
            params.stores
        ));
        let t = store_timing(&cluster.admin, &seen, &name).await?;
        println!(
            "           -> children {} ms, Ready {} ms after Redis",
            t.children_ms.map_or("-".into(), |v| format!("{v:.0}")),
            t.ready_ms.map_or("-".into(), |v| format!("{v:.0}"))
        );
        r.stores.push(t);
    }
    Ok(r)
}

fn report(what: &str, l: &Latency, first_error: Option<String>) {
    println!(
        "           -> {what}: {} ok, {} errors, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.count, l.errors, l.p50_ms, l.p99_ms, l.max_ms
    );
    if let Some(e) = first_error {
        println!("           -> first error: {e}");
    }
}

/// The store the injected pods name, Ready (external Redis: no StatefulSet).
async fn injection_store(admin: &kube::Client, url: &str) -> Result<()> {
    create_namespace(admin, INJECT_NS, &[]).await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), INJECT_NS);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("redis-pass".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("password".into(), "pw".into())])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    let api = etagstores(admin, INJECT_NS);
    let obj = etagstore(
        "web",
        json!({ "redis": { "external": { "url": url, "secretRef": { "name": "redis-pass" } } } }),
    )?;
    api.create(&PostParams::default(), &obj).await?;
    wait_condition(&api, "web", "Ready", "True", Duration::from_secs(60)).await?;
    Ok(())
}

/// A pod that opts in (or not) to injection.
fn pod(name: &str, opt_in: bool) -> Value {
    let annotations = if opt_in {
        json!({ "sametag.dev/inject": "true", "sametag.dev/store": "web" })
    } else {
        json!({})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": INJECT_NS, "annotations": annotations, "labels": { "app": "cpbench" } },
        "spec": { "containers": [{
            "name": "app",
            "image": "registry.example/app:1",
            "ports": [{ "name": "http", "containerPort": 8080 }],
            "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" } },
        }] },
    })
}

fn review_body(uid: &str) -> Result<Bytes> {
    let review = admission_review(uid, INJECT_NS, &pod(&format!("pod-{uid}"), true));
    serde_json::to_vec(&review)
        .map(Bytes::from)
        .map_err(|e| err(format!("serialise a review: {e}")))
}

/// Send `n` requests, request `i` at `i / rate` s, each in its own task
/// whether or not earlier ones have answered (open loop, so a slow answer
/// cannot hold back the next request); time each from its send to its
/// answer. The latencies, and the first error seen.
async fn fixed_rate<F, Fut>(rate: u32, n: usize, make: F) -> (Latency, Option<String>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let fut = make(i);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(())) => Ok(sent.elapsed().as_secs_f64() * 1000.0),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
            }
        }));
    }
    let mut samples = Vec::with_capacity(n);
    let (mut errors, mut first) = (0, None);
    for t in tasks {
        match t.await {
            Ok(Ok(ms)) => samples.push(ms),
            Ok(Err(e)) => {
                errors += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first.get_or_insert(e.to_string());
            }
        }
    }
    (Latency::from_samples(samples, errors), first)
}

/// Native sidecars (init containers with restartPolicy Always) of a pod.
fn sidecars(pod: &Pod) -> usize {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, |v| {
            v.iter()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .count()
        })
}

/// Dry-run creates (`dryRun=All`: admission runs, nothing is stored) at
/// `rate` per second for each kind, the two kinds alternating, so both see
/// the same machine. Opted-in answers must carry the injected sidecar,
/// the others none.
async fn apiserver_creates(
    admin: &kube::Client,
    rate: u32,
    n: usize,
) -> Result<(Latency, Latency)> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), INJECT_NS);
    let dry = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let objects: Vec<Pod> = (0..2 * (n + 10))
        .map(|i| {
            serde_json::from_value(pod(&format!("cpb-{i}"), i.is_multiple_of(2)))
                .map_err(|e| err(format!("pod object: {e}")))
        })
        .collect::<Result<_>>()?;
    let objects = Arc::new(objects);
    let create = move |i: usize| {
        let (pods, dry, objects) = (pods.clone(), dry.clone(), objects.clone());
        async move {
            let got = pods.create(&dry, &objects[i]).await?;
            let want = usize::from(i.is_multiple_of(2));
            if sidecars(&got) == want {
                Ok(())
            } else {
                Err(err(format!(
                    "dry-run create of {} (opted in: {}): {} sidecars in the answer, want {want}",
                    got.name_any(),
                    want == 1,
                    sidecars(&got)
                )))
            }
        }
    };
    // Warm-up: the apiserver's connection to the webhook, the client pool.
    for i in 0..20 {
        create(2 * n + i).await?;
    }
    // Two series in one schedule: even requests opted in, odd ones not.
    let times: Arc<Mutex<Vec<(usize, f64)>>> = Arc::default();
    let (_, first_error) = fixed_rate(2 * rate, 2 * n, |i| {
        let (fut, times) = (create(i), times.clone());
        async move {
            let t = Instant::now();
            fut.await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            times.lock().map_err(|_| err("poisoned"))?.push((i, ms));
            Ok(())
        }
    })
    .await;
    let times = times.lock().map_err(|_| err("poisoned"))?.clone();
    let split = |parity: usize| {
        let samples: Vec<f64> = times
            .iter()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, ms)| *ms)
            .collect();
        let errors = n - samples.len();
        Latency::from_samples(samples, errors)
    };
    let (injected, plain) = (split(0), split(1));
    report("opted in    ", &injected, None);
    report("not opted in", &plain, first_error);
    Ok((injected, plain))
}

/// GET /metrics on the operator; its admission histogram, if any.
async fn scrape_histogram(port: u16) -> Result<Option<Buckets>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |what: &'static str| {
        move |source| Error::Io {
            what: what.into(),
            source,
        }
    };
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(io("connect to /metrics"))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .map_err(io("write"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(io("read /metrics"))?;
        Ok::<_, Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| err("GET /metrics timed out"))??;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(admission_histogram(body))
}

/// First-seen times of the stores' children (`Kind/name`, by owning store)
/// and of each store's first Ready=True, from watches started before the
/// first store is created. Dropping it stops the watches (before the
/// control plane goes away, so none spins on a dead apiserver).
#[derive(Default)]
struct ChildWatch {
    children: Arc<Mutex<HashMap<String, BTreeMap<String, Instant>>>>,
    ready: Arc<Mutex<HashMap<String, Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ChildWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ChildWatch {
    async fn start(admin: &kube::Client) -> Result<Self> {
        create_namespace(admin, STORES_NS, &[]).await?;
        let mut w = Self::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
        w.watch::<Secret>(admin, "Secret", tx.clone());
        w.watch::<ConfigMap>(admin, "ConfigMap", tx.clone());
        w.watch::<StatefulSet>(admin, "StatefulSet", tx.clone());
        w.watch::<Service>(admin, "Service", tx.clone());
        w.watch::<NetworkPolicy>(admin, "NetworkPolicy", tx.clone());
        w.watch_ready(admin, tx);
        // Every watch has listed (and so is watching) before a store exists.
        for _ in 0..6 {
            tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .map_err(|_| err("the child watches did not start within 30s"))?;
        }
        Ok(w)
    }

    fn watch<K>(
        &mut self,
        admin: &kube::Client,
        kind: &'static str,
        synced: tokio::sync::mpsc::Sender<()>,
    ) where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        // Metadata only: the bench needs names, labels and the time they appear.
        let api: Api<PartialObjectMeta<K>> = Api::namespaced(admin.clone(), STORES_NS);
        let children = self.children.clone();
        self.tasks.push(tokio::spawn(async move {
            let cfg = watcher::Config::default().labels(OWNER_LABEL);
            let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                match ev {
                    Ok(Event::Apply(m) | Event::InitApply(m)) => {
                        let Some(store) = m.labels().get(OWNER_LABEL).cloned() else {
                            continue;
                        };
                        if let Ok(mut c) = children.lock() {
                            c.entry(store)
                                .or_default()
                                .entry(format!("{kind}/{}", m.name_any()))
                                .or_insert(now);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let _ = synced.try_send(());
                    }
                    _ => {}
                }
            }
        }));
    }

    fn watch_ready(&mut self, admin: &kube::Client, synced: tokio::sync::mpsc::Sender<()>) {
        let api = etagstores(admin, STORES_NS);
        let ready = self.ready.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                match ev {
                    Ok(Event::Apply(o) | Event::InitApply(o)) if is_ready(&o) => {
                        if let Ok(mut r) = ready.lock() {
                            r.entry(o.name_any()).or_insert(now);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let _ = synced.try_send(());
                    }
                    _ => {}
                }
            }
        }));
    }

    fn children_of(&self, store: &str) -> BTreeMap<String, Instant> {
        self.children
            .lock()
            .map(|c| c.get(store).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    fn ready_at(&self, store: &str) -> Option<Instant> {
        self.ready.lock().ok().and_then(|r| r.get(store).copied())
    }
}

/// Ready=True for the generation the status describes.
fn is_ready(o: &DynamicObject) -> bool {
    o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
        && condition(o, "Ready").is_some_and(|(s, _, _)| s == "True")
}

/// Every child the reconciler applies for a managed store
/// (operator/src/children): `Kind/name`.
pub fn expected_children(store: &str) -> BTreeSet<String> {
    [
        format!("Secret/{store}-redis"),
        format!("Secret/{store}-purge"),
        format!("ConfigMap/{store}-redis-config"),
        format!("ConfigMap/{store}-policy"),
        format!("StatefulSet/{store}-redis"),
        format!("Service/{store}-redis"),
        format!("Service/{store}-redis-headless"),
        format!("NetworkPolicy/{store}-redis"),
    ]
    .into()
}

/// Wait (polling the watch results every 5 ms) until `done` says yes.
async fn poll<T>(timeout: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = done() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Create one managed store and time it: create → every expected child
/// seen; then, from a settled Ready=False, StatefulSet status patch → Ready.
async fn store_timing(admin: &kube::Client, seen: &ChildWatch, name: &str) -> Result<StoreTiming> {
    let api = etagstores(admin, STORES_NS);
    let obj = etagstore(
        name,
        json!({ "redis": { "managed": {} }, "policy": { "mode": "Validate" } }),
    )?;
    let expected = expected_children(name);
    let mut t = StoreTiming {
        name: name.into(),
        ..Default::default()
    };
    let t0 = Instant::now();
    api.create(&PostParams::default(), &obj).await?;
    let all = poll(STORE_TIMEOUT, || {
        let kids = seen.children_of(name);
        expected
            .iter()
            .all(|k| kids.contains_key(k))
            .then_some(kids)
    })
    .await;
    let kids = all.unwrap_or_else(|| seen.children_of(name));
    for (k, at) in &kids {
        t.per_child_ms
            .insert(k.clone(), at.duration_since(t0).as_secs_f64() * 1000.0);
    }
    if expected.iter().any(|k| !kids.contains_key(k)) {
        return Ok(t);
    }
    t.children_ms = t.per_child_ms.values().copied().max_by(f64::total_cmp);

    // A settled Progressing store: its status was written for this
    // generation, and the reconcile that status write causes has passed.
    wait_condition(&api, name, "Ready", "False", STORE_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sts_api: Api<StatefulSet> = Api::namespaced(admin.clone(), STORES_NS);
    let sts_name = format!("{name}-redis");
    let sts = sts_api.get(&sts_name).await?;
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = json!({ "status": {
        "observedGeneration": sts.metadata.generation,
        "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "currentReplicas": replicas, "updatedReplicas": replicas,
    }});
    let t1 = Instant::now();
    sts_api
        .patch_status(&sts_name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    t.ready_ms = poll(STORE_TIMEOUT, || seen.ready_at(name))
        .await
        .map(|at| at.duration_since(t1).as_secs_f64() * 1000.0);

    // Children the reconciler owns that this bench does not time would make
    // the figure wrong: fail so `expected_children` is kept current.
    let extra: Vec<String> = seen
        .children_of(name)
        .into_keys()
        .filter(|k| !expected.contains(k))
        .collect();
    if !extra.is_empty() {
        return Err(err(format!(
            "store {name} has children the bench does not expect: {extra:?}; add them to \
             cpbench::measure::expected_children"
        )));
    }
    Ok(t)
}
