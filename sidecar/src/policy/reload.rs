//! Hot reload: a [`PolicyHandle`] shares the current policy, and a tokio task
//! polls the file and swaps in each new valid version.
//!
//! Polling (content hash every interval) rather than inotify: Kubernetes
//! updates a ConfigMap mount by swapping a `..data` symlink, which inotify
//! watches on the file miss; reading the path each tick always follows the
//! current link. An invalid new file keeps the old policy and logs one
//! warning per distinct content (not one per tick).

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch as chan;

use super::{MAX_POLICY_BYTES, Policy, PolicyError};

/// A cheap, cloneable view of the current policy.
#[derive(Clone, Debug)]
pub struct PolicyHandle {
    tx: Arc<chan::Sender<Arc<Policy>>>,
}

impl Default for PolicyHandle {
    fn default() -> Self {
        PolicyHandle::new(Policy::default())
    }
}

impl PolicyHandle {
    /// A handle holding `policy`.
    pub fn new(policy: Policy) -> Self {
        let (tx, _) = chan::channel(Arc::new(policy));
        PolicyHandle { tx: Arc::new(tx) }
    }

    /// Load `path` (startup: an error here should exit 2 with its message).
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        Policy::load(path).map(PolicyHandle::new)
    }

    /// The policy in force now. Requests take it once and keep it, so a
    /// reload never changes the rules halfway through a request.
    pub fn current(&self) -> Arc<Policy> {
        self.tx.borrow().clone()
    }

    /// Replace the policy (the reload task, and tests).
    pub fn replace(&self, policy: Policy) {
        self.tx.send_replace(Arc::new(policy));
    }

    /// Be told about replacements.
    pub fn subscribe(&self) -> chan::Receiver<Arc<Policy>> {
        self.tx.subscribe()
    }

    /// Spawn the reload task: every `interval`, read `path`, and if its
    /// content changed and is valid, swap it in. The task ends when every
    /// clone of this handle is gone. Needs a tokio runtime.
    pub fn watch(
        &self,
        path: impl Into<PathBuf>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let tx = Arc::downgrade(&self.tx);
        let path = path.into();
        tokio::spawn(poll(tx, path, interval))
    }
}

async fn poll(tx: Weak<chan::Sender<Arc<Policy>>>, path: PathBuf, interval: Duration) {
    let file = path.display().to_string();
    // The first tick parses the file; an unchanged policy is not logged.
    let mut seen: Option<blake3::Hash> = None;
    let mut read_failing = false;
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        let bytes = match read(&path).await {
            Ok(b) => {
                read_failing = false;
                b
            }
            Err(e) => {
                // A ConfigMap swap can briefly hide the file: warn once per
                // streak, keep the old policy.
                if !read_failing {
                    tracing::warn!(policy = %file, error = %e, "policy file unreadable; keeping the current policy");
                    read_failing = true;
                }
                continue;
            }
        };
        let hash = blake3::hash(&bytes);
        if seen == Some(hash) {
            continue;
        }
        seen = Some(hash);
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| PolicyError::Syntax("not UTF-8".to_owned()))
            .and_then(Policy::from_yaml);
        match parsed {
            Ok(p) => {
                if **tx.borrow() != p {
                    tx.send_replace(Arc::new(p));
                    tracing::info!(policy = %file, "policy reloaded");
                }
            }
            Err(e) => {
                tracing::warn!(policy = %file, error = %e, "invalid policy file; keeping the current policy");
            }
        }
    }
}

async fn read(path: &std::path::Path) -> Result<Vec<u8>, PolicyError> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut buf = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge);
    }
    Ok(buf)
}
