//! Control of the `psubd node` processes: start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT, and
//! membership (a spare node joining the running cluster with `--join`, a decommissioned
//! node leaving it).
//!
//! The processes are `psubd-launch`'s ([`NodeSet`]): it only ever signals the pids of
//! children it spawned itself, and only while they are unreaped (so a pid can never have
//! been recycled). Every node is started with a parent-death signal, so a harness that is
//! itself killed leaves no node running. What is the harness's own: nodes in network
//! namespaces, their environment (libfaketime), exits a fault expects, errors as
//! [`JepsenError`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use psubd_launch::{logs, NodeCommand, NodePlace, NodeSet};
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

/// The node processes and what a fault expects of them.
struct Procs {
    nodes: NodeSet,
    /// Ids of nodes under a fault that is expected to make them stop by themselves
    /// (fail-stop on a failed fsync): such an exit is reported as expected, and the node
    /// stays down until healed.
    exit_expected: Vec<u64>,
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
    /// Every node the run may ever have, in id order: the founding members, then the
    /// spares that may join later (the `membership` fault).
    specs: Vec<NodeSpec>,
    /// Ids of the nodes that are members now: the founders, plus spares that joined,
    /// minus nodes that were decommissioned and stopped.
    members: std::sync::Mutex<Vec<u64>>,
    procs: Mutex<Procs>,
}

impl Cluster {
    /// A cluster of `specs`, none started yet.
    pub fn new(binary: PathBuf, specs: Vec<NodeSpec>) -> Self {
        let nodes = NodeSet::new(commands(&binary, &specs, &[])).with_start_markers("psubd-jepsen");
        let members = specs.iter().map(|s| s.id).collect();
        Cluster {
            binary,
            extra_args: Vec::new(),
            specs,
            members: std::sync::Mutex::new(members),
            procs: Mutex::new(Procs {
                nodes,
                exit_expected: Vec::new(),
            }),
        }
    }

    /// Adds nodes that are not members at the start and may join the running cluster
    /// later ([`Cluster::join`]), with the flags of [`Cluster::with_node_args`].
    pub fn with_spares(mut self, spares: Vec<NodeSpec>) -> Self {
        self.specs.extend(spares);
        self
    }

    /// Adds flags to every node's command line (before any node starts).
    pub fn with_node_args(mut self, args: Vec<String>) -> Self {
        let nodes = &mut self.procs.get_mut().nodes;
        let founders: Vec<NodeSpec> = self
            .specs
            .iter()
            .filter(|s| nodes.ids().contains(&s.id))
            .cloned()
            .collect();
        for command in commands(&self.binary, &founders, &args) {
            let id = command.id();
            *nodes.command_mut(id) = command;
        }
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

    /// Every node spec (members and spares), in id order.
    pub fn specs(&self) -> &[NodeSpec] {
        &self.specs
    }

    /// Ids of the current members, in id order.
    pub fn ids(&self) -> Vec<u64> {
        self.lock_members().clone()
    }

    /// The position of node `id` among [`Cluster::specs`] (its namespace's index).
    pub fn index(&self, id: u64) -> Option<usize> {
        self.specs.iter().position(|s| s.id == id)
    }

    /// The first spare that has never been a member, if any.
    pub async fn next_spare(&self) -> Option<NodeSpec> {
        let procs = self.procs.lock().await;
        let ever = procs.nodes.ids();
        self.specs.iter().find(|s| !ever.contains(&s.id)).cloned()
    }

    /// Starts spare node `id` with `--join <via>` (the HTTP base URL of a member) instead
    /// of a peer list, as an operator adds a node, and counts it as a member.
    ///
    /// # Errors
    /// `id` is no spare, or the process cannot be spawned.
    pub async fn join(&self, id: u64, via: &str) -> Result<(), JepsenError> {
        let spec = self
            .specs
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| node_error(id, "no such node"))?;
        {
            let mut procs = self.procs.lock().await;
            if procs.nodes.ids().contains(&id) {
                return Err(node_error(id, "already a member once"));
            }
            let mut command = command(&self.binary, spec, String::new(), &self.extra_args);
            command.args.extend(["--join".into(), OsString::from(via)]);
            procs.nodes.add(command);
        }
        self.lock_members().push(id);
        self.start(id).await
    }

