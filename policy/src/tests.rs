//! Parsing and validation of the policy file, route matching, and the
//! scalar formats, on inputs both valid and hostile.

use super::*;
use proptest::prelude::*;

const EXAMPLE: &str = r#"
mode: Validate          # for paths no route matches
maxAge: 30s
maxBodyBytes: 8Mi
routes:
  - path: /api/items/**
    mode: Trust
    maxAge: 60s
    invalidates: [/api/items, /api/items/**]
    shared: false
    requirePreconditions: true
  - path: /static/*
    mode: Bypass
  - path: /api/**
    mode: Trust
"#;

fn err(yaml: &str) -> String {
    Policy::from_yaml(yaml).unwrap_err().to_string()
}

#[test]
fn the_design_example_parses() {
    let p = Policy::from_yaml(EXAMPLE).unwrap();
    assert_eq!(p.max_body_bytes(), 8 * 1024 * 1024);
    let r = p.route("/api/items/42");
    assert_eq!(r.mode, Mode::Trust);
    assert_eq!(r.max_age, Duration::from_secs(60));
    assert!(r.require_preconditions && !r.shared);
    assert_eq!(r.path.as_deref(), Some("/api/items/**"));
    assert_eq!(p.route("/static/app.js").mode, Mode::Bypass);
    // `*` does not cross `/`.
    assert_eq!(p.route("/static/js/app.js").mode, Mode::Validate);
    // Inherits the top-level maxAge.
    assert_eq!(p.route("/api/users").max_age, Duration::from_secs(30));
    assert_eq!(p.route("/api/users").path.as_deref(), Some("/api/**"));
    assert_eq!(p.route("/other").path, None);
    assert_eq!(p.route("/other").mode, Mode::Validate);
}

#[test]
fn first_match_wins() {
    let p = Policy::from_yaml(
        "routes:\n- {path: /a/**, mode: Bypass}\n- {path: /a/b, mode: Trust}\n- {path: /**, mode: Trust, maxAge: 5s}\n",
    )
    .unwrap();
    assert_eq!(p.route("/a/b").mode, Mode::Bypass);
    assert_eq!(p.route("/b").max_age, Duration::from_secs(5));
    let q =
        Policy::from_yaml("routes:\n- {path: /a/b, mode: Trust}\n- {path: /a/**, mode: Bypass}\n")
            .unwrap();
    assert_eq!(q.route("/a/b").mode, Mode::Trust);
    assert_eq!(q.route("/a/c").mode, Mode::Bypass);
    assert_eq!(q.route("/a").mode, Mode::Validate);
}

#[test]
fn glob_semantics() {
    let p = Policy::from_yaml(
        "routes:\n- {path: /x/**, mode: Bypass}\n- {path: /y/*.json, mode: Bypass}\n- {path: '/z/{a,b}', mode: Bypass}\n",
    )
    .unwrap();
    let bypass = |path: &str| p.route(path).mode == Mode::Bypass;
    assert!(bypass("/x/1") && bypass("/x/1/2/3") && bypass("/x/"));
    assert!(!bypass("/x") && !bypass("/xy/1"));
    assert!(bypass("/y/a.json") && !bypass("/y/a/b.json") && !bypass("/y/a.jsonx"));
    assert!(bypass("/z/a") && bypass("/z/b") && !bypass("/z/c"));
}

#[test]
fn watched_lists_every_matching_invalidation_glob() {
    let p = Policy::from_yaml(
        "routes:\n- {path: /api/items/*, invalidates: [/api/items, /api/**]}\n- {path: /api/tags/*, invalidates: [/api/**, /api/tags]}\n",
    )
    .unwrap();
    let w = |path: &str| -> Vec<String> { p.watched(path).iter().map(|g| g.to_string()).collect() };
    assert_eq!(w("/api/items"), ["/api/**", "/api/items"]);
    assert_eq!(w("/api/tags"), ["/api/**", "/api/tags"]);
    assert_eq!(w("/api/other/1"), ["/api/**"]);
    assert!(w("/elsewhere").is_empty());
    assert!(Policy::default().watched("/api").is_empty());
}

#[test]
fn defaults() {
    for empty in ["", "# nothing\n", "{}", "~"] {
        let p = Policy::from_yaml(empty).unwrap();
        assert_eq!(p, Policy::default(), "{empty:?}");
    }
    let p = Policy::default();
    assert_eq!(p.route("/any").mode, Mode::Validate);
    assert_eq!(p.route("/any").max_age, DEFAULT_MAX_AGE);
    assert_eq!(p.max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
    // Routes inherit the default mode.
    let t = Policy::from_yaml("mode: Trust\nroutes: [{path: /a, maxAge: 2s}]").unwrap();
    assert_eq!(t.route("/a").mode, Mode::Trust);
    assert_eq!(t.route("/a").max_age, Duration::from_secs(2));
}

#[test]
fn one_clear_line_per_error() {
    let cases = [
        (
            "routes:\n- {path: /a}\n- {path: /b}\n- {path: /c, mode: Validate, maxAge: 5s}",
            "routes[2].maxAge: only allowed with mode Trust",
        ),
        (
            "maxAge: 0s",
            "maxAge: must be more than 0 and at most 24h (got 0s)",
        ),
        (
            "maxAge: 25h",
            "maxAge: must be more than 0 and at most 24h (got 25h)",
        ),
        (
            "maxAge: 30",
            "maxAge: expected a duration such as 500ms, 30s, 5m or 1h",
        ),
        (
            "maxAge: 30 s",
            "maxAge: invalid duration `30 s` (expected e.g. 500ms, 30s, 5m, 1h)",
        ),
        (
            "maxBodyBytes: 0",
            "maxBodyBytes: must be between 1 and 1Gi (got 0)",
        ),
        (
            "maxBodyBytes: 2Gi",
            "maxBodyBytes: must be between 1 and 1Gi (got 2147483648)",
        ),
        (
            "maxBodyBytes: -1",
            "maxBodyBytes: expected a byte count such as 8Mi (got -1)",
        ),
        (
            "maxBodyBytes: 8MB",
            "maxBodyBytes: invalid byte count `8MB` (expected e.g. 8Mi, 512Ki, 1M or 1048576)",
        ),
        (
            "maxBodyBytes: [1]",
            "maxBodyBytes: expected a byte count such as 8Mi",
        ),
        (
            "routes: [{path: 'api/**'}]",
            "routes[0].path: glob `api/**` must start with `/` (globs match the request path)",
        ),
        (
            "routes: [{path: /static/*, mode: Bypass, shared: true}]",
            "routes[0].shared: not allowed with mode Bypass (the sidecar leaves Bypass routes to the app)",
        ),
        (
            "routes: [{path: /a, mode: Bypass, invalidates: [/b]}]",
            "routes[0].invalidates: not allowed with mode Bypass (the sidecar leaves Bypass routes to the app)",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(err(yaml), want, "{yaml}");
    }
    let glob = err("routes: [{path: '/a/[b'}]");
    assert!(
        glob.starts_with("routes[0].path: ") && glob.contains("/a/[b"),
        "{glob}"
    );
    let inv = err("routes: [{path: /a, invalidates: [/ok, '/{x']}]");
    assert!(inv.starts_with("routes[0].invalidates[1]: "), "{inv}");
    let unknown = err("routes: [{path: /a, maxage: 5s}]");
    assert!(
        unknown.contains("unknown field `maxage`") && unknown.contains("routes[0]"),
        "{unknown}"
    );
    let unknown_top = err("mode: Validate\nextra: 1\n");
    assert!(
        unknown_top.contains("unknown field `extra`"),
        "{unknown_top}"
    );
    let mode = err("mode: validate");
    assert!(mode.contains("unknown variant `validate`"), "{mode}");
    assert!(err("routes: [{mode: Trust}]").contains("missing field `path`"));
    // User text echoed in a message is escaped (found by the fuzzer: a
    // multi-line plain scalar).
    let multi = err("mode: Validate\nmaxAge: 30s\n\n  ath:/m");
    assert_eq!(
        multi,
        "maxAge: invalid duration `30s\\nath:/m` (expected e.g. 500ms, 30s, 5m, 1h)"
    );
    let tab_glob = err("routes: [{path: \"/a\\t[\"}]");
    for e in [
        &glob,
        &inv,
        &unknown,
        &unknown_top,
        &mode,
        &multi,
        &tab_glob,
    ] {
        assert!(!e.contains('\n') && !e.contains('\t'), "{e}");
    }
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("sametag-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("policy.yaml");
    std::fs::write(&f, "maxAge: 0s\n").unwrap();
    let e = Policy::load(&f).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: maxAge: must be more than 0 and at most 24h (got 0s)",
            f.display()
        )
    );
    let missing = Policy::load(&dir.join("missing.yaml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing.yaml: cannot read"), "{missing}");
    std::fs::write(&f, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
    assert!(
        Policy::load(&f)
            .unwrap_err()
            .to_string()
            .ends_with("larger than 1048576 bytes")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn byte_quantities() {
    // Durations: see `duration::tests`.
    assert_eq!(parse_quantity("8Mi"), Ok(8 << 20));
    assert_eq!(parse_quantity("512Ki"), Ok(512 << 10));
    assert_eq!(parse_quantity("1M"), Ok(1_000_000));
    assert_eq!(parse_quantity("1048576"), Ok(1 << 20));
    for bad in [
        "",
        "Mi",
        "1.5Mi",
        "1 Mi",
        "1mi",
        "99999999999999999999",
        "18446744073709551615Ki",
    ] {
        assert!(parse_quantity(bad).is_err(), "{bad}");
    }
}

fn glob() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z]{1,6}){1,3}",
        "(/[a-z]{1,6}){1,2}/\\*\\*",
        "(/[a-z]{1,6}){1,2}/\\*\\.json",
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    (1u64..=86_400_000).prop_map(Duration::from_millis)
}

fn route() -> impl Strategy<Value = RouteSpec> {
    (
        glob(),
        prop_oneof![Just(Mode::Validate), Just(Mode::Trust), Just(Mode::Bypass)],
        duration(),
        proptest::collection::vec(glob(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(path, mode, age, invalidates, shared, req)| {
            let bypass = mode == Mode::Bypass;
            RouteSpec {
                path,
                mode: Some(mode),
                max_age: (mode == Mode::Trust).then(|| Value::String(format_duration(age))),
                invalidates: if bypass { vec![] } else { invalidates },
                shared: (!bypass).then_some(shared),
                require_preconditions: (!bypass).then_some(req),
            }
        })
}

use serde_yaml_ng::Value;

proptest! {
    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,200}") {
        let _ = Policy::from_yaml(&s);
    }

    #[test]
    fn yaml_like_input_never_panics(s in "(mode|maxAge|maxBodyBytes|routes|path|- |: |\\[|\\]|\\{|\\}|,|\n|  |/\\*\\*|Trust|[0-9]+(ms|s|Mi)?){0,40}") {
        let _ = Policy::from_yaml(&s);
    }

    #[test]
    fn generated_policies_parse_and_round_trip(
        mode in prop_oneof![Just(Mode::Validate), Just(Mode::Trust), Just(Mode::Bypass)],
        age in duration(),
        bytes in 1u64..=MAX_MAX_BODY_BYTES,
        routes in proptest::collection::vec(route(), 0..6),
    ) {
        let spec = PolicySpec {
            mode: Some(mode),
            max_age: Some(Value::String(format_duration(age))),
            max_body_bytes: Some(Value::Number(bytes.into())),
            routes,
        };
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        let p = Policy::from_yaml(&yaml).unwrap();
        prop_assert_eq!(p.max_body_bytes(), bytes);
        prop_assert_eq!(p.routes().len(), spec.routes.len());
        let again = Policy::from_yaml(&p.to_yaml().unwrap()).unwrap();
        prop_assert_eq!(&again, &p);
        // Every route path routes to itself or an earlier route.
        for (i, r) in spec.routes.iter().enumerate() {
            if !r.path.contains('*') {
                let hit = p.route(&r.path).path.clone().unwrap();
                let first = spec.routes.iter().position(|x| *x.path == *hit).unwrap();
                prop_assert!(first <= i);
            }
        }
    }
}
