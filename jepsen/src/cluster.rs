//! Control of the three `psubd node` processes: start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT.
//!
//! The harness only ever signals the pids of children it spawned itself, and only while
//! they are unreaped (so a pid can never have been recycled). Every node is started with
//! a parent-death signal, so a harness that is itself killed leaves no node running.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::JepsenError;

/// How one node is run.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id (1-based).
    pub id: u64,
    /// Namespace to run in; `None` in loopback mode.
    pub netns: Option<String>,
    /// `--http`.
    pub http: SocketAddr,
    /// `--raft`.
    pub raft: SocketAddr,
    /// `--data-dir`; kept across restarts.
    pub data_dir: PathBuf,
    /// stderr/stdout of every incarnation, appended.
    pub log: PathBuf,
    /// Environment added to the node's process (libfaketime for clock faults).
    pub env: Vec<(String, String)>,
}

/// What the harness knows about a node process.
#[derive(Debug, Default)]
struct NodeProc {
    /// The running (unreaped) child, if any.
    child: Option<Child>,
    /// True between SIGSTOP and SIGCONT.
    paused: bool,
    /// Number of starts so far.
    starts: u32,
    /// A fault under which the node is expected to stop by itself (fail-stop on a failed
    /// fsync): such an exit is reported as expected, and the node stays down until healed.
    exit_expected: bool,
}

/// A node that exited without being told to.
#[derive(Debug, Clone)]
pub struct UnexpectedExit {
    /// Node id.
    pub id: u64,
    /// The exit status as text.
    pub status: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// Whether a fault in place expected it to stop (see [`Cluster::expect_exit`]).
    pub expected: bool,
}

/// The cluster of node processes.
pub struct Cluster {
    binary: PathBuf,
    /// Flags added to every node's command line.
    extra_args: Vec<String>,
    specs: Vec<NodeSpec>,
    procs: Mutex<Vec<NodeProc>>,
}

impl Cluster {
    /// A cluster of `specs`, none started yet.
    pub fn new(binary: PathBuf, specs: Vec<NodeSpec>) -> Self {
        let procs = specs.iter().map(|_| NodeProc::default()).collect();
        Cluster {
            binary,
            extra_args: Vec::new(),
            specs,
            procs: Mutex::new(procs),
        }
    }

    /// Adds flags to every node's command line (before any node starts).
    pub fn with_node_args(mut self, args: Vec<String>) -> Self {
        self.extra_args = args;
        self
    }

    /// The flags added to every node's command line.
    pub fn node_args(&self) -> &[String] {
        &self.extra_args
    }

    /// The node binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The node specs, in id order.
    pub fn specs(&self) -> &[NodeSpec] {
        &self.specs
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.specs.iter().map(|s| s.id).collect()
    }

