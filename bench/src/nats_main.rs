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
    psubd_bench::main_with("psubd-nats-bench", yardstick::run(cli.args))
}
