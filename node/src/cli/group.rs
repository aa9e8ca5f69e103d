//! `psubd group list|describe|reset|delete|push set|get|delete`.

use clap::{Args, Subcommand};
use psubd_client::wire::{
    GroupOffsets, GroupState, PushRequest, PushSubscription, ResetEntry, ResetRequest,
};
use psubd_client::ResetOffset;
use serde_json::json;

use super::connect::Connect;
use super::output::{opt, print_json, print_table, Output};
use super::UsageError;

/// `psubd group …`
#[derive(Args, Debug)]
pub struct GroupArgs {
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// How to reach the cluster (last, so its help heading covers only its flags).
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// List the consumer groups.
    List,
    /// Show a group's members, their partitions, and its committed offsets and lag.
    Describe {
        /// Group name.
        group: String,
    },
    /// Set a group's committed offsets (only while it has no members).
    Reset {
        /// Group name.
        group: String,
        /// Target: earliest, latest or an offset.
        #[arg(long, value_parser = parse_target)]
        to: ResetOffset,
        /// Topics to reset (repeatable; default: every topic the group has offsets for).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Only this partition (with exactly one --topic).
        #[arg(long, requires = "topics")]
        partition: Option<u32>,
    },
    /// Delete a group without members, with its committed offsets.
    Delete {
        /// Group name.
        group: String,
    },
    /// A push subscription: the cluster POSTs the group's records to an endpoint.
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PushCommand {
    /// Make a group without members a push subscription, or change its settings.
    Set {
        /// Group name.
        group: String,
        /// Topics to push (repeatable).
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// The http:// or https:// URL each record is POSTed to.
        #[arg(long)]
        endpoint: String,
        /// Most records of one partition outstanding (default 1: strict order).
        #[arg(long)]
        max_in_flight: Option<u32>,
        /// Deadline of one POST in ms (default 10000).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Pause after a first failed attempt in ms (default 1000).
        #[arg(long)]
        min_backoff_ms: Option<u64>,
        /// Longest pause between attempts in ms (default 60000).
        #[arg(long)]
        max_backoff_ms: Option<u64>,
        /// Attempts per record before it is dead-lettered (default 5).
        #[arg(long)]
        max_deliveries: Option<u32>,
        /// Topic for records that exhausted their attempts (none: they are dropped).
        #[arg(long)]
        dead_letter_topic: Option<String>,
        /// Key of the X-Psubd-Signature HMAC (from the environment, to keep it out of
        /// the process list).
        #[arg(long, env = "PSUBD_PUSH_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Show a push subscription's settings and per-partition state.
    Get {
        /// Group name.
        group: String,
    },
    /// End a push subscription; its committed offsets stay.
    Delete {
        /// Group name.
        group: String,
    },
}

fn parse_target(raw: &str) -> Result<ResetOffset, String> {
    raw.parse()
}

/// Runs `psubd group …`.
///
/// # Errors
///
/// The server's error, or no node reachable.
pub async fn run(args: GroupArgs) -> anyhow::Result<()> {
    let admin = args.connect.client()?.admin();
    let explain = |e| args.connect.explain(e);
    match args.command {
        GroupCommand::List => {
            let groups = admin.list_groups().await.map_err(explain)?;
            if args.output == Output::Json {
                return print_json(&groups);
            }
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    vec![
                        g.group.clone(),
                        state(g.state).into(),
                        g.members.to_string(),
                    ]
                })
                .collect();
            print_table(&["GROUP", "STATE", "MEMBERS"], &rows)
        }
        GroupCommand::Describe { group } => {
            let description = admin.describe_group(&group).await.map_err(explain)?;
            let offsets = admin.group_offsets(&group).await.map_err(explain)?;
            if args.output == Output::Json {
                return print_json(&json!({"group": description, "offsets": offsets}));
            }
            println!(
                "group {}: {}, generation {}, strategy {}, coordinator node {}",
                description.group,
                state(description.state),
                description.generation,
                serde_json::to_value(description.assignment_strategy)?
                    .as_str()
                    .unwrap_or("?"),
                description.coordinator
            );
            println!();
            let rows: Vec<Vec<String>> = description
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.member_id.clone(),
                        m.topics.join(","),
                        m.assignments
                            .iter()
                            .map(|a| format!("{}/{}", a.topic, a.partition))
                            .collect::<Vec<_>>()
                            .join(","),
                        m.last_seen_ms_ago.to_string(),
                    ]
                })
                .collect();
            print_table(
                &["MEMBER", "TOPICS", "PARTITIONS", "LAST_SEEN_MS_AGO"],
                &rows,
            )?;
            println!();
            print_offsets(&offsets)
        }
        GroupCommand::Reset {
            group,
            to,
            topics,
            partition,
        } => {
            if partition.is_some() && topics.len() != 1 {
                return Err(UsageError("--partition needs exactly one --topic".into()).into());
            }
            let topics = if topics.is_empty() {
                let mut known: Vec<String> = admin
                    .group_offsets(&group)
                    .await
                    .map_err(explain)?
                    .offsets
                    .into_iter()
                    .map(|o| o.topic)
                    .collect();
                known.dedup();
                if known.is_empty() {
                    anyhow::bail!(
                        "group {group} has no committed offsets: name the topics with --topic"
                    );
                }
                known
            } else {
                topics
            };
            let request = ResetRequest {
                offsets: topics
                    .into_iter()
                    .map(|topic| ResetEntry {
                        topic,
                        partition,
                        offset: Some(to),
                        timestamp_ms: None,
                    })
                    .collect(),
            };
            let answer = admin.reset_group(&group, &request).await.map_err(explain)?;
            if args.output == Output::Json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer
                .offsets
                .iter()
                .map(|o| {
                    vec![
                        o.topic.clone(),
                        o.partition.to_string(),
                        o.offset.to_string(),
                    ]
                })
                .collect();
            print_table(&["TOPIC", "PARTITION", "OFFSET"], &rows)
        }
        GroupCommand::Push { command } => match command {
            PushCommand::Set {
                group,
                topics,
                endpoint,
                max_in_flight,
                timeout_ms,
                min_backoff_ms,
                max_backoff_ms,
                max_deliveries,
                dead_letter_topic,
                secret,
            } => {
                let settings = PushRequest {
                    topics,
                    endpoint,
                    max_in_flight,
                    timeout_ms,
                    min_backoff_ms,
                    max_backoff_ms,
                    max_deliveries,
                    dead_letter_topic,
                    secret,
                };
                let push = admin.set_push(&group, &settings).await.map_err(explain)?;
                print_push(args.output, &push)
            }
            PushCommand::Get { group } => {
                let push = admin.push(&group).await.map_err(explain)?;
                print_push(args.output, &push)
            }
            PushCommand::Delete { group } => {
                admin.delete_push(&group).await.map_err(explain)?;
                match args.output {
                    Output::Json => print_json(&json!({"deleted_push": group})),
                    Output::Table => {
                        println!("push subscription of group {group} deleted");
                        Ok(())
                    }
                }
            }
        },
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await.map_err(explain)?;
            match args.output {
                Output::Json => print_json(&json!({"deleted": group})),
                Output::Table => {
                    println!("deleted group {group}");
                    Ok(())
                }
            }
        }
    }
}

