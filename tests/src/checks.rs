//! Several independent checks against one shared cluster, all reported.
//!
//! Starting a cluster costs seconds of a two-core CI machine, so checks that do not
//! disturb each other share one. Run as plain sequential code, the first failure would
//! hide every later one; `Checks` runs each to completion (catching its panic) and fails
//! the test at the end with the list of failed checks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt as _;

/// Collects the outcome of named checks; [`Checks::finish`] fails if any failed.
#[derive(Debug, Default)]
pub struct Checks {
    failed: Vec<(String, String)>,
    passed: Vec<String>,
}

impl Checks {
    /// No checks run yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one check to completion, recording whether it panicked.
    pub async fn run(&mut self, name: &str, check: impl Future<Output = ()>) {
        let start = Instant::now();
        eprintln!("check {name}: running");
        match AssertUnwindSafe(check).catch_unwind().await {
            Ok(()) => {
                eprintln!("check {name}: ok ({:.2?})", start.elapsed());
                self.passed.push(name.to_owned());
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| String::from("(non-string panic)"));
                eprintln!("check {name}: FAILED ({:.2?}): {msg}", start.elapsed());
                self.failed.push((name.to_owned(), msg));
            }
        }
    }

    /// Panics listing every failed check, if any.
    ///
    /// # Panics
    ///
    /// When at least one check failed.
    pub fn finish(self) {
        eprintln!("{} checks passed: {:?}", self.passed.len(), self.passed);
        if !self.failed.is_empty() {
            let list = self
                .failed
                .iter()
                .map(|(n, m)| format!("- {n}: {m}"))
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{} of {} checks failed:\n{list}",
                self.failed.len(),
                self.failed.len() + self.passed.len()
            );
        }
    }
}
