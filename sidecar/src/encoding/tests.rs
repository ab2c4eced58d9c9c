//! `Accept-Encoding` negotiation and encoded tags, on examples from the RFC
//! and browsers and on generated (and hostile) fields.

use super::*;
use http::HeaderValue;
use proptest::prelude::*;

const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

fn pick(field: Option<&str>, offered: &[Coding]) -> Option<Coding> {
    let mut headers = HeaderMap::new();
    if let Some(f) = field {
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(f).unwrap());
    }
    negotiate(AcceptEncoding::from_headers(&headers).as_ref(), offered)
}

#[test]
fn browsers_and_tools() {
    use Coding::*;
    // Chrome, Firefox, Safari.
    assert_eq!(pick(Some("gzip, deflate, br, zstd"), &ALL), Some(Br));
    assert_eq!(
        pick(Some("gzip, deflate, br, zstd"), &[Gzip, Zstd]),
        Some(Gzip)
    );
    assert_eq!(pick(Some("gzip, deflate, br"), &[Zstd, Gzip]), Some(Gzip));
    // curl without --compressed, and an empty field: identity.
    assert_eq!(pick(None, &ALL), None);
    assert_eq!(pick(Some(""), &ALL), None);
    assert_eq!(pick(Some("identity"), &ALL), None);
    // Nothing we offer.
    assert_eq!(pick(Some("deflate, compress"), &ALL), None);
    assert_eq!(pick(Some("br"), &[]), None);
    // x-gzip and case.
    assert_eq!(pick(Some("X-GZIP"), &ALL), Some(Gzip));
    assert_eq!(pick(Some("BR;Q=1"), &ALL), Some(Br));
}

