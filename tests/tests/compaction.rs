//! Compacted topics and key views end to end (issue 8): real nodes, HTTP only.
//!
//! `issue_08_compacted_topic_key_views_survive_kill_and_compaction`: 100,000 updates over
//! 1,000 keys (batched publishes) into a three-partition compacted topic, then 100 keys
//! deleted through `DELETE /keys/{key}`:
//! - every key view, on every node, answers the last acknowledged value at its offset
//!   (`min_offset` = the acknowledged offset: read-your-writes on any replica), deleted keys
//!   answer 404 `key_not_found`; again after a kill -9 and restart of a node;
//! - after compaction, reading each partition from offset 0 returns about one record per
//!   key instead of 100: offsets strictly increasing, each the acknowledged latest of its
//!   key (DESIGN.md § Fetch path: offsets are never changed or reused);
//! - `PUT` stores a value, scans page through a prefix in key order, a delete-policy topic
//!   answers 422 `topic_not_compacted`.
//!
//! Nodes run with a 200 ms maintenance tick so compaction starts within about a second.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use psubd_tests::{eventually, expect_error, expect_json, Cluster, NewRecord, NodeClient};
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(30);
const FAST_TICK: (&str, &str) = ("PSUBD_MAINTENANCE_INTERVAL_MS", "200");
const TOPIC: &str = "kv";
const KEYS: usize = 1_000;
const ROUNDS: usize = 100;
const DELETED: std::ops::Range<usize> = 900..1_000;

fn key(i: usize) -> String {
    format!("k{i:04}")
}

/// What the test acknowledged last for a key: (partition, offset, value or deleted).
#[derive(Clone, Debug)]
struct Acked {
    partition: u32,
    offset: u64,
    value: Option<Value>,
}

async fn create_compacted(node: &NodeClient) {
    let body = json!({
        "name": TOPIC, "partitions": 3, "replication_factor": 3,
        "cleanup_policy": "compact", "delete_retention_ms": 1_000,
    });
    let created: Value = eventually(SETTLE, "compacted topic created", || {
        let request = node.http().post(node.url("/v1/topics")).json(&body);
        async move {
            let resp = request.send().await.map_err(|e| e.to_string())?;
            expect_json::<Value>(resp, 201).await
        }
    })
    .await;
    assert_eq!(created["cleanup_policy"], "compact");
    assert_eq!(created["delete_retention_ms"], 1_000);
}

/// One key view; `Ok(None)` is a 404 `key_not_found`.
async fn view(node: &NodeClient, key: &str, min_offset: u64) -> Result<Option<Value>, String> {
    let url = node.url(&format!(
        "/v1/topics/{TOPIC}/keys/{key}?min_offset={min_offset}&timeout_ms=10000"
    ));
    let resp = node
        .http()
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        200 => resp.json().await.map(Some).map_err(|e| e.to_string()),
        404 => {
            let body: Value = resp.json().await.map_err(|e| e.to_string())?;
            if body["error"] == "key_not_found" {
                Ok(None)
            } else {
                Err(format!("404 {body}"))
            }
        }
        status => Err(format!(
            "{status}: {}",
            resp.text().await.unwrap_or_default()
        )),
    }
}

/// Every key view on `node` matches what was acknowledged.
async fn check_views(node: &NodeClient, acked: &HashMap<String, Acked>) {
    let checks = futures::stream::iter(acked.iter())
        .map(|(key, want)| async move {
            let got = eventually(SETTLE, &format!("view of {key} on {}", node.base()), || {
                view(node, key, want.offset)
            })
            .await;
            match (&want.value, got) {
                (None, None) => {}
                (Some(value), Some(record)) => {
                    assert_eq!(&record["value"], value, "{key} on {}", node.base());
                    assert_eq!(record["offset"], want.offset, "{key} on {}", node.base());
                    assert_eq!(record["partition"], want.partition, "{key}");
                    assert_eq!(record["key"], key.as_str());
                    assert_eq!(record["topic"], TOPIC);
                }
                (want, got) => panic!("{key} on {}: want {want:?}, got {got:?}", node.base()),
            }
        })
        .buffer_unordered(32);
    checks.collect::<Vec<()>>().await;
}

