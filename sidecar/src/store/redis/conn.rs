//! One live connection to the store's Redis (a multiplexed RESP3
//! connection, or a cluster connection) and the Lua scripts it runs.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisFuture, RedisResult, Script, Value,
};

use sametag_redis_target::Target;

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

/// What [`open`] returns: the connection every read and the tracking
/// pushes use, and the one writes that wait for replicas use.
pub(crate) struct Opened {
    pub(crate) main: Conn,
    /// Locks and invalidations, each followed by `WAIT`: a `WAIT` blocks
    /// the connection it is sent on, so it gets one of its own and never
    /// holds up lookups or read barriers. A clone of `main` on a cluster.
    pub(crate) writer: Conn,
    /// The primary's address as the sentinels named it (sentinel URLs).
    pub(crate) primary: Option<(String, u16)>,
}

/// Open the connections (AUTH, HELLO 3 and SELECT happen inside the
/// crate); both reach the same server. `push`/`writer_push` receive
/// tracking invalidations and the crate's disconnect notices.
pub(crate) async fn open(
    target: &Target,
    push: impl AsyncPushSender,
    writer_push: impl AsyncPushSender,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> RedisResult<Opened> {
    let timeouts = (connect_timeout, response_timeout);
    match target {
        Target::Single(client) => {
            let (main, writer) = pair(client, push, writer_push, timeouts).await?;
            Ok(Opened {
                main,
                writer,
                primary: None,
            })
        }
        Target::Sentinel(sentinels, _) => {
            // Resolved afresh on every connect: after a failover the
            // sentinels name the new primary.
            // Bounded: the crate asks the named primary its ROLE without a
            // timeout, and a frozen primary would hold this attempt until
            // the supervisor's budget runs out.
            let lookup = async { sentinels.lock().await.async_get_client().await };
            let client = tokio::time::timeout(connect_timeout, lookup)
                .await
                .map_err(|_| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the sentinels' primary did not answer in time",
                    ))
                })??;
            let primary = match client.get_connection_info().addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            };
            let (main, writer) = pair(&client, push, writer_push, timeouts).await?;
            Ok(Opened {
                main,
                writer,
                primary,
            })
        }
        Target::Cluster(client) => {
            let main = Conn::Cluster(client.get_async_connection().await?);
            Ok(Opened {
                writer: main.clone(),
                main,
                primary: None,
            })
        }
    }
}

/// Two connections to the server `client` names.
async fn pair(
    client: &redis::Client,
    push: impl AsyncPushSender,
    writer_push: impl AsyncPushSender,
    (connect_timeout, response_timeout): (Duration, Duration),
) -> RedisResult<(Conn, Conn)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    let main = client
        .get_multiplexed_async_connection_with_config(&config.clone().set_push_sender(push))
        .await?;
    let writer = client
        .get_multiplexed_async_connection_with_config(&config.set_push_sender(writer_push))
        .await?;
    Ok((Conn::Single(main), Conn::Single(writer)))
}

/// The primary the sentinels name now (`None`: not a sentinel URL, or no
/// sentinel knows the master). Asked after connecting: a primary that was
/// frozen while the sentinels replaced it still says "master" when it
/// wakes up, until the sentinels demote it.
pub(crate) async fn sentinel_primary(
    target: &Target,
    timeout: Duration,
) -> RedisResult<Option<(String, u16)>> {
    let Target::Sentinel(sentinels, master) = target else {
        return Ok(None);
    };
    let client = sentinels.lock().await.async_get_sentinel_client().await?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut c)
        .await?;
    Ok(addr.and_then(|(host, port)| Some((host, port.parse().ok()?))))
}

/// Load every script (one pipelined round trip), so requests only EVALSHA.
pub(crate) async fn load_scripts(conn: &mut Conn) -> RedisResult<()> {
    let mut p = redis::pipe();
    for src in &SCRIPTS.sources {
        p.cmd("SCRIPT").arg("LOAD").arg(src).ignore();
    }
    p.query_async::<()>(conn).await
}
