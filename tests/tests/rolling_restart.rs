//! A rolling restart under load (docs/operations.md § Shutdown and restarts): every node in
//! turn is stopped with SIGTERM, started again and waited ready, while 64 publishers keep
//! publishing single records. A stopping node hands its leaderships to caught-up followers
//! before it stops serving, so no publish fails and none ends with an unknown outcome; and
//! once the nodes are back, leaders return to their preferred replicas.
//!
//! The publishers reach the cluster as through a load balancer: a node is taken out of
//! rotation just before its SIGTERM (as an orchestrator does) and put back once it is
//! ready, so no request is sent to a port that is closing. Requests already on their way
//! to the stopping node, and every request the other nodes forward to its partitions, must
//! still finish. A publisher retries only what the API says to retry: a 503 carrying
//! `Retry-After`, after waiting that long.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use psubd_tests::{eventually, Cluster, NewRecord, NodeClient, PublishOutcome};
use serde_json::json;

const TOPIC: &str = "roll";
const PARTITIONS: u32 = 6;
const PUBLISHERS: usize = 64;

/// The deadline of one publish attempt: past the node's write timeout (10 s), so an
/// answer always comes before the client gives up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// The nodes in rotation, as a load balancer holds them.
#[derive(Clone, Default)]
struct Rotation(Arc<RwLock<Vec<NodeClient>>>);

impl Rotation {
    fn pick(&self, n: usize) -> NodeClient {
        let nodes = self.0.read().unwrap();
        nodes[n % nodes.len()].clone()
    }

    fn remove(&self, base: &str) {
        self.0.write().unwrap().retain(|n| n.base() != base);
    }

    fn add(&self, node: NodeClient) {
        self.0.write().unwrap().push(node);
    }
}

/// One acknowledged record, and when its publish started and how long it took.
struct Acked {
    partition: u32,
    offset: u64,
    value: String,
    started: Instant,
    took: Duration,
}

/// What one publisher saw.
#[derive(Default)]
struct Tally {
    acked: Vec<Acked>,
    /// Publishes that ended without an acknowledgement, with why.
    failed: Vec<String>,
    /// Of them, those whose outcome is unknown (504, or no answer after sending).
    unknown: usize,
    /// 503 answers retried after their `Retry-After`.
    retried: usize,
}

async fn publisher(id: usize, rotation: Rotation, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let value = format!("p{id}-{seq}");
        seq += 1;
        let record = NewRecord {
            value: json!(value),
            ..NewRecord::default()
        };
        let started = Instant::now();
        let mut attempt = 0usize;
        loop {
            let node = rotation.pick(id + attempt);
            attempt += 1;
            match node
                .try_publish(TOPIC, std::slice::from_ref(&record), ATTEMPT_TIMEOUT)
                .await
            {
                PublishOutcome::Acked(reports) => {
                    let report = &reports[0];
                    tally.acked.push(Acked {
                        partition: report.partition,
                        offset: report.offset,
                        value,
                        started,
                        took: started.elapsed(),
                    });
                    break;
                }
                PublishOutcome::Unavailable {
                    retry_after: Some(after),
                    ..
                } => {
                    let secs: u64 = after.trim().parse().unwrap_or(1);
                    tally.retried += 1;
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                PublishOutcome::OutcomeUnknown { body } => {
                    tally.unknown += 1;
                    tally.failed.push(format!(
                        "{} after {:?}: 504 {body}",
                        node.base(),
                        started.elapsed()
                    ));
                    break;
                }
                PublishOutcome::Transport { not_sent, error } => {
                    if !not_sent {
                        tally.unknown += 1;
                    }
                    tally
                        .failed
                        .push(format!("{}: transport: {error}", node.base()));
                    break;
                }
                other => {
                    tally.failed.push(format!("{}: {other:?}", node.base()));
                    break;
                }
            }
        }
    }
    tally
}

