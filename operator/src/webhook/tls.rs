//! The webhook's certificates: a self-signed CA and a serving certificate
//! kept in one Secret (created or reused on start, renewed before expiry),
//! (the CA goes into the MutatingWebhookConfiguration through
//! [`super::config::set_client_config`]), and a rustls
//! certificate resolver that swaps in a renewed certificate without a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};
use crate::owner;

/// Secret keys.
pub const CA_CRT: &str = "ca.crt";
/// Secret keys.
pub const CA_KEY: &str = "ca.key";
/// Secret keys.
pub const TLS_CRT: &str = "tls.crt";
/// Secret keys.
pub const TLS_KEY: &str = "tls.key";
/// Annotation: serving certificate expiry (RFC 3339).
pub const NOT_AFTER: &str = "sametag.dev/not-after";
/// Annotation: CA expiry (RFC 3339).
pub const CA_NOT_AFTER: &str = "sametag.dev/ca-not-after";
/// Annotation: the SANs the serving certificate was issued for.
pub const SANS: &str = "sametag.dev/sans";

const CA_COMMON_NAME: &str = "sametag-webhook-ca";

fn tls_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// The CA and serving certificate, as PEM, with their expiry times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// CA certificate (what goes into caBundle).
    pub ca_pem: String,
    /// CA private key.
    pub ca_key_pem: String,
    /// Serving certificate.
    pub cert_pem: String,
    /// Serving private key.
    pub key_pem: String,
    /// Serving certificate expiry.
    pub not_after: jiff::Timestamp,
    /// CA expiry.
    pub ca_not_after: jiff::Timestamp,
    /// SANs of the serving certificate, comma-separated.
    pub sans: String,
}

/// DNS names and IPs the serving certificate covers.
pub fn sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "sametag");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn to_time(t: jiff::Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|e| Error::Tls(format!("time: {e}")))
}

fn later(now: jiff::Timestamp, d: Duration) -> Result<jiff::Timestamp> {
    let d = jiff::SignedDuration::try_from(d).map_err(|e| Error::Tls(format!("validity: {e}")))?;
    now.checked_add(d)
        .map_err(|e| Error::Tls(format!("validity: {e}")))
}

/// A new CA (valid for 10 x `validity`) and a serving certificate for `sans`.
pub fn generate(sans: &[String], validity: Duration, now: jiff::Timestamp) -> Result<Bundle> {
    let ca_key = KeyPair::generate().map_err(tls_err("CA key"))?;
    let ca_not_after = later(now, validity.saturating_mul(10))?;
    let mut params = ca_params();
    params.not_before = to_time(now - jiff::SignedDuration::from_secs(300))?;
    params.not_after = to_time(ca_not_after)?;
    let ca = params
        .self_signed(&ca_key)
        .map_err(tls_err("CA certificate"))?;
    issue(
        ca.pem(),
        ca_key.serialize_pem(),
        ca_not_after,
        sans,
        validity,
        now,
    )
}

/// A serving certificate for `sans` signed by the CA in `ca_key_pem`.
pub fn issue(
    ca_pem: String,
    ca_key_pem: String,
    ca_not_after: jiff::Timestamp,
    sans: &[String],
    validity: Duration,
    now: jiff::Timestamp,
) -> Result<Bundle> {
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(tls_err("CA key"))?;
    // The issuer is rebuilt from the fixed CA name and the stored key: that is
    // all a signature and the authority key identifier depend on.
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(tls_err("serving key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().cloned().unwrap_or_default(),
    );
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(tls_err("SAN"))?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let not_after = later(now, validity)?.min(ca_not_after);
    params.not_before = to_time(now - jiff::SignedDuration::from_secs(300))?;
    params.not_after = to_time(not_after)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_err("serving certificate"))?;
    Ok(Bundle {
        ca_pem,
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
        ca_not_after,
        sans: sans.join(","),
    })
}

