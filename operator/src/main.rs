//! `sametag-operator`: `crdgen` prints the CRD, `run` runs the controller,
//! the admission webhook and the metrics server.

use std::process::ExitCode;

use clap::Parser;
use sametag_operator::config::{Cli, Command, LogFormat, RunArgs};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => match sametag_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sametag-operator: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(*args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    // Renewing a certificate that is always "about to expire" would rewrite
    // the Secret on every check.
    if args.cert_renew_before >= args.cert_validity {
        eprintln!("sametag-operator: --cert-renew-before must be shorter than --cert-validity");
        return ExitCode::from(2);
    }
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sametag-operator: invalid --log filter {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sametag-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sametag_operator::run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sametag-operator stopped");
            eprintln!("sametag-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
