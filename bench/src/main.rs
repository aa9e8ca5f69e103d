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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("psubd-bench: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(psubd_bench::run(cli.args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("psubd-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
