//! The final phase: heal everything, restart every node (SIGKILL), wait for leaders, read
//! every partition from offset 0 on every node's own replica (`replica=local`: no
//! forwarding, so a replica that lost a suffix shows it) until the reads are stable and
//! agree, and let the consumer group drain. What it reads becomes the `final-state` events the checker
//! compares against every acknowledgement.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::error::JepsenError;
use crate::faultfs::Disks;
use crate::history::{split_key, Event, EventType, History, Op, SeenRecord};
use crate::network::Namespaces;
use crate::wait::eventually;
use crate::workload::Workload;

/// Time for every node to answer `/readyz` 200 after the restart.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Time for every partition to have a leader.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(90);
/// Rounds of full reads before giving up on stability.
const MAX_ROUNDS: usize = 15;
/// Pause between read rounds, so a lagging replica can catch up.
const ROUND_PAUSE: Duration = Duration::from_millis(1000);
/// Records per page of the final reads.
const PAGE: u32 = 1000;
/// Time the group gets to consume everything.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// One node's view of one partition: its records from offset 0, and its high watermark.
type View = Result<(Vec<SeenRecord>, Option<u64>), String>;

/// Runs the final phase. Each step is recorded in the history; a step that cannot finish
/// in time is recorded as a `phase` event with the error, and the checker reports the
/// run as incomplete.
pub async fn run(
    cluster: &Cluster,
    net: Option<&Arc<Namespaces>>,
    disks: Option<&Disks>,
    workload: &Workload,
    history: &History,
    groups: bool,
) -> Result<(), JepsenError> {
    phase(history, "final", None);
    heal(cluster, net).await;
    if let Some(disks) = disks {
        disks.heal_all();
        for id in cluster.ids() {
            cluster.expect_exit(id, false).await;
        }
    }
    phase(history, "restart", None);
    restart_all(cluster).await?;
    let client = &workload.client;
    let ids = cluster.ids();
    let res = eventually(
        READY_TIMEOUT,
        "every node ready after the final restart",
        || async {
            for id in &ids {
                if !client.ready(*id).await {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    if let Err(e) = res {
        phase(history, "final-failed", Some(e.to_string()));
        return Err(e);
    }
    let topics = workload.config.topics.clone();
    let partitions = workload.config.partitions;
    let res = eventually(LEADERS_TIMEOUT, "a leader for every partition", || async {
        for topic in &topics {
            let mut known = false;
            for id in &ids {
                if let Ok(parts) = client.partitions(*id, topic).await {
                    if parts.len() as u32 == partitions && parts.iter().all(|p| p.leader.is_some())
                    {
                        known = true;
                        break;
                    }
                }
            }
            if !known {
                return None;
            }
        }
        Some(())
    })
    .await;
    if let Err(e) = res {
        phase(history, "final-failed", Some(e.to_string()));
        return Err(e);
    }
    phase(history, "final-read", None);
    let views = stable_views(workload, &ids).await;
    for ((node, key), view) in &views {
        let mut inv = Event::new("final", EventType::Invoke, Op::FinalState);
        inv.node = Some(*node);
        inv.key = Some(key.clone());
        let inv = history.record(inv);
        let done = match view {
            Ok((records, hw)) => {
                let mut e = inv.complete(EventType::Ok);
                e.records = Some(records.clone());
                e.high_watermark = *hw;
                e
            }
            Err(err) => {
                let mut e = inv.complete(EventType::Fail);
                e.error = Some(err.clone());
                e
            }
        };
        history.record(done);
    }
    if groups {
        phase(history, "drain", None);
        let mut targets: BTreeMap<String, u64> = BTreeMap::new();
        for ((_, key), view) in &views {
            if let Ok((records, _)) = view {
                let end = records.last().map(|r| r.offset + 1).unwrap_or(0);
                let t = targets.entry(key.clone()).or_insert(0);
                *t = (*t).max(end);
            }
        }
        let stop = CancellationToken::new();
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
                stop.cancel();
            })
        };
        let drained = workload.member("final-g", 0xf1, stop, Some(targets)).await;
        timer.abort();
        for id in &ids {
            workload.committed_once("final-o", *id).await;
        }
        if !drained {
            warn!("consumer group did not drain in time");
            phase(
                history,
                "drain-failed",
                Some("group did not drain in time".into()),
            );
        }
    }
    phase(history, "done", None);
    Ok(())
}

fn phase(history: &History, name: &str, error: Option<String>) {
    let mut e = Event::new("harness", EventType::Info, Op::Phase);
    e.value = Some(json!(name));
    e.error = error;
    history.record(e);
    info!(phase = name, "phase");
}

/// Removes every network rule, resumes paused nodes, starts nodes that are down.
pub async fn heal(cluster: &Cluster, net: Option<&Arc<Namespaces>>) {
    if let Some(net) = net {
        let net = net.clone();
        let res = tokio::task::spawn_blocking(move || net.heal_all()).await;
        if let Ok(Err(e)) | Err(e) = res.map_err(|e| JepsenError::Command {
            command: "nft".into(),
            detail: e.to_string(),
        }) {
            warn!(cause = %e, "healing the network failed");
        }
    }
    for id in cluster.ids() {
        if let Err(e) = cluster.resume(id).await {
            warn!(node = id, cause = %e, "resume failed");
        }
    }
}

/// SIGKILL of every node, then a start: a crash, not a clean shutdown, so a node that
/// depended on a graceful stop to make its data durable is caught (under the fault file
/// system, unsynced data stays readable as in a page cache; power faults drop it).
async fn restart_all(cluster: &Cluster) -> Result<(), JepsenError> {
    for id in cluster.ids() {
        if let Err(e) = cluster.kill(id).await {
            warn!(node = id, cause = %e, "killing node failed");
        }
    }
    cluster.start_all().await
}

/// Reads every partition on every node from offset 0 until two consecutive rounds are
/// identical and every node agrees, or `MAX_ROUNDS` is reached (then the last round is
/// returned, disagreements and all: the checker reports them).
async fn stable_views(workload: &Workload, ids: &[u64]) -> BTreeMap<(u64, String), View> {
    let keys = workload.config.keys();
    let mut previous: Option<BTreeMap<(u64, String), View>> = None;
    for round in 0..MAX_ROUNDS {
        let mut views = BTreeMap::new();
        for id in ids {
            for key in &keys {
                views.insert((*id, key.clone()), read_all(workload, *id, key).await);
            }
        }
        let agree = keys.iter().all(|k| {
            let first = views.get(&(ids[0], k.clone()));
            ids.iter().all(|id| {
                let v = views.get(&(*id, k.clone()));
                matches!(v, Some(Ok(_))) && v.map(records_of) == first.map(records_of)
            })
        });
        let same = previous.as_ref() == Some(&views);
        info!(round, agree, same, "final read round");
        if agree && same {
            return views;
        }
        previous = Some(views);
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    previous.unwrap_or_default()
}

fn records_of(v: &View) -> Option<&Vec<SeenRecord>> {
    v.as_ref().ok().map(|(r, _)| r)
}

/// Pages through `key` on `node` from offset 0 to its end, without long-polling. These
/// page reads are not separate history events: the view becomes one `final-state` event.
async fn read_all(workload: &Workload, node: u64, key: &str) -> View {
    let Some((topic, partition)) = split_key(key) else {
        return Err(format!("bad key {key}"));
    };
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut hw = None;
    // Bounded: at most this many pages however the node answers.
    for _ in 0..100_000 {
        let a = workload
            .client
            .read_local(node, topic, partition, offset, PAGE)
            .await
            .map_err(|f| f.describe())?;
        hw = a.high_watermark.or(hw);
        let Some(last) = a.records.last().map(|r| r.offset) else {
            return Ok((records, hw));
        };
        let next = a.next_offset.unwrap_or(last + 1);
        if next <= offset {
            return Err(format!("next_offset {next} does not advance past {offset}"));
        }
        records.extend(a.records);
        offset = next;
    }
    Err("too many pages".into())
}
