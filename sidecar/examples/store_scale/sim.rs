//! The store at scale: many sidecars' store handles (each a [`RedisStore`]
//! with its own connection and `CLIENT TRACKING BCAST`, as every sidecar
//! has) on one real server, as the number of clients and of resources grows.
//!
//! Per cell (clients N x resources R) it measures, from the server's own
//! `INFO`: write latency (p50/p99 of the store's part of one conditional
//! write: lock, invalidate, record the new tag, unlock), invalidation
//! pushes per write, server CPU per write (`used_cpu_sys` + `used_cpu_user`
//! deltas, less the idle rate measured just before), memory per resource
//! and per client. Pushes are counted by observer connections registered
//! exactly as a store registers (RESP3, BCAST, the store's five tracking
//! prefixes): with BCAST every registered client receives the same pushes,
//! so the fan-out per write is what one observer receives times the number
//! of tracking clients.
//!
//! Shared by `examples/store_scale` (the benchmark) and
//! `tests/store_scale.rs` (its smoke test).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
use sametag_sidecar::store::{ResourceKey, Store, VariantKey};
use sametag_sidecar::tag::EntityTag;
use serde::{Deserialize, Serialize};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("store: {0}")]
    Store(#[from] sametag_sidecar::store::StoreError),
    #[error("store configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    /// Client counts, ascending (each a number of store handles).
    pub clients: Vec<usize>,
    /// Resource counts, ascending (the store is filled up to each).
    pub resources: Vec<usize>,
    /// Offered write rate, writes per second across all clients.
    pub write_rate: f64,
    /// How long each cell writes at that rate.
    pub write_secs: f64,
    /// How long each cell writes as fast as it can (0: skip).
    pub saturate_secs: f64,
    /// Concurrent writers in the saturation phase.
    pub saturate_writers: usize,
    /// How long the idle CPU rate is measured before each cell's writes.
    pub idle_secs: f64,
    /// Push observers (counted, registered like a store).
    pub observers: usize,
    /// Concurrent calls while filling.
    pub fill_concurrency: usize,
    /// The store prefix (hash tag).
    pub prefix: String,
    /// The store clients' local cache (and so their `CLIENT TRACKING`).
    /// Off: no client receives pushes (only the observers), and every
    /// lookup is a round trip.
    pub client_cache: bool,
}

impl Params {
    /// Tiny numbers for the smoke test.
    pub fn tiny() -> Params {
        Params {
            clients: vec![2, 4],
            resources: vec![50, 200],
            write_rate: 100.0,
            write_secs: 0.5,
            saturate_secs: 0.3,
            saturate_writers: 4,
            idle_secs: 0.2,
            observers: 2,
            fill_concurrency: 8,
            prefix: "scale".into(),
            client_cache: true,
        }
    }
}

/// One (clients, resources) measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub clients: usize,
    pub resources: usize,
    /// Writes completed in the fixed-rate phase, and the rate reached.
    pub writes: u64,
    pub write_rate: f64,
    pub write_errors: u64,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    pub write_max_ms: f64,
    /// Invalidation push messages one tracking client received per write
    /// (a message may name several keys: the server batches a client's
    /// BCAST invalidations per event-loop iteration).
    pub push_msgs_per_write_per_client: f64,
    /// Invalidated key names one tracking client received per write.
    pub push_keys_per_write_per_client: f64,
    /// Push messages the server sent per write, to every tracking client
    /// (the N store clients, unless their cache is off, and the observers).
    pub push_msgs_per_write_total: f64,
    /// Server CPU (sys + user) per write, idle rate subtracted.
    pub cpu_us_per_write: f64,
    /// Server CPU while idle with N clients connected, percent of a core.
    pub cpu_idle_pct: f64,
    /// Server CPU during the fixed-rate writes, percent of a core.
    pub cpu_write_pct: f64,
    /// Saturation: writes per second with `saturate_writers` in a loop,
    /// and the server's CPU then.
    pub saturated_writes_per_sec: f64,
    pub saturated_cpu_pct: f64,
    pub saturated_p99_ms: f64,
    /// `INFO memory` / `INFO clients` / `DBSIZE` after the writes.
    pub used_memory: u64,
    pub mem_clients_normal: u64,
    pub connected_clients: u64,
    pub bytes_per_client: f64,
    pub keys: u64,
}

