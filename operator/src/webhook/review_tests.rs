//! AdmissionReview in → patched pod out, through the wire-format handler.

use serde_json::{Value, json};

use super::*;
use crate::children::fixtures;

struct View {
    stores: Vec<ETagStore>,
    enabled: Vec<&'static str>,
}

impl ClusterView for View {
    fn stores(&self, namespace: &str) -> Vec<ETagStore> {
        self.stores
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
    fn namespace_enabled(&self, namespace: &str) -> bool {
        self.enabled.contains(&namespace)
    }
}

fn one_store() -> View {
    View {
        stores: vec![fixtures::managed()],
        enabled: vec![],
    }
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f-",
            "namespace": "shop",
            "labels": {"app": "web"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "rs-uid", "controller": true}]
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}
            }]
        }
    })
}

fn admission(pod: &Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

/// Run the handler; return the outcome, the response JSON and the patched pod.
fn run(view: &View, pod: &Value) -> (Outcome, Value, Value) {
    let r = review(&admission(pod, "CREATE"), view, &InjectConfig::default());
    let resp = serde_json::to_value(&r.review).unwrap()["response"].clone();
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(
        resp["allowed"], true,
        "the webhook never denies a pod: {resp}"
    );
    let mut patched = pod.clone();
    // kube serialises the patch bytes as a JSON array of numbers (Go's
    // decoder accepts that for []byte as well as base64).
    if let Some(arr) = resp["patch"].as_array() {
        let bytes: Vec<u8> = arr
            .iter()
            .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
            .collect();
        let p: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut patched, &p).unwrap();
    }
    (r.outcome, resp, patched)
}

fn sidecar(p: &Value) -> &Value {
    p["spec"]["initContainers"]
        .as_array()
        .and_then(|ics| ics.iter().find(|c| c["name"] == "sametag-sidecar"))
        .expect("sidecar injected")
}

