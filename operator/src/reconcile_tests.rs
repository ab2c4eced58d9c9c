//! Reconciler tests against a small in-memory fake of the Kubernetes API
//! (tower-test mock service): create, drift repair, external mode, status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::children::fixtures;

/// One request the fake API server saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// The fake: objects by path, plus how many Redis pods report ready.
#[derive(Default)]
struct Fake {
    objects: BTreeMap<String, Value>,
    ready_replicas: i32,
    /// Pods injected for `cache` with the current sidecar image.
    injected_pods: usize,
    /// More pods of the namespace, as JSON.
    pods: Vec<Value>,
    /// Services of the namespace, as JSON.
    services: Vec<Value>,
    /// The Redis StatefulSet's status, when a test sets more than the ready count.
    sts_status: Option<Value>,
    seen: Vec<Seen>,
}

/// A pod of `shop` injected for `cache`, running sidecar `image`.
fn injected_pod(name: &str, image: &str) -> Value {
    json!({"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":name,"namespace":"shop","labels":{"sametag.dev/store":"cache","app":"web"},
                    "annotations":{"sametag.dev/inject":"true","sametag.dev/injected":"true"}},
        "spec":{"containers":[{"name":"app","image":"app:1","ports":[{"name":"app-http","containerPort":8080}]}],
                "initContainers":[{"name":"sametag-sidecar","image":image,"restartPolicy":"Always",
                    "env":[{"name":"SAMETAG_UPSTREAM","value":"127.0.0.1:8080"}],
                    "ports":[{"name":"http","containerPort":15080}]}]}})
}

fn list(kind: &str, items: Vec<Value>) -> (u16, Value) {
    (
        200,
        json!({"apiVersion":"v1","kind":kind,"metadata":{},"items":items}),
    )
}

fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        json!({"apiVersion":"v1","kind":"Status","metadata":{},"status":"Failure",
               "message": format!("{path} not found"),"reason":"NotFound","code":404}),
    )
}

impl Fake {
    fn answer(&mut self, s: &Seen) -> (u16, Value) {
        let path = s.path.clone();
        match s.method.as_str() {
            "GET" if path.ends_with("/pods") => {
                let mut items: Vec<Value> = (0..self.injected_pods)
                    .map(|i| injected_pod(&format!("p{i}"), crate::config::DEFAULT_SIDECAR_IMAGE))
                    .collect();
                items.extend(self.pods.iter().cloned());
                list("PodList", items)
            }
            "GET" if path.ends_with("/services") => list("ServiceList", self.services.clone()),
            "GET" if path.ends_with("/etagstores") => list(
                "PartialObjectMetadataList",
                vec![
                    json!({"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"cache","namespace":"shop"}}),
                ],
            ),
            "GET" if path == "/api/v1/namespaces/shop" => (
                200,
                json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop"}}),
            ),
            "GET" => match self.objects.get(&path) {
                Some(v) => (200, v.clone()),
                None => not_found(&path),
            },
            "PATCH" if path.ends_with("/status") => {
                let obj = path.trim_end_matches("/status").to_owned();
                let mut cur = self
                    .objects
                    .get(&obj)
                    .cloned()
                    .unwrap_or_else(|| serde_json::to_value(fixtures::managed()).unwrap());
                cur["status"] = s.body["status"].clone();
                self.objects.insert(obj, cur.clone());
                (200, cur)
            }
            "PATCH" => {
                let mut obj = s.body.clone();
                // The apiserver gives every object a uid.
                obj["metadata"]["uid"] = json!(format!("uid:{path}"));
                if path.contains("/statefulsets/") {
                    obj["status"] = self.sts_status.clone().unwrap_or_else(|| json!({"replicas": self.ready_replicas, "readyReplicas": self.ready_replicas}));
                }
                self.objects.insert(path, obj.clone());
                (200, obj)
            }
            "POST" => (201, s.body.clone()),
            "DELETE" => match self.objects.remove(&path) {
                Some(_) => (
                    200,
                    json!({"apiVersion":"v1","kind":"Status","metadata":{},"status":"Success"}),
                ),
                None => not_found(&path),
            },
            _ => (405, json!({})),
        }
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn spawn_fake(mut handle: Handle, fake: Arc<Mutex<Fake>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                content_type,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, v) = {
                let mut f = fake.lock().unwrap();
                let r = f.answer(&seen);
                f.seen.push(seen);
                r
            };
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap();
            send.send_response(resp);
        }
    })
}

