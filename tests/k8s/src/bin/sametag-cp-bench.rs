//! `sametag-cp-bench`: the control plane measured on the k8s tier's real
//! kube-apiserver (issue 12): webhook admission latency in the webhook itself
//! and through the apiserver, ETagStore create → every child applied, and
//! Redis ready → store Ready. Writes `controlplane.json` and
//! `controlplane.md` (the "Control plane" section `bench/run.sh` appends to
//! RESULTS.md) into `--out`; one progress line per step.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use sametag_k8s_e2e::cpbench::cluster::Cluster;
use sametag_k8s_e2e::cpbench::measure::{self, Params, Progress};
use sametag_k8s_e2e::cpbench::{ControlPlaneResults, markdown};
use sametag_k8s_e2e::{Error, Result};

#[derive(Parser, Debug)]
#[command(about = "Control-plane benchmark against a real kube-apiserver (k8s tier)")]
struct Args {
    /// Where controlplane.json and controlplane.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Pods per second in each admission series.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds per admission series (rate × seconds requests, at most 2000).
    #[arg(long, default_value_t = 15)]
    seconds: u32,
    /// Managed ETagStores created one after another.
    #[arg(long, default_value_t = 10)]
    stores: usize,
    /// Tiny counts (10 pods/s for 1 s, 2 stores): a smoke run.
    #[arg(long)]
    quick: bool,
    /// A remark printed in controlplane.md (e.g. other load on the machine).
    #[arg(long, default_value = "")]
    note: String,
    /// Only rewrite controlplane.md from the controlplane.json in --out.
    #[arg(long)]
    render_only: bool,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn write(out: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::write(out.join(name), text).map_err(|source| Error::Io {
        what: format!("write {}", out.join(name).display()),
        source,
    })
}

fn render(out: &Path, r: &ControlPlaneResults) -> Result<()> {
    write(out, "controlplane.md", &markdown(r))?;
    println!("results: {}", out.join("controlplane.md").display());
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        what: "create the out dir".into(),
        source,
    })?;
    let params = if args.quick {
        Params {
            rate: 10,
            seconds: 1,
            stores: 2,
        }
    } else {
        Params {
            rate: args.rate,
            seconds: args.seconds,
            stores: args.stores,
        }
    };
    let load_start = loadavg();
    let mut progress = Progress::new(2 + measure::steps(&params) + 1);
    let cluster = Cluster::start(|m| progress.say(m)).await?;
    let measured = measure::run(&cluster, &params, &mut progress).await;
    let mut r = match measured {
        Ok(r) => r,
        Err(e) => {
            return Err(Error::Other(format!(
                "{e}\noperator log tail:\n{}",
                cluster.operator.log_tail(20)
            )));
        }
    };
    progress.say("writing controlplane.json and controlplane.md");
    r.when = utc_now();
    r.nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    r.loadavg = (load_start, loadavg());
    r.note = args.note.clone();
    let json = serde_json::to_string_pretty(&r)
        .map_err(|e| Error::Other(format!("serialise the results: {e}")))?;
    write(&args.out, "controlplane.json", &json)?;
    render(&args.out, &r)
}

fn render_only(out: &Path) -> Result<()> {
    let json =
        std::fs::read_to_string(out.join("controlplane.json")).map_err(|source| Error::Io {
            what: format!("read {}", out.join("controlplane.json").display()),
            source,
        })?;
    let r: ControlPlaneResults = serde_json::from_str(&json)
        .map_err(|e| Error::Other(format!("parse controlplane.json: {e}")))?;
    render(out, &r)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let done = if args.render_only {
        render_only(&args.out)
    } else {
        run(args).await
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sametag-cp-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
