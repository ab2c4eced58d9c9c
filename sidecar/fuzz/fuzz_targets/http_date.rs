//! Fuzz the HTTP-date parser: never a panic, and any accepted date formats
//! as IMF-fixdate and parses back to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sametag_sidecar::date::{fmt_http_date, parse_http_date};

fuzz_target!(|data: &[u8]| {
    if let Some(t) = parse_http_date(data) {
        assert_eq!(parse_http_date(fmt_http_date(t).as_bytes()), Some(t));
    }
});
