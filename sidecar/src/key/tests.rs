use super::*;
use proptest::prelude::*;

const SECRET: &[u8] = b"per-store secret for tests, 32 bytes+";

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn key(uri: &str, headers: &[(&str, &str)]) -> ResourceKey {
    resource_key(&parts(uri, headers), false, SECRET)
}

#[test]
fn same_resource_spelled_differently_gets_one_key() {
    let base = key("/a/b~c?q=x", &[("host", "example.com")]);
    for (uri, host) in [
        ("/a/b~c?q=x", "EXAMPLE.com"),
        ("/a/b~c?q=x", "example.com:80"),
        ("/a/b~c?q=x", "example.com:"),
        ("/a/b~c?q=x", "example.com:0080"),
        ("/a/b%7Ec?q=x", "example.com"),
        ("/a/b%7ec?q=x", "example.com"),
        ("/%61/b~c?q=x", "example.com"),
        ("/a/b~c?q=%78", "example.com"),
        ("/a/b~c?%71=x", "example.com"),
        // Dot segments, also percent-encoded (RFC 3986 §6.2.2.3).
        ("/a/./b~c?q=x", "example.com"),
        ("/a/x/../b~c?q=x", "example.com"),
        ("/a/%2e/b~c?q=x", "example.com"),
        ("/a/x/%2E%2e/b~c?q=x", "example.com"),
        ("/../a/b~c?q=x", "example.com"),
        // Absolute form: the URI's authority wins over Host.
        ("http://Example.COM:80/a/b~c?q=x", "other.example"),
    ] {
        assert_eq!(key(uri, &[("host", host)]), base, "{uri} {host}");
    }
    assert_eq!(&*base.path, "/a/b~c");
}

#[test]
fn spellings_an_origin_may_distinguish_get_their_own_key() {
    let base = key("/a/b?x=1&y=2", &[("host", "example.com")]);
    for (uri, host) in [
        ("/A/b?x=1&y=2", "example.com"),
        ("/a/b/?x=1&y=2", "example.com"),
        ("/a/b?y=2&x=1", "example.com"),
        ("/a%2Fb?x=1&y=2", "example.com"),
        ("/a/b?x=1&y=2&", "example.com"),
        ("/a/b?x=1+&y=2", "example.com"),
        ("/a/b", "example.com"),
        ("/a/b?x=1&y=2", "example.com:8080"),
        ("/a/b?x=1&y=2", "example.org"),
    ] {
        assert_ne!(key(uri, &[("host", host)]), base, "{uri} {host}");
    }
    // `/a?` (empty query) and `/a` differ; `%2F` and `%2f` do not.
    assert_ne!(key("/a?", &[("host", "h")]), key("/a", &[("host", "h")]));
    assert_eq!(
        key("/a%2fb", &[("host", "h")]),
        key("/a%2Fb", &[("host", "h")])
    );
    // `+` and `%20` and `%2B` all differ.
    let plus = key("/s?q=a+b", &[("host", "h")]);
    assert_ne!(plus, key("/s?q=a%20b", &[("host", "h")]));
    assert_ne!(plus, key("/s?q=a%2Bb", &[("host", "h")]));
}

#[test]
fn scheme_is_not_part_of_the_key_but_picks_the_default_port() {
    // The app sees one plain-HTTP request either way (see the module docs).
    let plain = key("/x", &[("host", "example.com")]);
    assert_eq!(key("https://example.com/x", &[]), plain);
    assert_eq!(key("http://example.com/x", &[]), plain);
    assert_eq!(key("https://example.com:443/x", &[]), plain);
    assert_ne!(key("https://example.com:80/x", &[]), plain);
    assert_ne!(key("/x", &[("host", "example.com:443")]), plain);
}

