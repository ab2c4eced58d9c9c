//! The operator's one error type (kube-rs controller-rs style): every
//! fallible path returns [`Result`], and `error_policy` counts failures by
//! [`Error::metric_label`].

use crate::children::BuildError;

/// Everything that can fail in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A child object could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A status or patch body could not be serialised.
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The webhook's TLS material could not be made or loaded.
    #[error("webhook TLS: {0}")]
    Tls(String),
    /// A server could not bind or serve.
    #[error("{what}: {source}")]
    Io {
        /// Which server.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// An object kept changing under a conditional write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A task that should run forever ended.
    #[error("{0} ended unexpectedly")]
    Stopped(&'static str),
}

/// Result with the crate [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Short, stable name of the variant, used as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "build",
            Self::Serialize(_) => "serialize",
            Self::Tls(_) => "tls",
            Self::Io { .. } => "io",
            Self::Lease(_) => "lease",
            Self::Conflict(_) => "conflict",
            Self::Stopped(_) => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_short_and_distinct() {
        let io = || std::io::Error::other("x");
        let all = [
            Error::Build(BuildError::NoUid("s".into())),
            Error::Tls("t".into()),
            Error::Io {
                what: "bind",
                source: io(),
            },
            Error::Conflict("c".into()),
            Error::Stopped("s"),
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), all.len());
        assert!(
            labels
                .iter()
                .all(|l| l.bytes().all(|b| b.is_ascii_lowercase()))
        );
    }
}
