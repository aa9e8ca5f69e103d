//! Idempotent publish and optimistic concurrency on a real 3-node cluster
//! (docs/api.md § Idempotent publish, § Conditional publish, § Key views: If-Match):
//! a record id is stored once whichever node takes it and across a leader kill; it is
//! stored again once the topic's duplicate window has passed; two writers racing one
//! `expected_offset` get exactly one success; `If-Match` guards a key's latest offset.

use std::time::Duration;

use psubd_tests::{eventually, expect_error, Cluster, NodeClient};
use serde_json::{json, Value};

/// Bound on waits for a cluster to settle after a kill.
const SETTLE: Duration = Duration::from_secs(60);

/// One publish attempt of a JSON body; the status and the body as JSON (`Null` when the
/// answer had none), or the transport error.
async fn post(node: &NodeClient, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let resp = node
        .http()
        .post(node.url(path))
        .json(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The reports of a publish answered 200.
async fn publish(node: &NodeClient, topic: &str, records: Value) -> Vec<Value> {
    let path = format!("/v1/topics/{topic}/records");
    let (status, body) = post(node, &path, &json!({ "records": records }))
        .await
        .unwrap_or_else(|e| panic!("publish to {}: {e}", node.base()));
    assert_eq!(status, 200, "publish to {}: {body}", node.base());
    body["offsets"].as_array().cloned().unwrap_or_default()
}

/// Publishes `records` until an answer is 200, as a client retrying an unknown outcome
/// with the same ids does: a 503, a 504 or a transport error (the request may have been
/// written) is sent again, to the running nodes in turn.
async fn publish_until_acknowledged(
    nodes: &[NodeClient],
    topic: &str,
    records: &Value,
) -> Vec<Value> {
    let path = format!("/v1/topics/{topic}/records");
    let body = json!({ "records": records });
    let turn = std::sync::atomic::AtomicUsize::new(0);
    eventually(SETTLE, "a publish acknowledged after retries", || {
        let node = &nodes[turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % nodes.len()];
        let (path, body) = (&path, &body);
        async move {
            match post(node, path, body).await? {
                (200, body) => Ok(body["offsets"].as_array().cloned().unwrap_or_default()),
                (status @ (503 | 504), body) => Err(format!("{status}: {body}")),
                (status, body) => panic!("publish answered {status}: {body}"),
            }
        }
    })
    .await
}

/// `(partition, offset, duplicate)` of a report.
fn place(report: &Value) -> (u64, u64, bool) {
    (
        report["partition"].as_u64().expect("partition"),
        report["offset"].as_u64().expect("offset"),
        report["duplicate"].as_bool().unwrap_or(false),
    )
}

/// The values of partition `partition`'s records, as JSON text, once `node`'s replica
/// holds at least `at_least` of them (a follower may not have applied an acknowledged
/// write yet).
async fn values(node: &NodeClient, topic: &str, partition: u32, at_least: usize) -> Vec<String> {
    eventually(SETTLE, "the replica to catch up", || async move {
        let values: Vec<String> = node
            .try_fetch_all(topic, partition)
            .await?
            .iter()
            .map(|r| r.value.to_string())
            .collect();
        if values.len() >= at_least {
            Ok(values)
        } else {
            Err(format!("{} of {at_least} records so far", values.len()))
        }
    })
    .await
}

/// Creates a topic from `body`, retrying while the controller is not available (503).
async fn create(node: &NodeClient, body: Value) -> Value {
    let body = &body;
    eventually(SETTLE, "the topic created", || async move {
        match post(node, "/v1/topics", body).await? {
            (201, topic) => Ok(topic),
            (503, error) => Err(format!("503: {error}")),
            (status, error) => panic!("create answered {status}: {error}"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_stored_once_whichever_node_takes_it_and_after_a_leader_kill() {
    let mut cluster = Cluster::start(3).await;
    let topic = create(&cluster.node(1), json!({"name": "ids", "partitions": 3})).await;
    assert_eq!(topic["duplicate_window_ms"], 120_000, "the default window");

    // The same unkeyed record with one id through each node: stored once, the later
    // reports name the first one's partition and offset.
    let record = json!([{"id": "order-1", "value": "one"}]);
    let first = place(&publish(&cluster.node(1), "ids", record.clone()).await[0]);
    assert!(!first.2, "the first copy is not a duplicate");
    for id in [2, 3, 1] {
        let again = place(&publish(&cluster.node(id), "ids", record.clone()).await[0]);
        assert_eq!(again, (first.0, first.1, true), "through node {id}");
    }
    // In one request: a new id, a repeat of order-1, the new id again.
    let reports = publish(
        &cluster.node(2),
        "ids",
        json!([
            {"id": "order-2", "key": "k", "value": "two"},
            {"id": "order-1", "value": "one"},
            {"id": "order-2", "key": "k", "value": "two"}
        ]),
    )
    .await;
    let two = place(&reports[0]);
    assert!(!two.2);
    assert_eq!(place(&reports[1]), (first.0, first.1, true));
    assert_eq!(place(&reports[2]), (two.0, two.1, true));
    // Raw mode: the Idempotency-Key header.
    let raw = || async {
        let resp = cluster
            .client()
            .post(cluster.node(3).url("/v1/topics/ids/records?partition=0"))
            .header("content-type", "text/plain")
            .header("idempotency-key", "raw-1")
            .body("raw")
            .send()
            .await
            .expect("raw publish");
        assert_eq!(resp.status().as_u16(), 200);
        let offset = resp.headers()["x-offset"].to_str().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        (offset, place(&body["offsets"][0]))
    };
    let (raw_offset, raw_first) = raw().await;
    let (raw_again_offset, raw_again) = raw().await;
    assert_eq!(raw_again_offset, raw_offset);
    assert_eq!(raw_again, (raw_first.0, raw_first.1, true));
    // An empty id or one over 256 bytes is refused, and nothing is written.
    for bad in [String::new(), "x".repeat(257)] {
        let resp = cluster
            .client()
            .post(cluster.node(1).url("/v1/topics/ids/records"))
            .json(&json!({"records": [{"id": bad, "value": 1}]}))
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "invalid_request", "a bad id").await;
    }

    // A topic with one partition: a batch acknowledged, then the partition's leader is
    // killed while the same batch is being sent to it again and more to a survivor; the
    // retries of everything through the survivors store each record once.
    cluster.node(1).create_topic("kills", 1, 3).await;
    let batch = |from: usize| -> Value {
        (from..from + 50)
            .map(|i| json!({"id": format!("r{i}"), "value": i}))
            .collect()
    };
    let acked = publish(&cluster.node(1), "kills", batch(0)).await;
    let leader = cluster.leader_of("kills", 0).await;
    let survivors: Vec<NodeClient> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| cluster.node(id))
        .collect();
    let in_flight = {
        let (node, body) = (cluster.node(leader), json!({ "records": batch(50) }));
        tokio::spawn(async move { post(&node, "/v1/topics/kills/records", &body).await })
    };
    cluster.kill(leader);
    // Whatever it answered (or not), its outcome is unknown to the writer.
    let _ = in_flight.await;
    let retried = publish_until_acknowledged(&survivors, "kills", &batch(0)).await;
    for (before, after) in acked.iter().zip(&retried) {
        let (p, o, _) = place(before);
        assert_eq!(place(after), (p, o, true), "an acknowledged id retried");
    }
    publish_until_acknowledged(&survivors, "kills", &batch(50)).await;
    let again = publish_until_acknowledged(&survivors, "kills", &batch(50)).await;
    assert!(
        again.iter().all(|r| place(r).2),
        "a third send of the in-flight batch is all duplicates: {again:?}"
    );
    let mut stored = values(&survivors[0], "kills", 0, 100).await;
    assert_eq!(
        stored.len(),
        100,
        "each of the 100 ids stored once: {stored:?}"
    );
    stored.sort();
    stored.dedup();
    assert_eq!(stored.len(), 100, "no value twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_stored_again_once_the_window_has_passed() {
    let cluster = Cluster::start(3).await;
    let node = cluster.node(1);
    let topic = create(
        &node,
        json!({"name": "short", "partitions": 1, "duplicate_window_ms": 1000}),
    )
    .await;
    assert_eq!(topic["duplicate_window_ms"], 1000);
    let record = json!([{"id": "a", "value": 1}]);
    let first = place(&publish(&node, "short", record.clone()).await[0]);
    assert_eq!(first, (0, 0, false));
    assert_eq!(
        place(&publish(&cluster.node(2), "short", record.clone()).await[0]),
        (0, 0, true)
    );
    // Retried until the window has passed: every attempt inside it stores nothing.
    let stored_again = eventually(Duration::from_secs(20), "the id's window to pass", || {
        let (node, record) = (&node, &record);
        async move {
            let report = place(&publish(node, "short", record.clone()).await[0]);
            if report.2 {
                Err(format!("still a duplicate of {report:?}"))
            } else {
                Ok(report)
            }
        }
    })
    .await;
    assert_eq!(
        stored_again,
        (0, 1, false),
        "stored again, at the next offset"
    );
    assert_eq!(values(&node, "short", 0, 2).await, vec!["1", "1"]);

    // A zero window turns deduplication off.
    let resp = node
        .http()
        .patch(node.url("/v1/topics/short"))
        .json(&json!({"duplicate_window_ms": 0}))
        .send()
        .await
        .unwrap();
    let patched: Value = psubd_tests::expect_json(resp, 200).await.unwrap();
    assert_eq!(patched["duplicate_window_ms"], 0);
    // Leaders read the new window from their own replica of the metadata.
    eventually(Duration::from_secs(10), "the zero window in effect", || {
        let (node, record) = (&node, &record);
        async move {
            let report = place(&publish(node, "short", record.clone()).await[0]);
            if report.2 {
                Err(format!("a duplicate with the window off: {report:?}"))
            } else {
                Ok(())
            }
        }
    })
    .await;
    let twice = publish(
        &node,
        "short",
        json!([{"id": "b", "value": 2}, {"id": "b", "value": 2}]),
    )
    .await;
    assert!(!place(&twice[0]).2 && !place(&twice[1]).2, "{twice:?}");
    // Out of range: refused, nothing changed.
    let resp = node
        .http()
        .patch(node.url("/v1/topics/short"))
        .json(&json!({"duplicate_window_ms": 86_400_001}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 422, "invalid_config", "a window over a day").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_one_expected_offset_get_exactly_one_success() {
    let cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("race", 2, 3).await;
    for round in 0..5u64 {
        // Round n starts at offset n: each round stores exactly one record.
        let attempts = [1, 2].map(|id| {
            let node = cluster.node(id);
            let body = json!({"records": [{"partition": 0, "value": format!("{round}-{id}")}]});
            tokio::spawn(async move {
                post(
                    &node,
                    &format!("/v1/topics/race/records?expected_offset={round}"),
                    &body,
                )
                .await
            })
        });
        let mut answers = Vec::new();
        for attempt in attempts {
            answers.push(attempt.await.unwrap().expect("an answer"));
        }
        answers.sort_by_key(|(status, _)| *status);
        let [(ok, won), (refused, lost)] = [answers[0].clone(), answers[1].clone()];
        assert_eq!((ok, refused), (200, 412), "round {round}: {answers:?}");
        assert_eq!(place(&won["offsets"][0]), (0, round, false));
        assert_eq!(lost["error"], "offset_mismatch");
        assert_eq!(lost["error_code"], 41201);
        assert_eq!(lost["current_offset"], round + 1, "the current next offset");
    }
    let node = cluster.node(3);
    assert_eq!(values(&node, "race", 0, 5).await.len(), 5);
    // A stale expectation writes nothing; records over two partitions are refused.
    let (status, body) = post(
        &node,
        "/v1/topics/race/records?expected_offset=1",
        &json!({"records": [{"partition": 0, "value": 1}]}),
    )
    .await
    .unwrap();
    assert_eq!((status, body["current_offset"].as_u64()), (412, Some(5)));
    let resp = node
        .http()
        .post(node.url("/v1/topics/race/records?expected_offset=5"))
        .json(&json!({"records": [{"partition": 0, "value": 1}, {"partition": 1, "value": 2}]}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid_request", "records in two partitions").await;
    assert_eq!(values(&node, "race", 0, 5).await.len(), 5);
    assert!(values(&node, "race", 1, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_writes_a_key_only_at_its_expected_latest_offset() {
    let cluster = Cluster::start(3).await;
    create(
        &cluster.node(1),
        json!({"name": "table", "partitions": 2, "cleanup_policy": "compact"}),
    )
    .await;
    let put = |node: u64, if_match: &str, value: &str| {
        let request = cluster
            .client()
            .put(cluster.node(node).url("/v1/topics/table/keys/alice"))
            .header("content-type", "text/plain")
            .header("if-match", if_match)
            .body(value.to_owned());
        async move { request.send().await.expect("put") }
    };
    let offset = |body: Value| body["offset"].as_u64().expect("offset");
    // -1: only while the key has no live record.
    let first = offset(
        psubd_tests::expect_json(put(1, "-1", "v1").await, 200)
            .await
            .unwrap(),
    );
    let refused = expect_error(put(2, "-1", "v2").await, 412, "offset_mismatch", "exists").await;
    assert_eq!(refused.extra["current_offset"], json!(first));
    // The latest offset (quoted as an entity tag, too) writes; a stale one does not.
    let second = offset(
        psubd_tests::expect_json(put(2, &format!("\"{first}\""), "v2").await, 200)
            .await
            .unwrap(),
    );
    let stale = expect_error(
        put(3, &first.to_string(), "v3").await,
        412,
        "offset_mismatch",
        "stale",
    )
    .await;
    assert_eq!(stale.extra["current_offset"], json!(second));
    // A deleted key has no live record: -1 matches again.
    let resp = cluster
        .client()
        .delete(cluster.node(3).url("/v1/topics/table/keys/alice"))
        .header("if-match", second.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let fourth = offset(
        psubd_tests::expect_json(put(1, "-1", "v4").await, 200)
            .await
            .unwrap(),
    );
    expect_error(
        put(1, "soon", "v5").await,
        400,
        "invalid_request",
        "a bad If-Match",
    )
    .await;
    let resp = cluster
        .client()
        .get(
            cluster
                .node(2)
                .url(&format!("/v1/topics/table/keys/alice?min_offset={fourth}")),
        )
        .send()
        .await
        .unwrap();
    let latest: Value = psubd_tests::expect_json(resp, 200).await.unwrap();
    assert_eq!(latest["value"], "v4");
}
