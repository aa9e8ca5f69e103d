//! The clock of one run: warm-up, the measured window, and the `--rate` pacer.
//!
//! Tasks never share a histogram; they only read this clock to decide whether a sample
//! belongs to the window, and bump one atomic counter per request for `--max-records`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock µs since the Unix epoch: the send time carried in values, comparable
/// between producer and consumer because both run in this process.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Timing of one run, shared by its tasks.
///
/// Invariant: `started <= window_start <= window end`; the window ends at the deadline
/// or earlier, when `--max-records` acknowledged records have been counted.
#[derive(Debug)]
pub struct RunClock {
    /// Which run this is (stamped into values).
    pub run: u8,
    started_wall_us: u64,
    window_start: Instant,
    window_start_wall_us: u64,
    deadline: Instant,
    /// Set once the window is over (deadline passed or `--max-records` reached).
    stopped: AtomicBool,
    /// Nanoseconds from `window_start` to the early end, `u64::MAX` while none.
    early_end_ns: AtomicU64,
    acked_in_window: AtomicU64,
    max_records: Option<u64>,
}

impl RunClock {
    /// A clock starting now: `warmup` of unmeasured load, then `duration` measured.
    pub fn start(run: u8, warmup: Duration, duration: Duration, max_records: Option<u64>) -> Self {
        let started = Instant::now();
        let wall = now_us();
        let window_start = started + warmup;
        RunClock {
            run,
            started_wall_us: wall,
            window_start,
            window_start_wall_us: wall + u64::try_from(warmup.as_micros()).unwrap_or(0),
            deadline: window_start + duration,
            stopped: AtomicBool::new(false),
            early_end_ns: AtomicU64::new(u64::MAX),
            acked_in_window: AtomicU64::new(0),
            max_records,
        }
    }

    /// When the measured window starts.
    pub fn window_start(&self) -> Instant {
        self.window_start
    }

    /// When the measured window ends (or is planned to end).
    pub fn window_end(&self) -> Instant {
        match self.early_end_ns.load(Ordering::Acquire) {
            u64::MAX => self.deadline,
            ns => self.window_start + Duration::from_nanos(ns),
        }
    }

    /// Length of the measured window, once it is over.
    pub fn window(&self) -> Duration {
        self.window_end()
            .saturating_duration_since(self.window_start)
    }

    /// Whether an event at `t` belongs to the measured window.
    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end()
    }

    /// Whether a value sent at wall-clock `sent_at_us` was sent inside the window: the
    /// end-to-end latency counts exactly those records, however late they are read.
    pub fn sent_in_window(&self, sent_at_us: u64) -> bool {
        let len = u64::try_from(self.window().as_micros()).unwrap_or(u64::MAX);
        sent_at_us >= self.window_start_wall_us
            && sent_at_us < self.window_start_wall_us.saturating_add(len)
    }

    /// Whether a value sent at wall-clock `sent_at_us` was sent during this run (warm-up
    /// included): older records on a reused topic are neither timed nor checked for
    /// duplicates, whatever their run field says.
    pub fn sent_during_run(&self, sent_at_us: u64) -> bool {
        sent_at_us >= self.started_wall_us
    }

    /// Whether producers should stop sending.
    pub fn is_over(&self, now: Instant) -> bool {
        self.stopped.load(Ordering::Relaxed) || now >= self.deadline
    }

    /// Ends the window now (Ctrl-C path and `--max-records`).
    pub fn stop_now(&self) {
        let ns = Instant::now()
            .saturating_duration_since(self.window_start)
            .as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX - 1);
        // Keep the first early end; the deadline bounds it anyway.
        let _ =
            self.early_end_ns
                .compare_exchange(u64::MAX, ns, Ordering::AcqRel, Ordering::Acquire);
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Counts records acknowledged inside the window; ends the window at `--max-records`.
    pub fn count_acked(&self, records: u64) {
        let total = self.acked_in_window.fetch_add(records, Ordering::Relaxed) + records;
        if let Some(max) = self.max_records {
            if total >= max {
                self.stop_now();
            }
        }
    }
}

/// An open-loop schedule shared by all producer loops: request k may not start before
/// the time at which the records before it fit under `--rate`. A loop that falls behind
/// sends at once (so the offered rate holds as long as the cluster keeps up).
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    ns_per_record: u64,
    /// Nanoseconds after `start` at which the next reservation begins.
    next_ns: AtomicU64,
}

impl Pacer {
    /// A pacer for `rate` records/s starting now.
    pub fn new(rate: u64) -> Self {
        Pacer {
            start: Instant::now(),
            ns_per_record: 1_000_000_000 / rate.max(1),
            next_ns: AtomicU64::new(0),
        }
    }

    /// Waits for the slot of a request carrying `records` records.
    pub async fn wait(&self, records: u64) {
        let slot = self
            .next_ns
            .fetch_add(records * self.ns_per_record, Ordering::Relaxed);
        let at = self.start + Duration::from_nanos(slot);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_records_ends_the_window_early() {
        let clock = RunClock::start(0, Duration::ZERO, Duration::from_secs(3600), Some(10));
        assert!(!clock.is_over(Instant::now()));
        clock.count_acked(6);
        assert!(!clock.is_over(Instant::now()));
        clock.count_acked(6);
        assert!(clock.is_over(Instant::now()));
        assert!(clock.window() < Duration::from_secs(60));
        assert!(!clock.in_window(Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn warmup_is_outside_the_window() {
        let clock = RunClock::start(0, Duration::from_secs(10), Duration::from_secs(10), None);
        assert!(!clock.in_window(Instant::now()));
        assert!(clock.in_window(clock.window_start()));
        assert!(!clock.sent_in_window(now_us()));
    }

    #[tokio::test]
    async fn pacer_spaces_requests_by_rate() {
        let pacer = Pacer::new(1000);
        let t0 = Instant::now();
        for _ in 0..5 {
            pacer.wait(10).await; // 10 records at 1000/s: 10 ms apart
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(40), "took {took:?}");
    }
}
