//! WebSocket: `GET /v1/ws` against real node processes, with a
//! tokio-tungstenite client. docs/api.md § Streams.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use psubd_tests::{eventually, Cluster};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
const FRAME_WITHIN: Duration = Duration::from_secs(15);

/// How long a test watches for frames that must not come.
const QUIET_FOR: Duration = Duration::from_millis(1_500);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the JSON operations.
struct Ws {
    socket: Socket,
}

impl Ws {
    async fn connect(base: &str) -> Ws {
        let url = format!("{}/v1/ws", base.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("WebSocket connect");
        Ws { socket }
    }

    async fn send(&mut self, op: Value) {
        self.socket
            .send(Message::text(op.to_string()))
            .await
            .expect("send an operation");
    }

    /// The next JSON frame within `within`, or None.
    async fn next_within(&mut self, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, self.socket.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("frames are JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => panic!("closed by the server: {frame:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("the connection ended: {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> Value {
        self.next_within(FRAME_WITHIN)
            .await
            .expect("a frame in time")
    }

    /// The reply to the request with this id (records and assignments meanwhile are
    /// collected into `other`).
    async fn reply(&mut self, id: &str, other: &mut Vec<Value>) -> Value {
        loop {
            let frame = self.next().await;
            if frame["id"] == id && frame["type"] != "record" {
                return frame;
            }
            other.push(frame);
        }
    }

    /// Sends `op` with `id` and returns its reply.
    async fn call(&mut self, id: &str, mut op: Value, other: &mut Vec<Value>) -> Value {
        op["id"] = json!(id);
        self.send(op).await;
        self.reply(id, other).await
    }

    /// Records (`(partition, offset, n)`) of `subscription` until `count` arrived; other
    /// frames are kept in `seen`.
    async fn records(
        &mut self,
        subscription: u64,
        count: usize,
        seen: &mut Vec<Value>,
    ) -> Vec<(u64, u64, u64)> {
        let is_ours = |f: &Value| f["type"] == "record" && f["subscription"] == subscription;
        let mut out: Vec<(u64, u64, u64)> =
            seen.iter().filter(|f| is_ours(f)).map(record_of).collect();
        seen.retain(|f| !is_ours(f));
        while out.len() < count {
            let frame = self.next().await;
            if is_ours(&frame) {
                out.push(record_of(&frame));
            } else {
                seen.push(frame);
            }
        }
        out
    }
}

fn record_of(frame: &Value) -> (u64, u64, u64) {
    let record = &frame["record"];
    (
        record["partition"].as_u64().unwrap(),
        record["offset"].as_u64().unwrap(),
        record["value"]["n"].as_u64().unwrap(),
    )
}

fn records(range: std::ops::Range<u64>) -> Value {
    Value::Array(
        range
            .map(|n| json!({"value": {"n": n}, "partition": 0}))
            .collect(),
    )
}

// docs/api.md § Streams: over one WebSocket a client publishes (ack with offsets, errors with
// the request id and the catalog's body), subscribes to a partition under credit (never a
// record beyond it), joins a group, commits explicitly, and after reconnecting resumes
// at its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_publish_subscribe_credit_commit_resume() {
    let cluster = Cluster::start(3).await;
    cluster.node(1).create_topic("wt", 1, 3).await;
    let mut ws = Ws::connect(&cluster.http(2)).await;
    let mut other = Vec::new();

    // Publish: same semantics as HTTP publish (retried while the new partition elects).
    let ack = eventually(FRAME_WITHIN, "a publish acknowledged", || {
        let base = cluster.http(2);
        async move {
            let mut ws = Ws::connect(&base).await;
            let ack = ws
                .call(
                    "warm",
                    json!({"op": "publish", "topic": "wt", "records": records(0..1)}),
                    &mut Vec::new(),
                )
                .await;
            if ack["type"] == "ack" {
                Ok(ack)
            } else {
                Err(ack.to_string())
            }
        }
    })
    .await;
    assert_eq!(ack["offsets"][0]["offset"], 0, "{ack}");
    let ack = ws
        .call(
            "p1",
            json!({"op": "publish", "topic": "wt", "records": records(1..5)}),
            &mut other,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let offsets: Vec<u64> = ack["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2, 3, 4], "offsets in request order");
    let error = ws
        .call(
            "p2",
            json!({"op": "publish", "topic": "nope", "records": records(0..1)}),
            &mut other,
        )
        .await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"], "topic_not_found", "{error}");
    assert_eq!(error["error_code"], 40401);
    let error = ws.call("p3", json!({"op": "fly"}), &mut other).await;
    assert_eq!(error["error"], "invalid_request", "{error}");

    // Subscribe to the partition with credit 2: exactly two records, then nothing more.
    let ack = ws
        .call(
            "s1",
            json!({"op": "subscribe", "topic": "wt", "partition": 0, "offset": 0, "credit": 2}),
            &mut other,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let sub = ack["subscription"].as_u64().unwrap();
    let first = ws.records(sub, 2, &mut other).await;
    assert_eq!(first, vec![(0, 0, 0), (0, 1, 1)]);
    let quiet = ws.next_within(QUIET_FOR).await;
    assert!(
        quiet.is_none(),
        "no record beyond the granted credit: {quiet:?}"
    );
    ws.send(json!({"op": "credit", "subscription": sub, "n": 3}))
        .await;
    let rest = ws.records(sub, 3, &mut other).await;
    assert_eq!(rest, vec![(0, 2, 2), (0, 3, 3), (0, 4, 4)]);
    let quiet = ws.next_within(QUIET_FOR).await;
    assert!(quiet.is_none(), "credit used up: {quiet:?}");

    // Group membership over the socket: join, read, commit after offset 2.
    let ack = ws
        .call(
            "g1",
            json!({"op": "subscribe", "group": "wg", "topics": ["wt"],
                   "auto_offset_reset": "earliest", "credit": 3}),
            &mut other,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let gsub = ack["subscription"].as_u64().unwrap();
    let member = ack["member_id"].as_str().unwrap().to_string();
    let got = ws.records(gsub, 3, &mut other).await;
    assert_eq!(got, vec![(0, 0, 0), (0, 1, 1), (0, 2, 2)]);
    let generation = other
        .iter()
        .rev()
        .find(|f| f["type"] == "assignment" && f["subscription"] == gsub)
        .map(|f| f["generation"].as_u64().unwrap())
        .expect("an assignment frame for the group subscription");
    let ack = ws
        .call(
            "c1",
            json!({"op": "commit", "group": "wg", "member_id": member,
                   "generation": generation,
                   "offsets": [{"topic": "wt", "partition": 0, "offset": 3}]}),
            &mut other,
        )
        .await;
    assert_eq!(ack["type"], "ack", "commit acknowledged: {ack}");
    let stale = ws
        .call(
            "c2",
            json!({"op": "commit", "group": "wg", "member_id": member,
                   "generation": generation + 100,
                   "offsets": [{"topic": "wt", "partition": 0, "offset": 4}]}),
            &mut other,
        )
        .await;
    assert_eq!(stale["error"], "stale_generation", "{stale}");

    // Reconnect (the old member leaves with its connection): a new member resumes at the
    // commit, not at what the old connection was sent.
    drop(ws);
    let mut ws = Ws::connect(&cluster.http(3)).await;
    let mut other = Vec::new();
    let ack = ws
        .call(
            "g2",
            json!({"op": "subscribe", "group": "wg", "topics": ["wt"],
                   "auto_offset_reset": "earliest", "credit": 100}),
            &mut other,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let gsub = ack["subscription"].as_u64().unwrap();
    let resumed = ws.records(gsub, 2, &mut other).await;
    assert_eq!(
        resumed,
        vec![(0, 3, 3), (0, 4, 4)],
        "resumes at the committed offset 3"
    );
    let committed: Value = cluster
        .client()
        .get(format!("{}/v1/groups/wg/offsets", cluster.http(1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        committed["offsets"][0]["offset"], 3,
        "delivery never commits: {committed}"
    );

    // A message past the node's request limit (10 MiB by default) closes that connection
    // with 1009 (message too big); the node goes on serving others.
    let mut big = Ws::connect(&cluster.http(3)).await;
    let oversized = "x".repeat(11 << 20);
    // The server may close while the message is still being written: either way the
    // close frame it sent is what must be read.
    let _ = big.socket.send(Message::text(oversized)).await;
    let code = loop {
        match tokio::time::timeout(FRAME_WITHIN, big.socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(Message::Close(None)))) => panic!("closed without a code"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame after an oversized message: {other:?}"),
        }
    };
    assert_eq!(code, 1009, "close code for an oversized message");
    let mut after = Ws::connect(&cluster.http(3)).await;
    let ack = after
        .call(
            "after",
            json!({"op": "publish", "topic": "wt", "records": records(5..6)}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(ack["type"], "ack", "the node still serves: {ack}");
}
