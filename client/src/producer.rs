//! [`Producer`]: batches records per topic in one background task and reports each
//! record's delivery through its own future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use psubd_wire::{DelayedReport, DeliveryReport, NewRecord, RecordReport};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::Error;

/// Most records the server takes in one request (docs/api.md § Names and limits).
pub const MAX_RECORDS_PER_REQUEST: usize = 1000;

/// Settings of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long the first record of a batch waits for others to join it.
    pub linger: Duration,
    /// Most records in one request (1 to 1000).
    pub max_batch_records: usize,
    /// Records queued and not yet sent; [`Producer::send`] waits while it is full.
    pub queue_capacity: usize,
    /// Attempts of a record its partition could not take (a 207 row `not_available` or
    /// `insufficient_storage`, which promise it was not written).
    pub max_record_attempts: u32,
    /// Pause before such a record is sent again.
    pub retry_pause: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch_records: 500,
            queue_capacity: 10_000,
            max_record_attempts: 5,
            retry_pause: Duration::from_millis(200),
        }
    }
}

/// The outcome of one record: where it was stored, or why not.
pub type DeliveryResult = Result<DeliveryReport, Error>;

/// Where a record sent with [`Producer::send_delayed`] was stored: at an offset, or (a
/// record with a due time still ahead) in its partition's delay queue, where it gets an
/// offset when released. Serialises as the API's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Stored {
    /// In the log.
    Offset(DeliveryReport),
    /// Waiting for its due time.
    Delayed(DelayedReport),
}

/// What a [`StoredDelivery`] resolves to.
pub type StoredResult = Result<Stored, Error>;

/// A record's delivery, resolved once its batch is answered.
///
/// `Ok` means the record is acknowledged (`acks=all`: on a majority of replicas' disks).
/// An `Err` whose [`Error::code`] is `outcome_unknown`, or an [`Error::Transport`] with
/// `maybe_sent`, means the record may or may not be stored.
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<StoredResult>,
}

impl Future for Delivery {
    type Output = DeliveryResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(Ok(Stored::Offset(report))) => Ok(report),
            // `send` refuses records with a due time, so a server that delays one breaks
            // the contract.
            Ok(Ok(Stored::Delayed(report))) => Err(Error::Unexpected {
                url: String::new(),
                status: 200,
                detail: format!("a record without a due time was delayed: {report:?}"),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Closed),
        })
    }
}

/// The delivery of a record sent with [`Producer::send_delayed`]: resolves to where it
/// was stored.
#[derive(Debug)]
pub struct StoredDelivery {
    rx: oneshot::Receiver<StoredResult>,
}

impl Future for StoredDelivery {
    type Output = StoredResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

enum Message {
    Record(Pending),
    Flush(oneshot::Sender<()>),
}

/// Records are not `Debug` (their values may be large); the queue only says it is one.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

struct Pending {
    topic: String,
    record: NewRecord,
    reply: oneshot::Sender<StoredResult>,
}

/// Sends records in batches. Cheap to clone: clones share the queue and the task.
///
/// One background task per producer takes records from a bounded queue, gathers up to
/// `max_batch_records` of them for at most `linger`, and sends one request per topic,
/// one request at a time, so records of a partition are stored in the order they were
/// sent. Records the server reports as not written are sent again (bounded); nothing
/// whose outcome is unknown is ever sent twice. A request refused because of one record
/// (too large, an unknown partition…) writes nothing, so it is split until that record
/// fails alone and the others are stored.
///
/// ```no_run
/// # async fn demo() -> Result<(), psubd_client::Error> {
/// use psubd_client::{Client, NewRecord, Producer};
/// let producer = Producer::new(Client::new(["http://127.0.0.1:8081"])?);
/// let delivery = producer.send("orders", NewRecord::new(12).key("alice")).await?;
/// let report = delivery.await?;
/// println!("stored at {}/{}", report.partition, report.offset);
/// producer.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    tx: mpsc::Sender<Message>,
    task: std::sync::Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Producer {
    /// A producer with default settings. Must be called within a tokio runtime.
    pub fn new(client: Client) -> Self {
        Self::with_config(client, ProducerConfig::default())
    }

    /// A producer with `config` (out-of-range values are clamped).
    pub fn with_config(client: Client, mut config: ProducerConfig) -> Self {
        config.max_batch_records = config.max_batch_records.clamp(1, MAX_RECORDS_PER_REQUEST);
        config.queue_capacity = config.queue_capacity.max(1);
        config.max_record_attempts = config.max_record_attempts.max(1);
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let task = tokio::spawn(run(client, config, rx));
        Self {
            tx,
            task: std::sync::Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    /// Queues `record` for `topic`, waiting while the queue is full; the returned future
    /// resolves to its delivery.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the producer was closed; [`Error::Config`] for a record with
    /// a due time (`delay_ms`, `deliver_at_ms`), which has no offset to report yet: send
    /// it with [`Producer::send_delayed`].
    pub async fn send(&self, topic: &str, record: NewRecord) -> Result<Delivery, Error> {
        if record.is_delayed() {
            return Err(Error::Config(
                "a record with a due time is reported without an offset: use \
                 Producer::send_delayed"
                    .into(),
            ));
        }
        Ok(Delivery {
            rx: self.enqueue(topic, record).await?,
        })
    }

    /// Queues `record`, which may carry a due time (`delay_ms`, `deliver_at_ms`), for
    /// `topic`, waiting while the queue is full; the returned future resolves to where it
    /// was stored: an offset, or the delay queue with its due time.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the producer was closed.
    pub async fn send_delayed(
        &self,
        topic: &str,
        record: NewRecord,
    ) -> Result<StoredDelivery, Error> {
        Ok(StoredDelivery {
            rx: self.enqueue(topic, record).await?,
        })
    }

    async fn enqueue(
        &self,
        topic: &str,
        record: NewRecord,
    ) -> Result<oneshot::Receiver<StoredResult>, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Record(Pending {
                topic: topic.to_string(),
                record,
                reply,
            }))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Waits until every record queued before this call has its delivery resolved.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the producer was closed.
    pub async fn flush(&self) -> Result<(), Error> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Message::Flush(done))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Sends what is queued and stops the task once every clone is closed or dropped.
    pub async fn close(self) {
        let task = self.task.lock().await.take();
        drop(self.tx);
        if let Some(task) = task {
            // Other clones may still hold the queue: the task ends when the last goes.
            let _ = task.await;
        }
    }
}

async fn run(client: Client, config: ProducerConfig, mut rx: mpsc::Receiver<Message>) {
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Message::Record(p) => batch.push(p),
            Message::Flush(done) => flushes.push(done),
        }
        let deadline = Instant::now() + config.linger;
        while flushes.is_empty() && batch.len() < config.max_batch_records {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Message::Record(p))) => batch.push(p),
                Ok(Some(Message::Flush(done))) => flushes.push(done),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        send_batch(&client, &config, batch).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Sends the batch, one request per topic in order of first appearance.
