//! Waiting for a condition instead of sleeping.
//!
//! A cluster converges at its own pace (elections, replication, restarts); a test that
//! sleeps a fixed time is either slow or flaky. `eventually` retries an attempt until it
//! succeeds or a deadline passes, and then fails with what was awaited and the last
//! reason it was not yet true.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// First pause between attempts; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Longest pause between attempts, short enough that a measured wait overshoots the
/// real event by at most this much.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Retries `attempt` until it returns `Ok`, for at most `timeout`; returns its value.
///
/// An attempt that is still running at the deadline is abandoned (so a request to a
/// dead node cannot stretch the wait).
///
/// # Panics
///
/// When the deadline passes: the message names `what` and the last error.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::from("no attempt finished");
    let mut attempts = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            panic!(
                "timed out after {timeout:?} ({attempts} attempts) waiting for {what}; last: {last}"
            );
        }
        attempts += 1;
        match tokio::time::timeout(remaining, attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = String::from("the last attempt was still running at the deadline"),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_success() {
        let n = AtomicU32::new(0);
        let got = eventually(Duration::from_secs(5), "third attempt", || {
            let n = &n;
            async move {
                let k = n.fetch_add(1, Ordering::SeqCst) + 1;
                if k >= 3 {
                    Ok(k)
                } else {
                    Err(format!("attempt {k}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible; last: still false")]
    async fn panics_with_what_and_last_error() {
        eventually(Duration::from_millis(100), "the impossible", || async {
            Err::<(), _>("still false")
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "still running at the deadline")]
    async fn abandons_a_hanging_attempt() {
        eventually(Duration::from_millis(100), "a hang", || async {
            std::future::pending::<Result<(), String>>().await
        })
        .await;
    }
}
