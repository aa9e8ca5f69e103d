//! The pusher of one push subscription: one task per subscribed partition, each reading
//! the partition from the group's committed offset, POSTing every record until the
//! endpoint acknowledges it (or it is dead-lettered), and committing past what is done.
//!
//! Order and bounds: a partition task reads at most `max_in_flight` records, delivers
//! them concurrently, and reads on only once every one of them is acknowledged,
//! dead-lettered or dropped; then it commits the read's `next_offset`. So at most
//! `max_in_flight` records of a partition are outstanding, with 1 strictly in order, and
//! the committed offset never passes a record that is not done (at least once: a
//! pusher stopped between a success and its commit delivers that record again).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use psubd_actors::clock::now_ms;
use psubd_actors::group_directory::LedPush;
use psubd_actors::offsets::{propose, Fence, OffsetEntry, OffsetsCommand};
use psubd_actors::push::{PartitionPushStatus, PushBoard, PushStatus, PushTotals};
use psubd_actors::record::{RecordView, ValueKind};
use psubd_actors::topic::PartitionPlacement;
use psubd_actors::GroupError;
use psubd_raft::GroupId;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::delivery::{backoff, body, short, Endpoint};
use crate::auth::Identity;
use crate::error::ApiError;
use crate::protocol::OffsetSpec;
use crate::render::write_record;
use crate::service::publish::NewRecord;
use crate::service::{Caller, Service, Via};

/// Most bytes one read of a partition brings (at least one record always comes).
const MAX_READ_BYTES: u32 = 1 << 20;

/// How long a read waits at the end of the partition for a new record.
const LONG_POLL_MS: u64 = 5_000;

/// Pause after a failed read or commit, or while a subscribed topic is missing.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How long a new pusher waits for its offsets replica to apply every earlier commit.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// At most one INFO line per partition this often about a failing endpoint: it is the
/// user's business, and a healthy cluster's log must not fill with it.
const INFO_EVERY: Duration = Duration::from_secs(60);

/// One subscribed partition as the pusher found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTarget {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The partition's placement (its Raft group tells a re-created topic apart).
    pub placement: PartitionPlacement,
}

/// What every partition task of one pusher shares.
struct Pusher {
    service: Service,
    led: LedPush,
    endpoint: Endpoint,
    fence: Fence,
    status: Arc<Mutex<PushStatus>>,
    cancel: CancellationToken,
    /// Rate limit of the INFO line about a failing endpoint, for the whole subscription.
    endpoint_quiet: Mutex<Quiet>,
}

/// Runs the pusher of `led` until `cancel` fires (leadership moved, the subscription
/// changed or was deleted, the node stops). Its status is on `board` meanwhile.
pub async fn run(
    service: Service,
    board: PushBoard,
    led: LedPush,
    targets: Vec<PartitionTarget>,
    cancel: CancellationToken,
) {
    let status = board.register(
        &led.group,
        PushStatus {
            partitions: targets
                .iter()
                .map(|t| PartitionPushStatus {
                    topic: t.topic.clone(),
                    partition: t.partition,
                    ..PartitionPushStatus::default()
                })
                .collect(),
        },
    );
    if targets.is_empty() {
        // Every subscribed topic is gone: nothing to push until the settings change.
        cancel.cancelled().await;
        board.remove(&led.group, &status);
        return;
    }
    let endpoint = match Endpoint::new(&led.config) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            info!(group = %led.group, %error, "push subscription cannot reach its endpoint");
            for partition in &mut psubd_actors::locks::lock(&status).partitions {
                partition.last_error = Some(error.clone());
            }
            cancel.cancelled().await;
            board.remove(&led.group, &status);
            return;
        }
    };
    // Every commit of earlier coordinators must be visible before positions are read.
    let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, led.offsets.raft.ensure_linearizable());
    if !matches!(caught_up.await, Ok(Ok(_))) {
        debug!(group = %led.group, "push offsets replica not caught up; the runner retries");
        board.remove(&led.group, &status);
        return;
    }
    // Commits carry this coordinator's epoch (the offsets partition's term): one from a
    // deposed coordinator applied late is refused. A push group has no members, so its
    // generation stays where the group's last coordinator in this term left it.
    let generation = led
        .offsets
        .reader
        .fence(&led.group)
        .filter(|f| f.epoch == led.term)
        .map_or(0, |f| f.generation);
    let pusher = Arc::new(Pusher {
        service,
        fence: Fence {
            epoch: led.term,
            generation,
        },
        led,
        endpoint,
        status: status.clone(),
        cancel: cancel.clone(),
        endpoint_quiet: Mutex::new(Quiet { last_info: None }),
    });
    info!(group = %pusher.led.group, term = pusher.led.term, partitions = targets.len(), "push subscription started");
    let tasks: Vec<_> = targets
        .into_iter()
        .enumerate()
        .map(|(index, target)| tokio::spawn(pusher.clone().partition(index, target)))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    board.remove(&pusher.led.group, &status);
    debug!(group = %pusher.led.group, "push subscription stopped here");
}

