use std::time::{Duration, UNIX_EPOCH};

use super::*;
use proptest::prelude::*;

const LM: u64 = 1_700_000_000;
const NOW: u64 = LM + 3600;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn date(secs: u64) -> String {
    crate::date::fmt_http_date(at(secs))
}

fn current(tag: &str) -> Validators {
    Validators {
        tag: EntityTag::strong(tag).unwrap(),
        // Sub-second part: the store's dates are whole seconds, but a date
        // from elsewhere must still compare in whole seconds.
        last_modified: Some(at(LM) + Duration::from_millis(700)),
    }
}

fn conds(headers: &[(&str, &[u8])]) -> Conditions {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    Conditions::from_headers(&h)
}

/// Evaluate `headers` for `method` against current tag "v1" (or none).
fn eval(method: Method, headers: &[(&str, &[u8])], exists: bool) -> Decision {
    let cur = current("v1");
    evaluate_at(&conds(headers), &method, exists.then_some(&cur), at(NOW))
}

const GO: Decision = Decision::Proceed {
    ignore_range: false,
};
const FULL: Decision = Decision::Proceed { ignore_range: true };
const NM: Decision = Decision::NotModified;
const PF: Decision = Decision::PreconditionFailed;

#[test]
fn no_conditions_always_proceed() {
    for m in [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::DELETE,
    ] {
        assert_eq!(eval(m.clone(), &[], true), GO);
        assert_eq!(eval(m, &[], false), GO);
    }
    assert!(conds(&[]).is_empty());
    assert!(!conds(&[("if-modified-since", b"garbage")]).is_empty());
}

#[test]
fn if_match() {
    let g = Method::GET;
    assert_eq!(eval(g.clone(), &[("if-match", b"\"v1\"")], true), GO);
    assert_eq!(
        eval(g.clone(), &[("if-match", b"\"v0\", \"v1\"")], true),
        GO
    );
    assert_eq!(eval(g.clone(), &[("if-match", b"\"v0\"")], true), PF);
    // Strong comparison: a weak tag never matches.
    assert_eq!(eval(g.clone(), &[("if-match", b"W/\"v1\"")], true), PF);
    assert_eq!(eval(Method::PUT, &[("if-match", b"\"v1\"")], true), GO);
    assert_eq!(eval(Method::PUT, &[("if-match", b"\"v0\"")], true), PF);
    // `*`: true iff a representation exists.
    assert_eq!(eval(Method::PUT, &[("if-match", b"*")], true), GO);
    assert_eq!(eval(Method::PUT, &[("if-match", b"*")], false), PF);
    assert_eq!(eval(Method::PUT, &[("if-match", b"\"v1\"")], false), PF);
    // Malformed, empty or over-long: fails closed.
    assert_eq!(eval(Method::PUT, &[("if-match", b"v1")], true), PF);
    assert_eq!(eval(Method::PUT, &[("if-match", b"")], true), PF);
    let many = "\"v1\",".repeat(5000);
    assert_eq!(
        eval(Method::PUT, &[("if-match", many.as_bytes())], true),
        PF
    );
    // Lines combine.
    assert_eq!(
        eval(
            Method::PUT,
            &[("if-match", b"\"v0\""), ("if-match", b"\"v1\"")],
            true
        ),
        GO
    );
}

#[test]
fn if_unmodified_since() {
    let d = |s: u64| date(s).into_bytes();
    assert_eq!(
        eval(Method::PUT, &[("if-unmodified-since", &d(LM))], true),
        GO
    );
    assert_eq!(
        eval(Method::PUT, &[("if-unmodified-since", &d(LM + 1))], true),
        GO
    );
    assert_eq!(
        eval(Method::PUT, &[("if-unmodified-since", &d(LM - 1))], true),
        PF
    );
    // Applies to GET too.
    assert_eq!(
        eval(Method::GET, &[("if-unmodified-since", &d(LM - 1))], true),
        PF
    );
    // Ignored: invalid date, a list of dates, no modification date.
    assert_eq!(
        eval(Method::PUT, &[("if-unmodified-since", b"soon")], true),
        GO
    );
    assert_eq!(
        eval(
            Method::PUT,
            &[
                ("if-unmodified-since", &d(LM - 1)),
                ("if-unmodified-since", &d(LM - 1))
            ],
            true
        ),
        GO
    );
    assert_eq!(
        eval(Method::PUT, &[("if-unmodified-since", &d(LM - 1))], false),
        GO
    );
    let no_date = Validators {
        last_modified: None,
        ..current("v1")
    };
    let c = conds(&[("if-unmodified-since", &d(LM - 1))]);
    assert_eq!(evaluate_at(&c, &Method::PUT, Some(&no_date), at(NOW)), GO);
}

