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
fn compress_lists_codings_in_preference_order() {
    let p = Policy::from_yaml(
        "routes:\n- {path: /api/**, compress: [br, zstd, gzip]}\n- {path: /js/*, mode: Trust, compress: [gzip]}\n- {path: /x, compress: []}\n",
    )
    .unwrap();
    assert_eq!(
        p.route("/api/a").compress,
        [Coding::Br, Coding::Zstd, Coding::Gzip]
    );
    assert_eq!(p.route("/js/app.js").compress, [Coding::Gzip]);
    assert!(p.route("/x").compress.is_empty());
    assert!(p.route("/elsewhere").compress.is_empty());
    // Written back in the same order.
    let again = Policy::from_yaml(&p.to_yaml().unwrap()).unwrap();
    assert_eq!(again, p);
    assert!(p.to_yaml().unwrap().contains("- br\n"));
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
            "routes: [{path: /a, compress: [br, deflate]}]",
            "routes[0].compress[1]: unknown coding `deflate` (expected br, zstd or gzip)",
        ),
        (
            "routes: [{path: /a}, {path: /b, compress: [gzip, br, gzip]}]",
            "routes[1].compress[2]: `gzip` is listed twice",
        ),
        (
            "routes: [{path: /a, compress: [BR]}]",
            "routes[0].compress[0]: unknown coding `BR` (expected br, zstd or gzip)",
        ),
        (
            "routes: [{path: /a, mode: Bypass, compress: [gzip]}]",
            "routes[0].compress: not allowed with mode Bypass (the sidecar leaves Bypass routes to the app)",
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
        proptest::collection::vec("[a-z]{1,8}=[0-9a-f]\\{1,4\\}", 0..3),
        proptest::sample::subsequence(Coding::ALL.to_vec(), 0..=3).prop_shuffle(),
    )
        .prop_map(
            |(path, mode, age, invalidates, shared, req, steady, compress)| {
                let bypass = mode == Mode::Bypass;
                RouteSpec {
                    path,
                    mode: Some(mode),
                    max_age: (mode == Mode::Trust).then(|| Value::String(format_duration(age))),
                    invalidates: if bypass { vec![] } else { invalidates },
                    shared: (!bypass).then_some(shared),
                    require_preconditions: (!bypass).then_some(req),
                    steady: if bypass { vec![] } else { steady },
                    compress: if bypass {
                        vec![]
                    } else {
                        compress.iter().map(|c| c.as_str().to_owned()).collect()
                    },
                }
            },
        )
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

// === steady ===

