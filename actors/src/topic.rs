//! Topics: names, configuration and where each partition's replicas live.

use psubd_raft::{GroupId, NodeId};
use serde::{Deserialize, Serialize};

/// Longest topic or group name (Kafka's limit).
pub const MAX_NAME_LEN: usize = 249;

/// Retention default: seven days, as Kafka.
pub const DEFAULT_RETENTION_MS: i64 = 604_800_000;

/// Tombstone retention default: one day, as Kafka.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;

/// How long a partition remembers a record id by default (`duplicate_window_ms`): two
/// minutes covers a client's retries after a failover with room to spare.
pub const DEFAULT_DUPLICATE_WINDOW_MS: u64 = 120_000;

/// The longest duplicate window a topic may have (one day). Ids are also bounded in number
/// per partition (`partition::id_table::MAX_IDS_PER_PARTITION`), so a long window only
/// helps topics that publish few ids.
pub const MAX_DUPLICATE_WINDOW_MS: u64 = 86_400_000;

/// Most partitions one topic may have: each is a Raft group on every replica node.
pub const MAX_PARTITIONS: u32 = 1024;

/// Why a name was refused; the message is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// Checks a topic or group name against `^[A-Za-z0-9._-]{1,249}$`, not `.` or `..`.
///
/// # Errors
/// [`InvalidName`] naming the rule broken.
pub fn validate_name(kind: &str, name: &str) -> Result<(), InvalidName> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(InvalidName(format!(
            "{kind} name must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    if name == "." || name == ".." {
        return Err(InvalidName(format!("{kind} name may not be '.' or '..'")));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(InvalidName(format!(
            "{kind} name may only contain A-Z, a-z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// True for names reserved to psubd itself (`__consumer_offsets`).
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

/// What happens to old records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CleanupPolicy {
    /// Delete by age and size.
    Delete,
    /// Keep the latest value per key.
    Compact,
}

/// A topic's settings as given at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions, fixed at creation.
    pub partitions: u32,
    /// Replicas per partition (≤ the number of nodes).
    pub replication_factor: u32,
    /// Age after which records may be deleted; -1 keeps forever.
    pub retention_ms: i64,
    /// Size per partition beyond which the oldest records may be deleted; -1 is unbounded.
    pub retention_bytes: i64,
    /// Delete or compact.
    pub cleanup_policy: CleanupPolicy,
    /// Compacted topics: how long a tombstone stays readable before compaction removes
    /// it (and its key), so consumers that read the log see deletions. -1 is forever.
    pub delete_retention_ms: i64,
}

impl TopicConfig {
    /// Checks the settings of a new topic on a cluster of `nodes` nodes. The edge checks a
    /// client's request with it, and the controller checks again what reaches it (a peer
    /// forwards requests), so no setting out of range reaches replica placement.
    ///
    /// # Errors
    /// The rule broken, as a message for the user.
    pub fn check(&self, nodes: usize) -> Result<(), String> {
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(format!("partitions must be between 1 and {MAX_PARTITIONS}"));
        }
        if self.replication_factor < 1 || self.replication_factor as usize > nodes {
            return Err(format!(
                "replication_factor must be between 1 and the {nodes} nodes of the cluster"
            ));
        }
        check_retention_ms(self.retention_ms)?;
        check_retention_bytes(self.retention_bytes)?;
        if self.delete_retention_ms < -1 {
            return Err(
                "delete_retention_ms must be 0 or more, or -1 to keep tombstones forever".into(),
            );
        }
        Ok(())
    }
}

/// Checks a topic's age limit.
///
/// # Errors
/// The rule broken, as a message for the user.
pub fn check_retention_ms(value: i64) -> Result<(), String> {
    if value < -1 || value == 0 {
        return Err("retention_ms must be positive, or -1 for unlimited".into());
    }
    Ok(())
}

/// Checks a topic's duplicate window (0 turns deduplication off).
///
/// # Errors
/// The rule broken, as a message for the user.
pub fn check_duplicate_window_ms(value: i64) -> Result<u64, String> {
    u64::try_from(value)
        .ok()
        .filter(|ms| *ms <= MAX_DUPLICATE_WINDOW_MS)
        .ok_or_else(|| {
            format!(
                "duplicate_window_ms must be between 0 (no deduplication) and \
                 {MAX_DUPLICATE_WINDOW_MS}"
            )
        })
}

/// Checks a topic's size limit per partition.
///
/// # Errors
/// The rule broken, as a message for the user.
pub fn check_retention_bytes(value: i64) -> Result<(), String> {
    if value < -1 || value == 0 {
        return Err("retention_bytes must be positive, or -1 for unlimited".into());
    }
    Ok(())
}

/// One partition's placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlacement {
    /// The Raft group holding this partition's log; never reused, even after deletion.
    pub group: GroupId,
    /// The nodes holding a replica. `replicas[0]` is the preferred leader: placement
    /// rotates it over the nodes so leaders spread out.
    pub replicas: Vec<NodeId>,
}

/// A topic as the controller stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: String,
    /// Its configuration.
    pub config: TopicConfig,
    /// Placement per partition, indexed by partition number.
    pub partitions: Vec<PartitionPlacement>,
    /// Creation time, ms since the epoch (the proposer's clock).
    pub created_ms: i64,
}

/// Spreads `partitions` partitions with `rf` replicas over `nodes`: partition `i`'s
/// replicas are `rf` consecutive nodes starting at `(offset + i) mod n`, so replica sets
/// and preferred leaders rotate over every node and a larger cluster holds more.
pub fn place_replicas(nodes: &[NodeId], partitions: u32, rf: u32, offset: u64) -> Vec<Vec<NodeId>> {
    let n = nodes.len();
    (0..partitions as usize)
        .map(|i| {
            (0..rf as usize)
                .map(|r| nodes[(offset as usize + i + r) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_with_the_rule() {
        let config = TopicConfig {
            partitions: 3,
            replication_factor: 3,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
        };
        assert_eq!(config.check(3), Ok(()));
        let refused = |change: fn(&mut TopicConfig), nodes| {
            let mut bad = config.clone();
            change(&mut bad);
            bad.check(nodes).unwrap_err()
        };
        assert!(refused(|c| c.partitions = 0, 3).contains("partitions"));
        assert!(refused(|c| c.partitions = MAX_PARTITIONS + 1, 3).contains("partitions"));
        assert!(refused(|c| c.replication_factor = 0, 3).contains("replication_factor"));
        assert!(refused(|_| {}, 2).contains("the 2 nodes"));
        assert!(refused(|c| c.retention_ms = 0, 3).contains("retention_ms"));
        assert!(refused(|c| c.retention_bytes = -2, 3).contains("retention_bytes"));
        assert!(refused(|c| c.delete_retention_ms = -2, 3).contains("delete_retention_ms"));
    }

    #[test]
    fn names_follow_the_api_rules() {
        assert!(validate_name("topic", "orders.v1_x-2").is_ok());
        assert!(validate_name("topic", "").is_err());
        assert!(validate_name("topic", ".").is_err());
        assert!(validate_name("topic", "..").is_err());
        assert!(validate_name("topic", "a/b").is_err());
        assert!(validate_name("topic", &"x".repeat(250)).is_err());
        assert!(validate_name("topic", &"x".repeat(249)).is_ok());
    }

    #[test]
    fn placement_spreads_replicas_and_leaders() {
        let nodes = [1, 2, 3, 4, 5];
        let placed = place_replicas(&nodes, 5, 3, 0);
        let leaders: Vec<_> = placed.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 4, 5]);
        for replicas in &placed {
            let mut sorted = replicas.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "replicas must be distinct nodes");
        }
    }
}
