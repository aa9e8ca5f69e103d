//! More partitions for a running topic (docs/api.md § Topics, Patch): `PATCH
//! /v1/topics/{t} {"partitions": N}` grows the topic, places the new partitions' replicas
//! as at create, answers once they can take writes, and keeps every record; a count that
//! does not grow is refused with 400 and changes nothing.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::collections::BTreeSet;
use std::time::Duration;

use psubd_tests::{eventually, expect_error, expect_json, Cluster, NewRecord, Topic};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_grows_its_partitions_keeps_its_records_and_never_shrinks() {
    let cluster = Cluster::start(3).await;
    let node = cluster.node(1);
    node.create_topic("grow", 2, 3).await;
    let before: Vec<NewRecord> = (0..20)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    let reports = node.publish("grow", &before).await;

    // Grown through another node than the one that created it.
    let patch = |partitions: serde_json::Value| {
        let other = cluster.node(2);
        async move {
            other
                .http()
                .patch(other.url("/v1/topics/grow"))
                .json(&json!({ "partitions": partitions }))
                .send()
                .await
                .expect("PATCH answered")
        }
    };
    let grown: Topic = expect_json(patch(json!(5)).await, 200).await.unwrap();
    assert_eq!(grown.partitions, 5);
    assert_eq!(grown.replication_factor, 3);

    // The 200 came once every new partition could take a write: each has a leader and
    // three distinct replicas, and preferred leaders still rotate over every node.
    let partitions = cluster.node(2).partitions("grow").await;
    assert_eq!(partitions.len(), 5);
    for p in &partitions {
        let distinct: BTreeSet<u64> = p.replicas.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            3,
            "partition {}: {:?}",
            p.partition,
            p.replicas
        );
        assert!(
            p.leader.is_some(),
            "partition {} has no leader",
            p.partition
        );
    }
    let preferred: BTreeSet<u64> = partitions.iter().map(|p| p.replicas[0]).collect();
    assert_eq!(preferred.len(), 3, "preferred leaders: {partitions:?}");

    // A new partition takes records and serves them; the old ones kept theirs.
    let new = NewRecord {
        value: json!("on the new partition"),
        partition: Some(4),
        ..NewRecord::default()
    };
    let placed = cluster.node(2).publish("grow", &[new]).await;
    assert_eq!((placed[0].partition, placed[0].offset), (4, 0));
    // Every node learns of the new partitions as it applies the controller's change.
    eventually(
        Duration::from_secs(10),
        "node 1 lists 5 partitions",
        || async {
            match node.try_partitions("grow").await {
                Ok(p) if p.len() == 5 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let read = node.fetch_all("grow", 4).await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value, json!("on the new partition"));
    for (record, report) in before.iter().zip(&reports) {
        let stored = node.fetch_all("grow", report.partition).await;
        let found = stored.iter().find(|r| r.offset == report.offset);
        assert_eq!(
            found.map(|r| &r.value),
            Some(&record.value),
            "record at {}/{}",
            report.partition,
            report.offset
        );
    }

    // Fewer or as many partitions: 400, nothing changes; a bad count is 422.
    for fewer in [json!(3), json!(5)] {
        expect_error(patch(fewer.clone()).await, 400, "invalid_request", "shrink").await;
    }
    expect_error(patch(json!(0)).await, 422, "invalid_config", "zero").await;
    expect_error(patch(json!("6")).await, 422, "invalid_config", "a string").await;
    assert_eq!(node.partitions("grow").await.len(), 5);
    let missing = node
        .http()
        .patch(node.url("/v1/topics/absent"))
        .json(&json!({ "partitions": 4 }))
        .send()
        .await
        .unwrap();
    expect_error(missing, 404, "topic_not_found", "unknown topic").await;
}
