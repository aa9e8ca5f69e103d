//! `psubd consume TOPIC`: records to stdout, one per line, following new ones.

use std::io::Write;

use clap::{Args, ValueEnum};
use psubd_client::{
    AutoOffsetReset, Client, Consumer, GroupConfig, GroupConsumer, OffsetSpec, Record,
};
use tokio::sync::mpsc;

use super::connect::Connect;
use super::UsageError;

/// Batches buffered between the partition readers and stdout.
const READER_QUEUE: usize = 16;

/// How a record is printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// The value alone: a string as it is, other JSON as its text.
    Value,
    /// The record as the API renders it (topic, partition, offset, key, value, headers…).
    Json,
}

/// `psubd consume …`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Read only this partition (default: every partition).
    #[arg(long)]
    partition: Option<u32>,
    /// Where to start: earliest, latest (only new records), an offset, or @ and a time in
    /// ms since the epoch (the first record stamped at or after it). With --group:
    /// where a partition without a committed offset starts, earliest or latest.
    #[arg(long, default_value = "earliest", value_parser = parse_from)]
    from: OffsetSpec,
    /// Read as a member of this consumer group, committing what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Stop after printing this many records.
    #[arg(long)]
    max: Option<u64>,
    /// How to print each record.
    #[arg(long, value_enum, default_value_t = RecordFormat::Value)]
    format: RecordFormat,
    /// Print `key<C>value` (an absent key as nothing), as `produce --key-separator` reads
    /// it back (value format).
    #[arg(long, value_name = "C", conflicts_with = "format")]
    key_separator: Option<char>,
    /// Stop at the end of the log as it was when the command started, instead of
    /// following new records (not with --group).
    #[arg(long, conflicts_with = "group")]
    exit_at_end: bool,
    /// How to reach the cluster (last, so its help heading covers only its flags).
    #[command(flatten)]
    connect: Connect,
}

fn parse_from(raw: &str) -> Result<OffsetSpec, String> {
    raw.parse()
}

/// Prints records and counts them against `--max`.
struct Printer {
    format: RecordFormat,
    key_separator: Option<char>,
    left: Option<u64>,
}

impl Printer {
    /// Prints as many of `records` as `--max` allows and returns how many it printed.
    fn print(&mut self, records: &[Record]) -> anyhow::Result<usize> {
        let take = match self.left {
            Some(left) => records
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => records.len(),
        };
        let mut out = std::io::stdout().lock();
        for record in &records[..take] {
            match (self.format, self.key_separator) {
                (RecordFormat::Value, Some(c)) => writeln!(
                    out,
                    "{}{c}{}",
                    record.key.as_deref().unwrap_or_default(),
                    record.value_text()
                )?,
                (RecordFormat::Value, None) => writeln!(out, "{}", record.value_text())?,
                (RecordFormat::Json, _) => writeln!(out, "{}", serde_json::to_string(record)?)?,
            }
        }
        out.flush()?;
        if let Some(left) = self.left.as_mut() {
            *left -= take as u64;
        }
        Ok(take)
    }

    fn done(&self) -> bool {
        self.left == Some(0)
    }
}

