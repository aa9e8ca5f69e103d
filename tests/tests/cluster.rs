//! A three-node cluster of real `psubd node` processes, driven over
//! HTTP exactly as docs/api.md describes.
//!
//! The non-destructive checks share one cluster (`http_api_contracts_on_a_three_node_cluster`); the
//! crash and restart scenarios each get their own. Clusters never overlap within this
//! process (the fixture serialises them), so measured times are not inflated by another
//! cluster competing for the two CI cores.
//!
//! Needs the binary: `cargo build -p psubd` first.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psubd_tests::{
    eventually, expect_error, expect_json, Checks, Cluster, NewRecord, NodeClient, PublishOutcome,
};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use support::{assert_all_present, by_partition, converged_high_watermarks, Acked, Expected};

/// Every node ready within this long of being spawned.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Publishes succeed again within this long of killing a partition's leader.
const FAILOVER_WITHIN: Duration = Duration::from_secs(5);

/// docs/api.md § Names and limits: the default largest record.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// docs/api.md § Names and limits: the default largest request.
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

/// docs/api.md § Names and limits: the default most records per request.
const MAX_RECORDS_PER_REQUEST: usize = 1000;

/// docs/api.md § Names and limits: the default largest headers per record.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// How long a follower may take to show what the leader acknowledged.
const CATCH_UP: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// One shared cluster: checks that do not disturb each other.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_contracts_on_a_three_node_cluster() {
    let cluster = Cluster::start(3).await;
    let c = &cluster;
    let mut checks = Checks::new();
    checks.run("ready_within_10s", ready_within_10s(c)).await;
    checks.run("cluster_view", cluster_view(c)).await;
    checks
        .run(
            "publish_batch_to_fresh_topic",
            publish_batch_to_fresh_topic(c),
        )
        .await;
    checks
        .run(
            "keyed_publish_read_back_from_every_node",
            keyed_publish_read_back(c),
        )
        .await;
    checks
        .run("ndjson_stream_publish", ndjson_stream_publish(c))
        .await;
    checks
        .run("long_poll_empty_times_out", long_poll_empty_times_out(c))
        .await;
    checks
        .run("long_poll_wakes_on_publish", long_poll_wakes_on_publish(c))
        .await;
    checks.run("acks_levels", acks_levels(c)).await;

    c.node(1).create_topic(BAD, 3, 3).await;
    for p in 0..3 {
        let r = NewRecord {
            partition: Some(p),
            ..NewRecord::keyed(format!("seed-{p}"), json!({"seed": p}))
        };
        c.node(1).publish(BAD, &[r]).await;
    }
    checks
        .run("bad_input_malformed_json", bad_input_malformed_json(c))
        .await;
    checks
        .run("bad_input_unknown_topic", bad_input_unknown_topic(c))
        .await;
    checks
        .run("bad_input_oversized", bad_input_oversized(c))
        .await;
    checks
        .run("bad_input_topic_name", bad_input_topic_name(c))
        .await;
    checks
        .run(
            "bad_input_partition_out_of_range",
            bad_input_partition_out_of_range(c),
        )
        .await;
    checks
        .run(
            "bad_input_offset_out_of_range",
            bad_input_offset_out_of_range(c),
        )
        .await;
    checks
        .run(
            "bad_input_wrong_content_type",
            bad_input_wrong_content_type(c),
        )
        .await;
    checks
        .run("bad_input_too_many_records", bad_input_too_many_records(c))
        .await;
    checks
        .run(
            "pages_of_other_origins_cannot_write",
            pages_of_other_origins_cannot_write(c),
        )
        .await;
    checks.finish();
}

/// docs/operations.md § Readiness: all three nodes answer `GET /readyz` 200 within
/// 10 s of being spawned, and `GET /healthz` 200.
async fn ready_within_10s(c: &Cluster) {
    let t = c.ready_in();
    eprintln!("FIGURE time to ready: {t:.2?} (3 nodes, first spawn -> every GET /readyz 200)");
    assert!(
        t <= READY_WITHIN,
        "nodes took {t:?} to be ready, limit {READY_WITHIN:?}"
    );
    for id in c.ids() {
        let node = c.node(id);
        assert!(node.is_ready().await, "node {id}: GET /readyz is not 200");
        let health = node
            .http()
            .get(node.url("/healthz"))
            .send()
            .await
            .expect("GET /healthz");
        assert_eq!(health.status().as_u16(), 200, "node {id}: GET /healthz");
    }
}

/// docs/api.md § Cluster: `GET /v1/cluster` on each node names itself, lists
/// all three nodes alive with their HTTP addresses, and a controller leader.
async fn cluster_view(c: &Cluster) {
    for id in c.ids() {
        let node = c.node(id);
        let node = &node;
        let info = eventually(
            Duration::from_secs(10),
            &format!("node {id} to see 3 live nodes and a controller leader"),
            || async move {
                let info = node.try_cluster_info().await?;
                if info.nodes.len() == 3
                    && info.nodes.iter().all(|n| n.alive && n.http.is_some())
                    && info.controller_leader.is_some()
                {
                    Ok(info)
                } else {
                    Err(format!("{info:?}"))
                }
            },
        )
        .await;
        assert_eq!(info.node_id, id, "node {id}: node_id");
        for n in &info.nodes {
            assert_eq!(
                n.http.as_deref(),
                Some(c.http(n.id).as_str()),
                "node {id}: http address of node {}",
                n.id
            );
        }
        let leader = info.controller_leader.unwrap_or_default();
        assert!(
            c.ids().contains(&leader),
            "node {id}: controller_leader {leader} is not a member"
        );
    }
}

