//! Counters of each Raft group that openraft's own metrics do not carry: leader changes,
//! the commit index, and snapshots built and installed. The node's metrics read them at each
//! scrape (`psubd-api`'s `metrics` module).
//!
//! One [`GroupStats`] per group lives in the node's [`GroupStatsTable`] from the group's
//! first open until its storage is destroyed (topic deleted), so the counters of a group
//! closed and opened again keep counting, and a deleted group's series can leave with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::types::GroupId;

/// A group's counters since this process opened it. Every field only grows, except
/// `committed_index`, which follows the group's commit index.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Times the group saw a new leader (a different node, or the same node in a new term).
    leader_changes: AtomicU64,
    /// The last commit index openraft saved (`save_committed`), 0 before the first.
    committed_index: AtomicU64,
    /// Snapshots this replica built from its own state.
    snapshot_builds: AtomicU64,
    /// Bytes of the snapshot files this replica built.
    snapshot_built_bytes: AtomicU64,
    /// Snapshots this replica installed from its leader.
    snapshot_installs: AtomicU64,
    /// Bytes of the snapshot files this replica installed.
    snapshot_installed_bytes: AtomicU64,
}

/// A point-in-time copy of [`GroupStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStatsSnapshot {
    /// See [`GroupStats`].
    pub leader_changes: u64,
    /// See [`GroupStats`].
    pub committed_index: u64,
    /// See [`GroupStats`].
    pub snapshot_builds: u64,
    /// See [`GroupStats`].
    pub snapshot_built_bytes: u64,
    /// See [`GroupStats`].
    pub snapshot_installs: u64,
    /// See [`GroupStats`].
    pub snapshot_installed_bytes: u64,
}

/// How a snapshot file came to be the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOrigin {
    /// Built by this replica from its state.
    Built,
    /// Received from the leader and installed.
    Installed,
}

impl GroupStats {
    /// The counters as they stand.
    pub fn read(&self) -> GroupStatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GroupStatsSnapshot {
            leader_changes: get(&self.leader_changes),
            committed_index: get(&self.committed_index),
            snapshot_builds: get(&self.snapshot_builds),
            snapshot_built_bytes: get(&self.snapshot_built_bytes),
            snapshot_installs: get(&self.snapshot_installs),
            snapshot_installed_bytes: get(&self.snapshot_installed_bytes),
        }
    }

    pub(crate) fn leader_changed(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn committed(&self, index: u64) {
        self.committed_index.store(index, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_published(&self, origin: SnapshotOrigin, bytes: u64) {
        let (count, total) = match origin {
            SnapshotOrigin::Built => (&self.snapshot_builds, &self.snapshot_built_bytes),
            SnapshotOrigin::Installed => (&self.snapshot_installs, &self.snapshot_installed_bytes),
        };
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The node's [`GroupStats`], one per group whose storage exists here. Bounded by the
/// groups the node holds: an entry goes when the group's storage is destroyed.
#[derive(Debug, Default)]
pub struct GroupStatsTable {
    groups: Mutex<HashMap<GroupId, Arc<GroupStats>>>,
}

impl GroupStatsTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Arc<GroupStats>>> {
        // Counters only: a panic elsewhere cannot leave the map inconsistent.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group's counters, made on first use.
    pub(crate) fn entry(&self, group: GroupId) -> Arc<GroupStats> {
        self.lock().entry(group).or_default().clone()
    }

    /// The group's counters, if the group was opened here.
    pub fn get(&self, group: GroupId) -> Option<Arc<GroupStats>> {
        self.lock().get(&group).cloned()
    }

    /// Forgets a group whose storage was destroyed.
    pub(crate) fn remove(&self, group: GroupId) {
        self.lock().remove(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_by_origin_and_leave_with_the_group() {
        let table = GroupStatsTable::default();
        let stats = table.entry(7);
        stats.snapshot_published(SnapshotOrigin::Built, 100);
        stats.snapshot_published(SnapshotOrigin::Installed, 40);
        stats.snapshot_published(SnapshotOrigin::Installed, 2);
        stats.leader_changed();
        stats.committed(12);
        let read = table.get(7).map(|s| s.read()).unwrap_or_default();
        assert_eq!(
            read,
            GroupStatsSnapshot {
                leader_changes: 1,
                committed_index: 12,
                snapshot_builds: 1,
                snapshot_built_bytes: 100,
                snapshot_installs: 2,
                snapshot_installed_bytes: 42,
            }
        );
        // A group opened again shares its counters.
        assert!(Arc::ptr_eq(&table.entry(7), &stats));
        table.remove(7);
        assert!(table.get(7).is_none());
    }
}
