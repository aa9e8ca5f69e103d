//! Consumer groups on a three-node cluster of real `psubd node`
//! processes, driven over HTTP as docs/api.md § Consumer groups describes.
//!
//! - `group_splits_partitions_expires_members_resumes_and_fences`: two members joined through different nodes
//!   split a 4-partition topic; one commits less than it received and goes silent; after
//!   its session timeout the other owns its partitions and resumes exactly at the
//!   committed offsets; the expired member's commit and fetch are answered 409; lag is
//!   `high_watermark - offset`; a member that leaves hands its partitions over at once.
//! - `members_come_and_go_with_at_least_once_delivery`: three members, one partition each,
//!   under continuous publishing while one leaves and re-joins and one dies and re-joins:
//!   every offset below the final commit was delivered to some member (re-deliveries are
//!   counted and reported).
//! - `committed_offsets_survive_kill_of_any_node`: committed offsets survive kill -9 of each
//!   node in turn (the coordinator's first) and read back equal from every node.
//! - `a_lost_fetch_answer_is_delivered_again`: a fetch whose answer the client
//!   never read is served again; positions advance by the `position` token or a commit.
//! - `a_commit_beyond_the_high_watermark_is_refused`: 422, nothing changes.
//! - `fetches_share_the_budget_across_partitions`: two backlogs, a small
//!   `max_records`: both partitions are served.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psubd_tests::{eventually, expect_error, Cluster, NewRecord, NodeClient};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 4;
const PER_PARTITION: u64 = 10;

/// Long enough for the cluster to elect leaders and create the offsets topic.
const SETTLE: Duration = Duration::from_secs(30);

/// The silent member's session timeout: short, so the test is quick (1 s is the floor).
const SHORT_SESSION_MS: u64 = 2_000;

/// Generous session timeouts for members that must not expire during the test.
const LONG_SESSION_MS: u64 = 60_000;

// ---------------------------------------------------------------------------------------
// Local helpers: the group API as docs/api.md § Consumer groups gives it.
// ---------------------------------------------------------------------------------------

type Tp = (String, u32);

#[derive(Debug, Clone, Deserialize)]
struct Assignment {
    topic: String,
    partition: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct Joined {
    member_id: String,
    generation: u64,
    assignments: Vec<Assignment>,
}

#[derive(Debug, Clone, Deserialize)]
struct GroupRecord {
    topic: String,
    partition: u32,
    offset: u64,
    value: Value,
}

#[derive(Debug, Clone, Deserialize)]
struct MemberFetch {
    records: Vec<GroupRecord>,
    generation: u64,
    #[serde(default)]
    assignments: Option<Vec<Assignment>>,
    /// Presented by the next fetch to confirm this answer's positions (optional here so
    /// that the tests fail at their assertions against servers without it).
    #[serde(default)]
    position: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct OffsetRow {
    topic: String,
    partition: u32,
    offset: u64,
    high_watermark: Option<u64>,
    lag: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
struct GroupOffsets {
    group: String,
    offsets: Vec<OffsetRow>,
}

fn tps(list: &[Assignment]) -> BTreeSet<Tp> {
    list.iter()
        .map(|a| (a.topic.clone(), a.partition))
        .collect()
}

/// A member as the test drives it: where it joined and what it was last told.
#[derive(Debug, Clone)]
struct Member {
    node: NodeClient,
    group: String,
    id: String,
    generation: u64,
    owned: BTreeSet<Tp>,
    /// The last answer's position token (a client presents it with its next fetch).
    position: Option<String>,
}

impl Member {
    /// Joins through `node`, retrying while the cluster is still settling (503).
    async fn join(node: &NodeClient, group: &str, session_timeout_ms: u64) -> Member {
        let joined: Joined = serde_json::from_value(
            node.join_earliest(group, &[TOPIC], session_timeout_ms)
                .await,
        )
        .expect("a join answer");
        assert_eq!(joined.member_id.len(), 32, "member_id is 128-bit hex");
        Member {
            node: node.clone(),
            group: group.to_string(),
            id: joined.member_id,
            generation: joined.generation,
            owned: tps(&joined.assignments),
            position: None,
        }
    }

    fn records_url(&self, timeout_ms: u64) -> String {
        let mut url = self.node.url(&format!(
            "/v1/groups/{}/members/{}/records?timeout_ms={timeout_ms}&max_records=1000",
            self.group, self.id
        ));
        if let Some(position) = &self.position {
            url.push_str(&format!("&position={position}"));
        }
        url
    }

    /// One member fetch (the heartbeat); learns generation and assignments.
    async fn try_fetch(&mut self, timeout_ms: u64) -> Result<Vec<GroupRecord>, String> {
        let resp = self
            .node
            .http()
            .get(self.records_url(timeout_ms))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("{status}: {text}"));
        }
        let answer: MemberFetch =
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        self.generation = answer.generation;
        self.position = answer.position;
        if let Some(assignments) = answer.assignments {
            self.owned = tps(&assignments);
        }
        for r in &answer.records {
            assert_eq!(
                (r.value["p"].as_u64(), r.value["i"].as_u64()),
                (Some(u64::from(r.partition)), Some(r.offset)),
                "a record's value is the one published at its partition and offset"
            );
            assert!(
                self.owned.contains(&(r.topic.clone(), r.partition)),
                "member got a record of {}/{} it does not own ({:?})",
                r.topic,
                r.partition,
                self.owned
            );
        }
        Ok(answer.records)
    }

