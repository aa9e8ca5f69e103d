//! The postcard encoding of everything the storage layers persist (log entries, metadata,
//! state-machine values), with errors that say what was being encoded.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StorageIoError;

/// Postcard-encodes `value`.
pub(crate) fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StorageIoError> {
    // Sized first, so a record-batch entry (tens of KiB) is written once into a buffer of
    // its exact size, not copied through every doubling of a growing one.
    let size = postcard::experimental::serialized_size(value)
        .map_err(|e| StorageIoError::codec(what, e))?;
    postcard::to_extend(value, Vec::with_capacity(size)).map_err(|e| StorageIoError::codec(what, e))
}

/// Postcard-decodes `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StorageIoError> {
    postcard::from_bytes(bytes).map_err(|e| StorageIoError::codec(what, e))
}
