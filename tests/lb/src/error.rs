//! The harness's one error type.

use std::time::Duration;

/// Why a part of the test bed could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A required program is not installed. The suite fails (never skips).
    #[error(
        "required program `{0}` not found in PATH, /usr/sbin or /usr/bin; \
         install the Debian packages (`bash tests/setup-packages.sh` does): \
         apt-get install -y --no-install-recommends redis-server haproxy nginx-light wrk chromium"
    )]
    MissingTool(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server did not start listening in time.
    #[error("{name} not ready after {waited:?}; last log lines:\n{log}")]
    NotReady {
        /// The server.
        name: String,
        /// How long the harness waited.
        waited: Duration,
        /// The tail of its log.
        log: String,
    },
    /// An HTTP exchange failed at the transport level (or timed out).
    #[error("http {url}: {reason}")]
    Http {
        /// The request's URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A Redis administration command failed.
    #[error("redis at {addr}: {reason}")]
    Redis {
        /// The server.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The browser failed to load a page (exit status, timeout, no
    /// screenshot), with what it printed.
    #[error("chromium: {reason}; its last output lines:\n{output}")]
    Browser {
        /// What went wrong.
        reason: String,
        /// The tail of its stderr.
        output: String,
    },
    /// Building the sidecar binary failed.
    #[error("building sametag-sidecar failed: {0}")]
    Build(String),
    /// A benchmark tool's output could not be parsed.
    #[error("cannot parse {tool} output: {detail}")]
    Parse {
        /// The tool.
        tool: String,
        /// What was missing.
        detail: String,
    },
}

impl HarnessError {
    /// An I/O error with what the harness was doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Harness result.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
