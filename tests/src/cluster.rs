//! `Cluster`: real `psubd node` processes on localhost, for end-to-end tests.
//!
//! Modeled on NATS `createJetStreamClusterExplicit`: the fixture reserves every port up
//! front, starts one process per node with its own data directory under a temporary
//! directory, waits until every node answers `GET /readyz` with 200, and kills every
//! process when dropped. Each node's stdout and stderr go to `node-<id>.log` in that
//! directory; when a test panics the directory is kept and the tail of each log printed.
//! The processes themselves are `psubd-launch`'s ([`NodeSet`]); this module is the tests'
//! API over them: panics with log tails instead of errors, a shared HTTP client, fixture
//! events marked in the logs.
//!
//! Only one `Cluster` lives at a time per test process (see [`Cluster::start`]): the CI
//! machine has two cores, and three clusters of three nodes on them would turn election
//! timeouts and the measured failover times into noise.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use psubd_launch::{logs, peers, Layout, NodeCommand, NodeSet, NotReady, Stopped};
use tokio::sync::{Mutex, MutexGuard};

use crate::client::NodeClient;
use crate::eventually::eventually;
use crate::ports::reserve;

/// How long [`Cluster::start`] and [`Cluster::restart`] wait for `/readyz`: generous,
/// so that a slow start is *measured* by the tests that care, not hidden by a panic here.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Cluster::stop`] waits for a graceful exit after SIGTERM (the node promises
/// at most 6 s to finish a leader-balance move, 5 s of handover, 8 s of draining and 2 s
/// of goodbyes).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// Lines of each node's log shown when the fixture panics.
const LOG_TAIL_LINES: usize = 40;

/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Environment variable naming the binary, overriding the default next to the tests.
pub const BIN_ENV: &str = "PSUBD_BIN";

/// Serialises clusters within one test process (see the module doc).
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A running cluster of `psubd node` processes. Node ids are 1..=n.
#[derive(Debug)]
pub struct Cluster {
    /// Declared before `dir`: the processes die before their directory is removed.
    nodes: NodeSet,
    /// `None` only once the directory was kept for a failed test's post-mortem.
    dir: Option<tempfile::TempDir>,
    client: reqwest::Client,
    ready_in: Duration,
    _serial: MutexGuard<'static, ()>,
}

/// Path of the `psubd` binary: `$PSUBD_BIN`, else next to the test executable
/// (`<target>/<profile>/deps/<test>` → `<target>/<profile>/psubd`, which follows
/// `CARGO_TARGET_DIR` and the profile by construction).
///
/// # Panics
///
/// When the binary does not exist, telling how to build it.
pub fn psubd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{BIN_ENV}={} does not exist", p.display());
        return p;
    }
    let bin = psubd_launch::binary::beside_current_exe(1)
        .expect("the test binary lives in <target>/<profile>/deps/");
    assert!(
        bin.is_file(),
        "the psubd binary is missing at {}: run `cargo build -p psubd` (with the same \
         profile and CARGO_TARGET_DIR as the tests) before the end-to-end tests, or set {BIN_ENV}",
        bin.display()
    );
    bin
}

