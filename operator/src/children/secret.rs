//! The Redis password Secret of a managed store: generated once, then the
//! existing password is carried into every later apply so it never changes.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::{BuildError, PASSWORD_KEY, meta, names};
use crate::crd::ETagStore;

/// Length of a generated password (alphanumeric: URL-safe, ~190 bits).
pub const PASSWORD_LEN: usize = 32;

/// The password Secret holding `password`.
pub fn desired(store: &ETagStore, password: &str) -> Result<Secret, BuildError> {
    let name = store.metadata.name.clone().unwrap_or_default();
    Ok(Secret {
        metadata: meta(store, names::secret(&name))?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The password already stored in `existing`, if it holds a usable one.
pub fn existing_password(existing: &Secret) -> Option<String> {
    let bytes = existing.data.as_ref()?.get(PASSWORD_KEY)?;
    let s = std::str::from_utf8(&bytes.0).ok()?;
    // Only keep passwords this module could have made: anything else would
    // break the redis:// URL the sidecar builds from it.
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| s.to_owned())
}

/// A fresh random password.
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures;

    #[test]
    fn secret_holds_the_given_password() {
        let s = desired(&fixtures::managed(), "abc123").unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("cache-redis"));
        assert_eq!(s.data.as_ref().unwrap()[PASSWORD_KEY].0, b"abc123");
        assert_eq!(existing_password(&s).as_deref(), Some("abc123"));
    }

    #[test]
    fn generated_passwords_are_long_random_and_url_safe() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn unusable_existing_password_is_ignored() {
        let mut s = desired(&fixtures::managed(), "x").unwrap();
        s.data = Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(b"a@b".to_vec()),
        )]));
        assert_eq!(existing_password(&s), None);
        s.data = None;
        assert_eq!(existing_password(&s), None);
    }
}