    fn index(&self, id: u64) -> Result<usize, JepsenError> {
        self.specs
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| JepsenError::Node {
                node: id,
                detail: "no such node".into(),
            })
    }

    fn peers_arg(&self) -> String {
        self.specs
            .iter()
            .map(|s| format!("{}={}", s.id, s.raft))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `id` if it is not running. Must be called from a runtime worker or
    /// the main thread, never from `spawn_blocking`: the parent-death signal is tied to
    /// the spawning thread, and blocking-pool threads exit when idle.
    ///
    /// # Errors
    /// The log cannot be opened or the process cannot be spawned.
    pub async fn start(&self, id: u64) -> Result<(), JepsenError> {
        let i = self.index(id)?;
        let spec = &self.specs[i];
        let mut procs = self.procs.lock().await;
        let proc = &mut procs[i];
        if proc.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&spec.data_dir).map_err(|e| JepsenError::io(&spec.data_dir, e))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| JepsenError::io(&spec.log, e))?;
        proc.starts += 1;
        // A marker, so each incarnation's log can be found.
        let _ = writeln!(
            log,
            "=== psubd-jepsen: start #{} of node {} ===",
            proc.starts, id
        );
        let err_log = log.try_clone().map_err(|e| JepsenError::io(&spec.log, e))?;
        let mut node_args: Vec<String> = vec![
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--http".into(),
            spec.http.to_string(),
            "--raft".into(),
            spec.raft.to_string(),
            "--peers".into(),
            self.peers_arg(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
        ];
        node_args.extend(self.extra_args.iter().cloned());
        let mut cmd = match &spec.netns {
            // `ip netns exec` execs the command in place, so the child's pid is psubd's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.arg("netns").arg("exec").arg(ns).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.args(&node_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() && std::env::var_os("PSUBD_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| JepsenError::Node {
            node: id,
            detail: format!("spawn {}: {e}", self.binary.display()),
        })?;
        info!(
            node = id,
            pid = child.id().unwrap_or(0),
            start = proc.starts,
            "node started"
        );
        proc.child = Some(child);
        proc.paused = false;
        Ok(())
    }

    /// Starts every node that is not running.
    ///
    /// # Errors
    /// The first node that cannot be started.
    pub async fn start_all(&self) -> Result<(), JepsenError> {
        for id in self.ids() {
            self.start(id).await?;
        }
        Ok(())
    }

    /// SIGKILL to node `id` and reap it. No-op if it is not running.
    ///
    /// # Errors
    /// The signal cannot be sent or the child cannot be reaped.
    pub async fn kill(&self, id: u64) -> Result<(), JepsenError> {
        let i = self.index(id)?;
        let mut procs = self.procs.lock().await;
        let proc = &mut procs[i];
        let Some(child) = proc.child.as_mut() else {
            return Ok(());
        };
        child.start_kill().map_err(|e| JepsenError::Node {
            node: id,
            detail: format!("SIGKILL: {e}"),
        })?;
        let status = child.wait().await.map_err(|e| JepsenError::Node {
            node: id,
            detail: format!("wait: {e}"),
        })?;
        info!(node = id, status = %status, "node killed");
        proc.child = None;
        proc.paused = false;
        Ok(())
    }

    /// SIGTERM to node `id`, then waits up to `grace` for it to exit, then SIGKILL.
    /// Returns true when it exited by itself within the grace time.
    ///
    /// # Errors
    /// Signalling or reaping fails.
    pub async fn stop(&self, id: u64, grace: Duration) -> Result<bool, JepsenError> {
        let i = self.index(id)?;
        let mut procs = self.procs.lock().await;
        let proc = &mut procs[i];
        let Some(child) = proc.child.as_mut() else {
            return Ok(true);
        };
        if proc.paused {
            signal(child, id, libc::SIGCONT)?;
            proc.paused = false;
        }
        signal(child, id, libc::SIGTERM)?;
        let graceful = match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => {
                info!(node = id, status = %status, "node stopped");
                true
            }
            Ok(Err(e)) => {
                return Err(JepsenError::Node {
                    node: id,
                    detail: format!("wait: {e}"),
                })
            }
            Err(_) => {
                warn!(
                    node = id,
                    grace_ms = grace.as_millis() as u64,
                    "node ignored SIGTERM; killing"
                );
                child.start_kill().map_err(|e| JepsenError::Node {
                    node: id,
                    detail: format!("SIGKILL: {e}"),
                })?;
                child.wait().await.map_err(|e| JepsenError::Node {
                    node: id,
                    detail: format!("wait: {e}"),
                })?;
                false
            }
        };
        proc.child = None;
        Ok(graceful)
    }

    /// SIGSTOP to node `id`.
    ///
    /// # Errors
    /// The node is not running or the signal fails.
    pub async fn pause(&self, id: u64) -> Result<(), JepsenError> {
        let i = self.index(id)?;
        let mut procs = self.procs.lock().await;
        let proc = &mut procs[i];
        let child = running_child(proc, id)?;
        signal(child, id, libc::SIGSTOP)?;
        proc.paused = true;
        Ok(())
    }

    /// SIGCONT to node `id`, if it is paused.
    ///
    /// # Errors
    /// The signal fails.
    pub async fn resume(&self, id: u64) -> Result<(), JepsenError> {
        let i = self.index(id)?;
        let mut procs = self.procs.lock().await;
        let proc = &mut procs[i];
        if !proc.paused {
            return Ok(());
        }
        if let Some(child) = proc.child.as_mut() {
            signal(child, id, libc::SIGCONT)?;
        }
        proc.paused = false;
        Ok(())
    }

    /// Reaps nodes that exited without being told to and reports them. They stay down
    /// until someone calls [`Cluster::start`].
    pub async fn reap_exited(&self) -> Vec<UnexpectedExit> {
        let mut procs = self.procs.lock().await;
        procs
            .iter_mut()
            .zip(&self.specs)
            .filter_map(|(proc, spec)| reap(proc, spec.id))
            .collect()
    }

    /// Reaps node `id` if it exited by itself (as [`Cluster::reap_exited`] does for all).
    pub async fn reap_exited_node(&self, id: u64) -> Option<UnexpectedExit> {
        let i = self.index(id).ok()?;
        let mut procs = self.procs.lock().await;
        reap(&mut procs[i], id)
    }

    /// Marks node `id`'s exits as expected (`true`, while a fault that should make it
    /// fail-stop is held) or not.
    pub async fn expect_exit(&self, id: u64, expected: bool) {
        if let Ok(i) = self.index(id) {
            self.procs.lock().await[i].exit_expected = expected;
        }
    }

    /// How many times node `id` has been started so far (0 for an unknown node).
    pub async fn starts(&self, id: u64) -> u32 {
        match self.index(id) {
            Ok(i) => self.procs.lock().await[i].starts,
            Err(_) => 0,
        }
    }

    /// Whether node `id`'s exits are expected now.
    pub async fn exit_expected(&self, id: u64) -> bool {
        match self.index(id) {
            Ok(i) => self.procs.lock().await[i].exit_expected,
            Err(_) => false,
        }
    }

    /// The last lines of node `id`'s log that contain `needle` (the current incarnation
    /// and before), at most `max`.
    pub fn log_lines(&self, id: u64, needle: &str, max: usize) -> Vec<String> {
        let Some(path) = self.log_path(id) else {
            return Vec::new();
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let mut found: Vec<String> = text
            .lines()
            .rev()
            .take_while(|l| !l.starts_with("=== psubd-jepsen: start #"))
            .filter(|l| l.contains(needle))
            .take(max)
            .map(str::to_owned)
            .collect();
        found.reverse();
        found
    }

    /// Whether node `id` has a live process (paused counts as live).
    pub async fn is_running(&self, id: u64) -> bool {
        let Ok(i) = self.index(id) else {
            return false;
        };
        self.procs.lock().await[i].child.is_some()
    }

    /// Kills every node (SIGKILL) and reaps it. Used on teardown.
    pub async fn kill_all(&self) {
        for id in self.ids() {
            if let Err(e) = self.kill(id).await {
                warn!(node = id, cause = %e, "failed to kill node on teardown");
            }
        }
    }

    /// Path of node `id`'s log.
    pub fn log_path(&self, id: u64) -> Option<&Path> {
        self.specs
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.log.as_path())
    }
}

