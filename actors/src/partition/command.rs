//! The commands of a partition's Raft group, as the leader builds them and every replica
//! decodes them: append a batch (plain, or guarded by ids and expectations: see
//! [`super::guard`]), trim the log start (retention), compact a window, queue delayed
//! records and release those due ([`super::delay_queue`]).
//!
//! A command that does not decode is skipped on every replica alike, so replicas stay
//! identical; the leader never builds one.

use bytes::{Bytes, BytesMut};
use psubd_raft::{Command, CommandResponse};

use super::compaction::CompactCommand;
use super::delay_queue::{DelayedRecords, ReleaseCommand};
use super::guard::{EntryGuard, RequestOutcome};

/// Tag of an append command: the rest of the command is a stored batch.
const TAG_APPEND: u8 = 1;
/// Tag of a trim command: the rest is the new log start (u64 LE).
const TAG_TRIM: u8 = 2;
/// Tag of a compact command of an earlier format (no window): skipped on every replica.
const TAG_COMPACT_UNWINDOWED: u8 = 3;
/// Tag of a compact command: the rest is a postcard [`CompactCommand`].
const TAG_COMPACT: u8 = 4;
/// Tag of a guarded append: `u32 LE` length of the guard, the postcard [`EntryGuard`],
/// then the stored batch (as in a plain append, so the batch is never re-encoded).
const TAG_GUARDED_APPEND: u8 = 5;
/// Tag of a delay command: the rest is a [`DelayedRecords`] command body.
const TAG_DELAY: u8 = 16;
/// Tag of a release command: the rest is a postcard [`ReleaseCommand`].
const TAG_RELEASE: u8 = 17;

/// Builds the Raft command that appends `batch` (a stored batch, header included).
pub fn append_command(batch: &[u8]) -> Command {
    let mut out = BytesMut::with_capacity(1 + batch.len());
    out.extend_from_slice(&[TAG_APPEND]);
    out.extend_from_slice(batch);
    Command(out.freeze())
}

/// Builds the Raft command that appends `batch` under `guard` (one request guard per
/// request joined in the batch).
pub(super) fn guarded_append_command(guard: &EntryGuard, batch: &[u8]) -> Command {
    // Encoding integers and fixed-size ids cannot fail; an empty guard would not match
    // the batch and the entry would be skipped on every replica.
    let encoded = postcard::to_stdvec(guard).unwrap_or_default();
    let mut out = BytesMut::with_capacity(5 + encoded.len() + batch.len());
    out.extend_from_slice(&[TAG_GUARDED_APPEND]);
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(batch);
    Command(out.freeze())
}

/// Builds the Raft command that moves the log start to `new_log_start` (retention). Apply
/// never moves it backwards nor past the high watermark, so a stale or repeated trim is
/// harmless.
pub fn trim_command(new_log_start: u64) -> Command {
    let mut out = BytesMut::with_capacity(9);
    out.extend_from_slice(&[TAG_TRIM]);
    out.extend_from_slice(&new_log_start.to_le_bytes());
    Command(out.freeze())
}

/// Builds the Raft command that compacts the next chunk of a compacted topic's log.
pub fn compact_command(compact: &CompactCommand) -> Command {
    let mut out = vec![TAG_COMPACT];
    // Encoding four integers cannot fail; an empty command would be skipped at apply.
    out.extend(postcard::to_stdvec(compact).unwrap_or_default());
    Command(Bytes::from(out))
}

/// Builds the Raft command that queues one request's delayed records.
pub fn delay_command(delayed: &DelayedRecords) -> Command {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[TAG_DELAY]);
    delayed.encode_command_body(&mut out);
    Command(out.freeze())
}

/// Builds the Raft command that releases the delayed records due by `release.up_to_ms`.
pub fn release_command(release: &ReleaseCommand) -> Command {
    let mut out = vec![TAG_RELEASE];
    // Encoding three integers cannot fail; an empty command would be skipped at apply.
    out.extend(postcard::to_stdvec(release).unwrap_or_default());
    Command(Bytes::from(out))
}

