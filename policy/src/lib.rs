//! The sametag policy file: route modes per path glob (first match wins),
//! parsed and validated into a [`Policy`], and the scalar formats it uses
//! ([`duration`], byte quantities).
//!
//! Same shape as `ETagStore.spec.policy` (camelCase, unknown fields
//! rejected). Every validation error is one line naming the field, e.g.
//! `routes[2].maxAge: only allowed with mode Trust`.
//!
//! One crate for the sidecar, which reads the file, and the operator, which
//! writes it from `spec.policy`: the operator refuses exactly what the
//! sidecar would refuse, so an accepted ETagStore can never crash-loop the
//! pods it is injected into.
#![forbid(unsafe_code)]

pub mod duration;
mod parse;
pub mod steady;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

pub use duration::{DurationError, DurationSyntax, format_duration, parse_duration};
pub use parse::{parse_max_body_bytes, parse_quantity};
pub use steady::Steady;

/// Body size above which responses stream through untagged, by default.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Largest `maxBodyBytes` accepted: the sidecar buffers up to this much.
pub const MAX_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// `maxAge` for Trust when the policy gives none.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);
/// Longest `maxAge` accepted.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Largest policy file read (a ConfigMap holds at most 1 MiB anyway).
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// How the sidecar treats a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Every request reaches the app; matches become `304`. Always correct.
    #[default]
    Validate,
    /// A conditional GET validated less than `maxAge` ago (and not
    /// invalidated since) is answered from the store without the app.
    Trust,
    /// Untouched: the app handles validators and preconditions itself.
    Bypass,
}

/// A content coding the sidecar can apply to a route's responses
/// (`compress:`), written as its HTTP token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coding {
    /// Brotli (RFC 7932).
    Br,
    /// Zstandard (RFC 8878).
    Zstd,
    /// gzip (RFC 1952).
    Gzip,
}

impl Coding {
    /// Every coding, in a fixed order.
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding a policy token names (exact, lower case).
    pub fn from_token(token: &str) -> Option<Coding> {
        Coding::ALL.into_iter().find(|c| c.as_str() == token)
    }
}

/// The file as written (what `serde` reads and writes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Mode of paths no route matches, and of routes without a mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Default `maxAge` of Trust routes: `500ms`, `30s`, `5m`, `1h`, `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<serde_yaml_ng::Value>,
    /// An integer or a Kubernetes quantity (`8Mi`, `512Ki`, `1M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<serde_yaml_ng::Value>,
    /// First match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

/// One route as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Glob on the canonical request path (`*` within a segment, `**`
    /// across). Canonical means percent-encodings of unreserved characters
    /// decoded and the others kept with upper-case hex, so a glob for a
    /// non-ASCII path is written encoded: `/caf%C3%A9/**`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<serde_yaml_ng::Value>,
    /// Path globs a successful write here also invalidates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalidates: Vec<String>,
    /// One key for all users even with credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// Writes without a precondition get `428`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_preconditions: Option<bool>,
    /// Regexes whose matches the tag leaves out (per-render noise such as
    /// a CSRF token or a CSP nonce); the body sent is unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steady: Vec<String>,
    /// Content codings the sidecar may apply to tagged responses, in the
    /// server's order of preference (`[br, zstd, gzip]`); empty: none.
    /// Strings, so an unknown coding is refused with the policy's own error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compress: Vec<String>,
}

/// A validated route (or the default for unmatched paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The glob; `None` for the default route.
    pub path: Option<Arc<str>>,
    pub mode: Mode,
    /// How long a validation is trusted (meaningful in Trust mode only).
    pub max_age: Duration,
    /// Globs a successful write on this route also invalidates.
    pub invalidates: Vec<Arc<str>>,
    pub shared: bool,
    pub require_preconditions: bool,
    /// The compiled `steady:` patterns, shared by every clone of the route
    /// (compiled once per policy, never per request).
    pub steady: Option<Arc<Steady>>,
    /// Codings the sidecar may apply, preferred first; empty: off.
    pub compress: Vec<Coding>,
}

/// Why a policy was rejected: one line, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not YAML of the right shape (serde's message, on one line).
    #[error("{0}")]
    Syntax(String),
    /// A field has a value the sidecar cannot use.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    /// Any of the above, for a named file: `policy.yaml: routes[2].mode: ...`.
    #[error("{file}: {error}")]
    File {
        file: String,
        error: Box<PolicyError>,
    },
}

/// A validated policy with compiled globs.
#[derive(Clone, Debug)]
pub struct Policy {
    default: Route,
    max_body_bytes: u64,
    routes: Vec<Route>,
    route_set: GlobSet,
    watched: Vec<Arc<str>>,
    watched_set: GlobSet,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.default == other.default
            && self.max_body_bytes == other.max_body_bytes
            && self.routes == other.routes
    }
}

impl Eq for Policy {}

