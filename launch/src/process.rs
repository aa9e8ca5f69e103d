//! [`Process`]: one spawned process (see [`crate::spawn::Launch`]), controlled by
//! signals until it is reaped.
//!
//! Signals go by pid, and a pid is only ours while the child is unreaped (after that the
//! kernel may give it to another process). [`Process`] therefore sends nothing once it
//! has seen the exit, and kills and reaps the child when dropped, so neither an orphan
//! nor a zombie outlives its owner.
//!
//! Waiting comes in two forms: `async` (polling with tokio's timer, for callers on a
//! runtime, which must not block a worker on a process in a stalled file system) and
//! `_blocking` (for `Drop` and synchronous callers).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often an exit is polled for.
const POLL: Duration = Duration::from_millis(20);

/// How a graceful stop ended.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// The exit status.
    pub status: ExitStatus,
    /// Whether the process exited by itself within the grace time (else it was killed).
    pub graceful: bool,
    /// From SIGTERM to the exit.
    pub took: Duration,
}

/// A spawned process, unreaped until its exit is seen; killed and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// The exit status once reaped; no signal is sent after that.
    exited: Option<ExitStatus>,
    /// Between SIGSTOP and SIGCONT.
    paused: bool,
    /// Leads a process group of its own ([`crate::spawn::Launch::own_group`]).
    own_group: bool,
}

impl Process {
    /// Takes charge of a just-spawned child (see [`crate::spawn::Launch::spawn`]).
    pub(crate) fn new(child: Child, own_group: bool) -> Self {
        Process {
            child,
            exited: None,
            paused: false,
            own_group,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it was paused with [`Self::pause`] and not resumed.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Sends `signal`.
    ///
    /// # Errors
    /// The process has been reaped (its pid is no longer ours), or kill(2) fails.
    pub fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        if self.exited.is_some() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "already reaped"));
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid out of range"))?;
        // SAFETY: kill(2) takes plain integers; `pid` is our unreaped child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Freezes the process with SIGSTOP (a long GC pause or a stalled VM): its sockets
    /// stay open, it answers nothing, and it resumes with its old view of the world.
    ///
    /// # Errors
    /// As [`Self::signal`].
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// Blocks until a [`Self::pause`] has taken effect. kill(2) only queues the signal:
    /// until every thread has stopped, the process may still answer a request sent right
    /// after it. Leaves the stop (and any exit) for the reaper to see.
    ///
    /// # Errors
    /// waitid(2) fails.
    pub fn await_stopped(&mut self) -> io::Result<()> {
        if self.exited.is_some() {
            return Ok(());
        }
        let pid = self.child.id();
        // SAFETY: `info` is a plain C struct waitid fills in; `pid` is our unreaped child.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Resumes a paused process with SIGCONT; nothing if it is not paused.
    ///
    /// # Errors
    /// As [`Self::signal`].
    pub fn resume(&mut self) -> io::Result<()> {
        if self.paused {
            self.signal(libc::SIGCONT)?;
            self.paused = false;
        }
        Ok(())
    }

    /// The exit status if the process has exited (reaping it), without waiting.
    ///
    /// # Errors
    /// waitpid(2) fails.
    pub fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                self.paused = false;
                self.end_group();
            }
        }
        Ok(self.exited)
    }

    /// Waits up to `within` for the exit (`None`: forever); `None` when it has not come.
    ///
    /// # Errors
    /// As [`Self::try_exit`].
    pub async fn wait_exit(&mut self, within: Option<Duration>) -> io::Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Waited::Done(exited) = self.poll_exit(start, within)? {
                return Ok(exited);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// As [`Self::wait_exit`], blocking the thread.
    ///
    /// # Errors
    /// As [`Self::try_exit`].
    pub fn wait_exit_blocking(
        &mut self,
        within: Option<Duration>,
    ) -> io::Result<Option<ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Waited::Done(exited) = self.poll_exit(start, within)? {
                return Ok(exited);
            }
            std::thread::sleep(POLL);
        }
    }

    /// One look for the exit of a wait that began at `start` and may last `within`.
    fn poll_exit(&mut self, start: Instant, within: Option<Duration>) -> io::Result<Waited> {
        Ok(match self.try_exit()? {
            Some(status) => Waited::Done(Some(status)),
            None if within.is_some_and(|w| start.elapsed() >= w) => Waited::Done(None),
            None => Waited::Again,
        })
    }

    /// SIGKILL (a crash: no shutdown code runs) and reaps; the status if already exited.
    ///
    /// # Errors
    /// The signal or the wait fails.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        self.start_kill()?;
        self.wait_exit(None).await?.ok_or_else(never_exited)
    }

    /// As [`Self::kill`], blocking the thread.
    ///
    /// # Errors
    /// As [`Self::kill`].
    pub fn kill_blocking(&mut self) -> io::Result<ExitStatus> {
        self.start_kill()?;
        self.wait_exit_blocking(None)?.ok_or_else(never_exited)
    }

    /// Asks the process to stop: SIGCONT first if it is paused (a stopped process would
    /// not act on SIGTERM), then SIGTERM. Nothing if it has exited.
    ///
    /// # Errors
    /// As [`Self::signal`].
    pub fn terminate(&mut self) -> io::Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        self.resume()?;
        self.signal(libc::SIGTERM)
    }

    /// Stops gracefully: [`Self::terminate`], then waits up to `grace` for the exit, then
    /// SIGKILL.
    ///
    /// # Errors
    /// Signalling or reaping fails.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<Stopped> {
        let since = Instant::now();
        self.terminate()?;
        self.finish_stop(since, grace).await
    }

    /// The rest of [`Self::stop`] after a [`Self::terminate`] at `since`: waits for the
    /// exit until `grace` after it, then SIGKILL. (Many processes are told first and
    /// waited for after, so they shut down in parallel.)
    ///
    /// # Errors
    /// Reaping or the SIGKILL fails.
    pub async fn finish_stop(&mut self, since: Instant, grace: Duration) -> io::Result<Stopped> {
        let exited = self
            .wait_exit(Some(grace.saturating_sub(since.elapsed())))
            .await?;
        let graceful = exited.is_some();
        let status = match exited {
            Some(status) => status,
            None => self.kill().await?,
        };
        Ok(stopped(status, graceful, since))
    }

    /// As [`Self::stop`], blocking the thread.
    ///
    /// # Errors
    /// As [`Self::stop`].
    pub fn stop_blocking(&mut self, grace: Duration) -> io::Result<Stopped> {
        let since = Instant::now();
        self.terminate()?;
        let exited = self.wait_exit_blocking(Some(grace))?;
        let graceful = exited.is_some();
        let status = match exited {
            Some(status) => status,
            None => self.kill_blocking()?,
        };
        Ok(stopped(status, graceful, since))
    }

    /// SIGKILL to the process (and its group, if it leads one), without waiting.
    fn start_kill(&mut self) -> io::Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        self.end_group();
        self.signal(libc::SIGKILL)
    }

    /// SIGKILL to the rest of the group a group leader started: children that outlived it
    /// must not hold its ports and files. A group id stays in use while any member lives,
    /// so it names no stranger's group.
    fn end_group(&self) {
        if self.own_group {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) takes plain integers; a missing group is no error here.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// What one look for an exit found.
enum Waited {
    /// The exit status, or `None` when the wait's time is up.
    Done(Option<ExitStatus>),
    /// Not exited; look again after [`POLL`].
    Again,
}

fn stopped(status: ExitStatus, graceful: bool, start: Instant) -> Stopped {
    Stopped {
        status,
        graceful,
        took: start.elapsed(),
    }
}

fn never_exited() -> io::Error {
    io::Error::other("waited without a deadline yet saw no exit")
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill_blocking();
    }
}

