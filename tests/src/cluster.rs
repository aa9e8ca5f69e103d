//! `Cluster`: real `psubd node` processes on localhost, for end-to-end tests.
//!
//! Modeled on NATS `createJetStreamClusterExplicit`: the fixture reserves every port up
//! front, starts one process per node with its own data directory under a temporary
//! directory, waits until every node answers `GET /readyz` with 200, and kills every
//! process when dropped. Each node's stdout and stderr go to `node-<id>.log` in that
//! directory; when a test panics the directory is kept and the tail of each log printed.
//!
//! Only one `Cluster` lives at a time per test process (see [`Cluster::start`]): the CI
//! machine has two cores, and three clusters of three nodes on them would turn election
//! timeouts and the measured failover times into noise.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, MutexGuard};

use crate::client::NodeClient;
use crate::eventually::eventually;
use crate::ports::{reserve, ReservedPort};

/// How long [`Cluster::start`] and [`Cluster::restart`] wait for `/readyz`: generous,
/// so that a slow start is *measured* by the tests that care, not hidden by a panic here.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Cluster::stop`] waits for a graceful exit after SIGTERM (the node promises
/// about 10 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of each node's log shown when the fixture panics.
const LOG_TAIL_LINES: usize = 40;

/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Environment variable naming the binary, overriding the default next to the tests.
pub const BIN_ENV: &str = "PSUBD_BIN";

/// Serialises clusters within one test process (see the module doc).
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// One node of the cluster.
#[derive(Debug)]
struct Node {
    id: u64,
    http: ReservedPort,
    raft: ReservedPort,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// `Some` while the process may be running (not yet reaped).
    child: Option<Child>,
    /// When SIGTERM was sent to the current process, to time its shutdown.
    term_sent: Option<Instant>,
    /// Environment of this node alone, after the cluster's (see [`Cluster::set_node_env`]).
    env: Vec<(String, String)>,
}

