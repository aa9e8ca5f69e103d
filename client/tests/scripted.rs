//! psubd-client against a scripted HTTP server: the retry rules (what is retried, how
//! often, after how long), answers that break the contract (never a panic), the
//! producer's handling of 207 rows and of batches refused because of one record, the
//! bearer token, and a group member's re-join and position tokens. The behaviour against
//! real nodes is in `tests/tests/client.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psubd_client::{
    Client, Error, GroupConfig, GroupConsumer, NewRecord, Producer, ProducerConfig, TopicSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One scripted answer.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn error(status: u16, code: &str) -> Reply {
    let retriable = matches!(status, 503 | 504 | 507);
    reply(
        status,
        &format!(
            r#"{{"error_code":{},"error":"{code}","message":"scripted {code}","retriable":{retriable}}}"#,
            u32::from(status) * 100 + 1
        ),
    )
}

/// A request as the server saw it: the request line, headers (lower-case) and body.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: String,
    body: String,
}

/// Serves the replies in order, one per connection (`Connection: close`), and records the
/// requests; past the script every request gets a 500.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    async fn start(replies: Vec<Reply>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut replies = replies.into_iter();
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(request) = read_request(&mut stream).await else {
                    continue;
                };
                log.lock().expect("log").push(request);
                let reply = replies
                    .next()
                    .unwrap_or_else(|| error(500, "script_exhausted"));
                let mut head = format!(
                    "HTTP/1.1 {} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    reply.status,
                    reply.body.len()
                );
                for (name, value) in &reply.headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(reply.body.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Scripted { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let original = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    Some(Seen {
        line: original.lines().next().unwrap_or_default().to_string(),
        headers: head,
        body: String::from_utf8_lossy(&buf[head_end..]).into_owned(),
    })
}

const TOPIC: &str = r#"{"name":"t","partitions":1,"replication_factor":1,"retention_ms":1,"retention_bytes":-1,"cleanup_policy":"delete","delete_retention_ms":1,"duplicate_window_ms":120000}"#;

/// A producer sending every request to the seed: the script answers publishes only, not
/// the metadata read of leader routing (the end-to-end tests cover routing).
fn seeds_only() -> ProducerConfig {
    ProducerConfig {
        route_to_leaders: false,
        ..ProducerConfig::default()
    }
}

fn quick(server: &Scripted) -> psubd_client::ClientBuilder {
    Client::builder([server.url()]).max_retry_after(Duration::from_millis(100))
}

#[tokio::test]
async fn a_503_is_sent_again_after_retry_after_and_then_succeeds() {
    let mut unavailable = error(503, "not_available");
    unavailable.headers.push(("retry-after", "1".into()));
    let server = Scripted::start(vec![unavailable, reply(201, TOPIC)]).await;
    let client = quick(&server).build().expect("client");
    let start = Instant::now();
    let topic = client.admin().create_topic(&TopicSpec::new("t")).await;
    assert_eq!(topic.map(|t| t.name).ok().as_deref(), Some("t"));
    assert_eq!(server.seen().len(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "waited the (capped) Retry-After"
    );
}

#[tokio::test]
async fn retries_of_503_429_507_are_bounded() {
    for code in [
        (503, "not_available"),
        (429, "too_many_streams"),
        (507, "insufficient_storage"),
    ] {
        let server = Scripted::start((0..5).map(|_| error(code.0, code.1)).collect()).await;
        let client = quick(&server).max_attempts(3).build().expect("client");
        let result = client.admin().list_topics().await;
        assert_eq!(server.seen().len(), 3, "{code:?}: three attempts");
        match result {
            Err(Error::Api { status, body, .. }) => {
                assert_eq!((status, body.error.as_str()), code);
                assert_eq!(body.message, format!("scripted {}", code.1));
            }
            other => panic!("{code:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unknown_outcome_or_a_client_error_is_not_retried() {
    let server = Scripted::start(vec![
        error(504, "outcome_unknown"),
        error(404, "topic_not_found"),
    ])
    .await;
    let client = quick(&server).build().expect("client");
    let first = client.publish("t", vec![NewRecord::new(1)]).await;
    assert_eq!(
        first.as_ref().err().and_then(Error::code),
        Some("outcome_unknown")
    );
    let second = client.admin().describe_topic("t").await;
    assert_eq!(
        second.as_ref().err().and_then(Error::error_code),
        Some(40401)
    );
    assert!(second
        .err()
        .is_some_and(|e| e.to_string().contains("scripted topic_not_found")));
    assert_eq!(server.seen().len(), 2, "one request each");
}

#[tokio::test]
async fn a_read_answered_504_is_sent_again() {
    let server = Scripted::start(vec![error(504, "outcome_unknown"), reply(200, "[]")]).await;
    let client = quick(&server).build().expect("client");
    assert_eq!(
        client.admin().list_topics().await.map(|t| t.len()).ok(),
        Some(0)
    );
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn answers_that_break_the_contract_are_errors_not_panics() {
    let server = Scripted::start(vec![
        reply(200, "not json"),
        reply(200, r#"{"name":1}"#),
        reply(500, "<html>proxy error</html>"),
        reply(201, TOPIC),
        reply(200, r#"{"offsets":[]}"#),
        reply(418, ""),
    ])
    .await;
    let client = quick(&server).build().expect("client");
    let admin = client.admin();
    assert!(matches!(
        admin.list_topics().await,
        Err(Error::Unexpected { status: 200, .. })
    ));
    assert!(matches!(
        admin.describe_topic("t").await,
        Err(Error::Unexpected { status: 200, .. })
    ));
    assert!(matches!(
        admin.cluster().await,
        Err(Error::Unexpected { status: 500, .. })
    ));
    // A success status other than the documented one is unexpected too.
    assert!(matches!(
        admin.describe_topic("t").await,
        Err(Error::Unexpected { status: 201, .. })
    ));
    // A publish answer without one report per record fails every record, no panic.
    let producer = Producer::with_config(quick(&server).build().expect("client"), seeds_only());
    let delivery = producer.send("t", NewRecord::new(1)).await.expect("queued");
    assert!(matches!(delivery.await, Err(Error::Unexpected { .. })));
    assert!(matches!(
        admin.delete_topic("t").await,
        Err(Error::Unexpected { status: 418, .. })
    ));
}

#[tokio::test]
async fn an_unreachable_seed_is_skipped_and_the_token_is_sent() {
    let server = Scripted::start(vec![reply(200, "[]")]).await;
    let client = Client::new(["http://127.0.0.1:1".to_string(), server.url()])
        .expect("client")
        .with_token("s3cret");
    assert_eq!(
        client.admin().list_groups().await.map(|g| g.len()).ok(),
        Some(0)
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].headers.contains("authorization: bearer s3cret"),
        "{}",
        seen[0].headers
    );
    let nobody = Client::new(["http://127.0.0.1:1"]).expect("client");
    match nobody.admin().list_groups().await {
        Err(
            e @ Error::Transport {
                maybe_sent: false, ..
            },
        ) => assert!(e.is_retriable()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_producer_resends_only_what_a_207_says_was_not_written() {
    let server = Scripted::start(vec![
        reply(
            207,
            r#"{"offsets":[{"offset":5,"partition":0,"timestamp_ms":1},
            {"partition":1,"error_code":50301,"error":"not_available","message":"no leader","retriable":true},
            {"partition":2,"error_code":50401,"error":"outcome_unknown","message":"maybe","retriable":true}]}"#,
        ),
        reply(200, r#"{"offsets":[{"offset":9,"partition":1,"timestamp_ms":2}]}"#),
    ])
    .await;
    let producer = Producer::with_config(
        quick(&server).build().expect("client"),
        ProducerConfig {
            linger: Duration::from_millis(50),
            retry_pause: Duration::from_millis(1),
            ..seeds_only()
        },
    );
    let mut deliveries = Vec::new();
    for value in ["a", "b", "c"] {
        deliveries.push(
            producer
                .send("t", NewRecord::new(value))
                .await
                .expect("queued"),
        );
    }
    let mut results = Vec::new();
    for delivery in deliveries {
        results.push(delivery.await);
    }
    assert_eq!(
        results[0].as_ref().ok().map(|d| (d.partition, d.offset)),
        Some((0, 5))
    );
    assert_eq!(
        results[1].as_ref().ok().map(|d| (d.partition, d.offset)),
        Some((1, 9))
    );
    assert_eq!(
        results[2].as_ref().err().and_then(Error::code),
        Some("outcome_unknown")
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "one resend");
    assert!(
        seen[1].body.contains("\"b\"") && !seen[1].body.contains("\"c\""),
        "{}",
        seen[1].body
    );
    producer.close().await;
}

#[tokio::test]
async fn a_batch_refused_for_one_record_is_split_until_it_fails_alone() {
    let ok = |offset: u64| {
        reply(
            200,
            &format!(r#"{{"offsets":[{{"offset":{offset},"partition":0,"timestamp_ms":1}}]}}"#),
        )
    };
    let server = Scripted::start(vec![
        error(413, "record_too_large"), // [a, b, c]
        ok(0),                          // [a]
        error(413, "record_too_large"), // [b, c]
        ok(1),                          // [b]
        error(413, "record_too_large"), // [c]
    ])
    .await;
    let producer = Producer::with_config(
        quick(&server).build().expect("client"),
        ProducerConfig {
            linger: Duration::from_millis(50),
            ..seeds_only()
        },
    );
    let mut deliveries = Vec::new();
    for value in ["a", "b", "c"] {
        deliveries.push(
            producer
                .send("t", NewRecord::new(value))
                .await
                .expect("queued"),
        );
    }
    let mut results = Vec::new();
    for delivery in deliveries {
        results.push(delivery.await);
    }
    assert_eq!(results[0].as_ref().ok().map(|d| d.offset), Some(0));
    assert_eq!(results[1].as_ref().ok().map(|d| d.offset), Some(1));
    assert_eq!(
        results[2].as_ref().err().and_then(Error::code),
        Some("record_too_large")
    );
    assert_eq!(server.seen().len(), 5);
    producer.close().await;
}

#[tokio::test]
async fn a_fenced_member_joins_again_and_confirms_with_its_position_token() {
    let record = |offset: u64| {
        format!(
            r#"{{"topic":"t","partition":0,"offset":{offset},"timestamp_ms":1,"key":null,"value":{offset},"headers":{{}}}}"#
        )
    };
    let server = Scripted::start(vec![
        reply(
            201,
            r#"{"member_id":"aaaa","generation":1,"assignments":[{"topic":"t","partition":0}]}"#,
        ),
        error(409, "member_fenced"),
        reply(
            201,
            r#"{"member_id":"bbbb","generation":2,"assignments":[{"topic":"t","partition":0}]}"#,
        ),
        reply(
            200,
            &format!(
                r#"{{"records":[{}],"generation":2,"position":"2.1"}}"#,
                record(0)
            ),
        ),
        reply(
            200,
            &format!(
                r#"{{"records":[{}],"generation":2,"position":"2.2"}}"#,
                record(1)
            ),
        ),
        reply(204, ""),
    ])
    .await;
    let client = quick(&server).build().expect("client");
    let mut member = GroupConsumer::join(client, "g", &["t"], GroupConfig::default())
        .await
        .expect("join");
    let first = member.poll().await.expect("poll after a re-join");
    assert_eq!(first.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0]);
    assert_eq!(member.member_id(), Some("bbbb"));
    let second = member.poll().await.expect("poll");
    assert_eq!(second.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1]);
    member.commit().await.expect("commit");
    let seen = server.seen();
    assert!(
        seen[1].line.contains("/members/aaaa/records"),
        "{}",
        seen[1].line
    );
    assert!(
        seen[3].line.contains("/members/bbbb/records") && !seen[3].line.contains("position="),
        "{}",
        seen[3].line
    );
    assert!(
        seen[4].line.contains("position=2.1"),
        "the next poll confirms the answer handed out: {}",
        seen[4].line
    );
    let commit: serde_json::Value = serde_json::from_str(&seen[5].body).expect("commit body");
    assert_eq!(
        commit,
        serde_json::json!({"member_id":"bbbb","generation":2,"offsets":[{"topic":"t","partition":0,"offset":2}]})
    );
}

#[tokio::test]
async fn the_producer_sends_to_the_leader_the_metadata_names_and_else_to_the_seeds() {
    let leader = Scripted::start(vec![reply(
        200,
        r#"{"offsets":[{"offset":7,"partition":0,"timestamp_ms":1}]}"#,
    )])
    .await;
    // Node 3 leads partition 1 and is called alive, but nothing listens at its URL.
    let cluster = format!(
        r#"{{"node_id":1,"controller_leader":1,"nodes":[
          {{"id":2,"raft":"127.0.0.1:9","http":"{}","alive":true}},
          {{"id":3,"raft":"127.0.0.1:9","http":"http://127.0.0.1:1","alive":true}}],
         "partitions":[{{"topic":"t","partition":0,"replicas":[2,3],"leader":2}},
                       {{"topic":"t","partition":1,"replicas":[2,3],"leader":3}}]}}"#,
        leader.url()
    );
    let seed = Scripted::start(vec![
        reply(200, &cluster),
        reply(200, &cluster),
        reply(
            200,
            r#"{"offsets":[{"offset":3,"partition":1,"timestamp_ms":1}]}"#,
        ),
    ])
    .await;
    let producer = Producer::with_config(
        quick(&seed).build().expect("client"),
        ProducerConfig {
            linger: Duration::from_millis(50),
            // Past the least interval between metadata reads, so the resend reads again.
            retry_pause: Duration::from_millis(300),
            ..ProducerConfig::default()
        },
    );
    let to_leader = producer
        .send("t", NewRecord::new("a").partition(0))
        .await
        .expect("queued");
    let to_dead = producer
        .send("t", NewRecord::new("b").partition(1))
        .await
        .expect("queued");
    assert_eq!(to_leader.await.ok().map(|d| d.offset), Some(7));
    assert_eq!(to_dead.await.ok().map(|d| d.offset), Some(3));
    producer.close().await;

    let at_leader = leader.seen();
    assert_eq!(at_leader.len(), 1, "{at_leader:?}");
    assert!(at_leader[0].line.starts_with("POST /v1/topics/t/records"));
    assert!(at_leader[0].body.contains("\"a\"") && !at_leader[0].body.contains("\"b\""));
    // The unreachable leader's record was not sent to it again: the metadata was read
    // again and the record went to the seed, whose node forwards it.
    let at_seed: Vec<String> = seed.seen().iter().map(|s| s.line.clone()).collect();
    assert_eq!(at_seed.len(), 3, "{at_seed:?}");
    assert!(at_seed[0].starts_with("GET /v1/cluster"), "{at_seed:?}");
    assert!(at_seed[1].starts_with("GET /v1/cluster"), "{at_seed:?}");
    assert!(
        at_seed[2].starts_with("POST /v1/topics/t/records"),
        "{at_seed:?}"
    );
    assert!(seed.seen()[2].body.contains("\"b\""));
}