#[test]
fn if_match_takes_precedence_over_if_unmodified_since() {
    let old = date(LM - 100).into_bytes();
    // If-Match true: IUS (which would fail) is not evaluated.
    assert_eq!(
        eval(
            Method::PUT,
            &[("if-match", b"\"v1\""), ("if-unmodified-since", &old)],
            true
        ),
        GO
    );
    // If-Match false: 412 whatever IUS says.
    let new = date(LM + 100).into_bytes();
    assert_eq!(
        eval(
            Method::PUT,
            &[("if-match", b"\"v0\""), ("if-unmodified-since", &new)],
            true
        ),
        PF
    );
}

#[test]
fn if_none_match() {
    // Weak comparison.
    assert_eq!(eval(Method::GET, &[("if-none-match", b"\"v1\"")], true), NM);
    assert_eq!(
        eval(Method::GET, &[("if-none-match", b"W/\"v1\"")], true),
        NM
    );
    assert_eq!(
        eval(Method::HEAD, &[("if-none-match", b"\"x\", W/\"v1\"")], true),
        NM
    );
    assert_eq!(eval(Method::GET, &[("if-none-match", b"\"v0\"")], true), GO);
    // Other methods: 412 instead of 304.
    assert_eq!(eval(Method::PUT, &[("if-none-match", b"\"v1\"")], true), PF);
    assert_eq!(
        eval(Method::DELETE, &[("if-none-match", b"W/\"v1\"")], true),
        PF
    );
    assert_eq!(eval(Method::PUT, &[("if-none-match", b"\"v0\"")], true), GO);
    // `*`: false iff a representation exists (create-only PUT).
    assert_eq!(eval(Method::PUT, &[("if-none-match", b"*")], true), PF);
    assert_eq!(eval(Method::PUT, &[("if-none-match", b"*")], false), GO);
    assert_eq!(eval(Method::GET, &[("if-none-match", b"*")], true), NM);
    assert_eq!(eval(Method::GET, &[("if-none-match", b"*")], false), GO);
    assert_eq!(
        eval(Method::GET, &[("if-none-match", b"\"v1\"")], false),
        GO
    );
    // Malformed: ignored for GET/HEAD, fails closed for writes.
    assert_eq!(eval(Method::GET, &[("if-none-match", b"v1")], true), GO);
    assert_eq!(
        eval(Method::HEAD, &[("if-none-match", b"*, \"v1\"")], true),
        GO
    );
    assert_eq!(eval(Method::PUT, &[("if-none-match", b"*x")], false), PF);
    let many = "\"v1\",".repeat(5000);
    assert_eq!(
        eval(Method::GET, &[("if-none-match", many.as_bytes())], true),
        GO
    );
}

#[test]
fn if_match_passes_then_if_none_match_decides() {
    assert_eq!(
        eval(
            Method::GET,
            &[("if-match", b"\"v1\""), ("if-none-match", b"\"v1\"")],
            true
        ),
        NM
    );
    assert_eq!(
        eval(
            Method::PUT,
            &[("if-match", b"*"), ("if-none-match", b"\"v1\"")],
            true
        ),
        PF
    );
    // If-Match fails first: 412 even for GET with a matching If-None-Match.
    assert_eq!(
        eval(
            Method::GET,
            &[("if-match", b"\"v0\""), ("if-none-match", b"\"v1\"")],
            true
        ),
        PF
    );
    // IUS fails before INM would give 304.
    let old = date(LM - 1).into_bytes();
    assert_eq!(
        eval(
            Method::GET,
            &[("if-unmodified-since", &old), ("if-none-match", b"\"v1\"")],
            true
        ),
        PF
    );
}

