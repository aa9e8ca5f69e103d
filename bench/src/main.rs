//! The `psubd-bench` command line: parses and hands over to [`psubd_bench::run`].

use clap::Parser;
use psubd_bench::BenchArgs;

/// psubd-bench: measure a psubd cluster (publish and consume load, latency, throughput).
#[derive(Parser)]
#[command(name = "psubd-bench", version, about)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    psubd_bench::main_with("psubd-bench", psubd_bench::run(cli.args))
}