impl Bundle {
    /// The Secret holding this bundle, owned by `owner` (the webhook
    /// configuration, so that uninstalling the release removes it).
    pub fn to_secret(&self, name: &str, namespace: &str, owner: Option<&OwnerReference>) -> Secret {
        let data = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "sametag-operator".to_owned(),
                )])),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER.to_owned(), self.not_after.to_string()),
                    (CA_NOT_AFTER.to_owned(), self.ca_not_after.to_string()),
                    (SANS.to_owned(), self.sans.clone()),
                ])),
                owner_references: owner.map(|o| vec![o.clone()]),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (CA_CRT.to_owned(), data(&self.ca_pem)),
                (CA_KEY.to_owned(), data(&self.ca_key_pem)),
                (TLS_CRT.to_owned(), data(&self.cert_pem)),
                (TLS_KEY.to_owned(), data(&self.key_pem)),
            ])),
            ..Secret::default()
        }
    }

    /// Read a bundle back; `None` when anything is missing or unparsable.
    pub fn from_secret(secret: &Secret) -> Option<Bundle> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        let ann = secret.metadata.annotations.as_ref()?;
        Some(Bundle {
            ca_pem: text(CA_CRT)?,
            ca_key_pem: text(CA_KEY)?,
            cert_pem: text(TLS_CRT)?,
            key_pem: text(TLS_KEY)?,
            not_after: ann.get(NOT_AFTER)?.parse().ok()?,
            ca_not_after: ann.get(CA_NOT_AFTER)?.parse().ok()?,
            sans: ann.get(SANS)?.clone(),
        })
    }

    /// What to do with this bundle at `now`.
    pub fn plan(&self, sans: &[String], renew_before: Duration, now: jiff::Timestamp) -> Plan {
        let Ok(margin) = jiff::SignedDuration::try_from(renew_before) else {
            return Plan::NewCa;
        };
        if self.ca_not_after - margin <= now {
            Plan::NewCa
        } else if self.not_after - margin <= now || self.sans != sans.join(",") {
            Plan::Reissue
        } else {
            Plan::Keep
        }
    }

    /// The rustls key for the serving certificate.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        certified_key(&self.cert_pem, &self.key_pem)
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("serving certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Tls(format!("serving key PEM: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider)
        .map(Arc::new)
        .map_err(|e| Error::Tls(format!("serving key: {e}")))
}

/// Decision for a stored bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Still good.
    Keep,
    /// Issue a new serving certificate from the same CA.
    Reissue,
    /// The CA itself is close to expiry: start over.
    NewCa,
}

/// Flags that govern the certificates.
#[derive(Clone, Debug)]
pub struct CertSettings {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// SANs of the serving certificate.
    pub sans: Vec<String>,
    /// Serving certificate validity.
    pub validity: Duration,
    /// Renew this long before expiry.
    pub renew_before: Duration,
}

/// Load the bundle from its Secret, creating or renewing it as needed; a
/// Secret written here is owned by `owner` (and keeps the owners it had).
/// Several replicas may race: create and replace are conditional, and the
/// loser re-reads what the winner wrote.
pub async fn ensure(
    client: &Client,
    s: &CertSettings,
    owner: Option<&OwnerReference>,
) -> Result<Bundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    for _ in 0..3 {
        let now = jiff::Timestamp::now();
        let existing = api.get_opt(&s.secret).await?;
        let (bundle, previous) = match existing.as_ref().map(|sec| (sec, Bundle::from_secret(sec)))
        {
            Some((_, Some(b))) => match b.plan(&s.sans, s.renew_before, now) {
                Plan::Keep => return Ok(b),
                Plan::Reissue => (
                    issue(
                        b.ca_pem.clone(),
                        b.ca_key_pem.clone(),
                        b.ca_not_after,
                        &s.sans,
                        s.validity,
                        now,
                    )?,
                    existing.as_ref(),
                ),
                Plan::NewCa => {
                    let mut fresh = generate(&s.sans, s.validity, now)?;
                    // Trust old and new CA until every caller has the new bundle.
                    fresh.ca_pem = format!("{}{}", fresh.ca_pem, b.ca_pem);
                    (fresh, existing.as_ref())
                }
            },
            Some((_, None)) => (generate(&s.sans, s.validity, now)?, existing.as_ref()),
            None => (generate(&s.sans, s.validity, now)?, None),
        };
        let mut secret = bundle.to_secret(&s.secret, &s.namespace, owner);
        let written = match previous {
            None => api.create(&PostParams::default(), &secret).await,
            Some(prev) => {
                secret.metadata.resource_version = prev.resource_version();
                secret.metadata.owner_references = owner::merged(prev.owner_references(), owner);
                api.replace(&s.secret, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %s.secret, not_after = %bundle.not_after, "webhook certificate written");
                return Ok(bundle);
            }
            // Another replica won the race: read its bundle on the next pass.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Tls(format!(
        "Secret {}/{} keeps changing under us",
        s.namespace, s.secret
    )))
}

// === certificates issued by someone else (cert-manager) ===

/// A serving certificate the operator only reads (`--cert-manager`): the
/// `tls.crt`/`tls.key` of a `kubernetes.io/tls` Secret that cert-manager
/// issues and renews. The operator never writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// `tls.crt` (the chain), to notice a renewal.
    pub cert_pem: String,
    /// `tls.key`.
    pub key_pem: String,
}

impl Issued {
    /// Read from a Secret; `None` until both keys are there.
    pub fn from_secret(secret: &Secret) -> Option<Issued> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            String::from_utf8(data.get(k)?.0.clone())
                .ok()
                .filter(|s| !s.trim().is_empty())
        };
        Some(Issued {
            cert_pem: text(TLS_CRT)?,
            key_pem: text(TLS_KEY)?,
        })
    }

    /// The rustls key for it.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        certified_key(&self.cert_pem, &self.key_pem)
    }
}

/// The issued certificate in Secret `name` of `namespace`, if there is one yet.
pub async fn load_issued(client: &Client, namespace: &str, name: &str) -> Result<Option<Issued>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_opt(name)
        .await?
        .as_ref()
        .and_then(Issued::from_secret))
}

