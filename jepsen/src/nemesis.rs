//! The nemesis: a seeded schedule of faults, each injected, held, and healed before the
//! next one starts.
//!
//! The schedule (kinds, abstract targets, timings) is a pure function of the seed and is
//! written to `schedule.json` before the run; concrete targets that depend on the cluster
//! (the leader of a partition at that moment) are resolved when the fault starts and
//! recorded in the history's `fault` event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::Client;
use crate::cluster::{Cluster, NodeSpec, UnexpectedExit};
use crate::error::JepsenError;
use crate::faultfs::Disks;
use crate::history::{split_key, Event, EventType, History, Op};
use crate::network::{DropRule, Namespaces};
use crate::proxy::Proxies;
use crate::wait::eventually;

/// The kinds of fault, as named on the command line (`--nemesis kill,pause,...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, restart on the same data dir at heal.
    Kill,
    /// SIGSTOP, SIGCONT at heal.
    Pause,
    /// nftables DROP of peer traffic.
    Partition,
    /// nftables random drop of a share of peer packets.
    Loss,
    /// A share of client requests reach a node but their answers are dropped (proxy.rs).
    LostResponses,
    /// Power loss of one node: SIGKILL, every write its file system did not sync is
    /// dropped, restart at heal (faultfs.rs).
    Power,
    /// Power loss of every node at once.
    PowerAll,
    /// A node's file system shrinks to a little above its use: free space falls below the
    /// node's threshold, then writes meet ENOSPC; the capacity is restored at heal.
    DiskFull,
    /// A node's fsync/fdatasync fail with EIO (their data dropped); the node is expected
    /// to fail-stop, and is restarted at heal.
    FsyncError,
    /// A node cut off long enough to need a snapshot, then crashed (power loss) the moment
    /// it starts receiving one.
    SnapshotCrash,
    /// One node's wall clock steps an hour forward or back (libfaketime); the monotonic
    /// clock is untouched. Stepped back at heal.
    Clock,
    /// A spare node joins the running cluster (`--join`), one replica of some partitions
    /// moves onto it, then one of the founding nodes is decommissioned and, once it is,
    /// stopped for good. Nothing to heal: the membership change stays.
    Membership,
}

impl FaultKind {
    /// Parses one command-line name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(s: &str) -> Result<Self, JepsenError> {
        match s.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "loss" => Ok(FaultKind::Loss),
            "lost-responses" => Ok(FaultKind::LostResponses),
            "power" => Ok(FaultKind::Power),
            "power-all" => Ok(FaultKind::PowerAll),
            "disk-full" => Ok(FaultKind::DiskFull),
            "fsync-error" => Ok(FaultKind::FsyncError),
            "snapshot-crash" => Ok(FaultKind::SnapshotCrash),
            "clock" => Ok(FaultKind::Clock),
            "membership" => Ok(FaultKind::Membership),
            other => Err(JepsenError::InvalidArgument {
                detail: format!(
                    "unknown nemesis `{other}` (kill, pause, partition, loss, lost-responses, power, power-all, disk-full, fsync-error, snapshot-crash, clock, membership)"
                ),
            }),
        }
    }

    /// Whether the fault needs network namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            FaultKind::Partition | FaultKind::Loss | FaultKind::SnapshotCrash
        )
    }

    /// Whether the fault needs the fault file system (faultfs.rs).
    pub fn needs_disk(self) -> bool {
        matches!(
            self,
            FaultKind::Power | FaultKind::PowerAll | FaultKind::DiskFull | FaultKind::FsyncError
        )
    }
}

/// Which node(s) a process fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "kebab-case")]
pub enum Target {
    /// A fixed node.
    Node {
        /// Node id.
        node: u64,
    },
    /// The leader of `key` (`topic/partition`) when the fault starts.
    Leader {
        /// The partition.
        key: String,
    },
    /// The controller leader when the fault starts.
    ControllerLeader,
    /// Every node.
    All,
}

/// The shape of a network partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "kebab-case")]
pub enum Shape {
    /// One node (fixed or a leader) cut from both others, both directions.
    Isolate {
        /// Who is isolated (`Node`, `Leader` or `ControllerLeader`).
        who: Target,
    },
    /// The two nodes other than `middle` cannot reach each other; both reach `middle`.
    Bridge {
        /// The node both halves still see.
        middle: u64,
    },
    /// `deaf` drops everything from `from`; `from` still hears `deaf`.
    OneWay {
        /// The node that stops hearing.
        deaf: u64,
        /// The node it stops hearing.
        from: u64,
    },
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL the target(s); restart them at heal.
    Kill {
        /// Who.
        #[serde(flatten)]
        target: Target,
    },
    /// SIGSTOP the target; SIGCONT at heal.
    Pause {
        /// Who.
        #[serde(flatten)]
        target: Target,
    },
    /// Drop peer traffic in a shape.
    Partition {
        /// The shape.
        #[serde(flatten)]
        shape: Shape,
    },
    /// Drop `percent`% of every node's incoming peer packets at random.
    Loss {
        /// 1..=100.
        percent: u8,
    },
    /// Drop the answers of `percent`% of client requests after the node received them.
    LostResponses {
        /// 1..=100.
        percent: u8,
    },
    /// SIGKILL the target(s) and drop every unsynced write of their file systems; restart
    /// them at heal.
    Power {
        /// Who.
        #[serde(flatten)]
        target: Target,
    },
    /// Shrink the target(s)' file system to `margin_bytes` above its use; restore at heal.
    DiskFull {
        /// Who.
        #[serde(flatten)]
        target: Target,
        /// Free bytes left.
        margin_bytes: u64,
    },
    /// fsync/fdatasync on the target's file system fail with EIO; the node is expected to
    /// fail-stop; restarted at heal.
    FsyncError {
        /// Who.
        #[serde(flatten)]
        target: Target,
    },
    /// Isolate `node` for `isolate_ms` (long enough that the leaders purge the log it
    /// lacks), heal the network, and cut its power (or SIGKILL it without the fault file
    /// system) the moment it starts receiving a snapshot; restart at heal.
    SnapshotCrash {
        /// Who.
        node: u64,
        /// How long it is cut off first.
        isolate_ms: u64,
    },
    /// Step `node`'s wall clock by `offset_s` seconds; back to 0 at heal.
    Clock {
        /// Who.
        node: u64,
        /// The step, seconds (±3600).
        offset_s: i64,
    },
    /// The next spare joins with `--join`; one replica (chosen by the seed) of each of
    /// `partitions` moves onto it; once the moves are done `decommission` is
    /// decommissioned and, once it is, stopped. Never healed.
    Membership {
        /// `topic/partition` keys whose replica moves to the new node.
        partitions: Vec<String>,
        /// The founding node that leaves.
        decommission: u64,
    },
    /// Several faults at once, injected in order, healed in reverse order.
    Overlap {
        /// The faults.
        faults: Vec<Fault>,
    },
}