    async fn fetch(&mut self, timeout_ms: u64) -> Vec<GroupRecord> {
        self.try_fetch(timeout_ms)
            .await
            .unwrap_or_else(|e| panic!("member fetch via {}: {e}", self.node.base()))
    }

    async fn commit_request(&self, offsets: &BTreeMap<Tp, u64>) -> reqwest::Response {
        let offsets: Vec<Value> = offsets
            .iter()
            .map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o}))
            .collect();
        self.node
            .http()
            .post(self.node.url(&format!("/v1/groups/{}/offsets", self.group)))
            .json(&json!({
                "member_id": self.id,
                "generation": self.generation,
                "offsets": offsets,
            }))
            .send()
            .await
            .expect("commit request")
    }

    /// Commits, re-fetching once when the generation moved on meanwhile (a concurrent
    /// join), as a client would.
    async fn commit(&mut self, offsets: &BTreeMap<Tp, u64>) {
        for _ in 0..3 {
            let resp = self.commit_request(offsets).await;
            let status = resp.status();
            if status == StatusCode::NO_CONTENT {
                return;
            }
            let body = resp.text().await.unwrap_or_default();
            assert!(
                status == StatusCode::CONFLICT && body.contains("stale_generation"),
                "commit: {status} {body}"
            );
            self.fetch(0).await;
        }
        panic!("commit kept meeting a stale generation");
    }
}

/// Fetches with every member (each fetch is its heartbeat, and long-polls briefly, which
/// paces the loop) until `done` holds; at most 15 s.
///
/// # Panics
///
/// When `done` does not hold in time.
async fn fetch_until(
    members: &mut [&mut Member],
    what: &str,
    done: impl Fn(&[&mut Member]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::from("none");
    loop {
        for member in members.iter_mut() {
            if let Err(error) = member.try_fetch(100).await {
                last = error;
            }
        }
        if done(members) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; members {:?}; last error: {last}",
            members
                .iter()
                .map(|m| (&m.id, m.generation, &m.owned))
                .collect::<Vec<_>>()
        );
    }
}

async fn group_offsets(node: &NodeClient, group: &str) -> Result<Vec<OffsetRow>, String> {
    let resp = node
        .http()
        .get(node.url(&format!("/v1/groups/{group}/offsets")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("{status}: {text}"));
    }
    let parsed: GroupOffsets = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    assert_eq!(parsed.group, group);
    Ok(parsed.offsets)
}

/// The committed offsets as `(topic, partition) → offset`.
fn committed_map(rows: &[OffsetRow]) -> BTreeMap<Tp, u64> {
    rows.iter()
        .map(|r| ((r.topic.clone(), r.partition), r.offset))
        .collect()
}

/// Creates the topic and waits until every partition has a leader (publishing to a topic
/// an instant old is the cluster tests' subject, not this file's).
async fn create_topic(cluster: &Cluster) {
    cluster.node(1).create_topic(TOPIC, PARTITIONS, 3).await;
    for p in 0..PARTITIONS {
        cluster.leader_of(TOPIC, p).await;
    }
}

async fn publish_per_partition(node: &NodeClient, from: u64, count: u64) {
    let records: Vec<NewRecord> = (0..PARTITIONS)
        .flat_map(|p| {
            (from..from + count).map(move |i| NewRecord {
                partition: Some(p),
                ..NewRecord::keyed(format!("k{p}-{i}"), json!({"p": p, "i": i}))
            })
        })
        .collect();
    let reports = node.publish(TOPIC, &records).await;
    for (record, report) in records.iter().zip(&reports) {
        assert_eq!(Some(report.partition), record.partition);
    }
}

