//! Headless Chromium (Debian's `chromium`) as a real browser for the
//! end-to-end tests. Each page load is one browser process on a persistent
//! profile (`--user-data-dir`), like a user reopening the browser: the disk
//! cache outlives the process, so a load after the first revalidates what the
//! earlier ones cached (`If-None-Match`, `If-Modified-Since`).
//!
//! A load prints the DOM after the page's `load` event (`--dump-dom`, so a
//! test sees what the page's script found) and can also take a screenshot.
//! It is bounded in time: past the limit the browser's whole process group is
//! killed and the error carries what Chromium printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result, tools};

/// Flags for every load.
const FLAGS: &[&str] = &[
    "--headless",
    // Root in a container: the sandbox needs namespaces it may not get.
    "--no-sandbox",
    "--disable-gpu",
    // Nothing but the page: no calls home to Google's hosts (a closed
    // network refuses them, and each would slow every start).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    // HTTP over TCP only, as HAProxy's frontend speaks it.
    "--disable-quic",
    "--window-size=900,640",
    "--hide-scrollbars",
    "--dump-dom",
];

/// How long the pipes may stay open after the browser exited.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// How many lines of Chromium's stderr an error keeps.
const OUTPUT_LINES: usize = 25;

/// The browser program.
#[derive(Clone, Debug)]
pub struct Chromium {
    bin: PathBuf,
}

/// What one page load gave.
#[derive(Clone, Debug)]
pub struct Load {
    /// The DOM after the `load` event, serialised.
    pub dom: String,
    /// Wall time of the whole browser run.
    pub took: Duration,
}

impl Chromium {
    /// Debian's `chromium`; an error naming the package when it is missing
    /// (`bash tests/setup-packages.sh` installs it), so the test fails
    /// instead of passing without a browser.
    pub fn find() -> Result<Self> {
        Ok(Chromium {
            bin: tools::require("chromium")?,
        })
    }

    /// `chromium --version`, for the test's report.
    pub fn version(&self) -> String {
        std::process::Command::new(&self.bin)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// Load `url` in a fresh browser process on the profile in `profile`,
    /// wait for the page's `load` event, optionally write a PNG screenshot
    /// to `screenshot`, and exit; killed after `limit`.
    pub async fn load(
        &self,
        url: &str,
        profile: &Path,
        screenshot: Option<&Path>,
        limit: Duration,
    ) -> Result<Load> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()));
        if let Some(png) = screenshot {
            // A stale file must not pass for this load's.
            let _ = std::fs::remove_file(png);
            cmd.arg(format!("--screenshot={}", png.display()));
        }
        cmd.arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout takes down the renderer
            // and helper processes too; killed if this future is dropped.
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("start {}", self.bin.display()), e))?;
        let pgid = child.id();
        // Read both pipes while waiting, so a browser killed at the limit
        // still tells what it printed.
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let status = tokio::time::timeout(limit, child.wait()).await;
        if status.is_err() {
            if let Some(g) = pgid {
                kill_group(g);
            }
            let _ = child.wait().await;
        }
        let took = started.elapsed();
        // A helper left behind would hold the pipes open: the group goes
        // then too.
        let deadline = tokio::time::Instant::now() + PIPE_GRACE;
        let stdout = drain(stdout, deadline, pgid).await;
        let stderr = drain(stderr, deadline, pgid).await;
        let stderr = String::from_utf8_lossy(&stderr);
        let fail = |reason: String| HarnessError::Browser {
            reason,
            output: tail(&stderr, OUTPUT_LINES),
        };
        match status {
            Err(_) => {
                return Err(fail(format!(
                    "loading {url} did not finish within {limit:?} (killed)"
                )));
            }
            Ok(Err(e)) => return Err(HarnessError::io("wait for chromium", e)),
            Ok(Ok(st)) if !st.success() => {
                return Err(fail(format!("loading {url} exited with {st}")));
            }
            Ok(Ok(_)) => {}
        }
        let dom = String::from_utf8_lossy(&stdout).into_owned();
        if dom.trim().is_empty() {
            return Err(fail(format!("loading {url} printed no DOM")));
        }
        if let Some(png) = screenshot {
            let head = std::fs::read(png).unwrap_or_default();
            if !head.starts_with(b"\x89PNG\r\n\x1a\n") {
                return Err(fail(format!("no PNG screenshot at {}", png.display())));
            }
        }
        Ok(Load { dom, took })
    }
}

/// Read a child's pipe to its end on a task of its own.
fn read_all<R>(pipe: Option<R>) -> tokio::task::JoinHandle<Vec<u8>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut p, &mut buf).await;
        }
        buf
    })
}

/// What a reader task read, once the pipe closes; past `deadline` the
/// browser's process group is killed, which closes it.
async fn drain(
    mut reader: tokio::task::JoinHandle<Vec<u8>>,
    deadline: tokio::time::Instant,
    pgid: Option<u32>,
) -> Vec<u8> {
    match tokio::time::timeout_at(deadline, &mut reader).await {
        Ok(read) => read.unwrap_or_default(),
        Err(_) => {
            if let Some(g) = pgid {
                kill_group(g);
            }
            reader.await.unwrap_or_default()
        }
    }
}

/// SIGKILL every process in the group `pgid` (a browser this module started
/// as the group's leader).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The text of the element with `id="ID"` in a serialised DOM (no nested
/// elements expected), for failure messages and checks.
pub fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[start..];
    let open_end = rest.find('>')? + 1;
    let close = rest[open_end..].find('<')?;
    Some(&rest[open_end..open_end + close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_element_text() {
        let dom = "<body><p id=\"status\" class=\"ok\">script ran; 5/5</p></body>";
        assert_eq!(element_text(dom, "status"), Some("script ran; 5/5"));
        assert_eq!(element_text(dom, "other"), None);
    }

    #[test]
    fn tails_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
