use super::*;
use proptest::prelude::*;

fn s(o: &str) -> EntityTag {
    EntityTag::strong(o).unwrap()
}
fn w(o: &str) -> EntityTag {
    EntityTag::weak(o).unwrap()
}

#[test]
fn display_and_parse_one_tag() {
    assert_eq!(s("abc").to_string(), "\"abc\"");
    assert_eq!(w("abc").to_string(), "W/\"abc\"");
    assert_eq!(
        EntityTag::parse(b" W/\"x y\"\t"),
        Err(TagError::Malformed { at: 5 })
    );
    assert_eq!(EntityTag::parse(b" W/\"xy\"\t").unwrap(), w("xy"));
    assert_eq!("\"\"".parse::<EntityTag>().unwrap(), s(""));
    // Lower-case `w/` is not the weak prefix (%s"W/").
    assert!(EntityTag::parse(b"w/\"x\"").is_err());
    assert!(EntityTag::parse(b"\"x\"junk").is_err());
    assert!(EntityTag::parse(b"x").is_err());
    assert!(EntityTag::parse(b"\"x").is_err());
    assert!(EntityTag::parse(b"").is_err());
    assert!(EntityTag::strong("a\"b").is_err());
    assert!(EntityTag::strong("a b").is_err());
}

#[test]
fn comparison_table_from_rfc_9110() {
    // §8.8.3.2: W/"1" vs W/"1": weak only; W/"1" vs W/"2": neither;
    // W/"1" vs "1": weak only; "1" vs "1": both.
    assert!(!w("1").strong_eq(&w("1")) && w("1").weak_eq(&w("1")));
    assert!(!w("1").strong_eq(&w("2")) && !w("1").weak_eq(&w("2")));
    assert!(!w("1").strong_eq(&s("1")) && w("1").weak_eq(&s("1")));
    assert!(s("1").strong_eq(&s("1")) && s("1").weak_eq(&s("1")));
}

#[test]
fn parses_lists_star_and_empty_elements() {
    assert_eq!(parse_list(b"*").unwrap(), TagList::Any);
    assert_eq!(parse_list(b"  * ").unwrap(), TagList::Any);
    assert_eq!(
        parse_list(b"\"a\", W/\"b\",\"c\"").unwrap(),
        TagList::Tags(vec![s("a"), w("b"), s("c")])
    );
    assert_eq!(
        parse_list(b" , ,\"a\" ,, ").unwrap(),
        TagList::Tags(vec![s("a")])
    );
    assert_eq!(parse_list(b"").unwrap(), TagList::Tags(vec![]));
    assert_eq!(
        parse_list(b"*, \"a\"").unwrap_err(),
        TagError::MisplacedStar
    );
    assert_eq!(
        parse_list(b"\"a\", *").unwrap_err(),
        TagError::MisplacedStar
    );
    assert_eq!(parse_list(b"*, *").unwrap_err(), TagError::MisplacedStar);
    assert!(matches!(
        parse_list(b"\"a\" \"b\""),
        Err(TagError::Malformed { .. })
    ));
    assert!(matches!(
        parse_list(b"a, b"),
        Err(TagError::Malformed { .. })
    ));
    assert!(matches!(
        parse_list(b"\"a,b"),
        Err(TagError::Malformed { .. })
    ));
    // A comma is an etagc (%x23-7E): inside quotes it does not split.
    assert_eq!(
        parse_list(b"\"a,b\", \"c\"").unwrap(),
        TagList::Tags(vec![s("a,b"), s("c")])
    );
}

#[test]
fn works_on_bytes_not_utf8() {
    // obs-text is allowed inside a tag; invalid UTF-8 must not panic.
    let list = parse_list(b"\"\xff\xfe\", \"ok\"").unwrap();
    let TagList::Tags(tags) = list else {
        panic!("expected tags")
    };
    assert_eq!(tags.len(), 2);
    assert_eq!(tags[1], s("ok"));
    assert!(!tags[0].weak_eq(&s("ok")));
    // Control characters are not.
    assert!(parse_list(b"\"a\x00\"").is_err());
    assert!(parse_list(b"\"a\x7f\"").is_err());
}

#[test]
fn matching_lists() {
    let list = parse_list(b"W/\"a\", \"b\"").unwrap();
    assert!(list.matches_weak(&s("a")));
    assert!(!list.matches_strong(&s("a")));
    assert!(list.matches_strong(&s("b")));
    assert!(!list.matches_weak(&s("c")));
    assert!(TagList::Any.matches_strong(&s("z")));
    assert!(!TagList::Tags(vec![]).matches_weak(&s("z")));
}