#[test]
fn if_modified_since() {
    let d = |s: u64| date(s).into_bytes();
    assert_eq!(
        eval(Method::GET, &[("if-modified-since", &d(LM))], true),
        NM
    );
    assert_eq!(
        eval(Method::HEAD, &[("if-modified-since", &d(LM + 5))], true),
        NM
    );
    assert_eq!(
        eval(Method::GET, &[("if-modified-since", &d(LM - 1))], true),
        GO
    );
    // Obsolete date forms are accepted.
    assert_eq!(
        eval(
            Method::GET,
            &[("if-modified-since", b"Tuesday, 14-Nov-23 22:13:20 GMT")],
            true
        ),
        NM
    );
    // GET/HEAD only.
    assert_eq!(
        eval(Method::PUT, &[("if-modified-since", &d(LM))], true),
        GO
    );
    assert_eq!(
        eval(Method::POST, &[("if-modified-since", &d(LM))], true),
        GO
    );
    // Ignored: invalid, a list, later than now, no date, no representation.
    assert_eq!(
        eval(Method::GET, &[("if-modified-since", b"\xff\xfe")], true),
        GO
    );
    assert_eq!(
        eval(
            Method::GET,
            &[("if-modified-since", &d(LM)), ("if-modified-since", &d(LM))],
            true
        ),
        GO
    );
    assert_eq!(
        eval(Method::GET, &[("if-modified-since", &d(NOW + 60))], true),
        GO
    );
    assert_eq!(
        eval(Method::GET, &[("if-modified-since", &d(NOW))], true),
        NM
    );
    assert_eq!(
        eval(Method::GET, &[("if-modified-since", &d(LM))], false),
        GO
    );
    let no_date = Validators {
        last_modified: None,
        ..current("v1")
    };
    let c = conds(&[("if-modified-since", &d(LM))]);
    assert_eq!(evaluate_at(&c, &Method::GET, Some(&no_date), at(NOW)), GO);
}

#[test]
fn if_none_match_takes_precedence_over_if_modified_since() {
    let fresh = date(LM).into_bytes();
    // INM says changed: IMS (which says unchanged) is not consulted.
    assert_eq!(
        eval(
            Method::GET,
            &[("if-none-match", b"\"v0\""), ("if-modified-since", &fresh)],
            true
        ),
        GO
    );
    // INM says unchanged: 304 even with an old IMS.
    let old = date(LM - 100).into_bytes();
    assert_eq!(
        eval(
            Method::GET,
            &[("if-none-match", b"\"v1\""), ("if-modified-since", &old)],
            true
        ),
        NM
    );
    // A malformed INM is ignored on GET, but its presence still rules out
    // IMS (§13.1.3: "if the request contains an If-None-Match"): full 200.
    assert_eq!(
        eval(
            Method::GET,
            &[("if-none-match", b"bad"), ("if-modified-since", &fresh)],
            true
        ),
        GO
    );
}

#[test]
fn if_range() {
    let range = ("range", &b"bytes=0-9"[..]);
    assert_eq!(
        eval(Method::GET, &[range, ("if-range", b"\"v1\"")], true),
        GO
    );
    assert_eq!(
        eval(Method::GET, &[range, ("if-range", b"\"v0\"")], true),
        FULL
    );
    // Weak tags, dates and garbage never match strongly.
    assert_eq!(
        eval(Method::GET, &[range, ("if-range", b"W/\"v1\"")], true),
        FULL
    );
    let exact = date(LM).into_bytes();
    assert_eq!(
        eval(Method::GET, &[range, ("if-range", &exact)], true),
        FULL
    );
    assert_eq!(eval(Method::GET, &[range, ("if-range", b"v1")], true), FULL);
    assert_eq!(
        eval(
            Method::GET,
            &[range, ("if-range", b"\"v1\""), ("if-range", b"\"v1\"")],
            true
        ),
        FULL
    );
    assert_eq!(
        eval(Method::GET, &[range, ("if-range", b"\"v1\"")], false),
        FULL
    );
    // Without Range, or not a GET: ignored.
    assert_eq!(eval(Method::GET, &[("if-range", b"\"v0\"")], true), GO);
    assert_eq!(
        eval(Method::HEAD, &[range, ("if-range", b"\"v0\"")], true),
        GO
    );
    // A Range without If-Range is the proxy's business: proceed.
    assert_eq!(eval(Method::GET, &[range], true), GO);
    // Earlier steps win: a 304 from If-None-Match comes first.
    assert_eq!(
        eval(
            Method::GET,
            &[range, ("if-range", b"\"v0\""), ("if-none-match", b"\"v1\"")],
            true
        ),
        NM
    );
    assert_eq!(
        eval(
            Method::GET,
            &[range, ("if-range", b"\"v1\""), ("if-match", b"\"v0\"")],
            true
        ),
        PF
    );
}

#[test]
fn connect_options_trace_ignore_preconditions() {
    for m in [Method::OPTIONS, Method::TRACE, Method::CONNECT] {
        assert_eq!(eval(m.clone(), &[("if-match", b"\"nope\"")], true), GO);
        assert_eq!(eval(m, &[("if-none-match", b"*")], true), GO);
    }
}

