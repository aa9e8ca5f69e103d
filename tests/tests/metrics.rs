//! `GET /metrics` as an operator's Prometheus scrapes it (docs/operations.md § What to
//! watch): the process, Raft, snapshot, partition and consumer group series exist and move
//! with the load, a group's lag rises with publishes and falls after a commit, and a
//! deleted group's or topic's series are gone.
//!
//! Needs the binary: `cargo build -p psubd` first.

use psubd_tests::metrics::{metric_value as value, try_scrape};
use psubd_tests::{eventually, Cluster, NewRecord, NodeClient};
use serde_json::json;
use std::time::Duration;

const TOPIC: &str = "watched";
const GROUP: &str = "watchers";

/// The node's metrics text.
async fn scrape(node: &NodeClient) -> String {
    try_scrape(node).await.expect("metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_raft_and_partition_series_move_and_leave_with_their_topic() {
    // Snapshots every 20 entries, so a few dozen publishes build some.
    let cluster = Cluster::start_with_env(
        3,
        &[
            ("PSUBD_SNAPSHOT_EVERY_ENTRIES", "20"),
            ("PSUBD_SNAPSHOT_GROWTH_PERCENT", "0"),
            ("PSUBD_SNAPSHOT_STAGGER_PERCENT", "0"),
        ],
    )
    .await;
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
    let committed_before =
        value(&before, "psubd_partition_raft_commit_index", &partition).expect("a commit index");
    let leader_changes = value(
        &before,
        "psubd_partition_raft_leader_changes_total",
        &partition,
    )
    .expect("a leader changes counter");
    assert!(
        leader_changes >= 1.0,
        "the partition's first leader is a change: {leader_changes}"
    );
    for snapshot in [
        "psubd_partition_snapshot_builds_total",
        "psubd_partition_snapshot_built_bytes_total",
        "psubd_partition_snapshot_installs_total",
        "psubd_partition_snapshot_installed_bytes_total",
    ] {
        assert!(
            value(&before, snapshot, &partition).is_some(),
            "{snapshot} missing"
        );
    }

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
    let committed_after =
        value(&after, "psubd_partition_raft_commit_index", &partition).expect("a commit index");
    assert!(
        committed_after > committed_before && committed_after >= applied_after,
        "the commit index moves with publishes and leads the applied index: \
         {committed_before} then {committed_after} (applied {applied_after})"
    );

    // One entry per publish: past 20 entries the replicas build snapshots.
    for i in 0..30 {
        node.publish(TOPIC, &[NewRecord::keyed("single", json!(i))])
            .await;
    }
    eventually(
        Duration::from_secs(20),
        "the leader built a snapshot",
        || {
            let on_leader = on_leader.clone();
            async move {
                let text = scrape(&on_leader).await;
                let builds = value(&text, "psubd_partition_snapshot_builds_total", &partition);
                let bytes = value(
                    &text,
                    "psubd_partition_snapshot_built_bytes_total",
                    &partition,
                );
                match (builds, bytes) {
                    (Some(b), Some(n)) if b >= 1.0 && n > 0.0 => Ok(()),
                    other => Err(format!("builds and bytes {other:?}")),
                }
            }
        },
    )
    .await;

    group_lag_rises_with_publishes_and_falls_after_commits(&cluster).await;
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

/// The group's coordinator (the node that exports its series).
async fn coordinator(node: &NodeClient) -> u64 {
    let described = node.try_get_json(&format!("/v1/groups/{GROUP}")).await;
    let described = described.unwrap_or_else(|e| panic!("describe {GROUP}: {e}"));
    described["coordinator"]
        .as_u64()
        .unwrap_or_else(|| panic!("no coordinator in {described}"))
}

/// Waits until the coordinator reports `lag` for the group in partition 0.
async fn await_lag(cluster: &Cluster, committed: f64, lag: f64) {
    let group = [
        r#"group="watchers""#,
        r#"topic="watched""#,
        r#"partition="0""#,
    ];
    eventually(
        Duration::from_secs(10),
        &format!("the coordinator reports lag {lag}"),
        || async move {
            let node = cluster.node(coordinator(&cluster.node(1)).await);
            let text = scrape(&node).await;
            let seen = (
                value(&text, "psubd_group_committed_offset", &group),
                value(&text, "psubd_group_lag", &group),
            );
            if seen == (Some(committed), Some(lag)) {
                Ok(())
            } else {
                Err(format!("committed offset and lag {seen:?}"))
            }
        },
    )
    .await;
}

/// The group series on its coordinator: lag rises with publishes, falls after a commit, and
/// the series leave with the group.
async fn group_lag_rises_with_publishes_and_falls_after_commits(cluster: &Cluster) {
    let node = cluster.node(2);
    let end = node.partitions(TOPIC).await[0].high_watermark;
    let member = node.join_earliest(GROUP, &[TOPIC], 30_000).await;
    node.commit_member(GROUP, &member, TOPIC, 0, 10).await;
    await_lag(cluster, 10.0, (end - 10) as f64).await;
    let records: Vec<NewRecord> = (0..20)
        .map(|i| NewRecord::keyed("more", json!(i)))
        .collect();
    node.publish(TOPIC, &records).await;
    await_lag(cluster, 10.0, (end + 20 - 10) as f64).await;
    node.commit_member(GROUP, &member, TOPIC, 0, end + 20).await;
    await_lag(cluster, (end + 20) as f64, 0.0).await;

    let coordinator = cluster.node(coordinator(&node).await);
    let resp = node
        .http()
        .delete(node.url(&format!(
            "/v1/groups/{GROUP}/members/{}",
            member["member_id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = node
        .http()
        .delete(node.url(&format!("/v1/groups/{GROUP}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    eventually(
        Duration::from_secs(10),
        "the deleted group's series gone",
        || async {
            let text = scrape(&coordinator).await;
            if text.contains(r#"group="watchers""#) {
                Err("still reported".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
}