// ---------------------------------------------------------------------------------------
// Split, expire, resume, fence, lag, leave
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_splits_partitions_expires_members_resumes_and_fences() {
    let cluster = Cluster::start(3).await;
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    create_topic(&cluster).await;
    let group = "billing";

    // Bad input is refused with the documented errors and changes nothing.
    bad_input(&n3, group).await;

    // docs/api.md § Consumer groups: two members joined through different nodes split the
    // topic, each partition owned by exactly one of them.
    let mut a = Member::join(&n1, group, SHORT_SESSION_MS).await;
    let mut b = Member::join(&n2, group, LONG_SESSION_MS).await;
    fetch_until(
        &mut [&mut a, &mut b],
        "both members in one generation",
        |m| m[0].generation == m[1].generation,
    )
    .await;
    let all: BTreeSet<Tp> = (0..PARTITIONS).map(|p| (TOPIC.to_string(), p)).collect();
    assert_eq!(a.owned.len(), 2, "a owns half: {:?}", a.owned);
    assert_eq!(b.owned.len(), 2, "b owns half: {:?}", b.owned);
    assert!(a.owned.is_disjoint(&b.owned), "no partition owned twice");
    assert_eq!(
        a.owned.union(&b.owned).cloned().collect::<BTreeSet<_>>(),
        all,
        "every partition owned"
    );
    let described: Value = n3
        .http()
        .get(n3.url(&format!("/v1/groups/{group}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(described["state"], "stable");
    assert_eq!(described["members"].as_array().map(Vec::len), Some(2));

    // Each gets exactly its partitions' records, from the start (auto_offset_reset).
    publish_per_partition(&n3, 0, PER_PARTITION).await;
    let mut got_a: BTreeMap<Tp, Vec<u64>> = BTreeMap::new();
    let mut got_b: BTreeMap<Tp, Vec<u64>> = BTreeMap::new();
    let want_total = PER_PARTITION * 2;
    let start = Instant::now();
    // a's session runs from its last fetch (a commit is not a heartbeat); the coordinator
    // saw that fetch no earlier than it was sent.
    let mut a_last_fetch_sent = Instant::now();
    while got_a.values().map(Vec::len).sum::<usize>() < want_total as usize
        || got_b.values().map(Vec::len).sum::<usize>() < want_total as usize
    {
        assert!(
            start.elapsed() < SETTLE,
            "members did not receive their records: a {got_a:?} b {got_b:?}"
        );
        a_last_fetch_sent = Instant::now();
        for r in a.fetch(200).await {
            got_a
                .entry((r.topic, r.partition))
                .or_default()
                .push(r.offset);
        }
        for r in b.fetch(200).await {
            got_b
                .entry((r.topic, r.partition))
                .or_default()
                .push(r.offset);
        }
    }
    let dense: Vec<u64> = (0..PER_PARTITION).collect();
    for (tp, offsets) in got_a.iter().chain(&got_b) {
        assert_eq!(offsets, &dense, "{tp:?}: every offset once, in order");
    }

    // a commits less than it received (next to read: 4); b commits all it received.
    let a_commit: BTreeMap<Tp, u64> = a.owned.iter().map(|tp| (tp.clone(), 4)).collect();
    let b_commit: BTreeMap<Tp, u64> = b
        .owned
        .iter()
        .map(|tp| (tp.clone(), PER_PARTITION))
        .collect();
    a.commit(&a_commit).await;
    b.commit(&b_commit).await;

    // Lag is high_watermark - offset, read through any node.
    let rows = eventually(
        Duration::from_secs(10),
        "committed offsets with lag",
        || {
            let n2 = &n2;
            async move {
                let rows = group_offsets(n2, group).await?;
                if rows.len() == PARTITIONS as usize
                    && rows.iter().all(|r| r.high_watermark == Some(PER_PARTITION))
                {
                    Ok(rows)
                } else {
                    Err(format!("{rows:?}"))
                }
            }
        },
    )
    .await;
    for row in &rows {
        let tp = (row.topic.clone(), row.partition);
        let expected = a_commit.get(&tp).or(b_commit.get(&tp)).copied();
        assert_eq!(Some(row.offset), expected, "{tp:?} committed offset");
        assert_eq!(
            row.lag,
            row.high_watermark.map(|h| h - row.offset),
            "lag = high_watermark - offset"
        );
    }
    println!(
        "lag: {:?}",
        rows.iter()
            .map(|r| (r.partition, r.offset, r.high_watermark, r.lag))
            .collect::<Vec<_>>()
    );

    // a goes silent. After its session timeout, b owns everything and resumes a's
    // partitions exactly at a's committed offsets (nothing uncommitted skipped).
    let silent_since = Instant::now();
    let mut resumed: BTreeMap<Tp, Vec<u64>> = BTreeMap::new();
    let mut took_over = None;
    while resumed.values().map(Vec::len).sum::<usize>() < 2 * (PER_PARTITION - 4) as usize {
        assert!(
            silent_since.elapsed() < Duration::from_millis(SHORT_SESSION_MS) + SETTLE,
            "b did not resume a's partitions: owned {:?}, resumed {resumed:?}",
            b.owned
        );
        let records = b.fetch(200).await;
        if took_over.is_none() && b.owned == all {
            took_over = Some(a_last_fetch_sent.elapsed());
        }
        for r in records {
            let tp = (r.topic.clone(), r.partition);
            assert!(
                a_commit.contains_key(&tp),
                "b's own partitions were committed in full: nothing to re-deliver, got {r:?}"
            );
            resumed.entry(tp).or_default().push(r.offset);
        }
    }
    let took_over = took_over.expect("b owns every partition");
    assert!(
        took_over >= Duration::from_millis(SHORT_SESSION_MS),
        "a was removed before its session timeout ({took_over:?})"
    );
    for (tp, offsets) in &resumed {
        assert_eq!(
            offsets,
            &(4..PER_PARTITION).collect::<Vec<_>>(),
            "{tp:?}: b resumes exactly at a's committed offset 4"
        );
    }
    println!(
        "rebalance after a member dies: b owned a's partitions {:?} after a's last contact \
         (session timeout {SHORT_SESSION_MS} ms)",
        took_over
    );

    // The expired member is fenced: its commit and its fetch are 409.
    let resp = a.commit_request(&a_commit).await;
    expect_error(resp, 409, "member_fenced", "expired member's commit").await;
    let resp = a.node.http().get(a.records_url(0)).send().await.unwrap();
    expect_error(resp, 409, "member_fenced", "expired member's fetch").await;

    // A member that leaves hands its partitions over at once.
    let mut c = Member::join(&n3, group, LONG_SESSION_MS).await;
    fetch_until(&mut [&mut b, &mut c], "b and c split the topic", |m| {
        m[0].owned.len() == 2 && m[1].owned.len() == 2 && m[0].generation == m[1].generation
    })
    .await;
    let left_at = Instant::now();
    let resp = c
        .node
        .http()
        .delete(c.node.url(&format!("/v1/groups/{group}/members/{}", c.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "leave");
    fetch_until(&mut [&mut b], "b owns everything after c left", |m| {
        m[0].owned == all
    })
    .await;
    println!(
        "rebalance after a member leaves: b owned every partition {:?} after the leave",
        left_at.elapsed()
    );
    let resp = c.node.http().get(c.records_url(0)).send().await.unwrap();
    expect_error(resp, 409, "member_fenced", "a member that left").await;

    // A reset needs an empty group.
    let resp = n1
        .http()
        .put(n1.url(&format!("/v1/groups/{group}/offsets")))
        .json(&json!({"offsets": [{"topic": TOPIC, "offset": "earliest"}]}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 409, "group_not_empty", "reset with members").await;
    let resp = n1
        .http()
        .delete(n1.url(&format!("/v1/groups/{group}")))
        .send()
        .await
        .unwrap();
    expect_error(resp, 409, "group_not_empty", "delete with members").await;
}

/// docs/api.md § Errors: bad input gets a 4xx with the JSON error body.
async fn bad_input(node: &NodeClient, group: &str) {
    let join = |g: &str, body: Value| {
        node.http()
            .post(node.url(&format!("/v1/groups/{g}/members")))
            .json(&body)
            .send()
    };
    let ok = json!({"topics": [TOPIC], "session_timeout_ms": 10_000});
    let resp = join("bad name!", ok.clone()).await.unwrap();
    expect_error(resp, 400, "invalid_name", "group name").await;
    let resp = join("__internal", ok.clone()).await.unwrap();
    expect_error(resp, 400, "invalid_name", "internal group name").await;
    for timeout in [999, 300_001] {
        let resp = join(
            group,
            json!({"topics": [TOPIC], "session_timeout_ms": timeout}),
        )
        .await
        .unwrap();
        expect_error(resp, 422, "invalid_config", "session timeout out of range").await;
    }
    let resp = join(group, json!({"topics": ["nope"]})).await.unwrap();
    expect_error(resp, 404, "topic_not_found", "unknown topic").await;
    let resp = join(group, json!({"topics": []})).await.unwrap();
    expect_error(resp, 400, "invalid_request", "no topics").await;
    let resp = join(
        group,
        json!({"topics": [TOPIC], "auto_offset_reset": "middle"}),
    )
    .await
    .unwrap();
    expect_error(resp, 422, "invalid_config", "auto_offset_reset").await;
    let resp = join(group, json!({"topics": [TOPIC], "surprise": 1}))
        .await
        .unwrap();
    expect_error(resp, 400, "invalid_json", "unknown field").await;
    let resp = node
        .http()
        .get(node.url(&format!("/v1/groups/{group}/members/not-an-id/records")))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid_request", "malformed member id").await;
    let unknown = "0123456789abcdef0123456789abcdef";
    let resp = eventually(
        SETTLE,
        "a group request past the settling cluster",
        || async {
            let resp = node
                .http()
                .get(node.url(&format!("/v1/groups/{group}/members/{unknown}/records")))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                Err("503".to_string())
            } else {
                Ok(resp)
            }
        },
    )
    .await;
    expect_error(resp, 409, "member_fenced", "unknown member").await;
    let resp = node
        .http()
        .get(node.url(&format!("/v1/groups/{group}")))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "group_not_found", "a group nobody joined").await;
}

// ---------------------------------------------------------------------------------------
// Committed offsets survive kill -9 of any single node
// ---------------------------------------------------------------------------------------

async fn coordinator_of(node: &NodeClient, group: &str) -> u64 {
    eventually(SETTLE, "the group's coordinator", || async {
        let resp = node
            .http()
            .get(node.url(&format!("/v1/groups/{group}")))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        body["coordinator"]
            .as_u64()
            .ok_or_else(|| format!("no coordinator in {body}"))
    })
    .await
}

/// Every node in `ids` reads back exactly `expected`, with lag = high_watermark - offset.
async fn assert_read_back(
    cluster: &Cluster,
    ids: &[u64],
    group: &str,
    expected: &BTreeMap<Tp, u64>,
    when: &str,
) {
    for &id in ids {
        let node = cluster.node(id);
        let node = &node;
        eventually(
            SETTLE,
            &format!("node {id} reads the committed offsets ({when})"),
            || async move {
                let rows = group_offsets(node, group).await?;
                for row in &rows {
                    if row.lag != row.high_watermark.map(|h| h.saturating_sub(row.offset)) {
                        return Err(format!("lag is not high_watermark - offset: {row:?}"));
                    }
                }
                let got = committed_map(&rows);
                if &got == expected {
                    Ok(())
                } else {
                    Err(format!("got {got:?}"))
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_kill_of_any_node() {
    let mut cluster = Cluster::start(3).await;
    create_topic(&cluster).await;
    publish_per_partition(&cluster.node(2), 0, 50).await;
    let group = "audit";

    let mut member = Member::join(&cluster.node(1), group, LONG_SESSION_MS).await;
    member.fetch(0).await;
    let mut expected: BTreeMap<Tp, u64> = (0..PARTITIONS)
        .map(|p| ((TOPIC.to_string(), p), u64::from(3 + 2 * p)))
        .collect();
    member.commit(&expected).await;
    assert_read_back(&cluster, &[1, 2, 3], group, &expected, "before any kill").await;

    // Kill the coordinator's node first, then the others, one at a time.
    let coordinator = coordinator_of(&cluster.node(1), group).await;
    let mut order = vec![coordinator];
    order.extend([1u64, 2, 3].into_iter().filter(|n| *n != coordinator));
    for (round, victim) in order.into_iter().enumerate() {
        cluster.kill(victim);
        let killed_at = Instant::now();
        let survivors: Vec<u64> = [1u64, 2, 3].into_iter().filter(|n| *n != victim).collect();
        assert_read_back(
            &cluster,
            &survivors,
            group,
            &expected,
            &format!("node {victim} killed"),
        )
        .await;
        let read_back_in = killed_at.elapsed();

        // Commit again through a survivor: a member of the old coordinator is fenced
        // when the coordinator died, and re-joins as a client would.
        let via = cluster.node(survivors[0]);
        if member.node.base() == cluster.node(victim).base() || member.try_fetch(0).await.is_err() {
            // Leave first (a no-op when fenced), so the new member owns everything.
            let _ = via
                .http()
                .delete(via.url(&format!("/v1/groups/{group}/members/{}", member.id)))
                .send()
                .await;
            member = Member::join(&via, group, LONG_SESSION_MS).await;
            fetch_until(
                &mut [&mut member],
                "the re-joined member owns every partition",
                |m| m[0].owned.len() == PARTITIONS as usize,
            )
            .await;
        }
        for offset in expected.values_mut() {
            *offset += 1;
        }
        member.commit(&expected).await;
        let committed_in = killed_at.elapsed();
        assert_read_back(
            &cluster,
            &survivors,
            group,
            &expected,
            "committed with a node down",
        )
        .await;

        cluster.restart(victim).await;
        assert_read_back(
            &cluster,
            &[1, 2, 3],
            group,
            &expected,
            &format!("node {victim} restarted"),
        )
        .await;
        println!(
            "round {round}: killed node {victim}{}; survivors read the offsets back \
             {read_back_in:?} after the kill, and took a new commit {committed_in:?} after it",
            if victim == coordinator {
                " (the coordinator)"
            } else {
                ""
            }
        );
    }
}

// ---------------------------------------------------------------------------------------
// Members come and go under continuous publishing: at-least-once
// ---------------------------------------------------------------------------------------

/// How each churn member misbehaves once, mid-run.
#[derive(Clone, Copy, Debug)]
enum Churn {
    /// Never leaves.
    Steady,
    /// Leaves cleanly, then joins again a second later.
    Leaves,
    /// Goes silent past its session timeout, then finds itself fenced and re-joins.
    Dies,
}

const CHURN_TOPIC_PARTITIONS: u32 = 3;
const CHURN_SESSION_MS: u64 = 1_500;
const PUBLISH_FOR: Duration = Duration::from_secs(8);

/// One consumer: fetch, remember what was delivered, commit it; misbehave once.
async fn churn_consumer(
    node: NodeClient,
    group: String,
    churn: Churn,
    deliveries: Arc<Mutex<Vec<(u32, u64)>>>,
    stop: Arc<AtomicBool>,
) -> u32 {
    let started = Instant::now();
    let mut member = Member::join(&node, &group, CHURN_SESSION_MS).await;
    let mut misbehaved = false;
    let mut rejoins = 0u32;
    while !stop.load(Ordering::SeqCst) {
        if !misbehaved && started.elapsed() > Duration::from_secs(3) {
            misbehaved = true;
            match churn {
                Churn::Steady => {}
                Churn::Leaves => {
                    let resp = node
                        .http()
                        .delete(node.url(&format!("/v1/groups/{group}/members/{}", member.id)))
                        .send()
                        .await
                        .expect("leave");
                    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "leave");
                    tokio::time::sleep(Duration::from_secs(1)).await; // away on purpose
                    member = Member::join(&node, &group, CHURN_SESSION_MS).await;
                    rejoins += 1;
                }
                Churn::Dies => {
                    // Silent past the session timeout on purpose.
                    tokio::time::sleep(Duration::from_millis(CHURN_SESSION_MS * 2)).await;
                }
            }
        }
        match member.try_fetch(200).await {
            Ok(records) => {
                let mut commit: BTreeMap<Tp, u64> = BTreeMap::new();
                {
                    let mut seen = deliveries.lock().expect("deliveries");
                    for r in &records {
                        seen.push((r.partition, r.offset));
                        let next = commit.entry((r.topic.clone(), r.partition)).or_default();
                        *next = (*next).max(r.offset + 1);
                    }
                }
                if !commit.is_empty() {
                    // A stale generation or a fence here just means the records come
                    // again to whoever owns them now: at-least-once.
                    let _ = member.commit_request(&commit).await;
                }
            }
            Err(error) if error.contains("member_fenced") => {
                member = Member::join(&node, &group, CHURN_SESSION_MS).await;
                rejoins += 1;
            }
            Err(error) => panic!("churn member fetch: {error}"),
        }
    }
    rejoins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_and_go_with_at_least_once_delivery() {
    let cluster = Cluster::start(3).await;
    cluster
        .node(1)
        .create_topic(TOPIC, CHURN_TOPIC_PARTITIONS, 3)
        .await;
    for p in 0..CHURN_TOPIC_PARTITIONS {
        cluster.leader_of(TOPIC, p).await;
    }
    let group = "churn".to_string();
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let consumers: Vec<_> = [(1, Churn::Steady), (2, Churn::Leaves), (3, Churn::Dies)]
        .into_iter()
        .map(|(id, churn)| {
            tokio::spawn(churn_consumer(
                cluster.node(id),
                group.clone(),
                churn,
                deliveries.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Publish continuously; record i of partition p is at offset i (one publisher).
    let publisher = cluster.node(1);
    let mut next = 0u64;
    let publish_start = Instant::now();
    while publish_start.elapsed() < PUBLISH_FOR {
        let records: Vec<NewRecord> = (0..CHURN_TOPIC_PARTITIONS)
            .flat_map(|p| {
                (next..next + 5).map(move |i| NewRecord {
                    partition: Some(p),
                    ..NewRecord::keyed(format!("k{p}"), json!({"p": p, "i": i}))
                })
            })
            .collect();
        publisher.publish(TOPIC, &records).await;
        next += 5;
        tokio::time::sleep(Duration::from_millis(20)).await; // publishing pace
    }
    let published = next;

    // Everything published gets committed eventually (lag 0 everywhere).
    let node = cluster.node(2);
    let node = &node;
    let group_ref = &group;
    let final_rows = eventually(SETTLE, "the group catches up (lag 0)", || async move {
        let rows = group_offsets(node, group_ref).await?;
        if rows.len() == CHURN_TOPIC_PARTITIONS as usize
            && rows
                .iter()
                .all(|r| r.offset == published && r.lag == Some(0))
        {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut rejoins = 0;
    for consumer in consumers {
        rejoins += consumer.await.expect("consumer task");
    }

    // docs/architecture.md § Consumer groups: every offset below the final commit was delivered to
    // some member; re-deliveries are allowed and counted.
    let deliveries = deliveries.lock().expect("deliveries").clone();
    let mut distinct: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut redelivered = 0u64;
    for d in &deliveries {
        if !distinct.insert(*d) {
            redelivered += 1;
        }
    }
    for row in &final_rows {
        for offset in 0..row.offset {
            assert!(
                distinct.contains(&(row.partition, offset)),
                "offset {offset} of partition {} is below the final commit but was never delivered",
                row.partition
            );
        }
    }
    assert!(
        rejoins >= 2,
        "the leaving and the dying member re-joined ({rejoins})"
    );
    println!(
        "churn: {} records published, {} deliveries, {redelivered} re-deliveries ({:.2}%), {rejoins} re-joins",
        published * u64::from(CHURN_TOPIC_PARTITIONS),
        deliveries.len(),
        100.0 * redelivered as f64 / deliveries.len().max(1) as f64
    );
}

// ---------------------------------------------------------------------------------------
// Regression: committed offsets read through a node that was cut off
// ---------------------------------------------------------------------------------------

/// Regression (chaos harness, docs/chaos.md "What it found" #1): a node that led the group's
/// offsets partition and was paused answered `GET /v1/groups/{g}/offsets` from its own
/// stale replica right after resuming — offsets older than a commit acknowledged while it
/// was away. A committed read must never go back (a 503 while it catches up is fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_never_read_back_older_after_a_pause() {
    let mut cluster = Cluster::start(3).await;
    create_topic(&cluster).await;
    publish_per_partition(&cluster.node(1), 0, PER_PARTITION).await;
    let group = "regress-stale-read";
    let mut first = Member::join(&cluster.node(1), group, LONG_SESSION_MS).await;
    let early: BTreeMap<Tp, u64> = first.owned.iter().map(|tp| (tp.clone(), 2)).collect();
    first.commit(&early).await;

    let stale = coordinator_of(&cluster.node(1), group).await;
    let live = cluster
        .ids()
        .into_iter()
        .find(|id| *id != stale)
        .expect("another node");
    cluster.pause(stale);
    // The offsets partition fails over; a member joining through a live node reaches the
    // new coordinator and commits further while the old leader is frozen. (Waiting for the
    // failover first: a join sent to the frozen node meanwhile has an unknown outcome.)
    eventually(SETTLE, "a coordinator other than the frozen node", || {
        let node = cluster.node(live);
        async move {
            let now = coordinator_of(&node, group).await;
            (now != stale)
                .then_some(())
                .ok_or(format!("still node {now}"))
        }
    })
    .await;
    let mut second = Member::join(&cluster.node(live), group, LONG_SESSION_MS).await;
    let later: BTreeMap<Tp, u64> = second.owned.iter().map(|tp| (tp.clone(), 7)).collect();
    assert_eq!(
        later.len(),
        PARTITIONS as usize,
        "the new member owns every partition"
    );
    second.commit(&later).await;
    cluster.resume(stale);

    // Read through the resumed node as fast as it answers, for a few seconds: every
    // answer that is not an error must show the later commit.
    let node = cluster.node(stale);
    let until = Instant::now() + Duration::from_secs(4);
    let mut answered = 0;
    while Instant::now() < until {
        if let Ok(rows) = group_offsets(&node, group).await {
            answered += 1;
            for ((topic, partition), offset) in committed_map(&rows) {
                assert!(
                    offset >= 7,
                    "{topic}/{partition}: read back {offset} after a commit of 7 was acknowledged"
                );
            }
        }
    }
    let rows = eventually(SETTLE, "the resumed node answers committed offsets", || {
        let node = node.clone();
        async move { group_offsets(&node, group).await }
    })
    .await;
    assert_eq!(
        committed_map(&rows),
        later,
        "the resumed node reads the later commit"
    );
    eprintln!("resumed node answered {answered} committed reads in the first 4 s");
}

// ---------------------------------------------------------------------------------------
// Positions the client confirms, fair fetches, commits within the log
// ---------------------------------------------------------------------------------------

/// Creates `topic` on a one-node cluster, waits for its leaders, and publishes `count`
/// records `{"p": partition, "i": offset}` to each partition.
async fn topic_with_records(cluster: &Cluster, topic: &str, partitions: u32, count: u64) {
    let node = cluster.node(1);
    node.create_topic(topic, partitions, 1).await;
    for p in 0..partitions {
        cluster.leader_of(topic, p).await;
    }
    let records: Vec<NewRecord> = (0..partitions)
        .flat_map(|p| {
            (0..count).map(move |i| NewRecord {
                partition: Some(p),
                ..NewRecord::keyed(format!("k{i}"), json!({"p": p, "i": i}))
            })
        })
        .collect();
    node.publish(topic, &records).await;
}

/// Joins `group` for `topic` from the earliest offset; returns (member id, generation).
async fn join_earliest(node: &NodeClient, group: &str, topic: &str) -> (String, u64) {
    let joined: Joined = serde_json::from_value(node.join_earliest(group, &[topic], 30_000).await)
        .expect("a join answer");
    (joined.member_id, joined.generation)
}

/// One member fetch with the given query; the raw response (no retries).
async fn member_get(
    node: &NodeClient,
    group: &str,
    member: &str,
    query: &str,
) -> reqwest::Response {
    node.http()
        .get(node.url(&format!(
            "/v1/groups/{group}/members/{member}/records?{query}"
        )))
        .send()
        .await
        .expect("member fetch")
}

/// One member fetch that must answer 200: its (partition, offset) pairs and position.
async fn member_records(
    node: &NodeClient,
    group: &str,
    member: &str,
    query: &str,
) -> (Vec<(u32, u64)>, String) {
    let resp = member_get(node, group, member, query).await;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "member fetch ?{query}: {text}");
    let answer: MemberFetch = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    for r in &answer.records {
        assert_eq!(
            (r.value["p"].as_u64(), r.value["i"].as_u64()),
            (Some(u64::from(r.partition)), Some(r.offset)),
            "the record published at its partition and offset"
        );
    }
    (
        answer
            .records
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect(),
        answer.position.unwrap_or_default(),
    )
}

async fn commit_offset(
    node: &NodeClient,
    group: &str,
    member: &str,
    generation: u64,
    topic: &str,
    offset: u64,
) -> reqwest::Response {
    node.http()
        .post(node.url(&format!("/v1/groups/{group}/offsets")))
        .json(&json!({
            "member_id": member,
            "generation": generation,
            "offsets": [{"topic": topic, "partition": 0, "offset": offset}],
        }))
        .send()
        .await
        .expect("commit request")
}

fn on_partition_0(range: std::ops::Range<u64>) -> Vec<(u32, u64)> {
    range.map(|o| (0, o)).collect()
}

/// A fetch whose answer never reached the client (its connection dropped) must
/// not move the member's position: the next fetch returns the same records. Positions
/// advance by the `position` token of an answer the client read, or by a commit; a stale
/// token never moves them back; a malformed one is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_fetch_answer_is_delivered_again() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    topic_with_records(&cluster, "sk", 1, 10).await;
    let (member, generation) = join_earliest(&node, "g1", "sk").await;

    // The answer to this fetch is lost (the client never reads it).
    let (lost, lost_position) =
        member_records(&node, "g1", &member, "max_records=5&timeout_ms=0").await;
    assert_eq!(lost, on_partition_0(0..5));
    // Fetching again without confirmation delivers the same records, never 5..10 alone.
    let (again, position) =
        member_records(&node, "g1", &member, "max_records=100&timeout_ms=500").await;
    assert_eq!(
        again,
        on_partition_0(0..10),
        "records 0-4 are delivered again"
    );

    // A malformed token is refused and changes nothing.
    for bad in ["nonsense", "1.x", "-1"] {
        let resp = member_get(
            &node,
            "g1",
            &member,
            &format!("timeout_ms=0&position={bad}"),
        )
        .await;
        expect_error(resp, 400, "invalid_request", "malformed position").await;
    }
    let (unchanged, _) = member_records(&node, "g1", &member, "timeout_ms=0").await;
    assert_eq!(unchanged, on_partition_0(0..10), "still unconfirmed");

    // Presenting the token of the answer read confirms it: nothing more to deliver, and
    // a fetch without a token starts at the confirmed position too.
    let (after, _) = member_records(
        &node,
        "g1",
        &member,
        &format!("timeout_ms=100&position={position}"),
    )
    .await;
    assert!(after.is_empty(), "confirmed through 10: {after:?}");
    let (plain, _) = member_records(&node, "g1", &member, "timeout_ms=0").await;
    assert!(
        plain.is_empty(),
        "a fetch without a token starts at the confirmed position"
    );
    // An older token never moves the position back.
    let (stale, _) = member_records(
        &node,
        "g1",
        &member,
        &format!("timeout_ms=0&position={lost_position}"),
    )
    .await;
    assert!(stale.is_empty(), "a stale token is ignored: {stale:?}");

    // The curl flow: fetch, commit, fetch — the commit confirms.
    let more: Vec<NewRecord> = (10..15)
        .map(|i| NewRecord {
            partition: Some(0),
            ..NewRecord::keyed(format!("k{i}"), json!({"p": 0, "i": i}))
        })
        .collect();
    node.publish("sk", &more).await;
    let (fresh, _) = member_records(&node, "g1", &member, "timeout_ms=500").await;
    assert_eq!(fresh, on_partition_0(10..15));
    let resp = commit_offset(&node, "g1", &member, generation, "sk", 15).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "commit 15");
    let (done, _) = member_records(&node, "g1", &member, "timeout_ms=100").await;
    assert!(done.is_empty(), "the commit confirmed 15: {done:?}");
}

/// A commit above the partition's high watermark is refused with 422 and
/// changes nothing (before, it was accepted and the member met 416 forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_beyond_the_high_watermark_is_refused() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    topic_with_records(&cluster, "hw", 1, 10).await;
    let (member, generation) = join_earliest(&node, "g2", "hw").await;
    let (got, _) = member_records(&node, "g2", &member, "timeout_ms=500").await;
    assert_eq!(got, on_partition_0(0..10));

    let resp = commit_offset(&node, "g2", &member, generation, "hw", 4).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "commit 4");
    for beyond in [11, u64::MAX] {
        let resp = commit_offset(&node, "g2", &member, generation, "hw", beyond).await;
        let error = expect_error(resp, 422, "offset_beyond_high_watermark", "commit > hw").await;
        assert_eq!(error.error_code, 42203);
    }
    let rows = group_offsets(&node, "g2").await.expect("offsets");
    assert_eq!(committed_map(&rows)[&("hw".to_string(), 0)], 4, "unchanged");
    // At the high watermark is fine (everything consumed), and fetches keep working.
    let resp = commit_offset(&node, "g2", &member, generation, "hw", 10).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "commit at the high watermark"
    );
    let (rest, _) = member_records(&node, "g2", &member, "timeout_ms=100").await;
    assert!(rest.is_empty(), "{rest:?}");
}

/// With backlogs in two partitions and a small `max_records`, every answer
/// serves both partitions (before, partition 0's backlog took the whole budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_share_the_budget_across_partitions() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    topic_with_records(&cluster, "fair", 2, 50).await;
    let (member, _) = join_earliest(&node, "g3", "fair").await;
    let mut position: Option<String> = None;
    for round in 0..5 {
        let query = match &position {
            Some(p) => format!("max_records=4&timeout_ms=500&position={p}"),
            None => "max_records=4&timeout_ms=500".to_string(),
        };
        let (got, next) = member_records(&node, "g3", &member, &query).await;
        assert_eq!(got.len(), 4, "round {round}: {got:?}");
        let per: BTreeMap<u32, Vec<u64>> = got.iter().fold(BTreeMap::new(), |mut m, (p, o)| {
            m.entry(*p).or_default().push(*o);
            m
        });
        let expect: Vec<u64> = (round * 2..round * 2 + 2).collect();
        assert_eq!(
            per.get(&0),
            Some(&expect),
            "round {round}: partition 0 in {got:?}"
        );
        assert_eq!(
            per.get(&1),
            Some(&expect),
            "round {round}: partition 1 in {got:?}"
        );
        position = Some(next);
    }
    // One record per answer: the partitions take turns.
    let mut served = BTreeSet::new();
    for _ in 0..2 {
        let query = format!(
            "max_records=1&timeout_ms=500&position={}",
            position.as_deref().unwrap_or_default()
        );
        let (got, next) = member_records(&node, "g3", &member, &query).await;
        assert_eq!(got.len(), 1, "{got:?}");
        served.insert(got[0].0);
        position = Some(next);
    }
    assert_eq!(
        served,
        BTreeSet::from([0, 1]),
        "both partitions served in turn"
    );
}