#[test]
fn steady_patterns_parse_and_round_trip() {
    let p = Policy::from_yaml(
        r#"
routes:
  - path: /app/**
    steady: ['name="csrf_token" value="[^"]*"', 'nonce="[A-Za-z0-9+/=]+"']
  - path: /api/**
    mode: Trust
"#,
    )
    .unwrap();
    let steady = p.route("/app/x").steady.clone().unwrap();
    assert_eq!(steady.patterns().len(), 2);
    assert_eq!(&*steady.patterns()[1], r#"nonce="[A-Za-z0-9+/=]+""#);
    assert!(p.route("/api/x").steady.is_none());
    assert!(p.route("/other").steady.is_none());
    let again = Policy::from_yaml(&p.to_yaml().unwrap()).unwrap();
    assert_eq!(again, p);
    // Without `steady:` nothing is written out.
    assert!(!Policy::default().to_yaml().unwrap().contains("steady"));
}

#[test]
fn steady_patterns_are_compiled_once_per_policy() {
    let p = Policy::from_yaml("routes: [{path: /a, steady: ['tok=[0-9]+']}]").unwrap();
    // Every request clones its route: the clones share one compiled set
    // (and its search caches).
    let (a, b) = (p.route("/a").clone(), p.route("/a").clone());
    assert!(Arc::ptr_eq(
        a.steady.as_ref().unwrap(),
        b.steady.as_ref().unwrap()
    ));
    // A reload compiles anew, and an equal policy is still equal.
    let q = Policy::from_yaml("routes: [{path: /a, steady: ['tok=[0-9]+']}]").unwrap();
    assert!(!Arc::ptr_eq(
        a.steady.as_ref().unwrap(),
        q.route("/a").steady.as_ref().unwrap()
    ));
    assert_eq!(p, q);
    let r = Policy::from_yaml("routes: [{path: /a, steady: ['tok=[0-9]*x']}]").unwrap();
    assert_ne!(p, r);
}

#[test]
fn steady_errors_are_one_clear_line() {
    let long = format!("routes: [{{path: /a, steady: ['{}']}}]", "a".repeat(257));
    let many = format!(
        "routes: [{{path: /a, steady: [{}]}}]",
        vec!["x"; 17].join(", ")
    );
    let cases: [(&str, &str); 6] = [
        (
            "routes: [{path: /a, steady: [ok, '(a']}]",
            "routes[0].steady[1]: invalid regex `(a`: unclosed group",
        ),
        (
            "routes: [{path: /a, steady: ['a*']}]",
            "routes[0].steady[0]: `a*` can match empty text; a steady pattern must match at least one character",
        ),
        (
            "routes: [{path: /a}, {path: /b, steady: ['x|']}]",
            "routes[1].steady[0]: `x|` can match empty text; a steady pattern must match at least one character",
        ),
        (
            "routes: [{path: /a, mode: Bypass, steady: [x]}]",
            "routes[0].steady: not allowed with mode Bypass (the sidecar leaves Bypass routes to the app)",
        ),
        (&long, "routes[0].steady[0]: at most 256 bytes (got 257)"),
        (&many, "routes[0].steady: at most 16 patterns (got 17)"),
    ];
    for (yaml, want) in cases {
        assert_eq!(err(yaml), want, "{yaml}");
    }
    // Large once compiled: Unicode classes repeated.
    let big = err(r"routes: [{path: /a, steady: ['ok', '\w{200}\w{200}']}]");
    assert!(
        big.starts_with("routes[0].steady[1]: compiles to more than")
            && big.ends_with("(too large)"),
        "{big}"
    );
    // Each fits alone, not all of them together.
    let together = err(&format!(
        "routes: [{{path: /a, steady: [{}]}}]",
        vec![r"'\w{5}x'"; 16].join(", ")
    ));
    assert!(
        together.starts_with("routes[0].steady: ") && together.contains("too large"),
        "{together}"
    );
    // Nesting is bounded before anything is built.
    let deep = err(&format!(
        "routes: [{{path: /a, steady: ['{}x{}']}}]",
        "(".repeat(100),
        ")".repeat(100)
    ));
    assert!(
        deep.starts_with("routes[0].steady[0]: invalid regex"),
        "{deep}"
    );
    for e in [&big, &together, &deep] {
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn the_policy_bounds_every_routes_patterns_together() {
    // Each route's set fits (about 0.5 MiB); 64 such routes do not.
    let route = |i: usize| format!("{{path: /r{i}, steady: ['\\w{{10}}y{i}']}}");
    let routes: Vec<String> = (0..64).map(route).collect();
    let e = err(&format!("routes: [{}]", routes.join(", ")));
    assert!(
        e.contains("].steady: the policy's steady patterns together compile to more than"),
        "{e}"
    );
}

/// A pattern list as the proptests build it: some valid, some not.
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{1,6}=[0-9a-f]\\{1,8\\}",
        1 => "[a-z()*+?|\\[\\]{}\\\\.^$]{0,12}",
        1 => "\\PC{0,300}",
    ]
}

/// What the validation must say about one pattern, decided independently:
/// `None` when valid.
fn expected_pattern_error(p: &str) -> Option<&'static str> {
    if p.len() > steady::MAX_PATTERN_BYTES {
        return Some("at most");
    }
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .nest_limit(64)
        .build()
        .parse(p)
    else {
        return Some("invalid regex");
    };
    if hir.properties().minimum_len() == Some(0) {
        return Some("can match empty text");
    }
    None
}

proptest! {
    // Each case compiles up to 16 regexes (slow in debug builds).
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn steady_list_validation(patterns in proptest::collection::vec(pattern(), 0..20)) {
        let spec = PolicySpec {
            routes: vec![RouteSpec {
                path: "/a/**".to_owned(),
                steady: patterns.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let got = Policy::from_spec(&spec);
        if patterns.len() > steady::MAX_PATTERNS {
            let e = got.unwrap_err().to_string();
            prop_assert!(e.starts_with("routes[0].steady: at most 16 patterns"), "{}", e);
            return Ok(());
        }
        let first_bad = patterns
            .iter()
            .enumerate()
            .find_map(|(i, p)| expected_pattern_error(p).map(|why| (i, why)));
        match (got, first_bad) {
            (Ok(p), None) => {
                let s = p.route("/a/x").steady.clone();
                prop_assert_eq!(s.as_ref().map_or(0, |s| s.patterns().len()), patterns.len());
                let again = Policy::from_yaml(&p.to_yaml().unwrap()).unwrap();
                prop_assert_eq!(again, p);
            }
            (Err(e), Some((i, why))) => {
                let e = e.to_string();
                prop_assert!(e.starts_with(&format!("routes[0].steady[{i}]: ")), "{}", e);
                prop_assert!(e.contains(why), "{} / {}", e, why);
                prop_assert!(!e.contains('\n') && !e.contains('\r'), "{}", e);
            }
            // Only size limits refuse what parses (never for these sizes).
            (Err(e), None) => prop_assert!(e.to_string().contains("too large"), "{}", e),
            (Ok(_), Some((i, why))) => prop_assert!(false, "accepted {:?}: {}", patterns[i], why),
        }
    }

    #[test]
    fn steady_spans_are_ordered_disjoint_and_matching(
        body in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'='), any::<u8>()], 0..2000),
    ) {
        let s = Steady::compile(&["a=b+".to_owned(), "(?-u:\\xFF)".to_owned()]).unwrap().unwrap();
        let spans = s.excluded(&body).unwrap();
        let mut end = 0;
        for r in &spans {
            prop_assert!(r.start >= end && r.end > r.start && r.end <= body.len());
            let t = &body[r.clone()];
            prop_assert!(t == [0xFF] || (t.starts_with(b"a=b") && t[3..].iter().all(|c| *c == b'b')));
            end = r.end;
        }
        // Nothing left unmatched that a pattern matches.
        let mut rest = body.clone();
        for r in spans.iter().rev() {
            rest.splice(r.clone(), [0u8]);
        }
        prop_assert!(!rest.windows(3).any(|w| w == b"a=b") && !rest.contains(&0xFF));
    }
}