/// How one record's delivery ended.
enum Outcome {
    /// Acknowledged, dead-lettered or dropped: it may be committed past.
    Done,
    /// The pusher stopped first: it must not be committed past.
    Stopped,
}

/// A record read for pushing: its offset, its JSON form and what a dead letter needs.
struct Pending {
    offset: u64,
    json: Vec<u8>,
    timestamp_ms: i64,
    kind: ValueKind,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, String)>,
}

impl Pending {
    fn new(topic: &str, partition: u32, offset: u64, record: &RecordView<'_>) -> Self {
        let mut json = Vec::with_capacity(record.value.map_or(0, <[u8]>::len) + 128);
        write_record(&mut json, topic, partition, offset, record);
        Self {
            offset,
            json,
            timestamp_ms: record.timestamp_ms,
            kind: record.kind,
            key: record.key.map(Bytes::copy_from_slice),
            value: record.value.map(Bytes::copy_from_slice),
            headers: record
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        (*name).to_string(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                })
                .collect(),
        }
    }
}

/// Rate limit of INFO lines of one partition task.
struct Quiet {
    last_info: Option<Instant>,
}

impl Quiet {
    fn may_inform(&mut self) -> bool {
        let due = self.last_info.is_none_or(|at| at.elapsed() >= INFO_EVERY);
        if due {
            self.last_info = Some(Instant::now());
        }
        due
    }
}

