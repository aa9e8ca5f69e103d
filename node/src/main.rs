//! The `psubd` command line: parses, sets up logging, and hands over.

use clap::{Parser, Subcommand};
use psubd::config::NodeConfig;
use psubd::dev::DevArgs;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator. Measured under the batch publish load
/// (`psubd bench --dev --producers 64 --records-per-request 100`, 3 alternating runs each,
/// /work/notes/perf-findings.md): about 15 % more records/s than glibc malloc, whose
/// arena locking, chunk consolidation and page faults on freshly mapped memory (sled
/// allocates an 8 MiB buffer per log segment) were a fifth of the nodes' CPU. mimalloc
/// was as fast but its resident memory grew to twice glibc's and kept growing.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// psubd: a self-contained, Raft-replicated pub/sub cluster.
#[derive(Parser)]
#[command(name = "psubd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Node(NodeConfig),
    /// Start a local cluster of node processes (Ctrl-C stops it).
    Dev(DevArgs),
    /// Measure a cluster: publish and consume load, latency and throughput.
    Bench(Box<psubd::bench::BenchArgs>),
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("PSUBD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("psubd: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(config) => {
                let config = config.validate()?;
                psubd::run(config, psubd::signal::terminated()).await
            }
            Command::Dev(args) => psubd::dev::run(args).await,
            Command::Bench(args) => psubd::bench::run(*args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("psubd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