impl Default for Policy {
    /// Validate every path, 8 MiB body bound.
    fn default() -> Self {
        match Policy::from_spec(&PolicySpec::default()) {
            Ok(p) => p,
            // The empty spec is valid; keep a hand-built fallback anyway so
            // this can never panic.
            Err(_) => Policy {
                default: Route {
                    path: None,
                    mode: Mode::Validate,
                    max_age: DEFAULT_MAX_AGE,
                    invalidates: Vec::new(),
                    shared: false,
                    require_preconditions: false,
                    steady: None,
                    compress: Vec::new(),
                },
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                routes: Vec::new(),
                route_set: GlobSet::empty(),
                watched: Vec::new(),
                watched_set: GlobSet::empty(),
            },
        }
    }
}

impl Policy {
    /// Parse and validate a policy document. An empty document (or only
    /// comments) is the default policy.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let spec: Option<PolicySpec> = serde_yaml_ng::from_str(text)
            .map_err(|e| PolicyError::Syntax(one_line(&e.to_string())))?;
        Policy::from_spec(&spec.unwrap_or_default())
    }

    /// Read, parse and validate a policy file; errors name the file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let named = |error| PolicyError::File {
            file: path.display().to_string(),
            error: Box::new(error),
        };
        let text = read_bounded(path).map_err(named)?;
        Policy::from_yaml(&text).map_err(named)
    }

    /// Validate a spec.
    pub fn from_spec(spec: &PolicySpec) -> Result<Policy, PolicyError> {
        parse::compile(spec)
    }

    /// The spec this policy is equivalent to, with every default written out
    /// in canonical form (durations like `30s`, sizes as integers).
    pub fn to_spec(&self) -> PolicySpec {
        let route = |r: &Route| RouteSpec {
            path: r.path.as_deref().unwrap_or_default().to_owned(),
            mode: Some(r.mode),
            max_age: (r.mode == Mode::Trust)
                .then(|| serde_yaml_ng::Value::String(format_duration(r.max_age))),
            invalidates: r.invalidates.iter().map(|g| g.to_string()).collect(),
            // Bypass routes may not carry these (they would do nothing).
            shared: (r.mode != Mode::Bypass).then_some(r.shared),
            require_preconditions: (r.mode != Mode::Bypass).then_some(r.require_preconditions),
            steady: r
                .steady
                .iter()
                .flat_map(|s| s.patterns().iter().map(|p| p.to_string()))
                .collect(),
            compress: r.compress.iter().map(|c| c.as_str().to_owned()).collect(),
        };
        PolicySpec {
            mode: Some(self.default.mode),
            max_age: Some(serde_yaml_ng::Value::String(format_duration(
                self.default.max_age,
            ))),
            max_body_bytes: Some(serde_yaml_ng::Value::Number(self.max_body_bytes.into())),
            routes: self.routes.iter().map(route).collect(),
        }
    }

    /// [`Policy::to_spec`] as YAML; [`Policy::from_yaml`] reads it back equal.
    pub fn to_yaml(&self) -> Result<String, PolicyError> {
        serde_yaml_ng::to_string(&self.to_spec())
            .map_err(|e| PolicyError::Syntax(one_line(&e.to_string())))
    }

    /// The route for a canonical request path: the first whose glob matches,
    /// else the default.
    pub fn route(&self, path: &str) -> &Route {
        self.route_set
            .matches(path)
            .into_iter()
            .min()
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.default)
    }

    /// The route for paths no glob matches.
    pub fn default_route(&self) -> &Route {
        &self.default
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Responses with bodies larger than this pass through untagged.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// Every `invalidates` glob in the policy that matches `path`: a
    /// validation of `path` is stale once any of them was invalidated.
    pub fn watched(&self, path: &str) -> Vec<Arc<str>> {
        let mut hits = self.watched_set.matches(path);
        hits.sort_unstable();
        hits.into_iter()
            .filter_map(|i| self.watched.get(i).cloned())
            .collect()
    }
}

/// Compile a path glob: `*` stays within a segment, `**` crosses them.
fn compile_glob(glob: &str) -> Result<GlobMatcher, String> {
    if !(glob.starts_with('/') || glob.starts_with('*')) {
        return Err(format!(
            "glob `{glob}` must start with `/` (globs match the request path)"
        ));
    }
    build_glob(glob).map(|g| g.compile_matcher())
}

fn build_glob(glob: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| one_line(&e.to_string()))
}

fn glob_set<'a>(globs: impl IntoIterator<Item = &'a str>) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(build_glob(g)?);
    }
    b.build().map_err(|e| one_line(&e.to_string()))
}

/// Keep an error message on one line: control characters (from user text
/// echoed in the message, e.g. a multi-line YAML scalar) are escaped.
fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc = c.is_control().then(|| c.escape_default());
            esc.into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

fn read_bounded(path: &Path) -> Result<String, PolicyError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    file.take(MAX_POLICY_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge);
    }
    String::from_utf8(buf).map_err(|_| PolicyError::Syntax("not UTF-8".to_owned()))
}

#[cfg(test)]
mod tests;
