//! The Secrets a store owns, each generated once, then carried into every
//! later apply so it never changes:
//! - the Redis password of a managed store (`<store>-redis`, key `password`);
//! - the purge token of every store (`<store>-purge`, key `token`): what the
//!   sidecars' purge API and `sametag-operator invalidate` authenticate with.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::{BuildError, PASSWORD_KEY, PURGE_TOKEN_KEY, meta, names};
use crate::crd::ETagStore;

/// Length of a generated password or token (alphanumeric: URL-safe, ~190
/// bits).
pub const PASSWORD_LEN: usize = 32;

/// The password Secret holding `password`.
pub fn desired(store: &ETagStore, password: &str) -> Result<Secret, BuildError> {
    opaque(store, names::secret(&name(store)), PASSWORD_KEY, password)
}

/// The purge-token Secret holding `token`.
pub fn purge_token(store: &ETagStore, token: &str) -> Result<Secret, BuildError> {
    opaque(store, names::purge(&name(store)), PURGE_TOKEN_KEY, token)
}

fn name(store: &ETagStore) -> String {
    store.metadata.name.clone().unwrap_or_default()
}

fn opaque(store: &ETagStore, name: String, key: &str, value: &str) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: meta(store, name)?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The password already stored in `existing`, if it holds a usable one.
pub fn existing_password(existing: &Secret) -> Option<String> {
    existing_value(existing, PASSWORD_KEY)
}

/// The purge token already stored in `existing`, if it holds a usable one.
pub fn existing_purge_token(existing: &Secret) -> Option<String> {
    existing_value(existing, PURGE_TOKEN_KEY)
}

fn existing_value(existing: &Secret, key: &str) -> Option<String> {
    let bytes = existing.data.as_ref()?.get(key)?;
    let s = std::str::from_utf8(&bytes.0).ok()?;
    // Only keep values this module could have made: anything else would
    // break the redis:// URL the sidecar builds from a password.
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| s.to_owned())
}

/// A fresh random password or token.
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
    fn purge_secret_holds_the_token_and_is_owned_by_any_store() {
        for store in [fixtures::managed(), fixtures::external()] {
            let s = purge_token(&store, "tok3n").unwrap();
            assert_eq!(s.metadata.name.as_deref(), Some("cache-purge"));
            assert_eq!(s.data.as_ref().unwrap()[PURGE_TOKEN_KEY].0, b"tok3n");
            assert_eq!(existing_purge_token(&s).as_deref(), Some("tok3n"));
            assert_eq!(existing_password(&s), None);
            let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.controller, Some(true));
        }
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
