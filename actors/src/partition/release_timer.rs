//! The leader's side of delayed publishes ([`super::delay_queue`]): proposing a request's
//! delayed records, and releasing them when they fall due.
//!
//! The release timer is driven by the actor: it is checked on every maintenance tick, when
//! a delay or a release commits on this leader, and when its wake-up fires. A check on the
//! leader proposes a release of everything due by now (the leader's clock) when something
//! is, else sets one wake-up for the earliest due time; so a record becomes readable about
//! one commit after its due time, and a new leader picks the queue up at its first tick.
//! One release is in flight at a time; a release that leaves due records behind (its
//! bounds) is followed by the next at once.

use std::sync::Arc;
use std::time::Duration;

use psubd_raft::GroupId;
use ractor::RpcReplyPort;
use tracing::{debug, info};

use crate::clock::now_ms;
use crate::error::PartitionError;
use crate::proposal;

use super::command::{delay_command, release_command};
use super::delay_queue::{
    DelayOutcome, DelayedRecords, ReleaseCommand, MAX_DELAYED_BYTES, MAX_DELAYED_RECORDS,
    RELEASE_MAX_BYTES, RELEASE_MAX_RECORDS,
};
use super::reader::PartitionReader;

/// How proposals name this kind of group in their reasons.
const GROUP: &str = "partition";

/// What the timer tells its actor, which answers by calling the matching method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerEvent {
    /// A delay proposed here finished: check (its records may be due earliest).
    DelayDone,
    /// The wake-up set for this due time fired: the timer forgets it, then checks.
    WakeUp(i64),
    /// The release in flight finished (committed or not): the timer checks again.
    ReleaseDone,
}

/// How the timer reaches its actor (a message send; it must not block).
pub(super) type Notify = Arc<dyn Fn(TimerEvent) + Send + Sync>;

/// The leader's write settings the timer proposes with.
#[derive(Clone, Copy, Debug)]
pub(super) struct TimerLimits {
    /// How long a proposal may take before its outcome is unknown.
    pub write_timeout: Duration,
}

impl Drop for ReleaseTimer {
    /// The actor stopped: its pending wake-up has no one to tell.
    fn drop(&mut self) {
        if let Some((_, task)) = self.armed.take() {
            task.abort();
        }
    }
}

/// See the module docs.
pub(super) struct ReleaseTimer {
    group: GroupId,
    limits: TimerLimits,
    notify: Notify,
    /// A release proposed and not yet answered.
    in_flight: bool,
    /// The due time the pending wake-up was set for, and its task, if one is pending.
    /// Invariant: at most one is; a wake-up for an earlier time replaces it.
    armed: Option<(i64, tokio::task::JoinHandle<()>)>,
}

impl ReleaseTimer {
    /// A timer for partition `group`, telling its actor through `notify`.
    pub(super) fn new(group: GroupId, limits: TimerLimits, notify: Notify) -> Self {
        Self {
            group,
            limits,
            notify,
            in_flight: false,
            armed: None,
        }
    }

    /// Proposes one request's delayed records (the caller checked leadership and space)
    /// and answers `reply` once the entry is applied: queued, or refused because the queue
    /// is full. Never awaits the commit: a task does, then notifies
    /// [`TimerEvent::DelayDone`].
    pub(super) async fn propose_delay(
        &self,
        target: proposal::Target<'_>,
        delayed: DelayedRecords,
        reply: RpcReplyPort<Result<(), PartitionError>>,
    ) {
        let proposed = proposal::enqueue(target, delay_command(&delayed)).await;
        let timeout = self.limits.write_timeout;
        let notify = self.notify.clone();
        tokio::spawn(async move {
            let outcome = match proposed {
                Ok(pending) => proposal::committed(pending, timeout, GROUP)
                    .await
                    .map_err(PartitionError::from)
                    .and_then(|response| match DelayOutcome::decode(&response) {
                        Some(DelayOutcome::Queued) => Ok(()),
                        Some(DelayOutcome::Full) => Err(PartitionError::DelayQueueFull {
                            max_records: MAX_DELAYED_RECORDS,
                            max_bytes: MAX_DELAYED_BYTES,
                        }),
                        Some(DelayOutcome::Malformed) => Err(PartitionError::Unavailable {
                            reason: "the delayed records did not decode; nothing was queued".into(),
                        }),
                        None => Err(PartitionError::OutcomeUnknown {
                            reason: "delay response did not decode".into(),
                        }),
                    }),
                Err(unknown) => Err(unknown.into()),
            };
            let _ = reply.send(outcome);
            notify(TimerEvent::DelayDone);
        });
    }

    /// On the leader (the caller checks: a follower's leader releases): proposes a
    /// release when records are due, else sets a wake-up for the earliest due time.
    pub(super) async fn check(&mut self, target: proposal::Target<'_>, reader: &PartitionReader) {
        let Some(earliest) = reader.delays().earliest_due_ms else {
            return;
        };
        let now = now_ms();
        if earliest > now {
            self.wake_at(earliest, now);
            return;
        }
        if self.in_flight {
            return;
        }
        let release = ReleaseCommand {
            up_to_ms: now,
            max_records: RELEASE_MAX_RECORDS,
            max_bytes: RELEASE_MAX_BYTES,
        };
        let group = self.group;
        debug!(
            group,
            up_to_ms = now,
            "proposing release of delayed records"
        );
        let Ok(pending) = proposal::enqueue(target, release_command(&release)).await else {
            return;
        };
        self.in_flight = true;
        let timeout = self.limits.write_timeout;
        let notify = self.notify.clone();
        tokio::spawn(async move {
            // Not committed (leadership moved, timeout): the next check, here or on the new
            // leader, releases again; a release that did commit left nothing to repeat.
            if proposal::committed(pending, timeout, GROUP).await.is_err() {
                info!(group, "release of delayed records not confirmed");
            }
            notify(TimerEvent::ReleaseDone);
        });
    }

    /// Sets a wake-up at `due_ms` unless one is set for that time or earlier.
    fn wake_at(&mut self, due_ms: i64, now_ms: i64) {
        if self
            .armed
            .as_ref()
            .is_some_and(|(armed, _)| *armed <= due_ms)
        {
            return;
        }
        let wait = Duration::from_millis(due_ms.saturating_sub(now_ms) as u64);
        let notify = self.notify.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            notify(TimerEvent::WakeUp(due_ms));
        });
        if let Some((_, replaced)) = self.armed.replace((due_ms, task)) {
            replaced.abort();
        }
    }

    /// The wake-up set for `due_ms` fired: the next check may set another. (One that was
    /// replaced may still report, having fired just before; it changes nothing.)
    pub(super) fn fired(&mut self, due_ms: i64) {
        if self
            .armed
            .as_ref()
            .is_some_and(|(armed, _)| *armed == due_ms)
        {
            self.armed = None;
        }
    }

    /// The release in flight finished (committed or not).
    pub(super) fn done(&mut self) {
        self.in_flight = false;
    }
}
