//! [`Producer`]: batches records per topic in one background task and reports each
//! record's delivery through its own future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use psubd_wire::{DelayedReport, DeliveryReport, NewRecord, PublishRequest, RecordReport};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::Error;
use crate::records::{publish_answer, publish_call};
use crate::routing::Router;

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
    /// Pause before such a record is sent again (or a `Retry-After`, capped by the
    /// client's `max_retry_after`, when longer).
    pub retry_pause: Duration,
    /// Batches being sent at once (at least 1). Each sends at most one request per
    /// topic and leader at a time, so this bounds the requests in flight to a leader.
    /// With 1 (the default) a partition's records are stored in the order they were
    /// sent; with more, a batch retried after a failure may land after a later one.
    pub max_in_flight: usize,
    /// Send each record straight to its partition's leader (learned from
    /// `GET /v1/cluster`); `false` sends every request to the seeds, whose node forwards.
    pub route_to_leaders: bool,
    /// Age after which the cluster metadata is read again, even without an error.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch_records: 500,
            queue_capacity: 10_000,
            max_record_attempts: 5,
            retry_pause: Duration::from_millis(200),
            max_in_flight: 1,
            route_to_leaders: true,
            metadata_max_age: Duration::from_secs(30),
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
/// `max_batch_records` of them for at most `linger`, and sends the batch as one request
/// per topic and partition leader (learned from `GET /v1/cluster`, else the seeds), the
/// requests to different leaders concurrently. With `max_in_flight` 1 (the default) one
/// batch is sent at a time, so records of a partition are stored in the order they were
/// sent. Records certainly not written are routed afresh and sent again (bounded);
/// nothing whose outcome is unknown is ever sent twice. A request refused because of one record
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
        config.max_in_flight = config.max_in_flight.max(1);
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

/// What the sending tasks share.
struct Shared {
    client: Client,
    config: ProducerConfig,
    /// `None` when [`ProducerConfig::route_to_leaders`] is off.
    router: Option<Router>,
}

