//! Adding a node to a running cluster (docs/operations.md § Adding a node): a node started
//! with `--join` and no `--peers` list is admitted while the cluster takes writes, becomes a
//! voter of the controller group, receives replicas of topics created afterwards, serves
//! publishes and reads, and rejoins after a restart with the same flags. Every acknowledged
//! record stays readable, and no node logs a WARN or an ERROR. Bad requests to
//! `POST /v1/cluster/nodes` get 4xx and change nothing.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use psubd_tests::wire::{ClusterInfo, ClusterNode};
use psubd_tests::{
    eventually, expect_error, expect_json, Cluster, NewRecord, NodeClient, PublishOutcome,
};
use serde_json::json;

const STEADY: &str = "steady";
const PUBLISHERS: usize = 4;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP: Duration = Duration::from_secs(30);

/// One acknowledged record.
struct Acked {
    partition: u32,
    offset: u64,
    value: String,
}

/// Publishes single records to `STEADY` through `nodes` in turn until `stop`; retries a
/// 503 after its `Retry-After` (nothing was written); anything else that is not an
/// acknowledgement is a failure.
async fn publisher(
    id: usize,
    nodes: Vec<NodeClient>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> (Vec<Acked>, Vec<String>) {
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let value = format!("p{id}-{seq}");
        let node = &nodes[(id + seq) % nodes.len()];
        seq += 1;
        let record = NewRecord {
            value: json!(value),
            ..NewRecord::default()
        };
        loop {
            match node
                .try_publish(STEADY, std::slice::from_ref(&record), ATTEMPT_TIMEOUT)
                .await
            {
                PublishOutcome::Acked(reports) => {
                    acked.push(Acked {
                        partition: reports[0].partition,
                        offset: reports[0].offset,
                        value,
                    });
                    count.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                PublishOutcome::Unavailable {
                    retry_after: Some(after),
                    ..
                } => {
                    let secs: u64 = after.trim().parse().unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                other => {
                    failed.push(format!("{}: {other:?}", node.base()));
                    break;
                }
            }
        }
    }
    (acked, failed)
}

/// Node `id` as `via` sees it, once it is a voter there.
async fn await_voter(via: &NodeClient, id: u64) -> ClusterNode {
    eventually(CATCH_UP, &format!("node {id} a voter"), || async {
        let info = via.try_cluster_info().await?;
        info.nodes
            .into_iter()
            .find(|n| n.id == id && n.voter && n.alive)
            .ok_or_else(|| format!("node {id} not a live voter yet"))
    })
    .await
}

fn add_node(via: &NodeClient, body: serde_json::Value) -> reqwest::RequestBuilder {
    via.http().post(via.url("/v1/cluster/nodes")).json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_takes_replicas_and_rejoins_after_a_restart() {
    let mut cluster = Cluster::start(3).await;
    let node1 = cluster.node(1);
    node1.create_topic(STEADY, 3, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let nodes: Vec<NodeClient> = (1..=3).map(|id| cluster.node(id)).collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|id| tokio::spawn(publisher(id, nodes.clone(), stop.clone(), count.clone())))
        .collect();
    // Acknowledged more than `beyond` records in all.
    let acked_beyond = |beyond: usize| {
        let count = count.clone();
        async move {
            eventually(CATCH_UP, "more acknowledged publishes", || {
                let count = count.clone();
                async move {
                    let now = count.load(Ordering::Relaxed);
                    (now > beyond)
                        .then_some(now)
                        .ok_or(format!("{now} acknowledged"))
                }
            })
            .await
        }
    };
    let before_join = acked_beyond(20).await;

    // Node 4 joins through node 1 while the publishers run.
    let four = cluster.add_joining_node(1).await;
    assert_eq!(four, 4);
    // The publishers go on after the join.
    acked_beyond(count.load(Ordering::Relaxed) + 20).await;
    assert!(before_join > 20);
    for via in 1..=4 {
        let seen = await_voter(&cluster.node(via), four).await;
        assert_eq!(
            seen.raft,
            cluster.raft_addr(four),
            "node {via}'s view of node 4"
        );
        assert_eq!(seen.http.as_deref(), Some(cluster.http(four).as_str()));
    }

    // A topic created afterwards places replicas on node 4, and node 4 serves it.
    let node4 = cluster.node(four);
    node4.create_topic("after", 8, 3).await;
    let placed = node4.partitions("after").await;
    let on_four = placed.iter().filter(|p| p.replicas.contains(&four)).count();
    assert!(on_four > 0, "no replica of 'after' on node 4: {placed:?}");
    let records: Vec<NewRecord> = (0..40)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    let reports = node4.publish("after", &records).await;
    assert_eq!(reports.len(), 40);
    let mut read = 0;
    for partition in 0..8 {
        read += node4.fetch_all("after", partition).await.len();
    }
    assert_eq!(
        read, 40,
        "every record published through node 4 reads back through it"
    );

    // Killed (kill -9) and restarted with the same flags, node 4 is a voter again and
    // serves again: what it needs to rejoin is on its disk.
    cluster.kill(four);
    cluster.restart(four).await;
    await_voter(&cluster.node(1), four).await;
    let again = node4.publish("after", &records[..8]).await;
    assert_eq!(again.len(), 8);

    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for publisher in publishers {
        let (mine, failed) = publisher.await.expect("publisher");
        assert!(
            failed.is_empty(),
            "publishes failed while node 4 joined: {failed:?}"
        );
        acked.extend(mine);
    }
    assert!(!acked.is_empty(), "the publishers got nothing acknowledged");
    // Every acknowledged record is there, read through the new node.
    for partition in 0..3 {
        let stored = node4.fetch_all(STEADY, partition).await;
        for a in acked.iter().filter(|a| a.partition == partition) {
            let found = stored
                .iter()
                .find(|r| r.offset == a.offset)
                .unwrap_or_else(|| panic!("acknowledged {}@{} is missing", a.partition, a.offset));
            assert_eq!(
                found.value,
                json!(a.value),
                "record at {}@{}",
                a.partition,
                a.offset
            );
        }
    }

    for id in 1..=four {
        let warnings = cluster.warnings(id);
        assert!(warnings.is_empty(), "node {id} logged: {warnings:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_to_add_a_node_are_refused_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    let via = cluster.node(1);
    let before = via.try_cluster_info().await.expect("cluster");
    let taken_raft = cluster.raft_addr(2);
    let cases = [
        (
            json!({"id": 0, "raft": "127.0.0.1:1", "http": "http://127.0.0.1:2"}),
            400,
            "invalid_request",
        ),
        (
            json!({"id": 9, "raft": "no-port", "http": "http://127.0.0.1:2"}),
            400,
            "invalid_request",
        ),
        (
            json!({"id": 9, "raft": "bad_name:1", "http": "http://127.0.0.1:2"}),
            400,
            "invalid_request",
        ),
        (
            json!({"id": 9, "raft": "127.0.0.1:1", "http": "ftp://x"}),
            400,
            "invalid_request",
        ),
        (json!({"id": 9, "raft": "127.0.0.1:1"}), 400, "invalid_json"),
        (
            json!({"id": 9, "raft": "127.0.0.1:1", "http": "http://x", "extra": 1}),
            400,
            "invalid_json",
        ),
        (
            json!({"id": 2, "raft": "127.0.0.1:1", "http": "http://127.0.0.1:2"}),
            409,
            "node_conflict",
        ),
        (
            json!({"id": 9, "raft": taken_raft, "http": "http://127.0.0.1:2"}),
            409,
            "node_conflict",
        ),
        (
            json!({"id": 9, "raft": "10.1.2.3:9000", "http": "http://10.1.2.3:8000"}),
            422,
            "invalid_config",
        ),
    ];
    for (body, status, error) in cases {
        let context = body.to_string();
        let resp = add_node(&via, body).send().await.expect("answered");
        expect_error(resp, status, error, &context).await;
    }
    // Node 2 asking again with its own address is idempotent.
    let own = json!({"id": 2, "raft": taken_raft, "http": cluster.http(2)});
    let resp = add_node(&via, own).send().await.expect("answered");
    let node: ClusterNode = expect_json(resp, 200).await.expect("idempotent");
    assert_eq!(node.id, 2);

    let after = via.try_cluster_info().await.expect("cluster");
    let ids = |info: &ClusterInfo| {
        info.nodes
            .iter()
            .map(|n| (n.id, n.raft.clone(), n.voter))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "nothing changed");
    for id in 1..=3 {
        let warnings = cluster.warnings(id);
        assert!(warnings.is_empty(), "node {id} logged: {warnings:#?}");
    }
}

/// Under `--auth` only the admin may add a node; a node started with `--join` and the
/// cluster's admin key file joins with that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_auth_only_the_admin_adds_a_node_and_a_joining_node_uses_the_admin_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let admin_key = "admin.join-test-admin-secret-0123456789abcdef";
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, format!("{admin_key}\n")).expect("write the admin key file");
    let key_path = key_file.display().to_string();
    let mut cluster = Cluster::start_with_env(
        3,
        &[("PSUBD_AUTH", "true"), ("PSUBD_ADMIN_KEY_FILE", &key_path)],
    )
    .await;
    let bearer = |key: &str| format!("Bearer {key}");
    let via = cluster.node(1);
    let url = via.url("/v1/cluster/nodes");
    let own = json!({"id": 2, "raft": cluster.raft_addr(2), "http": cluster.http(2)});

    let anonymous = via
        .http()
        .post(&url)
        .json(&own)
        .send()
        .await
        .expect("answered");
    expect_error(anonymous, 401, "unauthenticated", "no key").await;
    let made = via
        .http()
        .post(via.url("/v1/principals"))
        .header("authorization", bearer(admin_key))
        .json(&json!({"name": "app"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(made.status().as_u16(), 201);
    let key: serde_json::Value = expect_json(
        via.http()
            .post(via.url("/v1/principals/app/keys"))
            .header("authorization", bearer(admin_key))
            .send()
            .await
            .expect("answered"),
        201,
    )
    .await
    .expect("a key");
    let app_key = key["key"].as_str().expect("key").to_string();
    let by_app = via
        .http()
        .post(&url)
        .header("authorization", bearer(&app_key))
        .json(&own)
        .send()
        .await
        .expect("answered");
    expect_error(
        by_app,
        403,
        "forbidden",
        "a principal that is not the admin",
    )
    .await;

    let four = cluster.add_joining_node(1).await;
    let voter = eventually(CATCH_UP, "node 4 a voter", || async {
        let resp = via
            .http()
            .get(via.url("/v1/cluster"))
            .header("authorization", bearer(admin_key))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let info: ClusterInfo = expect_json(resp, 200).await?;
        info.nodes
            .into_iter()
            .find(|n| n.id == four && n.voter)
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_eq!(voter.raft, cluster.raft_addr(four));
    for id in 1..=four {
        let warnings = cluster.warnings(id);
        assert!(warnings.is_empty(), "node {id} logged: {warnings:#?}");
    }
}
