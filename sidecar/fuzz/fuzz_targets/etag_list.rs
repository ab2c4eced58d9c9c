//! Fuzz the entity-tag list parser and precondition evaluation on raw header
//! bytes: never a panic, every parsed list formats and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sametag_sidecar::precondition::{Conditions, Validators, evaluate};
use sametag_sidecar::tag::{EntityTag, MAX_LIST_BYTES, MAX_LIST_ENTRIES, TagList, parse_list};

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = parse_list(data) {
        if let TagList::Tags(tags) = &list {
            assert!(tags.len() <= MAX_LIST_ENTRIES);
        }
        // Lossy (non-UTF-8 obs-text) tags cannot round-trip byte for byte.
        // Formatting may add separator spaces, so skip lists it pushes over
        // the byte limit.
        let formatted = list.to_string();
        if std::str::from_utf8(data).is_ok() && formatted.len() <= MAX_LIST_BYTES {
            assert_eq!(parse_list(formatted.as_bytes()).as_ref(), Ok(&list));
        }
    }
    let _ = EntityTag::parse(data);

    // The same bytes as every precondition field, evaluated for GET and PUT.
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        for name in sametag_sidecar::precondition::CONDITIONAL_HEADERS {
            headers.insert(name, value.clone());
        }
        headers.insert(
            http::header::RANGE,
            http::HeaderValue::from_static("bytes=0-1"),
        );
        let conditions = Conditions::from_headers(&headers);
        let current = Validators {
            tag: EntityTag::strong("abc").expect("a valid tag"),
            last_modified: Some(std::time::UNIX_EPOCH),
        };
        for method in [http::Method::GET, http::Method::PUT] {
            let _ = evaluate(&conditions, &method, Some(&current));
            let _ = evaluate(&conditions, &method, None);
        }
    }
});
