//! One `test` run from setup to teardown: network, nodes, topics, workload and nemesis
//! for `--time`, the final phase, the checker.
//!
//! Teardown (SIGKILL of every node, deletion of the namespaces) happens on every way out:
//! success, error, Ctrl-C/SIGTERM (the run future is dropped, then the teardown runs),
//! and panic (the `Namespaces` guard deletes the namespaces on unwind; nodes carry a
//! parent-death signal).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checker::{self, Results};
use crate::client::{Client, NodeAddr};
use crate::cluster::{Cluster, NodeSpec};
use crate::error::JepsenError;
use crate::faultfs::{self, Disks};
use crate::final_phase;
use crate::history::{Event, EventType, History, Op};
use crate::nemesis::{self, FaultKind, Nemesis};
use crate::network::{self, Namespaces};
use crate::proxy::Proxies;
use crate::wait::eventually;
use crate::workload::{Workload, WorkloadConfig};

/// Nodes in the cluster at the start.
pub const NODES: usize = 3;
/// Most spare nodes a run has (they may join later).
const MAX_SPARES: usize = 1;
/// Spare nodes that may join later: one with the `membership` fault, else none.
fn spares(kinds: &[FaultKind]) -> usize {
    if kinds.contains(&FaultKind::Membership) {
        MAX_SPARES
    } else {
        0
    }
}
/// HTTP port of each node inside its namespace.
const NS_HTTP_PORT: u16 = 8080;
/// Raft (peer transport) port of each node inside its namespace.
const NS_RAFT_PORT: u16 = 9080;
/// Time for the fresh cluster to become ready and create topics.
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Snapshot interval of the nodes (entries) when `snapshot-crash` is among the faults and
/// `--snapshot-every` is not given.
const DEFAULT_SNAPSHOT_EVERY: u64 = 100;
/// How often node processes are checked for exits nobody asked for.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// What `test` was asked to do.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Length of the main phase.
    pub time: Duration,
    /// Fault kinds.
    pub nemesis: Vec<FaultKind>,
    /// Seed of the schedule and the workload's choices.
    pub seed: u64,
    /// Writer processes (readers and members derive from it).
    pub concurrency: usize,
    /// Number of topics.
    pub topics: usize,
    /// Partitions per topic.
    pub partitions: u32,
    /// Output directory.
    pub out: PathBuf,
    /// The psubd binary; found next to this one or under target/ when absent.
    pub binary: Option<PathBuf>,
    /// Force loopback mode.
    pub no_netns: bool,
    /// Disable the consumer-group workload.
    pub no_groups: bool,
    /// Padding bytes on every published record (see [`WorkloadConfig::pad_bytes`]).
    pub pad_bytes: usize,
    /// Group members keep their member id after an unclear outcome and fetch again (see
    /// [`WorkloadConfig::naive_members`]).
    pub naive_members: bool,
    /// Writers attach ids and resend after an unknown outcome (see
    /// [`WorkloadConfig::idempotent_writers`]).
    pub idempotent_writers: bool,
    /// Run the nodes on plain directories instead of the fault file system (no disk
    /// faults then).
    pub no_faultfs: bool,
    /// Half the fault steps hold a second fault of another kind at the same time.
    pub overlap: bool,
    /// `--snapshot-every-entries` of the nodes (with 10 entries kept behind a snapshot),
    /// so a follower cut off for seconds catches up through a snapshot; default 100 with
    /// `snapshot-crash`, else the node's default.
    pub snapshot_every: Option<u64>,
}

