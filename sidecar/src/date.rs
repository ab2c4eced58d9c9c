//! HTTP dates (RFC 9110 §5.6.7): parse all three forms a recipient must
//! accept (IMF-fixdate, obsolete RFC 850 and asctime), format IMF-fixdate.
//!
//! Works on raw header bytes: a value that is not ASCII, too long, or not a
//! date is simply `None`, which callers treat as "ignore the field".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest value worth trying; every valid form is under 40 bytes.
const MAX_DATE_BYTES: usize = 64;

/// Parse an `HTTP-date` from a field value (surrounding whitespace allowed).
/// `None` for anything else, including a list of dates.
pub fn parse_http_date(value: &[u8]) -> Option<SystemTime> {
    if value.len() > MAX_DATE_BYTES {
        return None;
    }
    let s = std::str::from_utf8(value).ok()?;
    let s = s.trim_matches([' ', '\t']);
    // httpdate accepts exactly the three RFC forms and rejects the rest.
    httpdate::parse_http_date(s).ok()
}

/// Format as IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), whole seconds.
pub fn fmt_http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// `t` truncated to whole seconds since the epoch: an HTTP-date has no
/// finer resolution, so comparisons must not see sub-second parts. Times
/// before the epoch become the epoch.
pub fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn accepts_the_three_forms_rfc_9110_lists() {
        let want = Some(at(784_111_777));
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date(b"  Sun, 06 Nov 1994 08:49:37 GMT\t"), want);
    }

    #[test]
    fn rejects_what_is_not_one_date() {
        for bad in [
            &b""[..],
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 PST",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"\xff\xfe, 06 Nov 1994 08:49:37 GMT",
            b"1994-11-06T08:49:37Z",
        ] {
            assert_eq!(
                parse_http_date(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_http_date(&[b'x'; 10_000]), None);
    }

    #[test]
    fn formats_imf_fixdate_and_truncates() {
        assert_eq!(
            fmt_http_date(at(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let t = at(10) + Duration::from_millis(999);
        assert_eq!(truncate_to_secs(t), at(10));
        assert_eq!(
            truncate_to_secs(UNIX_EPOCH - Duration::from_secs(5)),
            UNIX_EPOCH
        );
    }

    proptest! {
        #[test]
        fn round_trips(secs in 0u64..253_402_300_800) {
            let t = at(secs);
            prop_assert_eq!(parse_http_date(fmt_http_date(t).as_bytes()), Some(t));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_http_date(&bytes);
        }

        #[test]
        fn never_panics_on_near_dates(s in "[A-Za-z]{3,9},? [0-9]{1,2}[ -][A-Za-z]{3}[ -][0-9]{2,4} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}( GMT)?") {
            let _ = parse_http_date(s.as_bytes());
        }
    }
}
