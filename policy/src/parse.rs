//! Validation of a [`PolicySpec`] into a [`Policy`], and the scalar formats
//! it uses (Kubernetes byte quantities; durations are in [`super::duration`]).

use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::duration::parse_duration;
use super::{
    Coding, DEFAULT_MAX_AGE, DEFAULT_MAX_BODY_BYTES, MAX_MAX_AGE, MAX_MAX_BODY_BYTES, Mode, Policy,
    PolicyError, PolicySpec, Route, Steady, compile_glob, glob_set, one_line, steady,
};

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: one_line(&reason.into()),
    }
}

pub(super) fn compile(spec: &PolicySpec) -> Result<Policy, PolicyError> {
    let default_mode = spec.mode.unwrap_or_default();
    let default_max_age = match &spec.max_age {
        None => DEFAULT_MAX_AGE,
        Some(v) => max_age("maxAge", v)?,
    };
    let max_body_bytes = match &spec.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(v) => body_bytes(v)?,
    };

    let mut routes = Vec::with_capacity(spec.routes.len());
    let mut steady_bytes = 0;
    for (i, r) in spec.routes.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        compile_glob(&r.path).map_err(|e| invalid(at("path"), e))?;
        let mode = r.mode.unwrap_or(default_mode);
        let route_max_age = match &r.max_age {
            None => default_max_age,
            Some(_) if mode != Mode::Trust => {
                return Err(invalid(at("maxAge"), "only allowed with mode Trust"));
            }
            Some(v) => max_age(&at("maxAge"), v)?,
        };
        if mode == Mode::Bypass {
            // The sidecar does not touch Bypass routes, so these would be
            // silently ignored: say so instead.
            let ignored = [
                ("invalidates", !r.invalidates.is_empty()),
                ("shared", r.shared.is_some()),
                ("requirePreconditions", r.require_preconditions.is_some()),
                ("steady", !r.steady.is_empty()),
                ("compress", !r.compress.is_empty()),
            ];
            if let Some((f, _)) = ignored.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    at(f),
                    "not allowed with mode Bypass (the sidecar leaves Bypass routes to the app)",
                ));
            }
        }
        let mut invalidates = Vec::with_capacity(r.invalidates.len());
        for (j, g) in r.invalidates.iter().enumerate() {
            compile_glob(g).map_err(|e| invalid(at(&format!("invalidates[{j}]")), e))?;
            invalidates.push(Arc::<str>::from(g.as_str()));
        }
        let steady = Steady::compile(&r.steady).map_err(|e| match e.index {
            Some(j) => invalid(at(&format!("steady[{j}]")), e.reason),
            None => invalid(at("steady"), e.reason),
        })?;
        steady_bytes += steady.as_ref().map_or(0, Steady::memory_usage);
        if steady_bytes > steady::POLICY_SIZE_LIMIT {
            return Err(invalid(
                at("steady"),
                format!(
                    "the policy's steady patterns together compile to more than {} bytes",
                    steady::POLICY_SIZE_LIMIT
                ),
            ));
        }
        let compress = codings(&r.compress, |j| at(&format!("compress[{j}]")))?;
        routes.push(Route {
            path: Some(Arc::from(r.path.as_str())),
            mode,
            max_age: route_max_age,
            invalidates,
            shared: r.shared.unwrap_or(false),
            require_preconditions: r.require_preconditions.unwrap_or(false),
            steady: steady.map(Arc::new),
            compress,
        });
    }

    let route_set = glob_set(routes.iter().filter_map(|r| r.path.as_deref()))
        .map_err(|e| invalid("routes", e))?;
    let mut watched: Vec<Arc<str>> = routes
        .iter()
        .flat_map(|r| r.invalidates.iter().cloned())
        .collect();
    watched.sort();
    watched.dedup();
    let watched_set = glob_set(watched.iter().map(|g| &**g)).map_err(|e| invalid("routes", e))?;

    Ok(Policy {
        default: Route {
            path: None,
            mode: default_mode,
            max_age: default_max_age,
            invalidates: Vec::new(),
            shared: false,
            require_preconditions: false,
            steady: None,
            compress: Vec::new(),
        },
        max_body_bytes,
        routes,
        route_set,
        watched,
        watched_set,
    })
}

/// A route's `compress` list: known codings, each at most once.
fn codings(tokens: &[String], at: impl Fn(usize) -> String) -> Result<Vec<Coding>, PolicyError> {
    let mut out: Vec<Coding> = Vec::with_capacity(tokens.len());
    for (j, token) in tokens.iter().enumerate() {
        let Some(coding) = Coding::from_token(token) else {
            return Err(invalid(
                at(j),
                format!("unknown coding `{token}` (expected br, zstd or gzip)"),
            ));
        };
        if out.contains(&coding) {
            return Err(invalid(at(j), format!("`{token}` is listed twice")));
        }
        out.push(coding);
    }
    Ok(out)
}

fn max_age(field: &str, v: &Value) -> Result<Duration, PolicyError> {
    let Value::String(s) = v else {
        return Err(invalid(
            field,
            "expected a duration such as 500ms, 30s, 5m or 1h",
        ));
    };
    let d = parse_duration(s).map_err(|e| invalid(field, e.to_string()))?;
    if d.is_zero() || d > MAX_MAX_AGE {
        return Err(invalid(
            field,
            format!("must be more than 0 and at most 24h (got {s})"),
        ));
    }
    Ok(d)
}

fn body_bytes(v: &Value) -> Result<u64, PolicyError> {
    const FIELD: &str = "maxBodyBytes";
    let n = match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            invalid(
                FIELD,
                format!("expected a byte count such as 8Mi (got {n})"),
            )
        })?,
        Value::String(s) => parse_quantity(s).map_err(|e| invalid(FIELD, e))?,
        _ => return Err(invalid(FIELD, "expected a byte count such as 8Mi")),
    };
    if n == 0 || n > MAX_MAX_BODY_BYTES {
        return Err(invalid(
            FIELD,
            format!("must be between 1 and 1Gi (got {n})"),
        ));
    }
    Ok(n)
}

/// Parse a `maxBodyBytes` written as text (`8Mi`, `512Ki`, `1M`, bytes):
/// a byte count from 1 to 1Gi. The sidecar's `--max-body-bytes` and the
/// webhook's `config.sametag.dev/max-body-size` read it, so both accept
/// exactly what the policy field accepts.
pub fn parse_max_body_bytes(s: &str) -> Result<u64, String> {
    let n = parse_quantity(s.trim())?;
    if n == 0 || n > MAX_MAX_BODY_BYTES {
        return Err(format!("must be between 1 and 1Gi (got {n})"));
    }
    Ok(n)
}

/// Parse a byte count: an integer with an optional Kubernetes suffix
/// (`Ki Mi Gi Ti` binary, `k M G T` decimal).
pub fn parse_quantity(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid byte count `{s}` (expected e.g. 8Mi, 512Ki, 1M or 1048576)");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}
