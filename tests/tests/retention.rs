//! Retention end to end: real nodes, HTTP only.
//!
//! - `retention_by_age_and_size_moves_the_log_start_and_resets_groups`: a topic whose retention is changed
//!   to 2 s with `PATCH` loses its old records on every replica (the log start advances on
//!   each node), old offsets answer 416 with `log_start_offset`, new publishes continue the
//!   offset sequence; a group committed below the log start resumes per its
//!   `auto_offset_reset` and its offsets view says so; `retention_bytes` set on the running
//!   topic trims it by size on every node.
//! - `wiped_node_catches_up_through_a_retained_snapshot`: with snapshots every 20
//!   entries, a wiped node rejoins after a trim and installs a snapshot holding only the
//!   retained range: same log start, high watermark and stored bytes as the others.
//!
//! Nodes run with a 200 ms maintenance tick so retention reacts quickly; every wait is an
//! `eventually`.

use std::collections::BTreeMap;
use std::time::Duration;

use psubd_tests::client::field_u64;
use psubd_tests::{eventually, expect_error, expect_json, Cluster, NewRecord, NodeClient};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Long enough for elections and the offsets topic after a start or restart.
const SETTLE: Duration = Duration::from_secs(30);

/// Retention waits: 2 s of age plus a few ticks and the replication of the trim.
const TRIM_WAIT: Duration = Duration::from_secs(20);

const FAST_TICK: (&str, &str) = ("PSUBD_MAINTENANCE_INTERVAL_MS", "200");

/// Creates a one-partition, three-replica topic with `retention_ms` (delete policy).
async fn create_topic(node: &NodeClient, name: &str, retention_ms: i64) {
    let body = json!({
        "name": name,
        "partitions": 1,
        "replication_factor": 3,
        "retention_ms": retention_ms,
    });
    let created: Value = eventually(SETTLE, "topic created", || {
        let request = node.http().post(node.url("/v1/topics")).json(&body);
        async move {
            let resp = request.send().await.map_err(|e| e.to_string())?;
            expect_json::<Value>(resp, 201).await
        }
    })
    .await;
    assert_eq!(created["retention_ms"], json!(retention_ms));
}

/// Publishes one record per request (one stored batch each) and returns their offsets.
async fn publish_each(node: &NodeClient, topic: &str, values: std::ops::Range<u64>) -> Vec<u64> {
    let mut offsets = Vec::new();
    for i in values {
        let reports = node
            .publish(
                topic,
                &[NewRecord {
                    value: json!({ "n": i, "pad": "x".repeat(200) }),
                    partition: Some(0),
                    ..NewRecord::default()
                }],
            )
            .await;
        offsets.push(reports[0].offset);
    }
    offsets
}

/// `PATCH /v1/topics/{t}` with `body`, returning the status and the JSON answer.
async fn patch(node: &NodeClient, topic: &str, body: Value) -> reqwest::Response {
    node.http()
        .patch(node.url(&format!("/v1/topics/{topic}")))
        .json(&body)
        .send()
        .await
        .expect("PATCH request")
}