fn context() -> (Arc<Context>, Arc<Mutex<Fake>>, tokio::task::JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let fake = Arc::new(Mutex::new(Fake::default()));
    let server = spawn_fake(handle, fake.clone());
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(Metrics::default()),
        "sametag-system".into(),
        Duration::from_secs(300),
    ));
    (ctx, fake, server)
}

const BASE: &str = "/api/v1/namespaces/shop";

fn applies(fake: &Fake) -> Vec<&Seen> {
    fake.seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.content_type.contains("apply-patch"))
        .collect()
}

fn status_of(fake: &Fake) -> Option<ETagStoreStatus> {
    let v = fake
        .objects
        .get("/apis/sametag.dev/v1alpha1/namespaces/shop/etagstores/cache")?;
    serde_json::from_value(v["status"].clone()).ok()
}

fn cond<'a>(
    s: &'a ETagStoreStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[tokio::test]
async fn create_applies_every_child_with_ssa_and_reports_progress() {
    let (ctx, fake, _server) = context();
    let action = reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));

    let f = fake.lock().unwrap();
    let paths: Vec<&str> = applies(&f).iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/shop/secrets/cache-purge",
            "/api/v1/namespaces/shop/secrets/cache-redis",
            "/api/v1/namespaces/shop/configmaps/cache-redis-config",
            "/apis/apps/v1/namespaces/shop/statefulsets/cache-redis",
            "/api/v1/namespaces/shop/services/cache-redis",
            "/api/v1/namespaces/shop/services/cache-redis-headless",
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/cache-redis",
            "/api/v1/namespaces/shop/configmaps/cache-policy",
        ]
    );
    for s in applies(&f) {
        assert!(
            s.query.contains("fieldManager=sametag-operator"),
            "{}",
            s.query
        );
        assert!(s.query.contains("force=true"), "{}", s.query);
        assert_eq!(s.body["metadata"]["ownerReferences"][0]["controller"], true);
    }
    // The generated password is in the applied Secret.
    let secret = &f.objects[&format!("{BASE}/secrets/cache-redis")];
    assert!(secret["data"]["password"].is_string());

    let st = status_of(&f).expect("status written");
    assert_eq!(cond(&st, "Ready").status, "False");
    assert_eq!(cond(&st, "Progressing").status, "True");
    assert_eq!(cond(&st, "Progressing").reason, "WaitingForRedis");
    assert_eq!(
        st.endpoint.as_deref(),
        Some("redis://cache-redis.shop.svc:6379")
    );
    assert_eq!(st.observed_generation, Some(1));
    // A Created event was published.
    assert!(f.seen.iter().any(|s| s.method == "POST"
        && s.path.ends_with("/events")
        && s.body["reason"] == "Created"));
}

#[tokio::test]
async fn password_is_kept_and_drift_is_repaired() {
    let (ctx, fake, _server) = context();
    reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    let (password, token, sts_path) = {
        let mut f = fake.lock().unwrap();
        let p = f.objects[&format!("{BASE}/secrets/cache-redis")]["data"]["password"].clone();
        let t = f.objects[&format!("{BASE}/secrets/cache-purge")]["data"]["token"].clone();
        assert!(t.is_string(), "a purge token was generated");
        // Someone scales Redis by hand and edits its config.
        let sts = "/apis/apps/v1/namespaces/shop/statefulsets/cache-redis".to_owned();
        f.objects.get_mut(&sts).unwrap()["spec"]["replicas"] = json!(0);
        f.seen.clear();
        (p, t, sts)
    };
    reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    let f = fake.lock().unwrap();
    assert_eq!(
        f.objects[&format!("{BASE}/secrets/cache-redis")]["data"]["password"],
        password
    );
    assert_eq!(
        f.objects[&sts_path]["spec"]["replicas"], 1,
        "drift repaired by the apply"
    );
    assert_eq!(
        f.objects[&format!("{BASE}/secrets/cache-purge")]["data"]["token"],
        token
    );
    assert!(!f.seen.iter().any(|s| s.body["reason"] == "PasswordCreated"));
    assert!(
        !f.seen
            .iter()
            .any(|s| s.body["reason"] == "PurgeTokenCreated")
    );
}

