//! The workload: writers, readers, consumer-group members and a committed-offset reader,
//! each a logical process issuing one request at a time over the HTTP API and recording
//! it in the history. No request is ever retried: an unclear outcome is recorded as
//! `info` and the process moves on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Failure};
use crate::history::{
    classify_status, classify_transport, is_mutation, key_of, split_key, Event, EventType, History,
    KeyOffset, Op,
};

/// Group session timeout asked for at join: a member that vanishes (a simulated crash)
/// frees its partitions within this; polls (heartbeats) come far more often.
pub const SESSION_TIMEOUT_MS: u64 = 6_000;
/// Long-poll wait of reads and group polls.
const WAIT_MS: u64 = 300;
/// Records per read or poll.
const MAX_RECORDS: u32 = 100;
/// Publish request timeout on the client side; past it the outcome is unknown (`info`).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(6);
/// Pause between a writer's operations (random below this), to keep the history and the
/// two cores manageable.
const WRITER_THINK_MS: u64 = 20;
/// Pause after a refused poll before the member's next one.
const FAILED_POLL_PAUSE: Duration = Duration::from_millis(100);
/// How often the committed offsets are read back.
const COMMITTED_EVERY: Duration = Duration::from_millis(1000);
/// Per-iteration chance (in thousandths) that a group member restarts under a new id.
const MEMBER_RESTART_PER_MILLE: u32 = 30;

/// What the workload runs.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Topics, all with `partitions` partitions.
    pub topics: Vec<String>,
    /// Partitions per topic.
    pub partitions: u32,
    /// Writer processes.
    pub writers: usize,
    /// Reader processes.
    pub readers: usize,
    /// Group member processes (0 disables the group workload).
    pub members: usize,
    /// The consumer group's name.
    pub group: String,
    /// Seed of every process's choices.
    pub seed: u64,
    /// Bytes of a `pad` header on every published record (0: none). Readers ignore it; it
    /// makes entries large enough to be stored as several batches.
    pub pad_bytes: usize,
    /// Group members keep their member id after an unclear poll or commit and simply
    /// poll again, presenting the last position token they received (what real clients
    /// do); otherwise they are abandoned like a crashed client and re-join.
    pub naive_members: bool,
    /// Writers give every record an id (`v<value>`) and, after an unknown outcome, send
    /// the same record with the same id again (up to [`IDEMPOTENT_ATTEMPTS`] sends, as one
    /// operation in the history): psubd must store each value once.
    pub idempotent_writers: bool,
}

/// Most sends of one record by an idempotent writer.
pub const IDEMPOTENT_ATTEMPTS: usize = 8;

/// The phase event that marks a history of idempotent writers, for the checker.
pub const IDEMPOTENT_PHASE: &str = "idempotent-writers";

impl WorkloadConfig {
    /// Every `topic/partition` key.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for t in &self.topics {
            for p in 0..self.partitions {
                keys.push(key_of(t, p));
            }
        }
        keys
    }
}

/// Shared state of a running workload.
pub struct Workload {
    /// The API client.
    pub client: Client,
    /// Where every operation is recorded.
    pub history: Arc<History>,
    /// What to run.
    pub config: WorkloadConfig,
    /// Source of unique publish values: every value is published at most once per run.
    next_value: AtomicU64,
    /// The `pad` header's value, `config.pad_bytes` long.
    pad: String,
}

/// Records `f`'s completion from a request result.
fn complete_err(f: Op, failure: &Failure) -> EventType {
    match failure {
        Failure::Status { status, error, .. } => classify_status(f, *status, error.as_deref()),
        Failure::Transport { connect, .. } => classify_transport(f, *connect),
        Failure::Malformed { .. } => {
            if is_mutation(f) {
                EventType::Info
            } else {
                EventType::Fail
            }
        }
    }
}

impl Workload {
    /// A workload; values start at 1.
    pub fn new(client: Client, history: Arc<History>, config: WorkloadConfig) -> Self {
        let pad = "p".repeat(config.pad_bytes);
        Workload {
            client,
            history,
            config,
            next_value: AtomicU64::new(1),
            pad,
        }
    }

    fn rng(&self, salt: u64) -> StdRng {
        StdRng::seed_from_u64(self.config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt)
    }

    fn pick_node(&self, rng: &mut StdRng) -> u64 {
        self.client.pick_node(rng)
    }

