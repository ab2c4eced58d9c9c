//! Fuzz the policy file parser: never a panic, errors are one line, and any
//! accepted policy writes out as YAML that reads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sametag_sidecar::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_yaml(text) {
        Ok(policy) => {
            let yaml = policy.to_yaml().expect("a valid policy serialises");
            let again = Policy::from_yaml(&yaml).expect("written policy reads back");
            assert_eq!(again, policy);
            let _ = policy.route("/a/b");
            let _ = policy.watched("/a/b");
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