#[test]
fn authority_canonical_form() {
    assert_eq!(canonical_authority(b"Example.COM:80", false), "example.com");
    assert_eq!(canonical_authority(b"example.com:443", true), "example.com");
    assert_eq!(
        canonical_authority(b"example.com:443", false),
        "example.com:443"
    );
    assert_eq!(
        canonical_authority(b"example.com:08080", false),
        "example.com:8080"
    );
    assert_eq!(canonical_authority(b"[::1]:80", false), "[::1]");
    assert_eq!(canonical_authority(b"[::1]:8080", false), "[::1]:8080");
    assert_eq!(canonical_authority(b"[::1]", false), "[::1]");
    assert_eq!(canonical_authority(b"user@host:80", false), "host");
    assert_eq!(canonical_authority(b" host ", false), "host");
    assert_eq!(
        canonical_authority(b"host:99999999999999999999", false),
        "host:99999999999999999999"
    );
    assert_eq!(canonical_authority(b"h\xffst", false), "h\u{fffd}st");
}

#[test]
fn percent_normalisation() {
    assert_eq!(normalize_percent("/%41%2d%2E%5f%7e"), "/A-._~");
    assert_eq!(normalize_percent("/%2f%3a%c3%a9"), "/%2F%3A%C3%A9");
    // A '%' that starts no escape is spelled `%25`, so normalising is
    // idempotent ("%%330" would otherwise become "%30", then "0").
    assert_eq!(normalize_percent("/%zz%4%"), "/%25zz%254%25");
    assert_eq!(normalize_percent("%%330"), "%2530");
    assert_eq!(normalize_percent("/caf%C3%A9"), "/caf%C3%A9");
    assert_eq!(normalize_percent("%"), "%25");
    assert_eq!(normalize_percent("%4"), "%254");
    assert_eq!(normalize_percent("%41"), "A");
}

#[test]
fn ids_are_safe_redis_key_parts() {
    let k = key("/a%20b?%0A{}", &[("host", "h")]);
    assert_eq!(k.id.len(), 22);
    assert!(
        k.id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
}

#[test]
fn credentials_scope_the_key_unless_shared() {
    let anon = key("/me", &[("host", "h")]);
    let alice = key("/me", &[("host", "h"), ("authorization", "Bearer alice")]);
    let bob = key("/me", &[("host", "h"), ("authorization", "Bearer bob")]);
    let alice_cookie = key("/me", &[("host", "h"), ("cookie", "sid=alice")]);
    let bob_cookie = key("/me", &[("host", "h"), ("cookie", "sid=bob")]);
    let all = [&anon, &alice, &bob, &alice_cookie, &bob_cookie];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a.id, b.id);
        }
        assert_eq!(&*a.path, "/me");
    }
    // Stable for the same credentials.
    assert_eq!(
        alice,
        key("/me", &[("host", "h"), ("authorization", "Bearer alice")])
    );
    // Moving bytes between Authorization and Cookie is a different scope.
    assert_ne!(
        key(
            "/me",
            &[("host", "h"), ("authorization", "a"), ("cookie", "b")]
        ),
        key("/me", &[("host", "h"), ("authorization", "ab")])
    );
    // Shared: one key for everyone.
    let p = |h: &[(&str, &str)]| resource_key(&parts("/me", h), true, SECRET);
    assert_eq!(p(&[("host", "h"), ("authorization", "Bearer alice")]), anon);
    assert_eq!(p(&[("host", "h"), ("cookie", "sid=bob")]), anon);
    // Another store's secret gives another scope.
    let other = resource_key(
        &parts("/me", &[("host", "h"), ("authorization", "Bearer alice")]),
        false,
        b"other",
    );
    assert_ne!(other, alice);
    assert!(credential_scope(&HeaderMap::new(), SECRET).is_none());
}

#[test]
fn vary_names_parse() {
    let mut h = HeaderMap::new();
    assert_eq!(vary_names(&h), VaryNames::Names(vec![]));
    h.append(VARY, "Accept-Encoding, accept-language".parse().unwrap());
    h.append(VARY, " ,Accept-Encoding ,".parse().unwrap());
    assert_eq!(
        vary_names(&h),
        VaryNames::Names(vec!["accept-encoding".into(), "accept-language".into()])
    );
    h.append(VARY, "*".parse().unwrap());
    assert_eq!(vary_names(&h), VaryNames::Any);
    let mut many = HeaderMap::new();
    let names: Vec<String> = (0..=MAX_VARY_NAMES).map(|i| format!("x-h{i}")).collect();
    many.insert(VARY, names.join(",").parse().unwrap());
    assert_eq!(vary_names(&many), VaryNames::Any);
}

