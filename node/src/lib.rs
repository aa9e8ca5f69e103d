//! # Layout
//!
//! The `psubd` binary: one node (`psubd node`), a local cluster (`psubd dev`) and a load
//! generator (`psubd bench`).
//!
//! - [`config`]: flags, environment, defaults and validation.
//! - [`server`]: `run(config, shutdown)` — boot and graceful shutdown of a node.
//! - [`dev`]: the local-cluster launcher.
//! - [`signal`]: SIGINT / SIGTERM.
//! - [`tls`]: HTTPS on the API port (rustls).
//! - [`bench`]: the load generator.

pub mod bench;
pub mod config;
pub mod dev;
pub mod server;
pub mod signal;
pub mod tls;

pub use server::run;