/// Whether `status` is an exit by SIGKILL (what [`Process::kill`] causes).
pub fn killed(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::Launch;

    fn sleeper() -> Process {
        Launch::new("sleep")
            .args(["30"])
            .spawn()
            .expect("spawn sleep")
    }

    #[tokio::test]
    async fn kill_reaps_and_further_signals_are_refused() {
        let mut p = sleeper();
        assert!(p.try_exit().expect("try").is_none());
        let status = p.kill().await.expect("kill");
        assert!(killed(&status));
        assert!(p.signal(libc::SIGTERM).is_err());
        assert!(
            p.kill().await.is_ok(),
            "killing a reaped process is a no-op"
        );
    }

    #[tokio::test]
    async fn stop_is_graceful_for_a_process_that_honours_sigterm() {
        let mut p = sleeper();
        p.pause().expect("pause");
        p.await_stopped().expect("stopped");
        let stopped = p.stop(Duration::from_secs(5)).await.expect("stop");
        assert!(stopped.graceful);
        assert_eq!(stopped.status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn stop_kills_what_ignores_sigterm() {
        let mut p = Launch::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .spawn()
            .expect("spawn sh");
        // Let the shell install its trap.
        std::thread::sleep(Duration::from_millis(200));
        let stopped = p.stop_blocking(Duration::from_millis(300)).expect("stop");
        assert!(!stopped.graceful);
        assert!(killed(&stopped.status));
    }

    #[test]
    fn output_goes_to_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("out.log");
        let mut p = Launch::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .env("X", "1")
            .log_to(&log)
            .spawn()
            .expect("spawn");
        let status = p.wait_exit_blocking(None).expect("wait").expect("exited");
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "out\nerr\n");
    }
}