fn state(state: GroupState) -> &'static str {
    match state {
        GroupState::Stable => "stable",
        GroupState::Empty => "empty",
    }
}

fn print_push(output: Output, push: &PushSubscription) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(push);
    }
    println!(
        "push {} -> {} (topics {}, pushed by node {}, max_in_flight {}, max_deliveries {}, dead letters to {}, signed: {})",
        push.group,
        push.endpoint,
        push.topics.join(","),
        push.coordinator,
        push.max_in_flight,
        push.max_deliveries,
        push.dead_letter_topic.as_deref().unwrap_or("- (dropped)"),
        if push.secret_set { "yes" } else { "no" },
    );
    println!();
    let rows: Vec<Vec<String>> = push
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                opt(p.committed_offset),
                opt(p.lag),
                opt(p.pending_offset),
                p.delivery_attempt.to_string(),
                p.dead_lettered.to_string(),
                p.dropped.to_string(),
                p.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "LAG",
            "PENDING",
            "ATTEMPT",
            "DEAD_LETTERED",
            "DROPPED",
            "LAST_ERROR",
        ],
        &rows,
    )
}

fn print_offsets(offsets: &GroupOffsets) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = offsets
        .offsets
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                o.offset.to_string(),
                opt(o.high_watermark),
                opt(o.lag),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "COMMITTED", "HIGH_WATERMARK", "LAG"],
        &rows,
    )
}
