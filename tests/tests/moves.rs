//! Moving partition replicas and decommissioning a node, on a running 4-node cluster
//! under continuous publishing and a consumer group (docs/api.md § Moving replicas,
//! docs/architecture.md § Replica moves): every acknowledged record stays readable at
//! its offset from every replica, the group skips nothing, the decommissioned node ends
//! holding nothing, bad requests change nothing, and a healthy cluster logs no WARN or
//! ERROR on the way.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psubd_client::{AutoOffsetReset, Client, GroupConfig, GroupConsumer};
use psubd_tests::client::{expect_error, PublishOutcome};
use psubd_tests::{eventually, Cluster, NewRecord, NodeClient};
use serde_json::{json, Value};

const TOPIC: &str = "moving";

/// How long the moves (and the decommission) may take on a loaded 2-core machine.
const MOVES_WITHIN: Duration = Duration::from_secs(120);

/// Records acknowledged before the first move starts.
const BEFORE_MOVES: usize = 200;

/// The acknowledged records: (partition, offset) → value.
type Acked = Arc<Mutex<BTreeMap<(u32, u64), u64>>>;

/// Publishes numbered records, five a request, through nodes 2 to 4 in turn until `stop`,
/// remembering what was acknowledged. Other answers (a 503 while a leader moves, say)
/// are left unacknowledged: only acknowledged records are promised.
async fn publish_until(nodes: Vec<NodeClient>, acked: Acked, stop: Arc<AtomicBool>) -> usize {
    let mut next = 0u64;
    let mut refused = 0usize;
    while !stop.load(Ordering::Acquire) {
        let node = &nodes[next as usize % nodes.len()];
        let records: Vec<NewRecord> = (next..next + 5)
            .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
            .collect();
        match node
            .try_publish(TOPIC, &records, Duration::from_secs(20))
            .await
        {
            PublishOutcome::Acked(reports) => {
                let mut acked = acked.lock().unwrap();
                for (i, report) in reports.iter().enumerate() {
                    acked.insert((report.partition, report.offset), next + i as u64);
                }
            }
            _ => refused += 1,
        }
        next += 5;
    }
    refused
}