/// Partition leaders per node, from `GET /v1/cluster` on `node` (user topic `TOPIC`).
async fn leaders_per_node(node: &NodeClient, ids: &[u64]) -> Result<BTreeMap<u64, usize>, String> {
    let info = node.try_cluster_info().await?;
    let mut per_node: BTreeMap<u64, usize> = ids.iter().map(|id| (*id, 0)).collect();
    for partition in info.partitions.iter().filter(|p| p.topic == TOPIC) {
        let leader = partition
            .leader
            .ok_or_else(|| format!("partition {} has no leader", partition.partition))?;
        *per_node.entry(leader).or_default() += 1;
    }
    Ok(per_node)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// docs/architecture.md § Failure contract; docs/operations.md § Shutdown and restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_fails_no_publish_and_rebalances_leaders() {
    // Leaders go back to their preferred replicas within a second of being able to.
    let mut cluster =
        Cluster::start_with_env(3, &[("PSUBD_LEADER_BALANCE_INTERVAL_MS", "1000")]).await;
    let ids = cluster.ids();
    cluster.node(1).create_topic(TOPIC, PARTITIONS, 3).await;

    let rotation = Rotation::default();
    for id in &ids {
        rotation.add(cluster.node(*id));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publisher(i, rotation.clone(), stop.clone())))
        .collect();

    let roll_started = Instant::now();
    for id in ids.clone() {
        let node = cluster.node(id);
        rotation.remove(node.base());
        let status = cluster.stop(id).await;
        assert!(
            status.success(),
            "node {id} exited with {status} after SIGTERM"
        );
        cluster.restart(id).await;
        rotation.add(node);
    }
    let roll_took = roll_started.elapsed();

    // After the roll, leaders spread again: within one of even per node.
    let asker = cluster.node(1);
    let even = PARTITIONS as usize / ids.len();
    eventually(
        Duration::from_secs(60),
        "partition leaders within one of even per node",
        || async {
            let per_node = leaders_per_node(&asker, &ids).await?;
            if per_node.values().all(|n| n.abs_diff(even) <= 1) {
                Ok(())
            } else {
                Err(format!("leaders per node: {per_node:?}"))
            }
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for publisher in publishers {
        let one = publisher.await.expect("publisher task");
        tally.acked.extend(one.acked);
        tally.failed.extend(one.failed);
        tally.unknown += one.unknown;
        tally.retried += one.retried;
    }

    let roll_ended = roll_started + roll_took;
    let mut during: Vec<Duration> = tally
        .acked
        .iter()
        .filter(|a| a.started >= roll_started && a.started <= roll_ended)
        .map(|a| a.took)
        .collect();
    during.sort_unstable();
    println!(
        "rolling restart of 3 nodes took {roll_took:?}: {} publishes acknowledged ({} during \
         the roll), {} failed, {} unknown outcomes, {} 503s retried; publish latency during \
         the roll p50 {:?} p99 {:?} max {:?}",
        tally.acked.len(),
        during.len(),
        tally.failed.len(),
        tally.unknown,
        tally.retried,
        percentile(&during, 50.0),
        percentile(&during, 99.0),
        during.last().copied().unwrap_or_default(),
    );
    assert!(
        tally.failed.is_empty(),
        "{} publishes failed ({} with unknown outcome), e.g. {:?}",
        tally.failed.len(),
        tally.unknown,
        &tally.failed[..tally.failed.len().min(5)]
    );
    assert!(
        !during.is_empty(),
        "no publish was acknowledged during the roll"
    );

    // Every acknowledged record is readable at its offset.
    let reader = cluster.node(2);
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for record in reader.fetch_all(TOPIC, partition).await {
            let value = record.value.as_str().unwrap_or_default().to_string();
            stored.insert((partition, record.offset), value);
        }
    }
    for acked in &tally.acked {
        assert_eq!(
            stored.get(&(acked.partition, acked.offset)),
            Some(&acked.value),
            "acknowledged record {} at {}/{}",
            acked.value,
            acked.partition,
            acked.offset
        );
    }
}
