//! `sametag-operator check` (also `kubectl sametag check`): diagnose an
//! installation through the kubeconfig, one PASS/WARN/FAIL line per finding.
//!
//! The checks, in order: the CRD (installed, established, the same schema
//! as this binary's), the MutatingWebhookConfiguration and its `caBundle`
//! (a PEM CA that verifies the webhook's serving certificate for the name
//! the apiserver dials), the webhook itself (a `dryRun=All` create of an
//! opted-in pod per store: a pod that comes back with the sidecar proves
//! apiserver → webhook reachability and the `caBundle` at once, and shows
//! the sidecar image injected now), each ETagStore's `Ready`, opted-in pods
//! running without the sidecar, Services that reach injected pods by a
//! numeric `targetPort` (bypassing the sidecar), and pods whose sidecar
//! image differs from what would be injected now.
//!
//! The evaluations are pure functions over the objects read, tested on
//! fixtures; only [`run`] talks to the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http_body_util::BodyExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::{Client, CustomResourceExt, ResourceExt};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::json;

use crate::children::STORE_LABEL;
use crate::crd::ETagStore;
use crate::webhook::inject::{
    self, INJECT, NAMESPACE_ENABLED, SIDECAR_NAME, STORE_ANNOTATION, already_injected,
};
use crate::webhook::tls::TLS_CRT;

/// Flags of `sametag-operator check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Namespace to inspect (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Inspect every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// Exit 1 on warnings too (default: only failures).
    #[arg(long)]
    pub strict: bool,

    /// Namespace the operator runs in (holds the certificate Secret).
    #[arg(long, default_value = "sametag-system")]
    pub operator_namespace: String,

    /// Name of the MutatingWebhookConfiguration (the chart's full name).
    #[arg(long, default_value = "sametag")]
    pub webhook_config_name: String,

    /// Secret holding the webhook's serving certificate.
    #[arg(long, default_value = "sametag-webhook-tls")]
    pub cert_secret: String,

    /// Skip the dry-run pod creates (no `create` on pods needed; the
    /// webhook's reachability and image drift are then not checked).
    #[arg(long)]
    pub no_dry_run: bool,

    /// Per API request.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// As it should be.
    Pass,
    /// Works, but something is off (or could not be checked).
    Warn,
    /// Broken: pods miss the sidecar or get a broken one.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// PASS, WARN or FAIL.
    pub status: Status,
    /// Which check (`crd`, `webhook`, `ca-bundle`, `reachable`, `store`,
    /// `pods`, `service`, `image`).
    pub check: &'static str,
    /// What it is about (`ns/name`, ...).
    pub subject: String,
    /// What was found and, when not a pass, what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {:<9}  {}: {}",
            self.status.label(),
            self.check,
            self.subject,
            self.message
        )
    }
}

fn finding(
    status: Status,
    check: &'static str,
    subject: impl Into<String>,
    message: impl Into<String>,
) -> Finding {
    Finding {
        status,
        check,
        subject: subject.into(),
        message: message.into(),
    }
}

/// The summary line and the exit status the findings call for.
pub fn summary(findings: &[Finding], strict: bool) -> (String, bool) {
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    let (pass, warn, fail) = (
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
    );
    let ok = fail == 0 && (!strict || warn == 0);
    let verdict = if ok { "ok" } else { "NOT OK" };
    (
        format!("{verdict}: {pass} passed, {warn} warnings, {fail} failed"),
        ok,
    )
}

// === CRD ===

