//! The async runtime every group's openraft tasks run on: tokio, except that a quiet
//! group's tick task is held still.
//!
//! openraft 0.9 gives each group a tick task that wakes every 1.5 heartbeat intervals for
//! the life of the group, ticks switched off or not (`Raft::runtime_config().tick(false)`
//! only makes it skip sending the tick). With thousands of idle groups per node those
//! wake-ups were most of an idle node's CPU. [`GroupRuntime`] is `TokioRuntime` in all but
//! `spawn`: a task it recognises as openraft's tick loop, spawned while a group's
//! [`TickGate`] is in scope ([`with_tick_gate`]), is polled only while that gate is open.
//! `crate::quiet` closes the gate when a group goes quiet and opens it when the group
//! wakes or closes.
//!
//! Holding the task changes nothing openraft sees: a closed gate only ever stands for
//! ticks switched off, which the task would have skipped. An open gate lets the task run
//! on from where it stopped (its sleep has long passed, so it ticks at once).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};

/// Part of the type name of openraft's tick loop future (`openraft::core::tick::Tick::tick_loop`).
/// openraft is pinned to one version in the workspace; `raft/tests/cluster.rs` checks
/// that quiet groups' tick tasks are still recognised (`RaftNode::held_tick_tasks`).
const TICK_LOOP_TYPE: &str = "openraft::core::tick::Tick<";

tokio::task_local! {
    /// The gate of the group whose `Raft::new` is running.
    static TICK_GATE: Arc<TickGate>;
}

/// Whether one group's tick task may run. Open when made.
#[derive(Debug, Default)]
pub(crate) struct TickGate {
    closed: AtomicBool,
    /// The tick task, when the gate held it.
    waker: AtomicWaker,
    /// Set once the group's tick task was spawned behind this gate.
    attached: AtomicBool,
}

impl TickGate {
    /// Holds the tick task from its next wake-up on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Lets the tick task run again.
    pub(crate) fn open(&self) {
        self.closed.store(false, Ordering::Release);
        self.waker.wake();
    }

    /// The gate is closed (the group is quiet).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The gate is closed on a tick task it holds.
    pub(crate) fn holds_task(&self) -> bool {
        self.is_closed() && self.attached.load(Ordering::Acquire)
    }
}

/// Runs `new_raft` (a group's `Raft::new`) with `gate` governing the tick task it spawns.
pub(crate) async fn with_tick_gate<F: Future>(gate: Arc<TickGate>, new_raft: F) -> F::Output {
    TICK_GATE.scope(gate, new_raft).await
}

/// A task polled only while its gate is open.
struct Gated<F> {
    gate: Arc<TickGate>,
    task: Pin<Box<F>>,
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.gate.is_closed() {
            self.gate.waker.register(cx.waker());
            // Opened between the check and the registration: its wake may have been missed.
            if self.gate.is_closed() {
                return Poll::Pending;
            }
        }
        self.task.as_mut().poll(cx)
    }
}

/// tokio, with quiet groups' tick tasks held (see the module doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupRuntime;

type Tokio = TokioRuntime;

impl AsyncRuntime for GroupRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let gate = std::any::type_name::<T>()
            .contains(TICK_LOOP_TYPE)
            .then(|| TICK_GATE.try_with(Arc::clone).ok())
            .flatten();
        match gate {
            Some(gate) => {
                gate.attached.store(true, Ordering::Release);
                tokio::spawn(Gated {
                    gate,
                    task: Box::pin(future),
                })
            }
            None => Tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that counts its polls and never ends.
    async fn count_polls(polls: Arc<std::sync::atomic::AtomicUsize>) {
        loop {
            polls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_holds_its_task_and_opening_it_lets_the_task_run_on() {
        let gate = Arc::new(TickGate::default());
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(Gated {
            gate: gate.clone(),
            task: Box::pin(count_polls(polls.clone())),
        });
        tokio::time::sleep(Duration::from_millis(105)).await;
        let running = polls.load(Ordering::Relaxed);
        assert!(running >= 10, "{running} polls in 105 ms");

        gate.close();
        // One wake-up may still reach the task; after it, nothing does.
        tokio::time::sleep(Duration::from_millis(25)).await;
        let held = polls.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            polls.load(Ordering::Relaxed),
            held,
            "polled behind a closed gate"
        );

        gate.open();
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert!(
            polls.load(Ordering::Relaxed) >= held + 5,
            "not running after open"
        );
        task.abort();
    }
}