impl Fault {
    /// The name of its availability window: the kind, except that killing every node at
    /// once is `kill-all` (nothing can be available then, and its figure would hide how a
    /// one-node kill does).
    pub fn window(&self) -> String {
        let name = match self {
            Fault::Kill {
                target: Target::All,
            } => "kill-all",
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Partition { .. } => "partition",
            Fault::Loss { .. } => "loss",
            Fault::LostResponses { .. } => "lost-responses",
            Fault::Power {
                target: Target::All,
            } => "power-all",
            Fault::Power { .. } => "power",
            Fault::DiskFull { .. } => "disk-full",
            Fault::FsyncError { .. } => "fsync-error",
            Fault::SnapshotCrash { .. } => "snapshot-crash",
            Fault::Clock { .. } => "clock",
            Fault::Membership { .. } => "membership",
            Fault::Overlap { faults } => {
                return faults
                    .iter()
                    .map(Fault::window)
                    .collect::<Vec<_>>()
                    .join("+")
            }
        };
        name.to_string()
    }

    /// The kind, for availability windows.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill { .. } => FaultKind::Kill,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::Loss { .. } => FaultKind::Loss,
            Fault::LostResponses { .. } => FaultKind::LostResponses,
            Fault::Power {
                target: Target::All,
            } => FaultKind::PowerAll,
            Fault::Power { .. } => FaultKind::Power,
            Fault::DiskFull { .. } => FaultKind::DiskFull,
            Fault::FsyncError { .. } => FaultKind::FsyncError,
            Fault::SnapshotCrash { .. } => FaultKind::SnapshotCrash,
            Fault::Clock { .. } => FaultKind::Clock,
            Fault::Membership { .. } => FaultKind::Membership,
            Fault::Overlap { faults } => faults.first().map_or(FaultKind::Kill, Fault::kind),
        }
    }
}

/// One step of the schedule: wait `quiet_ms` healthy, inject `fault`, hold it `hold_ms`,
/// heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Healthy time before the fault.
    pub quiet_ms: u64,
    /// The fault.
    pub fault: Fault,
    /// How long the fault is held.
    pub hold_ms: u64,
}

/// Healthy time between faults: long enough for the cluster to recover and for the
/// healthy window's availability to mean something.
const QUIET_MS: (u64, u64) = (3_000, 6_000);
/// How long a fault is held: past election timeouts and the group session timeout.
const HOLD_MS: (u64, u64) = (4_000, 10_000);

/// Free bytes a `disk-full` fault leaves: below any sensible free-space threshold of the
/// node, and small enough that the workload fills it within a hold.
const DISK_MARGIN: (u64, u64) = (64 << 10, 1 << 20);

/// How long a `snapshot-crash` isolates its node: with the harness's small snapshot
/// interval (`--snapshot-every`), long enough for the leaders to purge what it lacks.
const SNAPSHOT_ISOLATE_MS: (u64, u64) = (12_000, 20_000);
/// How long a `snapshot-crash` waits for its node to start receiving a snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(15);

/// Bound on one step of a `membership` fault (the new node active, a move accepted).
const MEMBERSHIP_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the replica moves, and on a decommission, to finish.
const MEMBERSHIP_MOVES_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a decommissioned node has to exit after SIGTERM before SIGKILL.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// The schedule for a run of `total` with the given kinds: a pure function of `seed`.
pub fn plan(
    seed: u64,
    kinds: &[FaultKind],
    total: Duration,
    keys: &[String],
    nodes: &[u64],
) -> Vec<Step> {
    plan_with(seed, kinds, total, keys, nodes, false)
}

/// Share of steps that carry a second, overlapping fault when overlaps are asked for.
const OVERLAP_PERCENT: u32 = 50;

/// [`plan`], and with `overlap` half the steps hold two faults of different kinds at once.
/// Without `overlap` the schedule is the same as [`plan`]'s for the seed.
pub fn plan_with(
    seed: u64,
    kinds: &[FaultKind],
    total: Duration,
    keys: &[String],
    nodes: &[u64],
    overlap: bool,
) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let mut steps = Vec::new();
    if kinds.is_empty() || nodes.is_empty() {
        return steps;
    }
    let total_ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX);
    let mut elapsed = 0u64;
    // The run has one spare node: one membership change at most.
    let mut kinds = kinds.to_vec();
    while elapsed < total_ms && !kinds.is_empty() {
        let quiet_ms = rng.gen_range(QUIET_MS.0..=QUIET_MS.1);
        let hold_ms = rng.gen_range(HOLD_MS.0..=HOLD_MS.1);
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let mut quiet_ms = quiet_ms;
        if kind == FaultKind::Membership {
            kinds.retain(|k| *k != FaultKind::Membership);
            // Not before a third of the run: the partitions then hold hundreds of records
            // each (a 60 s run), not a handful.
            quiet_ms = quiet_ms.max((total_ms / 3).saturating_sub(elapsed));
        }
        let mut fault = fault_of(kind, &mut rng, keys, nodes);
        // Overlapping faults: now and then a second fault of another kind, injected with
        // the first and healed with it (never two network faults: their rules would
        // replace each other's).
        if overlap && rng.gen_range(0..100) < OVERLAP_PERCENT {
            let others: Vec<FaultKind> = kinds
                .iter()
                .copied()
                .filter(|k| {
                    *k != kind
                        && !(k.needs_network() && kind.needs_network())
                        && *k != FaultKind::Membership
                        && kind != FaultKind::Membership
                })
                .collect();
            if !others.is_empty() {
                let second = others[rng.gen_range(0..others.len())];
                fault = Fault::Overlap {
                    faults: vec![fault, fault_of(second, &mut rng, keys, nodes)],
                };
            }
        }
        steps.push(Step {
            quiet_ms,
            fault,
            hold_ms,
        });
        elapsed = elapsed.saturating_add(quiet_ms + hold_ms);
    }
    steps
}

