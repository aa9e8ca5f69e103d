//! The `psubd` command line: parses, sets up logging, and hands over.

use clap::{Parser, Subcommand};
use psubd::cli;
use psubd::config::NodeConfig;
use psubd::dev::DevArgs;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator. Measured under the batch publish load
/// (`psubd-bench --dev --producers 64 --records-per-request 100`, 3 alternating runs
/// each): about 15 % more records/s than glibc malloc, whose
/// arena locking, chunk consolidation and page faults on freshly mapped memory (sled
/// allocates an 8 MiB buffer per log segment) were a fifth of the nodes' CPU. mimalloc
/// was as fast but its resident memory grew to twice glibc's and kept growing.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start through its `malloc_conf` symbol (the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them for experiments).
///
/// - `oversize_threshold:32 MiB`: sled allocates an 8 MiB buffer for every segment of its
///   log. With jemalloc's default (8 MiB) such buffers come from an arena that hands the
///   pages back to the OS at once, so every segment's 2,048 pages faulted and were zeroed
///   anew: 17 % of node CPU under the batch load (~215,000 page faults per 5 s per node).
/// - `dirty_decay_ms:2000` (default 10 s): freed segment buffers are kept for reuse about
///   2 s instead of 10 s, which keeps resident memory where it was with the default.
///
/// Measured (alternating runs): node CPU per 1,000 records
/// 8.3 / 9.5 ms vs 11.5 / 10.7 ms with jemalloc's defaults, page faults ~81,000 vs
/// ~215,000 per 5 s per node; RSS max 332–467 MB vs 322–334 MB. `oversize_threshold`
/// alone (10 s decay) saved as much CPU but kept ~100 MB more resident.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: Option<&'static u8> = Some(&MALLOC_CONF[0]);

/// The text behind [`malloc_conf`]: a NUL-terminated C string, as jemalloc reads it.
static MALLOC_CONF: [u8; 48] = *b"oversize_threshold:33554432,dirty_decay_ms:2000\0";

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
    Node(Box<NodeConfig>),
    /// Start a local cluster of node processes (Ctrl-C stops it).
    Dev(DevArgs),
    /// Create, list, describe, alter and delete topics of a running cluster.
    Topic(cli::topic::TopicArgs),
    /// Publish stdin to a topic, one record per line.
    Produce(cli::produce::ProduceArgs),
    /// Print a topic's records, one per line, following new ones.
    Consume(cli::consume::ConsumeArgs),
    /// Read and write a compacted topic as a table: get, list, put and delete keys.
    Key(cli::key::KeyArgs),
    /// List, describe, reset and delete consumer groups.
    Group(cli::group::GroupArgs),
    /// Show the cluster's nodes and who leads what.
    Cluster(cli::cluster::ClusterArgs),
}

impl Command {
    /// Whether this runs a node (and logs like one) rather than talking to one.
    fn runs_nodes(&self) -> bool {
        matches!(self, Command::Node(_) | Command::Dev(_))
    }
}

/// The log filter unless `PSUBD_LOG` (or `RUST_LOG`) sets one. openraft is left out:
/// it logs a peer's every failed heartbeat and a late vote answer at WARN or ERROR, while
/// for psubd those are routine; what matters of it (a group stopped by a storage failure)
/// the node reports itself. `PSUBD_LOG=info,openraft=warn` brings its messages back.
const DEFAULT_LOG_FILTER: &str = "info,openraft=off,sled=warn";

fn init_logging() {
    let filter = EnvFilter::try_from_env("PSUBD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour only on a terminal: `psubd dev` and service managers write logs to files.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Client commands print their own messages; a node logs.
    if cli.command.runs_nodes() {
        init_logging();
    }
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
            Command::Topic(args) => cli::topic::run(args).await,
            Command::Produce(args) => cli::produce::run(args).await,
            Command::Consume(args) => cli::consume::run(args).await,
            Command::Key(args) => cli::key::run(args).await,
            Command::Group(args) => cli::group::run(args).await,
            Command::Cluster(args) => cli::cluster::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("psubd: {error:#}");
            std::process::ExitCode::from(cli::exit_code(&error))
        }
    }
}
