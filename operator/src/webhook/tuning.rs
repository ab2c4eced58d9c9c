//! Per-workload tuning: `config.sametag.dev/*` pod annotations turned into
//! the injected sidecar's env, resources and the pod's grace period.
//!
//! Every value is checked with the parser the sidecar itself uses for the
//! flag it feeds (the shared `sametag-policy` crate for durations and byte
//! sizes, tracing's `EnvFilter` for the log filter), and resource
//! quantities with a grammar no wider than the apiserver's. A value that
//! fails is left out — the sidecar keeps its default — and reported as a
//! [`Rejected`], so a typo never keeps a pod from starting: the webhook
//! admits the pod and turns each rejection into an admission warning and an
//! Event.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sametag_policy::duration::{DurationSyntax, format_duration, parse_duration_with};

/// Prefix of every tuning annotation.
pub const PREFIX: &str = "config.sametag.dev/";
/// `--upstream-timeout` of the sidecar.
pub const UPSTREAM_TIMEOUT: &str = "config.sametag.dev/upstream-timeout";
/// `--drain-timeout` of the sidecar (and the pod's grace period floor).
pub const DRAIN_TIMEOUT: &str = "config.sametag.dev/drain-timeout";
/// The sidecar's log filter (`RUST_LOG`).
pub const LOG_LEVEL: &str = "config.sametag.dev/log-level";
/// `--max-body-bytes` of the sidecar.
pub const MAX_BODY_SIZE: &str = "config.sametag.dev/max-body-size";
/// The sidecar container's CPU request.
pub const CPU_REQUEST: &str = "config.sametag.dev/cpu-request";
/// The sidecar container's CPU limit.
pub const CPU_LIMIT: &str = "config.sametag.dev/cpu-limit";
/// The sidecar container's memory request.
pub const MEMORY_REQUEST: &str = "config.sametag.dev/memory-request";
/// The sidecar container's memory limit (also sizes the tag buffer budget).
pub const MEMORY_LIMIT: &str = "config.sametag.dev/memory-limit";

/// Every tuning annotation, in the order the README lists them.
pub const ANNOTATIONS: [&str; 8] = [
    UPSTREAM_TIMEOUT,
    DRAIN_TIMEOUT,
    LOG_LEVEL,
    MAX_BODY_SIZE,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
];

/// Longest upstream or drain timeout accepted: past an hour a typo
/// (`30m` for `30s`) is likelier than intent.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// Added to the drain timeout for the grace period: the kubelet stops a
/// native sidecar only after the app containers exited, within the same
/// grace period.
pub const GRACE_MARGIN_SECONDS: i64 = 5;
/// Longest quantity read (bounds work on hostile input).
const MAX_QUANTITY_LEN: usize = 32;
/// Longest log filter accepted.
const MAX_LOG_FILTER_LEN: usize = 256;

/// A tuning annotation that was not applied: the sidecar keeps the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The annotation's key.
    pub key: String,
    /// Its value (at most 64 characters of it).
    pub value: String,
    /// Why, in one line.
    pub why: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {}={:?} ignored (the default applies): {}",
            self.key, self.value, self.why
        )
    }
}

fn rejected(key: &str, value: &str, why: impl Into<String>) -> Rejected {
    Rejected {
        key: key.to_owned(),
        value: value.chars().take(64).collect(),
        why: why.into(),
    }
}

/// Which side of a container's resources an annotation sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Limit,
}

/// One resource annotation that parsed.
#[derive(Clone, Debug)]
struct ResourceValue {
    key: &'static str,
    resource: &'static str,
    side: Side,
    text: String,
}