/// The installed CRD against this binary's.
pub fn check_crd(installed: Option<&CustomResourceDefinition>) -> Finding {
    let ours = ETagStore::crd();
    let name = ours.metadata.name.clone().unwrap_or_default();
    let Some(installed) = installed else {
        return finding(
            Status::Fail,
            "crd",
            name,
            "not installed: `helm install` the chart or `kubectl apply -f crds/`",
        );
    };
    let established = installed
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established {
        return finding(
            Status::Fail,
            "crd",
            name,
            "installed but not Established (see `kubectl describe crd`)",
        );
    }
    let mut differing = Vec::new();
    for version in &ours.spec.versions {
        let theirs = installed
            .spec
            .versions
            .iter()
            .find(|v| v.name == version.name);
        match theirs {
            None => {
                return finding(
                    Status::Fail,
                    "crd",
                    name,
                    format!(
                        "version {} is not installed: upgrade the CRD (`kubectl apply -f crds/`)",
                        version.name
                    ),
                );
            }
            Some(v) if !v.served => {
                return finding(
                    Status::Fail,
                    "crd",
                    name,
                    format!("version {} is not served", version.name),
                );
            }
            Some(v) => {
                if !same(&v.schema, &version.schema)
                    || !same(&v.subresources, &version.subresources)
                {
                    differing.push(version.name.clone());
                }
            }
        }
    }
    if differing.is_empty() {
        finding(
            Status::Pass,
            "crd",
            name,
            format!(
                "established; {} served with the schema of this binary",
                ours.spec
                    .versions
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        finding(
            Status::Warn,
            "crd",
            name,
            format!(
                "the schema of {} differs from this binary's ({}): the CRD and the operator are from different releases; apply the release's crds/ (`kubectl apply --server-side -f crds/`) or use the matching binary",
                differing.join(", "),
                env!("CARGO_PKG_VERSION")
            ),
        )
    }
}

/// Equal as JSON (what the apiserver stores).
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

// === webhook configuration and caBundle ===

/// The host name the apiserver verifies the serving certificate for.
pub fn dialled_name(cfg: &MutatingWebhookConfiguration) -> Option<String> {
    let cc = &cfg.webhooks.as_ref()?.first()?.client_config;
    if let Some(svc) = &cc.service {
        return Some(format!("{}.{}.svc", svc.name, svc.namespace));
    }
    let url = cc.url.as_deref()?;
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    Some(host.to_owned())
}

/// The configuration, its `caBundle`s, and whether the CA verifies
/// `serving_pem` (the certificate Secret's `tls.crt`, when readable) for
/// the name the apiserver dials, at `now`.
pub fn check_webhook_config(
    name: &str,
    cfg: Option<&MutatingWebhookConfiguration>,
    serving: Result<Option<&[u8]>, String>,
    secret_name: &str,
    now: UnixTime,
) -> Vec<Finding> {
    let Some(cfg) = cfg else {
        return vec![finding(
            Status::Fail,
            "webhook",
            name,
            "MutatingWebhookConfiguration not found: no pod gets the sidecar (install the chart, or run the operator with --manage-webhook-config; --webhook-config-name if it has another name)",
        )];
    };
    let webhooks = cfg.webhooks.clone().unwrap_or_default();
    if webhooks.is_empty() {
        return vec![finding(Status::Fail, "webhook", name, "has no webhooks")];
    }
    let mut out = vec![finding(
        Status::Pass,
        "webhook",
        name,
        format!(
            "{} webhooks ({}), failurePolicy {}",
            webhooks.len(),
            webhooks
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            webhooks
                .iter()
                .map(|w| w.failure_policy.as_deref().unwrap_or("Fail"))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join("/")
        ),
    )];
    let bundles: BTreeSet<Vec<u8>> = webhooks
        .iter()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default()
        })
        .collect();
    if bundles.len() > 1 {
        out.push(finding(
            Status::Warn,
            "ca-bundle",
            name,
            "its webhooks carry different caBundles; the operator writes the same CA into each",
        ));
    }
    let bundle = bundles.into_iter().next().unwrap_or_default();
    if bundle.is_empty() {
        out.push(finding(
            Status::Fail,
            "ca-bundle",
            name,
            "caBundle is empty: the operator has not written its CA yet (is it running? see its log)",
        ));
        return out;
    }
    let mut roots = rustls::RootCertStore::empty();
    let mut parsed = 0;
    for cert in CertificateDer::pem_slice_iter(&bundle) {
        let Ok(cert) = cert else {
            parsed = 0;
            break;
        };
        if roots.add(cert).is_ok() {
            parsed += 1;
        }
    }
    if parsed == 0 {
        out.push(finding(
            Status::Fail,
            "ca-bundle",
            name,
            "caBundle is not a valid PEM CA certificate: the apiserver cannot call the webhook; restart the operator to rewrite it",
        ));
        return out;
    }
    let Some(host) = dialled_name(cfg) else {
        out.push(finding(
            Status::Warn,
            "ca-bundle",
            name,
            "clientConfig names neither a Service nor an https:// URL",
        ));
        return out;
    };
    let pem = match serving {
        Ok(Some(pem)) => pem,
        Ok(None) => {
            out.push(finding(
                Status::Warn,
                "ca-bundle",
                name,
                format!(
                    "caBundle holds a CA, but Secret {secret_name} has no {TLS_CRT}: only the dry run can tell whether it verifies the serving certificate"
                ),
            ));
            return out;
        }
        Err(why) => {
            out.push(finding(
                Status::Warn,
                "ca-bundle",
                name,
                format!(
                    "caBundle holds a CA; cannot read Secret {secret_name} ({why}), so only the dry run tests the serving certificate"
                ),
            ));
            return out;
        }
    };
    let Ok(leaf) = CertificateDer::from_pem_slice(pem) else {
        out.push(finding(
            Status::Fail,
            "ca-bundle",
            name,
            format!("Secret {secret_name}: {TLS_CRT} is not a PEM certificate"),
        ));
        return out;
    };
    let verified = ServerName::try_from(host.clone())
        .map_err(|e| e.to_string())
        .and_then(|server| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            verifier
                .verify_server_cert(&leaf, &[], &server, &[], now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    out.push(match verified {
        Ok(()) => finding(
            Status::Pass,
            "ca-bundle",
            name,
            format!("a valid CA that verifies the serving certificate in {secret_name} for {host}"),
        ),
        Err(e) => finding(
            Status::Fail,
            "ca-bundle",
            name,
            format!(
                "does not verify the serving certificate in {secret_name} for {host} ({e}): the apiserver's calls fail and, with failurePolicy Ignore, pods start without the sidecar; restart the operator so it rewrites the caBundle"
            ),
        ),
    });
    out
}

// === the webhook, by dry run ===

/// The pod a dry run creates: opted in for `store`, restricted-compliant
/// (so Pod Security admission does not refuse it) and with resources (so a
/// ResourceQuota does not).
pub fn probe_pod(store: Option<&str>) -> Pod {
    let mut annotations = BTreeMap::from([(INJECT.to_owned(), "true".to_owned())]);
    if let Some(s) = store {
        annotations.insert(STORE_ANNOTATION.to_owned(), s.to_owned());
    }
    let v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "sametag-check-",
            "annotations": annotations,
            "labels": { "app.kubernetes.io/name": "sametag-check" },
        },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "app",
                "image": "registry.invalid/sametag-check:0",
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "resources": { "limits": { "cpu": "10m", "memory": "16Mi" } },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    });
    serde_json::from_value(v).unwrap_or_default()
}