/// Runs `psubd consume` until `--max` records are printed or Ctrl-C.
///
/// # Errors
///
/// The server's error (an unknown topic…), no node reachable, or stdout closed.
pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.connect.client()?;
    let mut printer = Printer {
        format: args.format,
        key_separator: args.key_separator,
        left: args.max,
    };
    if printer.done() {
        return Ok(());
    }
    let result = match &args.group {
        Some(group) => consume_group(&args, client, group, &mut printer).await,
        None => consume_partitions(&args, client, &mut printer).await,
    };
    // `psubd consume … | head`: a closed stdout ends the command quietly.
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn consume_partitions(
    args: &ConsumeArgs,
    client: Client,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let admin = client.admin();
    let explain = |e| args.connect.explain(e);
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => {
            let topic = admin.describe_topic(&args.topic).await.map_err(explain)?;
            (0..topic.partitions).collect()
        }
    };
    // --exit-at-end: each partition's high watermark now is where its reader stops.
    let mut ends = std::collections::BTreeMap::new();
    if args.exit_at_end {
        for status in admin.partitions(&args.topic).await.map_err(explain)? {
            let end = status.high_watermark.ok_or_else(|| {
                anyhow::anyhow!(
                    "no replica of partition {} answered: its end is unknown",
                    status.partition
                )
            })?;
            // An empty log (or one retention emptied) has nothing to read from earliest.
            let start = status.log_start_offset.unwrap_or(0);
            ends.insert(status.partition, (start, end));
        }
    }
    // One reader per partition, each long-polling its own partition; their batches meet
    // here so a quiet partition never delays a busy one.
    let (tx, mut rx) = mpsc::channel(READER_QUEUE);
    let mut readers = tokio::task::JoinSet::new();
    for partition in partitions {
        let bounds = ends.get(&partition).copied();
        let nothing_to_read = bounds.is_some_and(|(start, end)| match args.from {
            OffsetSpec::Latest => true,
            OffsetSpec::Earliest | OffsetSpec::AtTime(_) => start >= end,
            OffsetSpec::At(n) => n >= end,
        });
        if nothing_to_read {
            continue;
        }
        let end = bounds.map(|(_, end)| end);
        let mut consumer = Consumer::new(client.clone(), &args.topic, partition, args.from);
        let tx = tx.clone();
        readers.spawn(async move {
            loop {
                if let (Some(end), OffsetSpec::At(next)) = (end, consumer.position()) {
                    if next >= end {
                        return;
                    }
                }
                let batch = consumer.poll().await;
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(tx);
    // One Ctrl-C listener for the whole run: a press while a batch prints still counts.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { return Ok(()) };
                let records = batch.map_err(|e| args.connect.explain(e))?;
                printer.print(&records)?;
                if printer.done() {
                    return Ok(());
                }
            }
            _ = &mut interrupted => return Ok(()),
        }
    }
}

async fn consume_group(
    args: &ConsumeArgs,
    client: Client,
    group: &str,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    if args.partition.is_some() {
        return Err(UsageError(
            "--partition cannot be used with --group: the group assigns partitions".into(),
        )
        .into());
    }
    let reset = match args.from {
        OffsetSpec::Earliest => AutoOffsetReset::Earliest,
        OffsetSpec::Latest => AutoOffsetReset::Latest,
        OffsetSpec::At(_) | OffsetSpec::AtTime(_) => {
            return Err(UsageError(
                "--from OFFSET cannot be used with --group: a group starts at its committed \
                 offsets (move them with `psubd group reset`)"
                    .into(),
            )
            .into())
        }
    };
    let config = GroupConfig {
        auto_offset_reset: Some(reset),
        ..GroupConfig::default()
    };
    let mut member = GroupConsumer::join(client, group, &[args.topic.as_str()], config)
        .await
        .map_err(|e| args.connect.explain(e))?;
    let outcome = group_loop(args, &mut member, printer).await;
    // Leaving hands the partitions on at once; what was printed is committed already.
    let left = member.leave().await;
    outcome?;
    left.map_err(|e| args.connect.explain(e))
}

async fn group_loop(
    args: &ConsumeArgs,
    member: &mut GroupConsumer,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    // One Ctrl-C listener for the whole run: a press while a batch prints or commits
    // ends the loop after that commit.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let records = tokio::select! {
            records = member.poll() => records.map_err(|e| args.connect.explain(e))?,
            _ = &mut interrupted => return Ok(()),
        };
        let printed = printer.print(&records)?;
        match member.commit_records(&records[..printed]).await {
            Ok(()) => {}
            Err(e) if e.is_rebalance() => {
                eprintln!("psubd: the group rebalanced; records not committed are read again: {e}")
            }
            Err(e) => return Err(args.connect.explain(e)),
        }
        if printer.done() {
            return Ok(());
        }
    }
}