/// docs/architecture.md § Publish path and § Failure contract; docs/api.md § Publish, § Fetch by
/// offset: 3,000 keyed records (batches through nodes 2 and 3) plus raw-mode records land where
/// the delivery reports say; every node returns every record, in order, at its
/// acknowledged offset; equal keys share one partition.
async fn keyed_publish_read_back(c: &Cluster) {
    const TOPIC: &str = "keyed";
    const RECORDS: usize = 3000;
    const BATCH: usize = 100;
    const KEYS: usize = 50;
    let topic = c.node(1).create_topic(TOPIC, 3, 3).await;
    assert_eq!(topic.replication_factor, 3);

    let records: Vec<NewRecord> = (0..RECORDS)
        .map(|i| {
            let key = format!("key-{}", i % KEYS);
            let mut r = NewRecord::keyed(&key, json!({"i": i, "key": key, "pad": "x".repeat(64)}));
            if i % 10 == 0 {
                r.headers = Some(BTreeMap::from([(String::from("trace"), format!("t-{i}"))]));
            }
            r
        })
        .collect();
    let via = [c.node(2), c.node(3)];
    let mut acked: Vec<Acked> = Vec::with_capacity(RECORDS + 2);
    // The rate is measured after the first batch (connections warm).
    let first = records.chunks(BATCH).next().expect("at least one batch");
    acked.extend(Acked::from_publish(
        first,
        &via[0].publish(TOPIC, first).await,
    ));
    let t = Instant::now();
    for (b, chunk) in records.chunks(BATCH).enumerate().skip(1) {
        let reports = via[b % 2].publish(TOPIC, chunk).await;
        acked.extend(Acked::from_publish(chunk, &reports));
    }
    let took = t.elapsed();
    let measured = RECORDS - first.len();
    eprintln!(
        "FIGURE publish rate: {:.0} records/s ({measured} records of ~100 B, batches of {BATCH}, \
         one request at a time, acks=all, via nodes 2 and 3, debug build) in {took:.2?}",
        measured as f64 / took.as_secs_f64()
    );

    // Raw mode (docs/api.md § Publish, "for curl"): the body is the value, the key in X-Key.
    let node3 = c.node(3);
    let raw: Vec<u8> = vec![0x00, 0x9f, 0x92, 0x96, 0xff, 0xfe, b'r', b'a', b'w', 0x80];
    let resp = node3
        .http()
        .post(node3.url(&format!("/v1/topics/{TOPIC}/records")))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("X-Key", "key-7")
        .body(raw.clone())
        .send()
        .await
        .expect("raw publish");
    acked.push(raw_ack(resp, "key-7", raw).await);
    // text/plain with the key in the query string.
    let text = b"hello from curl".to_vec();
    let resp = node3
        .http()
        .post(node3.url(&format!("/v1/topics/{TOPIC}/records?key=key-8")))
        .header(CONTENT_TYPE, "text/plain")
        .body(text.clone())
        .send()
        .await
        .expect("text publish");
    acked.push(raw_ack(resp, "key-8", text).await);

    // Equal keys, one partition (JSON and raw records alike); keys spread over more
    // than one partition.
    let mut key_partitions: HashMap<String, HashSet<u32>> = HashMap::new();
    for a in &acked {
        let key = a.key.clone().expect("every record here is keyed");
        key_partitions.entry(key).or_default().insert(a.partition);
    }
    for (key, parts) in &key_partitions {
        assert_eq!(parts.len(), 1, "key {key} landed in partitions {parts:?}");
    }
    let used: HashSet<u32> = acked.iter().map(|a| a.partition).collect();
    assert!(
        used.len() >= 2,
        "{KEYS} keys all hashed to partitions {used:?}"
    );
    assert!(
        used.iter().all(|&p| p < 3),
        "partitions {used:?} outside 0..3"
    );

    // Offsets are dense from 0 and, for one producer publishing in sequence, follow
    // the publish order within a partition.
    let grouped = by_partition(&acked);
    for (p, offsets) in &grouped {
        let want: Vec<u64> = (0..offsets.len() as u64).collect();
        let got: Vec<u64> = offsets.keys().copied().collect();
        assert_eq!(
            got, want,
            "partition {p}: acknowledged offsets are not dense from 0"
        );
    }
    let mut last: HashMap<u32, u64> = HashMap::new();
    for a in &acked {
        if let Some(prev) = last.insert(a.partition, a.offset) {
            assert!(
                a.offset > prev,
                "partition {}: offset {} acknowledged after {prev} for a later publish",
                a.partition,
                a.offset
            );
        }
    }

    // JSON records first, so that a raw-mode problem cannot hide one of theirs.
    let (raw_acked, json_acked): (Vec<Acked>, Vec<Acked>) = acked
        .iter()
        .cloned()
        .partition(|a| matches!(a.expected, Expected::Bytes(_)));
    assert_all_present(c, TOPIC, &json_acked, &c.ids(), CATCH_UP).await;
    // docs/api.md § Fetch by offset: binary *values* come back base64; the key published as
    // `X-Key: key-7` stays "key-7".
    assert_all_present(c, TOPIC, &raw_acked, &c.ids(), CATCH_UP).await;
    // Nothing beyond what was acknowledged.
    let hws = converged_high_watermarks(c, TOPIC).await;
    for (p, hw) in hws.iter().enumerate() {
        let n = grouped.get(&(p as u32)).map_or(0, BTreeMap::len) as u64;
        assert_eq!(
            *hw, n,
            "partition {p}: high watermark vs acknowledged records"
        );
    }
}

/// A topic is usable when created: `POST /v1/topics` answers 201 once every partition has
/// a leader able to take a write. One publish per partition, sent through every node the
/// moment the 201 arrives (no retries), is acknowledged at offset 0 of its partition.
async fn publish_batch_to_fresh_topic(c: &Cluster) {
    const TOPIC: &str = "fresh";
    const PARTITIONS: u32 = 12;
    c.node(1).create_topic(TOPIC, PARTITIONS, 3).await;
    let publishes = (0..PARTITIONS).map(|p| {
        let node = c.node(1 + (p as u64 % 3));
        let record = NewRecord {
            partition: Some(p),
            ..NewRecord::keyed(format!("fresh-{p}"), json!(p))
        };
        async move {
            let outcome = node
                .try_publish(TOPIC, &[record], psubd_tests::client::REQUEST_TIMEOUT)
                .await;
            (p, outcome)
        }
    });
    for (p, outcome) in futures::future::join_all(publishes).await {
        match outcome {
            PublishOutcome::Acked(reports) => {
                assert_eq!(reports.len(), 1, "partition {p}: one report");
                assert_eq!(reports[0].partition, p, "partition {p}: explicit partition");
                assert_eq!(reports[0].offset, 0, "partition {p}: the first offset");
            }
            other => panic!("publish to partition {p} right after the 201: {other:?}"),
        }
    }
}