/// The valid tuning of one pod.
#[derive(Clone, Debug, Default)]
pub struct Tuning {
    /// Sidecar env vars, in annotation order.
    env: Vec<(&'static str, String)>,
    /// Resource overrides.
    resources: Vec<ResourceValue>,
    /// The drain timeout, for the grace period.
    drain: Option<Duration>,
}

/// Read the `config.sametag.dev/*` annotations: what is valid, and what is
/// not (with why).
pub fn read(annotations: Option<&BTreeMap<String, String>>) -> (Tuning, Vec<Rejected>) {
    let mut tuning = Tuning::default();
    let mut bad = Vec::new();
    for (key, value) in annotations.into_iter().flatten() {
        let Some(setting) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let resource = |resource, side| ResourceValue {
            key: ANNOTATIONS
                .iter()
                .copied()
                .find(|a| *a == key.as_str())
                .unwrap_or(PREFIX),
            resource,
            side,
            text: value.trim().to_owned(),
        };
        let outcome = match setting {
            "upstream-timeout" => timeout(value, false).map(|d| {
                tuning
                    .env
                    .push(("SAMETAG_UPSTREAM_TIMEOUT", format_duration(d)));
            }),
            "drain-timeout" => timeout(value, true).map(|d| {
                tuning
                    .env
                    .push(("SAMETAG_DRAIN_TIMEOUT", format_duration(d)));
                tuning.drain = Some(d);
            }),
            "log-level" => log_filter(value).map(|f| tuning.env.push(("RUST_LOG", f))),
            "max-body-size" => sametag_policy::parse_max_body_bytes(value)
                .map(|n| tuning.env.push(("SAMETAG_MAX_BODY_BYTES", n.to_string()))),
            "cpu-request" => quantity(value).map(|_| {
                tuning.resources.push(resource("cpu", Side::Request));
            }),
            "cpu-limit" => positive_quantity(value).map(|_| {
                tuning.resources.push(resource("cpu", Side::Limit));
            }),
            "memory-request" => quantity(value).map(|_| {
                tuning.resources.push(resource("memory", Side::Request));
            }),
            "memory-limit" => positive_quantity(value).map(|_| {
                tuning.resources.push(resource("memory", Side::Limit));
            }),
            _ => Err(format!(
                "unknown setting; known: {}",
                ANNOTATIONS
                    .iter()
                    .map(|a| a.trim_start_matches(PREFIX))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        if let Err(why) = outcome {
            bad.push(rejected(key, value, why));
        }
    }
    (tuning, bad)
}

impl Tuning {
    /// Apply to the sidecar `container` about to join `spec`. Resource
    /// values that would make the apiserver refuse the pod (a request above
    /// its limit) are left out and returned.
    pub fn apply(&self, spec: &mut PodSpec, container: &mut Container) -> Vec<Rejected> {
        let env = container.env.get_or_insert_with(Vec::new);
        for (name, value) in &self.env {
            env.retain(|e| e.name != *name);
            env.push(EnvVar {
                name: (*name).to_owned(),
                value: Some(value.clone()),
                ..EnvVar::default()
            });
        }
        let bad = if self.resources.is_empty() {
            Vec::new()
        } else {
            self.apply_resources(container)
        };
        if let Some(drain) = self.drain {
            // The kubelet SIGKILLs whatever still runs when the grace period
            // ends, and stops the sidecar only after the app: a drain longer
            // than the period would be cut short.
            let secs = i64::try_from(drain.as_secs()).unwrap_or(i64::MAX);
            let secs = secs.saturating_add(i64::from(drain.subsec_nanos() > 0));
            let needed = secs.saturating_add(GRACE_MARGIN_SECONDS);
            let current = spec
                .termination_grace_period_seconds
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            if current < needed {
                spec.termination_grace_period_seconds = Some(needed);
            }
        }
        bad
    }

    fn apply_resources(&self, container: &mut Container) -> Vec<Rejected> {
        let base = container.resources.clone().unwrap_or_default();
        let mut res: ResourceRequirements = base.clone();
        for v in &self.resources {
            side_mut(&mut res, v.side).insert(v.resource.to_owned(), Quantity(v.text.clone()));
        }
        let mut bad = Vec::new();
        for resource in ["cpu", "memory"] {
            // Undo this resource's annotations, request first, until the
            // request fits under the limit (the apiserver's rule).
            for side in [Side::Request, Side::Limit] {
                let Some(why) = over_limit(&res, resource) else {
                    break;
                };
                let Some(v) = self
                    .resources
                    .iter()
                    .rev()
                    .find(|v| v.resource == resource && v.side == side)
                else {
                    continue;
                };
                match side_ref(&base, side).and_then(|m| m.get(resource)) {
                    Some(q) => {
                        side_mut(&mut res, side).insert(resource.to_owned(), q.clone());
                    }
                    None => {
                        side_mut(&mut res, side).remove(resource);
                    }
                }
                bad.push(rejected(v.key, &v.text, why));
            }
        }
        // The tag buffer budget is half the default 128Mi limit; keep that
        // share when the annotation moves the limit.
        let memory_limit = self
            .resources
            .iter()
            .rev()
            .find(|v| v.resource == "memory" && v.side == Side::Limit);
        if let Some(v) = memory_limit
            && !bad.iter().any(|b| b.key == v.key)
            && let Ok(nanos) = quantity(&v.text)
        {
            let bytes = (nanos / NANO).max(2) / 2;
            let env = container.env.get_or_insert_with(Vec::new);
            env.retain(|e| e.name != "SAMETAG_TAG_BUFFER_BUDGET");
            env.push(EnvVar {
                name: "SAMETAG_TAG_BUFFER_BUDGET".into(),
                value: Some(bytes.to_string()),
                ..EnvVar::default()
            });
        }
        for map in [&mut res.requests, &mut res.limits] {
            if map.as_ref().is_some_and(BTreeMap::is_empty) {
                *map = None;
            }
        }
        container.resources = Some(res);
        bad
    }
}

fn side_mut(res: &mut ResourceRequirements, side: Side) -> &mut BTreeMap<String, Quantity> {
    match side {
        Side::Request => res.requests.get_or_insert_with(BTreeMap::new),
        Side::Limit => res.limits.get_or_insert_with(BTreeMap::new),
    }
}

fn side_ref(res: &ResourceRequirements, side: Side) -> Option<&BTreeMap<String, Quantity>> {
    match side {
        Side::Request => res.requests.as_ref(),
        Side::Limit => res.limits.as_ref(),
    }
}

/// Why `resource`'s request does not fit under its limit, if it does not.
fn over_limit(res: &ResourceRequirements, resource: &str) -> Option<String> {
    let request = res.requests.as_ref()?.get(resource)?;
    let limit = res.limits.as_ref()?.get(resource)?;
    match (quantity(&request.0), quantity(&limit.0)) {
        (Ok(r), Ok(l)) if r <= l => None,
        (Ok(_), Ok(_)) => Some(format!(
            "the {resource} request {} would exceed the {resource} limit {} (the apiserver refuses that); set both",
            request.0, limit.0
        )),
        _ => Some(format!(
            "cannot compare the {resource} request {} with the limit {}",
            request.0, limit.0
        )),
    }
}

/// An upstream (`zero_ok: false`) or drain timeout, in the sidecar flags'
/// syntax.
fn timeout(value: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = parse_duration_with(value, DurationSyntax::SIDECAR_FLAG).map_err(|e| e.to_string())?;
    if d.is_zero() && !zero_ok {
        return Err("must be longer than 0s".into());
    }
    if d > MAX_TIMEOUT {
        return Err("must be at most 1h".into());
    }
    Ok(d)
}

/// A log filter: a level (`debug`) or `target=level` directives
/// (`info,sametag_sidecar=debug`), as `RUST_LOG` takes them. A bare word
/// that is not a level is refused: `EnvFilter` would read `verbose` as a
/// target name and silently log nothing more.
fn log_filter(value: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let v = value.trim();
    if v.is_empty() || v.len() > MAX_LOG_FILTER_LEN {
        return Err(format!(
            "expected a level ({}) or target=level directives, at most {MAX_LOG_FILTER_LEN} characters",
            LEVELS.join(", ")
        ));
    }
    for directive in v.split(',') {
        let d = directive.trim();
        if !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{d}` is not a level ({}) or a target=level directive",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(v).map_err(|e| format!("invalid log filter: {e}"))?;
    Ok(v.to_owned())
}

/// Nano-units per unit.
const NANO: u128 = 1_000_000_000;

/// A Kubernetes resource quantity in nano-units, from a grammar no wider
/// than the apiserver's (`<digits>[.<digits>][suffix]`; no sign, no
/// exponent), so a value accepted here is never refused there.
pub fn quantity(value: &str) -> Result<u128, String> {
    let bad = || {
        format!(
            "invalid quantity `{}` (expected e.g. 100m, 0.5, 2, 64Mi, 1Gi)",
            value.chars().take(MAX_QUANTITY_LEN).collect::<String>()
        )
    };
    let s = value.trim();
    if s.is_empty() || s.len() > MAX_QUANTITY_LEN {
        return Err(bad());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: u128 = match suffix {
        "" => NANO,
        "m" => NANO / 1_000,
        "k" => NANO * 1_000,
        "M" => NANO * 1_000_000,
        "G" => NANO * 1_000_000_000,
        "T" => NANO * 1_000_000_000_000,
        "P" => NANO * 1_000_000_000_000_000,
        "E" => NANO * 1_000_000_000_000_000_000,
        "Ki" => NANO << 10,
        "Mi" => NANO << 20,
        "Gi" => NANO << 30,
        "Ti" => NANO << 40,
        "Pi" => NANO << 50,
        "Ei" => NANO << 60,
        _ => return Err(bad()),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(frac)) {
        return Err(bad());
    }
    let scale = 10u128
        .checked_pow(u32::try_from(frac.len()).map_err(|_| bad())?)
        .ok_or_else(bad)?;
    let mantissa: u128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
    let scaled = mantissa.checked_mul(multiplier).ok_or_else(bad)?;
    // Round up, as the apiserver does below its precision.
    Ok(scaled.div_ceil(scale))
}

/// A limit: a quantity above zero.
fn positive_quantity(value: &str) -> Result<u128, String> {
    match quantity(value)? {
        0 => Err("a limit must be more than 0".into()),
        n => Ok(n),
    }
}

#[cfg(test)]
#[path = "tuning_tests.rs"]
mod tests;
