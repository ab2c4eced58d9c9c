//! Fuzz request-target canonicalisation (percent normalisation, dot-segment
//! removal, authority): never a panic; the canonical path starts with `/`,
//! has no dot segment, and canonicalising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sametag_sidecar::key::{CanonicalTarget, canonical_authority};

fuzz_target!(|data: &[u8]| {
    let _ = canonical_authority(data, false);
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let parts = |uri: &str| {
        http::Request::get(uri)
            .body(())
            .map(|r| r.into_parts().0)
            .ok()
    };
    let Some(first) = parts(&uri.to_string()) else {
        return;
    };
    let target = CanonicalTarget::of(&first);
    if !target.path.starts_with('/') {
        return; // `*` and other non-path targets stay as sent
    }
    assert!(
        !target.path.split('/').any(|s| s == "." || s == ".."),
        "{target:?}"
    );
    let again = match &target.query {
        Some(q) => format!("{}?{q}", target.path),
        None => target.path.clone(),
    };
    if let Some(second) = parts(&again) {
        let twice = CanonicalTarget::of(&second);
        assert_eq!(twice.path, target.path);
        assert_eq!(twice.query, target.query);
    }
});
