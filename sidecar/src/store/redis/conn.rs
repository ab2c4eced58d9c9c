//! One live connection to the store's Redis (a multiplexed RESP3
//! connection, or a cluster connection) and the Lua scripts it runs.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Script, Value};

use super::target::Target;

/// The store's scripts; `EVALSHA` after the first load (loaded on connect,
/// reloaded transparently on `NOSCRIPT`).
pub(crate) struct Scripts {
    pub(crate) lookup: Script,
    pub(crate) record: Script,
    pub(crate) invalidate: Script,
    pub(crate) lock: Script,
    pub(crate) unlock: Script,
    pub(crate) renew: Script,
    pub(crate) epoch: Script,
    pub(crate) purge: Script,
    /// The sources, for one pipelined `SCRIPT LOAD` on connect.
    sources: Vec<String>,
}

const CLOCK: &str = include_str!("clock.lua");
const LABELS: &str = include_str!("labels.lua");
const PURGE_STATE: &str = include_str!("purge_state.lua");

/// The scripts, compiled once per process. The writing scripts share the
/// hybrid clock (`clock.lua`) as a prelude; those that read label marks or
/// keep the purge state share those functions too.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let with_clock = |body: &str| format!("{CLOCK}\n{body}");
    let sources = vec![
        format!("{LABELS}\n{}", include_str!("lookup.lua")),
        format!(
            "{CLOCK}\n{LABELS}\n{PURGE_STATE}\n{}",
            include_str!("record.lua")
        ),
        with_clock(include_str!("invalidate.lua")),
        with_clock(include_str!("lock.lua")),
        include_str!("unlock.lua").to_owned(),
        with_clock(include_str!("epoch.lua")),
        include_str!("renew.lua").to_owned(),
        format!("{CLOCK}\n{PURGE_STATE}\n{}", include_str!("purge.lua")),
    ];
    Scripts {
        lookup: Script::new(&sources[0]),
        record: Script::new(&sources[1]),
        invalidate: Script::new(&sources[2]),
        lock: Script::new(&sources[3]),
        unlock: Script::new(&sources[4]),
        epoch: Script::new(&sources[5]),
        renew: Script::new(&sources[6]),
        purge: Script::new(&sources[7]),
        sources,
    }
});

/// A connection of either deployment kind.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Open a connection (AUTH, HELLO 3 and SELECT happen inside the crate).
/// `push` receives tracking invalidations and the crate's disconnect notice.
pub(crate) async fn open(
    target: &Target,
    push: impl AsyncPushSender,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> RedisResult<Conn> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_push_sender(push);
    match target {
        Target::Single(client) => Ok(Conn::Single(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        )),
        Target::Sentinel(client) => {
            let mut client = client.lock().await;
            Ok(Conn::Single(
                client.get_async_connection_with_config(&config).await?,
            ))
        }
        Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
    }
}

/// Load every script (one pipelined round trip), so requests only EVALSHA.
pub(crate) async fn load_scripts(conn: &mut Conn) -> RedisResult<()> {
    let mut p = redis::pipe();
    for src in &SCRIPTS.sources {
        p.cmd("SCRIPT").arg("LOAD").arg(src).ignore();
    }
    p.query_async::<()>(conn).await
}