/// docs/api.md § Publish, acks: `acks=0` answers 202 with the count before anything is written,
/// and the records still arrive; `acks=1` is refused with 400 and writes nothing.
async fn acks_levels(c: &Cluster) {
    const TOPIC: &str = "acks";
    c.node(1).create_topic(TOPIC, 1, 3).await;
    // A first acknowledged write, so the partition has a leader before the fire-and-forget.
    c.node(1)
        .publish(TOPIC, &[NewRecord::keyed("a1", json!("leader"))])
        .await;
    let node = c.node(3);
    let url = node.url(&format!("/v1/topics/{TOPIC}/records?acks=0"));
    let body = json!({ "records": (0..5).map(|i| json!({"key": format!("a0-{i}"), "value": i})).collect::<Vec<_>>() });
    let resp = node.http().post(&url).json(&body).send().await.unwrap();
    let answer: Value = expect_json(resp, 202)
        .await
        .unwrap_or_else(|e| panic!("acks=0 publish: {e}"));
    assert_eq!(answer["accepted"], json!(5), "acks=0 answer: {answer}");
    let keys = eventually(CATCH_UP, "the acks=0 records on node 1", || async {
        let records = c.node(1).try_fetch_all(TOPIC, 0).await?;
        let keys: Vec<String> = records.iter().filter_map(|r| r.key.clone()).collect();
        if keys.len() < 6 {
            return Err(format!("{} of 6 records so far", keys.len()));
        }
        Ok::<_, String>(keys)
    })
    .await;
    let expected: Vec<String> = std::iter::once("a1".to_string())
        .chain((0..5).map(|i| format!("a0-{i}")))
        .collect();
    assert_eq!(keys, expected, "acks=0 records, in order, once each");

    // No leader-only level: offsets are assigned at commit. Refused, nothing written.
    let url = node.url(&format!("/v1/topics/{TOPIC}/records?acks=1"));
    let body = json!({ "records": [{"key": "a-one", "value": 1}] });
    let resp = node.http().post(&url).json(&body).send().await.unwrap();
    let error: Value = expect_json(resp, 400)
        .await
        .unwrap_or_else(|e| panic!("acks=1 publish: {e}"));
    assert_eq!(
        error["error"],
        json!("invalid_request"),
        "acks=1 answer: {error}"
    );
    let records = c.node(1).fetch_all(TOPIC, 0).await;
    assert_eq!(records.len(), 6, "acks=1 wrote nothing: {records:?}");
}

/// docs/api.md § Publish, raw mode: a 200 whose JSON report and `X-Partition`/`X-Offset`
/// headers agree.
async fn raw_ack(resp: reqwest::Response, key: &str, bytes: Vec<u8>) -> Acked {
    let header = |name: &str| -> u64 {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "raw publish answer lacks a numeric {name} header: {:?}",
                    resp.headers()
                )
            })
    };
    let (hp, ho) = (header("X-Partition"), header("X-Offset"));
    let body: psubd_tests::wire::PublishResponse =
        expect_json(resp, 200).await.expect("raw publish answer");
    assert_eq!(body.offsets.len(), 1, "raw publish: one delivery report");
    let d = body.offsets[0];
    assert_eq!(
        (u64::from(d.partition), d.offset),
        (hp, ho),
        "raw publish: JSON report vs headers"
    );
    Acked {
        partition: d.partition,
        offset: d.offset,
        key: Some(key.to_owned()),
        expected: Expected::Bytes(bytes),
    }
}

/// docs/api.md § Publish, streaming mode: one delivery report per NDJSON line, in order.
async fn ndjson_stream_publish(c: &Cluster) {
    const TOPIC: &str = "ndjson";
    const LINES: usize = 300;
    let node1 = c.node(1);
    node1.create_topic(TOPIC, 3, 3).await;
    // A record in each partition before the stream.
    let mut acked = Vec::new();
    for p in 0..3 {
        let r = vec![NewRecord {
            partition: Some(p),
            ..NewRecord::keyed("warm-up", json!({"warm": p}))
        }];
        acked.extend(Acked::from_publish(&r, &node1.publish(TOPIC, &r).await));
    }

    let records: Vec<NewRecord> = (0..LINES)
        .map(|i| NewRecord::keyed(format!("s-{}", i % 7), json!({"n": i})))
        .collect();
    let mut body = String::new();
    for r in &records {
        body.push_str(&serde_json::to_string(r).expect("serialise a record"));
        body.push('\n');
    }
    let resp = node1
        .http()
        .post(node1.url(&format!("/v1/topics/{TOPIC}/records:stream")))
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("stream publish");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("stream publish answer");
    assert_eq!(status, 200, "stream publish status; body: {text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        LINES,
        "one delivery report line per record line"
    );
    let mut reports = Vec::with_capacity(LINES);
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("report line {i} is not JSON ({e}): {line}"));
        assert!(
            v.get("error").is_none(),
            "report line {i} is an error: {line}"
        );
        let d: psubd_tests::DeliveryReport = serde_json::from_value(v)
            .unwrap_or_else(|e| panic!("report line {i} lacks partition/offset ({e}): {line}"));
        reports.push(d);
    }
    let streamed = Acked::from_publish(&records, &reports);
    // One producer's records to one partition keep their order (per key above all:
    // what keyed partitioning exists for). Line i's record must sit after line j's
    // (j < i) when both went to the same partition.
    let mut last_of_key: HashMap<String, (usize, u32, u64)> = HashMap::new();
    let mut last_in_partition: HashMap<u32, (usize, u64)> = HashMap::new();
    let mut reordered = Vec::new();
    for (line, a) in streamed.iter().enumerate() {
        let key = a.key.clone().unwrap_or_default();
        if let Some((prev_line, p, prev)) =
            last_of_key.insert(key.clone(), (line, a.partition, a.offset))
        {
            assert_eq!(p, a.partition, "key {key} in two partitions");
            if a.offset <= prev {
                reordered.push(format!(
                    "key {key}: line {line} got offset {} of partition {p}, before line {prev_line} (offset {prev})",
                    a.offset
                ));
            }
        }
        if let Some((prev_line, prev)) = last_in_partition.insert(a.partition, (line, a.offset)) {
            if a.offset <= prev {
                reordered.push(format!(
                    "partition {}: line {line} got offset {}, before line {prev_line} (offset {prev})",
                    a.partition, a.offset
                ));
            }
        }
    }
    assert!(
        reordered.is_empty(),
        "{} records of one NDJSON stream were stored out of line order, e.g.:\n{}",
        reordered.len(),
        reordered
            .iter()
            .take(6)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    acked.extend(streamed);
    // The report on line i describes record i: read it back there.
    assert_all_present(c, TOPIC, &acked, &[2], CATCH_UP).await;
}

/// docs/api.md § Fetch by offset: an empty long-poll answers 200 `[]` once `timeout_ms` has
/// passed (not before, not much after); `timeout_ms=0` answers at once.
async fn long_poll_empty_times_out(c: &Cluster) {
    const TOPIC: &str = "long-poll-empty";
    const TIMEOUT_MS: u64 = 1500;
    c.node(1).create_topic(TOPIC, 1, 3).await;
    c.node(1)
        .publish(TOPIC, &[NewRecord::keyed("k", json!("first"))])
        .await;
    converged_high_watermarks(c, TOPIC).await;
    for id in [1, 2] {
        let node = c.node(id);
        let t = Instant::now();
        let page = node
            .try_fetch(TOPIC, 0, 1, 10, TIMEOUT_MS)
            .await
            .expect("long-poll at the end");
        let took = t.elapsed();
        eprintln!("FIGURE empty long-poll via node {id}: timeout_ms={TIMEOUT_MS} answered after {took:.2?}");
        assert!(
            page.records.is_empty(),
            "node {id}: records appeared: {:?}",
            page.records
        );
        assert_eq!(page.next_offset, 1, "node {id}: next_offset");
        assert_eq!(page.high_watermark, 1, "node {id}: high_watermark");
        assert!(
            took >= Duration::from_millis(TIMEOUT_MS),
            "node {id}: empty poll answered after {took:?}, before its timeout_ms={TIMEOUT_MS}"
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS + 1000),
            "node {id}: empty poll answered after {took:?}, far past timeout_ms={TIMEOUT_MS}"
        );

        let t = Instant::now();
        let page = node
            .try_fetch(TOPIC, 0, "latest", 10, 0)
            .await
            .expect("fetch at latest");
        let took = t.elapsed();
        assert!(
            page.records.is_empty(),
            "node {id}: offset=latest returned records"
        );
        assert!(
            took < Duration::from_millis(500),
            "node {id}: timeout_ms=0 waited {took:?}"
        );
    }
}