/// One fault of `kind` with its targets and parameters.
fn fault_of(kind: FaultKind, rng: &mut StdRng, keys: &[String], nodes: &[u64]) -> Fault {
    let node = |rng: &mut StdRng| nodes[rng.gen_range(0..nodes.len())];
    let leader = |rng: &mut StdRng| -> Target {
        if keys.is_empty() {
            Target::ControllerLeader
        } else {
            Target::Leader {
                key: keys[rng.gen_range(0..keys.len())].clone(),
            }
        }
    };
    // One node of the faults that strike a single process: a given node, a partition's
    // leader, or the controller's.
    let one_node = |rng: &mut StdRng| -> Target {
        let roll = rng.gen_range(0..100);
        if roll < 40 {
            Target::Node { node: node(rng) }
        } else if roll < 85 {
            leader(rng)
        } else {
            Target::ControllerLeader
        }
    };
    match kind {
        FaultKind::Kill => {
            let roll = rng.gen_range(0..100);
            let target = if roll < 40 {
                Target::Node { node: node(rng) }
            } else if roll < 80 {
                leader(rng)
            } else if roll < 88 {
                Target::ControllerLeader
            } else {
                Target::All
            };
            Fault::Kill { target }
        }
        FaultKind::Pause => Fault::Pause {
            target: one_node(rng),
        },
        FaultKind::Partition => {
            let roll = rng.gen_range(0..100);
            let shape = if roll < 25 {
                Shape::Isolate {
                    who: Target::Node { node: node(rng) },
                }
            } else if roll < 60 {
                Shape::Isolate { who: leader(rng) }
            } else if roll < 80 || nodes.len() < 2 {
                Shape::Bridge { middle: node(rng) }
            } else {
                let deaf = node(rng);
                let others: Vec<u64> = nodes.iter().copied().filter(|n| *n != deaf).collect();
                let from = others[rng.gen_range(0..others.len())];
                Shape::OneWay { deaf, from }
            };
            Fault::Partition { shape }
        }
        FaultKind::Loss => Fault::Loss {
            percent: rng.gen_range(10..=50),
        },
        FaultKind::LostResponses => Fault::LostResponses {
            percent: rng.gen_range(10..=40),
        },
        FaultKind::Power => Fault::Power {
            target: one_node(rng),
        },
        FaultKind::PowerAll => Fault::Power {
            target: Target::All,
        },
        FaultKind::DiskFull => {
            let roll = rng.gen_range(0..100);
            let target = if roll < 40 {
                Target::Node { node: node(rng) }
            } else if roll < 80 {
                leader(rng)
            } else {
                Target::All
            };
            Fault::DiskFull {
                target,
                margin_bytes: rng.gen_range(DISK_MARGIN.0..=DISK_MARGIN.1),
            }
        }
        FaultKind::SnapshotCrash => Fault::SnapshotCrash {
            node: node(rng),
            isolate_ms: rng.gen_range(SNAPSHOT_ISOLATE_MS.0..=SNAPSHOT_ISOLATE_MS.1),
        },
        FaultKind::Membership => {
            // Some partitions (at least one, at most half, rounded up) move a replica.
            let count = rng.gen_range(1..=keys.len().div_ceil(2).max(1));
            let mut partitions: Vec<String> = Vec::new();
            while partitions.len() < count.min(keys.len()) {
                let key = &keys[rng.gen_range(0..keys.len())];
                if !partitions.contains(key) {
                    partitions.push(key.clone());
                }
            }
            partitions.sort();
            Fault::Membership {
                partitions,
                decommission: node(rng),
            }
        }
        FaultKind::Clock => Fault::Clock {
            node: node(rng),
            offset_s: if rng.gen_range(0..2) == 0 {
                3600
            } else {
                -3600
            },
        },
        FaultKind::FsyncError => {
            let target = if rng.gen_range(0..100) < 50 {
                Target::Node { node: node(rng) }
            } else {
                leader(rng)
            };
            Fault::FsyncError { target }
        }
    }
}

/// What the nemesis acts on.
pub struct Nemesis {
    /// The node processes.
    pub cluster: Arc<Cluster>,
    /// The namespaces; `None` in loopback mode (no network faults then).
    pub net: Option<Arc<Namespaces>>,
    /// For resolving leaders.
    pub client: Client,
    /// Where faults are recorded.
    pub history: Arc<History>,
    /// Seed for the choices made at run time (a random node when no leader is known).
    pub seed: u64,
    /// The client proxies, when `lost-responses` is among the faults.
    pub proxies: Option<Arc<Proxies>>,
    /// The nodes' fault file systems; `None` when FUSE is unavailable (no disk faults).
    pub disks: Option<Arc<Disks>>,
    /// Each node's libfaketime offset file; `None` without clock faults.
    pub clock_files: Option<Vec<(u64, PathBuf)>>,
}

/// What an applied fault did, so it can be healed.
#[derive(Debug, Clone)]
enum Applied {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Network,
    Proxies,
    /// Killed and their unsynced writes dropped: restart at heal.
    PowerLost(Vec<u64>),
    /// Capacity shrunk: restore at heal.
    DiskFull(Vec<u64>),
    /// Syncs failing, the node expected to fail-stop, with the count of failed syncs and
    /// the node's start count when the fault started: stop failing, restart at heal.
    SyncFailing(Vec<(u64, u64, u32)>),
    /// Overlapping faults, undone in reverse order.
    Many(Vec<Applied>),
    /// A clock stepped: back to 0 at heal.
    Clock(u64),
    Nothing,
}