/// What the apiserver answered a dry-run create.
pub enum DryRun {
    /// The pod as admitted, and the `Warning` headers.
    Admitted(Box<Pod>, Vec<String>),
    /// Refused (status code, message).
    Refused(u16, String),
}

/// The sidecar of `pod`, if injected.
fn sidecar(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == SIDECAR_NAME)
}

/// Judge one dry run in `ns` for `store` (none: a namespace without
/// stores, where the webhook's "no ETagStore" warning proves it answered).
/// Returns the finding and the sidecar image injected now.
pub fn judge_dry_run(ns: &str, store: Option<&str>, answer: &DryRun) -> (Finding, Option<String>) {
    let subject = match store {
        Some(s) => format!("{ns}/{s}"),
        None => ns.to_owned(),
    };
    let (pod, warnings) = match answer {
        DryRun::Refused(code, msg) => {
            return (
                finding(
                    Status::Warn,
                    "reachable",
                    subject,
                    format!(
                        "the dry-run pod was refused ({code}: {msg}), so the webhook could not be tested"
                    ),
                ),
                None,
            );
        }
        DryRun::Admitted(pod, warnings) => (pod, warnings),
    };
    let ours: Vec<&String> = warnings
        .iter()
        .filter(|w| w.starts_with("sametag:"))
        .collect();
    if let Some(sc) = sidecar(pod) {
        let image = sc.image.clone().unwrap_or_default();
        return (
            finding(
                Status::Pass,
                "reachable",
                subject,
                format!(
                    "a dry-run pod came back with the sidecar ({image}): the apiserver reaches the webhook and trusts its certificate"
                ),
            ),
            Some(image),
        );
    }
    match (store, ours.first()) {
        (None, Some(w)) => (
            finding(
                Status::Pass,
                "reachable",
                subject,
                format!("the webhook answered a dry-run pod ({w})"),
            ),
            None,
        ),
        (Some(_), Some(w)) => (
            finding(
                Status::Fail,
                "reachable",
                subject,
                format!("the webhook answered but did not inject: {w}"),
            ),
            None,
        ),
        (_, None) => (
            finding(
                Status::Fail,
                "reachable",
                subject,
                "a dry-run opted-in pod came back without the sidecar and without a word from the webhook: the apiserver could not call it (operator down, Service or URL unreachable, or a caBundle that does not verify its certificate) and failurePolicy Ignore admitted the pod as is; the apiserver log says `failed calling webhook`",
            ),
            None,
        ),
    }
}

