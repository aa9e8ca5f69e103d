//! Seek by time (docs/api.md § Fetch by offset, § Consumer groups): `offset=@<ms>` starts a
//! read at the first record stamped at or after that time, through any node, and a group's
//! offsets reset to a time land on the same record.
//!
//! Needs the binary: `cargo build -p psubd` first.

use psubd_tests::{expect_error, Cluster, NodeClient};
use serde_json::{json, Value};

const TOPIC: &str = "seek";

/// The stamp of record `i`: ten milliseconds apart.
fn stamp(i: i64) -> i64 {
    1_700_000_000_000 + 10 * i
}

async fn get(node: &NodeClient, path: &str) -> reqwest::Response {
    node.http().get(node.url(path)).send().await.unwrap()
}

async fn json_of(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200, "an answer of 200");
    resp.json().await.unwrap()
}

/// The offsets of a fetch answer's records.
fn offsets(page: &Value) -> Vec<u64> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_group_resets_start_at_a_time() {
    let cluster = Cluster::start(3).await;
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    n1.create_topic(TOPIC, 1, 3).await;
    cluster.leader_of(TOPIC, 0).await;
    // Ten records stamped 10 ms apart, in two requests.
    for from in [0, 5] {
        let records: Vec<Value> = (from..from + 5)
            .map(|i| json!({"value": i, "timestamp_ms": stamp(i)}))
            .collect();
        let resp = n1
            .http()
            .post(n1.url(&format!("/v1/topics/{TOPIC}/records")))
            .json(&json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    let fetch = |at: String| format!("/v1/topics/{TOPIC}/partitions/0/records?offset={at}");
    // Exactly a stamp, between stamps, before all and after all; through a node that may
    // not lead the partition.
    for (at, first) in [(stamp(4), 4), (stamp(4) + 1, 5), (0, 0), (stamp(9), 9)] {
        let page = json_of(get(&n2, &fetch(format!("@{at}"))).await).await;
        assert_eq!(offsets(&page).first(), Some(&first), "@{at}: {page}");
    }
    let page = json_of(get(&n2, &fetch(format!("@{}", stamp(10)))).await).await;
    assert!(
        offsets(&page).is_empty(),
        "nothing is stamped that late: {page}"
    );
    assert_eq!(page["next_offset"], 10);

    let resp = get(&n1, &fetch("@soon".into())).await;
    expect_error(resp, 400, "invalid_request", "offset=@soon").await;

    // A group's offsets reset to a time.
    let resp = n2
        .http()
        .put(n2.url("/v1/groups/seekers/offsets"))
        .json(&json!({"offsets": [{"topic": TOPIC, "partition": 0, "timestamp_ms": stamp(6) - 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let rows = json_of(get(&n1, "/v1/groups/seekers/offsets").await).await;
    assert_eq!(rows["offsets"][0]["offset"], 6, "{rows}");
}