/// docs/api.md § Fetch by offset, docs/architecture.md § Fetch path: a waiting long-poll answers as
/// soon as a record is published (through another node), well before its timeout.
async fn long_poll_wakes_on_publish(c: &Cluster) {
    const TOPIC: &str = "long-poll-wake";
    const TIMEOUT_MS: u64 = 10_000;
    c.node(1).create_topic(TOPIC, 1, 3).await;
    c.node(1)
        .publish(TOPIC, &[NewRecord::keyed("k", json!("before"))])
        .await;
    converged_high_watermarks(c, TOPIC).await;

    let poller = c.node(1);
    let poll = tokio::spawn(async move {
        let page = poller.try_fetch(TOPIC, 0, 1, 10, TIMEOUT_MS).await;
        (page, Instant::now())
    });
    // Scenario, not synchronisation: give the poll time to reach the node and park,
    // then prove it is parked before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered before anything was published"
    );
    let published = Instant::now();
    c.node(3)
        .publish(TOPIC, &[NewRecord::keyed("k", json!({"wake": true}))])
        .await;
    let acked_after = published.elapsed();
    let (page, returned) = poll.await.expect("poll task");
    let page = page.expect("long-poll answer");
    let woke_after = returned.saturating_duration_since(published);
    eprintln!(
        "FIGURE long-poll wake: answered {woke_after:.2?} after the publish started \
         (publish acknowledged after {acked_after:.2?}; poll timeout {TIMEOUT_MS} ms)"
    );
    assert_eq!(
        page.records.len(),
        1,
        "the poll returns the new record: {:?}",
        page.records
    );
    assert_eq!(page.records[0].offset, 1);
    assert_eq!(page.records[0].value, json!({"wake": true}));
    assert!(
        woke_after < Duration::from_secs(2),
        "the poll answered {woke_after:?} after the publish (timeout {TIMEOUT_MS} ms)"
    );
}

// --- bad input gets a 4xx with the JSON error body and changes nothing
// --- (docs/architecture.md § Failure contract; docs/api.md § Errors for the status). The
// --- `error` strings are the project's stable catalog (api/src/error.rs): clients match on
// --- them, so a rename is a breaking change these checks catch.

/// Topic the bad-input checks aim at (3 partitions, one seed record each).
const BAD: &str = "bad-input";

/// Asserts that `topic`'s high watermarks are still `before` on every node.
async fn assert_unchanged(c: &Cluster, topic: &str, before: &[u64], what: &str) {
    let after = converged_high_watermarks(c, topic).await;
    assert_eq!(after, before, "{what} changed the topic's high watermarks");
}

async fn post_records(
    node: &NodeClient,
    topic: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let body: reqwest::Body = body.into();
    let len = body.as_bytes().map_or(0, <[u8]>::len);
    node.http()
        .post(node.url(&format!("/v1/topics/{topic}/records")))
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!("POST {topic}/records ({content_type}, {len} bytes): no HTTP answer: {e:?}")
        })
}

/// docs/api.md § Errors: 400 invalid, for a body that is not JSON.
async fn bad_input_malformed_json(c: &Cluster) {
    let before = converged_high_watermarks(c, BAD).await;
    let node = c.node(2);
    for body in [
        r#"{"records": [{"key": "k", "value": "#,
        "not json at all",
        "",
    ] {
        let resp = post_records(&node, BAD, "application/json", body).await;
        let err = expect_error(
            resp,
            400,
            "invalid_json",
            &format!("malformed JSON {body:?}"),
        )
        .await;
        assert!(!err.retriable, "malformed JSON is not retriable");
    }
    assert_unchanged(c, BAD, &before, "malformed JSON").await;
}

/// docs/api.md § Errors: 404 `topic_not_found` (error_code 40401) for publish, fetch and
/// describe; publishing does not create the topic.
async fn bad_input_unknown_topic(c: &Cluster) {
    const MISSING: &str = "no-such-topic";
    let node = c.node(3);
    let resp = node
        .http()
        .post(node.url(&format!("/v1/topics/{MISSING}/records")))
        .json(&json!({"records": [{"key": "k", "value": 1}]}))
        .send()
        .await
        .expect("publish to a missing topic");
    let err = expect_error(resp, 404, "topic_not_found", "publish to a missing topic").await;
    assert_eq!(err.error_code, 40401);
    assert!(!err.retriable, "topic_not_found is not retriable");

    let resp = node
        .http()
        .get(node.url(&format!(
            "/v1/topics/{MISSING}/partitions/0/records?offset=0"
        )))
        .send()
        .await
        .expect("fetch from a missing topic");
    let err = expect_error(resp, 404, "topic_not_found", "fetch from a missing topic").await;
    assert_eq!(err.error_code, 40401);

    for id in c.ids() {
        let n = c.node(id);
        let resp = n
            .http()
            .get(n.url(&format!("/v1/topics/{MISSING}")))
            .send()
            .await
            .expect("describe a missing topic");
        expect_error(
            resp,
            404,
            "topic_not_found",
            &format!("node {id}: describe a missing topic after publishing to it"),
        )
        .await;
    }
}