impl Cluster {
    /// Starts `n` nodes and waits until all answer `/readyz` 200 (at most
    /// [`READY_TIMEOUT`]). Waits first for any other cluster of this test process to be
    /// dropped.
    ///
    /// # Panics
    ///
    /// When the binary is missing, a process cannot be spawned or exits early, or the
    /// nodes are not ready in time; the message carries each node's log tail.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with_env(n, &[]).await
    }

    /// As [`Self::start`], with extra environment for every node process (settings by
    /// their `PSUBD_*` variables), kept across restarts.
    ///
    /// # Panics
    ///
    /// As [`Self::start`].
    pub async fn start_with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_prepared(n, env, |_id, _data_dir| {}).await
    }

    /// As [`Self::start_with_env`], calling `prepare(id, data_dir)` for every node once its
    /// (empty) data directory exists and before any node starts: a test mounts a small file
    /// system there, say.
    ///
    /// # Panics
    ///
    /// As [`Self::start`].
    pub async fn start_prepared(
        n: usize,
        env: &[(&str, &str)],
        prepare: impl Fn(u64, &Path),
    ) -> Cluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let serial = ONE_CLUSTER_AT_A_TIME.lock().await;
        let bin = psubd_bin();
        let dir = tempfile::Builder::new()
            .prefix("psubd-cluster-")
            .tempdir()
            .expect("create the cluster's temporary directory");
        let layout = Layout::new(dir.path());
        let mut reserved = Vec::with_capacity(n);
        let mut places = Vec::with_capacity(n);
        for i in 0..n {
            let id = i as u64 + 1;
            let (http, raft) = (reserve(), reserve());
            let place = layout.place(id, http.port(), raft.port());
            std::fs::create_dir_all(&place.data_dir).expect("create a node's data dir");
            prepare(id, &place.data_dir);
            places.push(place);
            reserved.push((http, raft));
        }
        let peers = peers(&places);
        let commands = places
            .into_iter()
            .map(|place| {
                let mut cmd = NodeCommand::new(&bin, place, peers.clone());
                cmd.default_log_filter = Some("info".to_string());
                for (k, v) in env {
                    cmd.set_env(k, v);
                }
                cmd
            })
            .collect();
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .expect("build the HTTP client");
        let mut cluster = Cluster {
            nodes: NodeSet::new(commands).with_start_markers("psubd-tests"),
            dir: Some(dir),
            client,
            ready_in: Duration::ZERO,
            _serial: serial,
        };
        // Release every port first, then spawn: a node dials its peers at once, and a
        // dial into a still-held reservation would sit in its backlog.
        drop(reserved);
        let spawned = Instant::now();
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        let ids = cluster.ids();
        cluster.wait_ready(&ids, READY_TIMEOUT).await;
        cluster.ready_in = spawned.elapsed();
        cluster
    }

    /// Starts a node that is in no `--peers` list with `--join` through node `via`'s HTTP
    /// API, with the same environment as node `via`, and waits until it is ready (it is then
    /// a voter of the controller group and knows its leader). Its id is one above the
    /// highest; answers it.
    ///
    /// # Panics
    ///
    /// When the process cannot be spawned or is not ready in time.
    pub async fn add_joining_node(&mut self, via: u64) -> u64 {
        let id = self.ids().into_iter().max().unwrap_or(0) + 1;
        let dir = self.dir.as_ref().expect("the cluster's directory");
        let layout = Layout::new(dir.path());
        let (http, raft) = (reserve(), reserve());
        let place = layout.place(id, http.port(), raft.port());
        let template = self.nodes.command(via).clone();
        let mut cmd = NodeCommand::new(template.program.clone(), place, "");
        cmd.default_log_filter = template.default_log_filter.clone();
        cmd.env = template.env.clone();
        cmd.args = vec!["--join".into(), self.http(via).into()];
        self.nodes.add(cmd);
        drop((http, raft));
        self.spawn(id);
        self.wait_ready(&[id], READY_TIMEOUT).await;
        id
    }

    /// Node `id`'s log lines at WARN or ERROR from psubd itself (ANSI colours removed): a
    /// healthy cluster has none. Left out: openraft's own lines, as the node's default
    /// log filter leaves them out (the fixture logs everything at INFO; nearly all are
    /// routine: a late vote answer, a peer down); and the slow-flush warning, which is
    /// about the machine's disk (shared with other builds in CI), not the cluster.
    pub fn warnings(&self, id: u64) -> Vec<String> {
        std::fs::read_to_string(self.log_path(id))
            .unwrap_or_default()
            .lines()
            .map(without_ansi)
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .filter(|line| !line.contains(" openraft::"))
            .filter(|line| !line.contains("slow storage flush"))
            .collect()
    }

    /// The process id of node `id` while it runs (to read its memory use in /proc).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.pid(id)
    }

    /// Time from spawning the first process to every node answering `/readyz` 200.
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// All node ids, 1..=n.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.ids()
    }

    /// Ids of nodes whose process has been started and not killed or stopped.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.running()
    }

    /// Base URL of node `id`'s HTTP API, e.g. `http://127.0.0.1:20123`.
    pub fn http(&self, id: u64) -> String {
        format!("http://{}", self.nodes.command(id).place.http)
    }

    /// Node `id`'s Raft address, as given to `--raft` and `--peers`.
    pub fn raft_addr(&self, id: u64) -> String {
        self.nodes.command(id).place.raft.to_string()
    }

    /// The shared keep-alive HTTP client.
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Typed API calls to node `id`.
    pub fn node(&self, id: u64) -> NodeClient {
        NodeClient::new(self.client.clone(), self.http(id))
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.nodes.command(id).place.data_dir
    }

    /// Node `id`'s log file (stdout and stderr of all its runs).
    pub fn log_path(&self, id: u64) -> &Path {
        &self.nodes.command(id).place.log
    }

    /// How many `snapshot installed` lines of a partition group (ids from 1000 up) node
    /// `id`'s log holds since its data dir was last wiped: proof that a rejoining node
    /// caught up through a snapshot rather than by replaying the log.
    pub fn partition_snapshots_installed_since_wipe(&self, id: u64) -> usize {
        let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let lines: Vec<String> = log.lines().map(without_ansi).collect();
        let start = lines
            .iter()
            .rposition(|line| line.contains("data dir wiped"))
            .map_or(0, |i| i + 1);
        lines[start..]
            .iter()
            .filter(|line| line.contains("snapshot installed"))
            .filter(|line| {
                line.split_whitespace()
                    .filter_map(|field| field.strip_prefix("group="))
                    .filter_map(|g| g.parse::<u64>().ok())
                    .any(|g| g >= 1000)
            })
            .count()
    }

    /// Waits up to `within` until node `id` has installed a partition snapshot since its
    /// data dir was wiped (see [`Self::partition_snapshots_installed_since_wipe`]). Reads
    /// through a node with no replica yet are forwarded to the leader, so a test of the
    /// rejoined replica's own content must wait for this first.
    pub async fn await_partition_snapshot_since_wipe(&self, id: u64, within: Duration) {
        eventually(
            within,
            "the wiped node installs a partition snapshot",
            || async {
                match self.partition_snapshots_installed_since_wipe(id) {
                    0 => Err("no partition snapshot installed since the wipe (see its log)"),
                    _ => Ok(()),
                }
            },
        )
        .await;
    }

    /// The leader of partition `partition` of `topic` per `GET /v1/topics/{t}/partitions`
    /// on a running node, waiting (up to 15 s) until one is reported and it is a running
    /// node.
    ///
    /// # Panics
    ///
    /// When no running leader is reported in time.
    pub async fn leader_of(&self, topic: &str, partition: u32) -> u64 {
        let running = self.running();
        let askers: Vec<NodeClient> = running.iter().map(|&id| self.node(id)).collect();
        let running = &running;
        let askers = &askers;
        eventually(
            Duration::from_secs(15),
            &format!("a running leader of {topic}/{partition}"),
            || async move {
                let mut last = String::from("no running node to ask");
                for asker in askers {
                    match asker.try_partitions(topic).await {
                        Ok(parts) => match parts.iter().find(|p| p.partition == partition) {
                            Some(p) => match p.leader {
                                Some(l) if running.contains(&l) => return Ok(l),
                                other => {
                                    last = format!("{} reports leader {other:?}", asker.base())
                                }
                            },
                            None => {
                                last =
                                    format!("{} does not list partition {partition}", asker.base())
                            }
                        },
                        Err(e) => last = e,
                    }
                }
                Err(last)
            },
        )
        .await
    }

    /// SIGKILLs node `id` and reaps it (a crash: no shutdown code runs).
    ///
    /// # Panics
    ///
    /// When the node is not running.
    pub fn kill(&mut self, id: u64) {
        match self.nodes.kill_blocking(id) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("kill({id}): node {id} is not running"),
            Err(e) => panic!("kill({id}): {e}"),
        }
        self.mark(id, "killed with SIGKILL");
    }

    /// Sends SIGTERM to node `id` and waits for it to exit (at most [`STOP_TIMEOUT`]);
    /// returns its exit status (0 on a clean shutdown).
    ///
    /// # Panics
    ///
    /// When the node is not running or does not exit in time (it is then SIGKILLed).
    pub async fn stop(&mut self, id: u64) -> ExitStatus {
        let stopped = self.nodes.stop(id, STOP_TIMEOUT).await;
        match stopped {
            Ok(Some(stopped)) => self.stopped(id, stopped),
            Ok(None) => panic!("stop({id}): node {id} is not running"),
            Err(e) => panic!("stop({id}): {e}"),
        }
    }

    /// SIGTERMs every running node at once, then waits for each; returns `(id, status)`.
    ///
    /// # Panics
    ///
    /// As [`Self::stop`].
    pub async fn stop_all(&mut self) -> Vec<(u64, ExitStatus)> {
        let outcomes = self.nodes.stop_all(STOP_TIMEOUT).await;
        outcomes
            .into_iter()
            .map(|(id, stopped)| match stopped {
                Ok(stopped) => (id, self.stopped(id, stopped)),
                Err(e) => panic!("stop({id}): {e}"),
            })
            .collect()
    }

    /// Marks a stop in the node's log; panics with every log's tail when it was not
    /// graceful.
    fn stopped(&self, id: u64, stopped: Stopped) -> ExitStatus {
        let Stopped {
            status,
            graceful,
            took,
        } = stopped;
        if !graceful {
            panic!(
                "node {id} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}",
                self.log_tails()
            );
        }
        self.mark(id, &format!("exited with {status} {took:?} after SIGTERM"));
        status
    }

    /// Sets an environment variable for node `id` alone, from its next start on (a test
    /// giving one node another setting, say).
    pub fn set_node_env(&mut self, id: u64, key: &str, value: &str) {
        self.nodes.command_mut(id).set_env(key, value);
    }

    /// Starts node `id` again with the same ports and data dir, without waiting.
    ///
    /// # Panics
    ///
    /// When the node is running.
    pub fn respawn(&mut self, id: u64) {
        assert!(
            !self.nodes.is_running(id),
            "respawn({id}): node {id} is still running; kill or stop it first"
        );
        self.spawn(id);
    }

    /// Starts node `id` again with the same ports and data dir and waits until it is
    /// ready ([`READY_TIMEOUT`]); returns the time it took.
    ///
    /// # Panics
    ///
    /// When the node is running, or is not ready in time.
    pub async fn restart(&mut self, id: u64) -> Duration {
        let t = Instant::now();
        self.respawn(id);
        self.wait_ready(&[id], READY_TIMEOUT).await;
        t.elapsed()
    }

    /// Starts every stopped node, then waits until all nodes are ready; returns the time
    /// it took. (Nodes are respawned together: one alone has no quorum to be ready.)
    ///
    /// # Panics
    ///
    /// When the nodes are not ready in time.
    pub async fn restart_all(&mut self) -> Duration {
        let t = Instant::now();
        for id in self.ids() {
            if !self.nodes.is_running(id) {
                self.spawn(id);
            }
        }
        let ids = self.ids();
        self.wait_ready(&ids, READY_TIMEOUT).await;
        t.elapsed()
    }

    /// Deletes node `id`'s data dir (leaving it empty), as a lost disk.
    ///
    /// # Panics
    ///
    /// When the node is running, or the directory cannot be recreated.
    pub fn wipe(&mut self, id: u64) {
        assert!(
            !self.nodes.is_running(id),
            "wipe({id}): node {id} is running; kill or stop it first"
        );
        let data_dir = self.data_dir(id);
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir).expect("remove a node's data dir");
        }
        std::fs::create_dir_all(data_dir).expect("recreate a node's data dir");
        self.mark(id, "data dir wiped");
    }

    /// Waits until every node in `ids` answers `/readyz` 200.
    ///
    /// # Panics
    ///
    /// When one exits or `timeout` passes, with every node's log tail.
    pub async fn wait_ready(&mut self, ids: &[u64], timeout: Duration) {
        let start = Instant::now();
        let probes: Vec<(u64, NodeClient)> = ids.iter().map(|&id| (id, self.node(id))).collect();
        let probes = &probes;
        let ready = self
            .nodes
            .wait_ready(ids, timeout, |id| async move {
                match probes.iter().find(|(i, _)| *i == id) {
                    Some((_, client)) => client.is_ready().await,
                    None => false,
                }
            })
            .await;
        match ready {
            Ok(()) => {}
            Err(NotReady::NotRunning(id)) => panic!("wait_ready({id}): node {id} is not running"),
            Err(NotReady::Exited(id, status)) => panic!(
                "node {id} exited with {status} before it was ready ({:?} after spawn)\n{}",
                start.elapsed(),
                self.log_tails()
            ),
            Err(NotReady::Timeout(pending)) => panic!(
                "nodes {pending:?} not ready (GET /readyz 200) within {timeout:?}\n{}",
                self.log_tails()
            ),
            Err(e @ NotReady::Io(..)) => panic!("waiting for readiness: {e}"),
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let log = self.log_path(id);
            out.push_str(&format!(
                "----- node {id} log ({}), last {LOG_TAIL_LINES} lines -----\n{}\n",
                log.display(),
                logs::tail_lines(log, LOG_TAIL_LINES, LOG_TAIL_BYTES)
            ));
        }
        out
    }

    fn spawn(&mut self, id: u64) {
        if let Err(e) = self.nodes.start(id) {
            let bin = self.nodes.command(id).program.display().to_string();
            panic!("spawn {bin} for node {id}: {e}");
        }
    }

    /// Freezes node `id` with SIGSTOP (a long GC pause or a stalled VM): its sockets stay
    /// open, it answers nothing, and it resumes with its old view of the cluster. Returns
    /// once the process has stopped (seen in CI: a join served 1 ms after the SIGSTOP).
    ///
    /// # Panics
    ///
    /// When the node is not running.
    pub fn pause(&mut self, id: u64) {
        let process = self
            .nodes
            .process(id)
            .unwrap_or_else(|| panic!("SIGSTOP to node {id}: it is not running"));
        let paused = process.pause().and_then(|()| process.await_stopped());
        if let Err(e) = paused {
            panic!("pausing node {id}: {e}");
        }
        self.mark(id, "paused with SIGSTOP");
    }

    /// Resumes a paused node with SIGCONT.
    ///
    /// # Panics
    ///
    /// When the node is not running.
    pub fn resume(&mut self, id: u64) {
        let process = self
            .nodes
            .process(id)
            .unwrap_or_else(|| panic!("SIGCONT to node {id}: it is not running"));
        if let Err(e) = process.resume() {
            panic!("resuming node {id}: {e}");
        }
        self.mark(id, "resumed with SIGCONT");
    }

    /// Appends a fixture event line to node `id`'s log so the log reads as a timeline.
    fn mark(&self, id: u64, what: &str) {
        logs::mark(self.log_path(id), &format!("psubd-tests: node {id} {what}"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.nodes.running() {
            let _ = self.nodes.kill_blocking(id);
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "psubd-tests: test failed; cluster logs and data kept in {}\n{}",
                    path.display(),
                    self.log_tails()
                );
            }
        }
    }
}

/// A log line without its ANSI colour codes.
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
