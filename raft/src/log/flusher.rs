//! The node-wide flusher: group commit of every Raft group's durability requests.
//!
//! Each group's `append` stages its entries (readable at once) and hands its `LogFlushed`
//! callback here; `save_vote` and [`NodeStorage::flush`](crate::NodeStorage::flush) wait on a
//! oneshot. The flusher task takes everything pending, runs ONE flush that covers all of it,
//! then answers every request with that flush's result. While a flush runs, new requests
//! queue up and share the next one, so with many groups busy a single fsync acknowledges many
//! appends (docs/architecture.md § Storage and durability).
//!
//! What a flush syncs depends on what waits for it:
//! - Log appends need only their segment files: an fdatasync of every Raft log segment file
//!   written since the last flush (see [`LogSyncs`]).
//! - A waiter (a vote, a purge about to delete files, shutdown) needs the engine too: the
//!   engine's flush runs alongside the segment syncs.
//!
//! The engine holds the votes, the log metadata and the state machines. State-machine writes
//! need no fsync of their own: the log keeps every entry until a durable snapshot file
//! covers it, openraft re-applies from the log after a crash, and a state machine behind its
//! newest snapshot file is reloaded from it at open. So appends never wait for the engine,
//! whose flush writes every applied batch and costs several times a segment sync; a
//! background task flushes it every [`ENGINE_WRITE_BACK_EVERY`] so its writes reach the
//! disk steadily instead of in one burst.
//!
//! A failed flush is never retried: after a failed fsync the kernel may have dropped the
//! dirty pages and would report the next sync as a success. The failure is recorded in the
//! node's [`StorageHealth`] (the node then fail-stops), and every later request is answered
//! with an error without touching the disk.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::LogFlushed;
use tokio::sync::{mpsc, oneshot};

use crate::blocking::blocking;
use crate::engine::Engine;
use crate::error::StorageIoError;
use crate::health::StorageHealth;
use crate::log::sync::LogSyncs;
use crate::types::TypeConfig;

/// Requests that may wait for the flusher. Bounded so that a disk that falls behind slows the
/// appenders down (they wait to enqueue) instead of growing memory without limit.
const FLUSH_QUEUE_CAPACITY: usize = 4_096;

/// At most this many requests are answered by one flush; the rest wait for the next. Bounds
/// the flusher's buffer; in practice the queue capacity is the tighter limit.
const MAX_REQUESTS_PER_FLUSH: usize = FLUSH_QUEUE_CAPACITY;

/// A flush taking this long is logged: openraft waits for its log flush before it replicates
/// or answers, so a slow flush shows up as stalled writes on every group of the node.
const SLOW_FLUSH: Duration = Duration::from_millis(100);

/// A request for durability of everything written before it was sent.
enum FlushRequest {
    /// A log append: openraft learns the entries are durable through the callback.
    Log(LogFlushed<TypeConfig>),
    /// A caller awaiting the flush (vote, purge).
    Wait(oneshot::Sender<Result<(), StorageIoError>>),
    /// Shutdown: a last flush as for a waiter, then the flusher and its background write-back
    /// stop. Answered only once both have let go of the engine, so the caller can release the
    /// database (and a node restarted in the same process can open it again).
    Close(oneshot::Sender<Result<(), StorageIoError>>),
}

/// A handle on the node's flusher task. Cheap to clone; the task ends when every handle is
/// dropped (after answering what was queued).
#[derive(Clone)]
pub(crate) struct Flusher {
    tx: mpsc::Sender<FlushRequest>,
    flushes: Arc<AtomicU64>,
}