/// docs/api.md § Names and limits: a record over 1 MiB, a request over 10 MiB, headers over
/// 8 KiB: 413, nothing written (not even the valid records of the same request).
async fn bad_input_oversized(c: &Cluster) {
    let before = converged_high_watermarks(c, BAD).await;
    let node = c.node(1);
    let big = "x".repeat(MAX_RECORD_BYTES + 1);

    let body = json!({"records": [{"key": "k", "value": big}]});
    let resp = post_records(&node, BAD, "application/json", body.to_string()).await;
    expect_error(resp, 413, "record_too_large", "one JSON record over 1 MiB").await;

    let body = json!({"records": [{"key": "small", "value": "ok"}, {"key": "k", "value": big}]});
    let resp = post_records(&node, BAD, "application/json", body.to_string()).await;
    expect_error(
        resp,
        413,
        "record_too_large",
        "a valid record followed by one over 1 MiB",
    )
    .await;

    let resp = post_records(
        &node,
        BAD,
        "application/octet-stream",
        vec![b'r'; MAX_RECORD_BYTES + 1],
    )
    .await;
    expect_error(resp, 413, "record_too_large", "a raw record over 1 MiB").await;

    let body = json!({"records": [{"key": "k", "value": 1, "headers": {"h": "z".repeat(MAX_HEADER_BYTES + 1)}}]});
    let resp = post_records(&node, BAD, "application/json", body.to_string()).await;
    expect_error(resp, 413, "headers_too_large", "headers over 8 KiB").await;

    // A request over 10 MiB: the documented 413, and a connection that stays usable.
    let chunk = "y".repeat(MAX_RECORD_BYTES / 2);
    let n = MAX_REQUEST_BYTES / chunk.len() + 2;
    let records: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("k{i}"), "value": chunk}))
        .collect();
    let too_big = json!({ "records": records }).to_string();
    let resp = post_records(&node, BAD, "application/json", too_big.clone()).await;
    expect_error(
        resp,
        413,
        "request_too_large",
        "a request over 10 MiB of records under 1 MiB each",
    )
    .await;
    assert_keep_alive_after(c, 1, BAD, too_big.as_bytes()).await;

    assert_unchanged(c, BAD, &before, "oversized input").await;

    // Below the limit is fine: a 900 KiB raw record is stored and read back whole.
    let value: Vec<u8> = (0..900 * 1024).map(|i| (i % 251) as u8).collect();
    let resp = post_records(&node, BAD, "application/octet-stream", value.clone()).await;
    let body: psubd_tests::wire::PublishResponse = expect_json(resp, 200)
        .await
        .expect("a 900 KiB record is accepted");
    let d = body.offsets[0];
    let page = c.node(2).fetch(BAD, d.partition, d.offset, 1, 0).await;
    let got = page.records.first().expect("the 900 KiB record reads back");
    assert_eq!(got.offset, d.offset);
    assert!(
        got.value_bytes() == value,
        "the 900 KiB record reads back different"
    );
}

