//! The `psubd-nats-bench` command line: parses and hands over to
//! [`psubd_bench::yardstick::run`].

use clap::Parser;
use psubd_bench::yardstick::{self, YardstickArgs};

/// psubd-nats-bench: single-record JetStream publish load, the yardstick beside psubd-bench.
#[derive(Parser)]
#[command(name = "psubd-nats-bench", version, about)]
struct Cli {
    #[command(flatten)]
    args: YardstickArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("psubd-nats-bench: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(yardstick::run(cli.args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("psubd-nats-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
