//! The client commands of the `psubd` binary, kcat / rpk style: `topic`, `produce`,
//! `consume`, `key`, `group`, `cluster`. Each talks to a running cluster through psubd-client.
//!
//! - [`connect`]: `--url` (repeatable, comma separated, `PSUBD_URL`), `--token`.
//! - [`output`]: `--output table|json` and the table printer.
//! - [`topic`], [`produce`], [`consume`], [`key`], [`group`], [`cluster`]: one module per
//!   command.
//!
//! Exit codes: 0 success, 1 a failed operation (the server's message is printed), 2 a
//! usage error (clap's, and [`UsageError`] for combinations clap cannot express).

pub mod cluster;
pub mod connect;
pub mod consume;
pub mod group;
pub mod key;
pub mod output;
pub mod produce;
pub mod topic;

use std::fmt;

/// A command line that parses but asks for something impossible; exits 2 like clap's
/// own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error a command returned: 2 for a [`UsageError`], else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
