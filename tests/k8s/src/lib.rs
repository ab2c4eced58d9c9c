//! Test support for the Kubernetes end-to-end suite: finds the harness
//! binaries (built by `tests/harness/build.sh`), starts a real control plane
//! (etcd + kube-apiserver + kube-controller-manager) on free loopback ports,
//! runs `helm`/`kubectl`, and runs `sametag-operator` as a local process with
//! the chart's ServiceAccount identity.
#![forbid(unsafe_code)]

pub mod bins;
pub mod controlplane;
pub mod cpbench;
pub mod ets;
pub mod operator;
pub mod redis;
pub mod tools;
pub mod wait;

/// Errors of the test support code. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The harness binaries are not built or cannot be found.
    #[error("{0}")]
    MissingBinary(String),
    /// A child process could not be started or failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}):\n{output}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {secs}s waiting for {what}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        secs: u64,
        /// The last observation, for the failure message.
        detail: String,
    },
    /// A Kubernetes API call failed.
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Result of the support code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository root (two levels above this crate).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Ask the kernel for a free loopback TCP port.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        what: "bind a free port".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "read the bound port".into(),
            source,
        })
}

/// The last `n` lines of a log file, for failure messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
