//! The generated CRD: drift against crds/, shape, and the CEL rules
//! evaluated locally with kube's `cel` feature.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::*;

#[test]
fn crds_dir_matches_crdgen() {
    let committed = include_str!("../../crds/etagstores.sametag.dev.yaml");
    let generated = crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/etagstores.sametag.dev.yaml is stale: run `cargo run -p sametag-operator -- crdgen > crds/etagstores.sametag.dev.yaml`"
    );
}

#[test]
fn crd_names_scope_subresource_and_columns() {
    let crd = ETagStore::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("etagstores.sametag.dev"));
    assert_eq!(crd.spec.group, "sametag.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.plural, "etagstores");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["ets".to_owned()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<(&str, &str)> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    // The sidecar and sentinel-replica columns only with `-o wide`.
    let wide: Vec<(&str, Option<i32>)> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.priority))
        .filter(|(_, p)| p.unwrap_or(0) > 0)
        .collect();
    assert_eq!(wide, [("Sidecars", Some(1)), ("Replicas", Some(1))]);
    assert_eq!(
        cols,
        [
            ("Ready", r#".status.conditions[?(@.type=="Ready")].status"#),
            ("Mode", ".spec.policy.mode"),
            ("Endpoint", ".status.endpoint"),
            ("Primary", ".status.redis.primary"),
            ("Injected", ".status.injected"),
            (
                "Sidecars",
                r#".status.conditions[?(@.type=="SidecarsInjected")].reason"#
            ),
            ("Replicas", ".status.redis.replicas"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

fn store(spec: Value) -> Value {
    json!({
        "apiVersion": "sametag.dev/v1alpha1",
        "kind": "ETagStore",
        "metadata": {"name": "cache", "namespace": "shop"},
        "spec": spec
    })
}

/// The CRD's OpenAPI schema, CEL rules included.
fn schema() -> Value {
    let crd = ETagStore::crd();
    let version = &crd.spec.versions[0];
    let schema = version.schema.as_ref().unwrap().open_api_v3_schema.as_ref();
    serde_json::to_value(schema.unwrap()).unwrap()
}

/// Validate with the CRD's CEL rules; the error text on failure.
fn check(obj: Value) -> Result<(), String> {
    kube::core::cel::Validator::new()
        .validate(&schema(), &obj, None)
        .map_err(|e| format!("{e:?}"))
}

/// Validate an update from `old` to `obj` (transition rules).
fn check_update(obj: Value, old: Value) -> Result<(), String> {
    kube::core::cel::Validator::new()
        .validate(&schema(), &obj, Some(&old))
        .map_err(|e| format!("{e:?}"))
}

fn rejects(obj: Value, message: &str) {
    match check(obj.clone()) {
        Ok(()) => panic!("accepted, expected {message:?}: {obj}"),
        Err(e) => assert!(e.contains(message), "expected {message:?} in {e}"),
    }
}

const MANAGED: fn() -> Value = || json!({"managed": {"image": "redis:7", "replicas": 1, "maxmemory": "256mb", "evictionPolicy": "allkeys-lru"}});
const EXTERNAL: fn() -> Value = || json!({"external": {"url": "redis://r.shared.svc:6379", "secretRef": {"name": "pw", "key": "password"}}});

#[test]
fn valid_stores_pass() {
    check(store(
        json!({"redis": MANAGED(), "policy": {"mode": "Validate"}}),
    ))
    .unwrap();
    check(store(
        json!({"redis": EXTERNAL(), "policy": {"mode": "Trust", "maxAge": "30s"}}),
    ))
    .unwrap();
    check(store(json!({"redis": MANAGED(), "policy": {"mode": "Trust", "maxAge": "1m30s", "routes": [
        {"path": "/api/**", "maxAge": "10s", "invalidates": ["/api", "/api/**"], "requirePreconditions": true, "compress": ["br", "zstd", "gzip"]},
        {"path": "/raw/*", "mode": "Bypass"}
    ]}})))
    .unwrap();
    // DESIGN's policy example: a Validate default whose top-level maxAge is
    // the default of its Trust routes.
    check(store(json!({"redis": MANAGED(), "policy": {"mode": "Validate", "maxAge": "30s", "maxBodyBytes": "8Mi", "routes": [
        {"path": "/api/items/**", "mode": "Trust", "maxAge": "60s", "invalidates": ["/api/items", "/api/items/**"], "shared": false, "requirePreconditions": true}
    ]}})))
    .unwrap();
    // The default store as serialised by the operator's own types.
    let s = ETagStore::new("cache", ETagStoreSpec::default());
    check(serde_json::to_value(&s).unwrap()).unwrap();
}

#[test]
fn managed_xor_external() {
    let mut both = MANAGED();
    both["external"] = EXTERNAL()["external"].clone();
    rejects(
        store(json!({"redis": both})),
        "set exactly one of managed or external",
    );
    rejects(
        store(json!({"redis": {}})),
        "set exactly one of managed or external",
    );
}

#[test]
fn max_age_only_with_trust() {
    rejects(
        store(json!({"redis": MANAGED(), "policy": {"mode": "Validate", "maxAge": "30s"}})),
        "spec.policy.maxAge is only allowed with mode Trust",
    );
    rejects(
        store(
            json!({"redis": MANAGED(), "policy": {"mode": "Validate", "routes": [{"path": "/a", "maxAge": "5s"}]}}),
        ),
        "routes[].maxAge is only allowed with mode Trust",
    );
    rejects(
        store(
            json!({"redis": MANAGED(), "policy": {"mode": "Trust", "maxAge": "5s", "routes": [{"path": "/a", "mode": "Validate", "maxAge": "5s"}]}}),
        ),
        "routes[].maxAge is only allowed with mode Trust",
    );
    rejects(
        store(json!({"redis": MANAGED(), "policy": {"mode": "Trust", "maxAge": "48h"}})),
        "maxAge must be more than 0 and at most 24h",
    );
}

#[test]
fn route_paths_are_sane() {
    rejects(
        store(json!({"redis": MANAGED(), "policy": {"routes": [{"path": "api/**"}]}})),
        "routes[].path must start with '/'",
    );
    rejects(
        store(json!({"redis": MANAGED(), "policy": {"routes": [{"path": "/a b"}]}})),
        "routes[].path must not contain whitespace",
    );
    rejects(
        store(
            json!({"redis": MANAGED(), "policy": {"routes": [{"path": "/a", "invalidates": ["b"]}]}}),
        ),
        "routes[].invalidates entries must start with '/'",
    );
    rejects(
        store(
            json!({"redis": MANAGED(), "policy": {"routes": [{"path": "/a", "mode": "Bypass", "shared": true}]}}),
        ),
        "not allowed with mode Bypass",
    );
    rejects(
        store(
            json!({"redis": MANAGED(), "policy": {"routes": [{"path": "/a", "mode": "Bypass", "compress": ["gzip"]}]}}),
        ),
        "not allowed with mode Bypass",
    );
}

#[test]
fn external_url_rules() {
    for bad in [
        "http://r:6379",
        "redis+foo://r:1",
        "redis://",
        "rediss+sentinel:///m",
    ] {
        let mut e = EXTERNAL();
        e["external"]["url"] = json!(bad);
        rejects(
            store(json!({"redis": e})),
            "must start with redis://, rediss://, redis+sentinel://",
        );
    }
    for creds in [
        "redis://user:pw@r:6379",
        "rediss+sentinel://:pw@s1:26379,s2:26379/m",
        "redis+cluster://u@n1:7000",
    ] {
        let mut e = EXTERNAL();
        e["external"]["url"] = json!(creds);
        rejects(store(json!({"redis": e})), "must not carry credentials");
    }
    // Every scheme the sidecar speaks, with an ACL user and a CA Secret.
    for good in [
        "redis://r.shared.svc:6379/0",
        "rediss://r.shared.svc:6380",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "rediss+sentinel://s1:26379,s2:26379/mymaster/2",
        "redis+cluster://n1:7000,n2:7001",
        "rediss+cluster://[::1]:7000",
    ] {
        let mut e = EXTERNAL();
        e["external"]["url"] = json!(good);
        e["external"]["username"] = json!("sametag-app");
        e["external"]["caSecretRef"] = json!({"name": "redis-ca"});
        check(store(json!({"redis": e}))).unwrap_or_else(|err| panic!("{good}: {err}"));
    }
    for user in ["a b", "a:b", "a@b"] {
        let mut e = EXTERNAL();
        e["external"]["username"] = json!(user);
        rejects(store(json!({"redis": e})), "username must not contain");
    }
    // The CA key defaults to ca.crt.
    let ext: ExternalRedis = serde_json::from_value(json!({
        "url": "rediss://r:1", "secretRef": {"name": "pw"}, "caSecretRef": {"name": "ca"}
    }))
    .unwrap();
    assert_eq!(ext.ca_secret_ref.unwrap().key, "ca.crt");
    assert_eq!(ext.secret_ref.key, "password");
}

#[test]
fn store_name_must_fit_child_names() {
    let mut s = store(json!({"redis": MANAGED()}));
    s["metadata"]["name"] = json!("a-very-long-store-name-that-will-not-fit-in-services");
    rejects(
        s,
        "metadata.name must be a DNS label of at most 40 characters",
    );
}

#[test]
fn bounds_are_in_the_schema() {
    let yaml = crd_yaml().unwrap();
    // replicas 1..=5 (OpenAPI, not CEL).
    let crd = serde_json::to_value(ETagStore::crd()).unwrap();
    let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["redis"]["properties"]["managed"]["properties"]["replicas"];
    assert_eq!(replicas["minimum"].as_f64(), Some(1.0), "{yaml}");
    assert_eq!(replicas["maximum"].as_f64(), Some(5.0), "{yaml}");
}

#[test]
fn storage_is_immutable() {
    let mut with = MANAGED();
    with["managed"]["storage"] = json!({"size": "1Gi"});
    let mut bigger = MANAGED();
    bigger["managed"]["storage"] = json!({"size": "2Gi"});
    let msg = "storage cannot be changed after creation";
    let e = check_update(
        store(json!({"redis": bigger})),
        store(json!({"redis": with.clone()})),
    )
    .unwrap_err();
    assert!(e.contains(msg), "{e}");
    let e = check_update(
        store(json!({"redis": MANAGED()})),
        store(json!({"redis": with.clone()})),
    )
    .unwrap_err();
    assert!(e.contains(msg), "{e}");
    check_update(
        store(json!({"redis": with.clone()})),
        store(json!({"redis": with})),
    )
    .unwrap();
    // Other managed fields may change.
    let mut more = MANAGED();
    more["managed"]["replicas"] = json!(3);
    check_update(
        store(json!({"redis": more})),
        store(json!({"redis": MANAGED()})),
    )
    .unwrap();
}

#[test]
fn globs_must_be_balanced() {
    let path = |p: &str| store(json!({"redis": MANAGED(), "policy": {"routes": [{"path": p}]}}));
    let inv = |g: &str| {
        store(
            json!({"redis": MANAGED(), "policy": {"routes": [{"path": "/a", "invalidates": ["/ok", g]}]}}),
        )
    };
    for bad in [
        "/a/[b",
        "/a/{b,c",
        "/a/b}",
        "/a/{b}}",
        "/a/[]",
        "/a/[!]",
        "/a/b\\",
        "/{a,{b,{c,d}}}",
    ] {
        rejects(path(bad), "routes[].path is not a valid glob");
        rejects(inv(bad), "a routes[].invalidates entry is not a valid glob");
    }
    for good in [
        "/a/[b]",
        "/a/[]]",
        "/a/[!]x]",
        "/a/[{]",
        "/a/{b,c}/*.json",
        "/{a,{b,c}}/**",
        "/a/{[xy],z}",
        "/a/\\{literal\\}",
        "/a/b]",
        "/a,b",
        "/caf%C3%A9/**",
    ] {
        check(path(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        check(inv(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

/// Every glob of up to four characters after `/` over the glob syntax: the
/// CRD's regex is never stricter than the sidecar's parser (it refuses only
/// what the parser refuses, but for alternates nested three deep), and lets
/// through only what a regex cannot see (reversed ranges), which the
/// operator catches with the parser.
#[test]
fn glob_regex_agrees_with_the_parser() {
    let re = regex::Regex::new(&glob_regex()).unwrap();
    let parses = |glob: &str| {
        let spec = sametag_policy::PolicySpec {
            routes: vec![sametag_policy::RouteSpec {
                path: glob.to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        };
        sametag_policy::Policy::from_spec(&spec).is_ok()
    };
    let alphabet = ['a', '[', ']', '{', '}', ',', '!', '\\', '-'];
    let mut globs = vec![String::from("/")];
    let mut start = 0;
    for _ in 0..4 {
        let end = globs.len();
        for i in start..end {
            for c in alphabet {
                let mut g = globs[i].clone();
                g.push(c);
                globs.push(g);
            }
        }
        start = end;
    }
    for g in &globs {
        match (re.is_match(g), parses(g)) {
            (false, true) => panic!("the CRD refuses {g:?}, which the sidecar accepts"),
            // Only a reversed range (`-` in a class) may get past the regex.
            (true, false) => assert!(
                g.contains('-'),
                "the CRD lets {g:?} through; the sidecar refuses it"
            ),
            _ => {}
        }
    }
    assert!(globs.len() > 7_000, "{}", globs.len());
    // Longer than the enumeration: the case the operator's check exists for.
    assert!(re.is_match("/a/[z-a]") && !parses("/a/[z-a]"));
}

#[test]
fn max_body_bytes_is_a_bounded_byte_count() {
    let with = |v: Value| store(json!({"redis": MANAGED(), "policy": {"maxBodyBytes": v}}));
    for good in [
        json!(1),
        json!(1_073_741_824),
        json!("8Mi"),
        json!("512Ki"),
        json!("1M"),
        json!("1048576"),
    ] {
        check(with(good.clone())).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        json!(0),
        json!(-1),
        json!(1_073_741_825),
        json!("0"),
        json!("8MB"),
        json!("1.5Mi"),
        json!("8mi"),
        json!(""),
    ] {
        rejects(with(bad), "maxBodyBytes must be a byte count from 1 to 1Gi");
    }
}

#[test]
fn failover_mode_needs_three_replicas_and_defaults_from_three() {
    let mut redis = MANAGED();
    redis["managed"]["mode"] = json!("Failover");
    rejects(
        store(json!({"redis": redis.clone()})),
        "mode Failover needs replicas >= 3",
    );
    redis["managed"]["replicas"] = json!(3);
    redis["managed"]["sentinel"] = json!({"downAfterMilliseconds": 3000});
    redis["managed"]["podTemplate"] = json!({
        "priorityClassName": "critical",
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"disk": "ssd"}
    });
    check(store(json!({"redis": redis.clone()}))).unwrap();
    // Three warm standbys without failover stay possible.
    redis["managed"]["mode"] = json!("Single");
    check(store(json!({"redis": redis}))).unwrap();

    let parsed: crate::crd::ManagedRedis = serde_json::from_value(json!({"replicas": 3})).unwrap();
    assert!(parsed.failover(), "3 replicas default to Failover");
    assert_eq!(parsed.sentinel_spec().down_after_milliseconds, 5000);
    let single: crate::crd::ManagedRedis = serde_json::from_value(json!({"replicas": 2})).unwrap();
    assert!(!single.failover());
    // The sentinel timing is bounded by the schema.
    let crd = serde_json::to_value(ETagStore::crd()).unwrap();
    let da = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["redis"]["properties"]["managed"]["properties"]["sentinel"]["properties"]["downAfterMilliseconds"];
    assert_eq!(da["minimum"].as_f64(), Some(1000.0), "{da}");
}