impl Nemesis {
    /// Runs `steps` until they are done or `stop` fires; a fault in place when `stop`
    /// fires is healed before returning.
    pub async fn run(&self, steps: Vec<Step>, stop: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x7461_7267_6574_7321);
        for step in steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(step.quiet_ms)) => {}
                _ = stop.cancelled() => return,
            }
            let applied = self.inject(&step.fault, &mut rng).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(step.hold_ms)) => {}
                _ = stop.cancelled() => {}
            }
            self.heal(&step.fault, applied).await;
            if stop.is_cancelled() {
                return;
            }
        }
    }

    async fn inject(&self, fault: &Fault, rng: &mut StdRng) -> Applied {
        let mut desc = serde_json::to_value(fault).unwrap_or(Value::Null);
        if let Some(obj) = desc.as_object_mut() {
            obj.insert("window".into(), json!(fault.window()));
        }
        let mut inv = Event::new("nemesis", EventType::Invoke, Op::Fault);
        inv.value = Some(desc.clone());
        let inv = self.history.record(inv);
        let result = self.apply(fault, rng).await;
        let (kind, applied) = match result {
            Ok((nodes, applied)) => {
                if let Some(obj) = desc.as_object_mut() {
                    obj.insert("nodes".into(), json!(nodes));
                    // An isolated node is the minority side: availability also reports
                    // the requests sent to the majority side (`partition-majority`).
                    if let Fault::Partition {
                        shape: Shape::Isolate { .. },
                    } = fault
                    {
                        obj.insert("minority".into(), json!(nodes.first()));
                    }
                }
                info!(fault = %desc, "fault injected");
                (EventType::Ok, applied)
            }
            Err(e) => {
                warn!(cause = %e, "fault could not be injected");
                if let Some(obj) = desc.as_object_mut() {
                    obj.insert("error".into(), json!(e.to_string()));
                }
                (EventType::Fail, Applied::Nothing)
            }
        };
        let mut done = inv.complete(kind);
        done.value = Some(desc);
        self.history.record(done);
        applied
    }

    async fn apply(
        &self,
        fault: &Fault,
        rng: &mut StdRng,
    ) -> Result<(Vec<u64>, Applied), JepsenError> {
        match fault {
            Fault::Kill { target } => {
                let nodes = self.resolve(target, rng).await;
                for id in &nodes {
                    self.cluster.kill(*id).await?;
                }
                Ok((nodes.clone(), Applied::Killed(nodes)))
            }
            Fault::Pause { target } => {
                let nodes = self.resolve(target, rng).await;
                let mut paused = Vec::new();
                for id in &nodes {
                    if let Err(e) = self.cluster.pause(*id).await {
                        // Undo what was paused so far: the fault is all or nothing.
                        for p in &paused {
                            let _ = self.cluster.resume(*p).await;
                        }
                        return Err(e);
                    }
                    paused.push(*id);
                }
                Ok((nodes, Applied::Paused(paused)))
            }
            Fault::Partition { shape } => {
                let net = self.network()?;
                let ids = self.cluster.ids();
                let rules = match shape {
                    Shape::Isolate { who } => {
                        let x = self
                            .resolve(who, rng)
                            .await
                            .first()
                            .copied()
                            .unwrap_or(ids[0]);
                        let mut rules: Vec<(u64, Vec<u64>)> = Vec::new();
                        rules.push((x, ids.iter().copied().filter(|n| *n != x).collect()));
                        for n in ids.iter().copied().filter(|n| *n != x) {
                            rules.push((n, vec![x]));
                        }
                        rules
                    }
                    Shape::Bridge { middle } => {
                        let ends: Vec<u64> = ids.iter().copied().filter(|n| n != middle).collect();
                        let mut rules = Vec::new();
                        for a in &ends {
                            let others: Vec<u64> =
                                ends.iter().copied().filter(|b| b != a).collect();
                            rules.push((*a, others));
                        }
                        rules
                    }
                    Shape::OneWay { deaf, from } => vec![(*deaf, vec![*from])],
                };
                let affected: Vec<u64> = rules.iter().map(|(n, _)| *n).collect();
                let rules_idx: Vec<(usize, Vec<usize>)> = rules
                    .iter()
                    .map(|(n, from)| {
                        (
                            self.ns_index(*n),
                            from.iter().map(|f| self.ns_index(*f)).collect(),
                        )
                    })
                    .collect();
                blocking(move || {
                    for (n, from) in rules_idx {
                        net.set_drops(n, &[DropRule::All(from)])?;
                    }
                    Ok(())
                })
                .await?;
                Ok((affected, Applied::Network))
            }
            Fault::Loss { percent } => {
                let net = self.network()?;
                let ids = self.cluster.ids();
                let indices: Vec<usize> = ids.iter().map(|id| self.ns_index(*id)).collect();
                let percent = *percent;
                blocking(move || {
                    for i in &indices {
                        let from: Vec<usize> = indices.iter().copied().filter(|j| j != i).collect();
                        net.set_drops(*i, &[DropRule::Random { from, percent }])?;
                    }
                    Ok(())
                })
                .await?;
                Ok((ids, Applied::Network))
            }
            Fault::Power { target } => {
                let disks = self.disks()?;
                let nodes = self.resolve(target, rng).await;
                for id in &nodes {
                    self.cluster.kill(*id).await?;
                }
                for id in &nodes {
                    if let Some(d) = disks.of(*id) {
                        let lost = d.power_loss();
                        info!(
                            node = id,
                            files = lost.files,
                            dirty_bytes = lost.dirty_bytes,
                            namespace_ops = lost.namespace_ops,
                            "power lost: unsynced writes dropped"
                        );
                    }
                }
                Ok((nodes.clone(), Applied::PowerLost(nodes)))
            }
            Fault::DiskFull {
                target,
                margin_bytes,
            } => {
                let disks = self.disks()?;
                let nodes = self.resolve(target, rng).await;
                for id in &nodes {
                    if let Some(d) = disks.of(*id) {
                        let used = d.used();
                        d.set_capacity(Some(used + margin_bytes));
                        info!(
                            node = id,
                            used,
                            capacity = used + margin_bytes,
                            "disk capacity shrunk"
                        );
                    }
                }
                Ok((nodes.clone(), Applied::DiskFull(nodes)))
            }
            Fault::FsyncError { target } => {
                let disks = self.disks()?;
                let nodes = self.resolve(target, rng).await;
                let mut failing = Vec::new();
                for id in &nodes {
                    if let Some(d) = disks.of(*id) {
                        self.cluster.expect_exit(*id, true).await;
                        failing.push((*id, d.failed_syncs(), self.cluster.starts(*id).await));
                        d.set_fail_sync(true);
                    }
                }
                Ok((nodes, Applied::SyncFailing(failing)))
            }
            Fault::Clock { node, offset_s } => {
                set_clock(self.clock_file(*node)?, *offset_s)?;
                info!(node, offset_s, "wall clock stepped");
                Ok((vec![*node], Applied::Clock(*node)))
            }
            Fault::Overlap { faults } => {
                let mut nodes = Vec::new();
                let mut all = Vec::new();
                for f in faults {
                    match Box::pin(self.apply(f, rng)).await {
                        Ok((n, a)) => {
                            nodes.extend(n);
                            all.push(a);
                        }
                        Err(e) => {
                            warn!(cause = %e, fault = ?f, "one of overlapping faults could not be injected");
                        }
                    }
                }
                nodes.sort_unstable();
                nodes.dedup();
                Ok((nodes, Applied::Many(all)))
            }
            Fault::SnapshotCrash { node, isolate_ms } => {
                let net = self.network()?;
                let ids = self.cluster.ids();
                let x = self.ns_index(*node);
                let others: Vec<usize> = ids
                    .iter()
                    .map(|id| self.ns_index(*id))
                    .filter(|i| *i != x)
                    .collect();
                let rules: Vec<(usize, Vec<usize>)> = std::iter::once((x, others.clone()))
                    .chain(others.iter().map(|o| (*o, vec![x])))
                    .collect();
                let isolate_net = net.clone();
                blocking(move || {
                    for (n, from) in rules {
                        isolate_net.set_drops(n, &[DropRule::All(from)])?;
                    }
                    Ok(())
                })
                .await?;
                tokio::time::sleep(Duration::from_millis(*isolate_ms)).await;
                let receiving = self.disks.as_ref().and_then(|d| d.of(*node).cloned());
                let before = receiving.as_ref().map_or(0, |d| d.snapshots_received());
                blocking(move || net.heal_all()).await?;
                // The moment the node creates a received-snapshot file, crash it. Polled
                // in-process (an atomic counter of the file system), bounded.
                let mut caught = false;
                if let Some(d) = &receiving {
                    let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
                    while tokio::time::Instant::now() < deadline {
                        if d.snapshots_received() > before {
                            caught = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                self.cluster.kill(*node).await?;
                if let Some(d) = &receiving {
                    let lost = d.power_loss();
                    info!(
                        node,
                        caught_install = caught,
                        files = lost.files,
                        dirty_bytes = lost.dirty_bytes,
                        namespace_ops = lost.namespace_ops,
                        "snapshot-crash: power cut"
                    );
                } else {
                    info!(
                        node,
                        "snapshot-crash: killed (no fault file system: no power loss)"
                    );
                }
                Ok((vec![*node], Applied::PowerLost(vec![*node])))
            }
            Fault::Membership {
                partitions,
                decommission,
            } => {
                let nodes = self
                    .change_membership(partitions, *decommission, rng)
                    .await?;
                Ok((nodes, Applied::Nothing))
            }
            Fault::LostResponses { percent } => {
                let proxies =
                    self.proxies
                        .as_ref()
                        .ok_or_else(|| JepsenError::InvalidArgument {
                            detail: "lost-responses needs the client proxies".into(),
                        })?;
                proxies.set_drop_percent(*percent);
                Ok((self.cluster.ids(), Applied::Proxies))
            }
        }
    }

    async fn heal(&self, fault: &Fault, applied: Applied) {
        let mut inv = Event::new("nemesis", EventType::Invoke, Op::Heal);
        inv.value = Some(json!({"kind": fault.kind(), "window": fault.window()}));
        let inv = self.history.record(inv);
        let mut ignored = Vec::new();
        let res = self.undo(&applied, &mut ignored).await;
        let mut done = inv.complete(if res.is_ok() {
            EventType::Ok
        } else {
            EventType::Info
        });
        let mut value = json!({"kind": fault.kind(), "window": fault.window()});
        if !ignored.is_empty() {
            value["ignored_sync_failures"] = json!(ignored);
        }
        done.value = Some(value);
        if let Err(e) = &res {
            warn!(cause = %e, "heal failed");
            done.error = Some(e.to_string());
        } else {
            info!(kind = ?fault.kind(), "fault healed");
        }
        self.history.record(done);
    }

    /// Undoes what `apply` did (in reverse order for overlapping faults). Syncs that
    /// failed while the node kept running are added to `ignored`.
    fn undo<'a>(
        &'a self,
        applied: &'a Applied,
        ignored: &'a mut Vec<Value>,
    ) -> futures::future::BoxFuture<'a, Result<(), JepsenError>> {
        Box::pin(async move {
            match applied {
                Applied::Killed(nodes) => {
                    let mut r = Ok(());
                    for id in nodes {
                        if let Err(e) = self.cluster.start(*id).await {
                            r = Err(e);
                        }
                    }
                    r
                }
                Applied::Paused(nodes) => {
                    let mut r = Ok(());
                    for id in nodes {
                        if let Err(e) = self.cluster.resume(*id).await {
                            r = Err(e);
                        }
                    }
                    r
                }
                Applied::Network => match self.network() {
                    Ok(net) => blocking(move || net.heal_all()).await,
                    Err(e) => Err(e),
                },
                Applied::Proxies => {
                    if let Some(proxies) = &self.proxies {
                        proxies.set_drop_percent(0);
                        info!(dropped = proxies.dropped(), "lost-responses healed");
                    }
                    Ok(())
                }
                Applied::PowerLost(nodes) => {
                    let mut r = Ok(());
                    for id in nodes {
                        if let Err(e) = self.cluster.start(*id).await {
                            r = Err(e);
                        }
                    }
                    r
                }
                Applied::DiskFull(nodes) => {
                    if let Some(disks) = &self.disks {
                        for id in nodes {
                            if let Some(d) = disks.of(*id) {
                                d.set_capacity(None);
                            }
                        }
                    }
                    Ok(())
                }
                Applied::SyncFailing(nodes) => {
                    let mut r = Ok(());
                    for (id, before, starts) in nodes {
                        let Some(d) = self.disks.as_ref().and_then(|disks| disks.of(*id)) else {
                            continue;
                        };
                        d.set_fail_sync(false);
                        // An exit not yet reaped is the fail-stop this fault expects.
                        if let Some(exit) = self.cluster.reap_exited_node(*id).await {
                            record_exit(&self.cluster, &self.history, &exit);
                        }
                        let failed = d.failed_syncs().saturating_sub(*before);
                        // Only the incarnation that saw its syncs fail can have ignored
                        // them: a node another fault killed and restarted meanwhile did not.
                        let same_incarnation = self.cluster.starts(*id).await == *starts;
                        if failed > 0 && same_incarnation && self.cluster.is_running(*id).await {
                            warn!(node = id, failed, "syncs failed and the node kept running");
                            ignored.push(json!({"node": id, "failed_syncs": failed}));
                        }
                        self.cluster.expect_exit(*id, false).await;
                        if let Err(e) = self.cluster.start(*id).await {
                            r = Err(e);
                        }
                    }
                    r
                }
                Applied::Clock(node) => self.clock_file(*node).and_then(|f| set_clock(f, 0)),
                Applied::Many(all) => {
                    let mut r = Ok(());
                    for a in all.iter().rev() {
                        if let Err(e) = self.undo(a, ignored).await {
                            r = Err(e);
                        }
                    }
                    r
                }
                Applied::Nothing => Ok(()),
            }
        })
    }

    /// The `membership` fault, step by step as an operator does it (docs/operations.md):
    /// the next spare joins through a member that stays, one replica (chosen by the seed)
    /// of each of `partitions` moves onto it, and once every move is done `leaving` is
    /// decommissioned; once its state is `decommissioned`, clients stop using it and its
    /// process is stopped for good. Every step is recorded (`Op::Membership`); a step
    /// that does not finish in its bound fails the fault, leaving the cluster as it is.
    /// Returns the node that joined and the one that left.
    async fn change_membership(
        &self,
        partitions: &[String],
        leaving: u64,
        rng: &mut StdRng,
    ) -> Result<Vec<u64>, JepsenError> {
        let spare =
            self.cluster
                .next_spare()
                .await
                .ok_or_else(|| JepsenError::InvalidArgument {
                    detail: "membership needs a spare node (none left)".into(),
                })?;
        let joining = spare.id;
        let members = self.cluster.ids();
        // Every request goes through a founding member that stays.
        let via = members
            .iter()
            .copied()
            .find(|m| *m != leaving)
            .ok_or_else(|| JepsenError::InvalidArgument {
                detail: "membership needs a member that stays".into(),
            })?;
        let via_url = self
            .cluster
            .specs()
            .iter()
            .find(|s| s.id == via)
            .map(|s| format!("http://{}", s.http))
            .ok_or_else(|| JepsenError::InvalidArgument {
                detail: format!("node {via} has no address"),
            })?;
        let client = &self.client;

        self.membership_step(json!({"step": "join", "node": joining, "via": via}));
        self.cluster.join(joining, &via_url).await?;
        eventually(MEMBERSHIP_STEP_TIMEOUT, "the new node active", || async {
            let active = client.ready(joining).await
                && client
                    .node_state(via, joining)
                    .await
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some("active");
            active.then_some(())
        })
        .await?;
        let mut serving = client.serving();
        serving.push(joining);
        client.set_serving(&serving);
        self.membership_step(json!({"step": "joined", "node": joining}));

        let mut targets: Vec<(String, u32, Vec<u64>)> = Vec::new();
        for key in partitions {
            let Some((topic, partition)) = split_key(key) else {
                continue;
            };
            let replicas = eventually(
                MEMBERSHIP_STEP_TIMEOUT,
                "the partition's replicas",
                || async move {
                    let parts = client.partitions(via, topic).await.ok()?;
                    parts
                        .into_iter()
                        .find(|p| p.partition == partition)
                        .map(|p| p.replicas)
                        .filter(|r| !r.is_empty())
                },
            )
            .await?;
            if replicas.contains(&joining) {
                continue;
            }
            let mut target = replicas.clone();
            let slot = rng.gen_range(0..target.len());
            target[slot] = joining;
            self.membership_step(
                json!({"step": "move", "key": key, "from": replicas, "to": target}),
            );
            // A lost answer to an accepted move is seen as the move in progress or done.
            eventually(MEMBERSHIP_STEP_TIMEOUT, "a replica move accepted", || {
                let target = target.clone();
                async move {
                    if client
                        .move_replicas(via, topic, partition, &target)
                        .await
                        .is_ok()
                    {
                        return Some(());
                    }
                    let parts = client.partitions(via, topic).await.ok()?;
                    parts
                        .iter()
                        .any(|p| p.partition == partition && p.replicas == target)
                        .then_some(())
                }
            })
            .await?;
            targets.push((topic.to_string(), partition, target));
        }
        eventually(MEMBERSHIP_MOVES_TIMEOUT, "every replica move done", || {
            let targets = &targets;
            async move {
                if client.moves_in_progress(via).await.ok()? != 0 {
                    return None;
                }
                for (topic, partition, target) in targets {
                    let parts = client.partitions(via, topic).await.ok()?;
                    let now = parts.iter().find(|p| p.partition == *partition)?;
                    if &now.replicas != target {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await?;
        self.membership_step(json!({"step": "moved", "node": joining, "keys": partitions}));

        self.membership_step(json!({"step": "decommission", "node": leaving, "via": via}));
        eventually(
            MEMBERSHIP_STEP_TIMEOUT,
            "a decommission accepted",
            || async {
                if client.decommission(via, leaving).await.is_ok() {
                    return Some(());
                }
                let state = client.node_state(via, leaving).await.ok().flatten()?;
                (state == "decommissioning" || state == "decommissioned").then_some(())
            },
        )
        .await?;
        eventually(
            MEMBERSHIP_MOVES_TIMEOUT,
            "the node decommissioned",
            || async {
                let state = client.node_state(via, leaving).await.ok().flatten()?;
                (state == "decommissioned").then_some(())
            },
        )
        .await?;
        self.membership_step(json!({"step": "decommissioned", "node": leaving}));
        let serving: Vec<u64> = client
            .serving()
            .into_iter()
            .filter(|n| *n != leaving)
            .collect();
        client.set_serving(&serving);
        self.cluster.retire(leaving, RETIRE_GRACE).await?;
        self.membership_step(json!({"step": "stopped", "node": leaving}));
        Ok(vec![joining, leaving])
    }

    /// The index of node `id`'s namespace (its place among every node the run may have,
    /// members or not: membership changes do not move a node's namespace).
    fn ns_index(&self, id: u64) -> usize {
        self.cluster.index(id).unwrap_or(0)
    }

    /// Records one step of a `membership` fault.
    fn membership_step(&self, value: Value) {
        info!(step = %value, "membership");
        let mut e = Event::new("membership", EventType::Info, Op::Membership);
        e.value = Some(value);
        self.history.record(e);
    }

    fn clock_file(&self, node: u64) -> Result<&Path, JepsenError> {
        self.clock_files
            .as_ref()
            .and_then(|files| files.iter().find(|(n, _)| *n == node))
            .map(|(_, p)| p.as_path())
            .ok_or_else(|| JepsenError::InvalidArgument {
                detail: "clock faults need libfaketime".into(),
            })
    }

    fn disks(&self) -> Result<Arc<Disks>, JepsenError> {
        self.disks
            .clone()
            .ok_or_else(|| JepsenError::InvalidArgument {
                detail: "disk faults need the fault file system (FUSE)".into(),
            })
    }

    fn network(&self) -> Result<Arc<Namespaces>, JepsenError> {
        self.net
            .clone()
            .ok_or_else(|| JepsenError::InvalidArgument {
                detail: "network faults need namespaces".into(),
            })
    }

    /// Concrete node ids for `target`. A leader that cannot be learnt (no node answers,
    /// no leader elected) falls back to a seeded random node, and the fault event says
    /// which node was hit.
    async fn resolve(&self, target: &Target, rng: &mut StdRng) -> Vec<u64> {
        let ids = self.cluster.ids();
        let fallback = ids[rng.gen_range(0..ids.len())];
        match target {
            // A node that left the cluster (membership) is replaced by a member.
            Target::Node { node } if !ids.contains(node) => vec![fallback],
            Target::Node { node } => vec![*node],
            Target::All => ids,
            Target::Leader { key } => {
                let Some((topic, partition)) = split_key(key) else {
                    return vec![fallback];
                };
                for node in &ids {
                    if let Ok(parts) = self.client.partitions(*node, topic).await {
                        if let Some(l) = parts
                            .iter()
                            .find(|p| p.partition == partition)
                            .and_then(|p| p.leader)
                        {
                            return vec![l];
                        }
                    }
                }
                vec![fallback]
            }
            Target::ControllerLeader => {
                for node in &ids {
                    if let Ok(Some(l)) = self.client.controller_leader(*node).await {
                        return vec![l];
                    }
                }
                vec![fallback]
            }
        }
    }
}

/// libfaketime, as Debian's `libfaketime` package installs it (the thread-safe build).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Runs every node under libfaketime with an offset file of its own under `dir` (all at
/// "+0"), and returns the files.
///
/// # Errors
/// libfaketime is not installed, or a file cannot be written.
pub fn prepare_clocks(
    dir: &Path,
    specs: &mut [NodeSpec],
) -> Result<Vec<(u64, PathBuf)>, JepsenError> {
    if !Path::new(LIBFAKETIME).is_file() {
        return Err(JepsenError::InvalidArgument {
            detail: format!("{LIBFAKETIME} not found (apt-get install libfaketime)"),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| JepsenError::io(dir, e))?;
    let mut files = Vec::new();
    for spec in specs.iter_mut() {
        let file = dir.join(format!("n{}.faketime", spec.id));
        set_clock(&file, 0)?;
        spec.env.extend([
            ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_string(),
                file.display().to_string(),
            ),
            // Re-read the file at most once a second, not at every call.
            ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
            // Wall clock only: timers, timeouts and elections keep the real monotonic clock.
            ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ]);
        files.push((spec.id, file));
    }
    Ok(files)
}

/// Writes a libfaketime relative offset (`+3600`, `-3600`, `+0`: seconds) atomically.
fn set_clock(file: &Path, offset_s: i64) -> Result<(), JepsenError> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset_s:+}\n")).map_err(|e| JepsenError::io(&tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| JepsenError::io(file, e))
}

/// Records a node's exit nobody signalled: a `node-fail-stop` phase event when a fault
/// expected it and the node kept the fail-stop contract (non-zero status after an ERROR
/// line), else a `node-exit` (which the checker counts as `node-crash`).
pub fn record_exit(cluster: &Cluster, history: &History, exit: &UnexpectedExit) {
    let errors = cluster.log_lines(exit.id, "ERROR", 3);
    let kept_contract = exit.expected && !exit.success && !errors.is_empty();
    let mut e = Event::new("harness", EventType::Info, Op::Phase);
    e.node = Some(exit.id);
    if kept_contract {
        e.value = Some(json!("node-fail-stop"));
        e.error = Some(format!(
            "fail-stop under a failing fsync: {}; {}",
            exit.status,
            errors.join(" | ")
        ));
        info!(node = exit.id, status = %exit.status, "node failed-stop as expected");
    } else {
        e.value = Some(json!("node-exit"));
        e.error = Some(if exit.expected {
            format!(
                "exited under a failing fsync without the fail-stop contract (non-zero status after an ERROR line): {}; {}",
                exit.status,
                errors.join(" | ")
            )
        } else {
            format!("exited by itself: {}", exit.status)
        });
    }
    history.record(e);
}

/// Runs a short blocking command (`ip netns exec ... nft`) off the async workers.
async fn blocking<F>(f: F) -> Result<(), JepsenError>
where
    F: FnOnce() -> Result<(), JepsenError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JepsenError::Command {
            command: "nft".into(),
            detail: format!("task: {e}"),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let keys = vec!["t/0".to_string(), "t/1".to_string()];
        let kinds = [
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Partition,
            FaultKind::Loss,
        ];
        let a = plan(7, &kinds, Duration::from_secs(120), &keys, &[1, 2, 3]);
        let b = plan(7, &kinds, Duration::from_secs(120), &keys, &[1, 2, 3]);
        let c = plan(8, &kinds, Duration::from_secs(120), &keys, &[1, 2, 3]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let total: u64 = a.iter().map(|s| s.quiet_ms + s.hold_ms).sum();
        assert!(total >= 120_000);
        assert!(a.iter().all(|s| kinds.contains(&s.fault.kind())));
    }

    #[test]
    fn a_membership_change_is_planned_once_with_founders_and_known_partitions() {
        let keys: Vec<String> = (0..2)
            .flat_map(|t| (0..3).map(move |p| format!("jepsen-{t}/{p}")))
            .collect();
        let mut sizes = std::collections::BTreeSet::new();
        for seed in 1..=20 {
            for kinds in [
                &[FaultKind::Membership][..],
                &[FaultKind::Membership, FaultKind::Kill, FaultKind::Pause][..],
            ] {
                let steps = plan_with(
                    seed,
                    kinds,
                    Duration::from_secs(60),
                    &keys,
                    &[1, 2, 3],
                    true,
                );
                let changes: Vec<&Fault> = steps
                    .iter()
                    .map(|s| &s.fault)
                    .filter(|f| f.kind() == FaultKind::Membership)
                    .collect();
                assert!(changes.len() <= 1, "seed {seed}: {steps:?}");
                let mut at = 0;
                for s in &steps {
                    at += s.quiet_ms;
                    if s.fault.kind() == FaultKind::Membership {
                        assert!(at >= 20_000, "seed {seed}: membership at {at} ms");
                    }
                    at += s.hold_ms;
                }
                if kinds.len() == 1 {
                    assert_eq!(steps.len(), 1, "seed {seed}: {steps:?}");
                }
                for f in changes {
                    let Fault::Membership {
                        partitions,
                        decommission,
                    } = f
                    else {
                        unreachable!("filtered by kind")
                    };
                    assert!([1, 2, 3].contains(decommission), "seed {seed}: {f:?}");
                    assert!(!partitions.is_empty() && partitions.len() <= 3);
                    sizes.insert(partitions.len());
                    assert!(partitions.iter().all(|k| keys.contains(k)));
                }
                // Never paired with another fault: it changes the cluster for good.
                assert!(steps.iter().all(|s| match &s.fault {
                    Fault::Overlap { faults } =>
                        faults.iter().all(|f| f.kind() != FaultKind::Membership),
                    _ => true,
                }));
            }
        }
        assert!(sizes.len() > 1, "the seed chooses how many move: {sizes:?}");
        let a = plan(
            3,
            &[FaultKind::Membership],
            Duration::from_secs(60),
            &keys,
            &[1, 2, 3],
        );
        let b = plan(
            3,
            &[FaultKind::Membership],
            Duration::from_secs(60),
            &keys,
            &[1, 2, 3],
        );
        assert_eq!(a, b);
    }

    #[test]
    fn only_requested_kinds_are_planned() {
        let steps = plan(
            1,
            &[FaultKind::Pause],
            Duration::from_secs(60),
            &[],
            &[1, 2, 3],
        );
        assert!(!steps.is_empty());
        assert!(steps.iter().all(|s| s.fault.kind() == FaultKind::Pause));
    }

    #[test]
    fn the_ci_smoke_schedule_holds_a_power_loss_of_every_node() {
        // jepsen/tests/chaos_smoke.rs runs seed 4 for 60 s, with namespaces (CI) or
        // without (the partition fault left out): both schedules must cut every node's
        // power well before the end.
        let keys: Vec<String> = (0..2)
            .flat_map(|t| (0..3).map(move |p| format!("jepsen-{t}/{p}")))
            .collect();
        for kinds in [
            &[
                FaultKind::Kill,
                FaultKind::Pause,
                FaultKind::Partition,
                FaultKind::PowerAll,
            ][..],
            &[FaultKind::Kill, FaultKind::Pause, FaultKind::PowerAll][..],
        ] {
            let steps = plan(4, kinds, Duration::from_secs(60), &keys, &[1, 2, 3]);
            let mut at = 0;
            let healed = steps.iter().find_map(|s| {
                at += s.quiet_ms + s.hold_ms;
                (s.fault.window() == "power-all").then_some(at)
            });
            assert!(healed.is_some_and(|t| t < 50_000), "{kinds:?}: {steps:?}");
        }
    }

    #[test]
    fn clock_offsets_are_written_as_libfaketime_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("n1.faketime");
        for (offset, text) in [(3600, "+3600\n"), (-3600, "-3600\n"), (0, "+0\n")] {
            set_clock(&f, offset).expect("write");
            assert_eq!(std::fs::read_to_string(&f).expect("read"), text);
        }
    }

    #[test]
    fn overlapping_steps_pair_different_kinds_and_never_two_network_faults() {
        let keys = vec!["t/0".to_string()];
        let kinds = [FaultKind::Partition, FaultKind::Loss, FaultKind::Power];
        let plain = plan(3, &kinds, Duration::from_secs(300), &keys, &[1, 2, 3]);
        assert_eq!(
            plain,
            plan_with(
                3,
                &kinds,
                Duration::from_secs(300),
                &keys,
                &[1, 2, 3],
                false
            )
        );
        let steps = plan_with(3, &kinds, Duration::from_secs(300), &keys, &[1, 2, 3], true);
        let pairs: Vec<&Vec<Fault>> = steps
            .iter()
            .filter_map(|s| match &s.fault {
                Fault::Overlap { faults } => Some(faults),
                _ => None,
            })
            .collect();
        assert!(!pairs.is_empty());
        for faults in pairs {
            assert_eq!(faults.len(), 2);
            assert_ne!(faults[0].kind(), faults[1].kind());
            assert!(!(faults[0].kind().needs_network() && faults[1].kind().needs_network()));
        }
    }

    #[test]
    fn faults_serialize_with_their_kind() {
        let f = Fault::Kill {
            target: Target::Leader { key: "t/0".into() },
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "kill");
        assert_eq!(v["target"], "leader");
        assert_eq!(v["key"], "t/0");
    }
}
