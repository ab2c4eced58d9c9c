//! Asking a failover store's sentinels which pod is the primary
//! (`SENTINEL get-master-addr-by-name`), for the status and the client
//! Service. Sentinels have no password; each gets 2 s to answer.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::children::sentinel::SENTINEL_PORT;

/// How long one sentinel may take to connect and answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One answer per address (in order): the host the sentinel names as the
/// primary of `master`, or `None` when it did not answer in time or knows
/// no such master.
pub async fn ask_sentinels(addrs: Vec<String>, master: String) -> Vec<Option<String>> {
    futures::future::join_all(addrs.into_iter().map(|a| ask(a, master.clone()))).await
}

async fn ask(addr: String, master: String) -> Option<String> {
    let port = u16::try_from(SENTINEL_PORT).ok()?;
    let info: ConnectionInfo = ConnectionAddr::Tcp(addr.clone(), port)
        .into_connection_info()
        .ok()?;
    let client = redis::Client::open(info).ok()?;
    let query = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&master)
            .query_async::<Option<(String, String)>>(&mut conn)
            .await
    };
    match tokio::time::timeout(TIMEOUT, query).await {
        Ok(Ok(answer)) => answer.map(|(host, _port)| host),
        Ok(Err(e)) => {
            tracing::debug!(sentinel = %addr, error = %e, "sentinel did not answer");
            None
        }
        Err(_) => {
            tracing::debug!(sentinel = %addr, "sentinel timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_sentinel_is_no_answer_not_an_error() {
        // Nothing listens on port 26379 of this address (TEST-NET-1): times out.
        let answers = ask_sentinels(vec!["192.0.2.1".into()], "cache".into()).await;
        assert_eq!(answers, vec![None]);
    }
}