#[test]
fn weights_refusals_and_star() {
    use Coding::*;
    // The highest weight wins over the server's order.
    assert_eq!(pick(Some("br;q=0.5, gzip"), &ALL), Some(Gzip));
    assert_eq!(pick(Some("gzip;q=0.9, br;q=0.9"), &ALL), Some(Br));
    // q=0 refuses.
    assert_eq!(pick(Some("br;q=0, gzip"), &ALL), Some(Gzip));
    assert_eq!(pick(Some("gzip;q=0"), &[Gzip]), None);
    assert_eq!(pick(Some("gzip;q=0.000"), &[Gzip]), None);
    // `*` covers what is not listed, identity included.
    assert_eq!(pick(Some("*"), &ALL), Some(Br));
    assert_eq!(pick(Some("*;q=0.5, br;q=0"), &ALL), Some(Zstd));
    assert_eq!(pick(Some("*;q=0"), &ALL), None);
    assert_eq!(pick(Some("gzip, *;q=0"), &ALL), Some(Gzip));
    // Identity preferred only when weighted higher than every coding.
    assert_eq!(pick(Some("gzip;q=0.5, identity"), &ALL), None);
    assert_eq!(pick(Some("gzip, identity"), &ALL), Some(Gzip));
    assert_eq!(pick(Some("gzip;q=0.5, *;q=0.8"), &[Gzip]), None);
    assert_eq!(pick(Some("gzip;q=0.5, identity;q=0"), &ALL), Some(Gzip));
    // Nothing acceptable, identity refused: identity all the same.
    assert_eq!(pick(Some("identity;q=0, deflate"), &ALL), None);
    // A coding listed twice takes its lowest weight.
    assert_eq!(pick(Some("br, br;q=0, gzip;q=0.1"), &ALL), Some(Gzip));
    // Several field lines are one list.
    let mut h = HeaderMap::new();
    h.append(ACCEPT_ENCODING, HeaderValue::from_static("br;q=0"));
    h.append(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    assert_eq!(
        negotiate(AcceptEncoding::from_headers(&h).as_ref(), &ALL),
        Some(Gzip)
    );
}

#[test]
fn malformed_elements_never_make_a_coding_acceptable() {
    use Coding::*;
    for field in [
        "br;q=2",
        "br;q=1.5",
        "br;q=abc",
        "br;q=0.1234",
        "br;q=",
        "br;q",
        "br;level=1",
        "br;q=1;q=1",
        "b r",
        "br@",
        ";q=1",
        "\"br\"",
    ] {
        assert_eq!(pick(Some(field), &[Br]), None, "{field}");
        // The valid elements beside it still count.
        assert_eq!(
            pick(Some(&format!("{field}, gzip")), &[Br, Gzip]),
            Some(Gzip),
            "{field}"
        );
    }
    // Whitespace around parts is fine.
    assert_eq!(pick(Some("  br ; q = 0.5 ,gzip;q=0.4"), &ALL), Some(Br));
    // Too long: identity.
    let long = format!("{}br", "x, ".repeat(MAX_ACCEPT_ENCODING_BYTES));
    assert_eq!(pick(Some(&long), &ALL), None);
}

#[test]
fn weights() {
    assert_eq!(parse_weight(b"1"), Some(1000));
    assert_eq!(parse_weight(b"1.000"), Some(1000));
    assert_eq!(parse_weight(b"0.5"), Some(500));
    assert_eq!(parse_weight(b"0.05"), Some(50));
    assert_eq!(parse_weight(b"0.001"), Some(1));
    assert_eq!(parse_weight(b"0"), Some(0));
    assert_eq!(parse_weight(b"0."), Some(0));
    for bad in [&b"1.001"[..], b"2", b".5", b"-0", b"0.0001", b"", b"01"] {
        assert_eq!(parse_weight(bad), None, "{bad:?}");
    }
}

#[test]
fn encoded_tags_round_trip_and_differ_per_coding() {
    let t = EntityTag::strong("Xk3_-abcdefghijklmnopq").unwrap();
    let tags: Vec<EntityTag> = ALL.iter().map(|c| encoded_tag(&t, *c)).collect();
    assert_eq!(tags[0].to_field_value(), "\"Xk3_-abcdefghijklmnopq.br5\"");
    for (tag, coding) in tags.iter().zip(ALL) {
        assert!(!tag.is_weak() && *tag != t);
        assert_eq!(decode_tag(tag), Some((t.clone(), coding)));
        assert!(EntityTag::parse(tag.to_field_value().as_bytes()).is_ok());
    }
    assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
    for other in ["abc", "abc.br", "abc.br4", ".br5", "a.b.br5", "abc.gzip6x"] {
        assert_eq!(
            decode_tag(&EntityTag::strong(other).unwrap()),
            None,
            "{other}"
        );
    }
}

#[test]
fn write_conditions_read_encoded_tags_as_identity() {
    let mut h = HeaderMap::new();
    h.insert(
        "if-match",
        HeaderValue::from_static("\"other\", \"T1.br5\""),
    );
    h.insert("if-none-match", HeaderValue::from_static("\"T2.gzip6\""));
    let c = Conditions::from_headers(&h);
    let mapped = conditions_as_identity(&c);
    let tags = |l: &Option<Result<TagList, crate::tag::TagError>>| match l {
        Some(Ok(TagList::Tags(t))) => t.iter().map(|t| t.opaque().to_owned()).collect::<Vec<_>>(),
        _ => vec![],
    };
    assert_eq!(tags(&mapped.if_match), ["other", "T1"]);
    assert_eq!(tags(&mapped.if_none_match), ["T2"]);
    // Nothing encoded: the same conditions, not a copy.
    let plain = Conditions::from_headers(&HeaderMap::new());
    assert!(matches!(conditions_as_identity(&plain), Cow::Borrowed(_)));
}

fn element() -> impl Strategy<Value = (String, Option<Weight>)> {
    (
        prop_oneof![
            Just("br"),
            Just("zstd"),
            Just("gzip"),
            Just("x-gzip"),
            Just("identity"),
            Just("*"),
            Just("deflate"),
            Just("compress"),
        ],
        proptest::option::of(0u16..=1000),
        any::<bool>(),
    )
        .prop_map(|(name, q, upper)| {
            let name = if upper {
                name.to_ascii_uppercase()
            } else {
                name.to_owned()
            };
            (name, q)
        })
}

fn format_field(elements: &[(String, Option<Weight>)]) -> String {
    elements
        .iter()
        .map(|(n, q)| match q {
            None => n.clone(),
            Some(1000) => format!("{n};q=1"),
            Some(q) => format!("{n};q=0.{q:03}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The weight a generated list gives `name` (lowest of its entries).
fn model_weight(elements: &[(String, Option<Weight>)], name: &str) -> Option<Weight> {
    elements
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            n == name || (name == "gzip" && n == "x-gzip")
        })
        .map(|(_, q)| q.unwrap_or(1000))
        .min()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let a = AcceptEncoding::parse(&bytes);
        let _ = negotiate(Some(&a), &ALL);
    }

    #[test]
    fn negotiation_follows_the_rfc(
        elements in proptest::collection::vec(element(), 0..8),
        offered in proptest::sample::subsequence(ALL.to_vec(), 0..=3).prop_shuffle(),
    ) {
        let field = format_field(&elements);
        let accept = AcceptEncoding::parse(field.as_bytes());
        let got = negotiate(Some(&accept), &offered);
        let star = model_weight(&elements, "*");
        let weight = |c: Coding| model_weight(&elements, c.as_str()).or(star).unwrap_or(0);
        let best = offered.iter().map(|c| weight(*c)).max().unwrap_or(0);
        match got {
            Some(c) => {
                // Offered, acceptable, of the highest weight, the first
                // such in the server's order, and not outweighed by identity.
                prop_assert!(offered.contains(&c));
                prop_assert!(weight(c) > 0);
                prop_assert_eq!(weight(c), best);
                let first = offered.iter().find(|o| weight(**o) == best).copied();
                prop_assert_eq!(Some(c), first);
                let identity = model_weight(&elements, "identity").or(star);
                prop_assert!(identity.is_none_or(|i| i <= best));
            }
            None => {
                // Identity: no offered coding is acceptable, or identity
                // was weighted higher than all of them.
                let identity = model_weight(&elements, "identity").or(star);
                prop_assert!(best == 0 || identity.is_some_and(|i| i > best));
            }
        }
    }

    #[test]
    fn encoded_tags_decode_back(opaque in "[A-Za-z0-9_-]{1,30}") {
        let t = EntityTag::strong(opaque).unwrap();
        for c in ALL {
            prop_assert_eq!(decode_tag(&encoded_tag(&t, c)), Some((t.clone(), c)));
        }
        prop_assert_eq!(decode_tag(&t), None);
    }
}
