//! `sametag-operator`: `crdgen` prints the CRD, `run` runs the controller,
//! the admission webhook and the metrics server, `invalidate` purges paths
//! and surrogate keys in stores through the cluster, `check` diagnoses an
//! installation.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use sametag_operator::config::{Cli, Command, InvalidateArgs, LogFormat, RunArgs};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut command = Cli::command();
    // Installed as `kubectl-sametag`, help and errors say `kubectl sametag`.
    if let Some(name) = std::env::args()
        .next()
        .as_deref()
        .and_then(sametag_operator::config::display_name)
    {
        command = command.bin_name(name);
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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
        Command::Invalidate(args) => invalidate(args),
        Command::Check(args) => check(args),
    }
}

fn check(args: sametag_operator::check::CheckArgs) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(sametag_operator::check::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sametag-operator check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn invalidate(args: InvalidateArgs) -> ExitCode {
    // One request per store: no need for worker threads.
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(sametag_operator::invalidate::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sametag-operator invalidate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime `builder` makes, or `None` after saying why it could not.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("sametag-operator: cannot start the runtime: {e}"))
        .ok()
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
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
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
