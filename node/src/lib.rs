//! # Layout
//!
//! The `psubd` binary: one node (`psubd node`), a local cluster (`psubd dev`) and the
//! client commands. The load generator is a binary of its own, `psubd-bench` (`bench/`).
//!
//! - [`cli`]: the client commands (`topic`, `produce`, `consume`, `group`, `cluster`),
//!   built on psubd-client.
//! - [`config`]: flags, environment, defaults and validation.
//! - [`server`]: `run(config, shutdown)` — boot and graceful shutdown of a node.
//! - [`join`]: `--join`: asking a running cluster to add this node.
//! - [`dev`]: the local-cluster launcher.
//! - [`signal`]: SIGINT / SIGTERM.
//! - [`tls`]: HTTPS on the API port (rustls).

pub mod cli;
pub mod config;
pub mod dev;
pub mod join;
pub mod server;
pub mod signal;
pub mod tls;

pub use server::run;
