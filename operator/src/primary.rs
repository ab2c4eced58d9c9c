//! Asking a failover store's sentinels which pod is the primary
//! (`SENTINEL get-master-addr-by-name`) and which replicas they have linked
//! (`SENTINEL REPLICAS`), for the status and the client Service. Sentinels
//! have no password; each gets 2 s to answer.

use std::collections::HashMap;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::children::sentinel::SENTINEL_PORT;

/// How long one sentinel may take to connect and answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What one sentinel said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelAnswer {
    /// The host it names as the primary.
    pub primary: String,
    /// Replicas it has linked and sees up; `None` when it did not say.
    pub replicas_up: Option<u32>,
}

/// One answer per address (in order), or `None` when the sentinel did not
/// answer in time or knows no such master.
pub async fn ask_sentinels(addrs: Vec<String>, master: String) -> Vec<Option<SentinelAnswer>> {
    let Ok(port) = u16::try_from(SENTINEL_PORT) else {
        return Vec::new();
    };
    futures::future::join_all(addrs.into_iter().map(|a| ask(a, port, master.clone()))).await
}

/// Ask the sentinel at `addr`:`port` about `master`.
pub async fn ask(addr: String, port: u16, master: String) -> Option<SentinelAnswer> {
    let info: ConnectionInfo = ConnectionAddr::Tcp(addr.clone(), port)
        .into_connection_info()
        .ok()?;
    let client = redis::Client::open(info).ok()?;
    let query = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let primary = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&master)
            .query_async::<Option<(String, String)>>(&mut conn)
            .await?;
        let replicas = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(&master)
            .query_async::<Vec<HashMap<String, String>>>(&mut conn)
            .await
            .ok();
        Ok::<_, redis::RedisError>((primary, replicas))
    };
    match tokio::time::timeout(TIMEOUT, query).await {
        Ok(Ok((primary, replicas))) => primary.map(|(host, _port)| SentinelAnswer {
            primary: host,
            replicas_up: replicas.as_deref().map(replicas_up),
        }),
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

/// Replicas in a `SENTINEL REPLICAS` answer that are linked and up: flags
/// exactly `slave` (not `s_down`, `o_down` or `disconnected`). A Redis pod
/// back with a new IP shows `s_down` until the sentinel links it again.
pub fn replicas_up(replicas: &[HashMap<String, String>]) -> u32 {
    let up = replicas
        .iter()
        .filter(|r| r.get("flags").is_some_and(|f| f == "slave"))
        .count();
    u32::try_from(up).unwrap_or(u32::MAX)
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

    #[test]
    fn only_linked_replicas_that_are_up_count() {
        let replica = |flags: &str| HashMap::from([("flags".to_owned(), flags.to_owned())]);
        let answer = [
            replica("slave"),
            replica("s_down,slave"),
            replica("s_down,slave,disconnected"),
            replica("slave"),
            HashMap::new(),
        ];
        assert_eq!(replicas_up(&answer), 2);
        assert_eq!(replicas_up(&[]), 0);
    }
}
