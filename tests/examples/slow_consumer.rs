//! Backpressure proof: consumers that read nothing for 30 s while 100 MB is
//! published must not grow node memory without bound.
//!
//! Starts a 3-node cluster from the release binary, opens on partition 0 an SSE stream
//! (node 1), a WebSocket subscription with unlimited credit (node 2) and a group member
//! SSE stream (node 3), reads none of them for 30 s while 100 MB of records is
//! published, samples every node's RSS each second, then drains every stream and checks
//! that each delivered every record in order. Prints the RSS table and each node's max.
//!
//! ```text
//! cargo build --release -p psubd
//! cargo run --release -p psubd-tests --example slow_consumer
//! ```
//!
//! Settings by environment: `SLOW_MB` (default 100), `SLOW_STALL_S` (default 30),
//! `SLOW_RECORD_KB` (default 10), `SLOW_CONSUMERS=0` for the control run (the same
//! publishing with no consumer at all: what the streams add is the difference).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use psubd_tests::{eventually, Cluster, NewRecord};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of a process, MiB (from /proc/<pid>/status).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Sampler {
    pids: Vec<u32>,
    /// (seconds since start, RSS MiB per node).
    rows: Vec<(f64, Vec<f64>)>,
    max: Vec<f64>,
    start: Instant,
}