/// The memory a fill to `resources` added.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fill {
    pub resources: usize,
    pub clients: usize,
    pub used_memory_before: u64,
    pub used_memory_after: u64,
    pub keys: u64,
    pub bytes_per_resource: f64,
    pub secs: f64,
    pub calls_per_sec: f64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `redis_version` (and `valkey_version` when Valkey) from `INFO server`.
    pub server: String,
    pub params: Params,
    pub fills: Vec<Fill>,
    pub cells: Vec<Cell>,
    pub secs: f64,
    /// Where it ran (cores, load, client build), printed under the tables.
    #[serde(default)]
    pub note: String,
}

/// The resource `i` of the simulated app.
fn resource(i: usize) -> ResourceKey {
    let path = format!("/items/{i}");
    ResourceKey {
        id: Arc::from(format!("shop.example{path}")),
        lock: Arc::from(path.as_str()),
        path: Arc::from(path),
    }
}

fn tag(s: String) -> EntityTag {
    // Derived from a counter: always a valid tag.
    EntityTag::strong(s).expect("a counter is a valid tag")
}

/// A cheap deterministic PRNG (xorshift64*): which resource a write hits.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// `INFO` as a map of its `key:value` lines.
async fn info(admin: &mut MultiplexedConnection) -> Result<HashMap<String, String>, SimError> {
    let text: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(admin)
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

fn num(info: &HashMap<String, String>, key: &str) -> f64 {
    info.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn cpu(info: &HashMap<String, String>) -> f64 {
    num(info, "used_cpu_sys") + num(info, "used_cpu_user")
}

async fn dbsize(admin: &mut MultiplexedConnection) -> Result<u64, SimError> {
    Ok(redis::cmd("DBSIZE").query_async(admin).await?)
}

/// Push counters of the observers.
#[derive(Default)]
struct Pushes {
    msgs: AtomicU64,
    keys: AtomicU64,
}

/// A connection registered for invalidations exactly as a store registers.
async fn observer(
    url: &str,
    prefix: &str,
    pushes: Arc<Pushes>,
) -> Result<MultiplexedConnection, SimError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let push = move |p: PushInfo| -> Result<(), std::convert::Infallible> {
        if p.kind == PushKind::Invalidate {
            pushes.msgs.fetch_add(1, Ordering::Relaxed);
            if let Some(Value::Array(keys)) = p.data.first() {
                pushes.keys.fetch_add(keys.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    };
    let mut c = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_push_sender(push),
        )
        .await?;
    // The store's tracking prefixes (store/redis/model.rs): resources,
    // paths, meta, purge marks, key marks.
    let tag = format!("{{{prefix}}}");
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    for p in [
        format!("{tag}:r:"),
        format!("{tag}:p:"),
        format!("{tag}:m"),
        format!("{tag}:x"),
        format!("{tag}:k"),
    ] {
        cmd.arg("PREFIX").arg(p);
    }
    cmd.query_async::<()>(&mut c).await?;
    Ok(c)
}

/// The store's part of one conditional write: lock, invalidate, record the
/// new tag, unlock. Returns its latency.
async fn write(s: &RedisStore, k: &ResourceKey, n: u64) -> Result<Duration, SimError> {
    let t0 = Instant::now();
    let lock = s.try_lock(k, Duration::from_secs(10)).await?;
    s.invalidate(k, &[]).await?;
    s.record(k, &[], &VariantKey::default(), &tag(format!("w{n}")), false)
        .await?;
    if let Some(l) = lock {
        s.unlock(&l).await?;
    }
    Ok(t0.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Connect one more store handle.
async fn connect(url: &str, prefix: &str, client_cache: bool) -> Result<RedisStore, SimError> {
    let opts = RedisOptions {
        client_cache,
        // Time spent queued behind other clients on a busy machine is
        // latency to measure, not an outage.
        op_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..RedisOptions::default()
    };
    let s = RedisStore::connect(url, prefix, opts).map_err(|e| SimError::Config(e.to_string()))?;
    if !s.wait_up(Duration::from_secs(10)).await {
        return Err(SimError::Other(format!(
            "a store client could not connect to {url}"
        )));
    }
    Ok(s)
}

/// Wait until the server counts `want` connected clients (dropped store
/// handles close their connections asynchronously).
async fn settle_clients(admin: &mut MultiplexedConnection, want: u64) -> Result<u64, SimError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let have = num(&info(admin).await?, "connected_clients") as u64;
        if have == want || Instant::now() > deadline {
            return Ok(have);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fill the store from `from` to `to` resources: each read through Trust
/// (a recorded, validated tag) and written once (its path generation).
async fn fill(
    stores: &[RedisStore],
    from: usize,
    to: usize,
    concurrency: usize,
) -> Result<(), SimError> {
    let next = Arc::new(AtomicU64::new(from as u64));
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let s = stores[w % stores.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= to {
                    return Ok::<(), SimError>(());
                }
                let k = resource(i);
                s.record(&k, &[], &VariantKey::default(), &tag(format!("t{i}")), true)
                    .await?;
                s.invalidate(&k, &[]).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| SimError::Other(e.to_string()))??;
    }
    Ok(())
}

/// Run the whole grid against the server at `url` (no password needed
/// beyond what the URL carries). `progress` gets one line per step.
pub async fn run(
    url: &str,
    p: &Params,
    mut progress: impl FnMut(String),
) -> Result<Report, SimError> {
    let started = Instant::now();
    let client = redis::Client::open(url)?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let server_info = info(&mut admin).await?;
    let server = match server_info.get("valkey_version") {
        Some(v) => format!("valkey {v}"),
        None => format!(
            "redis {}",
            server_info
                .get("redis_version")
                .map(String::as_str)
                .unwrap_or("?")
        ),
    };
    progress(format!("server: {server}"));
    let pushes = Arc::new(Pushes::default());
    let mut observers = Vec::new();
    for _ in 0..p.observers {
        observers.push(observer(url, &p.prefix, pushes.clone()).await?);
    }
    // The admin connection and the observers.
    let others = 1 + p.observers as u64;
    let mut stores: Vec<RedisStore> = Vec::new();
    let mut fills = Vec::new();
    let mut cells = Vec::new();
    let mut filled = 0;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seq = 0u64;
    for &r in &p.resources {
        // Fill with the fewest clients, so memory per resource is not mixed
        // with memory per client.
        let n0 = p.clients[0];
        stores.truncate(n0);
        while stores.len() < n0 {
            stores.push(connect(url, &p.prefix, p.client_cache).await?);
        }
        settle_clients(&mut admin, n0 as u64 + others).await?;
        let before = num(&info(&mut admin).await?, "used_memory") as u64;
        let t0 = Instant::now();
        fill(&stores, filled, r, p.fill_concurrency).await?;
        let secs = t0.elapsed().as_secs_f64();
        let after = num(&info(&mut admin).await?, "used_memory") as u64;
        let keys = dbsize(&mut admin).await?;
        let added = r - filled;
        let f = Fill {
            resources: r,
            clients: n0,
            used_memory_before: before,
            used_memory_after: after,
            keys,
            bytes_per_resource: after.saturating_sub(before) as f64 / added.max(1) as f64,
            secs,
            calls_per_sec: 2.0 * added as f64 / secs.max(1e-9),
        };
        progress(format!(
            "fill {filled}->{r} resources: {:.1}s, {:.0} B/resource, {keys} keys",
            f.secs, f.bytes_per_resource
        ));
        fills.push(f);
        filled = r;
        for &n in &p.clients {
            while stores.len() < n {
                stores.push(connect(url, &p.prefix, p.client_cache).await?);
            }
            stores.truncate(n);
            let connected = settle_clients(&mut admin, n as u64 + others).await?;
            // Idle: the CPU the connected clients cost with no traffic.
            let i0 = info(&mut admin).await?;
            let t_idle = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(p.idle_secs)).await;
            let i1 = info(&mut admin).await?;
            let idle_rate = (cpu(&i1) - cpu(&i0)) / t_idle.elapsed().as_secs_f64();

            // Fixed-rate writes, spread round-robin over the clients.
            let total = (p.write_rate * p.write_secs).round().max(1.0) as u64;
            let tracking = if p.client_cache { n } else { 0 };
            let (m0, k0) = (
                pushes.msgs.load(Ordering::SeqCst),
                pushes.keys.load(Ordering::SeqCst),
            );
            let c0 = cpu(&info(&mut admin).await?);
            let t0 = Instant::now();
            let mut tasks = Vec::with_capacity(total as usize);
            for w in 0..total {
                let due = t0 + Duration::from_secs_f64(w as f64 / p.write_rate);
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                let s = stores[w as usize % n].clone();
                let k = resource(rng.below(r));
                seq += 1;
                let id = seq;
                tasks.push(tokio::spawn(async move { write(&s, &k, id).await }));
            }
            let mut lat = Vec::with_capacity(tasks.len());
            let mut errors = 0;
            for t in tasks {
                match t.await {
                    Ok(Ok(d)) => lat.push(d),
                    _ => errors += 1,
                }
            }
            let elapsed = t0.elapsed().as_secs_f64();
            // Pushes of the last writes arrive just after their replies.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let c1 = cpu(&info(&mut admin).await?);
            let msgs = pushes.msgs.load(Ordering::SeqCst) - m0;
            let keys_pushed = pushes.keys.load(Ordering::SeqCst) - k0;
            lat.sort();
            let writes = lat.len() as u64;
            let per_obs = |x: u64| x as f64 / p.observers.max(1) as f64 / writes.max(1) as f64;
            let cpu_write = c1 - c0;
            let cpu_us_per_write =
                ((cpu_write - idle_rate * (elapsed + 0.1)).max(0.0) / writes.max(1) as f64) * 1e6;

            // Saturation: writers in a closed loop.
            let (mut sat_rate, mut sat_cpu, mut sat_p99) = (0.0, 0.0, 0.0);
            if p.saturate_secs > 0.0 {
                let s0 = cpu(&info(&mut admin).await?);
                let ts = Instant::now();
                let stop = ts + Duration::from_secs_f64(p.saturate_secs);
                let mut ws = Vec::new();
                for w in 0..p.saturate_writers.max(1) {
                    let s = stores[w % n].clone();
                    let mut wr = Rng(0x5151_u64 + w as u64 * 7919);
                    ws.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut i = 0u64;
                        while Instant::now() < stop {
                            i += 1;
                            if let Ok(d) = write(&s, &resource(wr.below(r)), i).await {
                                lat.push(d);
                            }
                        }
                        lat
                    }));
                }
                let mut all = Vec::new();
                for w in ws {
                    all.extend(w.await.unwrap_or_default());
                }
                let secs = ts.elapsed().as_secs_f64();
                let s1 = cpu(&info(&mut admin).await?);
                all.sort();
                sat_rate = all.len() as f64 / secs;
                sat_cpu = (s1 - s0) / secs * 100.0;
                sat_p99 = percentile(&all, 0.99);
            }

            let end = info(&mut admin).await?;
            let clients_now = num(&end, "connected_clients") as u64;
            let mem_clients = num(&end, "mem_clients_normal") as u64;
            let cell = Cell {
                clients: n,
                resources: r,
                writes,
                write_rate: writes as f64 / elapsed,
                write_errors: errors,
                write_p50_ms: percentile(&lat, 0.5),
                write_p99_ms: percentile(&lat, 0.99),
                write_max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                push_msgs_per_write_per_client: per_obs(msgs),
                push_keys_per_write_per_client: per_obs(keys_pushed),
                push_msgs_per_write_total: per_obs(msgs) * (tracking + p.observers) as f64,
                cpu_us_per_write,
                cpu_idle_pct: idle_rate * 100.0,
                cpu_write_pct: cpu_write / (elapsed + 0.1) * 100.0,
                saturated_writes_per_sec: sat_rate,
                saturated_cpu_pct: sat_cpu,
                saturated_p99_ms: sat_p99,
                used_memory: num(&end, "used_memory") as u64,
                mem_clients_normal: mem_clients,
                connected_clients: connected.max(clients_now),
                bytes_per_client: mem_clients as f64 / clients_now.max(1) as f64,
                keys: dbsize(&mut admin).await?,
            };
            progress(format!(
                "clients {n:>4} resources {r:>7}: {} writes at {:.0}/s, p50 {:.2} ms p99 {:.2} ms, \
                 {:.2} push msgs/write/client ({:.0} total), {:.0} us CPU/write, \
                 saturated {:.0} writes/s at {:.0}% CPU, {:.0} B/client",
                cell.writes,
                cell.write_rate,
                cell.write_p50_ms,
                cell.write_p99_ms,
                cell.push_msgs_per_write_per_client,
                cell.push_msgs_per_write_total,
                cell.cpu_us_per_write,
                cell.saturated_writes_per_sec,
                cell.saturated_cpu_pct,
                cell.bytes_per_client,
            ));
            cells.push(cell);
        }
    }
    drop(observers);
    Ok(Report {
        server,
        params: p.clone(),
        fills,
        cells,
        secs: started.elapsed().as_secs_f64(),
        note: String::new(),
    })
}

/// The measurements extrapolated to a fleet of `pods` store clients and
/// `resources` resources on one server (one store is one hash slot, so one
/// node: nothing here can be spread over a cluster).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Projection {
    pub pods: usize,
    pub resources: u64,
    /// Server memory per resource (the largest fill) and for all of them.
    pub bytes_per_resource: f64,
    pub resources_gib: f64,
    /// Server memory per connected client (the most clients measured).
    pub bytes_per_client: f64,
    pub clients_mib: f64,
    /// Push messages per write per client (mean over the cells), and per
    /// write to the whole fleet.
    pub push_msgs_per_write_per_client: f64,
    pub push_msgs_per_write_fleet: f64,
    /// Server CPU per write as `a + b * clients` (least squares over every
    /// cell: it does not depend on the resource count), in microseconds.
    pub cpu_us_per_write_base: f64,
    pub cpu_us_per_write_per_client: f64,
    pub cpu_us_per_write_at_pods: f64,
    /// Writes per second one server core sustains at `pods` clients.
    pub writes_per_sec_one_core: f64,
    /// Idle server CPU per connected client, percent of a core.
    pub idle_cpu_pct_per_client: f64,
}