/// The partitions' replica sets as node `via` shows them in `GET /v1/cluster` (the
/// consumer-offsets partitions too), with the nodes' states.
async fn cluster_view(
    via: &NodeClient,
) -> Result<(Vec<(String, u32, Vec<u64>)>, BTreeMap<u64, String>), String> {
    let info = via.try_get_json("/v1/cluster").await?;
    let partitions = info["partitions"]
        .as_array()
        .ok_or("no partitions")?
        .iter()
        .map(|p| {
            let replicas = p["replicas"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let topic = p["topic"].as_str().unwrap_or_default().to_string();
            (topic, p["partition"].as_u64().unwrap_or(0) as u32, replicas)
        })
        .collect();
    let states = info["nodes"]
        .as_array()
        .ok_or("no nodes")?
        .iter()
        .map(|n| {
            let state = n["state"].as_str().unwrap_or_default().to_string();
            (n["id"].as_u64().unwrap_or(0), state)
        })
        .collect();
    Ok((partitions, states))
}

/// `PUT .../replicas` with a raw body.
async fn put_replicas(
    node: &NodeClient,
    topic: &str,
    partition: &str,
    body: Value,
) -> reqwest::Response {
    node.http()
        .put(node.url(&format!(
            "/v1/topics/{topic}/partitions/{partition}/replicas"
        )))
        .json(&body)
        .send()
        .await
        .expect("the node answers")
}

/// `POST .../decommission`.
async fn decommission(node: &NodeClient, id: &str) -> reqwest::Response {
    node.http()
        .post(node.url(&format!("/v1/cluster/nodes/{id}/decommission")))
        .send()
        .await
        .expect("the node answers")
}

/// The moves in progress as `node` shows them.
async fn reassignments(node: &NodeClient) -> Result<Vec<Value>, String> {
    let body = node.try_get_json("/v1/reassignments").await?;
    Ok(body["reassignments"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The user topic's replica sets by partition, as `node` shows them.
async fn replica_sets(node: &NodeClient) -> Vec<Vec<u64>> {
    node.partitions(TOPIC)
        .await
        .into_iter()
        .map(|p| p.replicas)
        .collect()
}

/// Reads records `[0, high_watermark)` of `partition` from `node`'s own replica
/// (`replica=local`), once that replica has them all.
async fn read_replica(
    node: &NodeClient,
    topic: &str,
    partition: u32,
    high_watermark: u64,
) -> BTreeMap<u64, u64> {
    let mut values = BTreeMap::new();
    let mut offset = 0;
    while offset < high_watermark {
        let url = node.url(&format!(
            "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records=500&replica=local"
        ));
        let page: Value = eventually(
            Duration::from_secs(30),
            "the replica holds the offset",
            || {
                let (http, url) = (node.http().clone(), url.clone());
                async move {
                    let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
                    if resp.status() != 200 {
                        return Err(format!("status {}", resp.status()));
                    }
                    let page: Value = resp.json().await.map_err(|e| e.to_string())?;
                    // A replica still catching up answers an empty page at its end.
                    match page["records"].as_array() {
                        Some(records) if !records.is_empty() => Ok(page),
                        _ => Err(format!("no record yet: {page}")),
                    }
                }
            },
        )
        .await;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        for record in records {
            let at = record["offset"].as_u64().expect("an offset");
            values.insert(at, record["value"].as_u64().expect("numbered values"));
            offset = at + 1;
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_move_and_a_node_is_decommissioned_under_load_losing_nothing() {
    let cluster = Cluster::start(4).await;
    let node2 = cluster.node(2);
    node2.create_topic(TOPIC, 3, 3).await;
    let before = replica_sets(&node2).await;

    // A consumer group reads throughout, through nodes 2 to 4 (node 1 is going away).
    let seeds: Vec<String> = [2, 3, 4].iter().map(|id| cluster.http(*id)).collect();
    let client = Client::new(seeds).expect("seed URLs are valid");
    let config = GroupConfig {
        auto_offset_reset: Some(AutoOffsetReset::Earliest),
        session_timeout_ms: Some(30_000),
        max_records: Some(200),
        poll_timeout: Some(Duration::from_millis(500)),
        ..GroupConfig::default()
    };
    let mut member = GroupConsumer::join(client, "movers", &[TOPIC], config)
        .await
        .expect("join");

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<NodeClient> = [2, 3, 4].iter().map(|id| cluster.node(*id)).collect();
    let publisher = tokio::spawn(publish_until(publishers, acked.clone(), stop.clone()));
    let seen: Arc<Mutex<BTreeSet<(u32, u64)>>> = Arc::default();
    let reading = Arc::new(AtomicBool::new(true));
    let consumer = {
        let (seen, reading) = (seen.clone(), reading.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while reading.load(Ordering::Acquire) {
                match member.poll().await {
                    Ok(batch) => seen
                        .lock()
                        .unwrap()
                        .extend(batch.iter().map(|r| (r.partition, r.offset))),
                    Err(e) => errors.push(format!("poll: {e}")),
                }
                if let Err(e) = member.commit().await {
                    errors.push(format!("commit: {e}"));
                }
            }
            let _ = member.leave().await;
            errors
        })
    };
    eventually(
        Duration::from_secs(60),
        "records acknowledged before the moves",
        || {
            let acked = acked.clone();
            async move {
                let n = acked.lock().unwrap().len();
                (n >= BEFORE_MOVES)
                    .then_some(())
                    .ok_or(format!("{n} acknowledged"))
            }
        },
    )
    .await;

    // Bad requests: 4xx, and nothing changes.
    let cases = [
        (
            TOPIC,
            "0",
            json!({"replicas": [2, 3]}),
            400,
            "invalid_request",
        ),
        (
            TOPIC,
            "0",
            json!({"replicas": [2, 3, 9]}),
            400,
            "invalid_request",
        ),
        (
            TOPIC,
            "0",
            json!({"replicas": [2, 2, 3]}),
            400,
            "invalid_request",
        ),
        (
            TOPIC,
            "0",
            json!({"replicas": before[0]}),
            400,
            "invalid_request",
        ),
        (TOPIC, "0", json!({"nodes": [2, 3, 4]}), 400, "invalid_json"),
        (
            TOPIC,
            "x",
            json!({"replicas": [2, 3, 4]}),
            400,
            "invalid_request",
        ),
        (
            TOPIC,
            "7",
            json!({"replicas": [2, 3, 4]}),
            404,
            "partition_not_found",
        ),
        (
            "absent",
            "0",
            json!({"replicas": [2, 3, 4]}),
            404,
            "topic_not_found",
        ),
    ];
    for (topic, partition, body, status, error) in cases {
        let context = format!("PUT {topic}/{partition} {body}");
        expect_error(
            put_replicas(&node2, topic, partition, body).await,
            status,
            error,
            &context,
        )
        .await;
    }
    expect_error(
        decommission(&node2, "9").await,
        400,
        "invalid_request",
        "decommission 9",
    )
    .await;
    expect_error(
        decommission(&node2, "x").await,
        400,
        "invalid_request",
        "decommission x",
    )
    .await;
    assert_eq!(
        replica_sets(&node2).await,
        before,
        "bad requests changed the placement"
    );
    assert!(reassignments(&node2)
        .await
        .expect("reassignments")
        .is_empty());

    // One replica of every partition moves: to node 4 where the partition has none, else
    // to the node it lacks (the last replica is replaced, so the preferred leader stays).
    let targets: Vec<Vec<u64>> = before
        .iter()
        .map(|replicas| {
            let newcomer = if replicas.contains(&4) {
                (1..=4)
                    .find(|n| !replicas.contains(n))
                    .expect("a node without a replica")
            } else {
                4
            };
            let mut target = replicas.clone();
            *target.last_mut().expect("three replicas") = newcomer;
            target
        })
        .collect();
    assert!(targets.iter().any(|t| t.contains(&4)), "node 4 is a target");
    for (partition, target) in targets.iter().enumerate() {
        let resp = put_replicas(
            &node2,
            TOPIC,
            &partition.to_string(),
            json!({"replicas": target}),
        )
        .await;
        assert_eq!(resp.status(), 202, "move of partition {partition}");
        let started: Value = resp.json().await.expect("the move");
        assert_eq!(started["to"], json!(target));
        assert_eq!(started["from"], json!(before[partition]));
        if partition == 0 {
            // The same partition again while its move runs: 409, nothing changes.
            let reordered = [before[0][1], before[0][0], before[0][2]];
            let again = put_replicas(&node2, TOPIC, "0", json!({"replicas": reordered})).await;
            expect_error(again, 409, "move_conflict", "a second move of partition 0").await;
            let listed = reassignments(&node2).await.expect("reassignments");
            assert!(
                listed
                    .iter()
                    .any(|m| m["partition"] == 0 && m["to"] == json!(target)),
                "the move is listed: {listed:?}"
            );
        }
    }
    eventually(MOVES_WITHIN, "every move done", || {
        let node2 = node2.clone();
        let targets = targets.clone();
        async move {
            let moving = reassignments(&node2).await?;
            let now = node2.try_partitions(TOPIC).await?;
            let sets: Vec<Vec<u64>> = now.into_iter().map(|p| p.replicas).collect();
            (moving.is_empty() && sets == targets)
                .then_some(())
                .ok_or(format!("moving {moving:?}, replicas {sets:?}"))
        }
    })
    .await;

    // Node 1 leaves: its replicas (consumer offsets too) move to nodes 2 to 4.
    let resp = decommission(&node2, "1").await;
    assert_eq!(resp.status(), 202, "decommission of node 1");
    let (_, states) = cluster_view(&node2).await.expect("the cluster");
    assert!(
        ["decommissioning", "decommissioned"].contains(&states[&1].as_str()),
        "node 1 is leaving: {states:?}"
    );
    eventually(
        MOVES_WITHIN,
        "node 1 decommissioned and holding nothing",
        || {
            let node2 = node2.clone();
            async move {
                let (partitions, states) = cluster_view(&node2).await?;
                let on_1: Vec<_> = partitions
                    .iter()
                    .filter(|(_, _, r)| r.contains(&1))
                    .collect();
                (states.get(&1).map(String::as_str) == Some("decommissioned") && on_1.is_empty())
                    .then_some(())
                    .ok_or(format!(
                        "node states {states:?}, partitions on node 1: {on_1:?}"
                    ))
            }
        },
    )
    .await;
    // Three active nodes are left for replication factor 3: none more may leave.
    expect_error(
        decommission(&node2, "2").await,
        409,
        "move_conflict",
        "decommission 2",
    )
    .await;

    stop.store(true, Ordering::Release);
    let refused = publisher.await.expect("the publisher");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > BEFORE_MOVES,
        "records were acknowledged during the moves"
    );

    // Every acknowledged record at its offset on every replica (nodes 2 to 4 now).
    let partitions = node2.partitions(TOPIC).await;
    for p in &partitions {
        assert!(
            !p.replicas.contains(&1),
            "partition {}: {:?}",
            p.partition,
            p.replicas
        );
        for replica in &p.replicas {
            let copy = read_replica(
                &cluster.node(*replica),
                TOPIC,
                p.partition,
                p.high_watermark,
            )
            .await;
            for ((partition, offset), value) in acked.range((p.partition, 0)..(p.partition + 1, 0))
            {
                assert_eq!(
                    copy.get(offset),
                    Some(value),
                    "node {replica}: partition {partition} offset {offset}"
                );
            }
        }
        // Node 1 no longer serves a replica of it.
        let url = cluster.node(1).url(&format!(
            "/v1/topics/{TOPIC}/partitions/{}/records?offset=0&replica=local",
            p.partition
        ));
        let status = cluster
            .client()
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_ne!(
            status.ok(),
            Some(200),
            "node 1 still serves partition {}",
            p.partition
        );
    }

    // The group read every offset below each high watermark: nothing skipped.
    let final_marks: Vec<(u32, u64)> = partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    eventually(
        Duration::from_secs(60),
        "the group read every record",
        || {
            let (seen, marks) = (seen.clone(), final_marks.clone());
            async move {
                let seen = seen.lock().unwrap();
                let missing: Vec<(u32, u64)> = marks
                    .iter()
                    .flat_map(|(p, hw)| (0..*hw).map(move |o| (*p, o)))
                    .filter(|k| !seen.contains(k))
                    .take(5)
                    .collect();
                missing
                    .is_empty()
                    .then_some(())
                    .ok_or(format!("not read yet: {missing:?}"))
            }
        },
    )
    .await;
    reading.store(false, Ordering::Release);
    let errors = consumer.await.expect("the consumer");
    eprintln!(
        "{} records acknowledged, {refused} publishes refused during the moves; consumer errors: {errors:?}",
        acked.len()
    );

    // A healthy cluster logs no WARN or ERROR through moves and a decommission.
    for id in cluster.ids() {
        let loud = cluster.warn_and_error_lines(id);
        assert!(loud.is_empty(), "node {id} logged WARN/ERROR: {loud:#?}");
    }
}

/// Which node a resumed move loses half-way.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The partition's leader, which drives the move.
    PartitionLeader,
    /// The controller's leader, which records it.
    ControllerLeader,
}

/// A move survives the loss of the partition's leader half-way: the new replica is held
/// back (paused) so the move is still catching up when the leader is killed; the next
/// leader carries it through once the new replica runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_resumes_after_the_partition_leader_is_killed() {
    a_move_resumes_after_a_kill(Victim::PartitionLeader).await;
}

/// As above, losing the controller's leader instead: the move's record survives in the
/// controller group and its next steps are written through the next controller leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_resumes_after_the_controller_leader_is_killed() {
    a_move_resumes_after_a_kill(Victim::ControllerLeader).await;
}

/// Starts a move whose new replica is paused, kills `victim` while the move is catching
/// up, resumes the new replica, and checks that the move finishes and every acknowledged
/// record is on every replica of the target set. Five nodes, so that the controller keeps
/// its quorum with one node paused and one killed.
async fn a_move_resumes_after_a_kill(victim: Victim) {
    const RESUMED: &str = "resumed";
    let mut cluster = Cluster::start(5).await;
    cluster.node(1).create_topic(RESUMED, 1, 3).await;
    let leader = cluster.leader_of(RESUMED, 0).await;
    let before = cluster.node(leader).partitions(RESUMED).await[0]
        .replicas
        .clone();
    let records: Vec<NewRecord> = (0..200u64)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for chunk in records.chunks(50) {
        for (report, record) in cluster
            .node(leader)
            .publish(RESUMED, chunk)
            .await
            .iter()
            .zip(chunk)
        {
            acked.insert(report.offset, record.value.as_u64().expect("numbered"));
        }
    }
    let controller_leader = eventually(Duration::from_secs(20), "a controller leader", || {
        let node = cluster.node(leader);
        async move {
            let info = node.try_get_json("/v1/cluster").await?;
            info["controller_leader"]
                .as_u64()
                .ok_or(format!("controller leader: {}", info["controller_leader"]))
        }
    })
    .await;
    // The newcomer (not the controller's leader: it is paused) replaces a follower; the
    // partition's leader stays in the target set.
    let newcomer = cluster
        .ids()
        .into_iter()
        .find(|n| !before.contains(n) && *n != controller_leader)
        .expect("a free node");
    let replaced = *before.iter().find(|n| **n != leader).expect("a follower");
    let target: Vec<u64> = before
        .iter()
        .map(|n| if *n == replaced { newcomer } else { *n })
        .collect();
    let killed = match victim {
        Victim::PartitionLeader => leader,
        Victim::ControllerLeader => controller_leader,
    };
    let asker_id = cluster
        .ids()
        .into_iter()
        .find(|n| *n != killed && *n != newcomer)
        .expect("a third node");
    let asker = cluster.node(asker_id);

    cluster.pause(newcomer);
    let resp = put_replicas(&asker, RESUMED, "0", json!({"replicas": target})).await;
    assert_eq!(resp.status(), 202, "the move starts");
    eventually(
        Duration::from_secs(30),
        "the move waits for its new replica",
        || {
            let asker = asker.clone();
            async move {
                let moving = reassignments(&asker).await?;
                let listed = moving
                    .iter()
                    .any(|m| m["topic"] == RESUMED && m["state"] == "catching_up");
                listed.then_some(()).ok_or(format!("{moving:?}"))
            }
        },
    )
    .await;
    cluster.kill(killed);
    cluster.resume(newcomer);

    eventually(MOVES_WITHIN, "the move done after the kill", || {
        let (asker, target) = (asker.clone(), target.clone());
        async move {
            let moving = reassignments(&asker).await?;
            let now = asker.try_partitions(RESUMED).await?;
            (moving.is_empty() && now[0].replicas == target)
                .then_some(())
                .ok_or(format!("moving {moving:?}, replicas {:?}", now[0].replicas))
        }
    })
    .await;
    cluster.restart(killed).await;
    for replica in &target {
        let copy = read_replica(&cluster.node(*replica), RESUMED, 0, acked.len() as u64).await;
        for (offset, value) in &acked {
            assert_eq!(
                copy.get(offset),
                Some(value),
                "node {replica}: offset {offset}"
            );
        }
    }
}
