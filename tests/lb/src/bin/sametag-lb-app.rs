//! One replica of the dynamic test app (see `sametag_lb_e2e::app`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sametag_lb_e2e::app::{AppConfig, serve};

/// A JSON document app that mints its own per-replica ETags.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Replica name (sent as X-Replica).
    #[arg(long, default_value = "app")]
    replica: String,
    /// Document directory shared by all replicas.
    #[arg(long)]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sametag-lb-app: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let cfg = AppConfig {
        replica: args.replica,
        data_dir: args.data_dir,
    };
    match serve(listener, cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sametag-lb-app: {e}");
            ExitCode::FAILURE
        }
    }
}