// === stores ===

/// An ETagStore's `Ready` condition.
pub fn check_store(store: &ETagStore) -> Finding {
    let subject = format!(
        "{}/{}",
        store.namespace().unwrap_or_default(),
        store.name_any()
    );
    let Some(status) = store.status.as_ref() else {
        return finding(
            Status::Fail,
            "store",
            subject,
            "no status yet: the operator has not reconciled it (is it running, and does it watch this namespace?)",
        );
    };
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let stale = status.observed_generation.unwrap_or(0) < store.metadata.generation.unwrap_or(0);
    match ready {
        Some(c) if c.status == "True" && !stale => finding(
            Status::Pass,
            "store",
            subject,
            format!(
                "Ready ({}; {} injected pods)",
                status.endpoint.as_deref().unwrap_or("no endpoint"),
                status.injected_pods
            ),
        ),
        Some(c) if c.status == "True" => finding(
            Status::Warn,
            "store",
            subject,
            format!(
                "Ready, but generation {} is not reconciled yet (observed {}): is the operator running?",
                store.metadata.generation.unwrap_or(0),
                status.observed_generation.unwrap_or(0)
            ),
        ),
        Some(c) => finding(
            Status::Fail,
            "store",
            subject,
            format!("Ready={} ({}): {}", c.status, c.reason, c.message),
        ),
        None => finding(Status::Fail, "store", subject, "no Ready condition yet"),
    }
}

// === pods ===

/// Whether the webhook considers pods of this namespace at all, and whether
/// the namespace label opts them in.
#[derive(Clone, Copy, Debug, Default)]
pub struct NamespaceInfo {
    /// `sametag.dev/inject=enabled`.
    pub enabled: bool,
    /// `sametag.dev/inject=disabled`, or a namespace the webhook never
    /// sees (system namespaces, the operator's).
    pub excluded: bool,
}

fn live(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, "Succeeded" | "Failed")
}

