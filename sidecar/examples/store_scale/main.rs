//! The store at scale (run by `bench/store-scale.sh`): many sidecars' store
//! handles on one real Redis or Valkey, as clients and resources grow.
//! Writes `<out>.json` and `<out>.md` and prints a progress line per step.
//!
//! ```text
//! cargo run --release -p sametag-sidecar --example store_scale -- \
//!     --redis redis://127.0.0.1:6379 --clients 25,50,100,200 \
//!     --resources 1000,10000,100000 --out bench/results/store-scale
//! ```

mod sim;

use std::process::ExitCode;

use clap::Parser;

/// Measure the Redis store with many clients and resources.
#[derive(Parser, Debug)]
struct Args {
    /// The server (an empty, dedicated one: the run fills it and reads its
    /// `INFO`).
    #[arg(long, required_unless_present = "render_only")]
    redis: Option<String>,
    /// Measure nothing: read `<out>.json` and write the projection and
    /// `<out>.md` again (after a change to the report's layout).
    #[arg(long)]
    render_only: bool,
    /// Client counts, ascending.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,200")]
    clients: Vec<usize>,
    /// Resource counts, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    resources: Vec<usize>,
    /// Offered writes per second in each cell.
    #[arg(long, default_value_t = 300.0)]
    write_rate: f64,
    /// Seconds of fixed-rate writes per cell.
    #[arg(long, default_value_t = 3.0)]
    write_secs: f64,
    /// Seconds of closed-loop writes per cell (0: none).
    #[arg(long, default_value_t = 2.0)]
    saturate_secs: f64,
    /// Concurrent writers in the closed loop.
    #[arg(long, default_value_t = 32)]
    saturate_writers: usize,
    /// Seconds of idle CPU measurement per cell.
    #[arg(long, default_value_t = 1.0)]
    idle_secs: f64,
    /// Push observers.
    #[arg(long, default_value_t = 2)]
    observers: usize,
    /// Concurrent calls while filling.
    #[arg(long, default_value_t = 64)]
    fill_concurrency: usize,
    /// Project to this many pods ...
    #[arg(long, default_value_t = 1000)]
    project_pods: usize,
    /// ... and this many resources.
    #[arg(long, default_value_t = 10_000_000)]
    project_resources: u64,
    /// The store clients' local cache and client tracking (`false`: no
    /// pushes to them, a round trip per lookup).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    client_cache: bool,
    /// A line on where it ran, kept in the report.
    #[arg(long, default_value = "")]
    note: String,
    /// Output path without extension (`.json` and `.md` are written).
    #[arg(long)]
    out: std::path::PathBuf,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let ascending = |v: &[usize]| !v.is_empty() && v.windows(2).all(|w| w[0] < w[1]);
    if !ascending(&a.clients) || !ascending(&a.resources) || a.clients[0] == 0 {
        eprintln!("store_scale: --clients and --resources must be ascending and positive");
        return ExitCode::from(2);
    }
    let params = sim::Params {
        clients: a.clients,
        resources: a.resources,
        write_rate: a.write_rate,
        write_secs: a.write_secs,
        saturate_secs: a.saturate_secs,
        saturate_writers: a.saturate_writers,
        idle_secs: a.idle_secs,
        observers: a.observers,
        fill_concurrency: a.fill_concurrency,
        prefix: "scale".into(),
        client_cache: a.client_cache,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("store_scale: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let report = if a.render_only {
        std::fs::read_to_string(a.out.with_extension("json"))
            .map_err(|e| e.to_string())
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).map_err(|e| e.to_string()))
            .and_then(|v| {
                serde_json::from_value::<sim::Report>(v["report"].clone())
                    .map_err(|e| e.to_string())
            })
    } else {
        let url = a.redis.clone().unwrap_or_default();
        rt.block_on(sim::run(&url, &params, |line| {
            println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
        }))
        .map_err(|e| e.to_string())
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("store_scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = report;
    if !a.note.is_empty() {
        report.note = a.note.clone();
    }
    let projection = report.project(a.project_pods, a.project_resources);
    let json = serde_json::json!({ "report": report, "projection": projection });
    let written = serde_json::to_string_pretty(&json)
        .map_err(|e| e.to_string())
        .and_then(|j| {
            std::fs::write(a.out.with_extension("json"), j + "\n").map_err(|e| e.to_string())
        })
        .and_then(|()| {
            std::fs::write(a.out.with_extension("md"), report.markdown(&projection))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        eprintln!("store_scale: writing {}: {e}", a.out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} and {}",
        a.out.with_extension("json").display(),
        a.out.with_extension("md").display()
    );
    ExitCode::SUCCESS
}
