//! psubd-client through faults, on a real 3-node cluster: a `Producer` loses no record
//! it acknowledged when the partition's leader is killed mid-stream; a `GroupConsumer`
//! reads every record at least once, skipping none, when the group's coordinator node is
//! killed mid-read; and two members sharing a topic through rebalances (one joins, one
//! leaves) together read every record. A `Producer` sends each record straight to its
//! partition's leader, choosing keyed records' partitions as the server does. Partition
//! and member streams (NDJSON and SSE) read through the library.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use psubd_client::wire::StreamItem;
use psubd_client::{
    AutoOffsetReset, Client, Error, GroupConfig, GroupConsumer, NewRecord, OffsetSpec, Producer,
    ProducerConfig, StreamFormat, StreamOptions,
};
use psubd_tests::metrics::{metric_value, try_scrape};
use psubd_tests::{eventually, Cluster};

/// Records sent before the kill, all acknowledged before it.
const BEFORE_KILL: usize = 300;

/// Records sent around and after the kill.
const AROUND_KILL: usize = 2_000;

/// The kill comes once this many of the second phase are resolved: mid-stream.
const KILL_AFTER: usize = 200;

/// Records the group reads.
const GROUP_RECORDS: usize = 600;

/// The group reader kills the coordinator once it has seen this many.
const GROUP_KILL_AFTER: usize = 150;

/// Bound on the whole group read, kill and re-join included.
const GROUP_READ_WITHIN: Duration = Duration::from_secs(120);