impl Flusher {
    /// Starts the flusher task on `runtime`, flushing `engine` and the log files recorded in
    /// `log_syncs`; a failed flush is recorded in `health`.
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        engine: Arc<dyn Engine>,
        log_syncs: LogSyncs,
        health: StorageHealth,
    ) -> Flusher {
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE_CAPACITY);
        let flushes = Arc::new(AtomicU64::new(0));
        let flushes_counter = flushes.clone();
        let (stopped_tx, stopped) = oneshot::channel();
        let write_back = runtime.spawn(write_back_engine(engine.clone(), stopped, health.clone()));
        runtime.spawn(async move {
            // `run` owns its engine handle and drops it when it returns.
            let closers = run(engine, log_syncs, rx, flushes_counter, health).await;
            // Ends the background write-back with the flusher, so the engine is released. It
            // finishes the flush it is in first: a flush abandoned half way would leave the
            // engine's own worker thread holding the database.
            drop(stopped_tx);
            if let Err(join) = write_back.await {
                tracing::warn!(cause = %join, "background engine write-back failed");
            }
            for (closer, reply) in closers {
                let _ = closer.send(reply);
            }
        });
        Flusher { tx, flushes }
    }

    /// Queues `callback`, to be fired after a flush covering everything written before this
    /// call. Waits only for queue space, not for the flush.
    ///
    /// # Errors
    /// [`StorageIoError::FlusherStopped`] if the flusher task is gone.
    pub(crate) async fn submit_log(
        &self,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageIoError> {
        self.tx
            .send(FlushRequest::Log(callback))
            .await
            .map_err(|_| StorageIoError::FlusherStopped)
    }

    /// Returns after a flush covering everything written before this call.
    ///
    /// # Errors
    /// The flush's error, or [`StorageIoError::FlusherStopped`] if the task is gone.
    pub(crate) async fn flush(&self) -> Result<(), StorageIoError> {
        self.wait_for(FlushRequest::Wait).await
    }

    /// A last flush of everything written before this call, then the flusher stops; returns
    /// once its tasks have dropped their engine handles. Requests sent afterwards fail with
    /// [`StorageIoError::FlusherStopped`].
    ///
    /// # Errors
    /// The last flush's error, or [`StorageIoError::FlusherStopped`] if the flusher was
    /// already stopped.
    pub(crate) async fn close(&self) -> Result<(), StorageIoError> {
        self.wait_for(FlushRequest::Close).await
    }

    /// Sends the request `make` builds around a reply channel, and waits for the reply.
    async fn wait_for(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), StorageIoError>>) -> FlushRequest,
    ) -> Result<(), StorageIoError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| StorageIoError::FlusherStopped)?;
        rx.await.map_err(|_| StorageIoError::FlusherStopped)?
    }

    /// Flushes run since the task started.
    pub(crate) fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

/// A close request's reply channel with the reply it gets once the flusher's tasks ended.
type Closer = (
    oneshot::Sender<Result<(), StorageIoError>>,
    Result<(), StorageIoError>,
);

/// The flusher task: take all pending requests, flush once, answer them all. Returns when
/// every handle is dropped, or after the flush that covers a close request, with the close
/// requests still to answer.
async fn run(
    engine: Arc<dyn Engine>,
    log_syncs: LogSyncs,
    mut rx: mpsc::Receiver<FlushRequest>,
    flushes: Arc<AtomicU64>,
    health: StorageHealth,
) -> Vec<Closer> {
    let mut pending: Vec<FlushRequest> = Vec::new();
    let mut closers: Vec<Closer> = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while pending.len() < MAX_REQUESTS_PER_FLUSH {
            match rx.try_recv() {
                Ok(request) => pending.push(request),
                Err(_) => break,
            }
        }
        // Every request in `pending` was sent after its writes were applied to the engine or
        // written to a segment file (and that file recorded in `log_syncs`), and the flush
        // starts after it was received: the flush covers all of them.
        let with_engine = pending
            .iter()
            .any(|request| matches!(request, FlushRequest::Wait(_) | FlushRequest::Close(_)));
        let started = Instant::now();
        let result = match health.failure() {
            // Never retried (see the module doc): nothing more is acknowledged.
            Some(failure) => Err(StorageIoError::Failed {
                cause: failure.cause,
            }),
            None => flush_all(engine.as_ref(), &log_syncs, with_engine).await,
        };
        flushes.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        match &result {
            // Every group's Raft waits for its flush: a slow one stalls them all.
            Ok(()) if elapsed >= SLOW_FLUSH => tracing::warn!(
                requests = pending.len(),
                with_engine,
                elapsed_ms = elapsed.as_millis() as u64,
                "slow storage flush"
            ),
            Ok(()) => tracing::trace!(requests = pending.len(), "storage flushed"),
            Err(StorageIoError::Failed { .. }) => {}
            Err(err) => health.fail(err),
        }
        for request in pending.drain(..) {
            match request {
                FlushRequest::Close(tx) => closers.push((tx, waiter_reply(&result))),
                request => answer(request, &result),
            }
        }
        if !closers.is_empty() {
            // Whatever was queued behind the close is refused, not silently dropped.
            rx.close();
            while let Ok(request) = rx.try_recv() {
                match request {
                    FlushRequest::Log(callback) => callback.log_io_completed(Err(
                        io::Error::other(StorageIoError::FlusherStopped.to_string()),
                    )),
                    FlushRequest::Wait(tx) => {
                        let _ = tx.send(Err(StorageIoError::FlusherStopped));
                    }
                    FlushRequest::Close(tx) => {
                        closers.push((tx, Err(StorageIoError::FlusherStopped)))
                    }
                }
            }
            break;
        }
    }
    tracing::debug!("storage flusher stopped");
    closers
}