/// Runs a whole test and returns the checker's results (also in `out/results.json`).
///
/// # Errors
/// Setup failures, Ctrl-C, or failure to write the history or results. A cluster that
/// misbehaves is not an error: it is in the results.
pub fn run_test(opts: TestOptions) -> Result<Results, JepsenError> {
    if opts.concurrency == 0 || opts.topics == 0 || opts.partitions == 0 {
        return Err(JepsenError::InvalidArgument {
            detail: "--concurrency, --topics and --partitions must be at least 1".into(),
        });
    }
    let out = opts.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| JepsenError::io(&out, e))?;
    // A harness killed with -9 leaves its FUSE mounts behind (dead): unmount them first.
    for i in 0..NODES + MAX_SPARES {
        faultfs::unmount_stale(&out.join("data").join(format!("n{}", i + 1)));
    }
    for sub in ["data", "logs"] {
        let p = out.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| JepsenError::io(&p, e))?;
        }
    }
    let binary = find_binary(opts.binary.as_deref())?;
    info!(binary = %binary.display(), "node binary");

    let mut fallback_reason = None;
    let net = if opts.no_netns {
        fallback_reason = Some("--no-netns".to_string());
        None
    } else {
        match network::probe_tools().and_then(|()| Namespaces::setup(NODES + spares(&opts.nemesis)))
        {
            Ok(ns) => Some(Arc::new(ns)),
            Err(e) => {
                warn!(cause = %e, "network namespaces unavailable; running on loopback without network faults");
                fallback_reason = Some(e.to_string());
                None
            }
        }
    };
    let mut kinds = opts.nemesis.clone();
    let dropped: Vec<FaultKind> = if net.is_none() {
        let d = kinds
            .iter()
            .copied()
            .filter(|k| k.needs_network())
            .collect();
        kinds.retain(|k| !k.needs_network());
        d
    } else {
        Vec::new()
    };
    if !dropped.is_empty() {
        warn!(dropped = ?dropped, "network faults skipped in loopback mode");
    }

    let all_nodes = NODES + spares(&kinds);
    let (specs, local) = match &net {
        Some(ns) => {
            ns.enter_control()?;
            let specs = (0..all_nodes)
                .map(|i| NodeSpec {
                    id: i as u64 + 1,
                    netns: ns.node_ns(i).map(str::to_owned),
                    http: SocketAddr::new(IpAddr::V4(ns.node_addr(i)), NS_HTTP_PORT),
                    raft: SocketAddr::new(IpAddr::V4(ns.node_addr(i)), NS_RAFT_PORT),
                    data_dir: out.join("data").join(format!("n{}", i + 1)),
                    log: out.join("logs").join(format!("n{}.log", i + 1)),
                    env: Vec::new(),
                })
                .collect::<Vec<_>>();
            (specs, Some(IpAddr::V4(ns.control_addr())))
        }
        None => {
            let ports = free_ports(all_nodes * 2)?;
            let specs = (0..all_nodes)
                .map(|i| NodeSpec {
                    id: i as u64 + 1,
                    netns: None,
                    http: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports[i]),
                    raft: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports[all_nodes + i]),
                    data_dir: out.join("data").join(format!("n{}", i + 1)),
                    log: out.join("logs").join(format!("n{}.log", i + 1)),
                    env: Vec::new(),
                })
                .collect::<Vec<_>>();
            (specs, None)
        }
    };
    std::fs::create_dir_all(out.join("logs")).map_err(|e| JepsenError::io(out.join("logs"), e))?;

    // The fault file system under every node's data directory; without FUSE the nodes run
    // on plain directories and the disk faults are left out, saying so.
    let mut disk_fallback = None;
    let disks = if opts.no_faultfs {
        disk_fallback = Some("--no-faultfs".to_string());
        None
    } else {
        let dirs: Vec<(u64, PathBuf)> = specs.iter().map(|s| (s.id, s.data_dir.clone())).collect();
        match Disks::mount(&dirs) {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                warn!(cause = %e, "FUSE unavailable: nodes run on plain directories; power, disk-full and fsync-error faults are skipped");
                disk_fallback = Some(e.to_string());
                None
            }
        }
    };
    let mut dropped = dropped;
    if disks.is_none() {
        let d: Vec<FaultKind> = kinds.iter().copied().filter(|k| k.needs_disk()).collect();
        if !d.is_empty() {
            warn!(dropped = ?d, "disk faults skipped without the fault file system");
        }
        kinds.retain(|k| !k.needs_disk());
        dropped.extend(d);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| JepsenError::io("tokio runtime", e))?;
    // Clock faults: every node runs under libfaketime, its wall clock offset by what its
    // file under `clock/` says (re-read at most once a second); the monotonic clock is
    // left alone. Without libfaketime the clock fault is left out, saying so.
    let mut specs = specs;
    let mut clock_files = None;
    if kinds.contains(&FaultKind::Clock) {
        match nemesis::prepare_clocks(&out.join("clock"), &mut specs) {
            Ok(files) => clock_files = Some(files),
            Err(e) => {
                warn!(cause = %e, "clock faults skipped");
                kinds.retain(|k| *k != FaultKind::Clock);
                dropped.push(FaultKind::Clock);
            }
        }
    }
    let snapshot_every = opts.snapshot_every.or(kinds
        .contains(&FaultKind::SnapshotCrash)
        .then_some(DEFAULT_SNAPSHOT_EVERY));
    // Peers in namespaces are not on loopback: the nodes need a cluster secret (peer
    // authentication), a fresh one per run.
    let secret = out.join("cluster-secret");
    psubd_launch::secret::renew(&secret).map_err(|e| JepsenError::io(&secret, e))?;
    // The checker's clients send no API key: the API stays open (--insecure), which a
    // namespace address off loopback would otherwise refuse.
    let mut node_args = vec![
        "--cluster-secret-file".to_string(),
        secret.display().to_string(),
        "--insecure".to_string(),
    ];
    if let Some(n) = snapshot_every {
        node_args.extend([
            "--snapshot-every-entries".to_string(),
            n.to_string(),
            "--keep-logs-after-snapshot".to_string(),
            "10".to_string(),
        ]);
    }
    // Spares (the `membership` fault) are not founding members: they join later.
    let spare_specs = specs.split_off(NODES);
    let cluster = Arc::new(
        Cluster::new(binary, specs)
            .with_node_args(node_args)
            .with_spares(spare_specs),
    );
    let mode = if net.is_some() { "netns" } else { "loopback" };
    let result = runtime.block_on(async {
        let body = run_body(
            &opts,
            cluster.clone(),
            net.clone(),
            disks.clone(),
            clock_files,
            local,
            kinds,
            dropped,
            Modes {
                net: mode,
                net_fallback: fallback_reason,
                disk_fallback,
            },
        );
        let r = tokio::select! {
            r = body => r,
            _ = shutdown_signal() => {
                warn!("interrupted; tearing down");
                Err(JepsenError::Interrupted)
            }
        };
        cluster.kill_all().await;
        r
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(disks) = disks {
        disks.unmount();
    }
    if let Some(ns) = net {
        match Arc::try_unwrap(ns) {
            Ok(mut ns) => ns.teardown(),
            Err(ns) => warn!(
                refs = Arc::strong_count(&ns),
                "namespaces still referenced; deleted on drop"
            ),
        }
    }
    result
}

/// How the run was set up, for `schedule.json`.
struct Modes<'a> {
    net: &'a str,
    net_fallback: Option<String>,
    disk_fallback: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn run_body(
    opts: &TestOptions,
    cluster: Arc<Cluster>,
    net: Option<Arc<Namespaces>>,
    disks: Option<Arc<Disks>>,
    clock_files: Option<Vec<(u64, PathBuf)>>,
    local: Option<IpAddr>,
    kinds: Vec<FaultKind>,
    dropped: Vec<FaultKind>,
    modes: Modes<'_>,
) -> Result<Results, JepsenError> {
    let mode = modes.net;
    let out = &opts.out;
    let history = Arc::new(History::create(&out.join("history.jsonl"))?);
    // With `lost-responses`, every client request goes through a proxy per node.
    let proxy_stop = CancellationToken::new();
    let _proxy_guard = proxy_stop.clone().drop_guard();
    let proxies = if kinds.contains(&FaultKind::LostResponses) {
        let upstreams: Vec<SocketAddr> = cluster.specs().iter().map(|s| s.http).collect();
        Some(Arc::new(
            Proxies::start(&upstreams, local, opts.seed, proxy_stop.clone()).await?,
        ))
    } else {
        None
    };
    let nodes: Vec<NodeAddr> = cluster
        .specs()
        .iter()
        .enumerate()
        .map(|(i, s)| NodeAddr {
            id: s.id,
            base: match proxies.as_ref().and_then(|p| p.addrs.get(i)) {
                Some(proxy) => format!("http://{proxy}"),
                None => format!("http://{}", s.http),
            },
        })
        .collect();
    let client = Client::new(nodes, local)?;
    // Clients use the founding members; a spare is added when it joins.
    client.set_serving(&cluster.ids());
    let topics: Vec<String> = (0..opts.topics).map(|i| format!("jepsen-{i}")).collect();
    let groups = !opts.no_groups;
    let config = WorkloadConfig {
        topics: topics.clone(),
        partitions: opts.partitions,
        writers: opts.concurrency,
        readers: (opts.concurrency / 2).max(1),
        members: if groups {
            (opts.concurrency / 2).max(2)
        } else {
            0
        },
        group: "jepsen-group".into(),
        seed: opts.seed,
        pad_bytes: opts.pad_bytes,
        naive_members: opts.naive_members,
        idempotent_writers: opts.idempotent_writers,
    };
    let keys = config.keys();
    let steps = nemesis::plan_with(
        opts.seed,
        &kinds,
        opts.time,
        &keys,
        &cluster.ids(),
        opts.overlap,
    );
    let schedule = json!({
        "binary": binary_description(&cluster),
        "git_head": git_head(),
        "seed": opts.seed,
        "mode": mode,
        "fallback_reason": modes.net_fallback,
        "faultfs": disks.is_some(),
        "faultfs_fallback_reason": modes.disk_fallback,
        "nemesis": kinds,
        "skipped": dropped,
        "time_s": opts.time.as_secs(),
        "overlap": opts.overlap,
        "node_args": cluster.node_args(),
        "naive_members": opts.naive_members,
        "idempotent_writers": opts.idempotent_writers,
        "steps": steps,
    });
    let schedule_path = out.join("schedule.json");
    std::fs::write(
        &schedule_path,
        serde_json::to_string_pretty(&schedule).map_err(|source| JepsenError::Encode {
            what: "schedule",
            source,
        })?,
    )
    .map_err(|e| JepsenError::io(&schedule_path, e))?;
    info!(
        steps = steps.len(),
        seed = opts.seed,
        mode,
        "nemesis schedule written"
    );

    phase(&history, "setup", None);
    cluster.start_all().await?;
    let ids = cluster.ids();
    eventually(SETUP_TIMEOUT, "every node ready", || async {
        for id in &ids {
            if !client.ready(*id).await {
                return None;
            }
        }
        Some(())
    })
    .await?;
    for topic in &topics {
        eventually(SETUP_TIMEOUT, "topic created", || async {
            for id in &ids {
                if client
                    .create_topic(*id, topic, opts.partitions, NODES as u32)
                    .await
                    .is_ok()
                {
                    return Some(());
                }
            }
            None
        })
        .await?;
        eventually(SETUP_TIMEOUT, "a leader for every partition", || async {
            for id in &ids {
                if let Ok(parts) = client.partitions(*id, topic).await {
                    if parts.len() as u32 == opts.partitions
                        && parts.iter().all(|p| p.leader.is_some())
                    {
                        return Some(());
                    }
                }
            }
            None
        })
        .await?;
    }

    let monitor_stop = CancellationToken::new();
    let monitor = {
        let cluster = cluster.clone();
        let history = history.clone();
        let stop = monitor_stop.clone();
        tokio::spawn(async move { monitor_exits(cluster, history, stop).await })
    };

    phase(&history, "main", None);
    let workload = Arc::new(Workload::new(client.clone(), history.clone(), config));
    let nemesis = Nemesis {
        cluster: cluster.clone(),
        net: net.clone(),
        client: client.clone(),
        history: history.clone(),
        seed: opts.seed,
        proxies: proxies.clone(),
        disks: disks.clone(),
        clock_files,
    };
    let stop = CancellationToken::new();
    let timer = {
        let stop = stop.clone();
        let time = opts.time;
        tokio::spawn(async move {
            tokio::time::sleep(time).await;
            stop.cancel();
        })
    };
    tokio::join!(
        workload.clone().run(stop.clone()),
        nemesis.run(steps, stop.clone())
    );
    timer.abort();

    if let Err(e) = final_phase::run(
        &cluster,
        net.as_ref(),
        disks.as_deref(),
        &workload,
        &history,
        groups,
    )
    .await
    {
        warn!(cause = %e, "final phase incomplete");
    }
    monitor_stop.cancel();
    let _ = monitor.await;
    history.flush()?;
    let results = checker::check_file(history.path(), out)?;
    Ok(results)
}

fn phase(history: &History, name: &str, error: Option<String>) {
    let mut e = Event::new("harness", EventType::Info, Op::Phase);
    e.value = Some(json!(name));
    e.error = error;
    history.record(e);
}

/// Records nodes that exit by themselves (a `node-exit` phase event, which the checker
/// counts as `node-crash`) and restarts them, as a process supervisor would. A node that
/// fail-stopped under a fault that expected it (a failing fsync) is recorded as
/// `node-fail-stop` and stays down until the fault heals (the nemesis restarts it).
async fn monitor_exits(cluster: Arc<Cluster>, history: Arc<History>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        for exit in cluster.reap_exited().await {
            nemesis::record_exit(&cluster, &history, &exit);
            if exit.expected {
                continue;
            }
            if let Err(err) = cluster.start(exit.id).await {
                warn!(node = exit.id, cause = %err, "restart after exit failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REAP_EVERY) => {}
            _ = stop.cancelled() => {}
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The node binary's path and modification time, so a result can be tied to a build.
fn binary_description(cluster: &Cluster) -> serde_json::Value {
    let path = cluster.binary();
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    json!({"path": path.display().to_string(), "modified_unix_s": modified})
}

/// `git rev-parse HEAD` of the working directory, when it is a git checkout.
fn git_head() -> Option<String> {
    network::run("git", &["rev-parse", "HEAD"], None)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `--binary`, else `psubd` next to this executable, else target/release, target/debug.
fn find_binary(given: Option<&Path>) -> Result<PathBuf, JepsenError> {
    let mut candidates = Vec::new();
    if let Some(p) = given {
        candidates.push(p.to_path_buf());
    } else {
        candidates.extend(psubd_launch::binary::beside_current_exe(0));
        candidates.push(PathBuf::from("target/release/psubd"));
        candidates.push(PathBuf::from("target/debug/psubd"));
    }
    for c in &candidates {
        if c.is_file() {
            return std::fs::canonicalize(c).map_err(|e| JepsenError::io(c, e));
        }
    }
    Err(JepsenError::InvalidArgument {
        detail: format!(
            "no psubd binary found (tried {}); build it or pass --binary",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Free ports for the nodes (loopback mode only), reserved and released at once: the
/// nodes bind them when they start.
fn free_ports(n: usize) -> Result<Vec<u16>, JepsenError> {
    (0..n)
        .map(|_| {
            psubd_launch::ports::try_reserve()
                .map(|p| p.port())
                .map_err(|e| JepsenError::io("127.0.0.1", e))
        })
        .collect()
}
