//! Bounded waiting for a condition the harness can only observe by asking (a node's
//! `/readyz`, a partition's leader), in the spirit of the tests' `eventually`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::JepsenError;

/// How often a condition is re-checked. Short enough to measure recovery in tenths of a
/// second, long enough not to load two cores.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Some`, at most for `timeout`.
///
/// # Errors
/// `NotReady { what }` when the time runs out.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<T, JepsenError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(JepsenError::NotReady {
                what: what.to_string(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
