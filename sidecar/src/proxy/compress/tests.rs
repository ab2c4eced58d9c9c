//! Eligibility, `Vary`, the per-tag memory and the compressors' output.

use std::io::Read as _;

use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn compressible_types() {
    for yes in [
        "text/html",
        "text/plain; charset=utf-8",
        "TEXT/CSS",
        "application/json",
        "application/problem+json",
        "application/javascript",
        "application/xml",
        "application/atom+xml",
        "image/svg+xml",
        "application/wasm",
        "font/ttf",
        " application/json ; charset=utf-8",
    ] {
        assert!(compressible(yes.as_bytes()), "{yes}");
    }
    for no in [
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "application/zip",
        "font/woff2",
        "video/mp4",
        "text/event-stream",
        "json",
        "",
    ] {
        assert!(!compressible(no.as_bytes()), "{no}");
    }
}

#[test]
fn eligibility() {
    let json = headers(&[("content-type", "application/json")]);
    assert!(eligible(&json, MIN_BYTES));
    assert!(!eligible(&json, MIN_BYTES - 1));
    // Already encoded (any coding, even a declared identity) is left alone.
    for ce in ["gzip", "br", "identity", "x-custom"] {
        let mut h = json.clone();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(ce));
        assert!(!eligible(&h, 10_000), "{ce}");
    }
    let mut h = json.clone();
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=60, No-Transform"),
    );
    assert!(!eligible(&h, 10_000));
    assert!(!eligible(&HeaderMap::new(), 10_000), "no Content-Type");
    assert!(!eligible(
        &headers(&[("content-type", "image/png")]),
        10_000
    ));
}

#[test]
fn vary_is_merged_once() {
    let mut h = HeaderMap::new();
    vary_accept_encoding(&mut h);
    vary_accept_encoding(&mut h);
    assert_eq!(h.get_all(VARY).iter().count(), 1);
    assert_eq!(h[VARY], "Accept-Encoding");
    let mut h = headers(&[("vary", "Accept-Language")]);
    vary_accept_encoding(&mut h);
    let all: Vec<_> = h.get_all(VARY).iter().collect();
    assert_eq!(all, ["Accept-Language", "Accept-Encoding"]);
    let mut h = headers(&[("vary", "origin, accept-encoding")]);
    vary_accept_encoding(&mut h);
    assert_eq!(h.get_all(VARY).iter().count(), 1);
}

#[test]
fn eligibility_memory_is_bounded_and_keeps_recent_tags() {
    let e = Eligibility::default();
    let tag = |i: usize| EntityTag::strong(format!("t{i}")).unwrap();
    assert_eq!(e.get(&tag(0)), None);
    e.remember(&tag(0), true);
    e.remember(&tag(1), false);
    assert_eq!(e.get(&tag(0)), Some(true));
    assert_eq!(e.get(&tag(1)), Some(false));
    e.remember(&tag(1), true);
    assert_eq!(e.get(&tag(1)), Some(true));
    for i in 2..(3 * ELIGIBILITY_CAPACITY) {
        e.remember(&tag(i), i.is_multiple_of(2));
    }
    let g = e.0.lock().unwrap();
    assert!(g.new.len() + g.old.len() <= 2 * ELIGIBILITY_CAPACITY);
    drop(g);
    let last = 3 * ELIGIBILITY_CAPACITY - 1;
    assert_eq!(e.get(&tag(last)), Some(last.is_multiple_of(2)));
    assert_eq!(e.get(&tag(0)), None, "long gone");
}

fn decode(coding: Coding, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        Coding::Gzip => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        Coding::Br => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Coding::Zstd => out = zstd::decode_all(bytes).unwrap(),
    }
    out
}

/// A fixed, JSON-like input of ~40 KiB (over [`INLINE_MAX`]).
fn sample() -> Vec<u8> {
    let mut s = String::from("[");
    for i in 0..600 {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a{}\",\"b{}\"],\"price\":{}.{:02}}},",
            i % 7,
            i % 13,
            i * 3 % 101,
            i % 100
        ));
    }
    s.push_str("{}]");
    s.into_bytes()
}

#[test]
fn compressors_round_trip_and_shrink() {
    let input = sample();
    for coding in Coding::ALL {
        let out = compress(coding, &input).unwrap();
        assert!(out.len() < input.len() / 3, "{coding:?}: {}", out.len());
        assert_eq!(decode(coding, &out), input, "{coding:?}");
        assert_eq!(decode(coding, &compress(coding, b"").unwrap()), b"");
    }
}

/// The tag of an encoded representation is a pure function of the identity
/// tag and the profile (`encoding::profile`), so the bytes each profile
/// emits are pinned here. If this fails after a dependency or level change,
/// the output changed: give the coding a new profile suffix (so no client
/// holds a strong tag for different bytes), then update the hashes.
#[test]
fn compressor_output_is_pinned_per_profile() {
    let input = sample();
    let pinned = [
        (Coding::Br, "br5", "2cf6b1f396e69481"),
        (Coding::Zstd, "zstd3", "d707f9dc0bae86c2"),
        (Coding::Gzip, "gzip6", "1b3dba4683bdd26d"),
    ];
    let mut got = Vec::new();
    for (coding, profile, _) in pinned {
        assert_eq!(crate::encoding::profile(coding), profile);
        let out = compress(coding, &input).unwrap();
        // Deterministic within a build.
        assert_eq!(compress(coding, &input).unwrap(), out);
        let hash = blake3::hash(&out).to_hex().to_string();
        got.push((coding, profile, hash[..16].to_owned()));
    }
    let want: Vec<_> = pinned
        .iter()
        .map(|(c, p, h)| (*c, *p, (*h).to_owned()))
        .collect();
    assert_eq!(got, want, "a compressor's output changed");
}

#[tokio::test]
async fn large_bodies_compress_off_the_runtime_and_hold_budget() {
    let metrics = crate::metrics::Metrics::new();
    let budget = crate::proxy::budget::TagBudget::new(1 << 20, &metrics);
    let input = Bytes::from(sample());
    let mut r = budget.reservation();
    assert!(r.grow_to(input.len() as u64));
    let out = encode(Coding::Br, input.clone(), r).await.unwrap();
    assert_eq!(decode(Coding::Br, &out), input);
    assert!(budget.in_use() >= out.len() as u64 && budget.in_use() < input.len() as u64);
    drop(out);
    assert_eq!(budget.in_use(), 0);
}