async fn run(client: Client, config: ProducerConfig, mut rx: mpsc::Receiver<Message>) {
    let shared = Arc::new(Shared {
        router: config
            .route_to_leaders
            .then(|| Router::new(client.clone(), config.metadata_max_age)),
        client,
        config,
    });
    let mut in_flight = JoinSet::new();
    let mut open = true;
    while open {
        // A free slot first: records queued meanwhile join the next batch.
        while in_flight.len() >= shared.config.max_in_flight {
            in_flight.join_next().await;
        }
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Message::Record(p) => batch.push(p),
            Message::Flush(done) => flushes.push(done),
        }
        let deadline = Instant::now() + shared.config.linger;
        while flushes.is_empty() && batch.len() < shared.config.max_batch_records {
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
        if !batch.is_empty() {
            let shared = shared.clone();
            in_flight.spawn(async move { deliver(&shared, batch).await });
        }
        if !flushes.is_empty() {
            while in_flight.join_next().await.is_some() {}
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Delivers one batch: routes its records (one request per topic and destination, the
/// requests running concurrently), then sends what was certainly not written again, at
/// most [`ProducerConfig::max_record_attempts`] rounds in all, routed afresh each round.
async fn deliver(shared: &Shared, mut pending: Vec<Pending>) {
    let config = &shared.config;
    for round in 1..=config.max_record_attempts {
        if let Some(router) = &shared.router {
            router.refresh_if_due().await;
        }
        let requests = plan(shared, pending);
        let outcomes = futures::future::join_all(
            requests
                .into_iter()
                .map(|request| send_request(shared, request)),
        )
        .await;
        let mut again = Vec::new();
        let mut pause = config.retry_pause;
        for outcome in outcomes {
            again.extend(outcome.again);
            if let Some(wait) = outcome.retry_after {
                pause = pause.max(wait.min(shared.client.config().max_retry_after));
            }
        }
        if again.is_empty() {
            return;
        }
        if round == config.max_record_attempts {
            for (p, error) in again {
                let _ = p.reply.send(Err(error));
            }
            return;
        }
        tokio::time::sleep(pause).await;
        pending = again.into_iter().map(|(p, _)| p).collect();
    }
}

/// One request to be sent: records of one topic for one node (`None`: the seeds).
struct Request {
    topic: String,
    node: Option<String>,
    records: Vec<Pending>,
}

/// Groups `pending` into requests, keeping the records' order within each.
fn plan(shared: &Shared, mut pending: Vec<Pending>) -> Vec<Request> {
    let mut by_topic: Vec<(String, Vec<Pending>)> = Vec::new();
    for p in pending.drain(..) {
        match by_topic.iter_mut().find(|(t, _)| *t == p.topic) {
            Some((_, list)) => list.push(p),
            None => by_topic.push((p.topic.clone(), vec![p])),
        }
    }
    let mut requests: Vec<Request> = Vec::new();
    for (topic, mut list) in by_topic {
        let nodes = match &shared.router {
            Some(router) => router.route(&topic, list.iter_mut().map(|p| &mut p.record)),
            None => vec![None; list.len()],
        };
        let first = requests.len();
        for (p, node) in list.into_iter().zip(nodes) {
            match requests[first..].iter_mut().find(|r| r.node == node) {
                Some(request) => request.records.push(p),
                None => requests.push(Request {
                    topic: topic.clone(),
                    node,
                    records: vec![p],
                }),
            }
        }
    }
    requests
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

/// Records of a request to be sent again (each with the error that says why), and the
/// longest `Retry-After` the answers asked for.
#[derive(Default)]
struct Outcome {
    again: Vec<(Pending, Error)>,
    retry_after: Option<Duration>,
}

/// Whether `error` promises that nothing of its request was done: the connection was
/// never made, or the answer is 503, 429 or 507 (docs/api.md § Publish).
fn nothing_done(error: &Error) -> bool {
    match error {
        Error::Transport { maybe_sent, .. } => !maybe_sent,
        Error::Api { status, .. } => matches!(status, 503 | 429 | 507),
        _ => false,
    }
}

/// Sends `request`, resolving every record the answers settle: batches refused because
/// of some of their records are split (at most log2(n) levels); records certainly not
/// written come back in the [`Outcome`] to be sent again. A dead node, an unavailable
/// partition or an unknown one makes the routes be read again.
async fn send_request(shared: &Shared, request: Request) -> Outcome {
    let invalidate = || {
        if let Some(router) = &shared.router {
            router.invalidate();
        }
    };
    let mut outcome = Outcome::default();
    let mut batches = std::collections::VecDeque::from([request.records]);
    while let Some(mut batch) = batches.pop_front() {
        let records = batch.iter().map(|p| p.record.clone()).collect();
        let reports = publish_once(
            &shared.client,
            &request.topic,
            request.node.as_deref(),
            records,
        )
        .await;
        let reports = match reports {
            Ok(reports) if reports.len() == batch.len() => reports,
            Ok(reports) => {
                let error = Error::Unexpected {
                    url: request.topic.clone(),
                    status: 200,
                    detail: format!("{} reports for {} records", reports.len(), batch.len()),
                };
                for p in batch {
                    let _ = p.reply.send(Err(error.clone()));
                }
                continue;
            }
            Err(error) => {
                let code = error.code();
                match (&shared.router, &request.node, &error) {
                    (Some(router), Some(node), Error::Transport { .. }) => {
                        router.unreachable(node);
                    }
                    _ if matches!(error, Error::Transport { .. })
                        || matches!(code, Some("not_available" | "partition_not_found")) =>
                    {
                        invalidate();
                    }
                    _ => {}
                }
                if nothing_done(&error) {
                    if let Error::Api {
                        retry_after: Some(wait),
                        ..
                    } = &error
                    {
                        outcome.retry_after = outcome.retry_after.max(Some(*wait));
                    }
                    outcome
                        .again
                        .extend(batch.into_iter().map(|p| (p, error.clone())));
                } else if batch.len() > 1 && code.is_some_and(|c| SPLITTABLE.contains(&c)) {
                    let second = batch.split_off(batch.len() / 2);
                    batches.push_front(second);
                    batches.push_front(batch);
                } else {
                    for p in batch {
                        let _ = p.reply.send(Err(error.clone()));
                    }
                }
                continue;
            }
        };
        for (p, report) in batch.into_iter().zip(reports) {
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
                    let error = Error::Record {
                        partition: f.partition,
                        body: f.error,
                    };
                    if not_written {
                        invalidate();
                        outcome.again.push((p, error));
                    } else {
                        let _ = p.reply.send(Err(error));
                    }
                }
            }
        }
    }
    outcome
}

/// One publish of `records` to `node` (or the seeds), without retries: the rounds of
/// [`deliver`] are the producer's only repeats.
async fn publish_once(
    client: &Client,
    topic: &str,
    node: Option<&str>,
    records: Vec<NewRecord>,
) -> Result<Vec<RecordReport>, Error> {
    let call = publish_call(
        topic,
        &PublishRequest {
            encoding: None,
            records,
        },
    )?;
    let answer = match node {
        Some(url) => client.send_to(url, &call).await?,
        None => client.send_to_some_seed(&call).await?,
    };
    Ok(publish_answer(answer)?.offsets)
}
