//! Fuzz `Accept-Encoding` parsing and negotiation on raw header bytes: never
//! a panic, and the chosen coding is always one the route offers and the
//! field accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sametag_sidecar::encoding::{AcceptEncoding, decode_tag, encoded_tag, negotiate};
use sametag_sidecar::policy::Coding;
use sametag_sidecar::tag::EntityTag;

fuzz_target!(|data: &[u8]| {
    let accept = AcceptEncoding::parse(data);
    // Every order of every subset of the codings, as a route may list them.
    let orders: [&[Coding]; 6] = [
        &[Coding::Br, Coding::Zstd, Coding::Gzip],
        &[Coding::Gzip, Coding::Zstd, Coding::Br],
        &[Coding::Zstd, Coding::Br],
        &[Coding::Gzip],
        &[Coding::Br],
        &[],
    ];
    for offered in orders {
        if let Some(c) = negotiate(Some(&accept), offered) {
            assert!(offered.contains(&c));
            assert!(accept.weight(c) > 0);
        }
    }
    // The same bytes as header lines, and as a tag to decode.
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::ACCEPT_ENCODING, value.clone());
        headers.append(http::header::ACCEPT_ENCODING, value);
        let _ = negotiate(
            AcceptEncoding::from_headers(&headers).as_ref(),
            &Coding::ALL,
        );
    }
    if let Ok(tag) = EntityTag::parse(data)
        && let Some((identity, coding)) = decode_tag(&tag)
    {
        assert_eq!(encoded_tag(&identity, coding), tag);
    }
});
