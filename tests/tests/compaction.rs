//! Compacted topics and key views end to end: real nodes, HTTP only.
//!
//! `compacted_topic_key_views_survive_kill_and_compaction`: 100,000 updates over
//! 1,000 keys (batched publishes) into a three-partition compacted topic, then 100 keys
//! deleted through `DELETE /keys/{key}`:
//! - every key view, on every node, answers the last acknowledged value at its offset
//!   (`min_offset` = the acknowledged offset: read-your-writes on any replica), deleted keys
//!   answer 404 `key_not_found`; again after a kill -9 and restart of a node;
//! - after compaction, reading each partition from offset 0 returns about one record per
//!   key instead of 100: offsets strictly increasing, each the acknowledged latest of its
//!   key (docs/architecture.md § Fetch path: offsets are never changed or reused);
//! - after compaction a consumer building a table from the topic reads in full pages (the
//!   read crosses compacted gaps): ONE fetch per partition from offset 0 returns every
//!   survivor at its original offset with `next_offset` past the trailing gap; a group
//!   member gets every survivor in one fetch per partition at most, never twice, commits
//!   past them and a new member resumes with nothing to re-read; the partition SSE stream
//!   yields the survivors with `id: <partition>-<offset>` of the real offsets and then a
//!   record published after them;
//! - `PUT` stores a value, scans page through a prefix in key order, a delete-policy topic
//!   answers 422 `topic_not_compacted`.
//!
//! `wiped_node_rejoins_a_compacted_topic_through_a_snapshot`: with snapshots every
//! 20 entries and no log kept after them, 320 publishes over 20 keys plus deletes make the
//! leader snapshot and purge its Raft log; once compacted, a follower is killed and wiped,
//! a few more updates land, and the rejoined node (which must install a partition snapshot)
//! answers every key view with the last acknowledged value (404 for deleted keys) and serves
//! from offset 0 exactly the survivors at their original offsets, as the leader does.
//!
//! Nodes run with a 200 ms maintenance tick so compaction starts within about a second.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use psubd_tests::{
    eventually, expect_error, expect_json, Cluster, NewRecord, NodeClient, SseReader,
};
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