fn env(c: &Value, name: &str) -> Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn opt_in_by_annotation_injects_a_native_sidecar_and_moves_the_named_port() {
    let (outcome, resp, p) = run(&one_store(), &pod(json!({"sametag.dev/inject": "true"})));
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(resp["patchType"], "JSONPatch");
    let s = sidecar(&p);
    assert_eq!(s["restartPolicy"], "Always");
    assert_eq!(s["image"], crate::config::DEFAULT_SIDECAR_IMAGE);
    // The sidecar carries the app port's name on a new port; the app's is renamed.
    assert_eq!(
        s["ports"][0],
        json!({"name": "http", "containerPort": 15080, "protocol": "TCP"})
    );
    let app = &p["spec"]["containers"][0];
    assert_eq!(app["ports"][0]["name"], "app-http");
    assert_eq!(app["ports"][0]["containerPort"], 8080);
    assert_eq!(
        app["readinessProbe"]["httpGet"]["port"], "app-http",
        "app probe follows the rename"
    );
    assert_eq!(env(s, "SAMETAG_LISTEN")["value"], "0.0.0.0:15080");
    assert_eq!(env(s, "SAMETAG_UPSTREAM")["value"], "127.0.0.1:8080");
    assert_eq!(
        env(s, "SAMETAG_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"],
        json!({"name": "cache-redis", "key": "sidecar-password", "optional": true}),
        "optional: a pod outlives its store"
    );
    // No credentials in the URL: the ACL user and password travel apart.
    assert_eq!(
        env(s, "SAMETAG_REDIS_URL")["value"],
        "redis://cache-redis.shop.svc:6379"
    );
    assert_eq!(env(s, "SAMETAG_REDIS_USERNAME")["value"], "sametag");
    assert_eq!(
        env(s, "SAMETAG_POLICY")["value"],
        "/etc/sametag/policy.yaml"
    );
    assert_eq!(env(s, "SAMETAG_STORE_PREFIX")["value"], "shop/cache");
    assert_eq!(env(s, "SAMETAG_ADMIN")["value"], "0.0.0.0:9901");
    assert_eq!(s["startupProbe"]["httpGet"]["port"], 9901);
    assert_eq!(s["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(s["livenessProbe"]["httpGet"]["path"], "/healthz");
    let sc = &s["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(s["resources"]["requests"]["memory"].is_string());
    let vol = p["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sametag-policy")
        .unwrap();
    assert_eq!(vol["configMap"]["name"], "cache-policy");
    // The purge token: the store's Secret, optional (a pod admitted before
    // the store's first reconcile still starts), mounted where the env says.
    let purge = p["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sametag-purge")
        .unwrap();
    assert_eq!(
        purge["secret"],
        json!({"secretName": "cache-purge", "optional": true})
    );
    let mount = s["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "sametag-purge")
        .unwrap();
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        env(s, "SAMETAG_PURGE_TOKEN_FILE")["value"],
        format!("{}/token", mount["mountPath"].as_str().unwrap())
    );
    assert_eq!(p["metadata"]["labels"]["sametag.dev/store"], "cache");
    assert_eq!(p["metadata"]["labels"]["app"], "web");
    assert_eq!(p["metadata"]["annotations"]["sametag.dev/injected"], "true");
}

#[test]
fn no_opt_in_is_untouched() {
    let (outcome, resp, p) = run(&one_store(), &pod(json!({})));
    assert_eq!(outcome, Outcome::Skipped);
    assert!(resp["patch"].is_null());
    assert_eq!(p, pod(json!({})));
}

#[test]
fn opt_out_wins_over_the_namespace_label() {
    let view = View {
        stores: vec![fixtures::managed()],
        enabled: vec!["shop"],
    };
    let (outcome, _, p) = run(&view, &pod(json!({"sametag.dev/inject": "false"})));
    assert_eq!(outcome, Outcome::Skipped);
    assert_eq!(p, pod(json!({"sametag.dev/inject": "false"})));
}

#[test]
fn namespace_label_opts_pods_in() {
    let view = View {
        stores: vec![fixtures::managed()],
        enabled: vec!["shop"],
    };
    let (outcome, _, p) = run(&view, &pod(json!({})));
    assert_eq!(outcome, Outcome::Injected);
    sidecar(&p);
}

#[test]
fn numeric_port_annotation_picks_that_port() {
    let mut pd = pod(json!({"sametag.dev/inject": "true", "sametag.dev/port": "9000"}));
    pd["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 8080},
        {"containerPort": 9000}
    ]);
    let (_, _, p) = run(&one_store(), &pd);
    let s = sidecar(&p);
    assert_eq!(env(s, "SAMETAG_UPSTREAM")["value"], "127.0.0.1:9000");
    // The port had no name: the sidecar's port gets the default name and the
    // app's named port is left alone.
    assert_eq!(s["ports"][0]["name"], "sametag-http");
    assert_eq!(p["spec"]["containers"][0]["ports"][0]["name"], "http");
}

#[test]
fn named_port_annotation_picks_that_container() {
    let mut pd = pod(json!({"sametag.dev/inject": "true", "sametag.dev/port": "web"}));
    pd["spec"]["containers"] = json!([
        {"name": "metrics", "image": "exporter", "ports": [{"name": "metrics", "containerPort": 9100}]},
        {"name": "app", "image": "app", "ports": [{"name": "web", "containerPort": 3000}]}
    ]);
    let (_, _, p) = run(&one_store(), &pd);
    let s = sidecar(&p);
    assert_eq!(env(s, "SAMETAG_UPSTREAM")["value"], "127.0.0.1:3000");
    assert_eq!(s["ports"][0]["name"], "web");
    assert_eq!(p["spec"]["containers"][1]["ports"][0]["name"], "app-web");
    assert_eq!(p["spec"]["containers"][0]["ports"][0]["name"], "metrics");
}

#[test]
fn already_injected_pod_gets_an_empty_patch() {
    let (_, _, once) = run(&one_store(), &pod(json!({"sametag.dev/inject": "true"})));
    let (outcome, resp, twice) = run(&one_store(), &once);
    assert_eq!(outcome, Outcome::AlreadyInjected);
    assert!(resp["patch"].is_null());
    assert_eq!(once, twice);
}

#[test]
fn unknown_store_is_allowed_with_a_warning() {
    let (outcome, resp, p) = run(
        &one_store(),
        &pod(json!({"sametag.dev/inject": "true", "sametag.dev/store": "nope"})),
    );
    assert_eq!(outcome, Outcome::Warning);
    assert!(resp["patch"].is_null());
    let w = resp["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("\"nope\"") && w.contains("does not exist"),
        "{w}"
    );
    assert_eq!(p["spec"]["initContainers"], Value::Null);
}

#[test]
fn two_stores_need_the_annotation() {
    let mut second = fixtures::external();
    second.metadata.name = Some("shared".into());
    let view = View {
        stores: vec![fixtures::managed(), second],
        enabled: vec![],
    };
    let r = review(
        &admission(&pod(json!({"sametag.dev/inject": "true"})), "CREATE"),
        &view,
        &InjectConfig::default(),
    );
    assert_eq!(r.outcome, Outcome::Warning);
    let notice = r.notice.expect("an Event is published");
    assert_eq!(notice.reason, "ETagStoreAmbiguous");
    assert_eq!(
        notice.regarding.unwrap().kind.as_deref(),
        Some("ReplicaSet")
    );
    let resp = serde_json::to_value(&r.review).unwrap()["response"].clone();
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("2 ETagStores")
    );

    // With the annotation, the external store is used.
    let (outcome, _, p) = run(
        &view,
        &pod(json!({"sametag.dev/inject": "true", "sametag.dev/store": "shared"})),
    );
    assert_eq!(outcome, Outcome::Injected);
    let s = sidecar(&p);
    assert_eq!(
        env(s, "SAMETAG_REDIS_URL")["value"],
        "redis://redis.shared.svc:6379/0"
    );
    assert_eq!(
        env(s, "SAMETAG_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["name"],
        "shared-redis"
    );
    assert_eq!(p["metadata"]["labels"]["sametag.dev/store"], "shared");
}

#[test]
fn no_store_in_namespace_warns() {
    let view = View {
        stores: vec![],
        enabled: vec![],
    };
    let (outcome, resp, _) = run(&view, &pod(json!({"sametag.dev/inject": "true"})));
    assert_eq!(outcome, Outcome::Warning);
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no ETagStore")
    );
}

