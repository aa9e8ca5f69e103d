//! Push subscriptions on a real 3-node cluster, against an HTTP endpoint run by the test
//! (docs/api.md § Push subscriptions):
//!
//! - an endpoint that fails the first two attempts of every record still receives every
//!   record, in order per partition, each attempt signed with the subscription's secret;
//!   an endpoint that always fails sees every record go to the dead-letter topic with the
//!   headers that say where it came from; the routes refuse bad settings, pull joins and
//!   show the state; and the pushers log no WARN or ERROR about the failing endpoint;
//! - killing the node that pushes (the group's coordinator) mid-stream loses nothing:
//!   every acknowledged record reaches the endpoint at least once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use psubd_tests::client::{expect_error, expect_json};
use psubd_tests::wire::NewRecord;
use psubd_tests::{eventually, Cluster, NodeClient};
use psubd_wire::{PushDelivery, PushSubscription};
use serde_json::{json, Value};
use sha2::Sha256;

/// How long every record may take to arrive (retries and backoff included) on a loaded
/// machine.
const DELIVERED_WITHIN: Duration = Duration::from_secs(120);

const SECRET: &str = "push-test-secret";

/// What the endpoint answers.
#[derive(Clone, Copy)]
enum Policy {
    /// 503 to the first `n` attempts of each record, then 200.
    FailFirst(u32),
    /// 500 to everything.
    AlwaysFail,
    /// 200 to everything.
    AlwaysOk,
}

/// What the endpoint saw.
#[derive(Default)]
struct Seen {
    /// Attempts per (topic, partition, offset), in arrival order of their numbers.
    attempts: BTreeMap<(String, u32, u64), Vec<u32>>,
    /// Acknowledged (topic, partition, offset) in the order the endpoint acknowledged them.
    acked: Vec<(String, u32, u64)>,
    /// Bodies whose signature was missing or wrong.
    bad_signatures: usize,
    /// Bodies that are not a `PushDelivery` or came without JSON's media type.
    malformed: usize,
}