fn pod_subject(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// At most this many pods are named per line.
const MAX_NAMED: usize = 5;

fn some_names(pods: &[&Pod]) -> String {
    let mut names: Vec<String> = pods.iter().take(MAX_NAMED).map(|p| p.name_any()).collect();
    if pods.len() > MAX_NAMED {
        names.push(format!("and {} more", pods.len() - MAX_NAMED));
    }
    names.join(", ")
}

/// Opted-in pods that run without the sidecar.
pub fn check_pods(pods: &[Pod], namespaces: &BTreeMap<String, NamespaceInfo>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut opted = 0;
    for pod in pods.iter().filter(|p| live(p)) {
        let ns = pod.namespace().unwrap_or_default();
        let info = namespaces.get(&ns).copied().unwrap_or_default();
        if info.excluded || !inject::wants_injection(pod, info.enabled) {
            continue;
        }
        opted += 1;
        if !already_injected(pod) {
            out.push(finding(
                Status::Fail,
                "pods",
                pod_subject(pod),
                "opted in but runs without the sidecar, so it mints its own ETags (admitted while the webhook was down or refused to inject; see its Events): delete it, or `kubectl rollout restart` its workload, to get it injected",
            ));
        }
    }
    if out.is_empty() {
        out.push(finding(
            Status::Pass,
            "pods",
            "opted in",
            format!("{opted} live opted-in pods, all with the sidecar"),
        ));
    }
    out
}

/// Services whose numeric `targetPort` reaches injected pods past the
/// sidecar.
pub fn check_services(services: &[Service], pods: &[Pod]) -> Vec<Finding> {
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let selected: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && live(p))
            .filter(|p| already_injected(p))
            .filter(|p| {
                let labels = p.labels();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        let Some(first) = selected.first() else {
            continue;
        };
        let sidecar_ports: BTreeMap<i32, Option<String>> = selected
            .iter()
            .filter_map(|p| sidecar(p))
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (p.container_port, p.name.clone()))
            .collect();
        for port in spec.ports.iter().flatten() {
            let target = match &port.target_port {
                Some(IntOrString::Int(n)) => *n,
                None => port.port,
                Some(IntOrString::String(_)) => continue,
            };
            if sidecar_ports.contains_key(&target) {
                continue;
            }
            let hint = sidecar(first)
                .and_then(|c| c.ports.as_ref()?.first()?.name.clone())
                .map(|n| format!(" (targetPort: {n})"))
                .unwrap_or_default();
            out.push(finding(
                Status::Warn,
                "service",
                format!("{ns}/{}", svc.name_any()),
                format!(
                    "port {} targets {target} by number, which bypasses the sidecar of {} injected pods ({}): target the port by name{hint}",
                    port.port,
                    selected.len(),
                    some_names(&selected)
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(finding(
            Status::Pass,
            "service",
            "targetPorts",
            "no Service reaches injected pods by a numeric targetPort",
        ));
    }
    out
}

/// Injected pods whose sidecar image is not what `expected` (per
/// `namespace/store`) says the webhook injects now.
pub fn check_images(pods: &[Pod], expected: &BTreeMap<String, String>) -> Vec<Finding> {
    let mut drifted: BTreeMap<(String, String), Vec<&Pod>> = BTreeMap::new();
    let mut compared = 0;
    for pod in pods.iter().filter(|p| live(p)) {
        let Some(sc) = sidecar(pod) else { continue };
        let Some(store) = pod.labels().get(STORE_LABEL) else {
            continue;
        };
        let key = format!("{}/{store}", pod.namespace().unwrap_or_default());
        let Some(want) = expected.get(&key) else {
            continue;
        };
        compared += 1;
        let have = sc.image.clone().unwrap_or_default();
        if &have != want {
            drifted.entry((key, have)).or_default().push(pod);
        }
    }
    if drifted.is_empty() {
        return vec![finding(
            Status::Pass,
            "image",
            "sidecars",
            format!("{compared} injected pods run the sidecar image the webhook injects now"),
        )];
    }
    drifted
        .into_iter()
        .map(|((store, have), pods)| {
            finding(
                Status::Warn,
                "image",
                store.clone(),
                format!(
                    "{} pods run sidecar {have}, the webhook now injects {} ({}): `kubectl rollout restart` their workloads",
                    pods.len(),
                    expected.get(&store).cloned().unwrap_or_default(),
                    some_names(&pods)
                ),
            )
        })
        .collect()
}

// === the command ===

/// Why the check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No kubeconfig or in-cluster config.
    #[error("cannot reach the cluster: {0}")]
    Kube(#[from] kube::Error),
}

/// Where to look.
enum Scope {
    One(String),
    All,
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self {
            Scope::One(ns) => Api::namespaced(client.clone(), ns),
            Scope::All => Api::all(client.clone()),
        }
    }
}

/// Namespaces the webhook configuration never sends (see
/// `deploy/webhook.yaml`), besides the operator's.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Run the checks, print the report; whether the exit status is 0.
pub async fn run(args: CheckArgs) -> Result<bool, CheckError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| CheckError::Kube(kube::Error::InferConfig(e)))?;
    config.read_timeout = Some(args.timeout);
    config.connect_timeout = Some(args.timeout);
    let client = Client::try_from(config)?;
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::One(
            args.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        )
    };
    let mut findings = Vec::new();
    let mut emit = |fs: Vec<Finding>| {
        for f in fs {
            println!("{f}");
            findings.push(f);
        }
    };
    let api_error = |check: &'static str, what: &str, e: kube::Error| {
        finding(Status::Fail, check, what, format!("cannot read: {e}"))
    };

    // 1. The CRD.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = ETagStore::crd().metadata.name.unwrap_or_default();
    emit(vec![match crds.get_opt(&crd_name).await {
        Ok(found) => check_crd(found.as_ref()),
        Err(e) => api_error("crd", &crd_name, e),
    }]);

    // 2. The webhook configuration and its caBundle.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.operator_namespace);
    let secret_name = format!("{}/{}", args.operator_namespace, args.cert_secret);
    let serving: Result<Option<Vec<u8>>, String> = match secrets.get_opt(&args.cert_secret).await {
        Ok(Some(s)) => Ok(s.data.and_then(|mut d| d.remove(TLS_CRT)).map(|b| b.0)),
        Ok(None) => Err("not found".into()),
        Err(kube::Error::Api(s)) if s.code == 403 => Err("forbidden".into()),
        Err(e) => Err(e.to_string()),
    };
    let now = UnixTime::now();
    emit(match mwcs.get_opt(&args.webhook_config_name).await {
        Ok(cfg) => check_webhook_config(
            &args.webhook_config_name,
            cfg.as_ref(),
            serving.as_ref().map(|v| v.as_deref()).map_err(Clone::clone),
            &secret_name,
            now,
        ),
        Err(e) => vec![api_error("webhook", &args.webhook_config_name, e)],
    });

    // 3. The stores.
    let stores = match scope
        .api::<ETagStore>(&client)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => {
            let mut items = l.items;
            items.sort_by_key(|s| (s.namespace(), s.name_any()));
            items
        }
        Err(e) => {
            emit(vec![api_error("store", "ETagStores", e)]);
            Vec::new()
        }
    };
    if stores.is_empty() {
        emit(vec![finding(
            Status::Warn,
            "store",
            scope_name(&scope),
            "no ETagStore: opted-in pods are admitted without the sidecar until one exists",
        )]);
    }
    emit(stores.iter().map(check_store).collect());

    // 4. The webhook, by dry run; what it injects now.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    if args.no_dry_run {
        emit(vec![finding(
            Status::Warn,
            "reachable",
            scope_name(&scope),
            "not checked (--no-dry-run)",
        )]);
    } else {
        let mut probes: Vec<(String, Option<String>)> = stores
            .iter()
            .map(|s| (s.namespace().unwrap_or_default(), Some(s.name_any())))
            .collect();
        if probes.is_empty() {
            let ns = match &scope {
                Scope::One(ns) => ns.clone(),
                Scope::All => "default".to_owned(),
            };
            probes.push((ns, None));
        }
        for (ns, store) in probes {
            let answer = dry_run(&client, &ns, &probe_pod(store.as_deref())).await;
            let (f, image) = match answer {
                Ok(a) => judge_dry_run(&ns, store.as_deref(), &a),
                Err(e) => (api_error("reachable", &format!("{ns} dry run"), e), None),
            };
            if let (Some(store), Some(image)) = (store, image) {
                expected.insert(format!("{ns}/{store}"), image);
            }
            emit(vec![f]);
        }
    }

    // 5. Pods, Services, images.
    let pods = match scope.api::<Pod>(&client).list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            emit(vec![api_error("pods", "Pods", e)]);
            Vec::new()
        }
    };
    let namespaces = namespace_info(&client, &scope, &args.operator_namespace, &pods).await;
    emit(check_pods(&pods, &namespaces));
    match scope
        .api::<Service>(&client)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => emit(check_services(&l.items, &pods)),
        Err(e) => emit(vec![api_error("service", "Services", e)]),
    }
    if !expected.is_empty() {
        emit(check_images(&pods, &expected));
    }

    let (line, ok) = summary(&findings, args.strict);
    println!("{line}");
    Ok(ok)
}