async fn send_batch(client: &Client, config: &ProducerConfig, batch: Vec<Pending>) {
    let mut topics: Vec<(String, Vec<Pending>)> = Vec::new();
    for pending in batch {
        match topics.iter_mut().find(|(t, _)| *t == pending.topic) {
            Some((_, list)) => list.push(pending),
            None => topics.push((pending.topic.clone(), vec![pending])),
        }
    }
    for (topic, list) in topics {
        send_topic(client, config, &topic, list).await;
    }
}

/// Whole-request refusals caused by some of the records (or their number or size): the
/// node wrote nothing, so the batch is split in halves and each half sent on its own,
/// until the culprits fail alone and their neighbours are stored.
const SPLITTABLE: [&str; 7] = [
    "invalid_request",
    "invalid_json",
    "partition_not_found",
    "record_too_large",
    "headers_too_large",
    "request_too_large",
    "too_many_records",
];

/// Publishes `pending` to `topic` and resolves every record's delivery: batches refused
/// because of some of their records are split (at most log2(n) levels), records the
/// answer says were not written are sent again (bounded).
async fn send_topic(client: &Client, config: &ProducerConfig, topic: &str, pending: Vec<Pending>) {
    let mut batches = std::collections::VecDeque::from([pending]);
    while let Some(mut batch) = batches.pop_front() {
        let Err(error) = send_batch_once(client, config, topic, &mut batch).await else {
            continue;
        };
        if batch.len() > 1 && error.code().is_some_and(|c| SPLITTABLE.contains(&c)) {
            let second = batch.split_off(batch.len() / 2);
            batches.push_front(second);
            batches.push_front(batch);
        } else {
            for p in batch {
                let _ = p.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Sends `pending`, resolving the records the node answered for and resending (bounded)
/// those it reports as not written. On a whole-request failure the records still
/// unresolved stay in `pending` and the error is returned.
async fn send_batch_once(
    client: &Client,
    config: &ProducerConfig,
    topic: &str,
    pending: &mut Vec<Pending>,
) -> Result<(), Error> {
    let mut attempt = 1;
    while !pending.is_empty() {
        let records = pending.iter().map(|p| p.record.clone()).collect();
        let answer = client.publish(topic, records).await?;
        if answer.offsets.len() != pending.len() {
            return Err(Error::Unexpected {
                url: topic.to_string(),
                status: 200,
                detail: format!(
                    "{} reports for {} records",
                    answer.offsets.len(),
                    pending.len()
                ),
            });
        }
        let mut again = Vec::new();
        for (p, report) in pending.drain(..).zip(answer.offsets) {
            match report {
                RecordReport::Delivered(d) => {
                    let _ = p.reply.send(Ok(Stored::Offset(d)));
                }
                RecordReport::Delayed(d) => {
                    let _ = p.reply.send(Ok(Stored::Delayed(d)));
                }
                RecordReport::Failed(f) => {
                    let not_written = matches!(
                        f.error.error.as_str(),
                        "not_available" | "insufficient_storage"
                    );
                    if not_written && attempt < config.max_record_attempts {
                        again.push(p);
                    } else {
                        let _ = p.reply.send(Err(Error::Record {
                            partition: f.partition,
                            body: f.error,
                        }));
                    }
                }
            }
        }
        *pending = again;
        if !pending.is_empty() {
            attempt += 1;
            tokio::time::sleep(config.retry_pause).await;
        }
    }
    Ok(())
}