#[test]
fn ten_thousand_tags_are_rejected_fast_and_clearly() {
    // Short tags: the count limit trips.
    let v = "\"a\",".repeat(10_000).into_bytes();
    assert!(v.len() <= MAX_LIST_BYTES);
    let started = std::time::Instant::now();
    let err = parse_list(&v).unwrap_err();
    assert_eq!(
        err,
        TagError::TooMany {
            max: MAX_LIST_ENTRIES
        }
    );
    assert_eq!(err.to_string(), "too many entity tags (more than 1024)");
    assert!(started.elapsed() < std::time::Duration::from_millis(200));
    // Exactly at the limit is fine.
    let at_limit: Vec<String> = (0..MAX_LIST_ENTRIES).map(|i| format!("\"t{i}\"")).collect();
    let TagList::Tags(tags) = parse_list(at_limit.join(",").as_bytes()).unwrap() else {
        panic!("expected tags")
    };
    assert_eq!(tags.len(), MAX_LIST_ENTRIES);
    // Realistic 22-character tags: the byte limit trips first, just as fast.
    let real: Vec<String> = (0..10_000).map(|i| format!("\"{i:022}\"")).collect();
    let started = std::time::Instant::now();
    let err = parse_list(real.join(", ").as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            TagError::TooLong {
                max: MAX_LIST_BYTES,
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(200));
}

#[test]
fn overlong_values_are_rejected() {
    let long = vec![b' '; MAX_LIST_BYTES + 1];
    assert!(matches!(parse_list(&long), Err(TagError::TooLong { .. })));
    let mut tag = b"\"".to_vec();
    tag.extend(std::iter::repeat_n(b'a', MAX_TAG_BYTES + 1));
    tag.push(b'"');
    assert!(matches!(parse_list(&tag), Err(TagError::TooLong { .. })));
    assert!(matches!(
        EntityTag::parse(&tag),
        Err(TagError::TooLong { .. })
    ));
    assert!(EntityTag::strong("a".repeat(MAX_TAG_BYTES + 1)).is_err());
    // Many field lines together are bounded too.
    let line = vec![b','; 40_000];
    assert!(matches!(
        parse_list_lines([&line[..], &line[..]]),
        Err(TagError::TooLong { .. })
    ));
}

#[test]
fn field_lines_combine_as_one_list() {
    let list = parse_list_lines([&b"\"a\""[..], b"W/\"b\""]).unwrap();
    assert_eq!(list, TagList::Tags(vec![s("a"), w("b")]));
    assert_eq!(
        parse_list_lines([&b"*"[..], b"\"a\""]).unwrap_err(),
        TagError::MisplacedStar
    );
}

#[test]
fn derived_tags_are_strong_128_bit_base64url() {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
    let t = tag_of(&h, b"hello");
    assert!(!t.is_weak());
    assert_eq!(t.opaque().len(), 22);
    assert!(
        t.opaque()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    // It is a valid tag, and survives a format/parse round trip.
    assert_eq!(EntityTag::parse(t.to_string().as_bytes()).unwrap(), t);
}

#[test]
fn derived_tags_depend_on_body_and_metadata_only() {
    let headers = |ct: Option<&str>, ce: Option<&str>, cl: Option<&str>| {
        let mut h = HeaderMap::new();
        if let Some(v) = ct {
            h.insert(CONTENT_TYPE, v.parse().unwrap());
        }
        if let Some(v) = ce {
            h.insert(CONTENT_ENCODING, v.parse().unwrap());
        }
        if let Some(v) = cl {
            h.insert(CONTENT_LANGUAGE, v.parse().unwrap());
        }
        h.insert("date", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        h
    };
    let base = tag_of(&headers(Some("text/html"), None, None), b"<p>hi</p>");
    // Same bytes, other unrelated headers: same tag (any replica agrees).
    let mut other = headers(Some("text/html"), None, None);
    other.insert("date", "Mon, 07 Nov 1994 08:49:37 GMT".parse().unwrap());
    other.insert("etag", "\"replica-2\"".parse().unwrap());
    assert_eq!(tag_of(&other, b"<p>hi</p>"), base);
    // Each representation field and the body change it.
    for changed in [
        tag_of(&headers(Some("text/plain"), None, None), b"<p>hi</p>"),
        tag_of(
            &headers(Some("text/html"), Some("gzip"), None),
            b"<p>hi</p>",
        ),
        tag_of(&headers(Some("text/html"), None, Some("en")), b"<p>hi</p>"),
        tag_of(&headers(Some("text/html"), None, None), b"<p>ho</p>"),
        tag_of(&headers(None, None, None), b"<p>hi</p>"),
        tag_of(&headers(Some(""), None, None), b"<p>hi</p>"),
    ] {
        assert_ne!(changed, base);
    }
    // Metadata cannot be shifted between fields or into the body.
    assert_ne!(
        TagHasher::new(Some(b"ab"), None, None).finish(),
        TagHasher::new(Some(b"a"), Some(b"b"), None).finish()
    );
    let mut a = TagHasher::new(Some(b"text/plainx"), None, None);
    a.update(b"y");
    let mut b = TagHasher::new(Some(b"text/plain"), None, None);
    b.update(b"xy");
    assert_ne!(a.finish(), b.finish());
}

#[test]
fn a_known_tag_never_changes() {
    // Replicas of different sidecar versions must agree: pin one value.
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
    let t = tag_of(&h, b"{\"id\":1}");
    assert_eq!(t.opaque(), PINNED);
}
const PINNED: &str = "GZh2mhNsIwrQD-Sd3P3MPQ";

proptest! {
    #[test]
    fn chunking_does_not_change_the_tag(body in proptest::collection::vec(any::<u8>(), 0..4096), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let whole = {
            let mut h = TagHasher::new(Some(b"a/b"), None, None);
            h.update(&body);
            h.finish()
        };
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut h = TagHasher::new(Some(b"a/b"), None, None);
        let mut at = 0;
        for p in points {
            h.update(&body[at..p]);
            at = p;
        }
        h.update(&body[at..]);
        prop_assert_eq!(h.finish(), whole);
    }

    #[test]
    fn list_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_list(&bytes);
        let _ = EntityTag::parse(&bytes);
    }

    #[test]
    fn list_parser_never_panics_on_near_lists(s in r#"[ ,*W/"a-z\t]{0,64}"#) {
        let _ = parse_list(s.as_bytes());
    }

    #[test]
    fn formatted_lists_round_trip(tags in proptest::collection::vec((any::<bool>(), "[!#-~]{0,16}"), 0..32)) {
        let tags: Vec<EntityTag> = tags.into_iter().map(|(weak, o)| EntityTag::new(weak, o).unwrap()).collect();
        let list = TagList::Tags(tags);
        prop_assert_eq!(parse_list(list.to_string().as_bytes()).unwrap(), list);
    }

    #[test]
    fn parsed_lists_are_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(TagList::Tags(tags)) = parse_list(&bytes) {
            prop_assert!(tags.len() <= MAX_LIST_ENTRIES);
            prop_assert!(tags.iter().all(|t| t.opaque().len() <= MAX_TAG_BYTES * 3));
        }
    }
}

// === steady tags ===

fn steady(patterns: &[&str]) -> std::sync::Arc<Steady> {
    let owned: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
    std::sync::Arc::new(Steady::compile(&owned).unwrap().unwrap())
}

fn html() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, "text/html".parse().unwrap());
    h
}

