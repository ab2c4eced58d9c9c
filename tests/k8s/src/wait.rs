//! Bounded polling: every wait in the suite has a deadline and reports the
//! last thing it saw when it times out.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Poll `check` every 200 ms until it returns `Ok(Some(v))` or `timeout`
/// passes. `Ok(None)` and `Err` mean "not yet"; the last error or the
/// `describe`d state is part of the timeout message.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("; last error: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.into(),
                secs: timeout.as_secs(),
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
