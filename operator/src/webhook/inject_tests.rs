//! The pure injection: port choice, renames, collisions, resources.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::children::fixtures;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn app_pod(ports: serde_json::Value) -> Pod {
    pod(
        json!({"metadata": {"name": "p", "annotations": {"sametag.dev/inject": "true"}},
               "spec": {"containers": [{"name": "app", "image": "a", "ports": ports}]}}),
    )
}

fn side(p: &Pod) -> Container {
    p.spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
        .clone()
}

#[test]
fn sidecar_port_skips_ports_the_pod_uses() {
    let p = app_pod(
        json!([{"name": "http", "containerPort": 15080}, {"name": "admin", "containerPort": 9901}]),
    );
    let out = inject(&p, "shop", &fixtures::managed(), &InjectConfig::default()).unwrap();
    let s = side(&out);
    let ports = s.ports.unwrap();
    assert_eq!(ports[0].container_port, 15081);
    assert_eq!(ports[1].container_port, 9902);
    // SAMETAG_UPSTREAM is the app port, which here is 15080.
    let up = s
        .env
        .unwrap()
        .into_iter()
        .find(|e| e.name == "SAMETAG_UPSTREAM")
        .unwrap();
    assert_eq!(up.value.as_deref(), Some("127.0.0.1:15080"));
}

#[test]
fn renamed_port_names_are_valid_and_unique() {
    let taken = BTreeSet::from(["app-http".to_owned()]);
    assert_eq!(renamed("http", &BTreeSet::new()), "app-http");
    assert_eq!(renamed("http", &taken), "app-http-2");
    let long = renamed("very-long-port-name", &BTreeSet::new());
    assert!(long.len() <= 15, "{long}");
    assert!(!long.ends_with('-'), "{long}");
}

#[test]
fn no_port_and_no_annotation_is_an_error_not_a_broken_pod() {
    let p = pod(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "a"}]}}),
    );
    assert_eq!(
        inject(&p, "shop", &fixtures::managed(), &InjectConfig::default()).unwrap_err(),
        InjectError::NoAppPort
    );
    let mut p2 = p.clone();
    p2.metadata.annotations = Some(BTreeMap::from([(
        PORT_ANNOTATION.to_owned(),
        "web".to_owned(),
    )]));
    assert_eq!(
        inject(&p2, "shop", &fixtures::managed(), &InjectConfig::default()).unwrap_err(),
        InjectError::PortNotFound("web".into())
    );
}

#[test]
fn undeclared_numeric_port_is_used_as_is() {
    let mut p = pod(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "a"}]}}),
    );
    p.metadata.annotations = Some(BTreeMap::from([(
        PORT_ANNOTATION.to_owned(),
        "3000".to_owned(),
    )]));
    let out = inject(&p, "shop", &fixtures::managed(), &InjectConfig::default()).unwrap();
    let up = side(&out)
        .env
        .unwrap()
        .into_iter()
        .find(|e| e.name == "SAMETAG_UPSTREAM")
        .unwrap();
    assert_eq!(up.value.as_deref(), Some("127.0.0.1:3000"));
}

#[test]
fn store_sidecar_spec_overrides_image_resources_and_pull_policy() {
    let mut store = fixtures::managed();
    store.spec.sidecar.image = Some("registry.local/sametag:dev".into());
    store.spec.sidecar.image_pull_policy = Some(crate::crd::PullPolicy::Never);
    store.spec.sidecar.resources = Some(ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("64Mi".into()),
        )])),
        ..ResourceRequirements::default()
    });
    let out = inject(
        &app_pod(json!([{"containerPort": 80}])),
        "shop",
        &store,
        &InjectConfig::default(),
    )
    .unwrap();
    let s = side(&out);
    assert_eq!(s.image.as_deref(), Some("registry.local/sametag:dev"));
    assert_eq!(s.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(s.resources.unwrap().limits.unwrap()["memory"].0, "64Mi");
}

