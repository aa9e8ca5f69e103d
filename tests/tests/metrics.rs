//! `GET /metrics` as an operator's Prometheus scrapes it (docs/operations.md § What to
//! watch): the process, Raft and partition series exist and move with the load, and a
//! deleted topic's series are gone.
//!
//! Needs the binary: `cargo build -p psubd` first.

use psubd_tests::metrics::{metric_value as value, try_scrape};
use psubd_tests::{eventually, Cluster, NewRecord, NodeClient};
use serde_json::json;
use std::time::Duration;

const TOPIC: &str = "watched";

/// The node's metrics text.
async fn scrape(node: &NodeClient) -> String {
    try_scrape(node).await.expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_raft_and_partition_series_move_and_leave_with_their_topic() {
    let cluster = Cluster::start(3).await;
    let node = cluster.node(1);
    node.create_topic(TOPIC, 1, 3).await;
    let leader = cluster.leader_of(TOPIC, 0).await;
    let on_leader = cluster.node(leader);
    let partition = [r#"topic="watched""#, r#"partition="0""#];

    let before = scrape(&on_leader).await;
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(value(&before, process, &[]).is_some(), "{process} missing");
    }
    let term = value(&before, "psubd_partition_raft_term", &partition).expect("a term");
    assert!(term >= 1.0, "an elected partition has a term: {term}");
    assert_eq!(
        value(&before, "psubd_partition_leader", &partition),
        Some(1.0)
    );
    let applied_before =
        value(&before, "psubd_partition_raft_applied_index", &partition).expect("an applied index");

    let records: Vec<NewRecord> = (0..50)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    node.publish(TOPIC, &records).await;
    let after = scrape(&on_leader).await;
    assert_eq!(
        value(&after, "psubd_partition_high_watermark", &partition),
        Some(50.0)
    );
    let applied_after =
        value(&after, "psubd_partition_raft_applied_index", &partition).expect("an applied index");
    assert!(
        applied_after > applied_before,
        "the applied index moves with publishes: {applied_before} then {applied_after}"
    );
    // The leader reports each follower's lag; every follower catches up.
    for follower in cluster.ids().into_iter().filter(|id| *id != leader) {
        let follower_label = format!(r#"follower="{follower}""#);
        let labels = [partition[0], partition[1], follower_label.as_str()];
        eventually(
            Duration::from_secs(10),
            &format!("follower {follower} caught up"),
            || {
                let on_leader = on_leader.clone();
                async move {
                    let text = scrape(&on_leader).await;
                    match value(&text, "psubd_partition_raft_follower_lag", &labels) {
                        Some(0.0) => Ok(()),
                        other => Err(format!("lag {other:?}")),
                    }
                }
            },
        )
        .await;
    }
    assert!(
        value(
            &scrape(&node).await,
            "psubd_records_published_total",
            &[partition[0]]
        )
        .is_some(),
        "the publishing node counts the topic's records"
    );

    let resp = node
        .http()
        .delete(node.url(&format!("/v1/topics/{TOPIC}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    eventually(
        Duration::from_secs(10),
        "the deleted topic's series gone from every node",
        || {
            let nodes: Vec<NodeClient> = cluster
                .ids()
                .into_iter()
                .map(|id| cluster.node(id))
                .collect();
            async move {
                for node in &nodes {
                    let text = scrape(node).await;
                    if text.contains(r#"topic="watched""#) {
                        return Err(format!("{} still reports the topic", node.url("")));
                    }
                }
                Ok(())
            }
        },
    )
    .await;
}
