//! What a partition's state machine shares with its readers and the snapshot builds:
//! the state tree once loaded, the bounds, the batch index and the compaction progress as
//! written, and the holds snapshot builds keep on the batch range.
//!
//! Readers only ever see written state: the state machine publishes after the apply batch
//! that produced a change is written.

use std::sync::{Arc, Mutex, OnceLock};

use psubd_raft::Tree;
use tokio::sync::watch;

use super::batch_index::{BatchIndex, IndexChange, LogBounds};
use super::compaction::CompactionProgress;
use super::delay_queue::DelaySummary;
use crate::locks::lock;

/// See the module docs. Every lock is taken alone, never with another of these.
#[derive(Debug)]
pub(super) struct Shared {
    tree: OnceLock<Tree>,
    bounds: watch::Sender<LogBounds>,
    /// The retained batches as written, for the retention tick and disk usage.
    index: Mutex<BatchIndex>,
    /// The high watermark of the plan of each snapshot build reading the batch range right
    /// now (see [`SnapshotRangeHold`]).
    holds: Mutex<Vec<u64>>,
    /// Compaction progress as written (compacted topics), for the leader's tick.
    compaction: Mutex<CompactionProgress>,
    /// The delay queue as written, for the leader's release timer and the partition view.
    delays: Mutex<DelaySummary>,
}

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        let (bounds, _) = watch::channel(LogBounds::default());
        Arc::new(Self {
            tree: OnceLock::new(),
            bounds,
            index: Mutex::new(BatchIndex::default()),
            holds: Mutex::new(Vec::new()),
            compaction: Mutex::new(CompactionProgress::default()),
            delays: Mutex::new(DelaySummary::default()),
        })
    }

    /// Records the state tree at the first load (it never changes after).
    pub(super) fn set_tree(&self, tree: &Tree) {
        let _ = self.tree.set(tree.clone());
    }

    /// The state tree, once loaded.
    pub(super) fn tree(&self) -> Option<&Tree> {
        self.tree.get()
    }

    /// The bounds as written.
    pub(super) fn bounds(&self) -> LogBounds {
        *self.bounds.borrow()
    }

    /// A watch that changes whenever the bounds do.
    pub(super) fn subscribe(&self) -> watch::Receiver<LogBounds> {
        self.bounds.subscribe()
    }

    /// Publishes `bounds`, waking watchers only when they changed.
    pub(super) fn publish_bounds(&self, bounds: LogBounds) {
        self.bounds.send_if_modified(|current| {
            let changed = *current != bounds;
            *current = bounds;
            changed
        });
    }

    /// Publishes `bounds` after a load, waking every watcher even if they did not change:
    /// the state under them was replaced.
    pub(super) fn reset_bounds(&self, bounds: LogBounds) {
        self.bounds.send_replace(bounds);
    }

    /// Publishes index changes once written.
    pub(super) fn publish_index(&self, changes: Vec<IndexChange>) {
        if changes.is_empty() {
            return;
        }
        let mut index = lock(&self.index);
        for change in changes {
            index.apply(change);
        }
    }

    /// Runs `f` over the index as written. Keep `f` short: applies wait for the same lock.
    pub(super) fn with_index<R>(&self, f: impl FnOnce(&BatchIndex) -> R) -> R {
        f(&lock(&self.index))
    }

    /// Publishes the compaction progress once written.
    pub(super) fn publish_compaction(&self, progress: CompactionProgress) {
        *lock(&self.compaction) = progress;
    }

    /// The compaction progress as written.
    pub(super) fn compaction(&self) -> CompactionProgress {
        *lock(&self.compaction)
    }

    /// Publishes the delay queue's summary once written.
    pub(super) fn publish_delays(&self, summary: DelaySummary) {
        *lock(&self.delays) = summary;
    }

    /// The delay queue's summary as written.
    pub(super) fn delays(&self) -> DelaySummary {
        *lock(&self.delays)
    }

    /// Keeps the batch range as a snapshot build whose plan's high watermark is `bound`
    /// reads it, until the hold is dropped.
    pub(super) fn hold(self: &Arc<Self>, bound: u64) -> SnapshotRangeHold {
        lock(&self.holds).push(bound);
        SnapshotRangeHold {
            shared: self.clone(),
            bound,
        }
    }

    /// The plan high watermarks of the snapshot builds reading the batch range now: empty
    /// when none is.
    pub(super) fn hold_bounds(&self) -> Vec<u64> {
        lock(&self.holds).clone()
    }

    /// A snapshot build reads the batch range now.
    pub(super) fn is_held(&self) -> bool {
        !lock(&self.holds).is_empty()
    }
}

/// While a snapshot build reads the batch range: keeps trimmed batches in the tree, and
/// keeps compaction from moving records across the plan's high watermark (`bound`).
pub(super) struct SnapshotRangeHold {
    shared: Arc<Shared>,
    bound: u64,
}

impl Drop for SnapshotRangeHold {
    fn drop(&mut self) {
        let mut holds = lock(&self.shared.holds);
        if let Some(at) = holds.iter().position(|bound| *bound == self.bound) {
            holds.swap_remove(at);
        }
    }
}
