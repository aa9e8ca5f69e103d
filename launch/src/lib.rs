//! # Layout
//!
//! `psubd-launch` starts and controls local `psubd node` processes one way for every
//! launcher: `psubd dev`, the end-to-end tests (`tests/`), the chaos harness (`jepsen/`)
//! and the load generator's `--dev` (`bench/`). Each keeps only what is its own (console
//! output, fixture API, network namespaces and fault file system, flags). Modules from
//! the bottom up:
//!
//! - [`binary`]: the `psubd` binary beside the launcher's own executable.
//! - [`ports`]: ports reserved before the processes start, or fixed ones checked free.
//! - [`layout`]: a node's addresses, data dir and log ([`NodePlace`]), `--peers`, the
//!   shared on-disk [`Layout`], `psubd dev`'s fixed ports ([`DevPorts`]).
//! - [`secret`]: the cluster secret file.
//! - [`command`]: a node's `psubd node` command line ([`NodeCommand`]).
//! - [`process`]: one process and its signals until reaped ([`Process`]: SIGKILL,
//!   SIGSTOP/SIGCONT, graceful stop; killed and reaped on drop).
//! - [`spawn`]: starting one ([`Launch`]: log file, parent-death signal, own process
//!   group).
//! - [`nodes`]: a cluster's node processes by id ([`NodeSet`]: start, restart as the same
//!   node, kill, stop, reap, wait for readiness).
//! - [`ready`]: the `/readyz` probe over plain HTTP.
//! - [`logs`]: node log files: markers and tails.
//!
//! It is linked into the `psubd` binary, so it depends only on what the node already
//! does (libc, rand, tokio).

pub mod binary;
pub mod command;
pub mod layout;
pub mod logs;
pub mod nodes;
pub mod ports;
pub mod process;
pub mod ready;
pub mod secret;
pub mod spawn;

pub use command::NodeCommand;
pub use layout::{peers, DevPorts, Layout, NodePlace};
pub use nodes::{NodeSet, NotReady};
pub use process::{Process, Stopped};
pub use spawn::Launch;