/// A running cluster of `psubd node` processes. Node ids are 1..=n.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    /// `None` only once the directory was kept for a failed test's post-mortem.
    dir: Option<tempfile::TempDir>,
    peers: String,
    client: reqwest::Client,
    ready_in: Duration,
    /// Extra environment of every node process (e.g. `PSUBD_MAX_STREAMS`).
    env: Vec<(String, String)>,
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
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps/");
    let bin = profile_dir.join(format!("psubd{}", std::env::consts::EXE_SUFFIX));
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
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = i as u64 + 1;
            let data_dir = dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&data_dir).expect("create a node's data dir");
            prepare(id, &data_dir);
            nodes.push(Node {
                id,
                http: reserve(),
                raft: reserve(),
                data_dir,
                log_path: dir.path().join(format!("node-{id}.log")),
                child: None,
                term_sent: None,
                env: Vec::new(),
            });
        }
        let peers = nodes
            .iter()
            .map(|nd| format!("{}=127.0.0.1:{}", nd.id, nd.raft.port()))
            .collect::<Vec<_>>()
            .join(",");
        let client = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .expect("build the HTTP client");
        let mut cluster = Cluster {
            nodes,
            bin,
            dir: Some(dir),
            peers,
            client,
            ready_in: Duration::ZERO,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _serial: serial,
        };
        // Release every port first, then spawn: a node dials its peers at once, and a
        // dial into a still-held reservation would sit in its backlog.
        for node in &mut cluster.nodes {
            node.http.release();
            node.raft.release();
        }
        let spawned = Instant::now();
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        let ids = cluster.ids();
        cluster.wait_ready(&ids, READY_TIMEOUT).await;
        cluster.ready_in = spawned.elapsed();
        cluster
    }

    /// The process id of node `id` while it runs (to read its memory use in /proc).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node_ref(id).child.as_ref().map(Child::id)
    }

    /// Time from spawning the first process to every node answering `/readyz` 200.
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// All node ids, 1..=n.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Ids of nodes whose process has been started and not killed or stopped.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Base URL of node `id`'s HTTP API, e.g. `http://127.0.0.1:20123`.
    pub fn http(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.node_ref(id).http.port())
    }

    /// Node `id`'s Raft address, as given to `--raft` and `--peers`.
    pub fn raft_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.node_ref(id).raft.port())
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
        &self.node_ref(id).data_dir
    }

    /// Node `id`'s log file (stdout and stderr of all its runs).
    pub fn log_path(&self, id: u64) -> &Path {
        &self.node_ref(id).log_path
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
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("kill({id}): node {id} is not running"));
        // An error means it already exited; wait() reaps it either way.
        let _ = child.kill();
        let _ = child.wait();
        node.mark_log(&format!("psubd-tests: node {id} killed with SIGKILL"));
    }

    /// Sends SIGTERM to node `id` and waits for it to exit (at most [`STOP_TIMEOUT`]);
    /// returns its exit status (0 on a clean shutdown).
    ///
    /// # Panics
    ///
    /// When the node is not running or does not exit in time (it is then SIGKILLed).
    pub async fn stop(&mut self, id: u64) -> ExitStatus {
        self.signal_term(id);
        self.reap(id).await
    }

    /// SIGTERMs every running node at once, then waits for each; returns `(id, status)`.
    ///
    /// # Panics
    ///
    /// As [`Self::stop`].
    pub async fn stop_all(&mut self) -> Vec<(u64, ExitStatus)> {
        let running = self.running();
        for &id in &running {
            self.signal_term(id);
        }
        let mut out = Vec::with_capacity(running.len());
        for id in running {
            out.push((id, self.reap(id).await));
        }
        out
    }

    /// Sets an environment variable for node `id` alone, from its next start on (a test
    /// giving one node another setting, say).
    pub fn set_node_env(&mut self, id: u64, key: &str, value: &str) {
        let node = self.node_mut(id);
        node.env.retain(|(k, _)| k != key);
        node.env.push((key.to_string(), value.to_string()));
    }

    /// Starts node `id` again with the same ports and data dir, without waiting.
    ///
    /// # Panics
    ///
    /// When the node is running.
    pub fn respawn(&mut self, id: u64) {
        assert!(
            self.node_ref(id).child.is_none(),
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
        let down: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_none())
            .map(|n| n.id)
            .collect();
        for id in down {
            self.spawn(id);
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
        let node = self.node_mut(id);
        assert!(
            node.child.is_none(),
            "wipe({id}): node {id} is running; kill or stop it first"
        );
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir).expect("remove a node's data dir");
        }
        std::fs::create_dir_all(&node.data_dir).expect("recreate a node's data dir");
        node.mark_log(&format!("psubd-tests: node {id} data dir wiped"));
    }

    /// Waits until every node in `ids` answers `/readyz` 200.
    ///
    /// # Panics
    ///
    /// When one exits or `timeout` passes, with every node's log tail.
    pub async fn wait_ready(&mut self, ids: &[u64], timeout: Duration) {
        let start = Instant::now();
        let mut pending: Vec<u64> = ids.to_vec();
        loop {
            for &id in &pending {
                let node = self.node_mut(id);
                let exited = match node.child.as_mut() {
                    Some(child) => child.try_wait().ok().flatten(),
                    None => panic!("wait_ready({id}): node {id} is not running"),
                };
                if let Some(status) = exited {
                    node.child = None;
                    panic!(
                        "node {id} exited with {status} before it was ready ({:?} after spawn)\n{}",
                        start.elapsed(),
                        self.log_tails()
                    );
                }
            }
            let mut still = Vec::new();
            for &id in &pending {
                if !self.node(id).is_ready().await {
                    still.push(id);
                }
            }
            pending = still;
            if pending.is_empty() {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "nodes {pending:?} not ready (GET /readyz 200) within {timeout:?}\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "----- node {} log ({}), last {LOG_TAIL_LINES} lines -----\n{}\n",
                node.id,
                node.log_path.display(),
                tail(&node.log_path, LOG_TAIL_LINES)
            ));
        }
        out
    }

    fn spawn(&mut self, id: u64) {
        let bin = self.bin.clone();
        let peers = self.peers.clone();
        let mut env = self.env.clone();
        let node = self.node_mut(id);
        env.extend(node.env.iter().cloned());
        node.mark_log(&format!("psubd-tests: starting node {id}"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open a node's log file");
        let log_err = log.try_clone().expect("clone a node's log file handle");
        let mut cmd = Command::new(&bin);
        cmd.arg("node")
            .arg("--id")
            .arg(id.to_string())
            .arg("--http")
            .arg(format!("127.0.0.1:{}", node.http.port()))
            .arg("--raft")
            .arg(format!("127.0.0.1:{}", node.raft.port()))
            .arg("--peers")
            .arg(&peers)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if std::env::var_os("RUST_LOG").is_none() && std::env::var_os("PSUBD_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} for node {id}: {e}", bin.display()));
        node.child = Some(child);
        node.term_sent = None;
    }

    fn signal_term(&mut self, id: u64) {
        self.signal(id, libc::SIGTERM, "SIGTERM");
        self.node_mut(id).term_sent = Some(Instant::now());
    }

    /// Freezes node `id` with SIGSTOP (a long GC pause or a stalled VM): its sockets stay
    /// open, it answers nothing, and it resumes with its old view of the cluster.
    ///
    /// # Panics
    ///
    /// When the node is not running.
    pub fn pause(&mut self, id: u64) {
        let pid = self.signal(id, libc::SIGSTOP, "SIGSTOP");
        // kill(2) only queues the signal: until every thread has stopped, the node may still
        // answer a request sent right after this call (seen in CI: a join served 1 ms after
        // the SIGSTOP). Wait for the stop itself; WNOWAIT leaves it (and any exit) for the
        // reaper to see.
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
        assert_eq!(
            rc,
            0,
            "waiting for node {id} (pid {pid}) to stop: {}",
            std::io::Error::last_os_error()
        );
        self.node_mut(id)
            .mark_log(&format!("psubd-tests: node {id} paused with SIGSTOP"));
    }

    /// Resumes a paused node with SIGCONT.
    ///
    /// # Panics
    ///
    /// When the node is not running.
    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT, "SIGCONT");
        self.node_mut(id)
            .mark_log(&format!("psubd-tests: node {id} resumed with SIGCONT"));
    }

    /// Sends `signal` to node `id`'s process; returns its pid.
    fn signal(&mut self, id: u64, signal: libc::c_int, name: &str) -> libc::pid_t {
        let pid = match &self.node_ref(id).child {
            Some(c) => c.id(),
            None => panic!("{name} to node {id}: it is not running"),
        };
        let pid = libc::pid_t::try_from(pid).expect("a child pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
        // unreaped child, so it cannot name a recycled process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({name}) to node {id} (pid {pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        pid
    }

    async fn reap(&mut self, id: u64) -> ExitStatus {
        let start = self.node_ref(id).term_sent.unwrap_or_else(Instant::now);
        loop {
            let node = self.node_mut(id);
            let child = node
                .child
                .as_mut()
                .unwrap_or_else(|| panic!("stop({id}): node {id} is not running"));
            match child.try_wait() {
                Ok(Some(status)) => {
                    node.child = None;
                    node.mark_log(&format!(
                        "psubd-tests: node {id} exited with {status} {:?} after SIGTERM",
                        start.elapsed()
                    ));
                    return status;
                }
                Ok(None) if start.elapsed() < STOP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    node.child = None;
                    panic!(
                        "node {id} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}",
                        self.log_tails()
                    );
                }
            }
        }
    }

    fn node_ref(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        let n = self.nodes.len();
        self.nodes
            .iter_mut()
            .find(|nd| nd.id == id)
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {n}"))
    }
}

impl Node {
    /// Appends a fixture event line to the node's log so the log reads as a timeline.
    fn mark_log(&self, what: &str) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            let _ = writeln!(f, "===== [{ms}] {what} =====");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
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

/// The last `lines` lines of a file (reading at most [`LOG_TAIL_BYTES`] from its end).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::from("(log unreadable)");
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::from("(log unreadable)");
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
