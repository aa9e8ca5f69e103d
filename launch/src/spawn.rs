//! [`Launch`]: how to start one process — program, arguments, environment, where its
//! output goes, and how it is tied to its parent (a parent-death signal, a process
//! group of its own) — and starting it as a [`Process`].

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::logs;
use crate::process::Process;

/// How to start a process: program, arguments, environment, where its output goes and
/// how it is tied to its parent.
#[derive(Debug, Clone)]
pub struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Variables of this process's environment the child does not inherit.
    env_removed: Vec<OsString>,
    log: Option<PathBuf>,
    death_signal: Option<libc::c_int>,
    own_group: bool,
}

impl Launch {
    /// Runs `program`, stdin from /dev/null, output inherited until [`Self::log_to`].
    pub fn new(program: impl Into<OsString>) -> Self {
        Launch {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            log: None,
            death_signal: None,
            own_group: false,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Keeps `key` of this process's environment from the child (unless set by
    /// [`Self::env`]).
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_removed.push(key.into());
        self
    }

    /// Adds (or, later in the list, overrides) an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends stdout and stderr to `path`.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Has the kernel send `signal` to the process when the *thread* that spawned it
    /// exits (PR_SET_PDEATHSIG), so a parent killed with SIGKILL leaves no orphan. Spawn
    /// from a long-lived thread (a runtime worker or the main thread, never a blocking
    /// pool thread, which exits when idle).
    pub fn death_signal(mut self, signal: libc::c_int) -> Self {
        self.death_signal = Some(signal);
        self
    }

    /// Starts the process in a process group of its own: Ctrl-C on the parent's terminal
    /// reaches the parent only, and stopping the process ends its whole group.
    pub fn own_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        Path::new(&self.program)
    }

    /// Starts the process.
    ///
    /// # Errors
    /// The log cannot be opened or the program cannot be started.
    pub fn spawn(&self) -> io::Result<Process> {
        let mut cmd = Command::new(&self.program);
        for key in &self.env_removed {
            cmd.env_remove(key);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(path) = &self.log {
            let out = logs::append(path)?;
            cmd.stderr(out.try_clone()?).stdout(out);
        }
        if self.own_group {
            cmd.process_group(0);
        }
        if let Some(signal) = self.death_signal {
            // SAFETY: the closure only calls prctl, which is async-signal-safe, between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(Process::new(cmd.spawn()?, self.own_group))
    }
}