#[tokio::test]
async fn ready_status_and_no_status_write_when_nothing_changed() {
    let (ctx, fake, _server) = context();
    fake.lock().unwrap().ready_replicas = 1;
    fake.lock().unwrap().injected_pods = 3;
    let action = reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let mut store = fixtures::managed();
    {
        let f = fake.lock().unwrap();
        let st = status_of(&f).unwrap();
        assert_eq!(cond(&st, "Ready").status, "True");
        assert_eq!(cond(&st, "Ready").reason, "RedisReady");
        assert_eq!(cond(&st, "Degraded").status, "False");
        assert_eq!(st.injected_pods, 3);
        store.status = Some(st);
    }
    fake.lock().unwrap().seen.clear();
    // Reconciling the store with its own status must not write the status again.
    reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    assert!(
        !f.seen.iter().any(|s| s.path.ends_with("/status")),
        "status rewritten: hot loop"
    );
    assert!(
        !f.seen.iter().any(|s| s.method == "POST"),
        "no events when nothing changed"
    );
}

#[tokio::test]
async fn external_without_secret_is_degraded_and_requeued() {
    let (ctx, fake, _server) = context();
    let action = reconcile(Arc::new(fixtures::external()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let f = fake.lock().unwrap();
    let paths: Vec<&str> = applies(&f).iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/shop/secrets/cache-purge",
            "/api/v1/namespaces/shop/configmaps/cache-policy"
        ],
        "no Redis workload in external mode; a purge token all the same"
    );
    let st = status_of(&f).unwrap();
    assert_eq!(cond(&st, "Degraded").status, "True");
    assert_eq!(cond(&st, "Degraded").reason, "SecretMissing");
    assert!(cond(&st, "Degraded").message.contains("shop/shared-redis"));
    assert_eq!(cond(&st, "Ready").status, "False");
    assert_eq!(
        st.endpoint.as_deref(),
        Some("redis://redis.shared.svc:6379/0")
    );
    assert!(f.seen.iter().any(|s| s.method == "POST"
        && s.body["reason"] == "SecretMissing"
        && s.body["type"] == "Warning"));
}

#[tokio::test]
async fn external_with_secret_is_ready_only_once_reached() {
    let (ctx, fake, _server) = context();
    fake.lock().unwrap().objects.insert(
        format!("{BASE}/secrets/shared-redis"),
        json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"shared-redis","namespace":"shop"},"data":{"pw":"c2VjcmV0"}}),
    );
    // Nothing listens on 127.0.0.1:1: the Secret alone is not Ready.
    let mut store = fixtures::external();
    store.spec.redis.external.as_mut().unwrap().url = "redis://127.0.0.1:1".into();
    reconcile(Arc::new(store.clone()), ctx.clone())
        .await
        .unwrap();
    {
        let f = fake.lock().unwrap();
        let st = status_of(&f).unwrap();
        assert_eq!(cond(&st, "Ready").status, "False");
        assert_eq!(cond(&st, "Degraded").reason, "StoreUnreachable");
        assert_eq!(cond(&st, "StoreReachable").status, "False");
        assert_eq!(cond(&st, "StoreReachable").reason, "StoreUnreachable");
        assert!(!cond(&st, "StoreReachable").message.contains("secret"));
    }
    // A listener that speaks RESP enough for HELLO/AUTH/PING: Ready.
    let fake_redis = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake_redis.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = fake_redis.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
                    // One reply per command in the packet.
                    for _ in 0..text.matches('*').count() {
                        let reply: &[u8] = if text.contains("HELLO") {
                            b"%1\r\n+proto\r\n:3\r\n"
                        } else if text.contains("PING") {
                            b"+PONG\r\n"
                        } else {
                            b"+OK\r\n"
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    store.spec.redis.external.as_mut().unwrap().url = format!("redis://{addr}");
    reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    let st = status_of(&f).unwrap();
    assert_eq!(cond(&st, "Ready").status, "True");
    assert_eq!(cond(&st, "Ready").reason, "ExternalRedis");
    assert_eq!(cond(&st, "StoreReachable").status, "True");
}

#[tokio::test]
async fn switching_to_external_deletes_the_managed_redis() {
    let (ctx, fake, _server) = context();
    reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    let mut store = fixtures::external();
    store.status = status_of(&fake.lock().unwrap());
    reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    assert!(
        !f.objects
            .contains_key("/apis/apps/v1/namespaces/shop/statefulsets/cache-redis")
    );
    assert!(
        !f.objects
            .contains_key(&format!("{BASE}/services/cache-redis"))
    );
    assert!(
        !f.objects
            .contains_key(&format!("{BASE}/secrets/cache-redis"))
    );
    assert!(
        f.objects
            .contains_key(&format!("{BASE}/configmaps/cache-policy"))
    );
}

#[tokio::test]
async fn apply_failure_is_an_error_with_a_degraded_status() {
    let (ctx, fake, server) = context();
    // Kill the fake: every call now fails at the transport.
    server.abort();
    let _ = server.await;
    let err = reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "kube");
    drop(fake);
}