/// Decodes the response to an append: the base offset of the batch.
pub fn decode_append_response(response: &CommandResponse) -> Option<u64> {
    let raw: [u8; 8] = response.0.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

/// Decodes the response to a guarded append: one outcome per request.
pub(super) fn decode_guarded_response(response: &CommandResponse) -> Option<Vec<RequestOutcome>> {
    postcard::from_bytes(&response.0).ok()
}

/// The response to a guarded append.
pub(super) fn outcomes_response(
    outcomes: &[RequestOutcome],
) -> Result<CommandResponse, psubd_raft::StorageIoError> {
    let encoded = postcard::to_stdvec(outcomes).map_err(|e| psubd_raft::StorageIoError::Codec {
        what: "guarded append response",
        source: e,
    })?;
    Ok(CommandResponse(Bytes::from(encoded)))
}

/// The response to an append (the batch's base offset) or a trim (the log start after it).
pub(super) fn offset_response(offset: u64) -> CommandResponse {
    CommandResponse(Bytes::copy_from_slice(&offset.to_le_bytes()))
}

/// A decoded partition command.
pub(super) enum PartitionCommand {
    /// Append a stored batch (header included), validated by the leader.
    Append(Bytes),
    /// Append a stored batch under a guard (see [`super::guard`]).
    GuardedAppend(EntryGuard, Bytes),
    /// Move the log start to this offset.
    Trim(u64),
    /// Compact one window.
    Compact(CompactCommand),
    /// Queue delayed records.
    Delay(DelayedRecords),
    /// Release the delayed records due.
    Release(ReleaseCommand),
    /// Skip it, for the reason given (every replica skips it alike).
    Skip(&'static str),
}

impl PartitionCommand {
    /// Decodes a command of the partition group.
    pub(super) fn decode(command: &Command) -> Self {
        let Some((&tag, rest)) = command.0.split_first() else {
            return Self::Skip("empty partition command");
        };
        match tag {
            TAG_APPEND => Self::Append(command.0.slice(1..)),
            TAG_TRIM => match rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(raw) => Self::Trim(u64::from_le_bytes(raw)),
                None => Self::Skip("undecodable trim command"),
            },
            TAG_GUARDED_APPEND => Self::decode_guarded(command),
            TAG_COMPACT_UNWINDOWED => Self::Skip("compact command of an earlier format"),
            TAG_COMPACT => match postcard::from_bytes::<CompactCommand>(rest) {
                Ok(compact) => Self::Compact(compact),
                Err(_) => Self::Skip("undecodable compact command"),
            },
            TAG_DELAY => match DelayedRecords::decode_command_body(&command.0.slice(1..)) {
                Some(delayed) => Self::Delay(delayed),
                None => Self::Skip("undecodable delay command"),
            },
            TAG_RELEASE => match postcard::from_bytes::<ReleaseCommand>(rest) {
                Ok(release) => Self::Release(release),
                Err(_) => Self::Skip("undecodable release command"),
            },
            _ => Self::Skip("unknown partition command"),
        }
    }

    fn decode_guarded(command: &Command) -> Self {
        let raw = &command.0;
        let Some(len) = raw.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            return Self::Skip("truncated guarded append");
        };
        let end = 5usize.saturating_add(u32::from_le_bytes(len) as usize);
        let Some(encoded) = raw.get(5..end) else {
            return Self::Skip("truncated guarded append");
        };
        match postcard::from_bytes::<EntryGuard>(encoded) {
            Ok(guard) => Self::GuardedAppend(guard, raw.slice(end..)),
            Err(_) => Self::Skip("undecodable guarded append"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_skipped() {
        assert!(matches!(
            PartitionCommand::decode(&append_command(b"\x01\0\0\0x")),
            PartitionCommand::Append(stored) if stored.as_ref() == b"\x01\0\0\0x"
        ));
        assert!(matches!(
            PartitionCommand::decode(&trim_command(42)),
            PartitionCommand::Trim(42)
        ));
        let compact = CompactCommand {
            pass_end: 9,
            from: 0,
            to: 4,
            purge_before_ms: -1,
        };
        assert!(matches!(
            PartitionCommand::decode(&compact_command(&compact)),
            PartitionCommand::Compact(decoded) if decoded == compact
        ));
        let guard = EntryGuard {
            stamped_ms: 5,
            window_ms: 10,
            requests: vec![(1, Default::default())],
        };
        assert!(matches!(
            PartitionCommand::decode(&guarded_append_command(&guard, b"\x01\0\0\0x")),
            PartitionCommand::GuardedAppend(decoded, stored)
                if decoded == guard && stored.as_ref() == b"\x01\0\0\0x"
        ));
        let release = ReleaseCommand {
            up_to_ms: 1_700_000_000_000,
            max_records: 10,
            max_bytes: 4096,
        };
        assert!(matches!(
            PartitionCommand::decode(&release_command(&release)),
            PartitionCommand::Release(decoded) if decoded == release
        ));
        let delayed = DelayedRecords {
            due_ms: vec![5, -1],
            records: crate::record::EncodedRecords {
                count: 2,
                bytes: Bytes::from_static(b"xy"),
            },
        };
        assert!(matches!(
            PartitionCommand::decode(&delay_command(&delayed)),
            PartitionCommand::Delay(decoded)
                if decoded.due_ms == delayed.due_ms && decoded.records.bytes == delayed.records.bytes
        ));
        for garbage in [
            &b""[..],
            &[TAG_GUARDED_APPEND, 9, 0, 0, 0, 1][..],
            &[TAG_GUARDED_APPEND, 1][..],
            &[TAG_TRIM, 1, 2][..],
            &[TAG_COMPACT][..],
            &[TAG_DELAY, 9, 0, 0, 0, 1][..],
            &[TAG_RELEASE][..],
            &[9][..],
        ] {
            let command = Command(Bytes::copy_from_slice(garbage));
            assert!(matches!(
                PartitionCommand::decode(&command),
                PartitionCommand::Skip(_)
            ));
        }
    }
}
