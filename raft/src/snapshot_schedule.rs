//! When a replica asks openraft for a snapshot.
//!
//! openraft's own policy counts entries only. A snapshot rewrites the whole state, so with a
//! large state and small entries (single-record publishes to a partition holding a backlog)
//! that policy spends most of a node's CPU and disk rewriting the same data every few
//! thousand records. This schedule also asks that the group has applied a share of the last
//! snapshot's size since it: snapshot writes then cost at most `100 / growth_percent` times
//! the bytes applied, whatever the state's size. The price is a longer log behind the
//! newest snapshot (at most that share of the state, or `min_entries` entries), which a
//! restart replays.
//!
//! The state machine keeps the counts ([`crate::StateMachine`]) and calls
//! [`SnapshotSchedule::ask_if_due`] after each apply; the registry's per-group task turns a
//! request into `Raft::trigger().snapshot()`.

use tokio::sync::mpsc;

use crate::config::RaftTuning;

/// A group's snapshot policy and the channel its requests go out on.
#[derive(Debug)]
pub struct SnapshotSchedule {
    /// Entries applied since the newest snapshot before another is due.
    min_entries: u64,
    /// Bytes of commands applied since the newest snapshot, in percent of its size, before
    /// another is due.
    growth_percent: u64,
    /// Capacity 1: a full channel means a request is already waiting.
    requests: mpsc::Sender<()>,
}

/// The receiving side: one `()` per snapshot request.
pub type SnapshotRequests = mpsc::Receiver<()>;

impl SnapshotSchedule {
    /// A schedule following `tuning`, and the receiver its requests arrive on.
    pub fn new(tuning: &RaftTuning) -> (Self, SnapshotRequests) {
        let (requests, receiver) = mpsc::channel(1);
        let schedule = SnapshotSchedule {
            min_entries: tuning.snapshot_every_entries,
            growth_percent: tuning.snapshot_growth_percent,
            requests,
        };
        (schedule, receiver)
    }

    /// Whether a snapshot is due after `entries` entries and `bytes` command bytes applied
    /// since the newest snapshot, which is `snapshot_bytes` long (0 without one).
    pub fn is_due(&self, entries: u64, bytes: u64, snapshot_bytes: u64) -> bool {
        entries >= self.min_entries
            && u128::from(bytes) * 100
                >= u128::from(snapshot_bytes) * u128::from(self.growth_percent)
    }

    /// Asks for a snapshot if one is due, unless one was asked for fewer than `min_entries`
    /// entries ago (`asked_at`, in applied entries, is then left alone; openraft drops a
    /// request that arrives while it builds one, so an unanswered request is repeated).
    /// Returns the new `asked_at`.
    pub fn ask_if_due(
        &self,
        progress: SnapshotProgress,
        snapshot_bytes: u64,
        asked_at: Option<u64>,
    ) -> Option<u64> {
        let applied = progress.applied_entries;
        let waiting = asked_at.is_some_and(|at| applied < at.saturating_add(self.min_entries));
        if waiting
            || !self.is_due(
                progress.entries_since(),
                progress.bytes_since,
                snapshot_bytes,
            )
        {
            return asked_at;
        }
        match self.requests.try_send(()) {
            // Full: a request is already queued, which is as good as this one.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Some(applied),
            // Closed: the group is shutting down.
            Err(mpsc::error::TrySendError::Closed(())) => asked_at,
        }
    }
}

/// How far a state machine is past its newest snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// Entries applied in all (the next index to apply).
    pub applied_entries: u64,
    /// Entries the newest snapshot covers (its last index + 1; 0 without one).
    pub covered_entries: u64,
    /// Command bytes applied since the newest snapshot.
    pub bytes_since: u64,
}

impl SnapshotProgress {
    /// Entries applied since the newest snapshot.
    pub fn entries_since(&self) -> u64 {
        self.applied_entries.saturating_sub(self.covered_entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(min_entries: u64, growth_percent: u64) -> (SnapshotSchedule, SnapshotRequests) {
        SnapshotSchedule::new(&RaftTuning {
            snapshot_every_entries: min_entries,
            snapshot_growth_percent: growth_percent,
            ..RaftTuning::default()
        })
    }

    fn progress(applied: u64, covered: u64, bytes: u64) -> SnapshotProgress {
        SnapshotProgress {
            applied_entries: applied,
            covered_entries: covered,
            bytes_since: bytes,
        }
    }

    #[test]
    fn due_needs_both_the_entries_and_the_growth() {
        let (s, _rx) = schedule(100, 100);
        // No snapshot yet: entries alone decide.
        assert!(!s.is_due(99, 1 << 30, 0));
        assert!(s.is_due(100, 0, 0));
        // A 1 MB snapshot: 1 MB of commands applied since is needed as well.
        assert!(!s.is_due(10_000, 999_999, 1_000_000));
        assert!(s.is_due(100, 1_000_000, 1_000_000));
        assert!(!s.is_due(99, 1_000_000, 1_000_000));
        // Half the size at 50 %; entries only at 0 %.
        let (half, _rx) = schedule(100, 50);
        assert!(half.is_due(100, 500_000, 1_000_000));
        assert!(!half.is_due(100, 499_999, 1_000_000));
        let (count_only, _rx) = schedule(100, 0);
        assert!(count_only.is_due(100, 0, u64::MAX));
    }

    #[test]
    fn a_request_is_sent_once_and_repeated_only_after_another_interval() {
        let (s, mut rx) = schedule(10, 100);
        // Not due: nothing sent.
        assert_eq!(s.ask_if_due(progress(5, 0, 0), 0, None), None);
        assert!(rx.try_recv().is_err());
        // Due: one request, remembered at 10 applied entries.
        assert_eq!(s.ask_if_due(progress(10, 0, 0), 0, None), Some(10));
        assert!(rx.try_recv().is_ok());
        // Still due a little later: not asked again while the first may be building.
        assert_eq!(s.ask_if_due(progress(19, 0, 0), 0, Some(10)), Some(10));
        assert!(rx.try_recv().is_err());
        // Unanswered for another interval: asked again.
        assert_eq!(s.ask_if_due(progress(20, 0, 0), 0, Some(10)), Some(20));
        assert!(rx.try_recv().is_ok());
        // A queued request stands for a new one.
        assert_eq!(s.ask_if_due(progress(30, 0, 0), 0, None), Some(30));
        assert_eq!(s.ask_if_due(progress(40, 0, 0), 0, Some(30)), Some(40));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        // The group is gone: nothing is remembered.
        drop(rx);
        assert_eq!(s.ask_if_due(progress(50, 0, 0), 0, None), None);
    }

    #[test]
    fn entries_since_counts_from_the_snapshot() {
        assert_eq!(progress(5_000, 1_000, 0).entries_since(), 4_000);
        assert_eq!(progress(10, 20, 0).entries_since(), 0);
    }
}