    /// Stops node `id` (SIGTERM, then SIGKILL after `grace`) and counts it no more as a
    /// member: it was decommissioned, nothing restarts it.
    ///
    /// # Errors
    /// Signalling or reaping fails.
    pub async fn retire(&self, id: u64, grace: Duration) -> Result<(), JepsenError> {
        self.lock_members().retain(|m| *m != id);
        self.stop(id, grace).await.map(|_| ())
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, id: u64) -> Result<(), JepsenError> {
        match self.specs.iter().any(|s| s.id == id) {
            true => Ok(()),
            false => Err(node_error(id, "no such node")),
        }
    }

    /// Starts node `id` if it is not running. Must be called from a runtime worker or
    /// the main thread, never from `spawn_blocking`: the parent-death signal is tied to
    /// the spawning thread, and blocking-pool threads exit when idle.
    ///
    /// A node that is not a member (a spare not yet joined, a node decommissioned) is
    /// never started.
    ///
    /// # Errors
    /// The node is not a member, the log cannot be opened or the process cannot be
    /// spawned.
    pub async fn start(&self, id: u64) -> Result<(), JepsenError> {
        self.check(id)?;
        if !self.lock_members().contains(&id) {
            return Err(node_error(id, "not a member of the cluster"));
        }
        let mut procs = self.procs.lock().await;
        let nodes = &mut procs.nodes;
        let started = nodes
            .start(id)
            .map_err(|e| node_error(id, format!("start {}: {e}", self.binary.display())))?;
        if started {
            info!(
                node = id,
                pid = nodes.pid(id).unwrap_or(0),
                start = nodes.starts(id),
                "node started"
            );
        }
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
        self.check(id)?;
        let mut procs = self.procs.lock().await;
        let killed = procs.nodes.kill(id).await;
        if let Some(status) = killed.map_err(|e| node_error(id, format!("SIGKILL: {e}")))? {
            info!(node = id, status = %status, "node killed");
        }
        Ok(())
    }

    /// SIGTERM to node `id`, then waits up to `grace` for it to exit, then SIGKILL.
    /// Returns true when it exited by itself within the grace time.
    ///
    /// # Errors
    /// Signalling or reaping fails.
    pub async fn stop(&self, id: u64, grace: Duration) -> Result<bool, JepsenError> {
        self.check(id)?;
        let mut procs = self.procs.lock().await;
        let stopped = procs.nodes.stop(id, grace).await;
        let Some(stopped) = stopped.map_err(|e| node_error(id, format!("stop: {e}")))? else {
            return Ok(true);
        };
        if stopped.graceful {
            info!(node = id, status = %stopped.status, "node stopped");
        } else {
            warn!(
                node = id,
                grace_ms = grace.as_millis() as u64,
                "node ignored SIGTERM; killed"
            );
        }
        Ok(stopped.graceful)
    }

    /// SIGSTOP to node `id`.
    ///
    /// # Errors
    /// The node is not running or the signal fails.
    pub async fn pause(&self, id: u64) -> Result<(), JepsenError> {
        self.check(id)?;
        let mut procs = self.procs.lock().await;
        let process = procs
            .nodes
            .process(id)
            .ok_or_else(|| node_error(id, "not running"))?;
        process
            .pause()
            .map_err(|e| node_error(id, format!("SIGSTOP: {e}")))
    }

    /// SIGCONT to node `id`, if it is paused.
    ///
    /// # Errors
    /// The signal fails.
    pub async fn resume(&self, id: u64) -> Result<(), JepsenError> {
        self.check(id)?;
        let mut procs = self.procs.lock().await;
        match procs.nodes.process(id) {
            Some(process) => process
                .resume()
                .map_err(|e| node_error(id, format!("SIGCONT: {e}"))),
            None => Ok(()),
        }
    }