/// A per-replica gauge of `topic`/0 from one node's `/metrics` (its local replica's view).
async fn replica_gauge(node: &NodeClient, metric: &str, topic: &str) -> Result<u64, String> {
    let text = node
        .http()
        .get(node.url("/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let topic_label = format!("topic=\"{topic}\"");
    text.lines()
        .find(|line| {
            line.starts_with(&format!("{metric}{{"))
                && line.contains(&topic_label)
                && line.contains("partition=\"0\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("{metric} for {topic} not reported by {}", node.base()))
}

/// The log start of `topic`/0 on every node, once all of them report at least `min`.
async fn log_start_everywhere(cluster: &Cluster, topic: &str, min: u64) -> BTreeMap<u64, u64> {
    eventually(
        TRIM_WAIT,
        &format!("log start of {topic} >= {min} on every node"),
        || async {
            let mut starts = BTreeMap::new();
            for id in cluster.running() {
                let start =
                    replica_gauge(&cluster.node(id), "psubd_partition_log_start_offset", topic)
                        .await?;
                if start < min {
                    return Err(format!("node {id} log start {start} < {min}"));
                }
                starts.insert(id, start);
            }
            Ok::<_, String>(starts)
        },
    )
    .await
}

/// Asserts `offset` of `topic`/0 answers 416 through `node` with a log start of at least
/// `min_log_start`; returns the reported log start.
async fn expect_out_of_range(
    node: &NodeClient,
    topic: &str,
    offset: u64,
    min_log_start: u64,
) -> u64 {
    let resp = node
        .http()
        .get(node.url(&format!(
            "/v1/topics/{topic}/partitions/0/records?offset={offset}"
        )))
        .send()
        .await
        .expect("fetch request");
    let error = expect_error(
        resp,
        416,
        "offset_out_of_range",
        "fetch below the log start",
    )
    .await;
    let body = serde_json::to_value(&error.extra).expect("error body");
    let log_start = field_u64(&body, "log_start_offset");
    assert!(
        log_start >= min_log_start && log_start > offset,
        "416 log_start_offset {log_start} (expected >= {min_log_start}, above {offset})"
    );
    log_start
}

async fn join(node: &NodeClient, group: &str, topic: &str) -> (String, u64) {
    let joined = node.join_earliest(group, &[topic], 30_000).await;
    (
        joined["member_id"].as_str().expect("member_id").to_string(),
        field_u64(&joined, "generation"),
    )
}

/// Fetches as a member until it holds the partition and a record arrives; returns the
/// offsets of the first non-empty answer.
async fn member_offsets(node: &NodeClient, group: &str, member: &str) -> Vec<u64> {
    let url = node.url(&format!(
        "/v1/groups/{group}/members/{member}/records?timeout_ms=500"
    ));
    eventually(SETTLE, "the member receives records", || {
        let request = node.http().get(&url);
        async move {
            let resp = request.send().await.map_err(|e| e.to_string())?;
            let body: Value = expect_json(resp, 200).await?;
            let offsets: Vec<u64> = body["records"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| field_u64(r, "offset"))
                .collect();
            if offsets.is_empty() {
                return Err("no records yet".to_string());
            }
            Ok(offsets)
        }
    })
    .await
}

async fn group_offsets_row(node: &NodeClient, group: &str) -> Result<Value, String> {
    let resp = node
        .http()
        .get(node.url(&format!("/v1/groups/{group}/offsets")))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = expect_json(resp, 200).await?;
    body["offsets"]
        .as_array()
        .and_then(|rows| rows.first())
        .cloned()
        .ok_or_else(|| format!("no committed offsets yet: {body}"))
}

// Retention moves the log start forward (docs/architecture.md § Fetch path), and a read
// below it is 416 (docs/api.md § Fetch by offset).
#[tokio::test]
async fn retention_by_age_and_size_moves_the_log_start_and_resets_groups() {
    let cluster = Cluster::start_with_env(3, &[FAST_TICK]).await;
    let n1 = cluster.node(1);
    let topic = "aging";
    create_topic(&n1, topic, -1).await;
    assert_eq!(
        publish_each(&n1, topic, 0..10).await,
        (0..10).collect::<Vec<_>>()
    );

    // A group commits offset 3, then its member leaves.
    let group = "late-readers";
    let (member, generation) = join(&n1, group, topic).await;
    assert_eq!(member_offsets(&n1, group, &member).await.first(), Some(&0));
    let resp = n1
        .http()
        .post(n1.url(&format!("/v1/groups/{group}/offsets")))
        .json(&json!({"member_id": member, "generation": generation,
                       "offsets": [{"topic": topic, "partition": 0, "offset": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "commit");
    let resp = n1
        .http()
        .delete(n1.url(&format!("/v1/groups/{group}/members/{member}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "leave");

    // PATCH: settings fixed at creation are 422 (partitions may grow: topic_growth.rs).
    let n2 = cluster.node(2);
    let refused = patch(&n2, topic, json!({"replication_factor": 2})).await;
    let error = expect_error(refused, 422, "invalid_config", "PATCH replication_factor").await;
    assert!(
        error.message.contains("replication_factor"),
        "{}",
        error.message
    );
    let refused = patch(&n2, topic, json!({"retention_ms": 0})).await;
    expect_error(refused, 422, "invalid_config", "PATCH retention_ms 0").await;
    let missing = patch(&n2, "no-such-topic", json!({"retention_ms": 1000})).await;
    expect_error(missing, 404, "topic_not_found", "PATCH unknown topic").await;
    let changed: Value = expect_json(patch(&n2, topic, json!({"retention_ms": 2000})).await, 200)
        .await
        .unwrap();
    assert_eq!(changed["retention_ms"], json!(2000));
    assert_eq!(changed["retention_bytes"], json!(-1));

    // Every record is older than 2 s soon: the log start reaches 10 on every node.
    let starts = log_start_everywhere(&cluster, topic, 10).await;
    println!("log start per node after 2 s retention: {starts:?}");
    for id in cluster.ids() {
        expect_out_of_range(&cluster.node(id), topic, 3, 10).await;
    }

    // Keep what comes next; offsets continue the sequence.
    let kept: Value = expect_json(patch(&n1, topic, json!({"retention_ms": -1})).await, 200)
        .await
        .unwrap();
    assert_eq!(kept["retention_ms"], json!(-1));
    let next = publish_each(&n1, topic, 10..15).await;
    let first_new = next[0];
    assert!(first_new >= 10, "offsets are never reused: got {first_new}");
    assert_eq!(next, (first_new..first_new + 5).collect::<Vec<_>>());
    let log_start = log_start_everywhere(&cluster, topic, first_new).await[&1];
    assert_eq!(
        log_start, first_new,
        "retention off: nothing new is trimmed"
    );

    // The group's committed 3 is below the log start: a new member resumes per its
    // auto_offset_reset (earliest = the log start), and the offsets view says so.
    let (member, _) = join(&n2, group, topic).await;
    let resumed = member_offsets(&n2, group, &member).await;
    assert_eq!(
        resumed.first(),
        Some(&first_new),
        "earliest resumes at the log start"
    );
    let row = eventually(SETTLE, "offsets view names the reset", || async {
        let row = group_offsets_row(&n2, group).await?;
        if row["reset"].is_null() {
            return Err(format!("no reset shown yet: {row}"));
        }
        Ok::<_, String>(row)
    })
    .await;
    assert_eq!(row["offset"], json!(3), "{row}");
    assert_eq!(row["log_start_offset"], json!(first_new), "{row}");
    assert_eq!(row["committed_below_log_start"], json!(true), "{row}");
    assert_eq!(row["reset"], json!("earliest"), "{row}");
    assert_eq!(row["resumes_at"], json!(first_new), "{row}");

    // Size retention on the running topic: about half of the stored bytes may stay.
    let partitions: Value = expect_json(
        n1.http()
            .get(n1.url(&format!("/v1/topics/{topic}/partitions")))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await
    .unwrap();
    let stored = field_u64(&partitions[0], "stored_bytes");
    assert!(
        stored > 5 * 200,
        "five ~250-byte batches stored, got {stored}"
    );
    let limit = stored / 2;
    let sized: Value = expect_json(
        patch(&n1, topic, json!({"retention_bytes": limit})).await,
        200,
    )
    .await
    .unwrap();
    assert_eq!(sized["retention_bytes"], json!(limit));
    let starts = log_start_everywhere(&cluster, topic, first_new + 1).await;
    for (id, start) in &starts {
        assert!(
            *start < first_new + 5,
            "node {id}: size retention keeps the newest batches (log start {start})"
        );
        let bytes = replica_gauge(&cluster.node(*id), "psubd_partition_stored_bytes", topic)
            .await
            .unwrap();
        assert!(
            bytes <= limit,
            "node {id}: {bytes} stored bytes over the {limit} limit"
        );
    }
    let data_dir = node_gauge(&n1, "psubd_data_dir_bytes").await;
    assert!(data_dir > 0, "data dir bytes reported");
}

/// A per-node gauge (label `node`) from `/metrics`.
async fn node_gauge(node: &NodeClient, metric: &str) -> u64 {
    let text = node
        .http()
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|line| line.starts_with(&format!("{metric}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("{metric} missing"))
}

// "A node wiped and rejoined catches up through snapshots that carry only what
// retention kept."
#[tokio::test]
async fn wiped_node_catches_up_through_a_retained_snapshot() {
    let mut cluster = Cluster::start_with_env(
        3,
        &[
            FAST_TICK,
            ("PSUBD_SNAPSHOT_EVERY_ENTRIES", "20"),
            // Every 20 entries whatever their size, so the log is purged early.
            ("PSUBD_SNAPSHOT_GROWTH_PERCENT", "0"),
            ("PSUBD_SNAPSHOT_STAGGER_PERCENT", "0"),
            ("PSUBD_KEEP_LOGS_AFTER_SNAPSHOT", "0"),
        ],
    )
    .await;
    let topic = "snapped";
    let n1 = cluster.node(1);
    create_topic(&n1, topic, -1).await;
    let leader = cluster.leader_of(topic, 0).await;
    let victim = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let writer = cluster.node(leader);
    publish_each(&writer, topic, 0..100).await;

    cluster.kill(victim);
    cluster.wipe(victim);

    // While the victim is away: trim by size to about a third, and write on, so the
    // leaders snapshot (every 20 entries) and purge their logs past the trim (openraft
    // purges in batches of 256 entries: 300 more entries guarantee one).
    let partitions: Value = expect_json(
        writer
            .http()
            .get(writer.url(&format!("/v1/topics/{topic}/partitions")))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await
    .unwrap();
    let stored = field_u64(&partitions[0], "stored_bytes");
    let limit = stored / 3;
    expect_json::<Value>(
        patch(&writer, topic, json!({"retention_bytes": limit})).await,
        200,
    )
    .await
    .unwrap();
    let trimmed = log_start_everywhere(&cluster, topic, 10).await[&leader];
    publish_each(&writer, topic, 100..400).await;

    cluster.restart(victim).await;
    let victim_node = cluster.node(victim);
    let leader_node = cluster.node(leader);
    let (start, hw, bytes) = eventually(SETTLE, "the wiped node holds the retained range", || {
        let (victim_node, leader_node) = (victim_node.clone(), leader_node.clone());
        async move {
            let mut views = Vec::new();
            for node in [&leader_node, &victim_node] {
                views.push((
                    replica_gauge(node, "psubd_partition_log_start_offset", topic).await?,
                    replica_gauge(node, "psubd_partition_high_watermark", topic).await?,
                    replica_gauge(node, "psubd_partition_stored_bytes", topic).await?,
                ));
            }
            if views[0] != views[1] || views[1].1 < 400 {
                return Err(format!(
                    "leader {:?} vs wiped node {:?}",
                    views[0], views[1]
                ));
            }
            Ok::<_, String>(views[1])
        }
    })
    .await;
    println!("wiped node: log start {start}, high watermark {hw}, stored bytes {bytes}");
    assert!(
        start >= trimmed,
        "log start {start} never goes back below {trimmed}"
    );
    // The log line may trail the replica's own view by a moment.
    cluster
        .await_partition_snapshot_since_wipe(victim, SETTLE)
        .await;
    // It serves the retained range itself and refuses what retention removed.
    let page = victim_node.fetch(topic, 0, start, 1000, 0).await;
    assert_eq!(page.records.first().map(|r| r.offset), Some(start));
    assert_eq!(page.records.last().map(|r| r.offset), Some(hw - 1));
    expect_out_of_range(&victim_node, topic, start - 1, start).await;
}