impl Sampler {
    fn sample(&mut self, phase: &'static str) {
        let rss: Vec<f64> = self
            .pids
            .iter()
            .map(|p| rss_mib(*p).unwrap_or(0.0))
            .collect();
        for (m, r) in self.max.iter_mut().zip(&rss) {
            *m = m.max(*r);
        }
        let t = self.start.elapsed().as_secs_f64();
        println!(
            "{t:6.1} s  {phase:<10} {}",
            rss.iter()
                .map(|r| format!("{r:8.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.rows.push((t, rss));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total_mb = setting("SLOW_MB", 100);
    let stall = Duration::from_secs(setting("SLOW_STALL_S", 30));
    let record_kb = setting("SLOW_RECORD_KB", 10);
    let consumers = setting("SLOW_CONSUMERS", 1) != 0;
    let per_request = (1024 / record_kb).max(1) as usize; // ~1 MiB per publish
    let total_records = (total_mb * 1024 / record_kb) as usize;

    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    cluster.node(1).create_topic("slow", 1, 3).await;
    let pids: Vec<u32> = (1..=3)
        .map(|id| cluster.pid(id).expect("node pid"))
        .collect();
    let mut sampler = Sampler {
        pids,
        rows: Vec::new(),
        max: vec![0.0; 3],
        start: Instant::now(),
    };
    println!("RSS MiB per node        node1    node2    node3");
    sampler.sample("idle");

    if !consumers {
        return control(cluster, sampler, total_records, record_kb, per_request).await;
    }
    // The stalled consumers.
    let sse = client
        .get(format!(
            "{}/v1/topics/slow/partitions/0/stream?offset=0",
            cluster.http(1)
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open the SSE stream");
    assert_eq!(sse.status(), 200);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/v1/ws",
        cluster.http(2).replace("http://", "ws://")
    ))
    .await
    .expect("WebSocket");
    ws.send(Message::text(
        json!({"op": "subscribe", "id": "s", "topic": "slow", "partition": 0,
               "offset": 0, "credit": 1u64 << 40})
        .to_string(),
    ))
    .await
    .expect("subscribe");
    let ack = ws.next().await.expect("ack").expect("ack frame");
    let ack: Value = serde_json::from_str(ack.to_text().expect("text")).expect("json");
    assert_eq!(ack["type"], "ack", "{ack}");
    let join_url = format!("{}/v1/groups/slow-g/members", cluster.http(3));
    let joined: Value = eventually(Duration::from_secs(30), "a join answered 201", || {
        let request = client.post(&join_url).json(&json!({
            "topics": ["slow"], "auto_offset_reset": "earliest", "session_timeout_ms": 10_000
        }));
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body: Value = response.json().await.map_err(|e| e.to_string())?;
            if status == 201 {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        }
    })
    .await;
    let member = joined["member_id"].as_str().expect("member_id").to_string();
    let member_stream = client
        .get(format!(
            "{}/v1/groups/slow-g/members/{member}/stream",
            cluster.http(3)
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open the member stream");
    assert_eq!(member_stream.status(), 200);
    let stalled_from = Instant::now();

    // Publish 100 MB while nobody reads.
    let publisher = tokio::spawn(publish(
        cluster.node(2),
        total_records,
        record_kb,
        per_request,
    ));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut published_in = None;
    while stalled_from.elapsed() < stall || published_in.is_none() {
        ticker.tick().await;
        if published_in.is_none() && publisher.is_finished() {
            published_in = Some(());
        }
        sampler.sample(if published_in.is_none() {
            "publishing"
        } else {
            "stalled"
        });
    }
    let publish_time = publisher.await.expect("publisher");
    println!(
        "published {total_records} records of {record_kb} KiB ({total_mb} MiB) in {:.1} s; \
         consumers read nothing for {:.0} s",
        publish_time.as_secs_f64(),
        stalled_from.elapsed().as_secs_f64()
    );

    // Drain every consumer; each must deliver every record once, in order.
    let drain_started = Instant::now();
    let expected = total_records as u64;
    let sse_count = tokio::spawn(count_sse(sse, expected));
    let member_count = tokio::spawn(count_sse(member_stream, expected));
    let ws_count = tokio::spawn(count_ws(ws, expected));
    while !(sse_count.is_finished() && member_count.is_finished() && ws_count.is_finished()) {
        ticker.tick().await;
        sampler.sample("draining");
    }
    let drain_time = drain_started.elapsed();
    let sse_seen = sse_count.await.expect("SSE consumer");
    let member_seen = member_count.await.expect("member stream consumer");
    let ws_seen = ws_count.await.expect("WebSocket consumer");
    sampler.sample("drained");
    println!(
        "drained in {:.1} s: SSE {sse_seen}, member stream {member_seen}, WebSocket {ws_seen} \
         of {expected} records, each in order without gap or repeat",
        drain_time.as_secs_f64()
    );
    let idle = &sampler.rows[0].1;
    for (i, max) in sampler.max.iter().enumerate() {
        println!(
            "node {}: RSS idle {:.1} MiB, max {:.1} MiB",
            i + 1,
            idle[i],
            max
        );
    }
}

/// Publishes `total` records of `record_kb` KiB to partition 0, `per_request` at a time;
/// returns how long it took.
async fn publish(
    node: psubd_tests::NodeClient,
    total: usize,
    record_kb: u64,
    per_request: usize,
) -> Duration {
    let value = "x".repeat(record_kb as usize * 1024 - 16);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = per_request.min(total - sent);
        let batch: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord {
                key: None,
                value: json!(format!("{:08}{value}", sent + i)),
                headers: None,
                partition: Some(0),
            })
            .collect();
        node.publish("slow", &batch).await;
        sent += n;
    }
    started.elapsed()
}

/// The control run: the same publishing, no consumer.
async fn control(
    cluster: Cluster,
    mut sampler: Sampler,
    total: usize,
    record_kb: u64,
    per_request: usize,
) {
    let publisher = tokio::spawn(publish(cluster.node(2), total, record_kb, per_request));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !publisher.is_finished() {
        ticker.tick().await;
        sampler.sample("publishing");
    }
    let took = publisher.await.expect("publisher");
    sampler.sample("published");
    println!(
        "control (no consumers): published {total} records of {record_kb} KiB in {:.1} s",
        took.as_secs_f64()
    );
    let idle = &sampler.rows[0].1;
    for (i, max) in sampler.max.iter().enumerate() {
        println!(
            "node {}: RSS idle {:.1} MiB, max {:.1} MiB",
            i + 1,
            idle[i],
            max
        );
    }
}

/// Reads a WebSocket subscription's records to `expected`; checks offsets are 0, 1, ...
async fn count_ws(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    expected: u64,
) -> u64 {
    let mut next = 0u64;
    while next < expected {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a WebSocket frame within 60 s")
            .expect("the WebSocket is open")
            .expect("a frame");
        let Message::Text(text) = frame else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).expect("json frame");
        assert_eq!(frame["type"], "record", "{frame}");
        assert_eq!(frame["record"]["offset"], next, "WebSocket in order");
        next += 1;
    }
    next
}

/// Reads an SSE response to the end of `expected` records; checks offsets are 0, 1, ...
async fn count_sse(response: reqwest::Response, expected: u64) -> u64 {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut next = 0u64;
    while next < expected {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("SSE data within 60 s")
            .expect("the stream is open")
            .expect("a chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id:")) {
                let offset: u64 = id
                    .trim()
                    .rsplit('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .expect("id <partition>-<offset>");
                assert_eq!(offset, next, "SSE in order without gap or repeat");
                next += 1;
            }
        }
    }
    next
}
