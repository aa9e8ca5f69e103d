//! Three `RaftNode`s in one process over real TCP on loopback, each on its own sled
//! directory: elections, replication, failover, restart, catch-up by snapshot, partitions
//! and several groups at once.
//!
//! Reference: docs/architecture.md § Raft groups, § Peer transport, § Failure contract.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::ServerState;
use psubd_raft::types::typ;
use psubd_raft::{
    ClusterSecret, Command, CommandResponse, GroupId, GroupLogic, NodeId, NodeStorage, PeerService,
    PeerTls, RaftNode, RaftNodeConfig, RaftTuning, SnapshotPlan, StorageIoError, TransportError,
    Tree, WriteBatch,
};

// ---------------------------------------------------------------------------------------
// Test logic: the list of applied commands, kept in the state tree and mirrored in memory.
// ---------------------------------------------------------------------------------------

/// Applied commands of one group on one node, in log order: (log index, command).
type Applied = Arc<Mutex<Vec<(u64, Bytes)>>>;

const ENTRY_PREFIX: u8 = b'e';

fn entry_key(index: u64) -> Vec<u8> {
    let mut key = vec![ENTRY_PREFIX];
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Appends every command to a list. The response is the list's new length.
struct ListLogic {
    applied: Applied,
    /// Highest index applied (the snapshot's lazy range stops after it).
    last_index: u64,
}

impl GroupLogic for ListLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        let mut list = Vec::new();
        for pair in state.range(&[ENTRY_PREFIX], Some(&[ENTRY_PREFIX + 1])) {
            let (key, value) = pair?;
            let index = u64::from_be_bytes(key[1..9].try_into().unwrap());
            list.push((index, Bytes::copy_from_slice(&value)));
        }
        self.last_index = list.last().map(|(i, _)| *i).unwrap_or(0);
        *self.applied.lock().unwrap() = list;
        Ok(())
    }

    fn apply(
        &mut self,
        index: u64,
        command: &Command,
        _state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        batch.insert(entry_key(index), command.0.to_vec());
        let mut list = self.applied.lock().unwrap();
        list.push((index, command.0.clone()));
        self.last_index = index;
        Ok(CommandResponse(Bytes::copy_from_slice(
            &(list.len() as u64).to_be_bytes(),
        )))
    }

    fn applied(&mut self) {}

    fn snapshot_plan(&self, _state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        // Keys up to the last applied index never change again; later ones are outside.
        Ok(SnapshotPlan {
            pinned: Vec::new(),
            lazy: Some((entry_key(0), Some(entry_key(self.last_index + 1)))),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

/// Waits until `check` yields a value, polling; panics naming `what` after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reserves loopback ports by binding them all at once, then releasing them.
fn reserve_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

struct Running {
    node: RaftNode,
    applied: HashMap<GroupId, Applied>,
}

struct Cluster {
    _tmp: tempfile::TempDir,
    dirs: BTreeMap<NodeId, PathBuf>,
    peers: BTreeMap<NodeId, SocketAddr>,
    tuning: RaftTuning,
    /// The cluster secret and peer TLS each node holds.
    auth: BTreeMap<NodeId, (ClusterSecret, Option<PeerTls>)>,
    nodes: BTreeMap<NodeId, Option<Running>>,
}

/// The secret every node of a test cluster holds unless a test says otherwise.
fn our_secret() -> ClusterSecret {
    ClusterSecret::new(b"the in-process test cluster's secret").unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Cluster {
    async fn start(n: u64, tuning: RaftTuning) -> Cluster {
        Self::start_with_secrets(n, tuning, |_id| our_secret()).await
    }

    /// As [`Cluster::start`], node `id` holding `secret(id)`.
    async fn start_with_secrets(
        n: u64,
        tuning: RaftTuning,
        secret: impl Fn(NodeId) -> ClusterSecret,
    ) -> Cluster {
        Self::start_with_auth(n, tuning, |id| (secret(id), None)).await
    }

    /// As [`Cluster::start`], node `id` holding the secret and peer TLS of `auth(id)`.
    async fn start_with_auth(
        n: u64,
        tuning: RaftTuning,
        auth: impl Fn(NodeId) -> (ClusterSecret, Option<PeerTls>),
    ) -> Cluster {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let addrs = reserve_ports(n as usize);
        let peers: BTreeMap<NodeId, SocketAddr> = (1..=n).zip(addrs).collect();
        let dirs = (1..=n)
            .map(|id| (id, tmp.path().join(format!("node-{id}"))))
            .collect();
        let mut cluster = Cluster {
            _tmp: tmp,
            dirs,
            peers,
            tuning,
            auth: (1..=n).map(|id| (id, auth(id))).collect(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.start_node(id).await;
        }
        cluster
    }

    fn members(&self) -> BTreeSet<NodeId> {
        self.peers.keys().copied().collect()
    }

    async fn start_node(&mut self, id: NodeId) {
        let config = RaftNodeConfig {
            id,
            listen: self.peers[&id],
            peers: self
                .peers
                .iter()
                .map(|(&id, &addr)| (id, addr.into()))
                .collect(),
            data_dir: self.dirs[&id].clone(),
            cache_capacity_bytes: 16 * 1024 * 1024,
            min_free_bytes: 0,
            cluster_secret: self.auth[&id].0.clone(),
            peer_tls: self.auth[&id].1.clone(),
            insecure_peers: false,
            tuning: self.tuning.clone(),
        };
        // A restarted node reopens the directory its previous incarnation, in this same
        // process, released a moment ago. (The wait blocks: off the runtime's workers.)
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            NodeStorage::wait_until_released(&dir, Duration::from_secs(10))
        })
        .await
        .unwrap()
        .unwrap();
        let node = RaftNode::start(config).await.unwrap();
        self.nodes.insert(
            id,
            Some(Running {
                node,
                applied: HashMap::new(),
            }),
        );
    }

    fn running(&self, id: NodeId) -> &Running {
        self.nodes[&id].as_ref().expect("node is running")
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.running(id).node
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    async fn open_group_on(&mut self, id: NodeId, group: GroupId, initialize: bool) {
        let applied: Applied = Arc::default();
        let logic = ListLogic {
            applied: applied.clone(),
            last_index: 0,
        };
        let members = self.members();
        let running = self.nodes.get_mut(&id).unwrap().as_mut().unwrap();
        running
            .node
            .open_group(group, Box::new(logic), members, initialize)
            .await
            .unwrap();
        running.applied.insert(group, applied);
    }

    async fn open_group(&mut self, group: GroupId) {
        for id in self.live_ids() {
            self.open_group_on(id, group, true).await;
        }
    }

    fn raft(&self, id: NodeId, group: GroupId) -> typ::Raft {
        self.node(id).group(group).expect("group is open")
    }

    /// A client of `group` over the handles of every live node.
    fn client(&self, group: GroupId) -> GroupClient {
        self.client_where(group, |_| true)
    }

    /// A client of `group` that never talks to `cut_off` (the isolated side of a partition
    /// may still believe it leads).
    fn client_without(&self, group: GroupId, cut_off: NodeId) -> GroupClient {
        self.client_where(group, |id| id != cut_off)
    }

    fn client_where(&self, group: GroupId, keep: impl Fn(NodeId) -> bool) -> GroupClient {
        GroupClient {
            rafts: self
                .live_ids()
                .into_iter()
                .filter(|id| keep(*id))
                .map(|id| (id, self.raft(id, group)))
                .collect(),
        }
    }

    fn applied(&self, id: NodeId, group: GroupId) -> Vec<(u64, Bytes)> {
        self.running(id).applied[&group].lock().unwrap().clone()
    }

    /// The leader every live node agrees on, once there is one.
    fn agreed_leader(&self, group: GroupId) -> Option<NodeId> {
        let mut leader = None;
        for id in self.live_ids() {
            let metrics = self.raft(id, group).metrics().borrow().clone();
            let seen = metrics.current_leader?;
            if *leader.get_or_insert(seen) != seen {
                return None;
            }
        }
        let leader = leader?;
        if !self.live_ids().contains(&leader) {
            return None;
        }
        let state = self.raft(leader, group).metrics().borrow().state;
        (state == ServerState::Leader).then_some(leader)
    }

    async fn wait_leader(&self, group: GroupId, timeout: Duration) -> NodeId {
        eventually(timeout, "an agreed leader", || async {
            self.agreed_leader(group)
        })
        .await
    }

    async fn shutdown_node(&mut self, id: NodeId) {
        if let Some(running) = self.nodes.get_mut(&id).unwrap().take() {
            running.node.shutdown().await;
        }
    }

    /// Cuts `id` off from every other node, in both directions, on every node.
    fn isolate(&self, id: NodeId) {
        for other in self.live_ids() {
            if other != id {
                self.node(id).faults().cut(other);
                self.node(other).faults().cut(id);
            }
        }
    }

    fn heal_all(&self) {
        for id in self.live_ids() {
            self.node(id).faults().heal_all();
        }
    }

    /// Waits until every live node has applied exactly the leader's list.
    async fn wait_identical(&self, group: GroupId, expected_len: usize, timeout: Duration) {
        eventually(
            timeout,
            "identical applied lists on every live node",
            || async {
                let ids = self.live_ids();
                let first = self.applied(ids[0], group);
                if first.len() != expected_len {
                    return None;
                }
                ids.iter()
                    .all(|id| self.applied(*id, group) == first)
                    .then_some(())
            },
        )
        .await
    }

    async fn shutdown(mut self) {
        for id in self.live_ids() {
            self.shutdown_node(id).await;
        }
    }
}

/// A client of one group that follows leader changes as a psubd node does. A write refused
/// with `ForwardToLeader` was never appended (or its entry was truncated), so retrying it at
/// the named leader cannot apply it twice. Under a loaded CI machine a starved heartbeat can
/// move leadership in the middle of a burst; the tests here are about replication, not about
/// leadership never moving.
#[derive(Clone)]
struct GroupClient {
    rafts: BTreeMap<NodeId, typ::Raft>,
}

/// How many leader changes one write follows before the test gives up.
const MAX_LEADER_HOPS: usize = 20;

impl GroupClient {
    /// A node that is in the Leader state now (a node can name a leader it has not heard from
    /// yet, or itself while its election is still open).
    async fn leader(&self) -> NodeId {
        eventually(Duration::from_secs(10), "a reachable leader", || async {
            self.rafts
                .iter()
                .find(|(_, raft)| raft.metrics().borrow().state == ServerState::Leader)
                .map(|(id, _)| *id)
        })
        .await
    }

    /// Commits `payload`, following the leader until one accepts it.
    async fn write(&self, target: &mut NodeId, payload: Bytes) {
        for _ in 0..MAX_LEADER_HOPS {
            match self.rafts[target]
                .client_write(Command(payload.clone()))
                .await
            {
                Ok(_) => return,
                Err(openraft::error::RaftError::APIError(
                    openraft::error::ClientWriteError::ForwardToLeader(forward),
                )) => {
                    *target = match forward.leader_id.filter(|l| self.rafts.contains_key(l)) {
                        Some(leader) if leader != *target => leader,
                        _ => self.leader().await,
                    };
                }
                Err(other) => panic!("write failed: {other:?}"),
            }
        }
        panic!("leadership moved {MAX_LEADER_HOPS} times during one write");
    }
}

/// Writes `count` commands to `group` from `writers` concurrent tasks, following the leader.
/// Returns the payloads written.
async fn write_concurrently(
    client: &GroupClient,
    tag: &str,
    count: usize,
    writers: usize,
) -> Vec<Bytes> {
    let start = client.leader().await;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut target = start;
            let mut written = Vec::new();
            let mut i = w;
            while i < count {
                let payload = Bytes::from(format!("{tag}-{i}"));
                client.write(&mut target, payload.clone()).await;
                written.push(payload);
                i += writers;
            }
            written
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// The first index of the oldest log segment file in a group's log directory (0 if none).
fn oldest_segment(group_log: &std::path::Path) -> u64 {
    std::fs::read_dir(group_log)
        .map(|files| {
            files
                .filter_map(|f| {
                    f.ok()?
                        .file_name()
                        .to_str()?
                        .strip_suffix(".seg")?
                        .parse()
                        .ok()
                })
                .min()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn election_timeout(tuning: &RaftTuning) -> Duration {
    Duration::from_millis(tuning.election_max_ms)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_one_leader_and_connect() {
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    eventually(Duration::from_secs(10), "all peers connected", || async {
        cluster
            .live_ids()
            .iter()
            .all(|id| cluster.node(*id).connected_peers().len() == 2)
            .then_some(())
    })
    .await;
    cluster.open_group(0).await;
    let leader = cluster.wait_leader(0, Duration::from_secs(10)).await;
    assert!((1..=3).contains(&leader));
    // Exactly one node considers itself leader.
    let leaders = cluster
        .live_ids()
        .iter()
        .filter(|id| cluster.raft(**id, 0).metrics().borrow().state == ServerState::Leader)
        .count();
    assert_eq!(leaders, 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_writes_are_replicated_identically() {
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    cluster.open_group(7).await;
    let leader = cluster.wait_leader(7, Duration::from_secs(10)).await;
    let started = Instant::now();
    let written = write_concurrently(&cluster.client(7), "w", 10_000, 64).await;
    eprintln!("10000 writes committed in {:?}", started.elapsed());
    cluster
        .wait_identical(7, 10_000, Duration::from_secs(30))
        .await;
    // Every written command is applied exactly once, and log indexes ascend.
    let list = cluster.applied(leader, 7);
    let applied: BTreeSet<&Bytes> = list.iter().map(|(_, c)| c).collect();
    let wrote: BTreeSet<&Bytes> = written.iter().collect();
    assert_eq!(applied, wrote);
    assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_shutdown_elects_new_leader_within_two_election_timeouts_and_keeps_entries() {
    // docs/architecture.md § Failure contract: acknowledged writes survive the loss of a minority.
    let tuning = RaftTuning::default();
    let mut cluster = Cluster::start(3, tuning.clone()).await;
    cluster.open_group(1).await;
    let before = write_concurrently(&cluster.client(1), "before", 300, 16).await;
    // Every follower holds the whole log, so the measure is of the election alone (a
    // lagging follower's refused candidacy would add a round).
    cluster
        .wait_identical(1, 300, Duration::from_secs(10))
        .await;
    let old = cluster.wait_leader(1, Duration::from_secs(10)).await;

    let lost_at = Instant::now();
    cluster.shutdown_node(old).await;
    // openraft 0.9: a follower that had a leader waits its leader lease (election_max_ms)
    // plus its own election timeout (at most election_max_ms) after the last heartbeat, and
    // checks on a tick of 1.5 heartbeats: two election timeouts and one tick in all.
    let bound = 2 * election_timeout(&tuning) + Duration::from_millis(tuning.heartbeat_ms * 3 / 2);
    let new = cluster.wait_leader(1, bound + Duration::from_secs(5)).await;
    let failover = lost_at.elapsed();
    eprintln!("failover took {failover:?} (bound {bound:?})");
    assert_ne!(new, old);
    assert!(
        failover <= bound,
        "failover took {failover:?}, bound {bound:?}"
    );

    let after = write_concurrently(&cluster.client(1), "after", 100, 8).await;
    cluster
        .wait_identical(1, 400, Duration::from_secs(10))
        .await;
    let list: BTreeSet<Bytes> = cluster
        .applied(new, 1)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    for payload in before.iter().chain(after.iter()) {
        assert!(list.contains(payload), "committed entry lost");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_catches_up_from_its_data_dir() {
    // Small log segments, so the restarted node reads its log back from many files.
    let tuning = RaftTuning {
        log_segment_bytes: 4096,
        ..RaftTuning::default()
    };
    let mut cluster = Cluster::start(3, tuning).await;
    cluster.open_group(2).await;
    cluster.wait_leader(2, Duration::from_secs(10)).await;
    write_concurrently(&cluster.client(2), "a", 200, 8).await;
    cluster
        .wait_identical(2, 200, Duration::from_secs(10))
        .await;
    let leader = cluster.wait_leader(2, Duration::from_secs(10)).await;

    let follower = *cluster.live_ids().iter().find(|id| **id != leader).unwrap();
    cluster.shutdown_node(follower).await;
    write_concurrently(&cluster.client(2), "b", 300, 8).await;

    cluster.start_node(follower).await;
    cluster.open_group_on(follower, 2, true).await;
    // The restarted node reloads its 200 entries from disk ...
    assert!(cluster.applied(follower, 2).len() >= 200);
    // ... and receives the 300 it missed.
    cluster
        .wait_identical(2, 500, Duration::from_secs(15))
        .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_catches_up_through_a_snapshot() {
    let tuning = RaftTuning {
        snapshot_every_entries: 100,
        keep_logs_after_snapshot: 10,
        purge_batch_size: 16,
        // Small log segments, so purging behind the snapshot deletes whole files.
        log_segment_bytes: 2048,
        ..RaftTuning::default()
    };
    let mut cluster = Cluster::start(3, tuning).await;
    cluster.open_group(3).await;
    let leader = cluster.wait_leader(3, Duration::from_secs(10)).await;
    let wiped = *cluster.live_ids().iter().find(|id| **id != leader).unwrap();
    cluster.shutdown_node(wiped).await;
    std::fs::remove_dir_all(&cluster.dirs[&wiped]).unwrap();

    write_concurrently(&cluster.client(3), "s", 1_000, 16).await;
    // The leader's log behind its snapshot is purged, so only a snapshot can catch up.
    eventually(
        Duration::from_secs(15),
        "leader snapshot and purge",
        || async {
            let m = cluster.raft(leader, 3).metrics().borrow().clone();
            (m.snapshot.is_some() && m.purged.map(|p| p.index).unwrap_or(0) > 10).then_some(())
        },
    )
    .await;
    // The purge deleted the leader's oldest log segment files.
    let leader_log = cluster.dirs[&leader].join("raft-log").join("3");
    eventually(
        Duration::from_secs(15),
        "purged log segments deleted",
        || async { (oldest_segment(&leader_log) > 1).then_some(()) },
    )
    .await;

    cluster.start_node(wiped).await;
    cluster.open_group_on(wiped, 3, false).await;
    cluster
        .wait_identical(3, 1_000, Duration::from_secs(30))
        .await;
    let m = cluster.raft(wiped, 3).metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "the wiped node installed no snapshot");
    cluster.shutdown().await;
}

/// docs/operations.md § Security: peers prove they hold the cluster secret. A node configured
/// with another one is never connected, takes no part in a group, and the others go on
/// with a quorum of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_another_cluster_secret_never_joins() {
    let cluster = Cluster::start_with_secrets(3, RaftTuning::default(), |id| {
        if id == 3 {
            ClusterSecret::new(b"a secret from another cluster").unwrap()
        } else {
            our_secret()
        }
    })
    .await;
    assert_never_joins(cluster, 3).await;
}

/// The other nodes of a three-node cluster connect and replicate without `outsider`, which
/// connects to nobody, applies nothing and never hears of a leader.
async fn assert_never_joins(mut cluster: Cluster, outsider: NodeId) {
    let (a, b) = match outsider {
        1 => (2, 3),
        2 => (1, 3),
        _ => (1, 2),
    };
    eventually(
        Duration::from_secs(10),
        "the two other nodes connected",
        || async {
            (cluster.node(a).connected_peers() == vec![b]
                && cluster.node(b).connected_peers() == vec![a])
            .then_some(())
        },
    )
    .await;
    cluster.open_group(6).await;
    let majority = cluster.client_without(6, outsider);
    write_concurrently(&majority, "w", 40, 4).await;
    eventually(
        Duration::from_secs(10),
        "both members applied every write",
        || async {
            (cluster.applied(a, 6).len() == 40 && cluster.applied(b, 6).len() == 40).then_some(())
        },
    )
    .await;
    // By now the outsider's link has been dialled several times (a dial backs off from
    // tens of milliseconds) and every attempt was refused.
    assert!(cluster.node(outsider).connected_peers().is_empty());
    assert!(cluster.node(a).connected_peers() == vec![b]);
    assert!(
        cluster.applied(outsider, 6).is_empty(),
        "the outsider applied nothing"
    );
    assert_eq!(
        cluster.raft(outsider, 6).metrics().borrow().current_leader,
        None,
        "the outsider never heard of a leader"
    );
    cluster.shutdown().await;
}

/// Test certificates: a CA and node certificates it signs, written as PEM files.
struct TestCa {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        TestCa { dir, ca, key }
    }

    /// The peer TLS of a node holding a certificate for `name`, trusting `trusted`'s CA.
    fn peer_tls(&self, name: &str, trusted: &TestCa) -> PeerTls {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        let (cert_path, key_path) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        PeerTls::from_pem_files(&cert_path, &key_path, &trusted.dir.path().join("ca.pem")).unwrap()
    }
}

/// docs/operations.md § Peer TLS: nodes holding certificates of the cluster's CA that name
/// them (`psubd-node-<id>`) connect, with no cluster secret, and replicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_certificates_of_the_cluster_ca_replicate_over_tls() {
    let ca = TestCa::new();
    let mut cluster = Cluster::start_with_auth(3, RaftTuning::default(), |id| {
        (
            ClusterSecret::none(),
            Some(ca.peer_tls(&format!("psubd-node-{id}"), &ca)),
        )
    })
    .await;
    cluster.open_group(6).await;
    write_concurrently(&cluster.client(6), "w", 40, 4).await;
    cluster.wait_identical(6, 40, Duration::from_secs(10)).await;
    cluster.shutdown().await;
}

/// A node whose certificate (of the cluster's CA) names another node cannot pass itself off
/// as node 1: the nodes it dials refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_certificate_names_another_node_never_joins() {
    let ca = TestCa::new();
    let cluster = Cluster::start_with_auth(3, RaftTuning::default(), |id| {
        let name = if id == 1 {
            "psubd-node-4".to_string()
        } else {
            format!("psubd-node-{id}")
        };
        (ClusterSecret::none(), Some(ca.peer_tls(&name, &ca)))
    })
    .await;
    assert_never_joins(cluster, 1).await;
}

/// A node whose certificate comes from another CA is refused by the nodes that dial it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_certificate_of_another_ca_never_joins() {
    let (ca, other) = (TestCa::new(), TestCa::new());
    let cluster = Cluster::start_with_auth(3, RaftTuning::default(), |id| {
        let issuer = if id == 3 { &other } else { &ca };
        (
            ClusterSecret::none(),
            Some(issuer.peer_tls(&format!("psubd-node-{id}"), &ca)),
        )
    })
    .await;
    assert_never_joins(cluster, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_minority_cannot_commit_and_heals() {
    // docs/architecture.md § Failure contract: a minority side never reports a silent success.
    let tuning = RaftTuning::default();
    let mut cluster = Cluster::start(3, tuning.clone()).await;
    cluster.open_group(4).await;
    write_concurrently(&cluster.client(4), "pre", 50, 4).await;
    let old = cluster.wait_leader(4, Duration::from_secs(10)).await;

    cluster.isolate(old);
    let doomed = Bytes::from_static(b"minority-write");
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        cluster.raft(old, 4).client_write(Command(doomed.clone())),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "the isolated leader committed a write"
    );

    // The majority elects a new leader and goes on.
    eventually(Duration::from_secs(10), "a majority leader", || async {
        cluster
            .live_ids()
            .into_iter()
            .filter(|id| *id != old)
            .find(|id| cluster.raft(*id, 4).metrics().borrow().state == ServerState::Leader)
    })
    .await;
    write_concurrently(&cluster.client_without(4, old), "post", 50, 4).await;

    cluster.heal_all();
    cluster
        .wait_identical(4, 100, Duration::from_secs(20))
        .await;
    let leader = cluster.wait_leader(4, Duration::from_secs(10)).await;
    assert_ne!(
        leader, old,
        "the stale leader came back as leader without a new election"
    );
    for id in cluster.live_ids() {
        assert!(
            cluster.applied(id, 4).iter().all(|(_, c)| c != &doomed),
            "the minority write was applied on node {id}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_groups_with_leaders_on_different_nodes() {
    // Placement: openraft 0.9 followers refuse votes while their leader lease (the election
    // timeout) runs, so `trigger().elect()` cannot move an established leader. A leader is
    // placed by opening the group passively (initialize = false) on the other members first
    // and then initializing on the intended node, which elects itself at once.
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    let groups: Vec<GroupId> = vec![10, 11, 12, 13];
    let intended = |g: GroupId| -> NodeId { (g % 3) + 1 };
    for g in &groups {
        for id in cluster.live_ids() {
            if id != intended(*g) {
                cluster.open_group_on(id, *g, false).await;
            }
        }
        cluster.open_group_on(intended(*g), *g, true).await;
    }
    for g in &groups {
        let want = intended(*g);
        let raft = cluster.raft(want, *g);
        let mut nudged = false;
        eventually(Duration::from_secs(20), "the intended leader", || {
            let raft = raft.clone();
            let leader = cluster.agreed_leader(*g);
            let nudge = !nudged && leader.is_some_and(|l| l != want);
            nudged |= nudge;
            async move {
                match leader {
                    Some(l) if l == want => Some(()),
                    // Only if an election raced the placement: ask once, the lease permitting.
                    Some(_) if nudge => {
                        raft.trigger().elect().await.unwrap();
                        None
                    }
                    _ => None,
                }
            }
        })
        .await;
    }
    let leaders: BTreeSet<NodeId> = groups
        .iter()
        .map(|g| cluster.agreed_leader(*g).unwrap())
        .collect();
    assert_eq!(leaders.len(), 3, "leaders are not spread over the nodes");

    let mut writes = Vec::new();
    for g in &groups {
        let client = cluster.client(*g);
        let tag = format!("g{g}");
        writes.push(async move { write_concurrently(&client, &tag, 200, 8).await });
    }
    futures::future::join_all(writes).await;
    for g in &groups {
        cluster
            .wait_identical(*g, 200, Duration::from_secs(15))
            .await;
        // No group saw another group's commands.
        let prefix = format!("g{g}-");
        assert!(cluster
            .applied(1, *g)
            .iter()
            .all(|(_, c)| c.starts_with(prefix.as_bytes())));
    }
    cluster.shutdown().await;
}

struct Echo;

impl PeerService for Echo {
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Bytes> {
        Box::pin(async move {
            let mut answer = format!("from {from}: ").into_bytes();
            answer.extend_from_slice(&body);
            Bytes::from(answer)
        })
    }
}

/// Never answers: a request to it stays pending until its connection drops.
struct Hang;

impl PeerService for Hang {
    fn handle(&self, _from: NodeId, _body: Bytes) -> BoxFuture<'static, Bytes> {
        Box::pin(futures::future::pending())
    }
}

/// A forwarded request from `caller` to `peer` (20 s deadline), running on its own: its
/// result and how long it took.
fn call_in_background(
    caller: RaftNode,
    peer: NodeId,
) -> tokio::task::JoinHandle<(Result<Bytes, TransportError>, Duration)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let result = caller
            .call_peer(peer, Bytes::from_static(b"x"), Duration::from_secs(20))
            .await;
        (result, started.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_requests_reach_the_peer_service_and_fail_fast_when_unreachable() {
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    eventually(
        Duration::from_secs(10),
        "1 connected to 2 and 3",
        || async { (cluster.node(1).connected_peers() == vec![2, 3]).then_some(()) },
    )
    .await;
    let timeout = Duration::from_secs(2);

    // No service yet: a refusal, not a hang.
    let refused = cluster
        .node(1)
        .call_peer(2, Bytes::from_static(b"x"), timeout)
        .await;
    assert!(matches!(
        refused,
        Err(TransportError::Refused { peer: 2, .. })
    ));

    cluster.node(2).set_service(Arc::new(Echo));
    let answer = cluster
        .node(1)
        .call_peer(2, Bytes::from_static(b"hi"), timeout)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"from 1: hi");

    // Group state: nothing stored for group 9 yet; something once it ran.
    assert!(!cluster
        .node(1)
        .peer_has_group_state(3, 9, timeout)
        .await
        .unwrap());
    cluster.open_group(9).await;
    cluster.wait_leader(9, Duration::from_secs(10)).await;
    assert!(cluster
        .node(1)
        .peer_has_group_state(3, 9, timeout)
        .await
        .unwrap());

    // A request pending on a connection that drops fails at once, not at its deadline.
    cluster.node(3).set_service(Arc::new(Hang));
    let pending = call_in_background(cluster.node(1).clone(), 3);
    // Give the request time to reach node 3 (it never answers), then stop node 3.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.shutdown_node(3).await;
    let (result, took) = pending.await.unwrap();
    assert!(
        matches!(result, Err(TransportError::ConnectionClosed { peer: 3 })),
        "{result:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "pending request failed only after {took:?}"
    );

    // A stopped peer: the call fails at once, without waiting out the timeout.
    eventually(Duration::from_secs(10), "1 notices 3 is gone", || async {
        (!cluster.node(1).connected_peers().contains(&3)).then_some(())
    })
    .await;
    let started = Instant::now();
    let gone = cluster
        .node(1)
        .call_peer(3, Bytes::from_static(b"x"), Duration::from_secs(5))
        .await;
    assert!(matches!(gone, Err(TransportError::Unreachable { peer: 3 })));
    assert!(started.elapsed() < Duration::from_millis(500));
    cluster.shutdown().await;
}

/// A peer not heard from for twice the keepalive (cut off, or stopped without closing the
/// socket) gets no forwarded request: the call fails at once as unreachable (nothing was
/// sent, so the caller may go elsewhere) instead of waiting until the connection is given
/// up; once the peer is heard again, calls go through. A request already waiting on a
/// peer that falls silent fails then too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_requests_skip_a_silent_peer() {
    let tuning = RaftTuning::default();
    let suspect_after = Duration::from_millis(2 * tuning.keepalive_ms);
    let cluster = Cluster::start(3, tuning).await;
    eventually(
        Duration::from_secs(10),
        "1 connected to 2 and 3",
        || async { (cluster.node(1).connected_peers() == vec![2, 3]).then_some(()) },
    )
    .await;
    cluster.node(2).set_service(Arc::new(Echo));
    // Short, so the probes below end well before the connection is given up (5 s).
    let timeout = Duration::from_millis(300);
    // Node 1 stops taking in what node 2 sends: node 2 falls silent, the connection stays.
    cluster.node(1).faults().cut(2);
    let refused = eventually(Duration::from_secs(10), "2 suspected by 1", || async {
        let started = Instant::now();
        match cluster
            .node(1)
            .call_peer(2, Bytes::from_static(b"x"), timeout)
            .await
        {
            Err(TransportError::Unreachable { peer: 2 }) => Some(started.elapsed()),
            _ => None,
        }
    })
    .await;
    assert!(
        refused < Duration::from_millis(100),
        "refused after {refused:?}"
    );
    assert!(
        cluster.node(1).connected_peers().contains(&2),
        "suspected within {suspect_after:?}, before the connection is given up"
    );
    cluster.node(1).faults().heal_all();
    let answer = eventually(Duration::from_secs(10), "2 heard again", || async {
        cluster
            .node(1)
            .call_peer(2, Bytes::from_static(b"hi"), timeout)
            .await
            .ok()
    })
    .await;
    assert_eq!(&answer[..], b"from 1: hi");

    // A request waiting for an answer when its peer falls silent fails once the peer is
    // suspect, not when the connection is given up (5 s).
    cluster.node(3).set_service(Arc::new(Hang));
    let pending = call_in_background(cluster.node(1).clone(), 3);
    cluster.node(1).faults().cut(3);
    let (result, took) = pending.await.unwrap();
    assert!(
        matches!(result, Err(TransportError::ConnectionClosed { peer: 3 })),
        "{result:?}"
    );
    assert!(
        took < Duration::from_millis(4_000),
        "the pending request failed only after {took:?} (suspect after {suspect_after:?})"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_lossy_links_still_replicate_identically() {
    // docs/architecture.md § Failure contract: a slow peer degrades throughput, never correctness.
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    cluster.open_group(5).await;
    let leader = cluster.wait_leader(5, Duration::from_secs(10)).await;
    for id in cluster.live_ids() {
        for other in cluster.live_ids() {
            if other != id {
                cluster
                    .node(id)
                    .faults()
                    .delay(other, Duration::from_millis(20));
                cluster.node(id).faults().drop(other, 0.05);
            }
        }
    }
    // Writes may fail while a lost frame forces a re-election; retry those (a retried
    // write may then be applied twice, so count distinct payloads).
    let raft = cluster.raft(leader, 5);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let raft = raft.clone();
        let nodes: Vec<RaftNode> = cluster
            .live_ids()
            .iter()
            .map(|id| cluster.node(*id).clone())
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut target = raft;
            for i in 0..25 {
                let payload = Bytes::from(format!("lossy-{w}-{i}"));
                loop {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        target.client_write(Command(payload.clone())),
                    )
                    .await
                    {
                        Ok(Ok(_)) => break,
                        _ => {
                            // Find whoever leads now and retry there.
                            for n in &nodes {
                                let r = n.group(5).unwrap();
                                if r.metrics().borrow().state == ServerState::Leader {
                                    target = r;
                                }
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cluster.heal_all();
    eventually(
        Duration::from_secs(20),
        "all 200 writes applied everywhere, identically",
        || async {
            let ids = cluster.live_ids();
            let first = cluster.applied(ids[0], 5);
            let distinct: BTreeSet<&Bytes> = first.iter().map(|(_, c)| c).collect();
            (distinct.len() == 200 && ids.iter().all(|id| cluster.applied(*id, 5) == first))
                .then_some(())
        },
    )
    .await;
    cluster.shutdown().await;
}

/// Hands `group`'s leadership from `from` to a caught-up follower (`preferred` if given),
/// the follower's part called in process as a peer message would.
async fn hand_over(
    cluster: &Cluster,
    group: GroupId,
    from: NodeId,
    preferred: Option<NodeId>,
    within: Duration,
) -> psubd_raft::HandOver {
    let until = tokio::time::Instant::now() + within;
    cluster
        .node(from)
        .hand_over(group, preferred, until, |to, last| {
            cluster.node(to).take_leadership(group, from, last)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_hands_over_to_a_caught_up_follower_at_once_and_keeps_every_entry() {
    // docs/architecture.md § Raft groups (handing leadership over).
    let tuning = RaftTuning::default();
    let mut cluster = Cluster::start(3, tuning.clone()).await;
    cluster.open_group(1).await;
    let before = write_concurrently(&cluster.client(1), "before", 200, 8).await;
    let old = cluster.wait_leader(1, Duration::from_secs(10)).await;
    let follower = *cluster
        .members()
        .iter()
        .find(|id| **id != old)
        .expect("a follower");

    // A fenced group refuses proposals on this node only while it is handed over.
    assert!(!cluster.node(old).is_fenced(1));
    // Within the leader's lease the handover first waits it out; then it is one round trip
    // and an election at the chosen follower, far below an election timeout.
    let outcome = hand_over(&cluster, 1, old, Some(follower), Duration::from_secs(5)).await;
    assert_eq!(outcome, psubd_raft::HandOver::Moved { to: follower });
    assert!(
        !cluster.node(old).is_fenced(1),
        "the fence lifts after the move"
    );
    let new = cluster.wait_leader(1, Duration::from_secs(2)).await;
    assert_eq!(new, follower, "the chosen follower leads");

    // Leadership older than its lease moves without any wait.
    tokio::time::sleep(election_timeout(&tuning)).await;
    let back_at = Instant::now();
    let outcome = hand_over(&cluster, 1, new, Some(old), Duration::from_secs(5)).await;
    let took = back_at.elapsed();
    assert_eq!(outcome, psubd_raft::HandOver::Moved { to: old });
    assert_eq!(cluster.wait_leader(1, Duration::from_secs(2)).await, old);
    eprintln!("handover took {took:?}");
    assert!(
        took < election_timeout(&tuning),
        "a handover took {took:?}, an election timeout is {:?}",
        election_timeout(&tuning)
    );

    // Not the leader: nothing to do; a follower asked by a node it does not follow declines.
    assert_eq!(
        hand_over(&cluster, 1, new, None, Duration::from_secs(1)).await,
        psubd_raft::HandOver::NotLeader
    );
    assert!(!cluster.node(new).take_leadership(1, new, 0).await);

    let after = write_concurrently(&cluster.client(1), "after", 100, 8).await;
    cluster
        .wait_identical(1, 300, Duration::from_secs(10))
        .await;
    let list: BTreeSet<Bytes> = cluster
        .applied(old, 1)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    for payload in before.iter().chain(after.iter()) {
        assert!(list.contains(payload), "committed entry lost");
    }
    cluster.shutdown().await;
}

/// Idle groups go quiet with their openraft tick tasks held still, and such a group still
/// takes writes at once and replaces a leader whose node stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_groups_hold_their_tick_tasks_and_still_write_and_fail_over() {
    let mut cluster = Cluster::start(3, RaftTuning::default()).await;
    for group in [0, 1] {
        cluster.open_group(group).await;
        cluster.wait_leader(group, Duration::from_secs(10)).await;
    }
    let all_quiet = |cluster: &Cluster| {
        cluster
            .live_ids()
            .iter()
            .all(|id| cluster.node(*id).quiet_groups() == 2)
    };
    eventually(
        Duration::from_secs(20),
        "both groups quiet on every node",
        || async { all_quiet(&cluster).then_some(()) },
    )
    .await;
    for id in cluster.live_ids() {
        assert_eq!(
            cluster.node(id).held_tick_tasks(),
            2,
            "node {id}: a quiet group's tick task is not held (openraft's tick task unrecognised?)"
        );
    }

    // A write wakes a quiet leader and commits without waiting for a tick.
    let client = cluster.client(0);
    let mut target = client.leader().await;
    let started = Instant::now();
    client
        .write(&mut target, Bytes::from_static(b"after quiet"))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a write to a quiet group took {:?}",
        started.elapsed()
    );

    // The leader's node of the other group stops: the held followers wake and elect.
    let old = cluster.wait_leader(1, Duration::from_secs(10)).await;
    cluster.shutdown_node(old).await;
    let new = eventually(
        Duration::from_secs(20),
        "a new leader of group 1",
        || async { cluster.agreed_leader(1).filter(|leader| *leader != old) },
    )
    .await;
    let client = cluster.client(1);
    let mut target = new;
    client
        .write(&mut target, Bytes::from_static(b"after failover"))
        .await;
    cluster.shutdown().await;
}
