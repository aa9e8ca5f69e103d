//! Configuration of a node's Raft side: identity and addresses ([`RaftNodeConfig`]) and the
//! timing and batching of every group ([`RaftTuning`]).
//!
//! The tuning is chosen for many groups sharing one disk and one connection per peer pair,
//! not for openraft's defaults (which assume one group on a fast LAN): see each field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use openraft::SnapshotPolicy;

use crate::transport::auth::ClusterSecret;
use crate::transport::tls::PeerTls;
use crate::transport::TransportLimits;
use crate::types::NodeId;

/// Largest `RaftTuning::snapshot_stagger_percent`: a replica waits at most 11 intervals.
pub const MAX_SNAPSHOT_STAGGER_PERCENT: u64 = 1_000;

/// Raft timing and batching, tuned for groups sharing one disk (not openraft defaults).
///
/// One value is shared by every group on the node. Defaults are the production choice;
/// tests shrink `snapshot_every_entries` to exercise snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftTuning {
    /// Leader heartbeat period, and the deadline of one AppendEntries RPC (openraft uses the
    /// heartbeat interval as that deadline, and resends on expiry). 300 ms: still well
    /// inside `election_min_ms`, and long enough for an append of `max_append_bytes` plus
    /// the follower's group-commit fsync on a busy shared disk — at 150 ms, appends under
    /// load expired and were sent again, wasting the work the disk had already done.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout. 1 s (openraft: 150 ms) because one
    /// node runs hundreds of groups over one connection per peer and one disk: a
    /// short timeout turns a slow fsync or a GC-like stall into needless elections.
    pub election_min_ms: u64,
    /// Upper bound of the randomised election timeout. 1.5 s: a 500 ms spread keeps split
    /// votes between three or five nodes rare, and failover (openraft 0.9: the leader
    /// lease, which is this bound, plus one election timeout) stays under about 3.5 s.
    pub election_max_ms: u64,
    /// Deadline of one snapshot chunk RPC. The last chunk includes installing the snapshot
    /// (clearing and reloading the state tree), which for a large partition takes seconds;
    /// openraft's 200 ms would make big installs fail forever.
    pub install_snapshot_timeout_ms: u64,
    /// A snapshot is due no sooner than this many entries after the last one. 5 000 keeps
    /// the replay after a restart short without rebuilding snapshots often.
    pub snapshot_every_entries: u64,
    /// ...and once the commands applied since the last snapshot add up to this share of its
    /// size, in percent. 100: snapshot writes cost at most as much again as the appends,
    /// however large the state (the entry count alone rewrote a large partition every
    /// 5 000 small publishes); 0 leaves the entry count alone (tests). See
    /// `state::schedule`.
    pub snapshot_growth_percent: u64,
    /// Each replica scales both thresholds above (and the retained-state rule of
    /// `state::schedule`) by a random factor between 100 % and 100 % + this, drawn when
    /// it opens the group. 50: the replicas of a partition, and partitions under the same
    /// load, reach their thresholds at the same entry and would otherwise build their
    /// snapshots (each a copy of the whole partition) at once; 0 disables it (tests).
    pub snapshot_stagger_percent: u64,
    /// Entries kept in the log behind a snapshot, so a follower a little behind catches up
    /// from the log instead of a full snapshot transfer.
    pub keep_logs_after_snapshot: u64,
    /// Most entries in one AppendEntries. 32 (openraft: 300) because an entry is a whole
    /// record batch (tens of KiB): 32 × 64 KiB = 2 MiB per RPC, which crosses a LAN and is
    /// fsynced within one heartbeat; `max_append_bytes` caps it in bytes as well.
    pub max_payload_entries: u64,
    /// Most payload bytes in one AppendEntries; a larger batch is refused by the network
    /// with a hint to send fewer entries (openraft shrinks the next RPCs). Keeps one group's
    /// catch-up from monopolising the shared peer connection and the heartbeat deadline.
    pub max_append_bytes: u64,
    /// Log entries purged per purge call behind a snapshot. 256 (openraft: 1): purging one
    /// entry at a time costs one storage batch each.
    pub purge_batch_size: u64,
    /// A group's Raft log rolls to a new segment file once the active one holds this many
    /// bytes; purging frees space in whole files of about this size. 16 MiB: a few hundred
    /// record-batch entries, so rolls (each one extra fdatasync) are rare, while the file
    /// still holding purged entries stays small next to a group's retained log.
    pub log_segment_bytes: u64,
    /// Snapshot chunk size. 1 MiB: far below the 64 MiB frame limit, and small enough that a
    /// chunk on the shared connection delays other groups' heartbeats by milliseconds on a
    /// 1 Gbit/s link (openraft's 3 MiB is ~25 ms), while still streaming at link speed.
    pub snapshot_chunk_bytes: u64,
    /// Requests in flight per peer connection, each direction.
    pub max_inflight_per_peer: usize,
    /// Frames queued for writing per peer connection.
    pub outbound_queue_frames: usize,
    /// An idle connection side pings this often.
    pub keepalive_ms: u64,
    /// A connection that received nothing (not even a ping) for this long is closed and
    /// redialed: it covers a peer that vanished without closing its socket.
    pub idle_timeout_ms: u64,
    /// TCP connect deadline.
    pub connect_timeout_ms: u64,
    /// Hello exchange deadline.
    pub handshake_timeout_ms: u64,
    /// First redial delay after a lost connection (doubled per failure, with jitter).
    pub reconnect_min_ms: u64,
    /// Longest redial delay: bounds how long a healed link stays unused.
    pub reconnect_max_ms: u64,
    /// How often the node looks over its groups to let idle ones go quiet and wake the
    /// ones that must not be (see `crate::quiet`); 0 keeps every group ticking. 250 ms:
    /// a dead leader's node is noticed within the transport's silence limit plus this,
    /// and a pass over thousands of groups reads only their metrics.
    pub quiet_check_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 300,
            election_min_ms: 1_000,
            election_max_ms: 1_500,
            install_snapshot_timeout_ms: 10_000,
            snapshot_every_entries: 5_000,
            snapshot_growth_percent: 100,
            snapshot_stagger_percent: 50,
            keep_logs_after_snapshot: 1_000,
            max_payload_entries: 32,
            max_append_bytes: 4 * 1024 * 1024,
            purge_batch_size: 256,
            log_segment_bytes: crate::log::segments::DEFAULT_SEGMENT_BYTES,
            snapshot_chunk_bytes: 1024 * 1024,
            max_inflight_per_peer: 1024,
            outbound_queue_frames: 1024,
            keepalive_ms: 1_000,
            idle_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 1_000,
            quiet_check_ms: 250,
        }
    }
}