#[test]
fn invalid_tuning_is_injected_with_defaults_a_warning_and_an_event() {
    let annotations = json!({"sametag.dev/inject": "true",
                             "config.sametag.dev/log-level": "debug",
                             "config.sametag.dev/upstream-timeout": "soon"});
    let (outcome, resp, p) = run(&one_store(), &pod(annotations.clone()));
    assert_eq!(outcome, Outcome::Injected);
    let s = sidecar(&p);
    assert_eq!(env(s, "RUST_LOG")["value"], "debug");
    assert_eq!(env(s, "SAMETAG_UPSTREAM_TIMEOUT"), Value::Null);
    let warnings = resp["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{resp}");
    assert_eq!(
        warnings[0],
        "sametag: annotation config.sametag.dev/upstream-timeout=\"soon\" ignored (the default applies): \
         invalid duration `soon` (expected e.g. 500ms, 30s, 5m, 1h)"
    );
    let r = review(
        &admission(&pod(annotations.clone()), "CREATE"),
        &one_store(),
        &InjectConfig::default(),
    );
    let notice = r.notice.expect("an Event");
    assert_eq!(notice.reason, "InvalidAnnotation");
    assert!(notice.message.contains("upstream-timeout"));
    assert_eq!(
        notice.regarding.unwrap().kind.as_deref(),
        Some("ReplicaSet")
    );

    // A dry run warns the same but publishes nothing.
    let mut dry: Value = serde_json::from_slice(&admission(&pod(annotations), "CREATE")).unwrap();
    dry["request"]["dryRun"] = json!(true);
    let r = review(
        &serde_json::to_vec(&dry).unwrap(),
        &one_store(),
        &InjectConfig::default(),
    );
    assert_eq!(r.outcome, Outcome::Injected);
    assert!(r.notice.is_none());
    let resp = serde_json::to_value(&r.review).unwrap()["response"].clone();
    assert_eq!(resp["warnings"].as_array().map(Vec::len), Some(1));

    // Valid tuning: no warning at all.
    let (_, resp, _) = run(
        &one_store(),
        &pod(json!({"sametag.dev/inject": "true", "config.sametag.dev/drain-timeout": "5s"})),
    );
    assert_eq!(resp["warnings"], Value::Null);
}

