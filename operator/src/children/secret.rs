//! The Secrets a store owns, each generated once, then carried into every
//! later apply so it never changes:
//! - the Redis passwords of a managed store (`<store>-redis`): `password`
//!   (the `default`, administrative user) and `sidecar-password` (the
//!   sidecars' ACL user), with `auth.conf` rendered from both (the ACL
//!   users Redis includes; see `redis_config.rs`);
//! - the purge token of every store (`<store>-purge`, key `token`): what the
//!   sidecars' purge API and `sametag-operator invalidate` authenticate with.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::{
    AUTH_CONF_KEY, BuildError, PASSWORD_KEY, PURGE_TOKEN_KEY, SIDECAR_PASSWORD_KEY, meta, names,
    redis_config,
};
use crate::crd::ETagStore;

/// Length of a generated password or token (alphanumeric: URL-safe, ~190
/// bits).
pub const PASSWORD_LEN: usize = 32;

/// The password Secret: `password`, `sidecar-password` and the `auth.conf`
/// rendered from them.
pub fn desired(
    store: &ETagStore,
    password: &str,
    sidecar_password: &str,
) -> Result<Secret, BuildError> {
    let mut secret = opaque(store, names::secret(&name(store)), PASSWORD_KEY, password)?;
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    data.insert(
        SIDECAR_PASSWORD_KEY.to_owned(),
        ByteString(sidecar_password.as_bytes().to_vec()),
    );
    data.insert(
        AUTH_CONF_KEY.to_owned(),
        ByteString(redis_config::auth_conf(store, password, sidecar_password).into_bytes()),
    );
    Ok(secret)
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

/// The sidecars' password already stored in `existing`, if usable.
pub fn existing_sidecar_password(existing: &Secret) -> Option<String> {
    existing_value(existing, SIDECAR_PASSWORD_KEY)
}

/// The purge token already stored in `existing`, if it holds a usable one.
pub fn existing_purge_token(existing: &Secret) -> Option<String> {
    existing_value(existing, PURGE_TOKEN_KEY)
}

fn existing_value(existing: &Secret, key: &str) -> Option<String> {
    let bytes = existing.data.as_ref()?.get(key)?;
    let s = std::str::from_utf8(&bytes.0).ok()?;
    // Only keep values this module could have made: anything else could
    // break the auth.conf line it is written into.
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
    fn secret_holds_the_given_passwords_and_the_acl() {
        let s = desired(&fixtures::managed(), "abc123", "side456").unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("cache-redis"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data[PASSWORD_KEY].0, b"abc123");
        assert_eq!(data[SIDECAR_PASSWORD_KEY].0, b"side456");
        let auth = String::from_utf8(data[AUTH_CONF_KEY].0.clone()).unwrap();
        assert!(
            auth.contains(" >abc123 ") && auth.contains(" >side456 "),
            "{auth}"
        );
        assert_eq!(existing_password(&s).as_deref(), Some("abc123"));
        assert_eq!(existing_sidecar_password(&s).as_deref(), Some("side456"));
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
        let mut s = desired(&fixtures::managed(), "x", "y").unwrap();
        s.data = Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(b"a@b".to_vec()),
        )]));
        assert_eq!(existing_password(&s), None);
        s.data = None;
        assert_eq!(existing_password(&s), None);
    }
}