/// How often the engine is flushed in the background. Appends never wait for the engine,
/// but what it writes must still reach the disk steadily: sled leaves past its inline-page
/// limit go to blob files that nothing else syncs, and left to the kernel they piled up to
/// 2 GB of dirty pages in 18 s of 1 KiB-record publishing, then stalled every log flush
/// for up to 860 ms while the kernel wrote them back.
const ENGINE_WRITE_BACK_EVERY: Duration = Duration::from_millis(100);

/// Flushes the engine every [`ENGINE_WRITE_BACK_EVERY`] until the flusher task ends
/// (`stopped` resolves when it does). Runs beside the flusher task, so log appends do not
/// wait for it.
async fn write_back_engine(
    engine: Arc<dyn Engine>,
    mut stopped: oneshot::Receiver<()>,
    health: StorageHealth,
) {
    let mut ticks = tokio::time::interval(ENGINE_WRITE_BACK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        if health.failure().is_some() {
            return;
        }
        if let Err(err) = engine.flush().await {
            // Not retried, as any failed sync (see the module doc).
            health.fail(&err);
            return;
        }
    }
}

/// Threads that sync log segment files at once in one flush. With many groups appending, one
/// flush has one dirty segment per group: syncing them in parallel lets the file system share
/// journal commits between them. Bounded, as the blocking pool is shared with snapshot work.
const MAX_PARALLEL_SYNCS: usize = 8;

/// One flush of the recorded log files and, `with_engine`, of the engine, concurrently (the
/// syncs wait on the disk independently).
async fn flush_all(
    engine: &dyn Engine,
    log_syncs: &LogSyncs,
    with_engine: bool,
) -> Result<(), StorageIoError> {
    let files = log_syncs.take();
    let sync_files = async {
        if files.is_empty() {
            return Ok(());
        }
        let shares = files
            .split(MAX_PARALLEL_SYNCS)
            .into_iter()
            .map(|share| blocking("fsync log segments", move || share.sync()));
        futures::future::join_all(shares)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, StorageIoError>>()
            .map(|_| ())
    };
    let flush_engine = async {
        if with_engine {
            engine.flush().await
        } else {
            Ok(())
        }
    };
    let (engine_result, files_result) = futures::join!(flush_engine, sync_files);
    engine_result.and(files_result)
}

/// Answers one request with the outcome of the flush that covered it.
fn answer(request: FlushRequest, result: &Result<(), StorageIoError>) {
    match request {
        FlushRequest::Log(callback) => callback.log_io_completed(match result {
            Ok(()) => Ok(()),
            Err(err) => Err(io::Error::other(err.to_string())),
        }),
        // The waiter may have given up (its future dropped); nothing is lost by that.
        FlushRequest::Wait(tx) | FlushRequest::Close(tx) => {
            let _ = tx.send(waiter_reply(result));
        }
    }
}

