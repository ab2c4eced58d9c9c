//! Finding the external programs the suite needs. A missing one is an error
//! that names the Debian package, so the suite fails instead of skipping.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

/// The full path of `name`, searched in `PATH` and the sbin directories
/// (Debian installs nginx and haproxy in /usr/sbin, often not in a user's PATH).
pub fn require(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| HarnessError::MissingTool(name.to_owned()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True when this process runs as root (nginx then needs `user root;` for its
/// worker processes to read files in our 0700 temp dirs).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_rejects_unknown() {
        assert!(require("sh").is_ok());
        let err = require("no-such-program-sametag").unwrap_err();
        assert!(err.to_string().contains("apt-get install"));
        // A missing browser says how to get it (the browser test fails, never skips).
        let browser = HarnessError::MissingTool("chromium".into()).to_string();
        assert!(browser.contains("tests/setup-packages.sh") && browser.contains(" chromium"));
    }
}