    /// Reaps nodes that exited without being told to and reports them. They stay down
    /// until someone calls [`Cluster::start`].
    pub async fn reap_exited(&self) -> Vec<UnexpectedExit> {
        let mut procs = self.procs.lock().await;
        self.ids()
            .into_iter()
            .filter_map(|id| reap(&mut procs, id))
            .collect()
    }

    /// Reaps node `id` if it exited by itself (as [`Cluster::reap_exited`] does for all).
    pub async fn reap_exited_node(&self, id: u64) -> Option<UnexpectedExit> {
        self.check(id).ok()?;
        reap(&mut *self.procs.lock().await, id)
    }

    /// Marks node `id`'s exits as expected (`true`, while a fault that should make it
    /// fail-stop is held) or not.
    pub async fn expect_exit(&self, id: u64, expected: bool) {
        let mut procs = self.procs.lock().await;
        procs.exit_expected.retain(|&i| i != id);
        if expected && self.check(id).is_ok() {
            procs.exit_expected.push(id);
        }
    }

    /// How many times node `id` has been started so far (0 for an unknown node).
    pub async fn starts(&self, id: u64) -> u32 {
        self.procs.lock().await.nodes.starts(id)
    }

    /// Whether node `id`'s exits are expected now.
    pub async fn exit_expected(&self, id: u64) -> bool {
        self.procs.lock().await.exit_expected.contains(&id)
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
            .take_while(|l| !logs::is_start_mark(l))
            .filter(|l| l.contains(needle))
            .take(max)
            .map(str::to_owned)
            .collect();
        found.reverse();
        found
    }

    /// Whether node `id` has a live process (paused counts as live).
    pub async fn is_running(&self, id: u64) -> bool {
        self.procs.lock().await.nodes.is_running(id)
    }

    /// Kills every node (SIGKILL) and reaps it. Used on teardown.
    pub async fn kill_all(&self) {
        for (id, e) in self.procs.lock().await.nodes.kill_all().await {
            warn!(node = id, cause = %e, "failed to kill node on teardown");
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

/// Every node's command line: in its namespace, under its environment, with the
/// cluster's flags, killed with the harness.
fn commands(binary: &Path, specs: &[NodeSpec], args: &[String]) -> Vec<NodeCommand> {
    let places: Vec<NodePlace> = specs
        .iter()
        .map(|s| NodePlace {
            id: s.id,
            http: s.http,
            raft: s.raft,
            data_dir: s.data_dir.clone(),
            log: s.log.clone(),
        })
        .collect();
    let peers = psubd_launch::peers(&places);
    specs
        .iter()
        .map(|spec| command(binary, spec, peers.clone(), args))
        .collect()
}

/// One node's command line with `peers` (empty for a node that joins).
fn command(binary: &Path, spec: &NodeSpec, peers: String, args: &[String]) -> NodeCommand {
    let place = NodePlace {
        id: spec.id,
        http: spec.http,
        raft: spec.raft,
        data_dir: spec.data_dir.clone(),
        log: spec.log.clone(),
    };
    let mut command = NodeCommand::new(binary, place, peers);
    if let Some(ns) = &spec.netns {
        // `ip netns exec` execs the command in place, so the child's pid is psubd's.
        command.wrapper = ["ip", "netns", "exec", ns.as_str()]
            .into_iter()
            .map(OsString::from)
            .collect();
    }
    command.args = args.iter().map(OsString::from).collect();
    command.env = spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    command.default_log_filter = Some("info".to_string());
    command.death_signal = Some(libc::SIGKILL);
    command
}

/// Reaps node `id`'s process if it exited by itself, reporting how; it stays down.
fn reap(procs: &mut Procs, id: u64) -> Option<UnexpectedExit> {
    let status = procs.nodes.reap_exited_node(id)?;
    warn!(node = id, status = %status, "node exited by itself");
    Some(UnexpectedExit {
        id,
        status: status.to_string(),
        success: status.success(),
        expected: procs.exit_expected.contains(&id),
    })
}

fn node_error(id: u64, detail: impl Into<String>) -> JepsenError {
    JepsenError::Node {
        node: id,
        detail: detail.into(),
    }
}
