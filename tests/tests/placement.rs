//! Controller: replica placement on clusters larger than three nodes.
//! The controller chooses replica sets and spreads them over the nodes, so a 5- or
//! 7-node cluster holds more partitions than a 3-node one, and leaders are balanced
//! across nodes (docs/architecture.md § Raft groups).
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use psubd_tests::{eventually, Cluster, NewRecord};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_spread_replicas_and_leaders_and_skip_a_dead_node() {
    let mut cluster = Cluster::start(5).await;
    let node = cluster.node(1);
    node.create_topic("wide", 5, 3).await;

    // Every partition has 3 distinct replicas; together they use all 5 nodes, each node
    // holding the same share, and once elected the 5 leaders are 5 different nodes.
    let partitions = eventually(
        Duration::from_secs(20),
        "a leader for every partition",
        || {
            let node = node.clone();
            async move {
                let partitions = node.try_partitions("wide").await?;
                if partitions.iter().all(|p| p.leader.is_some()) {
                    Ok(partitions)
                } else {
                    Err(format!("leaderless partitions: {partitions:?}"))
                }
            }
        },
    )
    .await;
    let mut load: BTreeMap<u64, usize> = BTreeMap::new();
    for p in &partitions {
        let distinct: BTreeSet<u64> = p.replicas.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            3,
            "partition {}: replicas {:?}",
            p.partition,
            p.replicas
        );
        for r in &p.replicas {
            *load.entry(*r).or_default() += 1;
        }
    }
    assert_eq!(load.len(), 5, "every node holds replicas: {load:?}");
    assert!(
        load.values().all(|n| *n == 3),
        "replicas spread evenly: {load:?}"
    );
    let leaders: BTreeSet<u64> = partitions.iter().filter_map(|p| p.leader).collect();
    assert_eq!(
        leaders.len(),
        5,
        "leaders balanced over the nodes: {partitions:?}"
    );

    // A topic created while node 5 is down is placed on the live nodes only, and works.
    cluster.kill(5);
    eventually(Duration::from_secs(20), "node 5 seen as gone", || {
        let node = node.clone();
        async move {
            let info = node.try_cluster_info().await?;
            let dead = info.nodes.iter().any(|n| n.id == 5 && !n.alive);
            if dead {
                Ok(())
            } else {
                Err(format!("{info:?}"))
            }
        }
    })
    .await;
    node.create_topic("after", 4, 3).await;
    let placed = eventually(
        Duration::from_secs(20),
        "the new topic's partitions open",
        || {
            let node = node.clone();
            async move { node.try_partitions("after").await }
        },
    )
    .await;
    for p in &placed {
        assert!(
            !p.replicas.contains(&5),
            "partition {} placed on the dead node: {:?}",
            p.partition,
            p.replicas
        );
    }
    let reports = node
        .publish(
            "after",
            &[NewRecord {
                key: None,
                value: json!("x"),
                headers: None,
                partition: Some(3),
            }],
        )
        .await;
    assert_eq!(reports.len(), 1);
}
