//! [`Consumer`]: one partition, read by offset with long-polls.

use std::time::Duration;

use psubd_wire::{OffsetSpec, Record};

use crate::client::Client;
use crate::error::Error;

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Most records per fetch (the server clamps to 1..10,000).
    pub max_records: u32,
    /// How long a fetch at the end of the log waits for a record (at most 30 s).
    pub poll_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_records: 500,
            poll_timeout: Duration::from_secs(5),
        }
    }
}

/// Reads one partition in offset order. It keeps its position itself (nothing is stored
/// on the server): use a [`crate::GroupConsumer`] for committed, shared consumption.
///
/// ```no_run
/// # async fn demo() -> Result<(), psubd_client::Error> {
/// use psubd_client::{Client, Consumer, OffsetSpec};
/// let mut consumer = Consumer::new(Client::new(["http://127.0.0.1:8081"])?, "orders", 0, OffsetSpec::Earliest);
/// loop {
///     for record in consumer.poll().await? {
///         println!("{} {}", record.offset, record.value);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Consumer {
    client: Client,
    topic: String,
    partition: u32,
    next: OffsetSpec,
    high_watermark: Option<u64>,
    config: ConsumerConfig,
}

impl Consumer {
    /// A consumer of `topic`/`partition` starting at `from`, with default settings.
    pub fn new(client: Client, topic: &str, partition: u32, from: OffsetSpec) -> Self {
        Self::with_config(client, topic, partition, from, ConsumerConfig::default())
    }

    /// As [`Consumer::new`] with `config`.
    pub fn with_config(
        client: Client,
        topic: &str,
        partition: u32,
        from: OffsetSpec,
        config: ConsumerConfig,
    ) -> Self {
        Self {
            client,
            topic: topic.to_string(),
            partition,
            next: from,
            high_watermark: None,
            config,
        }
    }

    /// The next records, long-polling up to the poll timeout at the end of the log (an
    /// empty answer then). The position moves past what is returned.
    ///
    /// # Errors
    ///
    /// The server's error — `offset_out_of_range` when retention passed the position
    /// (see [`Consumer::seek`]) — or [`Error::Transport`] when no seed answers. The
    /// position does not move on an error.
    pub async fn poll(&mut self) -> Result<Vec<Record>, Error> {
        let answer = self
            .client
            .fetch(
                &self.topic,
                self.partition,
                self.next,
                self.config.max_records,
                self.config.poll_timeout,
            )
            .await?;
        self.next = OffsetSpec::At(answer.next_offset);
        self.high_watermark = Some(answer.high_watermark);
        Ok(answer.records)
    }

    /// Where the next poll starts.
    pub fn position(&self) -> OffsetSpec {
        self.next
    }

    /// Moves the position.
    pub fn seek(&mut self, to: OffsetSpec) {
        self.next = to;
    }

    /// The partition's high watermark as of the last poll.
    pub fn high_watermark(&self) -> Option<u64> {
        self.high_watermark
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}
