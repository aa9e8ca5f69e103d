//! `psubd topic create|list|describe|alter|delete|move`.

use clap::{ArgGroup, Args, Subcommand};
use psubd_client::wire::PartitionStatus;
use psubd_client::{CleanupPolicy, Topic, TopicSpec, TopicUpdate};
use serde_json::json;

use super::connect::Connect;
use super::output::{opt, print_json, print_table, Output};

/// `psubd topic …`
#[derive(Args, Debug)]
pub struct TopicArgs {
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// How to reach the cluster (last, so its help heading covers only its flags).
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic; answers once every partition has a leader.
    Create {
        /// Topic name.
        name: String,
        /// Partitions (server default 1).
        #[arg(long)]
        partitions: Option<u32>,
        /// Replicas per partition (server default min(3, nodes)).
        #[arg(long)]
        replication_factor: Option<u32>,
        /// Keep records this long, ms (-1: no age limit; server default 7 days).
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Keep at most this many bytes per partition (-1: no limit, the default).
        #[arg(long, allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        /// A compacted topic: keeps the latest record per key.
        #[arg(long)]
        compact: bool,
        /// Remember record ids this long, ms (0: no deduplication; server default 2 min).
        #[arg(long)]
        duplicate_window_ms: Option<i64>,
    },
    /// List the topics.
    List,
    /// Show a topic's settings and its partitions.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's retention or duplicate window, or raise its partition count.
    #[command(group(ArgGroup::new("setting").required(true).multiple(true)))]
    Alter {
        /// Topic name.
        name: String,
        /// New partition count, more than it has (keyed records may then map to other
        /// partitions).
        #[arg(long, group = "setting")]
        partitions: Option<u32>,
        /// New age limit, ms (-1: none).
        #[arg(long, group = "setting", allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// New size limit per partition, bytes (-1: none).
        #[arg(long, group = "setting", allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        /// New duplicate window, ms (0: no deduplication).
        #[arg(long, group = "setting")]
        duplicate_window_ms: Option<i64>,
    },
    /// Delete a topic, its records and the groups' offsets for it.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Move a partition's replicas to other nodes (admin); answers once the move started
    /// (`psubd cluster` and `GET /v1/reassignments` show its progress).
    Move {
        /// Topic name.
        name: String,
        /// The partition.
        partition: u32,
        /// The new replicas, comma-separated node ids, as many as the replication factor;
        /// the first is the preferred leader.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
    },
}

/// Runs `psubd topic …`.
///
/// # Errors
///
/// The server's error, or no node reachable.
pub async fn run(args: TopicArgs) -> anyhow::Result<()> {
    let admin = args.connect.client()?.admin();
    let explain = |e| args.connect.explain(e);
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            retention_ms,
            retention_bytes,
            compact,
            duplicate_window_ms,
        } => {
            let spec = TopicSpec {
                name,
                partitions,
                replication_factor,
                retention_ms,
                retention_bytes,
                cleanup_policy: compact.then_some(CleanupPolicy::Compact),
                delete_retention_ms: None,
                duplicate_window_ms,
            };
            let topic = admin.create_topic(&spec).await.map_err(explain)?;
            print_topics(args.output, &[topic], false)
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await.map_err(explain)?;
            print_topics(args.output, &topics, true)
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await.map_err(explain)?;
            let partitions = admin.partitions(&name).await.map_err(explain)?;
            match args.output {
                Output::Json => print_json(&json!({"topic": topic, "partitions": partitions})),
                Output::Table => {
                    print_topics(Output::Table, &[topic], false)?;
                    println!();
                    print_partitions(&partitions)
                }
            }
        }
        TopicCommand::Alter {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            duplicate_window_ms,
        } => {
            let update = TopicUpdate {
                retention_ms,
                retention_bytes,
                duplicate_window_ms,
                partitions,
            };
            let topic = admin.alter_topic(&name, &update).await.map_err(explain)?;
            print_topics(args.output, &[topic], false)
        }
        TopicCommand::Move {
            name,
            partition,
            replicas,
        } => {
            let started = admin
                .move_replicas(&name, partition, replicas)
                .await
                .map_err(explain)?;
            match args.output {
                Output::Json => print_json(&started),
                Output::Table => {
                    let nodes =
                        |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                    println!(
                        "moving partition {} of topic {} from {} to {}",
                        started.partition,
                        started.topic,
                        nodes(&started.from),
                        nodes(&started.to)
                    );
                    Ok(())
                }
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await.map_err(explain)?;
            match args.output {
                Output::Json => print_json(&json!({"deleted": name})),
                Output::Table => {
                    println!("deleted topic {name}");
                    Ok(())
                }
            }
        }
    }
}

/// Topics as a table, or as JSON (an array for a list, else the one topic).
fn print_topics(output: Output, topics: &[Topic], list: bool) -> anyhow::Result<()> {
    match (output, topics) {
        (Output::Json, [topic]) if !list => print_json(topic),
        (Output::Json, _) => print_json(&topics),
        (Output::Table, _) => {
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.partitions.to_string(),
                        t.replication_factor.to_string(),
                        t.cleanup_policy.as_str().to_string(),
                        t.retention_ms.to_string(),
                        t.retention_bytes.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "PARTITIONS",
                    "REPLICAS",
                    "CLEANUP",
                    "RETENTION_MS",
                    "RETENTION_BYTES",
                ],
                &rows,
            )
        }
    }
}

fn print_partitions(partitions: &[PartitionStatus]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                opt(p.leader),
                p.replicas
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                opt(p.log_start_offset),
                opt(p.high_watermark),
                opt(p.stored_bytes),
            ]
        })
        .collect();
    print_table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "LOG_START",
            "HIGH_WATERMARK",
            "STORED_BYTES",
        ],
        &rows,
    )
}
