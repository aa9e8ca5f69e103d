//! Blocking file work (fsync, whole-file reads and writes) run off the async threads.

use crate::error::StorageIoError;

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T, F>(op: &'static str, f: F) -> Result<T, StorageIoError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageIoError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIoError::TaskFailed {
            op,
            reason: e.to_string(),
        })?
}