impl Report {
    /// Extrapolate to `pods` clients and `resources` resources.
    pub fn project(&self, pods: usize, resources: u64) -> Projection {
        let bpr = self.fills.last().map_or(0.0, |f| f.bytes_per_resource);
        let max_n = self.cells.iter().map(|c| c.clients).max().unwrap_or(0);
        let bpc = self
            .cells
            .iter()
            .filter(|c| c.clients == max_n)
            .map(|c| c.bytes_per_client)
            .fold(0.0, f64::max);
        let n_cells = self.cells.len().max(1) as f64;
        // Without the local cache no sidecar tracks: the observers' pushes
        // are theirs alone.
        let per_client = if self.params.client_cache {
            self.cells
                .iter()
                .map(|c| c.push_msgs_per_write_per_client)
                .sum::<f64>()
                / n_cells
        } else {
            0.0
        };
        let pts: Vec<(f64, f64)> = self
            .cells
            .iter()
            .map(|c| (c.clients as f64, c.cpu_us_per_write))
            .collect();
        let (a, b) = fit(&pts);
        let at = (a + b * pods as f64).max(1e-3);
        let idle = self
            .cells
            .iter()
            .map(|c| c.cpu_idle_pct / (c.clients as f64).max(1.0))
            .sum::<f64>()
            / n_cells;
        Projection {
            pods,
            resources,
            bytes_per_resource: bpr,
            resources_gib: bpr * resources as f64 / (1u64 << 30) as f64,
            bytes_per_client: bpc,
            clients_mib: bpc * pods as f64 / (1u64 << 20) as f64,
            push_msgs_per_write_per_client: per_client,
            push_msgs_per_write_fleet: per_client * pods as f64,
            cpu_us_per_write_base: a,
            cpu_us_per_write_per_client: b,
            cpu_us_per_write_at_pods: at,
            writes_per_sec_one_core: 1e6 / at,
            idle_cpu_pct_per_client: idle,
        }
    }

