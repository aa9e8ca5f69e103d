//! Push subscriptions: a consumer group whose records the cluster POSTs to an HTTP
//! endpoint instead of members fetching them (docs/api.md § Push subscriptions).
//!
//! Two halves, kept apart because they live differently:
//! - [`PushConfig`] is replicated: it is part of the state of the group's offsets
//!   partition (`offsets`), so the node that leads that partition — the group's
//!   coordinator — finds it after any failover and resumes from the committed offsets.
//! - [`PushStatus`] is soft state: what the pusher running on this node has seen
//!   (attempts, last error, deliveries since it started). It is published on the node's
//!   [`PushBoard`], where the coordinator's describe reads it. Its dead-letter and drop
//!   counts start from the [`PushTotals`] replicated with the last commit, and go back
//!   into each commit.
//!
//! The pushing itself (HTTP, fetches, dead letters) lives in the edge (`psubd-api`'s
//! `push` module), which can reach every partition and topic of the cluster.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::locks::lock;

/// A push subscription's settings, as replicated. Checked by the edge before it is
/// proposed (bounds in `psubd-api`'s `service::push`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushConfig {
    /// The subscribed topics.
    pub topics: Vec<String>,
    /// `http://` or `https://` URL every record is POSTed to.
    pub endpoint: String,
    /// Most records of one partition outstanding at once (1: strict order).
    pub max_in_flight: u32,
    /// Deadline of one POST, connect included.
    pub timeout_ms: u64,
    /// Pause after the first failed attempt; doubles with each further failure.
    pub min_backoff_ms: u64,
    /// Longest pause between two attempts.
    pub max_backoff_ms: u64,
    /// Attempts per record before it is dead-lettered (or dropped without a topic).
    pub max_deliveries: u32,
    /// Where records go after `max_deliveries` failed attempts.
    pub dead_letter_topic: Option<String>,
    /// Key of the `X-Psubd-Signature` HMAC. Stored in the replicated state as given:
    /// the pushing node needs it.
    pub secret: Option<String>,
}

/// Never prints the secret: configs appear in logs and panics.
impl fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConfig")
            .field("topics", &self.topics)
            .field("endpoint", &self.endpoint)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout_ms", &self.timeout_ms)
            .field("min_backoff_ms", &self.min_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("max_deliveries", &self.max_deliveries)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A push subscription's counts of one partition that outlive its pusher: replicated in
/// the offsets partition with each push commit (`OffsetsCommand::CommitPush`), read back
/// by the next coordinator's pusher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTotals {
    /// The Raft group of the topic partition they count: a re-created topic starts at 0.
    pub topic_group: psubd_raft::GroupId,
    /// Records sent to the dead-letter topic since the subscription began.
    pub dead_lettered: u64,
    /// Records given up without a dead-letter topic since the subscription began.
    pub dropped: u64,
}

/// One partition's push progress as the pusher on this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPushStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The group's committed offset (the next record to push), once known.
    pub committed_offset: Option<u64>,
    /// The partition's high watermark at the last read.
    pub high_watermark: Option<u64>,
    /// The offset of the oldest record being delivered, if any.
    pub pending_offset: Option<u64>,
    /// Attempts made so far for that record (0 when none is pending).
    pub delivery_attempt: u32,
    /// The last failure (of an attempt, a read or a commit), kept until a success.
    pub last_error: Option<String>,
    /// Records acknowledged by the endpoint since this pusher started.
    pub delivered: u64,
    /// Records sent to the dead-letter topic since the subscription began (replicated
    /// with the commits, see [`PushTotals`]).
    pub dead_lettered: u64,
    /// Records given up without a dead-letter topic since the subscription began
    /// (replicated likewise).
    pub dropped: u64,
}

/// What the pusher of one group on this node publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStatus {
    /// One entry per subscribed partition, in topic then partition order.
    pub partitions: Vec<PartitionPushStatus>,
}

/// The push status of every pusher running on this node, by group. Cheap to clone.
/// Written by the pushers, read by the coordinators' describe.
#[derive(Clone, Debug, Default)]
pub struct PushBoard {
    statuses: Arc<Mutex<HashMap<String, Arc<Mutex<PushStatus>>>>>,
}

impl PushBoard {
    /// Registers a pusher of `group` and returns the status it updates in place.
    pub fn register(&self, group: &str, status: PushStatus) -> Arc<Mutex<PushStatus>> {
        let shared = Arc::new(Mutex::new(status));
        lock(&self.statuses).insert(group.to_string(), shared.clone());
        shared
    }

    /// Removes `group`'s status, if it is still the one given (a restarted pusher may
    /// have registered a newer one meanwhile).
    pub fn remove(&self, group: &str, status: &Arc<Mutex<PushStatus>>) {
        let mut statuses = lock(&self.statuses);
        if statuses
            .get(group)
            .is_some_and(|current| Arc::ptr_eq(current, status))
        {
            statuses.remove(group);
        }
    }

    /// A copy of `group`'s status, when a pusher of it runs here.
    pub fn status(&self, group: &str) -> Option<PushStatus> {
        let shared = lock(&self.statuses).get(group).cloned()?;
        let status = lock(&shared).clone();
        Some(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let config = PushConfig {
            topics: vec!["t".into()],
            endpoint: "http://127.0.0.1:1/".into(),
            max_in_flight: 1,
            timeout_ms: 1,
            min_backoff_ms: 1,
            max_backoff_ms: 1,
            max_deliveries: 1,
            dead_letter_topic: None,
            secret: Some("hunter2".into()),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<set>"));
    }

    #[test]
    fn the_board_keeps_only_the_newest_registration() {
        let board = PushBoard::default();
        let old = board.register("g", PushStatus::default());
        let new = board.register("g", PushStatus::default());
        board.remove("g", &old);
        assert!(
            board.status("g").is_some(),
            "an older pusher's exit keeps the newer"
        );
        board.remove("g", &new);
        assert!(board.status("g").is_none());
    }
}
