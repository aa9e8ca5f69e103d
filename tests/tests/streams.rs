//! Partition streams: SSE and NDJSON streams against real node processes.
//! docs/api.md § Streams.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::time::Duration;

use futures::StreamExt;
use psubd_tests::{eventually, Cluster, NewRecord, PublishOutcome, SseReader};
use serde_json::{json, Value};

/// How long a test waits for a streamed record before failing.
const RECORD_WITHIN: Duration = Duration::from_secs(15);

fn value_record(partition: u32, n: u64) -> NewRecord {
    NewRecord {
        key: None,
        value: json!({ "n": n }),
        headers: None,
        partition: Some(partition),
    }
}

async fn open_sse(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> SseReader {
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("open the SSE stream");
    assert_eq!(response.status(), 200, "SSE stream status");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "SSE content type"
    );
    SseReader::new(response)
}

/// Reads `count` record events and returns their (id, n) in arrival order.
async fn read_records(reader: &mut SseReader, count: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let event = reader
            .next_event(RECORD_WITHIN)
            .await
            .expect("a record event before the stream ends");
        assert_eq!(
            event.event.as_deref(),
            Some("record"),
            "event type: {event:?}"
        );
        let record: Value = serde_json::from_str(&event.data).expect("event data is a record");
        seen.push((
            event.id.expect("record events carry an id"),
            record["value"]["n"].as_u64().unwrap(),
        ));
    }
    seen
}

// docs/api.md § Streams: SSE records arrive as published, with `id: <partition>-<offset>`;
// a stream resumed with Last-Event-ID continues without gap or repeat; NDJSON streams
// one record per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_ndjson_streams_deliver_in_order_and_resume_without_gap() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    cluster.node(1).create_topic("ev", 1, 3).await;
    let url = format!(
        "{}/v1/topics/ev/partitions/0/stream?offset=0",
        cluster.http(3)
    );

    // Records published while the stream is open arrive in order.
    let mut reader = open_sse(&client, &url, None).await;
    for n in 0..5 {
        cluster.node(2).publish("ev", &[value_record(0, n)]).await;
    }
    let first = read_records(&mut reader, 5).await;
    let expected: Vec<(String, u64)> = (0..5).map(|n| (format!("0-{n}"), n)).collect();
    assert_eq!(
        first, expected,
        "records as published, ids <partition>-<offset>"
    );
    drop(reader);

    // Resume after offset 2 through another node: 3, 4, then what is published next.
    let mut resumed = open_sse(
        &client,
        &format!("{}/v1/topics/ev/partitions/0/stream", cluster.http(1)),
        Some("0-2"),
    )
    .await;
    cluster.node(1).publish("ev", &[value_record(0, 5)]).await;
    let next = read_records(&mut resumed, 3).await;
    assert_eq!(
        next,
        vec![
            ("0-3".to_string(), 3),
            ("0-4".to_string(), 4),
            ("0-5".to_string(), 5)
        ],
        "resume continues without gap or repeat"
    );

    // NDJSON: one record per line, from earliest.
    let response = client
        .get(format!(
            "{}/v1/topics/ev/partitions/0/stream?offset=earliest",
            cluster.http(2)
        ))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.lines().count() < 6 || !text.ends_with('\n') {
        let chunk = tokio::time::timeout(RECORD_WITHIN, body.next())
            .await
            .expect("ndjson line in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let offsets: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);

    // An unsupported Accept is refused with the JSON error body.
    let refused = client
        .get(&url)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 406);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "not_acceptable");
}