// === impl Resolver ===

/// A rustls certificate resolver whose certificate can be swapped at runtime.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    /// A resolver with no certificate yet (handshakes fail until `set`).
    pub fn new() -> Self {
        Self {
            current: RwLock::new(None),
        }
    }

    /// Serve `key` from the next handshake on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A rustls server config that serves whatever `resolver` holds.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions();
    let mut cfg = match builder {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(resolver),
        // The ring provider supports the default versions; this cannot fail.
        Err(_) => rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(resolver),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn generated_bundle_round_trips_through_a_secret_and_loads_in_rustls() {
        let sans = sans("sametag-webhook", "sametag-system");
        let b = generate(&sans, 90 * DAY, now()).unwrap();
        assert!(b.ca_pem.contains("BEGIN CERTIFICATE"));
        let back = Bundle::from_secret(&b.to_secret("tls", "ns", None)).unwrap();
        assert_eq!(back, b);
        back.certified_key().unwrap();
        assert_eq!(b.plan(&sans, 30 * DAY, now()), Plan::Keep);
    }

    #[test]
    fn secret_is_owned_by_the_webhook_configuration() {
        let b = generate(&sans("svc", "ns"), 90 * DAY, now()).unwrap();
        let cfg = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some("sametag".into()),
                uid: Some("8d5c7c3e-uid".into()),
                ..ObjectMeta::default()
            },
            webhooks: None,
        };
        let owner = owner::owner_reference(&cfg).unwrap();
        let secret = b.to_secret("tls", "ns", Some(&owner));
        assert_eq!(secret.metadata.owner_references, Some(vec![owner.clone()]));
        assert!(owner::is_owned_by(&secret.metadata, &owner));
        // The owner changes nothing else: the bundle reads back the same.
        assert_eq!(Bundle::from_secret(&secret).unwrap(), b);
        assert_eq!(
            b.to_secret("tls", "ns", None).metadata.owner_references,
            None
        );
    }

    #[test]
    fn plan_renews_before_expiry_and_on_san_change() {
        let sans = sans("svc", "ns");
        let b = generate(&sans, 90 * DAY, now()).unwrap();
        let later = now() + jiff::SignedDuration::from_hours(24 * 61);
        assert_eq!(b.plan(&sans, 30 * DAY, later), Plan::Reissue);
        assert_eq!(
            b.plan(&["other".to_owned()], 30 * DAY, now()),
            Plan::Reissue
        );
        let much_later = now() + jiff::SignedDuration::from_hours(24 * 880);
        assert_eq!(b.plan(&sans, 30 * DAY, much_later), Plan::NewCa);
    }

    #[test]
    fn reissued_certificate_chains_to_the_same_ca() {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::ServerName;
        let sans = sans("svc", "ns");
        let b = generate(&sans, 90 * DAY, now()).unwrap();
        let r = issue(
            b.ca_pem.clone(),
            b.ca_key_pem.clone(),
            b.ca_not_after,
            &sans,
            90 * DAY,
            now(),
        )
        .unwrap();
        assert_ne!(r.cert_pem, b.cert_pem);
        // Verify the new leaf against the old CA with webpki, as a client would.
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(b.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(r.cert_pem.as_bytes()).unwrap();
        let when = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            now().as_second() as u64 + 60,
        ));
        for name in ["svc.ns.svc", "localhost", "127.0.0.1"] {
            verifier
                .verify_server_cert(&leaf, &[], &ServerName::try_from(name).unwrap(), &[], when)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn resolver_swaps_certificates() {
        let r = Resolver::new();
        assert!(!r.is_loaded());
        let b = generate(&sans("svc", "ns"), 90 * DAY, now()).unwrap();
        r.set(b.certified_key().unwrap());
        assert!(r.is_loaded());
    }

    #[test]
    fn issued_certificate_loads_from_a_cert_manager_secret() {
        let b = generate(&sans("svc", "ns"), 90 * DAY, now()).unwrap();
        // cert-manager writes tls.crt, tls.key and ca.crt, no annotations.
        let secret = Secret {
            data: Some(BTreeMap::from([
                (
                    TLS_CRT.to_owned(),
                    ByteString(b.cert_pem.clone().into_bytes()),
                ),
                (
                    TLS_KEY.to_owned(),
                    ByteString(b.key_pem.clone().into_bytes()),
                ),
                (CA_CRT.to_owned(), ByteString(b.ca_pem.clone().into_bytes())),
            ])),
            ..Secret::default()
        };
        let issued = Issued::from_secret(&secret).unwrap();
        issued.certified_key().unwrap();
        // Not ours to read back as a Bundle (no CA key): never rewritten.
        assert_eq!(Bundle::from_secret(&secret), None);
        let empty = Secret {
            data: Some(BTreeMap::from([(
                TLS_CRT.to_owned(),
                ByteString(Vec::new()),
            )])),
            ..Secret::default()
        };
        assert_eq!(Issued::from_secret(&empty), None);
    }
}