fn scope_name(scope: &Scope) -> String {
    match scope {
        Scope::One(ns) => format!("namespace {ns}"),
        Scope::All => "all namespaces".into(),
    }
}

/// Labels of the namespaces the pods live in. Unreadable namespaces count as
/// not labelled (a pod's own annotation still says whether it opted in).
async fn namespace_info(
    client: &Client,
    scope: &Scope,
    operator_ns: &str,
    pods: &[Pod],
) -> BTreeMap<String, NamespaceInfo> {
    let api: Api<Namespace> = Api::all(client.clone());
    let labelled: Vec<PartialObjectMeta<Namespace>> = match scope {
        Scope::All => api
            .list_metadata(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default(),
        Scope::One(ns) => api
            .get_metadata_opt(ns)
            .await
            .ok()
            .flatten()
            .into_iter()
            .collect(),
    };
    let mut out: BTreeMap<String, NamespaceInfo> = pods
        .iter()
        .filter_map(|p| p.namespace())
        .map(|ns| (ns, NamespaceInfo::default()))
        .collect();
    for ns in labelled {
        let label = ns.labels().get(INJECT).cloned();
        out.insert(
            ns.name_any(),
            NamespaceInfo {
                enabled: label.as_deref() == Some(NAMESPACE_ENABLED),
                excluded: label.as_deref() == Some("disabled"),
            },
        );
    }
    for (name, info) in out.iter_mut() {
        if name == operator_ns || SYSTEM_NAMESPACES.contains(&name.as_str()) {
            info.excluded = true;
        }
    }
    out
}

/// Create `pod` in `ns` with `dryRun=All`: admission runs (the webhook
/// included), nothing is stored. Raw, because the answer's `Warning`
/// headers are the webhook's words.
async fn dry_run(client: &Client, ns: &str, pod: &Pod) -> Result<DryRun, kube::Error> {
    let body = serde_json::to_vec(pod).map_err(kube::Error::SerdeError)?;
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods?dryRun=All"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(body))
        .map_err(kube::Error::HttpError)?;
    let response = client.send(req).await?;
    let status = response.status().as_u16();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(warning_text)
        .collect();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Ok(DryRun::Refused(status, message));
    }
    let pod: Pod = serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
    Ok(DryRun::Admitted(Box::new(pod), warnings))
}

/// The text of an RFC 7234 `Warning` header value (`299 - "text"`), as the
/// apiserver sends admission warnings.
pub fn warning_text(value: &str) -> String {
    let rest = value
        .split_once(' ')
        .and_then(|(_, r)| r.split_once(' '))
        .map_or(value, |(_, r)| r)
        .trim();
    match rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => rest.to_owned(),
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