fn client_for(cluster: &Cluster) -> Client {
    Client::new(cluster.ids().iter().map(|id| cluster.http(*id))).expect("seed URLs are valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_loses_no_acknowledged_record_when_the_partition_leader_is_killed() {
    let mut cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("produced", 1, 3).await;
    let producer = Producer::with_config(
        client_for(&cluster),
        ProducerConfig {
            linger: Duration::from_millis(2),
            max_batch_records: 50,
            ..ProducerConfig::default()
        },
    );

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for i in 0..BEFORE_KILL {
        let value = format!("v{i}");
        deliveries.push((
            value.clone(),
            producer
                .send("produced", NewRecord::new(value))
                .await
                .expect("queued"),
        ));
    }
    for (value, delivery) in deliveries {
        let report = delivery
            .await
            .expect("a healthy cluster acknowledges every record");
        assert!(
            acked.insert(report.offset, value).is_none(),
            "offset {} reported twice",
            report.offset
        );
    }

    // Second phase: a sender and a collector; the kill lands while records are in flight.
    let resolved = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for i in BEFORE_KILL..BEFORE_KILL + AROUND_KILL {
                let value = format!("v{i}");
                let delivery = producer
                    .send("produced", NewRecord::new(value.clone()))
                    .await
                    .expect("queued");
                if tx.send((value, delivery)).await.is_err() {
                    return;
                }
            }
        })
    };
    let collector = {
        let resolved = resolved.clone();
        tokio::spawn(async move {
            let mut outcomes: Vec<(String, Result<psubd_client::DeliveryReport, Error>)> =
                Vec::new();
            while let Some((value, delivery)) = rx.recv().await {
                outcomes.push((value, delivery.await));
                resolved.fetch_add(1, Ordering::Relaxed);
            }
            outcomes
        })
    };
    let leader = cluster.leader_of("produced", 0).await;
    eventually(
        Duration::from_secs(60),
        "records of the second phase resolving",
        || {
            let resolved = resolved.clone();
            async move {
                let n = resolved.load(Ordering::Relaxed);
                if n >= KILL_AFTER {
                    Ok(())
                } else {
                    Err(format!("{n} resolved"))
                }
            }
        },
    )
    .await;
    cluster.kill(leader);
    let killed_at = resolved.load(Ordering::Relaxed);
    sender.await.expect("the sender ends");
    producer.flush().await.expect("the producer flushes");
    let outcomes = collector.await.expect("the collector ends");

    let mut failed = BTreeMap::<String, usize>::new();
    let mut acked_after_kill = 0;
    for (i, (value, outcome)) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(report) => {
                assert!(
                    acked.insert(report.offset, value).is_none(),
                    "offset {} reported twice",
                    report.offset
                );
                if i >= killed_at + 50 {
                    acked_after_kill += 1;
                }
            }
            Err(e) => {
                *failed
                    .entry(e.code().unwrap_or("transport").to_string())
                    .or_default() += 1
            }
        }
    }
    eprintln!(
        "acknowledged {} records, {acked_after_kill} well after the kill; failed: {failed:?}",
        acked.len()
    );
    assert!(
        acked_after_kill > 0,
        "the producer keeps delivering after the leader's death (failed: {failed:?})"
    );
    // A failure may only be one whose outcome is unknown (the killed leader's batch).
    assert!(
        failed
            .keys()
            .all(|code| code == "outcome_unknown" || code == "transport"),
        "failures must be in-flight writes of unknown outcome: {failed:?}"
    );

    // Every acknowledged record is stored at its reported offset on the new leader.
    let new_leader = cluster.leader_of("produced", 0).await;
    let stored = cluster.node(new_leader).fetch_all("produced", 0).await;
    let stored: BTreeMap<u64, String> = stored
        .into_iter()
        .map(|r| (r.offset, r.value.as_str().unwrap_or_default().to_owned()))
        .collect();
    for (offset, value) in &acked {
        assert_eq!(
            stored.get(offset),
            Some(value),
            "acknowledged record at offset {offset} lost or changed"
        );
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_sends_each_record_to_its_partitions_leader() {
    let cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("routed", 3, 3).await;
    let mut leaders = BTreeMap::new();
    for partition in 0..3 {
        leaders.insert(partition, cluster.leader_of("routed", partition).await);
    }
    // The one seed leads the fewest partitions: through it alone (no routing) it would
    // receive every record, while most belong to partitions other nodes lead.
    let seed = *cluster
        .ids()
        .iter()
        .min_by_key(|id| leaders.values().filter(|l| l == id).count())
        .expect("nodes");
    let producer = Producer::new(Client::new([cluster.http(seed)]).expect("seed URL is valid"));
    let mut deliveries = Vec::new();
    for i in 0..300 {
        let record = match i % 3 {
            0 => NewRecord::new(i),
            _ => NewRecord::new(i).key(format!("key-{i}")),
        };
        deliveries.push(producer.send("routed", record).await.expect("queued"));
    }
    let mut expected = BTreeMap::<u64, u64>::new();
    for delivery in deliveries {
        let report = delivery
            .await
            .expect("a healthy cluster stores every record");
        *expected.entry(leaders[&report.partition]).or_default() += 1;
    }
    producer.close().await;
    assert!(
        expected.get(&seed).copied().unwrap_or(0) < 300,
        "the records spread over partitions the seed does not lead: {expected:?}"
    );

    // Each node's edge took exactly the records of the partitions it leads: keyed
    // records too, so the producer hashed their keys as the server does.
    for id in cluster.ids() {
        let text = try_scrape(&cluster.node(id)).await.expect("metrics");
        let published = metric_value(
            &text,
            "psubd_records_published_total",
            &[r#"topic="routed""#],
        )
        .unwrap_or(0.0);
        assert_eq!(
            published as u64,
            expected.get(&id).copied().unwrap_or(0),
            "records published through node {id} (seed {seed}, leaders {leaders:?})"
        );
    }
    for partition in 0..3 {
        assert_eq!(
            cluster.leader_of("routed", partition).await,
            leaders[&partition],
            "leadership stayed put during the test, so the counts above are meaningful"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_reads_every_record_when_its_coordinator_node_is_killed() {
    let mut cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("grouped", 3, 3).await;
    let records: Vec<_> = (0..GROUP_RECORDS)
        .map(|i| psubd_tests::NewRecord::keyed(format!("k{i}"), serde_json::json!(i)))
        .collect();
    for chunk in records.chunks(200) {
        cluster.node(1).publish("grouped", chunk).await;
    }
    let client = client_for(&cluster);
    let config = GroupConfig {
        auto_offset_reset: Some(AutoOffsetReset::Earliest),
        session_timeout_ms: Some(10_000),
        max_records: Some(25),
        poll_timeout: Some(Duration::from_secs(1)),
        ..GroupConfig::default()
    };
    let mut member = GroupConsumer::join(client.clone(), "readers", &["grouped"], config)
        .await
        .expect("join");

    let first_member = member.member_id().map(str::to_owned);
    let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut deliveries = 0usize;
    let mut values: BTreeSet<u64> = BTreeSet::new();
    let mut killed = None;
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + GROUP_READ_WITHIN;
    // The user's at-least-once loop: poll, process, commit; errors are logged and the
    // loop goes on (a failed commit only means records come again).
    while values.len() < GROUP_RECORDS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {GROUP_RECORDS} records in {GROUP_READ_WITHIN:?}; errors: {errors:?}",
            values.len()
        );
        match member.poll().await {
            Ok(batch) => {
                deliveries += batch.len();
                for record in &batch {
                    seen.insert((record.partition, record.offset));
                    values.insert(record.value.as_u64().expect("the values are numbers"));
                }
            }
            Err(e) => errors.push(format!("poll: {e}")),
        }
        if let Err(e) = member.commit().await {
            errors.push(format!("commit: {e}"));
        }
        if killed.is_none() && values.len() >= GROUP_KILL_AFTER {
            let coordinator = client
                .admin()
                .describe_group("readers")
                .await
                .expect("describe")
                .coordinator;
            cluster.kill(coordinator);
            killed = Some(coordinator);
        }
    }
    assert!(killed.is_some(), "the coordinator was killed mid-read");
    assert_ne!(
        member.member_id().map(str::to_owned),
        first_member,
        "the new coordinator fenced the member, which joined again by itself"
    );
    eprintln!(
        "read every record ({deliveries} deliveries for {GROUP_RECORDS} records); member errors on the way: {errors:?}"
    );
    // No skip: every offset of every partition below its high watermark was handed out.
    let partitions = cluster
        .node(cluster.running()[0])
        .partitions("grouped")
        .await;
    for p in partitions {
        for offset in 0..p.high_watermark {
            assert!(
                seen.contains(&(p.partition, offset)),
                "partition {} offset {offset} was never read",
                p.partition
            );
        }
    }
    member.leave().await.expect("leave");
}

/// Records shared by two members.
const SHARED_RECORDS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_group_consumers_read_every_record_through_rebalances() {
    let cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("shared", 4, 3).await;
    let records: Vec<_> = (0..SHARED_RECORDS)
        .map(|i| psubd_tests::NewRecord::keyed(format!("k{i}"), serde_json::json!(i)))
        .collect();
    for chunk in records.chunks(200) {
        cluster.node(2).publish("shared", chunk).await;
    }
    let config = GroupConfig {
        auto_offset_reset: Some(AutoOffsetReset::Earliest),
        max_records: Some(20),
        poll_timeout: Some(Duration::from_millis(200)),
        ..GroupConfig::default()
    };
    let client = client_for(&cluster);
    let mut first = GroupConsumer::join(client.clone(), "sharers", &["shared"], config.clone())
        .await
        .expect("first joins");
    let mut second: Option<GroupConsumer> = None;
    let mut values: BTreeSet<u64> = BTreeSet::new();
    let mut rebalanced_commits = 0;
    let deadline = tokio::time::Instant::now() + GROUP_READ_WITHIN;
    let mut rounds = 0;
    while values.len() < SHARED_RECORDS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {SHARED_RECORDS}",
            values.len()
        );
        rounds += 1;
        // The second member joins after a few rounds and leaves a few rounds later: two
        // rebalances while the first member holds records it has not committed.
        if rounds == 3 {
            second = Some(
                GroupConsumer::join(client.clone(), "sharers", &["shared"], config.clone())
                    .await
                    .expect("second joins"),
            );
        }
        if rounds == 8 {
            if let Some(member) = second.take() {
                member.leave().await.expect("second leaves");
            }
        }
        let members = std::iter::once(&mut first).chain(second.as_mut());
        for member in members {
            for record in member.poll().await.expect("poll") {
                values.insert(record.value.as_u64().expect("numbers"));
            }
            match member.commit().await {
                Ok(()) => {}
                Err(e) if e.is_rebalance() => rebalanced_commits += 1,
                Err(e) => panic!("commit: {e}"),
            }
        }
    }
    eprintln!(
        "read every record in {rounds} rounds; {rebalanced_commits} commits refused by a rebalance"
    );
    let offsets = client
        .admin()
        .group_offsets("sharers")
        .await
        .expect("offsets");
    assert!(
        offsets.offsets.iter().all(|o| o.lag == Some(0)),
        "every record is committed in the end: {offsets:?}"
    );
    first.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_views_and_binary_publishes_through_the_client() {
    let cluster = Cluster::start(1).await;
    let client = client_for(&cluster);
    let admin = client.admin();
    admin
        .create_topic(&psubd_client::TopicSpec {
            cleanup_policy: Some(psubd_client::CleanupPolicy::Compact),
            partitions: Some(2),
            ..psubd_client::TopicSpec::new("table")
        })
        .await
        .expect("create");
    let keys = client.keys("table");
    let put = keys
        .put("alice", &serde_json::json!({"plan": "pro"}))
        .await
        .expect("put");
    let read = keys
        .get("alice", Some(put.offset), Duration::from_secs(5))
        .await
        .expect("get");
    assert_eq!(
        read.map(|r| r.value),
        Some(serde_json::json!({"plan": "pro"}))
    );
    keys.put_text("bob", "hello").await.expect("put text");
    let bytes = keys
        .put_bytes("carol", vec![0, 255])
        .await
        .expect("put bytes");
    let carol = keys
        .get("carol", Some(bytes.offset), Duration::from_secs(5))
        .await
        .expect("get carol")
        .expect("carol is there");
    assert_eq!(carol.encoding, Some(psubd_client::wire::Encoding::Base64));
    assert_eq!(carol.value, "AP8=");
    let page = keys.scan(None, None, 2).await.expect("scan");
    assert_eq!(
        page.keys
            .iter()
            .map(|r| r.key.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec!["alice", "bob"]
    );
    let rest = keys
        .scan(None, page.next.as_deref(), 2)
        .await
        .expect("scan on");
    assert_eq!(rest.keys.len(), 1);
    let gone = keys.delete("alice").await.expect("delete");
    assert_eq!(
        keys.get("alice", Some(gone.offset), Duration::from_secs(5))
            .await
            .expect("get deleted"),
        None
    );
    let on_delete_topic = client.keys("plain");
    admin
        .create_topic(&psubd_client::TopicSpec::new("plain"))
        .await
        .expect("create plain");
    let refused = on_delete_topic.scan(None, None, 10).await;
    assert_eq!(
        refused.err().as_ref().and_then(Error::code),
        Some("topic_not_compacted")
    );

    // A binary publish through the whole-body call.
    let request = psubd_client::wire::PublishRequest {
        encoding: Some(psubd_client::wire::Encoding::Base64),
        records: vec![NewRecord::new("AAEC").key("a2V5")],
    };
    let answer = client
        .publish_request("plain", &request)
        .await
        .expect("publish");
    let report = answer.offsets[0].clone().into_result().expect("stored");
    let fetched = client
        .fetch(
            "plain",
            report.partition,
            psubd_client::OffsetSpec::At(report.offset),
            1,
            Duration::ZERO,
        )
        .await
        .expect("fetch");
    assert_eq!(fetched.records[0].value, "AAEC");
    assert_eq!(fetched.records[0].key.as_deref(), Some("key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_consumer_reads_on_when_its_first_seed_is_killed() {
    let mut cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("followed", 1, 3).await;
    let records: Vec<_> = (0..300)
        .map(|i| psubd_tests::NewRecord::keyed("k", serde_json::json!(i)))
        .collect();
    cluster.node(2).publish("followed", &records).await;
    // Seeds in order 1, 2, 3: every request goes to node 1 until it dies.
    let client = client_for(&cluster);
    let mut consumer = psubd_client::Consumer::with_config(
        client,
        "followed",
        0,
        psubd_client::OffsetSpec::Earliest,
        psubd_client::ConsumerConfig {
            max_records: 50,
            poll_timeout: Duration::from_millis(500),
        },
    );
    let mut offsets = Vec::new();
    let mut killed = false;
    while offsets.len() < records.len() {
        for record in consumer.poll().await.expect("poll") {
            assert_eq!(record.value, serde_json::json!(offsets.len()));
            offsets.push(record.offset);
        }
        if !killed && offsets.len() >= 100 {
            cluster.kill(1);
            killed = true;
        }
    }
    assert_eq!(
        offsets,
        (0..300).collect::<Vec<u64>>(),
        "dense, in order, once each"
    );
}

/// The next item of `stream`, within a bound (a stream stays open by design).
async fn next_item(stream: &mut psubd_client::ItemStream) -> StreamItem {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an item within 20 s")
        .expect("the stream is open")
        .expect("the item is readable")
}

/// The value of a record item.
fn record_value(item: StreamItem) -> (u64, serde_json::Value) {
    match item {
        StreamItem::Record(record) => (record.offset, record.value),
        other => panic!("a record expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_member_streams_through_the_client() {
    let cluster = Cluster::start(1).await;
    let client = client_for(&cluster);
    cluster.node(1).create_topic("streamed", 1, 1).await;
    let values: Vec<NewRecord> = (0..5).map(NewRecord::new).collect();
    client.publish("streamed", values).await.expect("publish");

    // NDJSON from the start, then a record published while the stream is open.
    let mut ndjson = client
        .partition_stream(
            "streamed",
            0,
            OffsetSpec::Earliest,
            StreamOptions::default(),
        )
        .await
        .expect("open an NDJSON stream");
    for i in 0..5u64 {
        assert_eq!(
            record_value(next_item(&mut ndjson).await),
            (i, serde_json::json!(i))
        );
    }
    client
        .publish("streamed", vec![NewRecord::new(5)])
        .await
        .expect("publish while streaming");
    assert_eq!(
        record_value(next_item(&mut ndjson).await),
        (5, serde_json::json!(5))
    );
    drop(ndjson);

    // SSE from an offset.
    let sse = StreamOptions {
        format: StreamFormat::Sse,
        ..StreamOptions::default()
    };
    let mut events = client
        .partition_stream("streamed", 0, OffsetSpec::At(3), sse)
        .await
        .expect("open an SSE stream");
    for i in 3..6u64 {
        assert_eq!(
            record_value(next_item(&mut events).await),
            (i, serde_json::json!(i))
        );
    }
    drop(events);

    // A member's stream: its assignment first, then the records from the group's start.
    let joined = client
        .join_group(
            "streamers",
            &psubd_client::wire::JoinRequest {
                topics: vec!["streamed".into()],
                auto_offset_reset: Some(AutoOffsetReset::Earliest),
                ..Default::default()
            },
        )
        .await
        .expect("join");
    let mut member = client
        .member_stream("streamers", &joined.member_id, sse)
        .await
        .expect("open a member stream");
    match next_item(&mut member).await {
        StreamItem::Assignment(a) => {
            assert_eq!(a.assignments.len(), 1, "{a:?}");
            assert_eq!(a.assignments[0].topic, "streamed");
        }
        other => panic!("the assignment comes first, got {other:?}"),
    }
    for i in 0..6u64 {
        assert_eq!(
            record_value(next_item(&mut member).await),
            (i, serde_json::json!(i))
        );
    }
    drop(member);

    // Refusals: the opening request's error, and a line over the reader's bound.
    let unknown = client
        .partition_stream("nope", 0, OffsetSpec::Earliest, StreamOptions::default())
        .await;
    assert_eq!(
        unknown.err().as_ref().and_then(Error::code),
        Some("topic_not_found")
    );
    let mut bounded = client
        .partition_stream(
            "streamed",
            0,
            OffsetSpec::Earliest,
            StreamOptions {
                max_line_bytes: 16,
                ..StreamOptions::default()
            },
        )
        .await
        .expect("open");
    let over = tokio::time::timeout(Duration::from_secs(20), bounded.next())
        .await
        .expect("an item within 20 s");
    assert!(
        matches!(over, Some(Err(Error::Unexpected { .. }))),
        "a record line longer than the bound ends the stream: {over:?}"
    );
    assert!(bounded.next().await.is_none(), "nothing after the error");
}