#[test]
fn steady_tags_ignore_the_matches_only() {
    let s = steady(&[r#"csrf" value="[0-9a-f]+""#, r#"nonce="[A-Za-z0-9]+""#]);
    let page = |token: &str, nonce: &str, text: &str| {
        format!(
            r#"<form><input name="csrf" value="{token}"></form><script nonce="{nonce}">{text}</script>"#
        )
    };
    let a = steady_tag(&html(), page("abc1", "N1", "hi").as_bytes(), &s);
    let b = steady_tag(&html(), page("ffff0099", "Nx2", "hi").as_bytes(), &s);
    assert_eq!(a, b, "per-render noise left out");
    let c = steady_tag(&html(), page("abc1", "N1", "hello").as_bytes(), &s);
    assert_ne!(a, c, "a real change is a new tag");
    // Metadata still counts.
    let mut json = HeaderMap::new();
    json.insert(CONTENT_TYPE, "application/json".parse().unwrap());
    assert_ne!(
        a,
        steady_tag(&json, page("abc1", "N1", "hi").as_bytes(), &s)
    );
    // Never equal to the plain tag of anything tested here.
    assert_ne!(a, tag_of(&html(), page("abc1", "N1", "hi").as_bytes()));
}

#[test]
fn a_match_is_a_marker_not_a_deletion() {
    let s = steady(&["TOK[0-9]+"]);
    let t = |body: &str| steady_tag(&HeaderMap::new(), body.as_bytes(), &s);
    assert_eq!(t("aTOK1b"), t("aTOK22b"));
    assert_ne!(t("aTOK1b"), t("ab"), "removing a token field is a change");
    assert_ne!(t("aTOK1b"), t("aTOK1TOK2b"), "so is adding one");
    assert_ne!(t("aTOK1b"), t("a\u{1}b"), "the marker is out of band");
    assert_ne!(t("ab"), t("a\0\0\0\0\0\0\0\u{1}b"));
    // The pattern list is part of the tag.
    let other = steady(&["TOK[0-9]+", "zzz"]);
    assert_ne!(t("ab"), steady_tag(&HeaderMap::new(), b"ab", &other));
}

#[test]
fn past_the_match_bound_the_whole_body_is_tagged() {
    let s = steady(&["x"]);
    let body = vec![b'x'; crate::policy::steady::MAX_MATCHES + 1];
    assert_eq!(
        steady_tag(&HeaderMap::new(), &body, &s),
        tag_of(&HeaderMap::new(), &body)
    );
}

proptest! {
    #[test]
    fn steady_tags_depend_only_on_what_is_kept(
        parts in proptest::collection::vec("[a-z<>= ]{0,20}", 1..6),
        tokens_a in proptest::collection::vec("[0-9a-f]{1,16}", 6),
        tokens_b in proptest::collection::vec("[0-9a-f]{1,16}", 6),
    ) {
        let s = steady(&["tok=[0-9a-f]+;"]);
        let render = |tokens: &[String]| {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                out.push_str(p);
                out.push_str(&format!("tok={};", tokens[i]));
            }
            out
        };
        let (a, b) = (render(&tokens_a), render(&tokens_b));
        prop_assert_eq!(
            steady_tag(&html(), a.as_bytes(), &s),
            steady_tag(&html(), b.as_bytes(), &s)
        );
    }
}
