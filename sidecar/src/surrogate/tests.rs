use http::HeaderValue;
use proptest::prelude::*;

use super::*;

#[test]
fn keys_split_on_spaces_and_dedup() {
    let ids = parse_keys([&b"a  b\tc"[..], b"b d"]);
    let want: Vec<KeyId> = ["a", "b", "c", "d"]
        .iter()
        .map(|k| KeyId::of(k.as_bytes()))
        .collect();
    assert_eq!(ids, want);
    assert!(parse_keys([&b"   "[..]]).is_empty());
    // Keys are case-sensitive, as Fastly's are.
    assert_ne!(KeyId::of(b"A"), KeyId::of(b"a"));
    let id = KeyId::of(b"product-1");
    assert_eq!(id.as_str().len(), 12);
    assert_eq!(KeyId::from_stored(id.as_str()), Some(id));
    assert_eq!(KeyId::from_stored("short"), None);
}

#[test]
fn take_removes_every_field() {
    let mut h = HeaderMap::new();
    h.append(&SURROGATE_KEY, HeaderValue::from_static("a b"));
    h.append(&SURROGATE_KEY, HeaderValue::from_static("c"));
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(take_keys(&mut h).len(), 3);
    assert!(!h.contains_key(&SURROGATE_KEY));
    assert_eq!(h.len(), 1);
    assert!(take_keys(&mut h).is_empty());
}

#[test]
fn labels_are_bounded() {
    let ids = |n: usize| {
        (0..n)
            .map(|i| KeyId::of(i.to_string().as_bytes()))
            .collect()
    };
    assert!(matches!(Labels::of(ids(MAX_LABELS)), Labels::Keys(k) if k.len() == MAX_LABELS));
    assert_eq!(Labels::of(ids(MAX_LABELS + 1)), Labels::TooMany);
}

#[test]
fn purge_bodies() {
    let p =
        parse_purge(br#"{"paths": ["/a/./b/%7Ex", "/items/**", "/a/b/~x"], "keys": ["k1", "k1"]}"#)
            .unwrap();
    assert_eq!(p.paths, vec![Arc::<str>::from("/a/b/~x")]);
    assert_eq!(p.globs, vec![Arc::<str>::from("/items/**")]);
    assert_eq!(p.keys, vec![KeyId::of(b"k1")]);
    assert!(parse_purge(br#"{"keys": ["x"]}"#).is_ok());
    for (body, want) in [
        (&br#"{}"#[..], PurgeBodyError::Empty),
        (br#"{"paths": []}"#, PurgeBodyError::Empty),
        (br#"{"paths": ["a"]}"#, PurgeBodyError::Path("a".into())),
        (
            br#"{"paths": ["/a b"]}"#,
            PurgeBodyError::Path("/a b".into()),
        ),
        (
            br#"{"paths": ["/a?x=1"]}"#,
            PurgeBodyError::Path("/a?x=1".into()),
        ),
        (br#"{"keys": [""]}"#, PurgeBodyError::Key(String::new())),
        (br#"{"keys": ["a b"]}"#, PurgeBodyError::Key("a b".into())),
    ] {
        assert_eq!(parse_purge(body), Err(want));
    }
    assert!(matches!(
        parse_purge(b"not json"),
        Err(PurgeBodyError::Json(_))
    ));
    assert!(matches!(
        parse_purge(br#"{"paths": ["/x"], "extra": 1}"#),
        Err(PurgeBodyError::Json(_))
    ));
    assert!(matches!(
        parse_purge(br#"{"paths": ["/a/[b"]}"#),
        Err(PurgeBodyError::Glob(..))
    ));
    let many = format!(
        r#"{{"keys": [{}]}}"#,
        vec!["\"k\""; MAX_PURGE_ITEMS + 1].join(",")
    );
    assert_eq!(
        parse_purge(many.as_bytes()),
        Err(PurgeBodyError::TooMany("keys"))
    );
    assert_eq!(
        parse_purge(&vec![b' '; MAX_PURGE_BODY_BYTES + 1]),
        Err(PurgeBodyError::TooLarge)
    );
}

#[test]
fn glob_marks_match_like_policy_globs() {
    let marks = GlobMarks::compile([("/items/*", 5u64), ("/items/**", 3), ("/other", 9)]);
    assert_eq!(marks.newest("/items/1"), Some(5));
    assert_eq!(marks.newest("/items/1/2"), Some(3));
    assert_eq!(marks.newest("/itemsx"), None);
    assert_eq!(marks.newest("/other"), Some(9));
    // A stored glob that does not compile matches everything.
    let broken = GlobMarks::compile([("/a/[", 7u64)]);
    assert_eq!(broken.newest("/anything"), Some(7));
    assert!(GlobMarks::<u64>::empty().newest("/").is_none());
}

proptest! {
    #[test]
    fn parse_keys_never_panics_and_is_bounded(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4)) {
        let ids = parse_keys(values.iter().map(Vec::as_slice));
        let total: usize = values.iter().map(|v| v.len()).sum();
        prop_assert!(ids.len() <= total);
        for id in &ids {
            prop_assert_eq!(KeyId::from_stored(id.as_str()), Some(id.clone()));
        }
        // Splitting is insensitive to extra separators.
        let spaced: Vec<Vec<u8>> = values.iter().map(|v| {
            let mut s = b" ".to_vec();
            s.extend(v.iter().flat_map(|b| if *b == b' ' { vec![b' ', b'\t'] } else { vec![*b] }));
            s
        }).collect();
        prop_assert_eq!(parse_keys(spaced.iter().map(Vec::as_slice)), ids);
    }

    #[test]
    fn parse_purge_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_purge(&body);
    }

    #[test]
    fn purge_lists_round_trip(
        paths in proptest::collection::vec("/[a-z0-9*/._~%-]{0,20}", 0..10),
        keys in proptest::collection::vec("[!-~]{1,20}", 0..10),
    ) {
        let body = serde_json::json!({ "paths": paths, "keys": keys }).to_string();
        match parse_purge(body.as_bytes()) {
            Ok(p) => {
                prop_assert!(p.paths.len() + p.globs.len() <= paths.len());
                prop_assert!(p.keys.len() <= keys.len());
                for path in p.paths.iter().chain(&p.globs) {
                    prop_assert!(path.starts_with('/'));
                }
                for g in &p.globs {
                    prop_assert!(is_glob(g));
                }
                let want: Vec<KeyId> = keys.iter().fold(Vec::new(), |mut v, k| {
                    let id = KeyId::of(k.as_bytes());
                    if !v.contains(&id) { v.push(id) }
                    v
                });
                prop_assert_eq!(p.keys, want);
            }
            Err(PurgeBodyError::Empty) => prop_assert!(paths.is_empty() && keys.is_empty()),
            Err(PurgeBodyError::Glob(..)) => {}
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}