/// A store whose policy passes the CRD's CEL rules (a reversed range is a
/// balanced class) but not the sidecar's glob parser.
fn with_invalid_policy(mut store: ETagStore) -> ETagStore {
    store.metadata.generation = Some(2);
    store.spec.policy.routes = vec![crate::crd::Route {
        path: "/items/[z-a]".into(),
        mode: None,
        max_age: None,
        invalidates: vec![],
        shared: false,
        require_preconditions: false,
        steady: vec![],
        compress: vec![],
    }];
    store
}

const POLICY_CM: &str = "/api/v1/namespaces/shop/configmaps/cache-policy";

#[tokio::test]
async fn invalid_policy_is_degraded_and_the_config_map_is_left_alone() {
    let (ctx, fake, _server) = context();
    fake.lock().unwrap().ready_replicas = 1;
    reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    let (before, status) = {
        let mut f = fake.lock().unwrap();
        let before = f.objects[POLICY_CM].clone();
        f.seen.clear();
        (before, status_of(&f))
    };
    let mut store = with_invalid_policy(fixtures::managed());
    store.status = status;

    let action = reconcile(Arc::new(store.clone()), ctx.clone())
        .await
        .expect("an invalid policy is a status, not a reconcile error");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    {
        let f = fake.lock().unwrap();
        let paths: Vec<&str> = applies(&f).iter().map(|s| s.path.as_str()).collect();
        assert!(
            !paths.contains(&POLICY_CM),
            "policy ConfigMap applied: {paths:?}"
        );
        assert!(
            paths.contains(&"/apis/apps/v1/namespaces/shop/statefulsets/cache-redis"),
            "the other children are still reconciled: {paths:?}"
        );
        assert_eq!(f.objects[POLICY_CM], before, "ConfigMap changed");
        let st = status_of(&f).unwrap();
        let degraded = cond(&st, "Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "InvalidPolicy");
        assert!(
            degraded
                .message
                .starts_with("spec.policy: routes[0].path: ")
                && degraded.message.contains("[z-a]")
                && degraded
                    .message
                    .ends_with("sidecars keep the last valid policy"),
            "{}",
            degraded.message
        );
        assert_eq!(cond(&st, "Ready").status, "False");
        assert_eq!(st.observed_generation, Some(2));
        let events: Vec<&Value> = f
            .seen
            .iter()
            .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
            .map(|s| &s.body)
            .collect();
        assert!(
            events.iter().any(|e| e["reason"] == "InvalidPolicy"
                && e["type"] == "Warning"
                && e["note"].as_str().unwrap_or_default().contains("[z-a]")),
            "{events:?}"
        );
        assert!(
            !events.iter().any(|e| e["reason"] == "Updated"),
            "an unapplied spec is not announced as applied: {events:?}"
        );
    }

    // Fixed: applied, and the condition clears.
    let mut fixed = fixtures::managed();
    fixed.metadata.generation = Some(3);
    fixed.spec.policy.mode = crate::crd::Mode::Trust;
    fixed.status = status_of(&fake.lock().unwrap());
    fake.lock().unwrap().seen.clear();
    reconcile(Arc::new(fixed), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    assert!(applies(&f).iter().any(|s| s.path == POLICY_CM));
    let text = f.objects[POLICY_CM]["data"]["policy.yaml"]
        .as_str()
        .unwrap();
    assert!(text.contains("mode: Trust"), "{text}");
    let st = status_of(&f).unwrap();
    assert_eq!(cond(&st, "Degraded").status, "False");
    assert_eq!(cond(&st, "Ready").status, "True");
}

#[tokio::test]
async fn invalid_policy_on_a_new_store_writes_the_default_policy() {
    let (ctx, fake, _server) = context();
    reconcile(
        Arc::new(with_invalid_policy(fixtures::external())),
        ctx.clone(),
    )
    .await
    .unwrap();
    let f = fake.lock().unwrap();
    let text = f.objects[POLICY_CM]["data"]["policy.yaml"]
        .as_str()
        .unwrap();
    assert_eq!(
        sametag_policy::Policy::from_yaml(text).unwrap(),
        sametag_policy::Policy::default(),
        "{text}"
    );
    assert!(!text.contains("[z-a]"), "{text}");
    let st = status_of(&f).unwrap();
    assert_eq!(cond(&st, "Degraded").reason, "InvalidPolicy");
    assert!(
        cond(&st, "Degraded")
            .message
            .ends_with("sidecars keep the default policy (Validate for every path)"),
        "{}",
        cond(&st, "Degraded").message
    );
}

#[tokio::test]
async fn a_child_name_taken_by_a_foreign_object_is_left_alone_and_reported() {
    let (ctx, fake, _server) = context();
    let foreign = json!({"apiVersion":"v1","kind":"Secret",
        "metadata":{"name":"cache-redis","namespace":"shop"},"data":{"password":"bWluZQ=="}});
    fake.lock()
        .unwrap()
        .objects
        .insert(format!("{BASE}/secrets/cache-redis"), foreign.clone());
    let action = reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let f = fake.lock().unwrap();
    assert!(applies(&f).is_empty(), "nothing applied: {:?}", applies(&f));
    assert!(!f.seen.iter().any(|s| s.method == "DELETE"));
    assert_eq!(f.objects[&format!("{BASE}/secrets/cache-redis")], foreign);
    let st = status_of(&f).unwrap();
    let degraded = cond(&st, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ChildNotOwned")
    );
    assert!(
        degraded.message.contains("Secret shop/cache-redis"),
        "{}",
        degraded.message
    );
    assert!(f.seen.iter().any(|s| s.method == "POST"
        && s.body["reason"] == "ChildNotOwned"
        && s.body["type"] == "Warning"));
}

#[tokio::test]
async fn switching_to_external_leaves_objects_it_does_not_own() {
    let (ctx, fake, _server) = context();
    reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    let sts = "/apis/apps/v1/namespaces/shop/statefulsets/cache-redis";
    {
        // Someone else's StatefulSet now carries the name.
        let mut f = fake.lock().unwrap();
        let o = f.objects.get_mut(sts).unwrap();
        o["metadata"]["ownerReferences"] = json!([]);
    }
    let mut store = fixtures::external();
    store.status = status_of(&fake.lock().unwrap());
    reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    assert!(
        f.objects.contains_key(sts),
        "a foreign StatefulSet was deleted"
    );
    assert!(
        !f.objects
            .contains_key(&format!("{BASE}/services/cache-redis"))
    );
    // Owned ones are deleted with a uid precondition.
    let del = f
        .seen
        .iter()
        .find(|s| s.method == "DELETE" && s.path.ends_with("/services/cache-redis"))
        .unwrap();
    assert!(
        del.body["preconditions"]["uid"].is_string(),
        "{:?}",
        del.body
    );
}

#[tokio::test]
async fn pods_without_the_sidecar_and_outdated_ones_are_reported() {
    let (ctx, fake, _server) = context();
    {
        let mut f = fake.lock().unwrap();
        f.ready_replicas = 1;
        f.injected_pods = 2;
        f.pods
            .push(injected_pod("old", "registry.example/sidecar:0.0.1"));
        f.pods.push(json!({"apiVersion":"v1","kind":"Pod",
            "metadata":{"name":"plain","namespace":"shop","annotations":{"sametag.dev/inject":"true"}},
            "spec":{"containers":[{"name":"app","image":"app:1"}]}}));
        f.pods.push(json!({"apiVersion":"v1","kind":"Pod",
            "metadata":{"name":"other","namespace":"shop"},
            "spec":{"containers":[{"name":"app","image":"app:1"}]}}));
        f.services.push(json!({"apiVersion":"v1","kind":"Service",
            "metadata":{"name":"web","namespace":"shop","uid":"svc-uid"},
            "spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080}]}}));
        f.services.push(json!({"apiVersion":"v1","kind":"Service",
            "metadata":{"name":"named","namespace":"shop"},
            "spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}}));
    }
    reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    let store = {
        let f = fake.lock().unwrap();
        let st = status_of(&f).unwrap();
        assert_eq!(
            (st.opted_in_pods, st.injected_pods, st.outdated_pods),
            (4, 3, 1)
        );
        assert_eq!(st.injected.as_deref(), Some("3/4"));
        let c = cond(&st, "SidecarsInjected");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "PodsWithoutSidecar")
        );
        assert!(c.message.contains(": plain;"), "{}", c.message);
        assert!(
            c.message.contains("old (registry.example/sidecar:0.0.1)"),
            "{}",
            c.message
        );
        // Ready is about the store, not the pods.
        assert_eq!(cond(&st, "Ready").status, "True");
        let events: Vec<&Value> = f
            .seen
            .iter()
            .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
            .map(|s| &s.body)
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e["reason"] == "PodsWithoutSidecar" && e["type"] == "Warning"),
            "{events:?}"
        );
        let bypass: Vec<&&Value> = events
            .iter()
            .filter(|e| e["reason"] == "ServiceBypassesSidecar")
            .collect();
        assert_eq!(
            bypass.len(),
            2,
            "on the Service and on the store: {bypass:?}"
        );
        assert!(
            bypass
                .iter()
                .any(|e| e["regarding"]["kind"] == "Service" && e["regarding"]["name"] == "web")
        );
        assert!(
            !bypass
                .iter()
                .any(|e| e["note"].as_str().unwrap_or_default().contains("named"))
        );
        let mut store = fixtures::managed();
        store.status = Some(st);
        store
    };
    let mut out = String::new();
    let mut reg = prometheus_client::registry::Registry::default();
    ctx.metrics.register(&mut reg);
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    assert!(
        out.contains("sametag_pods_without_sidecar{namespace=\"shop\",store=\"cache\"} 1"),
        "{out}"
    );
    assert!(
        out.contains("sametag_pods_outdated_sidecar{namespace=\"shop\",store=\"cache\"} 1"),
        "{out}"
    );

    // Again with nothing changed: no second round of Events.
    fake.lock().unwrap().seen.clear();
    reconcile(Arc::new(store.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(
        !fake.lock().unwrap().seen.iter().any(|s| s.method == "POST"),
        "events repeated"
    );

    // Fixed: the pods are recreated with the current sidecar.
    {
        let mut f = fake.lock().unwrap();
        f.pods.clear();
        f.injected_pods = 4;
        f.seen.clear();
    }
    reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    let st = status_of(&f).unwrap();
    let c = cond(&st, "SidecarsInjected");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AllInjected")
    );
    assert_eq!(st.injected.as_deref(), Some("4/4"));
    assert!(f.seen.iter().any(|s| s.method == "POST"
        && s.body["reason"] == "AllInjected"
        && s.body["type"] == "Normal"));
}

/// A Redis pod of revision `rev` stuck in ImagePullBackOff, controlled by
/// the fake's StatefulSet (which gets uid `uid:<its path>`).
fn stuck_redis_pod(rev: &str) -> Value {
    json!({"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"cache-redis-0","namespace":"shop","uid":"pod-0",
            "labels":{"sametag.dev/etagstore":"cache","controller-revision-hash":rev},
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"StatefulSet","name":"cache-redis",
                "uid":"uid:/apis/apps/v1/namespaces/shop/statefulsets/cache-redis","controller":true}]},
        "spec":{"containers":[{"name":"redis","image":"registry.invalid/redis:nope"}]},
        "status":{"conditions":[{"type":"Ready","status":"False"}],
            "containerStatuses":[{"name":"redis","image":"registry.invalid/redis:nope","imageID":"",
                "ready":false,"restartCount":0,
                "state":{"waiting":{"reason":"ImagePullBackOff","message":"Back-off pulling image"}}}]}})
}

#[tokio::test]
async fn a_stuck_pod_is_reported_and_replaced_once_the_spec_moved_on() {
    let (ctx, fake, _server) = context();
    {
        let mut f = fake.lock().unwrap();
        // The StatefulSet still at the pod's revision: the bad image is the spec.
        f.sts_status = Some(json!({"replicas":1,"readyReplicas":0,
            "currentRevision":"r1","updateRevision":"r1"}));
        f.pods.push(stuck_redis_pod("r1"));
        f.objects
            .insert(format!("{BASE}/pods/cache-redis-0"), stuck_redis_pod("r1"));
    }
    let action = reconcile(Arc::new(fixtures::managed()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let store = {
        let f = fake.lock().unwrap();
        assert!(
            !f.seen.iter().any(|s| s.method == "DELETE"),
            "a pod of the current revision is never deleted"
        );
        // The Redis pods are listed by their selector.
        assert!(f.seen.iter().any(|s| s.path == format!("{BASE}/pods")
            && s.query.contains("app.kubernetes.io%2Fname%3Dsametag-redis")));
        let st = status_of(&f).unwrap();
        let d = cond(&st, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ImagePullBackOff")
        );
        assert_eq!(
            d.message,
            r#"pod cache-redis-0: image "registry.invalid/redis:nope" cannot be pulled (ImagePullBackOff)"#
        );
        assert_eq!(cond(&st, "Ready").reason, "ImagePullBackOff");
        // The Warning names the pod as `related`: each pod's problem is
        // its own Event series, not a count on another pod's note.
        assert!(f.seen.iter().any(|s| s.method == "POST"
            && s.body["reason"] == "ImagePullBackOff"
            && s.body["type"] == "Warning"
            && s.body["related"]["name"] == "cache-redis-0"
            && s.body["related"]["uid"] == "pod-0"));
        let mut store = fixtures::managed();
        store.status = Some(st);
        store
    };

    // The user fixed the image: the controller has a new update revision,
    // but waits forever for the stuck pod of the old one.
    {
        let mut f = fake.lock().unwrap();
        f.sts_status = Some(json!({"replicas":1,"readyReplicas":0,
            "currentRevision":"r1","updateRevision":"r2"}));
        f.seen.clear();
    }
    let action = reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    let f = fake.lock().unwrap();
    let deletes: Vec<&Seen> = f.seen.iter().filter(|s| s.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].path, format!("{BASE}/pods/cache-redis-0"));
    assert_eq!(deletes[0].body["preconditions"]["uid"], "pod-0");
    let st = status_of(&f).unwrap();
    let p = cond(&st, "Progressing");
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("True", "ReplacedStuckPod")
    );
    assert!(
        p.message
            .contains("deleted pod cache-redis-0 (ImagePullBackOff, revision r1)")
            && p.message.contains("at revision r2"),
        "{}",
        p.message
    );
    assert_eq!(cond(&st, "Degraded").status, "False");
    assert!(f.seen.iter().any(|s| {
        s.method == "POST"
            && s.body["reason"] == "ReplacedStuckPod"
            && s.body["type"] == "Normal"
            && s.body["note"]
                .as_str()
                .unwrap_or_default()
                .contains("cache-redis-0")
            // Its own Event per pod: the replaced pod is `related`, which
            // is part of the recorder's series key (the note is not).
            && s.body["related"]["kind"] == "Pod"
            && s.body["related"]["name"] == "cache-redis-0"
            && s.body["related"]["uid"] == "pod-0"
    }));
}

#[test]
fn backoff_is_exponential_and_bounded() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(3), Duration::from_secs(20));
    assert_eq!(backoff(50), Duration::from_secs(300));
}