/// RFC 9112 § 9.6: a server that will close a persistent connection after a response
/// says `Connection: close` in it; otherwise a keep-alive client (every HTTP library)
/// sends its next request into a closed socket and fails. Checked on a raw socket, so
/// that no client-side pooling or retry can hide it: after the over-limit request's
/// 413, either the answer announced the close, or a second request on the same
/// connection is answered.
async fn assert_keep_alive_after(c: &Cluster, id: u64, topic: &str, body: &[u8]) {
    use tokio::io::AsyncWriteExt as _;
    let addr = c.http(id).trim_start_matches("http://").to_owned();
    let sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = sock.into_split();
    let mut request = format!(
        "POST /v1/topics/{topic}/records HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    // Written concurrently: the node may answer before it has read the whole body.
    let writer = tokio::spawn(async move {
        let result = wr.write_all(&request).await;
        (wr, result)
    });
    let mut buf = Vec::new();
    let head = read_response(&mut rd, &mut buf).await.unwrap_or_else(|e| {
        panic!("over-limit request on a raw connection: no complete answer: {e}")
    });
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "over-limit request answered {head:?}"
    );
    if head
        .to_ascii_lowercase()
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"))
    {
        writer.abort();
        return;
    }
    let (mut wr, written) = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "after answering 413 without `Connection: close` the node stopped reading \
                 the request body: the connection can neither continue nor is it closed"
            )
        })
        .expect("writer task");
    let second = match written {
        Ok(()) => {
            let get = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            match wr.write_all(get.as_bytes()).await {
                Ok(()) => read_response(&mut rd, &mut buf).await,
                Err(e) => Err(format!("writing the second request: {e}")),
            }
        }
        Err(e) => Err(format!("writing the over-limit body: {e}")),
    };
    match second {
        Ok(head) => assert!(
            head.starts_with("HTTP/1.1 200"),
            "GET /healthz after a 413: {head:?}"
        ),
        Err(e) => panic!(
            "the node answered 413 request_too_large without `Connection: close` and then \
             closed the connection; a keep-alive client's next request fails ({e})"
        ),
    }
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) from `rd`, keeping any
/// bytes beyond it in `buf`; returns the head.
async fn read_response(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Result<String, String> {
    use tokio::io::AsyncReadExt as _;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok(head);
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rd.read(&mut chunk)).await {
            Err(_) => return Err(String::from("timed out reading the answer")),
            Ok(Err(e)) => return Err(format!("reading the answer: {e}")),
            Ok(Ok(0)) => return Err(String::from("the node closed the connection")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// docs/api.md § Names and limits and § Topics: a name outside `^[A-Za-z0-9._-]{1,249}$`,
/// or `.`/`..`, is 400 invalid and creates nothing; a 249-character name is fine.
async fn bad_input_topic_name(c: &Cluster) {
    let node = c.node(2);
    let too_long = "a".repeat(250);
    let bad: [&str; 7] = ["bad name", "bad/name", "ünïcode", "", ".", "..", &too_long];
    for name in bad {
        let resp = node
            .http()
            .post(node.url("/v1/topics"))
            .json(&json!({"name": name, "partitions": 1, "replication_factor": 3}))
            .send()
            .await
            .expect("create topic");
        let err = expect_error(resp, 400, "invalid_name", &format!("topic name {name:?}")).await;
        assert!(!err.retriable);
    }
    let listed = node
        .http()
        .get(node.url("/v1/topics"))
        .send()
        .await
        .expect("list topics");
    let listed: Value = expect_json(listed, 200).await.expect("GET /v1/topics");
    let mut names = Vec::new();
    collect_names(&listed, &mut names);
    for name in bad {
        assert!(
            !names.iter().any(|n| n == name),
            "invalid topic name {name:?} was created"
        );
    }
    let longest = "b".repeat(249);
    node.create_topic(&longest, 1, 3).await;
}

/// Every `"name"` string anywhere in a JSON document (`GET /v1/topics`'s exact shape is
/// not fixed by docs/api.md).
fn collect_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get("name") {
                out.push(s.clone());
            }
            m.values().for_each(|x| collect_names(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_names(x, out)),
        _ => {}
    }
}

/// docs/api.md § Errors: a partition the topic does not have is not found (404
/// `partition_not_found`, as Kafka REST proxies answer), for publish and fetch, and
/// writes nothing.
async fn bad_input_partition_out_of_range(c: &Cluster) {
    let before = converged_high_watermarks(c, BAD).await;
    let node = c.node(3);
    let body = json!({"records": [{"key": "k", "value": 1, "partition": 3}]});
    let resp = post_records(&node, BAD, "application/json", body.to_string()).await;
    expect_error(
        resp,
        404,
        "partition_not_found",
        "publish to partition 3 of a 3-partition topic",
    )
    .await;

    let resp = node
        .http()
        .get(node.url(&format!("/v1/topics/{BAD}/partitions/3/records?offset=0")))
        .send()
        .await
        .expect("fetch partition 3");
    expect_error(
        resp,
        404,
        "partition_not_found",
        "fetch from partition 3 of a 3-partition topic",
    )
    .await;
    assert_unchanged(c, BAD, &before, "a publish to a missing partition").await;
}

/// docs/api.md § Fetch by offset: an offset above the end is 416 with `log_start_offset` and
/// `high_watermark`; the high watermark itself is a valid (empty) position.
async fn bad_input_offset_out_of_range(c: &Cluster) {
    let hws = converged_high_watermarks(c, BAD).await;
    let node = c.node(3);
    let hw = hws[0];
    let resp = node
        .http()
        .get(node.url(&format!(
            "/v1/topics/{BAD}/partitions/0/records?offset={}&timeout_ms=0",
            hw + 10
        )))
        .send()
        .await
        .expect("fetch past the end");
    let err = expect_error(
        resp,
        416,
        "offset_out_of_range",
        "fetch at high_watermark + 10",
    )
    .await;
    assert_eq!(
        err.extra.get("log_start_offset"),
        Some(&json!(0)),
        "416 body: {err:?}"
    );
    assert_eq!(
        err.extra.get("high_watermark"),
        Some(&json!(hw)),
        "416 body: {err:?}"
    );

    let page = node
        .try_fetch(BAD, 0, hw, 10, 0)
        .await
        .expect("fetch at the high watermark");
    assert!(page.records.is_empty());
    assert_eq!(page.next_offset, hw);
}

/// docs/api.md § Errors: 415 for a media type the publish endpoint does not take.
async fn bad_input_wrong_content_type(c: &Cluster) {
    let before = converged_high_watermarks(c, BAD).await;
    let node = c.node(1);
    let resp = post_records(
        &node,
        BAD,
        "application/xml",
        "<records><record>1</record></records>",
    )
    .await;
    expect_error(
        resp,
        415,
        "unsupported_media_type",
        "publish as application/xml",
    )
    .await;
    assert_unchanged(c, BAD, &before, "a publish as application/xml").await;
}

/// docs/operations.md § Security: what a web page of another origin makes a browser send
/// (a write, a WebSocket upgrade, a body without a JSON content type) changes nothing;
/// clients that send no `Origin` are unaffected, and reads stay open.
async fn pages_of_other_origins_cannot_write(c: &Cluster) {
    let before = converged_high_watermarks(c, BAD).await;
    let node = c.node(2);
    let evil = "http://attacker.example";
    let records = json!({"records": [{"value": "from a web page"}]}).to_string();
    let post = |content_type: Option<&str>, origin: Option<&str>| {
        let mut request = node
            .http()
            .post(node.url(&format!("/v1/topics/{BAD}/records")))
            .body(records.clone());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let resp = post(content_type, Some(evil)).await.unwrap();
        expect_error(resp, 403, "forbidden", "a write from another origin").await;
    }
    let resp = post(None, None).await.unwrap();
    expect_error(
        resp,
        415,
        "unsupported_media_type",
        "a JSON body without its type",
    )
    .await;
    let upgrade = node
        .http()
        .get(node.url("/v1/ws"))
        .header("origin", evil)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    expect_error(upgrade, 403, "forbidden", "a WebSocket from another origin").await;
    assert_unchanged(c, BAD, &before, "requests from another origin").await;
    let read = node
        .http()
        .get(node.url(&format!("/v1/topics/{BAD}/partitions")))
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "reads stay open");
}

/// docs/api.md § Names and limits: more than 1,000 records in one request is 413 and writes
/// none of them; exactly 1,000 is accepted.
async fn bad_input_too_many_records(c: &Cluster) {
    let before = converged_high_watermarks(c, BAD).await;
    let node = c.node(2);
    let records: Vec<NewRecord> = (0..=MAX_RECORDS_PER_REQUEST)
        .map(|i| NewRecord::keyed(format!("m{i}"), json!(i)))
        .collect();
    let resp = post_records(
        &node,
        BAD,
        "application/json",
        json!({ "records": records }).to_string(),
    )
    .await;
    expect_error(
        resp,
        413,
        "too_many_records",
        "1,001 records in one request",
    )
    .await;
    assert_unchanged(c, BAD, &before, "1,001 records in one request").await;

    let reports = node.publish(BAD, &records[..MAX_RECORDS_PER_REQUEST]).await;
    assert_eq!(reports.len(), MAX_RECORDS_PER_REQUEST);
}

// ---------------------------------------------------------------------------------------
// Destructive scenarios, one cluster each.
// ---------------------------------------------------------------------------------------

/// One publish attempt of the background producer.
#[derive(Debug)]
struct Attempt {
    started: Instant,
    finished: Instant,
    records: Vec<NewRecord>,
    outcome: PublishOutcome,
}

/// docs/architecture.md § Failure contract: kill -9 of a partition's leader while
/// publishing through the other nodes. Publishes succeed again within 5 s; the
/// unavailable window answers 503 with `Retry-After` (or 504 outcome unknown), never
/// anything else; after the node restarts, every acknowledged record is on it (and on
/// the others), at its acknowledged offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_resume_and_no_acked_record_is_lost_after_leader_kill() {
    const TOPIC: &str = "failover";
    const BATCH: usize = 5;
    let mut c = Cluster::start(3).await;
    c.node(1).create_topic(TOPIC, 1, 3).await;
    let warm = vec![NewRecord::keyed("p", json!({"seq": -1}))];
    let mut acked = Acked::from_publish(&warm, &c.node(1).publish(TOPIC, &warm).await);
    let leader = c.leader_of(TOPIC, 0).await;
    let via: Vec<NodeClient> = c
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .map(|id| c.node(id))
        .collect();
    eprintln!("partition 0 leader is node {leader}; publishing via the others");

    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (attempts, stop) = (attempts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let records: Vec<NewRecord> = (0..BATCH)
                    .map(|_| {
                        seq += 1;
                        NewRecord::keyed("p", json!({"seq": seq}))
                    })
                    .collect();
                let started = Instant::now();
                let outcome = via[i % via.len()]
                    .try_publish(TOPIC, &records, Duration::from_secs(5))
                    .await;
                i += 1;
                let ok = matches!(outcome, PublishOutcome::Acked(_));
                attempts.lock().expect("attempts lock").push(Attempt {
                    started,
                    finished: Instant::now(),
                    records,
                    outcome,
                });
                if !ok {
                    // Bounded pace while unavailable (the 503's Retry-After is coarser
                    // than the failover time being measured).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let acked_count = |attempts: &Arc<Mutex<Vec<Attempt>>>, after: Option<Instant>| -> usize {
        attempts
            .lock()
            .expect("attempts lock")
            .iter()
            .filter(|a| {
                after.is_none_or(|t| a.started >= t)
                    && matches!(a.outcome, PublishOutcome::Acked(_))
            })
            .map(|a| a.records.len())
            .sum()
    };
    eventually(
        Duration::from_secs(20),
        "100 records acknowledged before the kill",
        || {
            let n = acked_count(&attempts, None);
            async move {
                if n >= 100 {
                    Ok(())
                } else {
                    Err(format!("{n} acknowledged"))
                }
            }
        },
    )
    .await;

    c.kill(leader);
    let killed = Instant::now();
    let failover = eventually(
        Duration::from_secs(20),
        "a publish started after the kill to be acknowledged",
        || {
            let first = attempts
                .lock()
                .expect("attempts lock")
                .iter()
                .find(|a| a.started >= killed && matches!(a.outcome, PublishOutcome::Acked(_)))
                .map(|a| a.finished.duration_since(killed));
            async move { first.ok_or("none yet") }
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "200 records acknowledged after the failover",
        || {
            let n = acked_count(&attempts, Some(killed));
            async move {
                if n >= 200 {
                    Ok(())
                } else {
                    Err(format!("{n} acknowledged"))
                }
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    producer.await.expect("producer task");
    let attempts = std::mem::take(&mut *attempts.lock().expect("attempts lock"));

    let (mut unavailable, mut unknown, mut timeouts) = (0, 0, 0);
    let mut wrong = Vec::new();
    for a in &attempts {
        match &a.outcome {
            PublishOutcome::Acked(reports) => {
                acked.extend(Acked::from_publish(&a.records, reports))
            }
            PublishOutcome::Unavailable { retry_after, body } => {
                unavailable += 1;
                if retry_after.is_none() {
                    wrong.push(format!("503 without Retry-After: {body}"));
                }
            }
            PublishOutcome::OutcomeUnknown { .. } => unknown += 1,
            PublishOutcome::Transport {
                not_sent: false,
                error,
            } if error.contains("timed out") => timeouts += 1,
            other => wrong.push(format!("{other:?}")),
        }
    }
    let during = attempts
        .iter()
        .filter(|a| a.started >= killed && a.finished <= killed + failover)
        .count();
    eprintln!(
        "FIGURE failover: first publish acknowledged {failover:.2?} after kill -9 of leader node {leader} \
         ({} attempts, {} records acknowledged; {unavailable} answered 503, {unknown} answered 504, \
         {timeouts} client timeouts; {during} attempts in the unavailable window)",
        attempts.len(),
        acked.len()
    );
    assert!(
        failover <= FAILOVER_WITHIN,
        "publishes failed for {failover:?} after the leader was killed"
    );
    assert!(
        wrong.is_empty(),
        "answers outside the contract while failing over: {wrong:#?}"
    );
    // Through a surviving node, a publish waits for the new leader (up to the write
    // timeout) instead of answering 503: only what was in flight on the killed node may
    // fail, and then as an unknown outcome.
    assert_eq!(
        unavailable, 0,
        "publishes through surviving nodes answered 503 during the failover"
    );
    let new_leader = c.leader_of(TOPIC, 0).await;
    assert_ne!(
        new_leader, leader,
        "the killed node is still reported as leader"
    );
    // Survivors hold everything already.
    let survivors = c.running();
    assert_all_present(&c, TOPIC, &acked, &survivors, CATCH_UP).await;

    let t = c.restart(leader).await;
    eprintln!("FIGURE restart of the killed node: ready after {t:.2?}");
    assert_all_present(&c, TOPIC, &acked, &[leader], Duration::from_secs(30)).await;
}

/// docs/architecture.md § Failure contract, docs/operations.md (SIGTERM: exit 0; a restarted node
/// keeps its data dir and rejoins): stopping every node and starting them again keeps every
/// acknowledged record at its offset, and new offsets continue after the old ones
/// (never reused); the same after every node is killed with SIGKILL at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_keeps_records_and_never_reuses_offsets() {
    const TOPIC: &str = "durable";
    let mut c = Cluster::start(3).await;
    c.node(1).create_topic(TOPIC, 3, 3).await;
    let mut acked = publish_keyed(&c, TOPIC, 0..600).await;
    assert_all_present(&c, TOPIC, &acked, &c.ids(), CATCH_UP).await;

    let t = Instant::now();
    let statuses = c.stop_all().await;
    eprintln!(
        "FIGURE graceful stop of all nodes (SIGTERM): {:.2?}",
        t.elapsed()
    );
    for (id, status) in statuses {
        assert!(
            status.success(),
            "node {id} exited with {status} after SIGTERM, expected 0"
        );
    }
    let t = c.restart_all().await;
    eprintln!("FIGURE full-cluster restart after SIGTERM: ready after {t:.2?}");
    assert_all_present(&c, TOPIC, &acked, &c.ids(), Duration::from_secs(30)).await;
    assert_offsets_continue(&c, TOPIC, &mut acked).await;

    acked.extend(publish_keyed(&c, TOPIC, 600..900).await);
    for id in c.ids() {
        c.kill(id);
    }
    let t = c.restart_all().await;
    eprintln!("FIGURE full-cluster restart after kill -9 of every node: ready after {t:.2?}");
    assert_all_present(&c, TOPIC, &acked, &c.ids(), Duration::from_secs(30)).await;
    assert_offsets_continue(&c, TOPIC, &mut acked).await;
}

/// Publishes keyed records `range` in batches of 50, rotating over the nodes.
async fn publish_keyed(c: &Cluster, topic: &str, range: std::ops::Range<usize>) -> Vec<Acked> {
    let records: Vec<NewRecord> = range
        .map(|i| NewRecord::keyed(format!("d-{}", i % 17), json!({"i": i})))
        .collect();
    let mut acked = Vec::with_capacity(records.len());
    for (b, chunk) in records.chunks(50).enumerate() {
        let node = c.node(c.ids()[b % c.ids().len()]);
        acked.extend(Acked::from_publish(
            chunk,
            &node.publish(topic, chunk).await,
        ));
    }
    acked
}

/// docs/architecture.md § Fetch path: offsets are dense and never reused — one more record per
/// partition lands exactly at the partition's old end.
async fn assert_offsets_continue(c: &Cluster, topic: &str, acked: &mut Vec<Acked>) {
    let ends: BTreeMap<u32, u64> = by_partition(acked)
        .iter()
        .map(|(&p, offs)| (p, offs.keys().next_back().map_or(0, |o| o + 1)))
        .collect();
    for (p, end) in ends {
        let r = vec![NewRecord {
            partition: Some(p),
            ..NewRecord::keyed("after-restart", json!({"partition": p}))
        }];
        let d = c.node(1).publish(topic, &r).await;
        assert_eq!(d[0].partition, p);
        assert_eq!(
            d[0].offset, end,
            "partition {p}: the next offset after a restart"
        );
        acked.extend(Acked::from_publish(&r, &d));
    }
}

/// docs/operations.md § Security: a node restarted with another cluster secret is refused
/// by its peers and never rejoins; the other two go on serving as a healthy majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_secret_never_joins() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    std::fs::write(&ours, "the cluster's own secret, 32 bytes\n").unwrap();
    std::fs::write(&theirs, "a secret from somewhere else, too\n").unwrap();
    let mut cluster =
        Cluster::start_with_env(3, &[("PSUBD_CLUSTER_SECRET_FILE", ours.to_str().unwrap())]).await;
    let via = cluster.node(1);
    via.create_topic("guarded", 3, 3).await;

    cluster.kill(3);
    cluster.set_node_env(3, "PSUBD_CLUSTER_SECRET_FILE", theirs.to_str().unwrap());
    cluster.respawn(3);
    // Both sides say why, once: node 1 that node 3's proof failed, node 3 that node 1
    // hung up on its proof.
    for (id, peer) in [(1, 3), (3, 1)] {
        let log = cluster.log_path(id).to_path_buf();
        eventually(CATCH_UP, &format!("node {id} to log the refusal"), || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
                let refusal = format!("peer={peer}");
                let found = text.lines().any(|line| {
                    line.contains("WARN")
                        && line.contains("cluster secret")
                        && line.contains(&refusal)
                });
                found.then_some(()).ok_or_else(|| "not yet".to_string())
            }
        })
        .await;
    }

    // The majority serves: a publish to every partition is acknowledged.
    let records: Vec<NewRecord> = (0..30)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    match via.try_publish("guarded", &records, CATCH_UP).await {
        PublishOutcome::Acked(reports) => assert_eq!(reports.len(), 30),
        other => panic!("the majority must take writes: {other:?}"),
    }
    // Node 3 has no controller quorum, and holds none of those records.
    assert!(
        !cluster.node(3).is_ready().await,
        "node 3 must not be ready"
    );
    for partition in 0..3 {
        let on_3 = cluster
            .node(3)
            .try_fetch("guarded", partition, 0, 100, 0)
            .await;
        assert!(
            on_3.map_or(true, |fetched| fetched.records.is_empty()),
            "node 3 served records of partition {partition}"
        );
    }
}

/// Makes a CA in `dir` (`<name>-ca.pem`) and a certificate and key it signs
/// (`<name>.pem`, `<name>.key`) naming every node of a three-node cluster, with openssl as
/// docs/operations.md § Security shows.
fn peer_certificates(dir: &std::path::Path, name: &str) -> [std::path::PathBuf; 3] {
    let path = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (cert, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-days",
                "1",
                "-subj",
                "/CN=psubd-test-ca",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &["-subj", "/CN=psubd-nodes", "-keyout", &key, "-out", &csr],
        ]
        .concat(),
    );
    let extensions = format!("{name}.ext");
    std::fs::write(
        dir.join(&extensions),
        "subjectAltName=DNS:psubd-node-1,DNS:psubd-node-2,DNS:psubd-node-3\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-days",
        "1",
        "-out",
        &cert,
        "-extfile",
        &extensions,
    ]);
    [path(".pem"), path(".key"), path("-ca.pem")]
}