#[test]
fn updates_and_garbage_are_not_injected() {
    let r = review(
        &admission(&pod(json!({"sametag.dev/inject": "true"})), "UPDATE"),
        &one_store(),
        &InjectConfig::default(),
    );
    assert_eq!(r.outcome, Outcome::Skipped);
    let r = review(b"{not json", &one_store(), &InjectConfig::default());
    assert_eq!(r.outcome, Outcome::Invalid);
    let r = review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        &one_store(),
        &InjectConfig::default(),
    );
    assert_eq!(r.outcome, Outcome::Invalid);
}

/// The real HTTPS server: an AdmissionReview over TLS, then a certificate
/// swap that the next handshake sees without a restart.
#[tokio::test]
async fn https_server_answers_and_reloads_its_certificate() {
    use http_body_util::BodyExt as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::time::Duration;

    let sans = tls::sans("svc", "ns");
    let now = jiff::Timestamp::now();
    let first = tls::generate(&sans, Duration::from_secs(86_400), now).unwrap();
    let resolver = Arc::new(tls::Resolver::new());
    resolver.set(first.certified_key().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Webhook {
        view: Arc::new(one_store()),
        config: InjectConfig::default(),
        metrics: Arc::new(Metrics::default()),
        recorder: None,
    });
    let server = tokio::spawn(serve(
        listener,
        tls::server_config(resolver.clone()),
        state.clone(),
    ));

    // One TLS connection trusting `ca_pem`; returns the leaf served and the response body.
    async fn call(addr: SocketAddr, ca_pem: &str, body: Vec<u8>) -> (Vec<u8>, Value) {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::post("/mutate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (leaf, serde_json::from_slice(&bytes).unwrap())
    }

    let body = admission(&pod(json!({"sametag.dev/inject": "true"})), "CREATE");
    let (leaf1, review1) = tokio::time::timeout(
        Duration::from_secs(10),
        call(addr, &first.ca_pem, body.clone()),
    )
    .await
    .unwrap();
    assert_eq!(review1["response"]["allowed"], true);
    assert_eq!(review1["response"]["patchType"], "JSONPatch");

    // Rotate: a new serving certificate from the same CA, swapped in live.
    let second = tls::issue(
        first.ca_pem.clone(),
        first.ca_key_pem.clone(),
        first.ca_not_after,
        &sans,
        Duration::from_secs(86_400),
        now,
    )
    .unwrap();
    resolver.set(second.certified_key().unwrap());
    let (leaf2, _) = tokio::time::timeout(Duration::from_secs(10), call(addr, &first.ca_pem, body))
        .await
        .unwrap();
    assert_ne!(
        leaf1, leaf2,
        "the new certificate is served without a restart"
    );
    assert_eq!(
        leaf2,
        CertificateDer::from_pem_slice(second.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    );
    server.abort();
}

#[test]
fn failover_store_injects_a_sentinel_url_and_the_sidecar_user() {
    let mut store = fixtures::managed();
    store.spec.redis.managed.as_mut().unwrap().replicas = 3;
    let view = View {
        stores: vec![store],
        enabled: vec![],
    };
    let (outcome, _, p) = run(&view, &pod(json!({"sametag.dev/inject": "true"})));
    assert_eq!(outcome, Outcome::Injected);
    let s = sidecar(&p);
    assert_eq!(
        env(s, "SAMETAG_REDIS_URL")["value"],
        "redis+sentinel://cache-sentinel-0.cache-sentinel.shop.svc:26379,cache-sentinel-1.cache-sentinel.shop.svc:26379,cache-sentinel-2.cache-sentinel.shop.svc:26379/cache"
    );
    // The primary's credentials: the store's ACL user, never in the URL.
    assert_eq!(env(s, "SAMETAG_REDIS_USERNAME")["value"], "sametag");
    let password = &env(s, "SAMETAG_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"];
    assert_eq!(password["name"], "cache-redis");
    assert_eq!(password["key"], "sidecar-password");
}