// Killing the node serving a stream — the client reconnects to another node with
// its Last-Event-ID and resumes without losing a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_on_another_node_after_kill() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    cluster.node(1).create_topic("ks", 1, 3).await;
    for n in 0..3 {
        cluster.node(1).publish("ks", &[value_record(0, n)]).await;
    }
    let mut reader = open_sse(
        &client,
        &format!(
            "{}/v1/topics/ks/partitions/0/stream?offset=0",
            cluster.http(3)
        ),
        None,
    )
    .await;
    let before = read_records(&mut reader, 3).await;
    let last_id = before.last().unwrap().0.clone();

    cluster.kill(3);
    // The stream ends with the node; publish more meanwhile through a live node.
    assert!(
        reader.next_event(RECORD_WITHIN).await.is_none(),
        "the killed node's stream ends"
    );
    for n in 3..6 {
        // Retried until acknowledged: an outcome_unknown attempt may also have landed,
        // which is a duplicate publish (at-least-once), not a stream repeat.
        eventually(Duration::from_secs(10), "publish after the kill", || {
            let node = cluster.node(1);
            async move {
                match node
                    .try_publish("ks", &[value_record(0, n)], Duration::from_secs(5))
                    .await
                {
                    PublishOutcome::Acked(_) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
    let mut resumed = open_sse(
        &client,
        &format!("{}/v1/topics/ks/partitions/0/stream", cluster.http(2)),
        Some(&last_id),
    )
    .await;
    let mut offsets = Vec::new();
    let mut values = std::collections::BTreeSet::new();
    while values.len() < 3 {
        let (id, n) = read_records(&mut resumed, 1).await.remove(0);
        offsets.push(id.trim_start_matches("0-").parse::<u64>().unwrap());
        values.insert(n);
    }
    let expected_offsets: Vec<u64> = (3..3 + offsets.len() as u64).collect();
    assert_eq!(
        offsets, expected_offsets,
        "the resumed stream continues at offset 3 without gap or repeat"
    );
    assert_eq!(
        values.into_iter().collect::<Vec<_>>(),
        vec![3, 4, 5],
        "nothing lost across the reconnect"
    );
}

/// Joins `group` through the node at `base`; returns the member id.
async fn join(client: &reqwest::Client, base: &str, group: &str, topic: &str) -> String {
    let node = psubd_tests::client::NodeClient::new(client.clone(), base);
    let joined = node.join_earliest(group, &[topic], 30_000).await;
    joined["member_id"]
        .as_str()
        .expect("a join answer has member_id")
        .to_string()
}

/// Reads events until an `assignment` event; returns its data (records before it are
/// re-deliveries, which at-least-once allows).
async fn next_assignment(reader: &mut SseReader) -> Value {
    loop {
        let event = reader
            .next_event(RECORD_WITHIN)
            .await
            .expect("an assignment event before the stream ends");
        if event.event.as_deref() == Some("assignment") {
            return serde_json::from_str(&event.data).unwrap();
        }
    }
}

// docs/api.md § Streams (member streams): records of the member's partitions with
// `id: <partition>-<offset>`; an `assignment` event first and when a second member joins;
// closing the stream leaves the group promptly (the other member takes every partition
// long before the 30 s session timeout); the stream never commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_stream_sends_assignment_events_and_leaves_on_close() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    cluster.node(1).create_topic("mt", 2, 3).await;
    let a = join(&client, &cluster.http(1), "mg", "mt").await;
    let mut stream_a = open_sse(
        &client,
        &format!("{}/v1/groups/mg/members/{a}/stream", cluster.http(2)),
        None,
    )
    .await;
    let first = next_assignment(&mut stream_a).await;
    assert_eq!(first["event"], "assignment");
    assert_eq!(
        first["assignments"].as_array().unwrap().len(),
        2,
        "a lone member owns both partitions: {first}"
    );
    let first_generation = first["generation"].as_u64().unwrap();

    for n in 0..4 {
        cluster
            .node(3)
            .publish("mt", &[value_record(n as u32 % 2, n)])
            .await;
    }
    let mut got = read_records(&mut stream_a, 4).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("0-0".to_string(), 0),
            ("0-1".to_string(), 2),
            ("1-0".to_string(), 1),
            ("1-1".to_string(), 3)
        ],
        "every record once, ids <partition>-<offset>"
    );

    // A second member joins: the open stream announces the new generation.
    let b = join(&client, &cluster.http(3), "mg", "mt").await;
    let second = next_assignment(&mut stream_a).await;
    assert!(
        second["generation"].as_u64().unwrap() > first_generation,
        "a new generation: {second}"
    );
    assert_eq!(
        second["assignments"].as_array().unwrap().len(),
        1,
        "the partitions are split: {second}"
    );

    // Closing A's stream leaves the group after the re-attach grace (5 s): B
    // owns both partitions well before A's session (30 s) could have expired.
    let closed = std::time::Instant::now();
    drop(stream_a);
    let group_url = format!("{}/v1/groups/mg", cluster.http(1));
    eventually(
        Duration::from_secs(8),
        "B alone owns both partitions",
        || {
            let request = client.get(&group_url);
            let b = b.clone();
            async move {
                let group: Value = request
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let members = group["members"].as_array().cloned().unwrap_or_default();
                if members.len() == 1
                    && members[0]["member_id"] == b.as_str()
                    && members[0]["assignments"].as_array().map(Vec::len) == Some(2)
                {
                    Ok(())
                } else {
                    Err(format!("group: {group}"))
                }
            }
        },
    )
    .await;
    assert!(
        closed.elapsed() < Duration::from_secs(10),
        "the leave was prompt: {:?}",
        closed.elapsed()
    );

    // NDJSON member stream: the assignment line has its own shape.
    let response = client
        .get(format!(
            "{}/v1/groups/mg/members/{b}/stream",
            cluster.http(2)
        ))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains('\n') {
        let chunk = tokio::time::timeout(RECORD_WITHIN, body.next())
            .await
            .expect("an NDJSON line in time")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["event"], "assignment", "first line: {line}");
    assert_eq!(line["assignments"].as_array().unwrap().len(), 2);
    drop(body);

    // Nothing was committed by any stream: only an explicit commit moves offsets.
    let offsets: Value = client
        .get(format!("{}/v1/groups/mg/offsets", cluster.http(1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        offsets["offsets"].as_array().map(Vec::len),
        Some(0),
        "streams never commit: {offsets}"
    );
}

// Concurrent streams per node are bounded (429 `too_many_streams` with
// Retry-After, for SSE and WebSocket alike), and a graceful shutdown (SIGTERM) ends an
// open SSE stream cleanly and closes a WebSocket with a close frame (1001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_and_graceful_shutdown() {
    use tokio_tungstenite::tungstenite;

    let mut cluster = Cluster::start_with_env(3, &[("PSUBD_MAX_STREAMS", "2")]).await;
    let client = cluster.client();
    cluster.node(1).create_topic("lim", 1, 3).await;
    let url = format!("{}/v1/topics/lim/partitions/0/stream", cluster.http(3));
    let mut sse = open_sse(&client, &url, None).await;
    let ws_url = format!("{}/v1/ws", cluster.http(3).replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("a WebSocket within the limit");

    let refused = client
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        429,
        "a third stream on the node is refused"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams");
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("a WebSocket past the limit must be refused with 429: {other:?}"),
    }
    // Other nodes have their own limit.
    let elsewhere = client
        .get(format!(
            "{}/v1/topics/lim/partitions/0/stream",
            cluster.http(1)
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200);
    drop(elsewhere);

    // SIGTERM: the SSE body ends (not an aborted connection), the WebSocket gets 1001.
    let status = cluster.stop(3).await;
    assert!(status.success(), "node 3 exits cleanly: {status}");
    sse.read_to_end(RECORD_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("the SSE stream on shutdown: {e}"));
    let close = loop {
        match tokio::time::timeout(RECORD_WITHIN, ws.next()).await {
            Ok(Some(Ok(tungstenite::Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("the close frame carries a code");
    assert_eq!(u16::from(close.code), 1001, "going away: {close:?}");
    assert!(
        close.reason.as_str().contains("shutting down"),
        "clear reason: {close:?}"
    );
}

/// The members of `group` as `GET /v1/groups/{g}` lists them (none when it is gone).
async fn member_ids(
    client: &reqwest::Client,
    base: &str,
    group: &str,
) -> Result<Vec<String>, String> {
    let response = client
        .get(format!("{base}/v1/groups/{group}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() == 404 {
        return Ok(Vec::new());
    }
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(body["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["member_id"].as_str().map(str::to_string))
        .collect())
}

// A member stream that closes keeps its member for the re-attach grace (5 s), so
// a reconnect (a browser EventSource reconnects by itself) re-attaches instead of meeting
// 409 and resumes at the committed offsets; without a reconnect the member leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stream_reconnect_reattaches_at_the_committed_offsets() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    let base = cluster.http(1);
    cluster.node(1).create_topic("rt", 1, 1).await;
    let a = join(&client, &base, "rg", "rt").await;
    for n in 0..4 {
        cluster.node(1).publish("rt", &[value_record(0, n)]).await;
    }
    let url = format!("{base}/v1/groups/rg/members/{a}/stream");
    let mut stream = open_sse(&client, &url, None).await;
    let generation = next_assignment(&mut stream).await["generation"]
        .as_u64()
        .expect("generation");
    let first: Vec<u64> = read_records(&mut stream, 4)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(first, vec![0, 1, 2, 3]);
    let commit = client
        .post(format!("{base}/v1/groups/rg/offsets"))
        .json(&json!({"member_id": a, "generation": generation,
                      "offsets": [{"topic": "rt", "partition": 0, "offset": 2}]}))
        .send()
        .await
        .expect("commit");
    assert_eq!(commit.status(), 204, "commit 2");

    // The connection breaks; the client reconnects at once.
    drop(stream);
    let mut stream = open_sse(&client, &url, None).await;
    next_assignment(&mut stream).await;
    let resumed = read_records(&mut stream, 2).await;
    assert_eq!(
        resumed,
        vec![("0-2".to_string(), 2), ("0-3".to_string(), 3)],
        "resumes at the committed offset"
    );
    // Past the grace the re-attached member is still in the group and its stream works.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(member_ids(&client, &base, "rg").await, Ok(vec![a.clone()]));
    cluster.node(1).publish("rt", &[value_record(0, 4)]).await;
    assert_eq!(
        read_records(&mut stream, 1).await,
        vec![("0-4".to_string(), 4)]
    );

    // Closed for good: the member leaves once the grace is over.
    drop(stream);
    eventually(Duration::from_secs(10), "the member left", || {
        let client = client.clone();
        let base = base.clone();
        async move {
            match member_ids(&client, &base, "rg").await? {
                ids if ids.is_empty() => Ok(()),
                ids => Err(format!("members {ids:?}")),
            }
        }
    })
    .await;
}