/// docs/operations.md § Security, peer TLS: nodes holding certificates of one CA replicate
/// over TLS; a node whose certificate comes from another CA is refused and the others
/// carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_tls_and_refuse_a_certificate_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let [cert, key, ca] = peer_certificates(dir.path(), "ours");
    let [their_cert, their_key, _] = peer_certificates(dir.path(), "theirs");
    let env = [
        ("PSUBD_PEER_TLS_CERT", cert.to_str().unwrap()),
        ("PSUBD_PEER_TLS_KEY", key.to_str().unwrap()),
        ("PSUBD_PEER_TLS_CA", ca.to_str().unwrap()),
    ];
    let mut cluster = Cluster::start_with_env(3, &env).await;
    let via = cluster.node(2);
    via.create_topic("over-tls", 3, 3).await;
    let records: Vec<NewRecord> = (0..30)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    match via.try_publish("over-tls", &records, CATCH_UP).await {
        PublishOutcome::Acked(reports) => assert_eq!(reports.len(), 30),
        other => panic!("a cluster over TLS takes writes: {other:?}"),
    }

    cluster.kill(3);
    cluster.set_node_env(3, "PSUBD_PEER_TLS_CERT", their_cert.to_str().unwrap());
    cluster.set_node_env(3, "PSUBD_PEER_TLS_KEY", their_key.to_str().unwrap());
    cluster.respawn(3);
    // Node 3 is never ready (no controller quorum reaches it), the majority still serves.
    let records: Vec<NewRecord> = (30..60)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!(i)))
        .collect();
    match cluster
        .node(1)
        .try_publish("over-tls", &records, CATCH_UP)
        .await
    {
        PublishOutcome::Acked(reports) => assert_eq!(reports.len(), 30),
        other => panic!("the majority must take writes: {other:?}"),
    }
    assert!(
        !cluster.node(3).is_ready().await,
        "node 3 with a certificate of another CA must not be ready"
    );
}

