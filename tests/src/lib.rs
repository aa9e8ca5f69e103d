//! End-to-end test support for psubd: real node processes, spoken to over HTTP.
//!
//! # Layout
//!
//! - [`cluster`]: the [`Cluster`] fixture (spawn, readiness, kill, stop, restart, wipe,
//!   leader lookup; logs to files, kept when a test fails).
//! - [`ports`]: ports reserved before the processes start (from `psubd-launch`).
//! - [`client`]: [`NodeClient`], typed calls to one node's API (create_topic, publish,
//!   fetch, fetch_all) and [`expect_error`] for the documented error body.
//! - [`wire`]: the JSON shapes of docs/api.md, written from the contract.
//! - [`eventually()`]: waiting for a condition instead of sleeping.
//! - [`metrics`]: a node's `/metrics` text and one series' value.
//! - [`checks`]: many independent checks on one shared cluster, all reported.
//!
//! The tests themselves live in `tests/tests/`. They need the binary:
//! `cargo build -p psubd` first (see [`cluster::psubd_bin`]).

pub mod checks;
pub mod client;
pub mod cluster;
pub mod eventually;
pub mod metrics;
pub use psubd_launch::ports;
pub mod sse;
pub mod wire;

pub use checks::Checks;
pub use client::{expect_error, expect_json, NodeClient, PublishOutcome};
pub use cluster::Cluster;
pub use eventually::eventually;
pub use sse::{SseEvent, SseReader};
pub use wire::{DeliveryReport, ErrorBody, FetchResponse, NewRecord, PartitionInfo, Record, Topic};
