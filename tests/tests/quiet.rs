//! Quiet groups (docs/architecture.md § Quiet groups): the Raft groups of an idle cluster
//! stop ticking and heartbeating, with no WARN or ERROR logged; a publish to a quiet
//! partition is taken at the first attempt; and when a quiet partition's leader is
//! killed, its followers notice the node's silence and elect a leader that takes writes,
//! with every acknowledged record still there.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::time::Duration;

use psubd_tests::metrics::{metric_value, try_scrape};
use psubd_tests::{eventually, Cluster, NewRecord, PublishOutcome};
use serde_json::json;

const TOPIC: &str = "calm";

/// The node's own default log filter (the fixture's default adds openraft's routine
/// messages): the log an operator reads.
const OPERATOR_LOG: &str = "info,openraft=off,sled=warn";
const PARTITIONS: u32 = 3;

/// Waits until every running node reports at least the topic's partitions and the
/// controller as quiet groups.
async fn await_quiet(cluster: &Cluster) {
    for id in cluster.running() {
        let node = cluster.node(id);
        let node = &node;
        eventually(
            Duration::from_secs(30),
            &format!("node {id} to report its idle groups quiet"),
            || async move {
                let text = try_scrape(node).await?;
                let quiet = metric_value(&text, "psubd_raft_groups_quiet", &[])
                    .ok_or("no psubd_raft_groups_quiet series")?;
                if quiet >= f64::from(PARTITIONS + 1) {
                    Ok(())
                } else {
                    Err(format!("{quiet} quiet groups"))
                }
            },
        )
        .await;
    }
}

fn record_for(partition: u32, value: &str) -> NewRecord {
    NewRecord {
        partition: Some(partition),
        ..NewRecord::keyed(value, json!(value))
    }
}

/// WARN and ERROR lines of the running nodes' logs.
fn loud_lines(cluster: &Cluster) -> Vec<String> {
    cluster
        .running()
        .into_iter()
        .flat_map(|id| {
            let text = std::fs::read_to_string(cluster.log_path(id)).expect("a node log");
            text.lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .map(|l| format!("node {id}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_go_quiet_take_writes_at_once_and_fail_over_when_their_leader_dies() {
    let mut cluster = Cluster::start_with_env(3, &[("PSUBD_LOG", OPERATOR_LOG)]).await;
    cluster.node(1).create_topic(TOPIC, PARTITIONS, 3).await;
    await_quiet(&cluster).await;
    let loud = loud_lines(&cluster);
    assert!(
        loud.is_empty(),
        "an idle cluster logged:\n{}",
        loud.join("\n")
    );

    // A quiet partition takes a publish at the first attempt, whichever node gets it.
    for partition in 0..PARTITIONS {
        let via = cluster.node(u64::from(partition) + 1);
        let value = format!("first-{partition}");
        match via
            .try_publish(
                TOPIC,
                &[record_for(partition, &value)],
                Duration::from_secs(10),
            )
            .await
        {
            PublishOutcome::Acked(reports) => assert_eq!(reports[0].partition, partition),
            other => panic!("publish to quiet partition {partition}: {other:?}"),
        }
    }

    // Quiet again, then the leader of partition 0 dies: its followers wake on the node's
    // silence and one of them takes over.
    await_quiet(&cluster).await;
    let leader = cluster.leader_of(TOPIC, 0).await;
    cluster.kill(leader);
    let survivor = cluster.node(cluster.running()[0]);
    let survivor = &survivor;
    eventually(
        Duration::from_secs(30),
        "a new leader of partition 0 to take a publish",
        || async move {
            match survivor
                .try_publish(
                    TOPIC,
                    &[record_for(0, "after-kill")],
                    Duration::from_secs(5),
                )
                .await
            {
                PublishOutcome::Acked(_) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let values: Vec<String> = survivor
        .fetch_all(TOPIC, 0)
        .await
        .iter()
        .map(|r| r.value.to_string())
        .collect();
    assert!(
        values.contains(&json!("first-0").to_string()),
        "the record acknowledged before the kill is gone: {values:?}"
    );
    assert!(
        values.contains(&json!("after-kill").to_string()),
        "the record acknowledged after the kill is missing: {values:?}"
    );
}

/// The controller of an idle cluster whose leader's node comes back at once with an empty
/// disk: the followers, quiet on that node's connection, see it replaced and stay awake
/// long enough to stand, since the node that answers now leads nothing. (They once went
/// back to sleep on the new connection and the controller never had a leader again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_controller_whose_leader_returns_wiped_elects_another() {
    let mut cluster = Cluster::start_with_env(3, &[("PSUBD_LOG", OPERATOR_LOG)]).await;
    cluster.node(1).create_topic(TOPIC, PARTITIONS, 3).await;
    await_quiet(&cluster).await;
    let info = cluster
        .node(1)
        .try_cluster_info()
        .await
        .expect("GET /v1/cluster");
    let leader = info
        .controller_leader
        .expect("an idle cluster's controller has a leader");

    cluster.kill(leader);
    cluster.wipe(leader);
    cluster.restart(leader).await;
    let others: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let asked = cluster.node(others[0]);
    let asked = &asked;
    eventually(
        Duration::from_secs(30),
        "another node to lead the controller",
        || async move {
            let info = asked.try_cluster_info().await?;
            match info.controller_leader {
                Some(now) if now != leader => Ok(()),
                other => Err(format!("controller leader {other:?}")),
            }
        },
    )
    .await;
}
