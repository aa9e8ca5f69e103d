//! # Layout
//!
//! The `psubd` binary: one node (`psubd node`) and a local cluster (`psubd dev`). The
//! load generator is a binary of its own, `psubd-bench` (`bench/`).
//!
//! - [`config`]: flags, environment, defaults and validation.
//! - [`server`]: `run(config, shutdown)` — boot and graceful shutdown of a node.
//! - [`dev`]: the local-cluster launcher.
//! - [`signal`]: SIGINT / SIGTERM.
//! - [`tls`]: HTTPS on the API port (rustls).

pub mod config;
pub mod dev;
pub mod server;
pub mod signal;
pub mod tls;

pub use server::run;