/// docs/api.md § Conventions: bodies may travel compressed. A gzip request body is inflated
/// (and bound by the request limits as inflated), and an answer is compressed when the
/// client accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_travel_compressed_both_ways() {
    use std::io::{Read, Write};

    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    node.create_topic("packed", 1, 1).await;
    let records: Vec<Value> = (0..100)
        .map(|i| json!({"value": format!("record {i}")}))
        .collect();
    let body = serde_json::to_vec(&json!({ "records": records })).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&body).unwrap();
    let packed = gzip.finish().unwrap();
    assert!(packed.len() < body.len() / 2);
    let resp = node
        .http()
        .post(node.url("/v1/topics/packed/records"))
        .header(CONTENT_TYPE, "application/json")
        .header("content-encoding", "gzip")
        .body(packed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let resp = node
        .http()
        .get(node.url("/v1/topics/packed/partitions/0/records?max_records=100"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&resp.bytes().await.unwrap()[..])
        .read_to_string(&mut text)
        .unwrap();
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["records"].as_array().unwrap().len(), 100);
    assert_eq!(page["records"][99]["value"], "record 99");

    // An encoding the node does not speak is refused, and nothing is written.
    let resp = node
        .http()
        .post(node.url("/v1/topics/packed/records"))
        .header(CONTENT_TYPE, "application/json")
        .header("content-encoding", "br")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(resp, 415, "unsupported_encoding", "a brotli body").await;
    let fetched = node.fetch("packed", 0, 0, 1000, 0).await;
    assert_eq!(fetched.high_watermark, 100);
}