/// Every record of a partition from offset 0 on, following `next_offset`.
async fn read_partition(node: &NodeClient, partition: u32) -> Result<Vec<(u64, String)>, String> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let page = node.try_fetch(TOPIC, partition, offset, 10_000, 0).await?;
        if page.records.is_empty() {
            if page.next_offset < page.high_watermark {
                return Err(format!(
                    "empty page at {offset} below {}",
                    page.high_watermark
                ));
            }
            return Ok(out);
        }
        for r in page.records {
            out.push((r.offset, r.key.unwrap_or_default()));
        }
        if page.next_offset <= offset {
            return Err(format!(
                "next_offset {} did not advance from {offset}",
                page.next_offset
            ));
        }
        offset = page.next_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_08_compacted_topic_key_views_survive_kill_and_compaction() {
    let mut cluster = Cluster::start_with_env(3, &[FAST_TICK]).await;
    let node = cluster.node(1);
    create_compacted(&node).await;

    // 100 rounds of one update per key, one request per round (1,000 records).
    let mut acked: HashMap<String, Acked> = HashMap::new();
    for round in 0..ROUNDS {
        let records: Vec<NewRecord> = (0..KEYS)
            .map(|i| NewRecord::keyed(key(i), json!({ "key": i, "round": round })))
            .collect();
        let reports = cluster
            .node(1 + (round as u64 % 3))
            .publish(TOPIC, &records)
            .await;
        assert_eq!(reports.len(), KEYS);
        for (i, report) in reports.iter().enumerate() {
            acked.insert(
                key(i),
                Acked {
                    partition: report.partition,
                    offset: report.offset,
                    value: Some(json!({ "key": i, "round": round })),
                },
            );
        }
    }
    // Deletes through the key API; a PUT of a plain string value.
    for i in DELETED {
        let resp = node
            .http()
            .delete(node.url(&format!("/v1/topics/{TOPIC}/keys/{}", key(i))))
            .send()
            .await
            .unwrap();
        let body: Value = expect_json(resp, 200).await.unwrap();
        let entry = acked.get_mut(&key(i)).unwrap();
        assert_eq!(
            body["partition"], entry.partition,
            "a key stays in its partition"
        );
        assert!(body["offset"].as_u64().unwrap() > entry.offset);
        entry.offset = body["offset"].as_u64().unwrap();
        entry.value = None;
    }
    let resp = node
        .http()
        .put(node.url(&format!("/v1/topics/{TOPIC}/keys/{}", key(7))))
        .header("content-type", "text/plain")
        .body("seven")
        .send()
        .await
        .unwrap();
    let body: Value = expect_json(resp, 200).await.unwrap();
    let seven = acked.get_mut(&key(7)).unwrap();
    seven.offset = body["offset"].as_u64().unwrap();
    seven.value = Some(json!("seven"));

    for id in cluster.ids() {
        check_views(&cluster.node(id), &acked).await;
    }
    let missing = view(&node, "never-written", 0).await.unwrap();
    assert!(missing.is_none(), "a key never written answers 404");

    // Compaction: each partition read from 0 holds only the latest record of each key
    // (deleted keys' tombstones go after delete_retention_ms), at its original offset.
    let latest: HashMap<(u32, u64), &str> = acked
        .iter()
        .map(|(k, a)| ((a.partition, a.offset), k.as_str()))
        .collect();
    let live = acked.values().filter(|a| a.value.is_some()).count();
    let acked_ref = &acked;
    let latest_ref = &latest;
    let survivors = eventually(
        Duration::from_secs(40),
        "compaction of every partition",
        || {
            let node = node.clone();
            async move {
                let mut total = 0usize;
                for partition in 0..3u32 {
                    let records = read_partition(&node, partition).await?;
                    let mut previous = None;
                    for (offset, key) in &records {
                        if previous.is_some_and(|p| p >= *offset) {
                            return Err(format!("offsets not increasing at {offset}"));
                        }
                        previous = Some(*offset);
                        if latest_ref.get(&(partition, *offset)) != Some(&key.as_str()) {
                            return Err(format!(
                                "{partition}/{offset} ({key}) is not its key's latest yet"
                            ));
                        }
                    }
                    total += records.len();
                }
                if total > live {
                    return Err(format!(
                        "{total} records, {live} live keys: tombstones remain"
                    ));
                }
                Ok(total)
            }
        },
    )
    .await;
    assert_eq!(
        survivors,
        live,
        "one record per live key, from {} published",
        KEYS * ROUNDS
    );
    let _ = acked_ref;

    // kill -9 and restart a node: every view still answers on every node.
    cluster.kill(2);
    check_views(&cluster.node(3), &acked).await;
    cluster.restart(2).await;
    for id in cluster.ids() {
        check_views(&cluster.node(id), &acked).await;
    }

    // Scan: page through the 100 keys with prefix k00 in key order; deleted keys never show.
    let mut scanned = Vec::new();
    let mut start = String::new();
    for _ in 0..10 {
        let resp = node
            .http()
            .get(node.url(&format!("/v1/topics/{TOPIC}/keys")))
            .query(&[
                ("prefix", "k00"),
                ("start", start.as_str()),
                ("limit", "30"),
            ])
            .send()
            .await
            .unwrap();
        let page: Value = expect_json(resp, 200).await.unwrap();
        for record in page["keys"].as_array().unwrap() {
            scanned.push(record["key"].as_str().unwrap().to_string());
            let want = &acked[record["key"].as_str().unwrap()];
            assert_eq!(record["value"], *want.value.as_ref().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => start = next.to_string(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..100).map(key).collect();
    assert_eq!(scanned, expected, "prefix scan in key order, each key once");
    let resp = node
        .http()
        .get(node.url(&format!("/v1/topics/{TOPIC}/keys?prefix=k09")))
        .send()
        .await
        .unwrap();
    let page: Value = expect_json(resp, 200).await.unwrap();
    assert_eq!(page["keys"], json!([]), "deleted keys are not scanned");

    // Key views need a compacted topic.
    node.create_topic("plain", 1, 3).await;
    let resp = node
        .http()
        .get(node.url("/v1/topics/plain/keys/a"))
        .send()
        .await
        .unwrap();
    expect_error(
        resp,
        422,
        "topic_not_compacted",
        "key view of a delete topic",
    )
    .await;
}
