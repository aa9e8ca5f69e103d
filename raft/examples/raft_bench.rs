//! Replication throughput of psubd-raft: three nodes in one process over loopback TCP, each
//! on its own data directory (Raft log segment files and sled; fsync on, through the node-wide
//! group-commit flusher),
//! 64 KiB entries written by many concurrent writers; 1 group, then 8 groups with leaders
//! spread over the nodes. Each configuration runs three times; the median is reported.
//!
//! Run: `cargo run --release -p psubd-raft --example raft_bench`
//! (optional env: BENCH_SECS, default 8; BENCH_ENTRY_BYTES, default 65536).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::ServerState;
use psubd_raft::types::typ;
use psubd_raft::{
    Command, CommandResponse, GroupId, GroupLogic, NodeId, RaftNode, RaftNodeConfig, RaftTuning,
    SnapshotPlan, StorageIoError, Tree, WriteBatch,
};

/// Stores each command under its log index, like a partition stores record batches.
struct BatchLogic {
    last_index: u64,
}

fn key(index: u64) -> Vec<u8> {
    let mut k = vec![b'b'];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

impl GroupLogic for BatchLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.last_index = 0;
        for pair in state.range(b"b", Some(b"c")) {
            let (k, _) = pair?;
            if let Ok(bytes) = k[1..].try_into() {
                self.last_index = u64::from_be_bytes(bytes);
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        index: u64,
        command: &Command,
        _state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        batch.insert(key(index), command.0.to_vec());
        self.last_index = index;
        Ok(CommandResponse::default())
    }

    fn applied(&mut self) {}

    fn snapshot_plan(&self, _state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        Ok(SnapshotPlan {
            pinned: Vec::new(),
            lazy: Some((key(0), Some(key(self.last_index + 1)))),
        })
    }
}

struct RunResult {
    entries: u64,
    secs: f64,
    errors: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
    /// Storage flushes (group commits) per second, averaged over the three nodes.
    fsyncs_per_node_s: f64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn wait_leader(nodes: &[RaftNode], group: GroupId) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for n in nodes {
            let raft = n.group(group).expect("group open");
            if raft.metrics().borrow().state == ServerState::Leader {
                return n.id();
            }
        }
        assert!(Instant::now() < deadline, "no leader for group {group}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_once(
    groups: u64,
    writers_per_group: usize,
    entry_bytes: usize,
    secs: u64,
) -> RunResult {
    let tmp = tempfile::tempdir().expect("tempdir");
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("port"))
        .collect();
    let peers: BTreeMap<NodeId, SocketAddr> = (1..=3u64)
        .zip(listeners.iter().map(|l| l.local_addr().expect("addr")))
        .collect();
    drop(listeners);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let config = RaftNodeConfig {
            id,
            listen: peers[&id],
            peers: peers.iter().map(|(&id, &addr)| (id, addr.into())).collect(),
            data_dir: tmp.path().join(format!("node-{id}")),
            cache_capacity_bytes: 64 * 1024 * 1024,
            min_free_bytes: 0,
            cluster_secret: psubd_raft::ClusterSecret::none(),
            peer_tls: None,
            insecure_peers: false,
            tuning: RaftTuning::default(),
        };
        nodes.push(RaftNode::start(config).await.expect("start"));
    }
    let members: BTreeSet<NodeId> = peers.keys().copied().collect();
    // Spread leaders: group g led by node (g % 3) + 1, placed by opening the group passively
    // on the others and initializing it on that node (openraft 0.9 has no leader transfer,
    // and a forced election against a live leader only disrupts it).
    for g in 1..=groups {
        let want = (g % 3) + 1;
        for n in nodes.iter().filter(|n| n.id() != want) {
            n.open_group(
                g,
                Box::new(BatchLogic { last_index: 0 }),
                members.clone(),
                false,
            )
            .await
            .expect("open group");
        }
        nodes[(want - 1) as usize]
            .open_group(
                g,
                Box::new(BatchLogic { last_index: 0 }),
                members.clone(),
                true,
            )
            .await
            .expect("open group");
    }
    let mut rafts: Vec<typ::Raft> = Vec::new();
    for g in 1..=groups {
        let leader = wait_leader(&nodes, g).await;
        rafts.push(nodes[(leader - 1) as usize].group(g).expect("group"));
    }

    let flushes_before: u64 = nodes.iter().map(|n| n.storage().flush_count()).sum();
    let payload = Bytes::from(vec![0xA5u8; entry_bytes]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for (g, raft) in (1..=groups).zip(&rafts) {
        for _ in 0..writers_per_group {
            let mut raft = raft.clone();
            let nodes = nodes.clone();
            let payload = payload.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                let mut errors = 0u64;
                let mut lat = Vec::new();
                let mut first_error = None;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match raft.client_write(Command(payload.clone())).await {
                        Ok(_) => {
                            ok += 1;
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                        Err(err) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| err.to_string());
                            // Follow the leader, as a client would.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            for n in &nodes {
                                if let Some(r) = n.group(g) {
                                    if r.metrics().borrow().state == ServerState::Leader {
                                        raft = r;
                                    }
                                }
                            }
                        }
                    }
                }
                (ok, errors, lat, first_error)
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut result = RunResult {
        entries: 0,
        secs: 0.0,
        errors: 0,
        latencies_us: Vec::new(),
        first_error: None,
        fsyncs_per_node_s: 0.0,
    };
    for t in tasks {
        let (ok, errors, lat, first_error) = t.await.expect("writer");
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
        result.entries += ok;
        result.errors += errors;
        result.latencies_us.extend(lat);
    }
    result.secs = started.elapsed().as_secs_f64();
    let flushes_after: u64 = nodes.iter().map(|n| n.storage().flush_count()).sum();
    result.fsyncs_per_node_s = (flushes_after - flushes_before) as f64 / 3.0 / result.secs;
    for n in &nodes {
        n.shutdown().await;
    }
    result
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let secs = env_or("BENCH_SECS", 8);
    let entry_bytes = env_or("BENCH_ENTRY_BYTES", 64 * 1024) as usize;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("raft_bench: 3 nodes on loopback, log segments + sled on disk, fsync on, {entry_bytes}-byte entries, {secs}s per run, {cores} cores");
    for (groups, writers_per_group) in [(1u64, 64usize), (8, 16)] {
        let mut runs = Vec::new();
        for run in 1..=3 {
            let r = run_once(groups, writers_per_group, entry_bytes, secs).await;
            let eps = r.entries as f64 / r.secs;
            let mbps = eps * entry_bytes as f64 / (1024.0 * 1024.0);
            let mut lat = r.latencies_us.clone();
            lat.sort_unstable();
            println!(
                "  groups={groups} writers={} run={run}: {} entries in {:.1}s = {eps:.0} entries/s, {mbps:.1} MiB/s, errors={}, flushes/node/s={:.0}, p50={}us p99={}us p999={}us",
                groups as usize * writers_per_group,
                r.entries,
                r.secs,
                r.errors,
                r.fsyncs_per_node_s,
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                percentile(&lat, 0.999),
            );
            if let Some(err) = &r.first_error {
                println!("    first error: {err}");
            }
            runs.push((eps, mbps, lat));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (eps, mbps, lat) = &runs[1];
        println!(
            "{{\"bench\":\"raft_replication\",\"groups\":{groups},\"writers\":{},\"entry_bytes\":{entry_bytes},\"fsync\":true,\"cores\":{cores},\"runs\":3,\"median_entries_per_s\":{eps:.0},\"median_mib_per_s\":{mbps:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
            groups as usize * writers_per_group,
            percentile(lat, 0.50),
            percentile(lat, 0.99),
            percentile(lat, 0.999),
        );
    }
}