/// What a waiter is told about the flush that covered it (the error is re-made: one flush
/// answers many waiters).
fn waiter_reply(result: &Result<(), StorageIoError>) -> Result<(), StorageIoError> {
    match result {
        Ok(()) => Ok(()),
        Err(err) => Err(StorageIoError::Engine {
            op: "flush",
            source: io::Error::other(err.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Tree;

    /// An engine that only counts its flushes, which fail when `fails` is set.
    #[derive(Default)]
    struct CountingEngine {
        flushes: AtomicU64,
        fails: bool,
    }

    impl Engine for CountingEngine {
        fn open_tree(&self, _name: &str) -> Result<Tree, StorageIoError> {
            Err(StorageIoError::FlusherStopped)
        }
        fn tree_exists(&self, _name: &str) -> bool {
            false
        }
        fn tree_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn drop_tree(&self, _name: &str) -> Result<(), StorageIoError> {
            Ok(())
        }
        fn flush(&self) -> futures::future::BoxFuture<'static, Result<(), StorageIoError>> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            let fails = self.fails;
            Box::pin(async move {
                if fails {
                    return Err(StorageIoError::file(
                        "fsync the segment log",
                        "/data/db/db",
                        io::Error::from_raw_os_error(libc::EIO),
                    ));
                }
                Ok(())
            })
        }
        fn size_on_disk(&self) -> Result<u64, StorageIoError> {
            Ok(0)
        }
    }

    /// After a failed sync nothing is retried and nothing more is acknowledged: the health
    /// records the failure (naming the file) and every later flush fails without touching
    /// the engine.
    #[tokio::test(start_paused = true)]
    async fn a_failed_flush_is_recorded_and_never_retried() {
        let engine = Arc::new(CountingEngine {
            fails: true,
            ..CountingEngine::default()
        });
        let health = StorageHealth::default();
        let flusher = Flusher::spawn(
            &tokio::runtime::Handle::current(),
            engine.clone(),
            LogSyncs::default(),
            health.clone(),
        );
        assert!(flusher.flush().await.is_err());
        let failure = health.failure().expect("the failure is recorded");
        assert!(failure.cause.contains("/data/db/db"), "{failure:?}");
        let attempts = engine.flushes.load(Ordering::SeqCst);
        tokio::time::sleep(ENGINE_WRITE_BACK_EVERY * 5).await;
        for _ in 0..3 {
            assert!(matches!(
                flusher.flush().await,
                Err(StorageIoError::Engine { .. })
            ));
        }
        assert_eq!(
            engine.flushes.load(Ordering::SeqCst),
            attempts,
            "no flush after the failure, by a waiter or in the background"
        );
    }

    /// A flusher over a [`CountingEngine`] on the test's runtime.
    fn start() -> (Arc<CountingEngine>, Flusher) {
        let engine = Arc::new(CountingEngine::default());
        let flusher = Flusher::spawn(
            &tokio::runtime::Handle::current(),
            engine.clone(),
            LogSyncs::default(),
            StorageHealth::default(),
        );
        (engine, flusher)
    }

    // Paused time: the background write-back ticks once at the start and never again during
    // the test, so each waiter must account for one engine flush of its own.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_answered_only_after_the_engine_flushed() {
        let (engine, flusher) = start();
        tokio::task::yield_now().await;
        let background = engine.flushes.load(Ordering::SeqCst);
        assert!(
            background <= 1,
            "one background tick at most before time moves"
        );
        for round in 1..=3 {
            flusher.flush().await.unwrap();
            // Votes and purge marks live in the engine: a waiter's flush must include it.
            assert_eq!(engine.flushes.load(Ordering::SeqCst), background + round);
        }
        assert_eq!(flusher.flush_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_engine_is_written_back_in_the_background_until_the_flusher_is_dropped() {
        let (engine, flusher) = start();
        tokio::time::sleep(ENGINE_WRITE_BACK_EVERY * 5).await;
        let while_running = engine.flushes.load(Ordering::SeqCst);
        assert!(
            while_running >= 5,
            "{while_running} background flushes in 5 periods"
        );
        drop(flusher);
        tokio::task::yield_now().await;
        let after_drop = engine.flushes.load(Ordering::SeqCst);
        tokio::time::sleep(ENGINE_WRITE_BACK_EVERY * 5).await;
        assert_eq!(engine.flushes.load(Ordering::SeqCst), after_drop, "stopped");
        // Both tasks let go of the engine: a node restarted in the same process can open it.
        assert_eq!(Arc::strong_count(&engine), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn close_flushes_the_engine_and_returns_only_after_both_tasks_let_go_of_it() {
        let (engine, flusher) = start();
        let before = engine.flushes.load(Ordering::SeqCst);
        let still_held = flusher.clone();
        flusher.close().await.unwrap();
        assert!(
            engine.flushes.load(Ordering::SeqCst) > before,
            "a last flush"
        );
        // No yield, no sleep: the tasks were gone when close returned, though a handle lives.
        assert_eq!(Arc::strong_count(&engine), 1);
        assert!(matches!(
            still_held.flush().await,
            Err(StorageIoError::FlusherStopped)
        ));
        assert!(matches!(
            still_held.close().await,
            Err(StorageIoError::FlusherStopped)
        ));
    }
}