/// Reaps node `id`'s process if it exited by itself, reporting how; it stays down.
fn reap(proc: &mut NodeProc, id: u64) -> Option<UnexpectedExit> {
    let status = proc.child.as_mut()?.try_wait().ok()??;
    warn!(node = id, status = %status, "node exited by itself");
    proc.child = None;
    proc.paused = false;
    Some(UnexpectedExit {
        id,
        status: status.to_string(),
        success: status.success(),
        expected: proc.exit_expected,
    })
}

fn running_child(proc: &mut NodeProc, id: u64) -> Result<&mut Child, JepsenError> {
    proc.child.as_mut().ok_or_else(|| JepsenError::Node {
        node: id,
        detail: "not running".into(),
    })
}

/// Sends `sig` to an unreaped child. The pid is ours: tokio keeps the child unreaped
/// until `wait`/`try_wait` observes its exit, so it cannot have been recycled.
fn signal(child: &mut Child, id: u64, sig: libc::c_int) -> Result<(), JepsenError> {
    let pid = child.id().ok_or_else(|| JepsenError::Node {
        node: id,
        detail: "already reaped".into(),
    })?;
    let pid = libc::pid_t::try_from(pid).map_err(|_| JepsenError::Node {
        node: id,
        detail: format!("pid {pid} out of range"),
    })?;
    // SAFETY: kill(2) with a pid of our own unreaped child and a valid signal number.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(JepsenError::Node {
            node: id,
            detail: format!("signal {sig}: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}