    /// The report as Markdown: the grid, the fills and the projection.
    pub fn markdown(&self, projection: &Projection) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "# The store at scale\n\nServer: {}; store clients' local cache (client tracking): {}. Generated by `bench/store-scale.sh` \
             (`sidecar/examples/store_scale`) in {:.0} s. Each client is one sidecar's \
             store handle (`RedisStore`: its own connection, RESP3 `CLIENT TRACKING BCAST`). \
             A write is the store's part of one conditional write (lock, invalidate, record \
             the new tag, unlock: 4 round trips), offered at {:.0} writes/s for {:.1} s per \
             cell; saturation runs {} writers in a closed loop for {:.1} s. CPU is the \
             server's `used_cpu_sys + used_cpu_user`; the idle rate measured just before \
             is subtracted from CPU per write.\n\n",
            self.server,
            if self.params.client_cache { "on" } else { "off" },
            self.secs,
            self.params.write_rate,
            self.params.write_secs,
            self.params.saturate_writers,
            self.params.saturate_secs,
        ));
        s.push_str("## Memory per resource\n\n| resources | keys | used_memory | bytes/resource | fill calls/s |\n|---:|---:|---:|---:|---:|\n");
        for f in &self.fills {
            s.push_str(&format!(
                "| {} | {} | {:.1} MiB | {:.0} | {:.0} |\n",
                f.resources,
                f.keys,
                f.used_memory_after as f64 / (1u64 << 20) as f64,
                f.bytes_per_resource,
                f.calls_per_sec,
            ));
        }
        s.push_str("\n## Writes, pushes, CPU and clients\n\n| clients | resources | writes/s | p50 ms | p99 ms | push msgs/write/client | push msgs/write (all) | CPU µs/write | idle CPU % | saturated writes/s | CPU % then | p99 ms then | bytes/client |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.cells {
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} |\n",
                c.clients,
                c.resources,
                c.write_rate,
                c.write_p50_ms,
                c.write_p99_ms,
                c.push_msgs_per_write_per_client,
                c.push_msgs_per_write_total,
                c.cpu_us_per_write,
                c.cpu_idle_pct,
                c.saturated_writes_per_sec,
                c.saturated_cpu_pct,
                c.saturated_p99_ms,
                c.bytes_per_client,
            ));
        }
        let p = projection;
        s.push_str(&format!(
            "\n## Projection: {} pods, {} resources on one store\n\n\
             | quantity | per unit (measured) | projected |\n|---|---:|---:|\n\
             | memory for resources | {:.0} B/resource | {:.2} GiB |\n\
             | memory for clients | {:.0} B/client | {:.1} MiB |\n\
             | invalidation pushes per write | {:.2} msgs/client | {:.0} msgs |\n\
             | server CPU per write | {:.1} µs + {:.3} µs × clients | {:.0} µs |\n\
             | writes/s on one server core | | {:.0} |\n\
             | idle CPU | {:.4} % of a core/client | {:.1} % |\n",
            p.pods,
            p.resources,
            p.bytes_per_resource,
            p.resources_gib,
            p.bytes_per_client,
            p.clients_mib,
            p.push_msgs_per_write_per_client,
            p.push_msgs_per_write_fleet,
            p.cpu_us_per_write_base,
            p.cpu_us_per_write_per_client,
            p.cpu_us_per_write_at_pods,
            p.writes_per_sec_one_core,
            p.idle_cpu_pct_per_client,
            p.idle_cpu_pct_per_client * p.pods as f64,
        ));
        if !self.note.is_empty() {
            s.push_str(&format!("\n{}\n", self.note));
        }
        s
    }
}

/// Least squares `y = a + b x` (b = 0 with fewer than two distinct x).
fn fit(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len() as f64;
    if pts.is_empty() {
        return (0.0, 0.0);
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        return (my, 0.0);
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = sxy / sxx;
    (my - b * mx, b)
}
