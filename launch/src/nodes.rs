//! [`NodeSet`]: the node processes of one local cluster, by node id.
//!
//! Each node keeps its [`NodeCommand`] for life, so a restart brings back the same node
//! (same id, addresses and data dir). Every start appends a marker line to the node's
//! log, and dropping the set kills and reaps every process still running.

use std::future::Future;
use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::command::NodeCommand;
use crate::logs;
use crate::process::{Process, Stopped};

/// How often [`NodeSet::wait_ready`] asks again.
const READY_POLL: Duration = Duration::from_millis(50);

/// One node: how it is started and its process while one runs.
#[derive(Debug)]
struct Slot {
    command: NodeCommand,
    /// `Some` from spawn until the exit is seen.
    process: Option<Process>,
    /// Starts so far.
    starts: u32,
}

/// Why [`NodeSet::wait_ready`] gave up.
#[derive(Debug)]
pub enum NotReady {
    /// A node it waited for is not running.
    NotRunning(u64),
    /// A node exited before all were ready (it is reaped).
    Exited(u64, ExitStatus),
    /// These nodes were not ready in time.
    Timeout(Vec<u64>),
    /// Polling a process failed.
    Io(u64, io::Error),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::NotRunning(id) => write!(f, "node {id} is not running"),
            NotReady::Exited(id, status) => write!(f, "node {id} exited ({status})"),
            NotReady::Timeout(ids) => write!(f, "nodes {ids:?} not ready"),
            NotReady::Io(id, e) => write!(f, "node {id}: {e}"),
        }
    }
}

impl std::error::Error for NotReady {}

/// The processes of a local cluster's nodes.
#[derive(Debug)]
pub struct NodeSet {
    slots: Vec<Slot>,
    /// Who writes the start markers into node logs (`None`: no markers).
    marker: Option<String>,
}

impl NodeSet {
    /// The nodes of `commands`, none started yet.
    pub fn new(commands: Vec<NodeCommand>) -> Self {
        let slots = commands
            .into_iter()
            .map(|command| Slot {
                command,
                process: None,
                starts: 0,
            })
            .collect();
        NodeSet {
            slots,
            marker: None,
        }
    }

    /// Writes `===== [ms] <who>: start #n of node <id> =====` into a node's log before
    /// each start, so each run's lines can be found (see [`logs::is_start_mark`]).
    pub fn with_start_markers(mut self, who: &str) -> Self {
        self.marker = Some(who.to_string());
        self
    }

    /// Adds a node to the set (one joining a running cluster, say), not started yet.
    ///
    /// # Panics
    /// When a node with its id is already in the set.
    pub fn add(&mut self, command: NodeCommand) {
        let id = command.id();
        assert!(
            self.slots.iter().all(|s| s.command.id() != id),
            "node {id} is already in the set"
        );
        self.slots.push(Slot {
            command,
            process: None,
            starts: 0,
        });
    }

