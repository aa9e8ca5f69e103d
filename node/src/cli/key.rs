//! `psubd key get|list|put|delete`: a compacted topic as a table (docs/api.md § Key
//! views), through psubd-client's `Keys`.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use psubd_client::Record;

use super::connect::Connect;
use super::consume::RecordFormat;
use super::output::{print_json, Output};

/// Keys asked for per page by `key list` (the API's largest page).
const PAGE: u32 = 1000;

/// How long `key get --min-offset` waits for a replica to catch up (the API's default).
const READ_WAIT: Duration = Duration::from_secs(5);

/// `psubd key …`
#[derive(Args, Debug)]
pub struct KeyArgs {
    /// How to reach the cluster (last, so its help heading covers only its flags).
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print a key's latest value (exit 1 when the key is absent or deleted).
    Get {
        /// A compacted topic.
        topic: String,
        /// The key.
        key: String,
        /// How to print it: the value, or the whole record as the API renders it.
        #[arg(long, value_enum, default_value_t = RecordFormat::Value)]
        format: RecordFormat,
        /// Read-your-writes: wait (up to 5 s) until the answering replica has applied this
        /// offset of the key's partition (the offset `key put` printed).
        #[arg(long)]
        min_offset: Option<u64>,
    },
    /// List the live keys in key order.
    List {
        /// A compacted topic.
        topic: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Stop after this many keys (default: all of them).
        #[arg(long)]
        max: Option<u64>,
        /// How to print: one key per line, or one JSON record per line (key, value,
        /// partition, offset…).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Set a key to a value; prints `{"partition","offset","timestamp_ms"}`.
    Put {
        /// A compacted topic.
        topic: String,
        /// The key.
        key: String,
        /// The value, stored as a string (with --json: parsed and stored as JSON).
        value: String,
        /// The value is JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key (writes its tombstone); prints where the tombstone went.
    Delete {
        /// A compacted topic.
        topic: String,
        /// The key.
        key: String,
    },
}

/// Runs `psubd key …`.
///
/// # Errors
///
/// The server's error (`topic_not_found`, `topic_not_compacted`…), an absent key, a
/// `--json` value that does not parse, or no node reachable.
pub async fn run(args: KeyArgs) -> anyhow::Result<()> {
    let client = args.connect.client()?;
    let explain = |e| args.connect.explain(e);
    match args.command {
        KeyCommand::Get {
            topic,
            key,
            format,
            min_offset,
        } => {
            let record = client
                .keys(&topic)
                .get(&key, min_offset, READ_WAIT)
                .await
                .map_err(explain)?
                .ok_or_else(|| anyhow::anyhow!("key '{key}' not found in topic '{topic}'"))?;
            let mut out = std::io::stdout().lock();
            match format {
                RecordFormat::Value => writeln!(out, "{}", record.value_text())?,
                RecordFormat::Json => writeln!(out, "{}", serde_json::to_string(&record)?)?,
            }
            Ok(())
        }
        KeyCommand::List {
            topic,
            prefix,
            max,
            output,
        } => {
            let keys = client.keys(&topic);
            let mut start: Option<String> = None;
            let mut left = max.unwrap_or(u64::MAX);
            // Page by page, printed as they come: memory stays one page whatever the
            // table's size.
            while left > 0 {
                let limit = u32::try_from(left).unwrap_or(PAGE).min(PAGE);
                let page = keys
                    .scan(prefix.as_deref(), start.as_deref(), limit)
                    .await
                    .map_err(explain)?;
                print_keys(output, &page.keys)?;
                left = left.saturating_sub(page.keys.len() as u64);
                match page.next {
                    Some(next) => start = Some(next),
                    None => break,
                }
            }
            Ok(())
        }
        KeyCommand::Put {
            topic,
            key,
            value,
            json,
        } => {
            let keys = client.keys(&topic);
            let report = if json {
                let value: serde_json::Value = serde_json::from_str(&value)
                    .map_err(|e| anyhow::anyhow!("the value is not JSON: {e}"))?;
                keys.put(&key, &value).await
            } else {
                keys.put_text(&key, &value).await
            };
            print_json(&report.map_err(explain)?)
        }
        KeyCommand::Delete { topic, key } => {
            let report = client.keys(&topic).delete(&key).await.map_err(explain)?;
            print_json(&report)
        }
    }
}

/// Prints one page of `key list`.
fn print_keys(output: Output, records: &[Record]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for record in records {
        match output {
            Output::Table => writeln!(out, "{}", record.key.as_deref().unwrap_or_default())?,
            Output::Json => writeln!(out, "{}", serde_json::to_string(record)?)?,
        }
    }
    out.flush()?;
    Ok(())
}