impl Pusher {
    fn group(&self) -> &str {
        &self.led.group
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut PartitionPushStatus)) {
        if let Some(partition) = psubd_actors::locks::lock(&self.status)
            .partitions
            .get_mut(index)
        {
            change(partition);
        }
    }

    /// Sleeps `pause`; false when the pusher stopped meanwhile.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }

    /// The group's committed offset of `target`, for the topic as it exists now.
    fn committed(&self, target: &PartitionTarget) -> Option<u64> {
        self.led
            .offsets
            .reader
            .get(self.group(), &target.topic, target.partition)
            .filter(|c| c.topic_group == target.placement.group)
            .map(|c| c.offset)
    }

    /// The partition's dead-letter and drop counts as the last commit replicated them.
    fn totals(&self, target: &PartitionTarget) -> Option<PushTotals> {
        self.led
            .offsets
            .reader
            .push_totals(self.group(), &target.topic, target.partition)
            .filter(|t| t.topic_group == target.placement.group)
    }

    /// One partition's loop: read, deliver, commit.
    async fn partition(self: Arc<Self>, index: usize, target: PartitionTarget) {
        let mut quiet = Quiet { last_info: None };
        let committed = self.committed(&target);
        let totals = self.totals(&target);
        self.update(index, |s| {
            s.committed_offset = committed;
            if let Some(totals) = totals {
                s.dead_lettered = totals.dead_lettered;
                s.dropped = totals.dropped;
            }
        });
        // Without a committed offset a push subscription starts at the log start.
        let mut position = committed.map_or(OffsetSpec::Earliest, OffsetSpec::At);
        let max_records = self.led.config.max_in_flight;
        loop {
            let read = tokio::select! {
                () = self.cancel.cancelled() => return,
                read = self.service.edge.fetch(&target.placement, position, max_records, MAX_READ_BYTES, LONG_POLL_MS) => read,
            };
            let fetched = match read {
                Ok(fetched) => fetched,
                // Retention removed records below the position: go on from the log start
                // (as a member with `auto_offset_reset` earliest would).
                Err(ApiError::OffsetOutOfRange {
                    offset,
                    log_start_offset,
                    ..
                }) if offset < log_start_offset => {
                    position = OffsetSpec::Earliest;
                    continue;
                }
                Err(error) => {
                    debug!(group = %self.group(), topic = %target.topic, partition = target.partition, %error, "push read failed; retrying");
                    let text = short(&error);
                    self.update(index, |s| s.last_error = Some(text));
                    if !self.pause(RETRY_PAUSE).await {
                        return;
                    }
                    continue;
                }
            };
            self.update(index, |s| {
                s.high_watermark = Some(fetched.high_watermark);
            });
            let mut pending = Vec::with_capacity(fetched.count as usize);
            for record in fetched.iter() {
                match record {
                    Ok((offset, record)) => pending.push(Pending::new(
                        &target.topic,
                        target.partition,
                        offset,
                        &record,
                    )),
                    Err(error) => {
                        // Stored bytes that do not decode: a broken replica, not the
                        // user's endpoint. Read again rather than skip anything.
                        info!(group = %self.group(), topic = %target.topic, partition = target.partition, %error, "push read a record that does not decode; retrying");
                        pending.clear();
                        break;
                    }
                }
            }
            if pending.is_empty() {
                if fetched.count > 0 && !self.pause(RETRY_PAUSE).await {
                    return;
                }
                if fetched.count == 0 {
                    position = OffsetSpec::At(fetched.next_offset);
                }
                continue;
            }
            let first = pending[0].offset;
            self.update(index, |s| {
                s.pending_offset = Some(first);
                s.delivery_attempt = 0;
            });
            let outcomes = futures::future::join_all(
                pending
                    .iter()
                    .map(|record| self.deliver(index, &target, record, first)),
            )
            .await;
            if outcomes.iter().any(|o| matches!(o, Outcome::Stopped)) {
                return;
            }
            self.update(index, |s| {
                s.pending_offset = None;
                s.delivery_attempt = 0;
            });
            if !self
                .commit(index, &target, fetched.next_offset, &mut quiet)
                .await
            {
                return;
            }
            position = OffsetSpec::At(fetched.next_offset);
        }
    }

    /// Delivers one record: attempts with backoff, then the dead-letter topic (or the
    /// drop). `first` is the offset the status follows.
    async fn deliver(
        &self,
        index: usize,
        target: &PartitionTarget,
        record: &Pending,
        first: u64,
    ) -> Outcome {
        let config = &self.led.config;
        let followed = record.offset == first;
        let mut last_error = String::new();
        for attempt in 1..=config.max_deliveries {
            if followed {
                self.update(index, |s| s.delivery_attempt = attempt);
            }
            let posted = tokio::select! {
                () = self.cancel.cancelled() => return Outcome::Stopped,
                posted = self.endpoint.post(body(&record.json, attempt)) => posted,
            };
            match posted {
                Ok(()) => {
                    self.update(index, |s| {
                        s.delivered += 1;
                        s.last_error = None;
                    });
                    return Outcome::Done;
                }
                Err(error) => {
                    if psubd_actors::locks::lock(&self.endpoint_quiet).may_inform() {
                        info!(group = %self.group(), topic = %target.topic, partition = target.partition, offset = record.offset, attempt, %error, "push endpoint failing (one line a minute at most per subscription)");
                    }
                    self.update(index, |s| s.last_error = Some(error.clone()));
                    last_error = error;
                }
            }
            if attempt < config.max_deliveries
                && !self
                    .pause(backoff(
                        config.min_backoff_ms,
                        config.max_backoff_ms,
                        attempt,
                    ))
                    .await
            {
                return Outcome::Stopped;
            }
        }
        match &config.dead_letter_topic {
            Some(topic) => {
                self.dead_letter(index, target, topic, record, &last_error)
                    .await
            }
            None => {
                info!(group = %self.group(), topic = %target.topic, partition = target.partition, offset = record.offset, attempts = config.max_deliveries, "push record dropped after its last attempt (no dead-letter topic)");
                self.update(index, |s| s.dropped += 1);
                Outcome::Done
            }
        }
    }

    /// Publishes an exhausted record to the dead-letter topic: value, key and headers as
    /// the original, plus where it came from and why it failed. Retried until it is
    /// written (the record is never committed past before).
    async fn dead_letter(
        &self,
        index: usize,
        target: &PartitionTarget,
        topic: &str,
        record: &Pending,
        error: &str,
    ) -> Outcome {
        let caller = Caller::new(Via::Http, Identity::Admin);
        let mut failures = 0u32;
        let mut quiet = Quiet { last_info: None };
        loop {
            let written = self
                .publish_dead_letter(&caller, target, topic, record, error)
                .await;
            match written {
                Ok(()) => {
                    debug!(group = %self.group(), topic = %target.topic, partition = target.partition, offset = record.offset, dead_letter_topic = topic, "push record dead-lettered");
                    self.update(index, |s| s.dead_lettered += 1);
                    return Outcome::Done;
                }
                Err(failure) => {
                    failures = failures.saturating_add(1);
                    if quiet.may_inform() {
                        info!(group = %self.group(), dead_letter_topic = topic, error = %failure, "push dead letter not written; retrying");
                    }
                    let text = short(format!("dead letter not written: {failure}"));
                    self.update(index, |s| s.last_error = Some(text));
                    let config = &self.led.config;
                    if !self
                        .pause(backoff(
                            config.min_backoff_ms,
                            config.max_backoff_ms,
                            failures,
                        ))
                        .await
                    {
                        return Outcome::Stopped;
                    }
                }
            }
        }
    }

    async fn publish_dead_letter(
        &self,
        caller: &Caller,
        target: &PartitionTarget,
        topic: &str,
        record: &Pending,
        error: &str,
    ) -> Result<(), ApiError> {
        let mut batch = self.service.begin_publish(caller, topic).await?;
        let added = [
            ("x-delivery-error", error.to_string()),
            ("x-original-offset", record.offset.to_string()),
            ("x-original-partition", target.partition.to_string()),
            ("x-original-topic", target.topic.clone()),
        ];
        let mut headers: Vec<(String, String)> = record
            .headers
            .iter()
            .filter(|(name, _)| !added.iter().any(|(a, _)| a == name))
            .cloned()
            .chain(added.iter().map(|(n, v)| ((*n).to_string(), v.clone())))
            .collect();
        headers.sort();
        batch.push(NewRecord {
            partition: None,
            timestamp_ms: Some(record.timestamp_ms),
            kind: record.kind,
            key: record.key.as_deref().map(Cow::Borrowed),
            value: record.value.as_deref().map(Cow::Borrowed),
            headers,
            id: None,
            deliver_at_ms: None,
            delay_ms: None,
        })?;
        let reports = self.service.deliver(caller, batch).await;
        match reports.into_iter().next() {
            Some(report) => report.result.map(|_| ()),
            None => Err(ApiError::Internal {
                detail: "a dead letter publish reported nothing".into(),
            }),
        }
    }

    /// Commits `next` for `target` with the partition's dead-letter and drop counts (one
    /// write for both), retrying until it is applied; false when the pusher must stop
    /// (stopped, or a newer coordinator took over).
    async fn commit(
        &self,
        index: usize,
        target: &PartitionTarget,
        next: u64,
        quiet: &mut Quiet,
    ) -> bool {
        let (dead_lettered, dropped) = psubd_actors::locks::lock(&self.status)
            .partitions
            .get(index)
            .map_or((0, 0), |s| (s.dead_lettered, s.dropped));
        let command = OffsetsCommand::CommitPush {
            group: self.group().to_string(),
            offset: OffsetEntry {
                topic: target.topic.clone(),
                partition: target.partition,
                topic_group: target.placement.group,
                offset: next,
            },
            commit_ms: now_ms(),
            fence: self.fence,
            dead_lettered,
            dropped,
        };
        let timeout = self.service.edge.write_timeout();
        loop {
            let raft_node = self.service.edge.broker().raft_node();
            match propose(raft_node, &self.led.offsets, &command, timeout).await {
                Ok(()) => {
                    self.update(index, |s| s.committed_offset = Some(next));
                    return true;
                }
                Err(GroupError::UnknownMember | GroupError::StaleGeneration { .. }) => {
                    debug!(group = %self.group(), "push commit fenced: a newer coordinator runs");
                    return false;
                }
                Err(error) => {
                    if quiet.may_inform() {
                        info!(group = %self.group(), topic = %target.topic, partition = target.partition, %error, "push commit failed; retrying");
                    }
                    if !self.pause(RETRY_PAUSE).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// The partitions `topics` have now, in topic then partition order; missing topics are
/// left out (a deleted topic's partitions stop being pushed).
pub fn targets(
    metadata: &psubd_actors::controller::ControllerState,
    topics: &[String],
) -> Vec<PartitionTarget> {
    let mut out = Vec::new();
    for topic in topics {
        let Some(meta) = metadata.topics.get(topic) else {
            continue;
        };
        for (partition, placement) in meta.partitions.iter().enumerate() {
            out.push(PartitionTarget {
                topic: topic.clone(),
                partition: partition as u32,
                placement: placement.clone(),
            });
        }
    }
    out
}

/// The Raft groups of `targets`: a change means the pusher must restart.
pub fn layout(targets: &[PartitionTarget]) -> Vec<GroupId> {
    targets.iter().map(|t| t.placement.group).collect()
}