struct Endpoint {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Endpoint {
    fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.lock().unwrap())
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `header` is `sha256=<hex HMAC-SHA256 of body under SECRET>`.
fn signed(header: Option<&str>, body: &[u8]) -> bool {
    let Some(digest) = header
        .and_then(|h| h.strip_prefix("sha256="))
        .and_then(hex_decode)
    else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

async fn receive(
    State((policy, seen)): State<(Policy, Arc<Mutex<Seen>>)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut seen = seen.lock().unwrap();
    let signature = headers
        .get("x-psubd-signature")
        .and_then(|v| v.to_str().ok());
    if !signed(signature, &body) {
        seen.bad_signatures += 1;
    }
    let json_type = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/json");
    let Ok(delivery) = serde_json::from_slice::<PushDelivery>(&body) else {
        seen.malformed += 1;
        return StatusCode::BAD_REQUEST;
    };
    if !json_type {
        seen.malformed += 1;
    }
    let key = (
        delivery.record.topic.clone(),
        delivery.record.partition,
        delivery.record.offset,
    );
    let attempts = seen.attempts.entry(key.clone()).or_default();
    attempts.push(delivery.delivery_attempt);
    let tries = attempts.len() as u32;
    let ok = match policy {
        Policy::FailFirst(n) => tries > n,
        Policy::AlwaysFail => false,
        Policy::AlwaysOk => true,
    };
    if ok {
        seen.acked.push(key);
        StatusCode::OK
    } else if matches!(policy, Policy::AlwaysFail) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// An HTTP endpoint on 127.0.0.1, answering by `policy`, until the test ends.
async fn endpoint(policy: Policy) -> Endpoint {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/push", post(receive))
        .with_state((policy, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Endpoint { url, seen }
}

async fn put_push(node: &NodeClient, group: &str, body: &Value) -> reqwest::Response {
    node.http()
        .put(node.url(&format!("/v1/groups/{group}/push")))
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
}

async fn get_push(node: &NodeClient, group: &str) -> Result<PushSubscription, String> {
    let resp = node
        .http()
        .get(node.url(&format!("/v1/groups/{group}/push")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    expect_json(resp, 200).await
}

/// Publishes `count` keyed records to `topic` through `node`; answers their (partition,
/// offset) pairs.
async fn publish(node: &NodeClient, topic: &str, prefix: &str, count: usize) -> Vec<(u32, u64)> {
    let records: Vec<NewRecord> = (0..count)
        .map(|i| {
            let mut record = NewRecord::keyed(format!("{prefix}-{i}"), json!({ "n": i }));
            record.headers = Some(BTreeMap::from([("origin".into(), prefix.into())]));
            record
        })
        .collect();
    node.publish(topic, &records)
        .await
        .into_iter()
        .map(|r| (r.partition, r.offset))
        .collect()
}

/// docs/api.md § Push subscriptions: retries with backoff until a 2xx, strict order per
/// partition with `max_in_flight` 1, the signature, dead letters with their headers, the
/// refusals and the state shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_retries_in_order_with_signatures_and_dead_letters_what_always_fails() {
    let cluster = Cluster::start(3).await;
    let node = cluster.node(1);
    node.create_topic("orders", 2, 3).await;
    node.create_topic("audit", 1, 3).await;
    node.create_topic("audit-dead", 1, 3).await;
    let flaky = endpoint(Policy::FailFirst(2)).await;
    let broken = endpoint(Policy::AlwaysFail).await;

    // Bad settings change nothing: 400 for each, 404 for unknown topics.
    let base = json!({"topics": ["orders"], "endpoint": flaky.url});
    for (change, what) in [
        (json!({"endpoint": "ftp://x/"}), "scheme"),
        (json!({"endpoint": "not a url"}), "url"),
        (json!({"max_in_flight": 0}), "max_in_flight"),
        (json!({"timeout_ms": 5}), "timeout_ms"),
        (
            json!({"min_backoff_ms": 500, "max_backoff_ms": 100}),
            "backoff order",
        ),
        (json!({"max_deliveries": 0}), "max_deliveries"),
        (json!({"dead_letter_topic": "orders"}), "dead letter loop"),
        (json!({"secret": ""}), "secret"),
        (json!({"topics": []}), "topics"),
        (json!({"surprise": 1}), "unknown field"),
    ] {
        let mut body = base.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let status = put_push(&node, "flaky", &body).await.status().as_u16();
        assert_eq!(status, 400, "{what}: {body}");
    }
    let mut unknown = base.clone();
    unknown["topics"] = json!(["nope"]);
    expect_error(
        put_push(&node, "flaky", &unknown).await,
        404,
        "topic_not_found",
        "unknown topic",
    )
    .await;
    unknown = base.clone();
    unknown["dead_letter_topic"] = json!("nope");
    expect_error(
        put_push(&node, "flaky", &unknown).await,
        404,
        "topic_not_found",
        "unknown dead-letter topic",
    )
    .await;
    expect_error(
        node.http()
            .get(node.url("/v1/groups/flaky/push"))
            .send()
            .await
            .unwrap(),
        404,
        "push_not_found",
        "nothing was set",
    )
    .await;

    let set: PushSubscription = expect_json(
        put_push(
            &node,
            "flaky",
            &json!({
                "topics": ["orders"], "endpoint": flaky.url, "secret": SECRET,
                "min_backoff_ms": 10, "max_backoff_ms": 40, "max_deliveries": 5,
            }),
        )
        .await,
        200,
    )
    .await
    .unwrap();
    assert!(set.secret_set);
    assert_eq!(
        (set.max_in_flight, set.timeout_ms, set.max_deliveries),
        (1, 10_000, 5)
    );
    expect_json::<PushSubscription>(
        put_push(
            &node,
            "broken",
            &json!({
                "topics": ["audit"], "endpoint": broken.url, "secret": SECRET,
                "min_backoff_ms": 10, "max_backoff_ms": 20, "max_deliveries": 3,
                "dead_letter_topic": "audit-dead",
            }),
        )
        .await,
        200,
    )
    .await
    .unwrap();
    // A push subscription refuses members, and the offsets stay its own.
    let join = node
        .http()
        .post(node.url("/v1/groups/flaky/members"))
        .json(&json!({"topics": ["orders"]}))
        .send()
        .await
        .unwrap();
    expect_error(join, 409, "push_subscription", "pull join on a push group").await;
    let reset = node
        .http()
        .put(node.url("/v1/groups/flaky/offsets"))
        .json(&json!({"offsets": [{"topic": "orders", "offset": "earliest"}]}))
        .send()
        .await
        .unwrap();
    expect_error(reset, 409, "push_subscription", "reset of a push group").await;

    let orders = publish(&cluster.node(2), "orders", "o", 30).await;
    let audit = publish(&cluster.node(3), "audit", "a", 6).await;

    let expected: BTreeSet<(String, u32, u64)> = orders
        .iter()
        .map(|(p, o)| ("orders".to_string(), *p, *o))
        .collect();
    eventually(DELIVERED_WITHIN, "every order acknowledged", || async {
        let acked: BTreeSet<_> = flaky.seen(|s| s.acked.iter().cloned().collect());
        if acked.is_superset(&expected) {
            Ok(())
        } else {
            Err(format!("{} of {} acked", acked.len(), expected.len()))
        }
    })
    .await;
    flaky.seen(|seen| {
        assert_eq!(
            seen.bad_signatures, 0,
            "every body carries a valid signature"
        );
        assert_eq!(
            seen.malformed, 0,
            "every body is a PushDelivery sent as JSON"
        );
        for (record, attempts) in &seen.attempts {
            assert_eq!(
                attempts,
                &[1, 2, 3],
                "{record:?}: attempts numbered, stopping at the first 2xx"
            );
        }
        for partition in 0..2 {
            let order: Vec<u64> = seen
                .acked
                .iter()
                .filter(|(_, p, _)| *p == partition)
                .map(|(_, _, o)| *o)
                .collect();
            let sorted: Vec<u64> = (0..order.len() as u64).collect();
            assert_eq!(order, sorted, "partition {partition}: in order, once each");
            // In order: no attempt of a record began before the one before it was done.
        }
    });

    // Every audit record ends in the dead-letter topic, after exactly max_deliveries.
    let dead = eventually(
        DELIVERED_WITHIN,
        "every audit record dead-lettered",
        || async {
            let records = node.try_fetch_all("audit-dead", 0).await?;
            if records.len() >= audit.len() {
                Ok(records)
            } else {
                Err(format!("{} of {} dead letters", records.len(), audit.len()))
            }
        },
    )
    .await;
    let originals = node.fetch_all("audit", 0).await;
    let mut dead_offsets = BTreeSet::new();
    for letter in &dead {
        let headers = letter.headers.clone().unwrap_or_default();
        assert_eq!(headers["x-original-topic"], "audit");
        assert_eq!(headers["x-original-partition"], "0");
        assert_eq!(headers["x-delivery-error"], "HTTP 500");
        assert_eq!(headers["origin"], "a", "the original headers stay");
        let offset: u64 = headers["x-original-offset"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let original = &originals[offset as usize];
        assert_eq!(letter.key, original.key);
        assert_eq!(letter.value, original.value);
        dead_offsets.insert(offset);
    }
    assert_eq!(
        dead_offsets,
        audit.iter().map(|(_, o)| *o).collect::<BTreeSet<_>>(),
        "each record dead-lettered"
    );
    broken.seen(|seen| {
        assert!(seen.acked.is_empty());
        for (record, attempts) in &seen.attempts {
            assert_eq!(attempts, &[1, 2, 3], "{record:?}: max_deliveries attempts");
        }
    });

    // The state: committed past everything, no lag; dead letters counted; no secret.
    let state = eventually(DELIVERED_WITHIN, "the push state caught up", || async {
        let state = get_push(&cluster.node(2), "broken").await?;
        let p = state.partitions.first().ok_or("no partition state yet")?;
        if p.committed_offset == Some(audit.len() as u64) && p.lag == Some(0) {
            Ok(state)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    assert_eq!(state.partitions[0].dead_lettered, audit.len() as u64);
    assert_eq!(state.partitions[0].last_error.as_deref(), Some("HTTP 500"));
    let described = node.try_get_json("/v1/groups/flaky").await.unwrap();
    assert_eq!(described["push"]["endpoint"], flaky.url.as_str());
    assert!(
        !described.to_string().contains(SECRET),
        "the secret is never shown"
    );
    let offsets = node.try_get_json("/v1/groups/flaky/offsets").await.unwrap();
    let committed: u64 = offsets["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .sum();
    assert_eq!(committed, orders.len() as u64, "committed past every order");

    // Delete: the subscription ends, the offsets stay, members may join again.
    let deleted = node
        .http()
        .delete(node.url("/v1/groups/flaky/push"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let join = node
        .http()
        .post(node.url("/v1/groups/flaky/members"))
        .json(&json!({"topics": ["orders"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(join.status().as_u16(), 201, "a pull group again");
    expect_error(
        put_push(&node, "flaky", &base).await,
        409,
        "group_not_empty",
        "push on a group with members",
    )
    .await;

    // A failing endpoint is the user's business: the pushers logged no WARN or ERROR
    // line about it. (The fixture's nodes also log openraft's own start-up chatter, which
    // is not this test's subject.)
    for id in cluster.ids() {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        let loud: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .filter(|l| l.contains("push"))
            .collect();
        assert!(loud.is_empty(), "node {id} logged: {loud:#?}");
    }
}

/// docs/api.md § Push subscriptions, "at least once": the pusher runs on the group's
/// coordinator; killed mid-stream, a new coordinator resumes from the committed offsets
/// and every acknowledged record still reaches the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pushing_node_loses_no_record() {
    let mut cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("events", 2, 3).await;
    let sink = endpoint(Policy::AlwaysOk).await;
    expect_json::<PushSubscription>(
        put_push(
            &cluster.node(1),
            "sink",
            &json!({"topics": ["events"], "endpoint": sink.url, "secret": SECRET,
                    "min_backoff_ms": 10, "max_backoff_ms": 100}),
        )
        .await,
        200,
    )
    .await
    .unwrap();
    let pusher = eventually(DELIVERED_WITHIN, "the pusher runs", || async {
        let state = get_push(&cluster.node(1), "sink").await?;
        if state.partitions.is_empty() {
            Err("no partition state yet".to_string())
        } else {
            Ok(state.coordinator)
        }
    })
    .await;
    let survivor = cluster.node(if pusher == 1 { 2 } else { 1 });

    let mut published = publish(&survivor, "events", "before", 100).await;
    eventually(DELIVERED_WITHIN, "some records pushed", || async {
        let acked = sink.seen(|s| s.acked.len());
        if acked >= 20 {
            Ok(())
        } else {
            Err(format!("{acked} acked"))
        }
    })
    .await;
    cluster.kill(pusher);
    for round in 0..4 {
        let more: Vec<NewRecord> = (0..25)
            .map(|i| NewRecord::keyed(format!("after-{round}-{i}"), json!(i)))
            .collect();
        published.extend(
            survivor
                .publish_at_least_once("events", &more)
                .await
                .into_iter()
                .map(|r| (r.partition, r.offset)),
        );
    }
    let expected: BTreeSet<(String, u32, u64)> = published
        .iter()
        .map(|(p, o)| ("events".to_string(), *p, *o))
        .collect();
    eventually(
        DELIVERED_WITHIN,
        "every record pushed after the kill",
        || async {
            let acked: BTreeSet<_> = sink.seen(|s| s.acked.iter().cloned().collect());
            let missing = expected.difference(&acked).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} not pushed yet", expected.len()))
            }
        },
    )
    .await;
    let moved = eventually(DELIVERED_WITHIN, "a new pusher reports", || async {
        get_push(&survivor, "sink").await.map(|s| s.coordinator)
    })
    .await;
    assert_ne!(moved, pusher, "the push moved with the coordinator");
    sink.seen(|seen| assert_eq!(seen.bad_signatures, 0));
}

/// The push state of `group`'s only partition, once a pusher on a node other than
/// `not_on` reports it with everything committed (`committed` records).
async fn settled_state(
    node: &NodeClient,
    group: &str,
    not_on: Option<u64>,
    committed: u64,
) -> psubd_wire::PushPartitionState {
    eventually(DELIVERED_WITHIN, "the push state settled", || async {
        let state = get_push(node, group).await?;
        let p = state.partitions.first().ok_or("no partition state yet")?;
        if Some(state.coordinator) == not_on {
            return Err(format!("still reported by node {}", state.coordinator));
        }
        if p.committed_offset == Some(committed) && p.pending_offset.is_none() {
            Ok(p.clone())
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await
}

/// docs/api.md § Push subscriptions, "State": the dead-lettered and dropped counts are
/// replicated with the commits, so the next coordinator's pusher shows the same counts
/// after the pushing node is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_and_drop_counts_survive_the_pushing_node() {
    let mut cluster = Cluster::start(3).await;
    let node = cluster.node(1);
    node.create_topic("jobs", 1, 3).await;
    node.create_topic("jobs-dead", 1, 3).await;
    let broken = endpoint(Policy::AlwaysFail).await;
    let jobs = publish(&node, "jobs", "j", 5).await.len() as u64;
    let settings = |dead: Option<&str>| {
        json!({"topics": ["jobs"], "endpoint": broken.url, "max_deliveries": 1,
               "min_backoff_ms": 10, "max_backoff_ms": 10, "dead_letter_topic": dead})
    };
    for (group, dead) in [("dead", Some("jobs-dead")), ("drop", None)] {
        expect_json::<PushSubscription>(put_push(&node, group, &settings(dead)).await, 200)
            .await
            .unwrap();
    }
    for group in ["dead", "drop"] {
        let before = settled_state(&node, group, None, jobs).await;
        assert_eq!((before.dead_lettered, before.dropped), {
            if group == "dead" {
                (jobs, 0)
            } else {
                (0, jobs)
            }
        });
        // Kill the node that pushes this group; the next coordinator shows the counts.
        let pusher = get_push(&node, group).await.unwrap().coordinator;
        cluster.kill(pusher);
        let survivor = cluster.node(if pusher == 1 { 2 } else { 1 });
        let after = settled_state(&survivor, group, Some(pusher), jobs).await;
        assert_eq!(
            (after.dead_lettered, after.dropped),
            (before.dead_lettered, before.dropped),
            "{group}: the counts moved with the coordinator"
        );
        let described = survivor
            .try_get_json(&format!("/v1/groups/{group}"))
            .await
            .unwrap();
        let shown = &described["push"]["partitions"][0];
        assert_eq!(shown["dead_lettered"], before.dead_lettered);
        assert_eq!(shown["dropped"], before.dropped);
        cluster.restart(pusher).await;
    }
}

/// docs/api.md § Push subscriptions: at most `--max-push-subscriptions` per offsets
/// partition (4 in a cluster). Past it a new subscription is 409 `limit_reached` and
/// changes nothing (the group stays a pull group that members may join); changing an
/// existing one still works, and deleting one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_subscriptions_are_bounded_per_offsets_partition() {
    let cluster = Cluster::start_with_env(3, &[("PSUBD_MAX_PUSH_SUBSCRIPTIONS", "1")]).await;
    let node = cluster.node(1);
    node.create_topic("orders", 1, 3).await;
    let sink = endpoint(Policy::AlwaysOk).await;
    let body = json!({"topics": ["orders"], "endpoint": sink.url});
    // Five groups over four offsets partitions, one subscription each: one at least is
    // refused.
    let mut set = Vec::new();
    let mut refused = Vec::new();
    for i in 0..5 {
        let group = format!("hook{i}");
        let resp = put_push(&node, &group, &body).await;
        if resp.status().as_u16() == 200 {
            set.push(group);
        } else {
            expect_error(resp, 409, "limit_reached", "past the bound").await;
            refused.push(group);
        }
    }
    assert!(!refused.is_empty() && set.len() <= 4, "set {set:?}");
    let group = &refused[0];
    expect_error(
        node.http()
            .get(node.url(&format!("/v1/groups/{group}/push")))
            .send()
            .await
            .unwrap(),
        404,
        "push_not_found",
        "a refused subscription is not set",
    )
    .await;
    // Changing a subscription that exists is not a new one.
    let mut changed = body.clone();
    changed["max_in_flight"] = json!(2);
    let again: PushSubscription = expect_json(put_push(&node, &set[0], &changed).await, 200)
        .await
        .unwrap();
    assert_eq!(again.max_in_flight, 2);
    // The refused group is still a pull group: a member joins (and leaves).
    let join = node
        .http()
        .post(node.url(&format!("/v1/groups/{group}/members")))
        .json(&json!({"topics": ["orders"]}))
        .send()
        .await
        .unwrap();
    let member: Value = expect_json(join, 201).await.unwrap();
    let member_id = member["member_id"].as_str().unwrap();
    let left = node
        .http()
        .delete(node.url(&format!("/v1/groups/{group}/members/{member_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(left.status().as_u16(), 204);
    // Deleting the subscriptions makes room for it.
    for existing in &set {
        let deleted = node
            .http()
            .delete(node.url(&format!("/v1/groups/{existing}/push")))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status().as_u16(), 204);
    }
    expect_json::<PushSubscription>(put_push(&node, group, &body).await, 200)
        .await
        .unwrap();
}
