//! `psubd produce TOPIC`: one record per line of stdin.

use std::collections::VecDeque;

use clap::{Args, ValueEnum};
use psubd_client::{NewRecord, Producer, StoredDelivery};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};

use super::connect::Connect;
use super::output::print_json;

/// Deliveries awaited in input order at most this far behind the line being read, so
/// memory stays bounded on an endless stdin while records still go out in batches.
const MAX_IN_FLIGHT: usize = 10_000;

/// Longest line read: above any record a node takes (its request limit defaults to
/// 10 MiB), so memory stays bounded when stdin is not line-shaped.
const MAX_LINE_BYTES: usize = 64 << 20;

/// Lines of at most `MAX_LINE_BYTES`, read so that a `select!` may drop a pending read:
/// the bytes already read stay in `partial` for the next call.
struct Lines<R> {
    reader: R,
    partial: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    async fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            let room = (MAX_LINE_BYTES + 1).saturating_sub(self.partial.len());
            let n = (&mut self.reader)
                .take(room as u64)
                .read_until(b'\n', &mut self.partial)
                .await?;
            if self.partial.ends_with(b"\n") || (n == 0 && !self.partial.is_empty()) {
                let mut line = std::mem::take(&mut self.partial);
                if line.ends_with(b"\n") {
                    line.pop();
                }
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("a line is not UTF-8 text"));
            }
            if n == 0 {
                return Ok(None);
            }
            if self.partial.len() > MAX_LINE_BYTES {
                anyhow::bail!("a line is longer than {MAX_LINE_BYTES} bytes");
            }
        }
    }
}

/// What a line of stdin is.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// The line is the value (a string); with --key-separator, `key<C>value`.
    Text,
    /// The line is a record object: {"key", "value", "headers", "partition", "timestamp_ms"}.
    Json,
}

/// `psubd produce …`
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// How to read each line.
    #[arg(long, value_enum, default_value_t = LineFormat::Text)]
    format: LineFormat,
    /// Split each line at the first C into key and value (text format); a line without C
    /// has no key.
    #[arg(long, value_name = "C")]
    key_separator: Option<char>,
    /// Write every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Deliver every record this many ms after the node's clock: not readable before
    /// (at most the node's --max-delay-ms).
    #[arg(long, value_name = "MS")]
    delay_ms: Option<u64>,
    /// Add a header to every record (repeatable).
    #[arg(long = "header", value_name = "K=V", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Print one delivery report per record (JSON: partition, offset, timestamp_ms; a
    /// delayed record: partition, delayed, deliver_at_ms, timestamp_ms).
    #[arg(long, short)]
    verbose: bool,
    /// How to reach the cluster (last, so its help heading covers only its flags).
    #[command(flatten)]
    connect: Connect,
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{raw}' is not K=V")),
    }
}

impl ProduceArgs {
    /// The record a line stands for.
    fn record(&self, line: &str) -> anyhow::Result<NewRecord> {
        let mut record = match self.format {
            LineFormat::Json => serde_json::from_str::<NewRecord>(line)
                .map_err(|e| anyhow::anyhow!("not a record object: {e}"))?,
            LineFormat::Text => match self.key_separator.and_then(|c| line.split_once(c)) {
                Some((key, value)) => NewRecord::new(value).key(key),
                None => NewRecord::new(line),
            },
        };
        if let Some(partition) = self.partition {
            record.partition = Some(partition);
        }
        if let Some(delay_ms) = self.delay_ms {
            record = record.delay_ms(delay_ms);
        }
        for (name, value) in &self.headers {
            record = record.header(name.clone(), value.clone());
        }
        Ok(record)
    }
}

/// Runs `psubd produce`: reads stdin to its end, then waits for every delivery.
///
/// # Errors
///
/// A malformed line (nothing after it is sent), a failed record (the others are still
/// sent), or no node reachable.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let client = args.connect.client()?;
    let producer = Producer::new(client);
    let mut lines = Lines {
        reader: BufReader::new(tokio::io::stdin()),
        partial: Vec::new(),
    };
    let mut in_flight: VecDeque<(u64, StoredDelivery)> = VecDeque::new();
    let mut failures = Failures::default();
    let mut number = 0u64;
    let mut bad_line = None;
    let mut eof = false;
    // Reports are taken as they resolve, in input order, while stdin is read: an
    // interactive producer sees each report as soon as its record is stored.
    while !(eof && in_flight.is_empty()) {
        tokio::select! {
            result = next_delivery(&mut in_flight), if !in_flight.is_empty() => {
                if let Some((line, _)) = in_flight.pop_front() {
                    report(&args, &mut failures, line, result)?;
                }
            }
            line = lines.next_line(), if !eof && in_flight.len() < MAX_IN_FLIGHT => {
                number += 1;
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        eof = true;
                        continue;
                    }
                    Err(e) => {
                        bad_line = Some(anyhow::anyhow!("line {number}: {e}"));
                        eof = true;
                        continue;
                    }
                };
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                match args.record(line) {
                    Ok(record) => in_flight.push_back((number, producer.send_delayed(&args.topic, record).await?)),
                    Err(e) => {
                        bad_line = Some(anyhow::anyhow!("line {number}: {e}"));
                        eof = true;
                    }
                }
            }
        }
    }
    producer.close().await;
    if let Some(e) = bad_line {
        return Err(e);
    }
    failures.into_result(&args.connect)
}

/// The oldest delivery's outcome (never resolves when there is none).
async fn next_delivery(
    in_flight: &mut VecDeque<(u64, StoredDelivery)>,
) -> psubd_client::StoredResult {
    match in_flight.front_mut() {
        Some((_, delivery)) => delivery.await,
        None => std::future::pending().await,
    }
}

/// The first failed record and how many failed.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<(u64, psubd_client::Error)>,
}

impl Failures {
    fn into_result(self, connect: &Connect) -> anyhow::Result<()> {
        match self.first {
            None => Ok(()),
            Some((line, error)) => {
                let error = connect.explain(error);
                if self.count == 1 {
                    Err(error.context(format!("line {line}")))
                } else {
                    Err(error.context(format!(
                        "{} records failed, the first on line {line}",
                        self.count
                    )))
                }
            }
        }
    }
}

fn report(
    args: &ProduceArgs,
    failures: &mut Failures,
    line: u64,
    result: psubd_client::StoredResult,
) -> anyhow::Result<()> {
    match result {
        Ok(report) if args.verbose => print_json(&report),
        Ok(_) => Ok(()),
        Err(error) => {
            failures.count += 1;
            if failures.first.is_none() {
                failures.first = Some((line, error));
            }
            Ok(())
        }
    }
}