#[test]
fn existing_init_containers_are_kept_and_sidecar_goes_last() {
    let p = pod(json!({"metadata": {"name": "p"},
        "spec": {"initContainers": [{"name": "migrate", "image": "m"}],
                 "containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 80}]}]}}));
    let out = inject(&p, "shop", &fixtures::managed(), &InjectConfig::default()).unwrap();
    let ics = out.spec.unwrap().init_containers.unwrap();
    assert_eq!(
        ics.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["migrate", SIDECAR_NAME]
    );
}

#[test]
fn opt_in_rules() {
    let mk = |ann: Option<&str>, label: Option<&str>| {
        let mut p = Pod::default();
        if let Some(a) = ann {
            p.metadata.annotations = Some(BTreeMap::from([(INJECT.to_owned(), a.to_owned())]));
        }
        if let Some(l) = label {
            p.metadata.labels = Some(BTreeMap::from([(INJECT.to_owned(), l.to_owned())]));
        }
        p
    };
    assert!(wants_injection(&mk(Some("true"), None), false));
    assert!(wants_injection(&mk(None, Some("true")), false));
    assert!(!wants_injection(&mk(None, None), false));
    assert!(wants_injection(&mk(None, None), true));
    assert!(!wants_injection(&mk(Some("false"), None), true));
    assert!(!wants_injection(&mk(None, Some("false")), true));
}

#[test]
fn every_store_reference_is_optional_so_pods_outlive_their_store() {
    for store in [fixtures::managed(), fixtures::external()] {
        let p = app_pod(json!([{"name": "http", "containerPort": 8080}]));
        let out = inject(&p, "shop", &store, &InjectConfig::default()).unwrap();
        let s = side(&out);
        let env = s.env.clone().unwrap();
        let password = env
            .iter()
            .find(|e| e.name == "SAMETAG_REDIS_PASSWORD")
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
            .unwrap();
        assert_eq!(password.optional, Some(true));
        assert!(
            env.iter()
                .any(|e| e.name == "SAMETAG_POLICY_OPTIONAL" && e.value.as_deref() == Some("true"))
        );
        for v in out.spec.as_ref().unwrap().volumes.as_ref().unwrap() {
            let optional = v
                .config_map
                .as_ref()
                .map(|c| c.optional)
                .or_else(|| v.secret.as_ref().map(|s| s.optional));
            assert_eq!(optional, Some(Some(true)), "volume {}", v.name);
        }
        let sc = s.security_context.unwrap();
        assert_eq!(sc.run_as_user, Some(SIDECAR_UID));
    }
}

#[test]
fn external_store_credentials_and_ca_reach_the_sidecar_apart_from_the_url() {
    let mut store = fixtures::external();
    let ext = store.spec.redis.external.as_mut().unwrap();
    ext.url = "rediss+sentinel://s1:26379,s2:26379/mymaster".into();
    ext.username = Some("app".into());
    ext.ca_secret_ref = Some(crate::crd::CaSecretRef {
        name: "redis-ca".into(),
        key: "bundle.pem".into(),
    });
    let p = app_pod(json!([{"name": "http", "containerPort": 8080}]));
    let out = inject(&p, "shop", &store, &InjectConfig::default()).unwrap();
    let s = side(&out);
    let env = s.env.clone().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        value("SAMETAG_REDIS_URL"),
        "rediss+sentinel://s1:26379,s2:26379/mymaster"
    );
    assert_eq!(value("SAMETAG_REDIS_USERNAME"), "app");
    assert_eq!(
        value("SAMETAG_REDIS_CA_FILE"),
        "/etc/sametag-redis-ca/ca.crt"
    );
    let password = env
        .iter()
        .find(|e| e.name == "SAMETAG_REDIS_PASSWORD")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .unwrap();
    assert_eq!(
        (password.name.as_str(), password.key.as_str()),
        ("shared-redis", "pw")
    );
    // No env value carries the password or a reference to it.
    assert!(
        env.iter()
            .all(|e| !e.value.as_deref().unwrap_or("").contains('@'))
    );
    let vols = out.spec.as_ref().unwrap().volumes.clone().unwrap();
    let ca = vols.iter().find(|v| v.name == "sametag-redis-ca").unwrap();
    let secret = ca.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("redis-ca"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("bundle.pem", "ca.crt")
    );
    assert!(
        s.volume_mounts
            .unwrap()
            .iter()
            .any(|m| m.name == "sametag-redis-ca" && m.mount_path == "/etc/sametag-redis-ca")
    );
    // Without a CA or a user, neither is injected.
    let plain = inject(&p, "shop", &fixtures::external(), &InjectConfig::default()).unwrap();
    let env = side(&plain).env.unwrap();
    assert!(
        !env.iter()
            .any(|e| e.name == "SAMETAG_REDIS_USERNAME" || e.name == "SAMETAG_REDIS_CA_FILE")
    );
}

#[test]
fn omit_uids_leaves_the_sidecar_uid_to_the_platform() {
    let cfg = InjectConfig {
        omit_uids: true,
        ..InjectConfig::default()
    };
    let p = app_pod(json!([{"name": "http", "containerPort": 8080}]));
    let out = inject(&p, "shop", &fixtures::managed(), &cfg).unwrap();
    let sc = side(&out).security_context.unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}
