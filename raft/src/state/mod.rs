//! The state machines of every group:
//!
//! - [`logic`]: the seam a group's meaning plugs into ([`GroupLogic`](logic::GroupLogic)).
//! - [`machine`]: the generic per-group state machine openraft drives.
//! - [`snapshot`]: snapshot files (format, directory, build, stream, install, load).
//! - [`schedule`]: when a state machine asks for a snapshot (entries and bytes).
//! - [`write_behind`]: snapshot files reach the disk in steps, so log flushes never queue
//!   behind one large fsync.

pub mod logic;
pub mod machine;
pub mod schedule;
pub mod snapshot;
pub mod write_behind;
