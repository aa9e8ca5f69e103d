//! `psubd group list|describe|reset|delete`.

use clap::{Args, Subcommand};
use psubd_client::wire::{GroupOffsets, GroupState, ResetEntry, ResetRequest};
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