    /// Node ids, in the order given.
    pub fn ids(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.command.id()).collect()
    }

    /// Ids of nodes with a process (paused counts as running).
    pub fn running(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.process.is_some())
            .map(|s| s.command.id())
            .collect()
    }

    /// How node `id` is started.
    ///
    /// # Panics
    /// When there is no node `id`.
    pub fn command(&self, id: u64) -> &NodeCommand {
        &self.slot(id).command
    }

    /// How node `id` is started, to change from its next start on.
    ///
    /// # Panics
    /// When there is no node `id`.
    pub fn command_mut(&mut self, id: u64) -> &mut NodeCommand {
        &mut self.slot_mut(id).command
    }

    /// Node `id`'s process while it runs.
    ///
    /// # Panics
    /// When there is no node `id`.
    pub fn process(&mut self, id: u64) -> Option<&mut Process> {
        self.slot_mut(id).process.as_mut()
    }

    /// Whether node `id` has a process.
    pub fn is_running(&self, id: u64) -> bool {
        self.find(id).is_some_and(|s| s.process.is_some())
    }

    /// Node `id`'s pid while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.find(id)?.process.as_ref().map(Process::pid)
    }

    /// How many times node `id` has been started (0 for an unknown node).
    pub fn starts(&self, id: u64) -> u32 {
        self.find(id).map_or(0, |s| s.starts)
    }

    /// Starts node `id` (its data dir created if missing); `false` if it already runs.
    ///
    /// # Errors
    /// The data dir or log cannot be made, or the process cannot be spawned.
    ///
    /// # Panics
    /// When there is no node `id`.
    pub fn start(&mut self, id: u64) -> io::Result<bool> {
        let marker = self.marker.clone();
        let slot = self.slot_mut(id);
        if slot.process.is_some() {
            return Ok(false);
        }
        let place = &slot.command.place;
        std::fs::create_dir_all(&place.data_dir)?;
        slot.starts += 1;
        if let Some(who) = marker {
            logs::mark(
                &place.log,
                &format!("{who}: {}", logs::start_text(slot.starts, id)),
            );
        }
        slot.process = Some(slot.command.launch().spawn()?);
        Ok(true)
    }

    /// Starts every node that is not running, in id order.
    ///
    /// # Errors
    /// The first node that cannot be started, by id.
    pub fn start_all(&mut self) -> Result<(), (u64, io::Error)> {
        for id in self.ids() {
            self.start(id).map_err(|e| (id, e))?;
        }
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it; `None` if it was not running.
    ///
    /// # Errors
    /// Signalling or reaping fails.
    pub async fn kill(&mut self, id: u64) -> io::Result<Option<ExitStatus>> {
        let Some(mut process) = self.slot_mut(id).process.take() else {
            return Ok(None);
        };
        process.kill().await.map(Some)
    }

    /// As [`Self::kill`], blocking the thread.
    ///
    /// # Errors
    /// As [`Self::kill`].
    pub fn kill_blocking(&mut self, id: u64) -> io::Result<Option<ExitStatus>> {
        let Some(mut process) = self.slot_mut(id).process.take() else {
            return Ok(None);
        };
        process.kill_blocking().map(Some)
    }

    /// Stops node `id` gracefully (see [`Process::stop`]); `None` if it was not running.
    ///
    /// # Errors
    /// Signalling or reaping fails.
    pub async fn stop(&mut self, id: u64, grace: Duration) -> io::Result<Option<Stopped>> {
        let Some(process) = self.slot_mut(id).process.as_mut() else {
            return Ok(None);
        };
        let stopped = process.stop(grace).await;
        self.slot_mut(id).process = None;
        stopped.map(Some)
    }

    /// SIGTERMs every running node at once (they shut down in parallel), then waits for
    /// each until `grace` after that, killing the late; returns `(id, outcome)`.
    pub async fn stop_all(&mut self, grace: Duration) -> Vec<(u64, io::Result<Stopped>)> {
        let since = Instant::now();
        let mut told = Vec::new();
        for slot in &mut self.slots {
            if let Some(process) = slot.process.as_mut() {
                told.push((slot.command.id(), process.terminate()));
            }
        }
        let mut out = Vec::with_capacity(told.len());
        for (id, terminated) in told {
            let Some(mut process) = self.slot_mut(id).process.take() else {
                continue;
            };
            let outcome = match terminated {
                Ok(()) => process.finish_stop(since, grace).await,
                Err(e) => Err(e),
            };
            out.push((id, outcome));
        }
        out
    }

    /// Kills and reaps every running node.
    pub async fn kill_all(&mut self) -> Vec<(u64, io::Error)> {
        let mut failed = Vec::new();
        for id in self.ids() {
            if let Err(e) = self.kill(id).await {
                failed.push((id, e));
            }
        }
        failed
    }

    /// Reaps the nodes that exited by themselves, returning how; they stay down until
    /// started again.
    pub fn reap_exited(&mut self) -> Vec<(u64, ExitStatus)> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.reap_exited_node(id).map(|s| (id, s)))
            .collect()
    }

    /// Reaps node `id` if it exited by itself.
    pub fn reap_exited_node(&mut self, id: u64) -> Option<ExitStatus> {
        let slot = self.slots.iter_mut().find(|s| s.command.id() == id)?;
        let status = slot.process.as_mut()?.try_exit().ok()??;
        slot.process = None;
        Some(status)
    }

    /// Waits until `ready(id)` holds for every node in `ids` (a probe of its `/readyz`:
    /// [`crate::ready::http_ready`], or the caller's own client where nodes serve HTTPS),
    /// at most `within`. Fails at once when one of them exits meanwhile, so another
    /// process answering on a node's port is never mistaken for the node.
    ///
    /// # Errors
    /// See [`NotReady`].
    pub async fn wait_ready<P, F>(
        &mut self,
        ids: &[u64],
        within: Duration,
        mut ready: P,
    ) -> Result<(), NotReady>
    where
        P: FnMut(u64) -> F,
        F: Future<Output = bool>,
    {
        let start = Instant::now();
        let mut pending: Vec<u64> = ids.to_vec();
        loop {
            for &id in ids {
                let Some(process) = self.slot_mut(id).process.as_mut() else {
                    return Err(NotReady::NotRunning(id));
                };
                match process.try_exit() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        self.slot_mut(id).process = None;
                        return Err(NotReady::Exited(id, status));
                    }
                    Err(e) => return Err(NotReady::Io(id, e)),
                }
            }
            let mut still = Vec::new();
            for &id in &pending {
                if !ready(id).await {
                    still.push(id);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= within {
                return Err(NotReady::Timeout(pending));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn find(&self, id: u64) -> Option<&Slot> {
        self.slots.iter().find(|s| s.command.id() == id)
    }

    fn slot(&self, id: u64) -> &Slot {
        self.find(id)
            .unwrap_or_else(|| panic!("no node {id} among {:?}", self.ids()))
    }

    fn slot_mut(&mut self, id: u64) -> &mut Slot {
        let ids = self.ids();
        self.slots
            .iter_mut()
            .find(|s| s.command.id() == id)
            .unwrap_or_else(|| panic!("no node {id} among {ids:?}"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::layout::{peers, DevPorts, Layout};

    /// A stand-in for `psubd`: a shell script that logs its arguments, then runs `body`.
    fn fake_psubd(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-psubd");
        std::fs::write(&path, format!("#!/bin/sh\necho \"args: $*\"\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// `n` nodes of the fake under `dir` (the ports are only named, never bound).
    fn node_set(dir: &Path, body: &str, n: u16) -> NodeSet {
        let program = fake_psubd(dir, body);
        let places = DevPorts::new(40_000, n)
            .expect("in range")
            .places(&Layout::new(dir.join("cluster")));
        let peers = peers(&places);
        let commands = places
            .into_iter()
            .map(|p| NodeCommand::new(&program, p, peers.clone()))
            .collect();
        std::fs::create_dir_all(dir.join("cluster")).expect("root");
        NodeSet::new(commands).with_start_markers("test")
    }

    /// Waits (at most 10 s) until `log` holds `count` lines containing `text`: the
    /// stand-in writes them itself, after its start.
    async fn logged(log: &Path, text: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let written = std::fs::read_to_string(log).unwrap_or_default();
            if written.lines().filter(|l| l.contains(text)).count() >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?} not logged {count} times: {written}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_restarted_node_is_the_same_node() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = node_set(dir.path(), "exec sleep 30", 2);
        assert!(nodes.start(1).expect("start"));
        assert!(
            !nodes.start(1).expect("already running"),
            "no second process"
        );
        assert_eq!(nodes.running(), vec![1]);
        // The stand-in has written its arguments before it is killed.
        let log_path = nodes.command(1).place.log.clone();
        logged(&log_path, "args: node --id 1", 1).await;
        let status = nodes.kill(1).await.expect("kill").expect("was running");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!nodes.is_running(1));
        nodes.start(1).expect("restart");
        assert_eq!(nodes.starts(1), 2);
        logged(&log_path, "args: node --id 1", 2).await;
        assert!(nodes.command(1).place.data_dir.is_dir());
        let stopped = nodes.stop_all(Duration::from_secs(5)).await;
        assert_eq!(stopped.len(), 1);
        assert!(stopped[0].1.as_ref().expect("stopped").graceful);
        let log = std::fs::read_to_string(&nodes.command(1).place.log).expect("log");
        let starts: Vec<&str> = log.lines().filter(|l| logs::is_start_mark(l)).collect();
        assert_eq!(starts.len(), 2, "{log}");
        assert!(starts[1].contains("test: start #2 of node 1"), "{log}");
        assert!(
            log.contains("args: node --id 1 --http 127.0.0.1:40000 --raft 127.0.0.1:41000"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn waiting_for_readiness_fails_fast_when_a_node_exits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = node_set(dir.path(), "exit 3", 1);
        nodes.start_all().expect("start");
        let waited = nodes
            .wait_ready(&[1], Duration::from_secs(10), |_| async { false })
            .await;
        match waited {
            Err(NotReady::Exited(1, status)) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected an exit, got {other:?}"),
        }
        assert!(!nodes.is_running(1), "the exited node is reaped");
    }

    #[tokio::test]
    async fn waiting_for_readiness_asks_until_ready_or_timeout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = node_set(dir.path(), "exec sleep 30", 2);
        nodes.start_all().expect("start");
        let mut asked = 0;
        let ready = nodes
            .wait_ready(&[1, 2], Duration::from_secs(10), |_| {
                asked += 1;
                let ready = asked > 3;
                async move { ready }
            })
            .await;
        assert!(ready.is_ok(), "{ready:?}");
        let never = nodes
            .wait_ready(&[2], Duration::from_millis(100), |_| async { false })
            .await;
        assert!(matches!(never, Err(NotReady::Timeout(ids)) if ids == vec![2]));
    }

    #[test]
    fn a_node_that_exits_by_itself_is_reaped_and_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = node_set(dir.path(), "exit 0", 1);
        nodes.start(1).expect("start");
        let deadline = Instant::now() + Duration::from_secs(10);
        let reaped = loop {
            let reaped = nodes.reap_exited();
            if !reaped.is_empty() || Instant::now() > deadline {
                break reaped;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(reaped.len(), 1);
        assert!(reaped[0].1.success());
        assert!(nodes.running().is_empty());
    }
}