    /// Runs every process until `stop` fires; each finishes the operation it is in.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.config.idempotent_writers {
            let mut e = Event::new("harness", EventType::Info, Op::Phase);
            e.value = Some(json!(IDEMPOTENT_PHASE));
            self.history.record(e);
        }
        let mut tasks = Vec::new();
        for w in 0..self.config.writers {
            let me = self.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { me.writer(w, stop).await }));
        }
        for r in 0..self.config.readers {
            let me = self.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { me.reader(r, stop).await }));
        }
        if self.config.members > 0 {
            for g in 0..self.config.members {
                let me = self.clone();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = me.member(&format!("g{g}"), g as u64, stop, None).await;
                }));
            }
            let me = self.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                me.committed_reader("o0", stop).await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn writer(&self, w: usize, stop: CancellationToken) {
        let process = format!("w{w}");
        let mut rng = self.rng(0x1000 + w as u64);
        let keys = self.config.keys();
        while !stop.is_cancelled() {
            let key = &keys[rng.gen_range(0..keys.len())];
            let node = self.pick_node(&mut rng);
            self.publish_once(&process, key, node).await;
            let think = rng.gen_range(0..WRITER_THINK_MS);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(think)) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// One publish of a fresh unique value to `key` through `node`.
    pub async fn publish_once(&self, process: &str, key: &str, node: u64) {
        let Some((topic, partition)) = split_key(key) else {
            return;
        };
        let value = self.next_value.fetch_add(1, Ordering::Relaxed);
        let mut inv = Event::new(process, EventType::Invoke, Op::Publish);
        inv.key = Some(key.to_string());
        inv.value = Some(json!(value));
        inv.node = Some(node);
        let inv = self.history.record(inv);
        let res = if self.config.idempotent_writers {
            self.publish_idempotently(topic, partition, value, node)
                .await
        } else {
            self.client
                .publish(
                    node,
                    topic,
                    partition,
                    value,
                    &self.pad,
                    None,
                    PUBLISH_TIMEOUT,
                )
                .await
        };
        let done = match res {
            Ok(p) => {
                let mut e = inv.complete(EventType::Ok);
                e.offset = Some(p.offset);
                e
            }
            Err(f) => {
                let mut e = inv.complete(complete_err(Op::Publish, &f));
                e.error = Some(f.describe());
                e
            }
        };
        self.history.record(done);
    }

    /// Sends one record with its id until an answer is certain: the first send to `node`,
    /// each resend after an unknown outcome to the next node. The result is the first
    /// certain answer (an acknowledgement, which names the stored copy's offset even for
    /// a resend, or a refusal of the first send); after a refused resend, or when every
    /// send was unclear, the last unknown outcome: an earlier send may have been stored.
    async fn publish_idempotently(
        &self,
        topic: &str,
        partition: u32,
        value: u64,
        node: u64,
    ) -> Result<crate::client::Published, Failure> {
        let id = format!("v{value}");
        let nodes: Vec<u64> = self.client.serving();
        let mut target = node;
        let mut unknown = None;
        for attempt in 0..IDEMPOTENT_ATTEMPTS {
            let res = self
                .client
                .publish(
                    target,
                    topic,
                    partition,
                    value,
                    &self.pad,
                    Some(&id),
                    PUBLISH_TIMEOUT,
                )
                .await;
            match res {
                Ok(published) => return Ok(published),
                Err(failure) => {
                    let certain = complete_err(Op::Publish, &failure) == EventType::Fail;
                    if certain && attempt == 0 {
                        return Err(failure);
                    }
                    if certain {
                        break;
                    }
                    unknown = Some(failure);
                }
            }
            let next = nodes.iter().position(|n| *n == target).map_or(0, |i| i + 1);
            target = nodes[next % nodes.len()];
        }
        Err(unknown.unwrap_or(Failure::Malformed {
            detail: "no send of an idempotent publish".into(),
        }))
    }

    async fn reader(&self, r: usize, stop: CancellationToken) {
        let process = format!("r{r}");
        let mut rng = self.rng(0x2000 + r as u64);
        let keys = self.config.keys();
        let mut cursors: BTreeMap<String, u64> = BTreeMap::new();
        while !stop.is_cancelled() {
            let key = keys[rng.gen_range(0..keys.len())].clone();
            let node = self.pick_node(&mut rng);
            let cursor = cursors.get(&key).copied().unwrap_or(0);
            // Now and then re-read older offsets, so every node is asked about the past.
            let offset = if cursor > 0 && rng.gen_range(0..10) == 0 {
                rng.gen_range(0..=cursor)
            } else {
                cursor
            };
            if let Some(next) = self
                .read_once(&process, &key, node, offset, MAX_RECORDS, WAIT_MS)
                .await
            {
                cursors.insert(key, next.max(cursor));
            }
        }
    }

    /// One read by offset; returns the `next_offset` answered.
    pub async fn read_once(
        &self,
        process: &str,
        key: &str,
        node: u64,
        offset: u64,
        max_records: u32,
        wait_ms: u64,
    ) -> Option<u64> {
        let (topic, partition) = split_key(key)?;
        let mut inv = Event::new(process, EventType::Invoke, Op::Read);
        inv.key = Some(key.to_string());
        inv.node = Some(node);
        inv.offset = Some(offset);
        let inv = self.history.record(inv);
        match self
            .client
            .read(node, topic, partition, offset, max_records, wait_ms)
            .await
        {
            Ok(a) => {
                let mut e = inv.complete(EventType::Ok);
                e.offset = a.next_offset;
                e.high_watermark = a.high_watermark;
                e.records = Some(a.records);
                self.history.record(e);
                a.next_offset
            }
            Err(f) => {
                let mut e = inv.complete(complete_err(Op::Read, &f));
                e.error = Some(f.describe());
                self.history.record(e);
                None
            }
        }
    }

    /// A consumer-group member process: join, poll, commit the next offset, now and then
    /// restart under a new member id (leaving first or just vanishing). After any unclear
    /// outcome (`info`) of a poll or a commit the member is abandoned like a crashed
    /// client (its server-side position is unknown, so it must not commit past records it
    /// never saw) — unless `naive_members` is set: then it keeps its member id and polls
    /// again with the last position token it received, and the server must not skip what
    /// the lost answer carried.
    ///
    /// With `drain` = `Some(targets)` (final phase) it never restarts and returns once its
    /// commits have reached every target offset (`topic/partition` → high watermark) and a
    /// poll returned nothing, or when `stop` fires.
    pub async fn member(
        &self,
        process: &str,
        salt: u64,
        stop: CancellationToken,
        drain: Option<BTreeMap<String, u64>>,
    ) -> bool {
        let mut rng = self.rng(0x3000 + salt);
        let group = self.config.group.clone();
        let naive = self.config.naive_members && drain.is_none();
        let mut session: Option<(String, Option<i64>)> = None;
        // The position token of the last answer received in this session.
        let mut position: Option<String> = None;
        let mut committed: BTreeMap<String, u64> = BTreeMap::new();
        while !stop.is_cancelled() {
            let node = self.pick_node(&mut rng);
            let Some((member, generation)) = session.clone() else {
                position = None;
                session = self.join_once(process, &group, node).await;
                if session.is_none() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                continue;
            };
            let mut inv = Event::new(process, EventType::Invoke, Op::Poll);
            inv.node = Some(node);
            inv.group = Some(group.clone());
            inv.member = Some(member.clone());
            inv.generation = generation;
            let inv = self.history.record(inv);
            let polled = match self
                .client
                .poll(
                    node,
                    &group,
                    &member,
                    MAX_RECORDS,
                    WAIT_MS,
                    position.as_deref(),
                )
                .await
            {
                Ok(p) => {
                    if p.position.is_some() {
                        position = p.position.clone();
                    }
                    let mut e = inv.complete(EventType::Ok);
                    if p.generation.is_some() {
                        e.generation = p.generation;
                    }
                    e.assignments = p.assignments.clone();
                    e.records = Some(p.records.clone());
                    self.history.record(e);
                    p
                }
                Err(f) => {
                    let kind = complete_err(Op::Poll, &f);
                    let mut e = inv.complete(kind);
                    e.error = Some(f.describe());
                    self.history.record(e);
                    let fenced = matches!(f, Failure::Status { status: 409, .. });
                    if fenced {
                        session = None;
                    } else if kind == EventType::Info && naive {
                        // Just fetch again, as a real client does.
                    } else if kind == EventType::Info {
                        self.leave_once(process, &group, &member, node).await;
                        session = None;
                    } else {
                        // Refused (503, connection refused): the next poll is a new
                        // operation, after a pause so a dead node is not hammered.
                        tokio::select! {
                            _ = tokio::time::sleep(FAILED_POLL_PAUSE) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                    continue;
                }
            };
            let generation = polled.generation.or(generation);
            session = Some((member.clone(), generation));
            // The next offset to read, per partition, from this poll.
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            for r in &polled.records {
                let e = next.entry(r.key.clone()).or_insert(0);
                *e = (*e).max(r.offset + 1);
            }
            if !next.is_empty() {
                let node = self.pick_node(&mut rng);
                match self
                    .commit_once(process, &group, &member, generation, &next, node)
                    .await
                {
                    EventType::Ok => {
                        for (k, o) in &next {
                            committed.insert(k.clone(), *o);
                        }
                    }
                    EventType::Fail => {
                        // A 409 (stale generation, fenced): re-join.
                        session = None;
                        continue;
                    }
                    _ if naive => {
                        // Unknown outcome: carry on; the next commit covers this one.
                    }
                    _ => {
                        self.leave_once(process, &group, &member, node).await;
                        session = None;
                        continue;
                    }
                }
            }
            if let Some(targets) = &drain {
                // Partitions other members already consumed give this member no records:
                // the group's committed offsets, read back, decide.
                let mut done = false;
                if polled.records.is_empty() {
                    if let Some(group_offsets) = self.committed_once(process, node).await {
                        for ko in group_offsets {
                            if let Some(o) = ko.offset {
                                let e = committed.entry(ko.key).or_insert(0);
                                *e = (*e).max(o);
                            }
                        }
                    }
                    done = targets
                        .iter()
                        .all(|(k, hw)| committed.get(k).copied().unwrap_or(0) >= *hw);
                }
                if done {
                    self.leave_once(process, &group, &member, node).await;
                    return true;
                }
            } else if rng.gen_range(0..1000) < MEMBER_RESTART_PER_MILLE {
                if rng.gen_bool(0.5) {
                    self.leave_once(process, &group, &member, node).await;
                }
                session = None;
            }
        }
        if let Some((member, _)) = session {
            let node = self.pick_node(&mut rng);
            self.leave_once(process, &group, &member, node).await;
        }
        false
    }

    async fn join_once(
        &self,
        process: &str,
        group: &str,
        node: u64,
    ) -> Option<(String, Option<i64>)> {
        let mut inv = Event::new(process, EventType::Invoke, Op::Join);
        inv.node = Some(node);
        inv.group = Some(group.to_string());
        let inv = self.history.record(inv);
        match self
            .client
            .join(node, group, &self.config.topics, SESSION_TIMEOUT_MS)
            .await
        {
            Ok(j) => {
                let mut e = inv.complete(EventType::Ok);
                e.member = Some(j.member_id.clone());
                e.generation = j.generation;
                e.assignments = Some(j.assignments);
                self.history.record(e);
                Some((j.member_id, j.generation))
            }
            Err(f) => {
                let mut e = inv.complete(complete_err(Op::Join, &f));
                e.error = Some(f.describe());
                self.history.record(e);
                None
            }
        }
    }

    /// Returns the completion type.
    async fn commit_once(
        &self,
        process: &str,
        group: &str,
        member: &str,
        generation: Option<i64>,
        next: &BTreeMap<String, u64>,
        node: u64,
    ) -> EventType {
        let mut inv = Event::new(process, EventType::Invoke, Op::Commit);
        inv.node = Some(node);
        inv.group = Some(group.to_string());
        inv.member = Some(member.to_string());
        inv.generation = generation;
        inv.offsets = Some(
            next.iter()
                .map(|(k, o)| KeyOffset {
                    key: k.clone(),
                    offset: Some(*o),
                })
                .collect(),
        );
        let inv = self.history.record(inv);
        let list: Vec<(String, u32, u64)> = next
            .iter()
            .filter_map(|(k, o)| split_key(k).map(|(t, p)| (t.to_string(), p, *o)))
            .collect();
        let (kind, error) = match self
            .client
            .commit(node, group, member, generation, &list)
            .await
        {
            Ok(()) => (EventType::Ok, None),
            Err(f) => (complete_err(Op::Commit, &f), Some(f.describe())),
        };
        let mut e = inv.complete(kind);
        e.offsets = inv.offsets.clone();
        e.error = error;
        self.history.record(e);
        kind
    }

    async fn leave_once(&self, process: &str, group: &str, member: &str, node: u64) {
        let mut inv = Event::new(process, EventType::Invoke, Op::Leave);
        inv.node = Some(node);
        inv.group = Some(group.to_string());
        inv.member = Some(member.to_string());
        let inv = self.history.record(inv);
        let res = self.client.leave(node, group, member).await;
        let mut e = match &res {
            Ok(()) => inv.complete(EventType::Ok),
            Err(f) => inv.complete(complete_err(Op::Leave, f)),
        };
        if let Err(f) = res {
            e.error = Some(f.describe());
        }
        self.history.record(e);
    }

    async fn committed_reader(&self, process: &str, stop: CancellationToken) {
        let mut rng = self.rng(0x4000);
        while !stop.is_cancelled() {
            let node = self.pick_node(&mut rng);
            self.committed_once(process, node).await;
            tokio::select! {
                _ = tokio::time::sleep(COMMITTED_EVERY) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// One read of the group's committed offsets.
    pub async fn committed_once(&self, process: &str, node: u64) -> Option<Vec<KeyOffset>> {
        let group = &self.config.group;
        let mut inv = Event::new(process, EventType::Invoke, Op::Committed);
        inv.node = Some(node);
        inv.group = Some(group.clone());
        let inv = self.history.record(inv);
        match self.client.committed(node, group).await {
            Ok(offsets) => {
                let mut e = inv.complete(EventType::Ok);
                e.offsets = Some(offsets.clone());
                self.history.record(e);
                Some(offsets)
            }
            Err(f) => {
                let mut e = inv.complete(complete_err(Op::Committed, &f));
                e.error = Some(f.describe());
                self.history.record(e);
                None
            }
        }
    }
}
