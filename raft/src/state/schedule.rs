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
//! A logic that knows how much state it retains ([`GroupLogic::retained_bytes`]: a
//! partition after retention removed records) also gets a snapshot once the commands
//! applied since the last one outgrow it (and [`MIN_BYTES_OVER_RETAINED`]), whatever the
//! entry count: the log is purged only behind a snapshot, so without this it would keep
//! every record retention removed.
//!
//! Each replica scales these thresholds by its own random factor (up to
//! `RaftTuning::snapshot_stagger_percent` above them), so the replicas of a partition, and
//! partitions under the same load, do not all copy their state out at the same entry.
//!
//! The state machine keeps the counts ([`crate::StateMachine`]) and calls
//! [`SnapshotSchedule::ask_if_due`] after each apply; the registry's per-group task turns a
//! request into `Raft::trigger().snapshot()`.

use rand::Rng;
use tokio::sync::mpsc;

use crate::config::RaftTuning;
#[cfg(doc)]
use crate::state::logic::GroupLogic;

/// Least bytes applied since the last snapshot for the retained-state rule: below it,
/// snapshots by bytes would churn for small partitions.
pub const MIN_BYTES_OVER_RETAINED: u64 = 16 << 20;

/// A group's snapshot policy and the channel its requests go out on.
#[derive(Debug)]
pub struct SnapshotSchedule {
    /// Entries applied since the newest snapshot before another is due.
    min_entries: u64,
    /// Bytes of commands applied since the newest snapshot, in percent of its size, before
    /// another is due.
    growth_percent: u64,
    /// This replica's thresholds, in percent of the configured ones (100 to 100 + the
    /// stagger).
    scale_percent: u64,
    /// Capacity 1: a full channel means a request is already waiting.
    requests: mpsc::Sender<()>,
}

/// The receiving side: one `()` per snapshot request.
pub type SnapshotRequests = mpsc::Receiver<()>;

impl SnapshotSchedule {
    /// A schedule following `tuning`, and the receiver its requests arrive on.
    pub fn new(tuning: &RaftTuning) -> (Self, SnapshotRequests) {
        let (requests, receiver) = mpsc::channel(1);
        let stagger = rand::thread_rng().gen_range(0..=tuning.snapshot_stagger_percent);
        let schedule = SnapshotSchedule {
            min_entries: tuning.snapshot_every_entries,
            growth_percent: tuning.snapshot_growth_percent,
            scale_percent: 100 + stagger,
            requests,
        };
        (schedule, receiver)
    }

    /// Whether a snapshot is due at `progress`, the newest snapshot file being
    /// `snapshot_bytes` long (0 without one).
    pub fn is_due(&self, progress: &SnapshotProgress, snapshot_bytes: u64) -> bool {
        // `at_least(value, threshold)`: value ≥ threshold × this replica's scale.
        let scale = u128::from(self.scale_percent);
        let at_least = |value: u128, threshold: u128| value * 100 >= threshold * scale;
        let bytes = u128::from(progress.bytes_since);
        let grown = at_least(progress.entries_since().into(), self.min_entries.into())
            && at_least(
                bytes * 100,
                u128::from(snapshot_bytes) * u128::from(self.growth_percent),
            );
        let outgrew_retained = progress
            .retained_bytes
            .is_some_and(|retained| at_least(bytes, retained.max(MIN_BYTES_OVER_RETAINED).into()));
        grown || outgrew_retained
    }

    /// Asks for a snapshot if one is due and no earlier request is still pending; returns
    /// the pending request. A request is answered when a snapshot is planned (the state
    /// machine then forgets it). openraft drops one that arrives while it builds another
    /// snapshot, so a request counts as pending only until a snapshot is published (that
    /// build's end) or, should that build fail, for `min_entries` more entries.
    pub fn ask_if_due(
        &self,
        progress: SnapshotProgress,
        current: CurrentSnapshot,
        asked: Option<Asked>,
    ) -> Option<Asked> {
        let applied = progress.applied_entries;
        let pending = asked.is_some_and(|a| {
            a.published == current.published && applied < a.applied.saturating_add(self.min_entries)
        });
        if pending || !self.is_due(&progress, current.bytes) {
            return asked;
        }
        match self.requests.try_send(()) {
            // Full: a request is already queued, which is as good as this one.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Some(Asked {
                applied,
                published: current.published,
            }),
            // Closed: the group is shutting down.
            Err(mpsc::error::TrySendError::Closed(())) => asked,
        }
    }
}

/// The newest snapshot file of a group, as the schedule weighs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CurrentSnapshot {
    /// Its length in bytes (0 without one).
    pub bytes: u64,
    /// How many snapshots were published (built or installed) since the group opened.
    pub published: u64,
}