/// A context whose sentinels answer what `answers` holds, each seeing `up`
/// replicas linked and up.
fn failover_context(
    answers: Arc<Mutex<Vec<Option<String>>>>,
    up: Arc<Mutex<u32>>,
) -> (Arc<Context>, Arc<Mutex<Fake>>, tokio::task::JoinHandle<()>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let fake = Arc::new(Mutex::new(Fake::default()));
    let server = spawn_fake(handle, fake.clone());
    let probe: PrimaryProbe = Arc::new(move |_addrs, master| {
        assert_eq!(master, "cache");
        let up = *up.lock().unwrap();
        let a = answers
            .lock()
            .unwrap()
            .iter()
            .map(|host| {
                host.clone().map(|primary| crate::primary::SentinelAnswer {
                    primary,
                    replicas_up: Some(up),
                })
            })
            .collect();
        async move { a }.boxed()
    });
    let ctx = Arc::new(
        Context::new(
            client,
            Arc::new(Metrics::default()),
            "sametag-system".into(),
            Duration::from_secs(300),
        )
        .with_primary_probe(probe),
    );
    (ctx, fake, server)
}

fn failover_store() -> ETagStore {
    let mut s = fixtures::managed();
    s.spec.redis.managed.as_mut().unwrap().replicas = 3;
    s
}

