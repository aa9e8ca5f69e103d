//! psubd-jepsen: a chaos harness that runs real `psubd node` processes, injects real
//! faults, records every client operation in a history and checks the history against
//! the failure contract (docs/architecture.md § Failure contract).
//!
//! # Layout
//!
//! - `network`: network namespaces, the bridge and veths, nftables rules.
//! - `cluster`: the node processes (start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT), run
//!   through `psubd-launch`, and who is a member (a spare joining with `--join`, a
//!   decommissioned node retired).
//! - `nemesis`: the seeded fault schedule and its injection and healing.
//! - `client`: one HTTP request per call to the psubd API, failures described exactly.
//! - `workload`: writers, readers, consumer-group members, the committed-offset reader.
//! - `history`: the `history.jsonl` event format and the fail/info classification.
//! - `final_phase`: heal, restart, wait for leaders, read everything, drain the group.
//! - `checker`: the anomaly classes and `results.json`.
//! - `availability`: ok shares per window, longest unavailability, recovery after heals.
//! - `run`: a whole `test` run, from setup to teardown.
//! - `wait`: bounded waiting for a condition.
//! - `error`: the crate's error type.

pub mod availability;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod error;
pub mod faultfs;
pub mod final_phase;
pub mod history;
pub mod nemesis;
pub mod network;
pub mod proxy;
pub mod run;
pub mod wait;
pub mod workload;

pub use error::JepsenError;
