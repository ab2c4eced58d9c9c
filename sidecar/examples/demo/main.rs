//! The sametag demo: the problem and its fix, side by side, in one process.
//!
//! Several replicas of one site sit behind a round-robin balancer. Each mints
//! its own ETag (from its copy's mtime, as nginx does), so a browser that
//! revalidates through the balancer mostly lands on a replica that does not
//! know its tag and downloads the whole body again. Then the same traffic goes
//! through a sametag sidecar in front of each replica, all sharing one store.
//!
//!     cargo run --release -p sametag-sidecar --example demo
//!     cargo run --release -p sametag-sidecar --example demo -- --redis redis://127.0.0.1:6379

mod apps;
mod balancer;
mod client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use sametag_sidecar::store::Store;
use sametag_sidecar::{Server, ServerConfig};

use client::Tally;

/// Replays a browser's revalidation traffic through a round-robin balancer,
/// without and with sametag, and prints what changed.
#[derive(Parser)]
#[command(name = "demo")]
struct Args {
    /// App replicas behind the balancer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    replicas: u16,
    /// Revalidation rounds over every resource.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rounds: u16,
    /// Use this Redis as the shared store (else the embedded store).
    #[arg(long, env = "SAMETAG_REDIS_URL")]
    redis: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("demo: {err}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let site = apps::Site::sample();
    let paths = site.paths();
    let rounds = usize::from(args.rounds);

    // Every replica serves the same bytes but copied at a different time.
    let now = SystemTime::now();
    let mut apps = Vec::new();
    for i in 0..args.replicas {
        let mtime = now - Duration::from_secs(3600 * (u64::from(i) + 1));
        apps.push(apps::start_replica(site.clone(), mtime).await?);
    }
    println!(
        "{} app replicas, each minting its own ETag: {apps:?}",
        apps.len()
    );

    // Without sametag: the balancer in front of the apps.
    let mut without = Tally::default();
    let lb = balancer::start(apps.clone()).await?;
    client::agreement(&apps, &paths, &mut without).await;
    client::replay(lb, &paths, rounds, &mut without).await;
    client::change_and_check(lb, "/api/items", usize::from(args.replicas), &mut without).await;

    // With sametag: one sidecar per replica, one shared store.
    let (store, store_name) = store(args.redis.as_deref()).await?;
    let mut sidecars = Vec::new();
    for app in &apps {
        sidecars.push(start_sidecar(*app, store.clone()).await?);
    }
    println!(
        "{} sidecars sharing the {store_name}: {sidecars:?}",
        sidecars.len()
    );
    let mut with = Tally::default();
    let lb = balancer::start(sidecars.clone()).await?;
    client::agreement(&sidecars, &paths, &mut with).await;
    client::replay(lb, &paths, rounds, &mut with).await;
    client::change_and_check(lb, "/api/items", usize::from(args.replicas), &mut with).await;

    print_table(&without, &with);
    // The demo doubles as a smoke test (tests/run runs it): fail loudly.
    let agreed = |m: &std::collections::BTreeMap<_, std::collections::BTreeSet<String>>| {
        m.values().all(|s| s.len() == 1)
    };
    if with.errors > 0
        || with.stale_304 > 0
        || with.not_modified != with.revalidations
        || !agreed(&with.etags_per_path)
        || !agreed(&with.dates_per_path)
    {
        return Err(
            "with sametag, replicas should agree, every revalidation be a 304, no 304 stale".into(),
        );
    }
    Ok(())
}

async fn store(
    redis: Option<&str>,
) -> Result<(Arc<dyn Store>, String), Box<dyn std::error::Error + Send + Sync>> {
    match redis {
        Some(url) => {
            use sametag_sidecar::store::redis::{RedisOptions, RedisStore};
            let store = RedisStore::connect(url, "sametag-demo", RedisOptions::default())?;
            // Until connected the sidecars would serve degraded (the apps'
            // own Last-Modified), which is not what the demo is about.
            if !store.wait_up(Duration::from_secs(5)).await {
                return Err(format!("cannot reach Redis at {url}").into());
            }
            Ok((Arc::new(store), format!("Redis store at {url}")))
        }
        None => Ok((
            Arc::new(sametag_sidecar::store::memory::MemoryStore::new()),
            "embedded store".to_owned(),
        )),
    }
}

async fn start_sidecar(
    app: SocketAddr,
    store: Arc<dyn Store>,
) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
    let upstream = app.to_string().parse()?;
    let config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), upstream);
    let server = Server::bind(config, store).await?;
    let addr = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));
    Ok(addr)
}

fn print_table(without: &Tally, with: &Tally) {
    let pct = |n: usize, d: usize| {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    };
    let max_distinct = |m: &std::collections::BTreeMap<
        String,
        std::collections::BTreeSet<String>,
    >| { m.values().map(|s| s.len()).max().unwrap_or(0) };
    let rows: [(&str, String, String); 7] = [
        (
            "revalidations",
            without.revalidations.to_string(),
            with.revalidations.to_string(),
        ),
        (
            "304 Not Modified",
            format!(
                "{} ({:.0}%)",
                without.not_modified,
                pct(without.not_modified, without.revalidations)
            ),
            format!(
                "{} ({:.0}%)",
                with.not_modified,
                pct(with.not_modified, with.revalidations)
            ),
        ),
        (
            "body bytes sent",
            without.body_bytes.to_string(),
            with.body_bytes.to_string(),
        ),
        (
            "ETags per resource across replicas",
            max_distinct(&without.etags_per_path).to_string(),
            max_distinct(&with.etags_per_path).to_string(),
        ),
        (
            "Last-Modified values per resource",
            max_distinct(&without.dates_per_path).to_string(),
            max_distinct(&with.dates_per_path).to_string(),
        ),
        (
            "stale 304s after a write",
            without.stale_304.to_string(),
            with.stale_304.to_string(),
        ),
        (
            "errors",
            without.errors.to_string(),
            with.errors.to_string(),
        ),
    ];
    println!();
    println!(
        "{:<36} {:>18} {:>18}",
        "", "without sametag", "with sametag"
    );
    for (name, a, b) in rows {
        println!("{name:<36} {a:>18} {b:>18}");
    }
    let saved = without.body_bytes.saturating_sub(with.body_bytes);
    println!(
        "\nsametag saved {saved} bytes ({:.0}%) and every replica agreed on one ETag per resource.",
        pct(saved, without.body_bytes.max(1))
    );
}