#[test]
fn write_preconditions_and_428() {
    let put = Method::PUT;
    assert!(conds(&[("if-match", b"\"a\"")]).has_write_precondition());
    assert!(conds(&[("if-match", b"garbage")]).has_write_precondition());
    assert!(conds(&[("if-none-match", b"*")]).has_write_precondition());
    assert!(conds(&[("if-unmodified-since", date(LM).as_bytes())]).has_write_precondition());
    assert!(!conds(&[("if-unmodified-since", b"garbage")]).has_write_precondition());
    assert!(!conds(&[("if-modified-since", date(LM).as_bytes())]).has_write_precondition());
    assert!(!conds(&[]).has_write_precondition());

    assert!(conds(&[]).lacks_required_precondition(&put, true));
    assert!(conds(&[]).lacks_required_precondition(&Method::POST, true));
    assert!(!conds(&[]).lacks_required_precondition(&put, false));
    assert!(!conds(&[]).lacks_required_precondition(&Method::GET, true));
    assert!(!conds(&[("if-match", b"\"a\"")]).lacks_required_precondition(&Method::DELETE, true));
}

#[test]
fn conditional_headers_cover_every_field_parsed() {
    let mut h = HeaderMap::new();
    for name in &CONDITIONAL_HEADERS {
        h.insert(name.clone(), "\"x\"".parse().unwrap());
    }
    let c = Conditions::from_headers(&h);
    assert!(c.if_match.is_some() && c.if_none_match.is_some() && c.if_range.is_some());
    for name in &CONDITIONAL_HEADERS {
        h.remove(name);
    }
    assert!(Conditions::from_headers(&h).is_empty());
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::PUT),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::PATCH),
    ]
}

fn field() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(b"*".to_vec())),
        Just(Some(b"\"v1\"".to_vec())),
        Just(Some(b"W/\"v1\"".to_vec())),
        Just(Some(b"\"v0\"".to_vec())),
        Just(Some(date(LM).into_bytes())),
        Just(Some(date(LM - 10).into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Some),
    ]
}

proptest! {
    /// The bug-tracker lesson: never a 304 without a condition that asked
    /// for it (If-None-Match or If-Modified-Since), and only for GET/HEAD.
    #[test]
    fn not_modified_only_when_asked(
        m in method(),
        im in field(), inm in field(), ims in field(), ius in field(), ir in field(),
        range in any::<bool>(), exists in any::<bool>(),
    ) {
        let mut h = HeaderMap::new();
        for (name, v) in [(IF_MATCH, &im), (IF_NONE_MATCH, &inm), (IF_MODIFIED_SINCE, &ims), (IF_UNMODIFIED_SINCE, &ius), (IF_RANGE, &ir)] {
            if let Some(v) = v
                && let Ok(v) = http::HeaderValue::from_bytes(v)
            {
                h.insert(name, v);
            }
        }
        if range {
            h.insert(RANGE, "bytes=0-1".parse().unwrap());
        }
        let c = Conditions::from_headers(&h);
        let cur = current("v1");
        let d = evaluate_at(&c, &m, exists.then_some(&cur), at(NOW));
        if d == NM {
            prop_assert!(m == Method::GET || m == Method::HEAD);
            prop_assert!(h.contains_key(IF_NONE_MATCH) || h.contains_key(IF_MODIFIED_SINCE));
            prop_assert!(exists);
        }
        if c.is_empty() {
            prop_assert_eq!(d, GO);
        }
        if d == PF && !h.contains_key(IF_MATCH) && !h.contains_key(IF_UNMODIFIED_SINCE) {
            // Only If-None-Match can fail otherwise, and not on GET/HEAD.
            prop_assert!(h.contains_key(IF_NONE_MATCH));
            prop_assert!(m != Method::GET && m != Method::HEAD);
        }
    }
}

#[test]
fn ten_thousand_realistic_tags_are_cheap_and_safe() {
    // 10,000 22-character tags (~260 KB) in one If-None-Match / If-Match.
    let list: Vec<String> = (0..10_000).map(|i| format!("\"{i:022}\"")).collect();
    let value = list.join(", ");
    let started = std::time::Instant::now();
    // Over the bound: ignored on GET (full 200), fails closed on a write.
    assert_eq!(
        eval(Method::GET, &[("if-none-match", value.as_bytes())], true),
        GO
    );
    assert_eq!(
        eval(Method::PUT, &[("if-none-match", value.as_bytes())], true),
        PF
    );
    assert_eq!(
        eval(Method::PUT, &[("if-match", value.as_bytes())], true),
        PF
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}