fn host(pod: &str) -> Option<String> {
    Some(format!("{pod}.cache-redis-headless.shop.svc"))
}

#[tokio::test]
async fn failover_store_runs_sentinels_and_reports_a_failover() {
    let answers = Arc::new(Mutex::new(vec![host("cache-redis-0"); 3]));
    let up = Arc::new(Mutex::new(2));
    let (ctx, fake, _server) = failover_context(answers.clone(), up.clone());
    fake.lock().unwrap().ready_replicas = 3;
    let action = reconcile(Arc::new(failover_store()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(30)),
        "failover stores ask their sentinels often"
    );
    let mut store = failover_store();
    {
        let f = fake.lock().unwrap();
        let paths: Vec<&str> = applies(&f).iter().map(|s| s.path.as_str()).collect();
        for want in [
            "/apis/apps/v1/namespaces/shop/statefulsets/cache-sentinel",
            "/api/v1/namespaces/shop/services/cache-sentinel",
            "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/cache-redis",
            "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/cache-sentinel",
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/cache-sentinel",
        ] {
            assert!(paths.contains(&want), "{want} not applied: {paths:?}");
        }
        let svc = &f.objects[&format!("{BASE}/services/cache-redis")];
        assert_eq!(
            svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
            "cache-redis-0"
        );
        let st = status_of(&f).unwrap();
        assert_eq!(cond(&st, "Ready").status, "True");
        assert!(cond(&st, "Ready").message.contains("primary cache-redis-0"));
        assert_eq!(cond(&st, "PrimaryAvailable").reason, "PrimaryElected");
        let r = st.redis.clone().unwrap();
        assert_eq!(r.primary.as_deref(), Some("cache-redis-0"));
        assert_eq!(r.mode, Some(RedisMode::Failover));
        assert_eq!(r.sentinels.as_deref(), Some("3/3"));
        assert_eq!(r.replicas.as_deref(), Some("2/2"));
        assert!(
            st.endpoint
                .as_deref()
                .unwrap()
                .starts_with("redis+sentinel://cache-sentinel-0.")
        );
        store.status = Some(st);
    }

    // A Redis pod back with a new IP: the sentinels have not linked it
    // yet. The status says so, and the operator looks again soon.
    *up.lock().unwrap() = 1;
    let action = reconcile(Arc::new(store.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    {
        let f = fake.lock().unwrap();
        let st = status_of(&f).unwrap();
        assert_eq!(st.redis.as_ref().unwrap().replicas.as_deref(), Some("1/2"));
        assert_eq!(cond(&st, "Ready").status, "True", "serving is unaffected");
    }
    *up.lock().unwrap() = 2;

    // The sentinels promote pod 1 (one still names the old primary).
    *answers.lock().unwrap() = vec![
        host("cache-redis-1"),
        host("cache-redis-1"),
        host("cache-redis-0"),
    ];
    fake.lock().unwrap().seen.clear();
    reconcile(Arc::new(store.clone()), ctx.clone())
        .await
        .unwrap();
    {
        let f = fake.lock().unwrap();
        let st = status_of(&f).unwrap();
        let c = cond(&st, "PrimaryAvailable");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "FailedOver")
        );
        assert_eq!(
            st.redis.as_ref().unwrap().primary.as_deref(),
            Some("cache-redis-1")
        );
        assert_eq!(st.redis.as_ref().unwrap().sentinels.as_deref(), Some("2/3"));
        let ev = f
            .seen
            .iter()
            .find(|s| s.method == "POST" && s.body["reason"] == "FailedOver")
            .expect("a FailedOver Event");
        assert_eq!(ev.body["type"], "Warning");
        assert!(ev.body["note"].as_str().unwrap().contains("cache-redis-1"));
        let svc = &f.objects[&format!("{BASE}/services/cache-redis")];
        assert_eq!(
            svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"], "cache-redis-1",
            "the client Service follows the primary"
        );
        store.status = Some(st);
    }

    // No sentinel answers: the last known primary is kept, not Ready.
    answers.lock().unwrap().clear();
    reconcile(Arc::new(store.clone()), ctx.clone())
        .await
        .unwrap();
    {
        let f = fake.lock().unwrap();
        let st = status_of(&f).unwrap();
        assert_eq!(cond(&st, "PrimaryAvailable").status, "False");
        assert_eq!(cond(&st, "Ready").status, "False");
        assert_eq!(
            st.redis.as_ref().unwrap().primary.as_deref(),
            Some("cache-redis-1")
        );
        let svc = &f.objects[&format!("{BASE}/services/cache-redis")];
        assert_eq!(
            svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
            "cache-redis-1"
        );
        store.status = Some(st);
    }

    // Back to Single: the sentinels and budgets go.
    store.spec.redis.managed.as_mut().unwrap().mode = Some(RedisMode::Single);
    reconcile(Arc::new(store), ctx.clone()).await.unwrap();
    let f = fake.lock().unwrap();
    for gone in [
        "/apis/apps/v1/namespaces/shop/statefulsets/cache-sentinel",
        "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/cache-redis",
        "/api/v1/namespaces/shop/services/cache-sentinel",
    ] {
        assert!(!f.objects.contains_key(gone), "{gone} left behind");
    }
    let st = status_of(&f).unwrap();
    assert!(!st.conditions.iter().any(|c| c.type_ == "PrimaryAvailable"));
    assert_eq!(st.redis.unwrap().mode, Some(RedisMode::Single));
}