impl RaftTuning {
    /// The openraft configuration every group on the node runs with. Not yet validated:
    /// [`RaftTuning::validate`] (called by `RaftNode::start`) checks it.
    pub fn openraft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "psubd".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            // Each state machine asks for snapshots itself (`state::schedule`).
            snapshot_policy: SnapshotPolicy::Never,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
            purge_batch_size: self.purge_batch_size,
            ..openraft::Config::default()
        }
    }

    /// Checks the tuning: openraft's own rules (election timeout above the heartbeat,
    /// min below max, entries per RPC above zero) and the transport's.
    ///
    /// # Errors
    /// A message naming the broken rule.
    pub fn validate(&self) -> Result<openraft::Config, String> {
        if self.snapshot_every_entries == 0 {
            return Err("snapshot_every_entries must be at least 1".to_string());
        }
        if self.snapshot_stagger_percent > MAX_SNAPSHOT_STAGGER_PERCENT {
            return Err(format!(
                "snapshot_stagger_percent must be at most {MAX_SNAPSHOT_STAGGER_PERCENT}"
            ));
        }
        if self.log_segment_bytes == 0 {
            return Err("log_segment_bytes must be at least 1".to_string());
        }
        if self.max_append_bytes == 0 {
            return Err("max_append_bytes must be at least 1".to_string());
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes > (crate::transport::codec::MAX_FRAME_BYTES / 2) as u64
        {
            return Err(
                "snapshot_chunk_bytes must be between 1 and half the 64 MiB frame limit"
                    .to_string(),
            );
        }
        if self.max_inflight_per_peer == 0 || self.outbound_queue_frames == 0 {
            return Err(
                "max_inflight_per_peer and outbound_queue_frames must be at least 1".to_string(),
            );
        }
        if self.keepalive_ms == 0 || self.idle_timeout_ms <= self.keepalive_ms {
            return Err(
                "idle_timeout_ms must exceed keepalive_ms, which must be at least 1".to_string(),
            );
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(
                "reconnect_min_ms must be at least 1 and at most reconnect_max_ms".to_string(),
            );
        }
        self.openraft_config().validate().map_err(|e| e.to_string())
    }

    /// The transport bounds and timers.
    pub(crate) fn transport_limits(&self) -> TransportLimits {
        TransportLimits {
            max_inflight: self.max_inflight_per_peer,
            outbound_queue: self.outbound_queue_frames,
            keepalive: Duration::from_millis(self.keepalive_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            suspect_after: Duration::from_millis(2 * self.keepalive_ms)
                .min(Duration::from_millis(self.idle_timeout_ms)),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        }
    }
}

/// What a node needs to run its Raft side.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// This node's id; must be a key of `peers`.
    pub id: NodeId,
    /// Address the peer transport listens on.
    pub listen: SocketAddr,
    /// The nodes known at start with their transport addresses, this node included (more
    /// are learnt later: [`crate::RaftNode::learn_peer`]).
    pub peers: BTreeMap<NodeId, crate::PeerAddr>,
    /// Directory of the node's database and snapshots.
    pub data_dir: PathBuf,
    /// Bound of the storage engine's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// The secret every peer must prove it holds at the hello exchange (none: peers are not
    /// authenticated; the node configuration allows that only on loopback).
    pub cluster_secret: ClusterSecret,
    /// Mutual TLS with every peer (see [`crate::transport::tls`]), if configured.
    pub peer_tls: Option<PeerTls>,
    /// Peers may be reached off loopback without authenticating (`--insecure`): then a
    /// node at any address may be added to the cluster, not only a loopback one.
    pub insecure_peers: bool,
    /// Below this many free bytes on the data directory's file system the node refuses new
    /// records (see [`crate::health`]); 0 never refuses.
    pub min_free_bytes: u64,
    /// Timing and batching of every group.
    pub tuning: RaftTuning,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tuning_is_valid_and_reaches_openraft() {
        let tuning = RaftTuning::default();
        let config = tuning.validate().unwrap();
        assert_eq!(config.heartbeat_interval, 300);
        assert_eq!(config.election_timeout_min, 1_000);
        assert_eq!(config.snapshot_policy, SnapshotPolicy::Never);
        assert_eq!(config.max_in_snapshot_log_to_keep, 1_000);
        assert_eq!(config.snapshot_max_chunk_size, 1024 * 1024);
    }

    #[test]
    fn election_timeout_below_heartbeat_is_refused() {
        let tuning = RaftTuning {
            election_min_ms: 100,
            ..RaftTuning::default()
        };
        assert!(tuning.validate().is_err());
    }
}
