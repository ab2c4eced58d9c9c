//! Fuzz the parsers of invalidation from outside HTTP: `POST /purge`
//! bodies and `Surrogate-Key` field values. Never a panic; bounded output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sametag_sidecar::surrogate::{
    GlobMarks, KeyId, Labels, MAX_LABELS, MAX_PURGE_ITEMS, parse_keys, parse_purge,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(purge) = parse_purge(data) {
        assert!(purge.paths.len() + purge.globs.len() <= MAX_PURGE_ITEMS);
        assert!(purge.keys.len() <= MAX_PURGE_ITEMS);
        for p in purge.paths.iter().chain(&purge.globs) {
            assert!(p.starts_with('/'));
        }
        // Accepted globs always compile, so none matches everything.
        let marks = GlobMarks::compile(purge.globs.iter().map(|g| (g.as_ref(), 1u64)));
        assert_eq!(marks.len(), purge.globs.len());
    }
    let ids = parse_keys(data.split(|b| *b == b'\n'));
    for id in &ids {
        assert_eq!(KeyId::from_stored(id.as_str()), Some(id.clone()));
    }
    match Labels::of(ids.clone()) {
        Labels::Keys(k) => assert!(k.len() <= MAX_LABELS && k == ids),
        Labels::TooMany => assert!(ids.len() > MAX_LABELS),
    }
});