async fn create_compacted(node: &NodeClient, partitions: u32) {
    let body = json!({
        "name": TOPIC, "partitions": partitions, "replication_factor": 3,
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
    check_views_from(node, acked, &HashMap::new()).await;
}

/// Every key view on `node` matches what was acknowledged, asked with `min_offset` = the
/// greater of the key's acknowledged offset and `floor[partition]` (read-your-writes of
/// everything acknowledged in the key's partition).
async fn check_views_from(
    node: &NodeClient,
    acked: &HashMap<String, Acked>,
    floor: &HashMap<u32, u64>,
) {
    let checks = futures::stream::iter(acked.iter())
        .map(|(key, want)| async move {
            let min_offset = floor
                .get(&want.partition)
                .map_or(want.offset, |f| want.offset.max(*f));
            let got = eventually(SETTLE, &format!("view of {key} on {}", node.base()), || {
                view(node, key, min_offset)
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
async fn compacted_topic_key_views_survive_kill_and_compaction() {
    let mut cluster = Cluster::start_with_env(3, &[FAST_TICK]).await;
    let node = cluster.node(1);
    create_compacted(&node, 3).await;

    // 100 rounds of one update per key, one request per round (1,000 records). At least
    // once: a copy left by a retried unknown outcome is superseded by the acknowledged one.
    let mut acked: HashMap<String, Acked> = HashMap::new();
    for round in 0..ROUNDS {
        let records: Vec<NewRecord> = (0..KEYS)
            .map(|i| NewRecord::keyed(key(i), json!({ "key": i, "round": round })))
            .collect();
        let reports = cluster
            .node(1 + (round as u64 % 3))
            .publish_at_least_once(TOPIC, &records)
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

    // Consumers of the compacted topic read it in full pages.
    let table: BTreeMap<u32, Vec<(u64, String)>> = (0..3u32)
        .map(|partition| {
            let mut rows: Vec<(u64, String)> = acked
                .iter()
                .filter(|(_, a)| a.partition == partition && a.value.is_some())
                .map(|(k, a)| (a.offset, k.clone()))
                .collect();
            rows.sort_unstable();
            (partition, rows)
        })
        .collect();
    one_fetch_reads_every_survivor(&node, &table).await;
    member_reads_every_survivor_and_commits_past_them(&node, &table).await;
    sse_ids_are_the_survivors_offsets(&node, &table).await;

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

// ---------------------------------------------------------------------------------------
// Reading a compacted topic in full pages
// ---------------------------------------------------------------------------------------

/// ONE fetch from offset 0 per partition returns every survivor at its original offset;
/// `next_offset` is the high watermark (past the trailing gap of purged tombstones), and a
/// fetch from there is empty. `node` is a replica of every partition, so it serves the
/// read from the log the survivor check above just read.
async fn one_fetch_reads_every_survivor(
    node: &NodeClient,
    table: &BTreeMap<u32, Vec<(u64, String)>>,
) {
    for (partition, want) in table {
        let page = node.fetch(TOPIC, *partition, 0, 10_000, 0).await;
        let got: Vec<(u64, String)> = page
            .records
            .iter()
            .map(|r| (r.offset, r.key.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            &got, want,
            "partition {partition}: one fetch returns every survivor at its offset"
        );
        assert_eq!(
            page.next_offset, page.high_watermark,
            "partition {partition}: next_offset past the compacted tail"
        );
        let rest = node
            .fetch(TOPIC, *partition, page.next_offset, 10_000, 0)
            .await;
        assert!(
            rest.records.is_empty(),
            "partition {partition}: nothing after"
        );
    }
}

/// A member of a fresh group (earliest) gets every survivor, each once, in at most one
/// fetch per partition (not one per gap); commits one past the last of each partition;
/// keeps reading nothing; and a new member of the group resumes with nothing to re-read.
async fn member_reads_every_survivor_and_commits_past_them(
    node: &NodeClient,
    table: &BTreeMap<u32, Vec<(u64, String)>>,
) {
    const GROUP: &str = "table-builder";
    let member = join(node, GROUP).await;
    let mut position = None;
    let want: BTreeSet<(u32, u64, String)> = table
        .iter()
        .flat_map(|(p, rows)| rows.iter().map(|(o, k)| (*p, *o, k.clone())))
        .collect();
    let mut got: BTreeSet<(u32, u64, String)> = BTreeSet::new();
    let mut fetches_with_records = 0;
    let deadline = std::time::Instant::now() + SETTLE;
    while got.len() < want.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "member got {} of {} survivors",
            got.len(),
            want.len()
        );
        let records = member_fetch(node, GROUP, &member, &mut position, 200).await;
        if !records.is_empty() {
            fetches_with_records += 1;
        }
        for r in records {
            let row = (
                field(&r, "partition") as u32,
                field(&r, "offset"),
                r["key"].as_str().unwrap_or_default().to_string(),
            );
            assert!(want.contains(&row), "{row:?} is not a survivor");
            assert!(got.insert(row.clone()), "{row:?} delivered twice");
        }
    }
    assert!(
        fetches_with_records <= table.len(),
        "{fetches_with_records} fetches for {} partitions: pages stop at compacted gaps",
        table.len()
    );
    // Its position moved past the survivors (and the gaps): nothing more, nothing again.
    let again = member_fetch(node, GROUP, &member, &mut position, 500).await;
    assert!(again.is_empty(), "nothing re-read: {again:?}");

    let commits: Vec<Value> = table
        .iter()
        .map(|(p, rows)| json!({"topic": TOPIC, "partition": p, "offset": rows.last().unwrap().0 + 1}))
        .collect();
    let resp = node
        .http()
        .post(node.url(&format!("/v1/groups/{GROUP}/offsets")))
        .json(&json!({"member_id": member.0, "generation": member.1, "offsets": commits}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        204,
        "commit: {}",
        resp.text().await.unwrap_or_default()
    );
    let view: Value = expect_json(
        node.http()
            .get(node.url(&format!("/v1/groups/{GROUP}/offsets")))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await
    .unwrap();
    for row in view["offsets"].as_array().unwrap() {
        let partition = field(row, "partition") as u32;
        assert_eq!(
            field(row, "offset"),
            table[&partition].last().unwrap().0 + 1,
            "committed past the last survivor of {partition}"
        );
    }
    let resp = node
        .http()
        .delete(node.url(&format!("/v1/groups/{GROUP}/members/{}", member.0)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let next = join(node, GROUP).await;
    let resumed = member_fetch(node, GROUP, &next, &mut None, 500).await;
    assert!(
        resumed.is_empty(),
        "resumes past the survivors: {resumed:?}"
    );
}

/// Joins `group` for the topic (earliest): (member_id, generation), owning all partitions.
async fn join(node: &NodeClient, group: &str) -> (String, u64) {
    let joined = node.join_earliest(group, &[TOPIC], 30_000).await;
    assert_eq!(
        joined["assignments"].as_array().map(Vec::len),
        Some(3),
        "the only member owns every partition"
    );
    (
        joined["member_id"].as_str().unwrap().to_string(),
        field(&joined, "generation"),
    )
}

/// One member fetch: its records. Presents the previous answer's `position` token and
/// keeps the new one, as a client does (positions advance only as far as confirmed).
async fn member_fetch(
    node: &NodeClient,
    group: &str,
    member: &(String, u64),
    position: &mut Option<String>,
    timeout_ms: u64,
) -> Vec<Value> {
    let mut url = node.url(&format!(
        "/v1/groups/{group}/members/{}/records?max_records=10000&timeout_ms={timeout_ms}",
        member.0
    ));
    if let Some(token) = position.as_deref() {
        url.push_str(&format!("&position={token}"));
    }
    let resp = node.http().get(url).send().await.unwrap();
    let body: Value = expect_json(resp, 200).await.unwrap();
    assert_eq!(field(&body, "generation"), member.1, "no rebalance");
    *position = body["position"].as_str().map(str::to_string);
    body["records"].as_array().unwrap().clone()
}

fn field(value: &Value, name: &str) -> u64 {
    value[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {value}"))
}

/// The partition SSE stream from offset 0 yields every survivor with `id:
/// <partition>-<offset>` of its real offset, then (its cursor past the compacted tail) a
/// record published afterwards.
async fn sse_ids_are_the_survivors_offsets(
    node: &NodeClient,
    table: &BTreeMap<u32, Vec<(u64, String)>>,
) {
    let mut streams = Vec::new();
    for (partition, want) in table {
        let resp = node
            .http()
            .get(node.url(&format!(
                "/v1/topics/{TOPIC}/partitions/{partition}/stream?offset=0"
            )))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut events = SseReader::new(resp);
        for (offset, key) in want {
            let (id, record) = next_record(&mut events).await;
            assert_eq!(id, format!("{partition}-{offset}"), "{key}");
            assert_eq!(
                (field(&record, "offset"), record["key"].as_str()),
                (*offset, Some(key.as_str()))
            );
        }
        streams.push(events);
    }
    let tail = node
        .publish(
            TOPIC,
            &[NewRecord::keyed("sse-tail", json!("after the gap"))],
        )
        .await;
    let (partition, offset) = (tail[0].partition, tail[0].offset);
    let (id, record) = next_record(&mut streams[partition as usize]).await;
    assert_eq!(
        id,
        format!("{partition}-{offset}"),
        "the record published afterwards"
    );
    assert_eq!(record["value"], "after the gap");
}

/// The next `record` event of an SSE stream: its id and record (other events skipped).
async fn next_record(events: &mut SseReader) -> (String, Value) {
    loop {
        let event = events
            .next_event(SETTLE)
            .await
            .expect("a record event in time, the stream still open");
        match event.event.as_deref() {
            Some("record") => {
                let record = serde_json::from_str(&event.data).expect("record data is JSON");
                return (event.id.expect("record events carry an id"), record);
            }
            Some("error") => panic!("stream error: {}", event.data),
            _ => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------
// A wiped node rejoins a compacted topic through a snapshot
// ---------------------------------------------------------------------------------------

/// Keys of the wiped-node test: few, so each is updated many times.
const SNAP_KEYS: usize = 20;
/// Publish requests before the wipe: one Raft entry each, well over openraft's purge batch
/// of 256 entries, so the leader snapshots (every 20 entries) and purges its log.
const SNAP_REQUESTS: usize = 320;
/// Records per publish request.
const SNAP_BATCH: usize = 5;
/// Keys deleted (tombstones) before the wipe.
const SNAP_DELETED: std::ops::Range<usize> = 15..20;

/// `DELETE /keys/{key}` through `node`: the tombstone's (partition, offset).
async fn delete_key(node: &NodeClient, key: &str) -> (u32, u64) {
    let resp = node
        .http()
        .delete(node.url(&format!("/v1/topics/{TOPIC}/keys/{key}")))
        .send()
        .await
        .unwrap();
    let body: Value = expect_json(resp, 200).await.unwrap();
    (field(&body, "partition") as u32, field(&body, "offset"))
}

/// Publishes `records` through `node`, recording each acknowledgement in `acked`.
async fn publish_acked(
    node: &NodeClient,
    records: Vec<(String, Value)>,
    acked: &mut HashMap<String, Acked>,
) {
    let batch: Vec<NewRecord> = records
        .iter()
        .map(|(k, v)| NewRecord::keyed(k.clone(), v.clone()))
        .collect();
    // Key views are what this test checks: a duplicate from a retried unknown outcome is
    // superseded by its own later copy, so at-least-once is enough.
    let reports = node.publish_at_least_once(TOPIC, &batch).await;
    assert_eq!(reports.len(), records.len());
    for ((k, v), report) in records.into_iter().zip(reports) {
        acked.insert(
            k,
            Acked {
                partition: report.partition,
                offset: report.offset,
                value: Some(v),
            },
        );
    }
}

/// The survivors compaction must leave in partition 0: (offset, key) of every live key's
/// acknowledged latest, in offset order.
fn survivors_of(acked: &HashMap<String, Acked>) -> Vec<(u64, String)> {
    let mut rows: Vec<(u64, String)> = acked
        .iter()
        .filter(|(_, a)| a.value.is_some())
        .map(|(k, a)| (a.offset, k.clone()))
        .collect();
    rows.sort_unstable();
    rows
}

/// Partition 0 read from offset 0 through `node`, once it is exactly `want`.
async fn wait_compacted(node: &NodeClient, want: &[(u64, String)], what: &str) {
    eventually(SETTLE, what, || async {
        let got = read_partition(node, 0).await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("{} records: {got:?}", got.len()))
        }
    })
    .await;
}

// A node that lost its disk rejoins a compacted topic whose Raft log was purged: it
// installs a snapshot and then serves the same key views and the same compacted log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_node_rejoins_a_compacted_topic_through_a_snapshot() {
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
    create_compacted(&cluster.node(1), 1).await;
    let leader = cluster.leader_of(TOPIC, 0).await;
    let victim = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let writer = cluster.node(leader);

    // 320 requests of 5 updates over 20 keys (1,600 records, 80 per key), then 5 deletes.
    let mut acked: HashMap<String, Acked> = HashMap::new();
    for request in 0..SNAP_REQUESTS {
        let records = (0..SNAP_BATCH)
            .map(|j| {
                let i = (request * SNAP_BATCH + j) % SNAP_KEYS;
                (key(i), json!({ "key": i, "request": request }))
            })
            .collect();
        publish_acked(&writer, records, &mut acked).await;
    }
    for i in SNAP_DELETED {
        let (partition, offset) = delete_key(&writer, &key(i)).await;
        let entry = acked.get_mut(&key(i)).unwrap();
        assert_eq!(partition, entry.partition);
        assert!(offset > entry.offset);
        entry.offset = offset;
        entry.value = None;
    }
    // Compaction ran: one record per live key from offset 0 (tombstones gone after 1 s).
    let before = survivors_of(&acked);
    assert_eq!(before.len(), SNAP_KEYS - SNAP_DELETED.len());
    wait_compacted(&writer, &before, "the leader compacted the topic").await;

    // The follower loses its disk; a few more updates while it is away: two keys updated,
    // one more deleted, one deleted key written again.
    cluster.kill(victim);
    cluster.wipe(victim);
    publish_acked(
        &writer,
        vec![
            (key(0), json!("zero, after the wipe")),
            (key(1), json!("one, after the wipe")),
            (key(15), json!("fifteen is back")),
        ],
        &mut acked,
    )
    .await;
    let (_, offset) = delete_key(&writer, &key(2)).await;
    let entry = acked.get_mut(&key(2)).unwrap();
    entry.offset = offset;
    entry.value = None;
    let last_acked = acked.values().map(|a| a.offset).max().unwrap();
    let floor: HashMap<u32, u64> = HashMap::from([(0, last_acked)]);

    cluster.restart(victim).await;
    let victim_node = cluster.node(victim);
    // The leader's log is purged behind its snapshots, so the wiped node can only catch up
    // through a partition snapshot. Wait for that first: reads through it before then are
    // forwarded to the leader and would prove nothing about its own replica.
    cluster
        .await_partition_snapshot_since_wipe(victim, SETTLE)
        .await;

    // Key views on the wiped node: read-your-writes of everything acknowledged.
    check_views_from(&victim_node, &acked, &floor).await;

    // Its log from offset 0: exactly the survivors at their original offsets, as the
    // leader's.
    let after = survivors_of(&acked);
    assert_eq!(after.len(), SNAP_KEYS - SNAP_DELETED.len());
    wait_compacted(&writer, &after, "the leader compacted the new updates").await;
    wait_compacted(&victim_node, &after, "the wiped node holds the survivors").await;
    let leader_page = writer.fetch(TOPIC, 0, 0, 10_000, 0).await;
    let victim_page = victim_node.fetch(TOPIC, 0, 0, 10_000, 0).await;
    let rows = |page: &psubd_tests::FetchResponse| -> Vec<(u64, String, Value)> {
        page.records
            .iter()
            .map(|r| (r.offset, r.key.clone().unwrap_or_default(), r.value.clone()))
            .collect()
    };
    assert_eq!(
        rows(&victim_page),
        rows(&leader_page),
        "the wiped node serves what the leader serves"
    );
    assert_eq!(victim_page.high_watermark, leader_page.high_watermark);
    for (offset, key, value) in rows(&victim_page) {
        assert_eq!(acked[&key].offset, offset, "{key}");
        assert_eq!(acked[&key].value.as_ref(), Some(&value), "{key}");
    }
}

/// A `min_offset` that was never written is the caller's mistake, told at once: the
/// partition's leader, having applied its whole log (which holds every acknowledged write),
/// answers 416 `offset_out_of_range` with the high watermark instead of waiting out
/// `timeout_ms` for a record that cannot come, and every node asks the leader first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_view_past_every_write_is_out_of_range_on_every_node() {
    let cluster = Cluster::start(3).await;
    create_compacted(&cluster.node(1), 1).await;
    let resp = cluster
        .node(1)
        .http()
        .put(
            cluster
                .node(1)
                .url(&format!("/v1/topics/{TOPIC}/keys/alice")),
        )
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .unwrap();
    let put: Value = expect_json(resp, 200).await.unwrap();
    let written = field(&put, "offset");

    let never = written + 1_000;
    for id in cluster.ids() {
        let node = cluster.node(id);
        let asked = std::time::Instant::now();
        let resp = node
            .http()
            .get(node.url(&format!(
                "/v1/topics/{TOPIC}/keys/alice?min_offset={never}&timeout_ms=30000"
            )))
            .send()
            .await
            .unwrap();
        let refused = expect_error(resp, 416, "offset_out_of_range", &format!("node {id}")).await;
        assert_eq!(refused.extra["high_watermark"], json!(written + 1));
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "node {id} waited {:?} for an offset that was never written",
            asked.elapsed()
        );
    }
}