/// A snapshot request not yet answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// Entries applied when it was sent.
    applied: u64,
    /// [`CurrentSnapshot::published`] when it was sent.
    published: u64,
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
    /// Bytes of state the logic retains, if it tracks them.
    pub retained_bytes: Option<u64>,
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
            snapshot_stagger_percent: 0,
            ..RaftTuning::default()
        })
    }

    fn progress(applied: u64, covered: u64, bytes: u64) -> SnapshotProgress {
        SnapshotProgress {
            applied_entries: applied,
            covered_entries: covered,
            bytes_since: bytes,
            retained_bytes: None,
        }
    }

    #[test]
    fn due_needs_both_the_entries_and_the_growth() {
        let (s, _rx) = schedule(100, 100);
        // No snapshot yet: entries alone decide.
        assert!(!s.is_due(&progress(99, 0, 1 << 30), 0));
        assert!(s.is_due(&progress(100, 0, 0), 0));
        // A 1 MB snapshot: 1 MB of commands applied since is needed as well.
        assert!(!s.is_due(&progress(10_000, 0, 999_999), 1_000_000));
        assert!(s.is_due(&progress(100, 0, 1_000_000), 1_000_000));
        assert!(!s.is_due(&progress(1_099, 1_000, 1_000_000), 1_000_000));
        // Half the size at 50 %; entries only at 0 %.
        let (half, _rx) = schedule(100, 50);
        assert!(half.is_due(&progress(100, 0, 500_000), 1_000_000));
        assert!(!half.is_due(&progress(100, 0, 499_999), 1_000_000));
        let (count_only, _rx) = schedule(100, 0);
        assert!(count_only.is_due(&progress(100, 0, 0), u64::MAX));
    }

    #[test]
    fn due_once_the_log_outgrows_the_retained_state() {
        let (s, _rx) = schedule(100_000, 100);
        let with_retained = |bytes: u64, retained: u64| SnapshotProgress {
            retained_bytes: Some(retained),
            ..progress(10, 0, bytes)
        };
        // Retention left 1 MiB of a 1 GiB snapshot: due at 16 MiB applied, few entries.
        let snapshot = 1 << 30;
        assert!(!s.is_due(
            &with_retained(MIN_BYTES_OVER_RETAINED - 1, 1 << 20),
            snapshot
        ));
        assert!(s.is_due(&with_retained(MIN_BYTES_OVER_RETAINED, 1 << 20), snapshot));
        // A large retained state: due once as much was applied.
        assert!(!s.is_due(&with_retained((1 << 30) - 1, 1 << 30), snapshot));
        assert!(s.is_due(&with_retained(1 << 30, 1 << 30), snapshot));
        // A logic that tracks nothing: only the growth rule.
        assert!(!s.is_due(&progress(10, 0, 1 << 40), snapshot));
    }

    fn asked(applied: u64, published: u64) -> Option<Asked> {
        Some(Asked { applied, published })
    }

    #[test]
    fn a_request_stands_until_a_snapshot_is_published_or_another_interval() {
        let (s, mut rx) = schedule(10, 100);
        let none = CurrentSnapshot::default();
        // Not due: nothing sent.
        assert_eq!(s.ask_if_due(progress(5, 0, 0), none, None), None);
        assert!(rx.try_recv().is_err());
        // Due: one request, remembered at 10 applied entries.
        assert_eq!(s.ask_if_due(progress(10, 0, 0), none, None), asked(10, 0));
        assert!(rx.try_recv().is_ok());
        // Still due a little later: not asked again while it may be building.
        assert_eq!(
            s.ask_if_due(progress(19, 0, 0), none, asked(10, 0)),
            asked(10, 0)
        );
        assert!(rx.try_recv().is_err());
        // Unanswered for another interval (a failed build): asked again.
        assert_eq!(
            s.ask_if_due(progress(20, 0, 0), none, asked(10, 0)),
            asked(20, 0)
        );
        assert!(rx.try_recv().is_ok());
        // A snapshot published since (the build openraft was busy with, which dropped the
        // request): asked again at once.
        let one = CurrentSnapshot {
            bytes: 0,
            published: 1,
        };
        assert_eq!(
            s.ask_if_due(progress(21, 0, 0), one, asked(20, 0)),
            asked(21, 1)
        );
        assert!(rx.try_recv().is_ok());
        // A queued request stands for a new one.
        assert_eq!(s.ask_if_due(progress(30, 0, 0), one, None), asked(30, 1));
        assert_eq!(
            s.ask_if_due(progress(40, 0, 0), one, asked(30, 1)),
            asked(40, 1)
        );
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        // The group is gone: nothing is remembered.
        drop(rx);
        assert_eq!(s.ask_if_due(progress(50, 0, 0), one, None), None);
    }

    /// Replicas draw their own scale: each waits at least the configured thresholds and at
    /// most half again, and they do not all come due at the same entry.
    #[test]
    fn a_staggered_replica_waits_up_to_half_again() {
        let tuning = RaftTuning {
            snapshot_every_entries: 100,
            snapshot_growth_percent: 100,
            snapshot_stagger_percent: 50,
            ..RaftTuning::default()
        };
        let mut due_at_120 = 0;
        for _ in 0..200 {
            let (s, _rx) = SnapshotSchedule::new(&tuning);
            assert!(!s.is_due(&progress(99, 0, 1 << 30), 0));
            assert!(s.is_due(&progress(150, 0, 0), 0));
            // The growth rule is scaled alike: a 1 MB snapshot needs 1–1.5 MB applied.
            assert!(!s.is_due(&progress(150, 0, 999_999), 1_000_000));
            assert!(s.is_due(&progress(150, 0, 1_500_000), 1_000_000));
            due_at_120 += usize::from(s.is_due(&progress(120, 0, 0), 0));
        }
        // 21 of the 51 scales are due at 120 entries; 200 draws all landing on one side
        // has a chance below 1e-40.
        assert!(
            (1..200).contains(&due_at_120),
            "{due_at_120} of 200 replicas due at 120 entries"
        );
    }

    #[test]
    fn entries_since_counts_from_the_snapshot() {
        assert_eq!(progress(5_000, 1_000, 0).entries_since(), 4_000);
        assert_eq!(progress(10, 20, 0).entries_since(), 0);
    }
}
