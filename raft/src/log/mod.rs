//! The Raft log of every group, from the files up:
//!
//! - [`segments`]: a group's append-only log segment files (write once, purge by deleting).
//! - `tail`: a group's newest entries kept decoded, for the reads that follow an append.
//! - `sync`: the node-wide set of log files and directories the flusher syncs next.
//! - `flusher`: the node-wide group-commit task that turns many pending flushes into one
//!   fsync.
//! - [`store`]: the per-group Raft log openraft drives: entries in segment files, vote and
//!   marks in the engine.

pub(crate) mod flusher;
pub mod segments;
pub mod store;
pub(crate) mod sync;
pub(crate) mod tail;