#[test]
fn variant_keys() {
    let names = vec!["accept-encoding".to_owned(), "accept-language".to_owned()];
    let req = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    };
    assert_eq!(
        variant_key(&[], &req(&[("accept-encoding", "gzip")])),
        VariantKey(String::new())
    );
    let gzip_en = variant_key(
        &names,
        &req(&[("accept-encoding", "gzip"), ("accept-language", "en")]),
    );
    assert_eq!(gzip_en.0.len(), 22);
    // Order of names, name case and unrelated headers do not matter.
    let reversed = vec!["Accept-Language".to_owned(), "accept-encoding".to_owned()];
    assert_eq!(
        variant_key(
            &reversed,
            &req(&[
                ("accept-language", "en"),
                ("accept-encoding", "gzip"),
                ("user-agent", "x")
            ])
        ),
        gzip_en
    );
    // Values do; absent differs from empty; two lines join like one list.
    assert_ne!(
        variant_key(
            &names,
            &req(&[("accept-encoding", "br"), ("accept-language", "en")])
        ),
        gzip_en
    );
    assert_ne!(
        variant_key(&names, &req(&[("accept-encoding", "gzip")])),
        variant_key(
            &names,
            &req(&[("accept-encoding", "gzip"), ("accept-language", "")])
        )
    );
    assert_eq!(
        variant_key(
            &names,
            &req(&[("accept-encoding", "gzip"), ("accept-encoding", "br")])
        ),
        variant_key(&names, &req(&[("accept-encoding", "gzip, br")]))
    );
    // A name that is not a valid header name cannot match a request field.
    let odd = vec!["bad name".to_owned()];
    assert_eq!(variant_key(&odd, &req(&[])).0.len(), 22);
}

#[test]
fn dot_segments_are_removed() {
    for (input, want) in [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/../../x", "/x"),
        ("/a/.b/..c/", "/a/.b/..c/"),
        ("//a/./b", "//a/b"),
        ("/a/b/c/./../../g", "/a/g"),
    ] {
        assert_eq!(remove_dot_segments(input), want, "{input}");
    }
}

#[test]
fn lock_key_ignores_host_and_credentials_but_not_query() {
    let alice = key(
        "/doc?id=1",
        &[("host", "shop"), ("authorization", "Basic YQ==")],
    );
    let bob = key(
        "/doc?id=1",
        &[("host", "shop.shop.svc.cluster.local"), ("cookie", "s=bob")],
    );
    assert_ne!(alice.id, bob.id, "read keys stay per user and Host");
    assert_eq!(alice.lock, bob.lock);
    assert_eq!(alice.path, bob.path);
    assert_ne!(key("/doc?id=2", &[("host", "shop")]).lock, alice.lock);
    assert_eq!(key("/x/../doc?id=1", &[]).lock, alice.lock);
}

proptest! {
    #[test]
    fn dot_segment_removal_is_idempotent_and_complete(
        segs in proptest::collection::vec(prop_oneof!["\\.", "\\.\\.", "[a-z.]{0,3}"], 0..8)
    ) {
        let path = format!("/{}", segs.join("/"));
        let once = remove_dot_segments(&path);
        prop_assert!(once.starts_with('/'));
        prop_assert_eq!(remove_dot_segments(&once), once.clone());
        prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{}", once);
    }

    #[test]
    fn decoding_unreserved_never_changes_the_key(path in "(/[a-zA-Z0-9._~-]{0,8}){1,4}", query in proptest::option::of("[a-z0-9=&]{0,12}")) {
        let encoded: String = path.bytes().map(|b| if b == b'/' { "/".to_owned() } else { format!("%{b:02x}") }).collect();
        let q = |p: &str| match &query { Some(q) => format!("{p}?{q}"), None => p.to_owned() };
        prop_assert_eq!(key(&q(&path), &[("host", "h")]), key(&q(&encoded), &[("host", "h")]));
    }

    #[test]
    fn normalisation_is_idempotent(s in "[a-zA-Z0-9%/._~+-]{0,40}") {
        let once = normalize_percent(&s);
        prop_assert_eq!(normalize_percent(&once), once.clone());
    }

    #[test]
    fn authority_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64), https in any::<bool>()) {
        let _ = canonical_authority(&b, https);
    }
}
