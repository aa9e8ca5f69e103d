//! One maintenance clock for every partition on the node: each period it sends
//! [`PartitionMsg::Maintenance`] to the partitions whose replica here leads and that hold
//! anything to maintain.
//!
//! Maintenance is the leader's alone (retention trims, compaction windows and delayed
//! releases are decided there and reach the followers through Raft), so a follower's tick
//! did nothing but wake its actor. With thousands of partitions per node, one timer per
//! partition and a message to every replica each second made up much of what an idle node
//! spent; one timer and a message to the leaders only costs a leadership check per
//! partition.

use std::collections::HashMap;
use std::sync::{RwLock, Weak};
use std::time::Duration;

use openraft::ServerState;
use psubd_raft::GroupId;
use tokio::time::MissedTickBehavior;

use super::actor::{PartitionHandle, PartitionMsg};
use super::reader::PartitionReader;

/// Ticks every `period` (the first one `period` from now) until the table is dropped
/// with the node's broker. A late tick is sent once; the next ones keep their period.
pub fn run(table: Weak<RwLock<HashMap<GroupId, PartitionHandle>>>, period: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let Some(table) = table.upgrade() else { return };
            let leaders: Vec<_> = table
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|h| may_need_maintenance(&h.reader))
                .filter(|h| h.raft.metrics().borrow().state == ServerState::Leader)
                .map(|h| h.actor.clone())
                .collect();
            drop(table);
            for actor in leaders {
                // An actor that stopped is being replaced or closed: nothing to tick.
                let _ = actor.send_message(PartitionMsg::Maintenance);
            }
        }
    });
}

/// Whether a partition may have maintenance to do. One with no records stored and none
/// delayed has nothing to trim, compact or release, so its actor is not woken: on a node
/// of a thousand empty partitions, those messages were a fifth of its idle CPU.
fn may_need_maintenance(reader: &PartitionReader) -> bool {
    let bounds = reader.bounds();
    bounds.log_start < bounds.next_offset || reader.delays().records > 0
}
