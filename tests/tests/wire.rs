//! psubd-wire against a real cluster: every route's answer decodes into its wire type,
//! and re-encoding the typed value gives back the node's JSON (nulls aside), so a field
//! the node sends and the type does not model — or models with another shape — fails
//! here. Request types are sent as they serialise; the node refuses unknown fields on its
//! JSON routes, so a request type naming a field the node does not know fails too.
//!
//! Raw reqwest, not psubd-client: this checks the types, not the client.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use psubd_tests::Cluster;
use psubd_wire::{
    Accepted, AssignmentStrategy, AutoOffsetReset, CleanupPolicy, ClusterInfo, CommitOffset,
    CommitRequest, DeliveryReport, ErrorBody, FetchResponse, GroupDescription, GroupOffsets,
    GroupSummary, Health, JoinRequest, JoinResponse, KeyScan, MemberFetchResponse, MoveReplicas,
    NewRecord, PartitionStatus, PublishRequest, PublishResponse, Readiness, Reassignment,
    Reassignments, Record, RecordReport, ResetEntry, ResetOffset, ResetRequest, ResetResponse,
    StreamItem, Topic, TopicSpec, TopicUpdate,
};
use psubd_wire::{
    Acl, NewKey, NewPrincipal, Operation, PatternType, Permission, Principal, PrincipalQuota,
    Quota, ResourceType, ServerFrame,
};
use reqwest::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// Bound on one request (the longest long-poll here is 1 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `value` without object members whose value is `null`, recursively: a type may leave
/// an absent optional field out where the node writes `null`.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Decodes `body` as `T` and checks that `T` re-encodes to the same JSON.
fn strict<T: DeserializeOwned + Serialize>(what: &str, body: &str) -> T {
    let original: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: the answer is not JSON ({e}): {body}"));
    let typed: T = serde_json::from_value(original.clone())
        .unwrap_or_else(|e| panic!("{what}: does not decode into its wire type ({e}): {body}"));
    let back = serde_json::to_value(&typed)
        .unwrap_or_else(|e| panic!("{what}: the wire type does not re-encode: {e}"));
    assert_eq!(
        without_nulls(back),
        without_nulls(original),
        "{what}: the wire type (left) does not model the node's answer (right) exactly"
    );
    typed
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// Sends a request and returns status and body.
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {} failed: {e}", self.base));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        (status, body)
    }

    /// The first `n` lines of an NDJSON stream; the stream is then dropped.
    async fn first_lines(&self, path: &str, n: usize) -> Vec<String> {
        let mut response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("stream {path}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "stream {path}");
        let mut text = String::new();
        while text.lines().count() < n || !text.ends_with('\n') {
            let chunk = response
                .chunk()
                .await
                .unwrap_or_else(|e| panic!("stream {path}: {e}"))
                .unwrap_or_else(|| panic!("stream {path} ended after {text:?}"));
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.lines().take(n).map(str::to_owned).collect()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl Serialize,
    ) -> (u16, String) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("request bodies serialise"));
        self.send(request).await
    }

    /// Asserts `status` and decodes the body strictly.
    fn expect<T: DeserializeOwned + Serialize>(
        what: &str,
        (status, body): (u16, String),
        want: u16,
    ) -> T {
        assert_eq!(status, want, "{what}: status (body: {body})");
        strict(what, &body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_in_its_wire_type() {
    let cluster = Cluster::start(3).await;
    let api = Api {
        http: cluster.client(),
        base: cluster.http(2),
    };
    use reqwest::Method;

    // Cluster.
    let health: Health = Api::expect("healthz", api.get("/healthz").await, 200);
    assert_eq!(health.status, "ok");
    let ready: Readiness = Api::expect("readyz", api.get("/readyz").await, 200);
    assert_eq!(ready.status, "ready");

    // Topics: every create field set, so the node vouches for each name.
    let spec = TopicSpec {
        name: "wire".into(),
        partitions: Some(2),
        replication_factor: Some(3),
        retention_ms: Some(3_600_000),
        retention_bytes: Some(-1),
        cleanup_policy: Some(CleanupPolicy::Delete),
        delete_retention_ms: Some(60_000),
        duplicate_window_ms: Some(30_000),
    };
    let topic: Topic = Api::expect(
        "create topic",
        api.json(Method::POST, "/v1/topics", &spec).await,
        201,
    );
    assert_eq!((topic.partitions, topic.retention_ms), (2, 3_600_000));
    assert_eq!(topic.duplicate_window_ms, 30_000);
    let compact = TopicSpec {
        cleanup_policy: Some(CleanupPolicy::Compact),
        ..TopicSpec::new("wire-table")
    };
    let _: Topic = Api::expect(
        "create compacted topic",
        api.json(Method::POST, "/v1/topics", &compact).await,
        201,
    );
    let topics: Vec<Topic> = Api::expect("list topics", api.get("/v1/topics").await, 200);
    assert_eq!(topics.len(), 2);
    let _: Topic = Api::expect("describe topic", api.get("/v1/topics/wire").await, 200);
    let update = TopicUpdate {
        retention_ms: Some(7_200_000),
        retention_bytes: Some(1 << 30),
        duplicate_window_ms: Some(60_000),
        partitions: None,
    };
    let altered: Topic = Api::expect(
        "alter topic",
        api.json(Method::PATCH, "/v1/topics/wire", &update).await,
        200,
    );
    assert_eq!(altered.retention_ms, 7_200_000);

    // Publish: every record field set.
    let request = PublishRequest {
        encoding: None,
        records: vec![
            NewRecord::new(json!({"total": 12}))
                .key("alice")
                .header("src", "web")
                .id("wire-1"),
            NewRecord {
                partition: Some(1),
                timestamp_ms: Some(1_700_000_000_000),
                ..NewRecord::new("plain")
            },
        ],
    };
    let published: PublishResponse = Api::expect(
        "publish",
        api.json(Method::POST, "/v1/topics/wire/records", &request)
            .await,
        200,
    );
    assert!(published
        .offsets
        .iter()
        .all(|r| matches!(r, RecordReport::Delivered(_))));
    // The id'd record again: its report is the duplicate's shape.
    let again: PublishResponse = Api::expect(
        "publish a duplicate",
        api.json(Method::POST, "/v1/topics/wire/records", &request)
            .await,
        200,
    );
    assert!(matches!(
        (&again.offsets[0], &published.offsets[0]),
        (RecordReport::Delivered(dup), RecordReport::Delivered(first))
            if dup.duplicate && dup.offset == first.offset
    ));
    let binary = PublishRequest {
        encoding: Some(psubd_wire::Encoding::Base64),
        records: vec![NewRecord::new("AP8=").partition(0)],
    };
    let _: PublishResponse = Api::expect(
        "publish base64",
        api.json(Method::POST, "/v1/topics/wire/records", &binary)
            .await,
        200,
    );
    let accepted: Accepted = Api::expect(
        "publish acks=0",
        api.json(Method::POST, "/v1/topics/wire/records?acks=0", &request)
            .await,
        202,
    );
    assert_eq!(accepted.accepted, 2);

    // An NDJSON publish: a good line and one refused alone (its report is an error).
    let ndjson = "{\"value\":1,\"partition\":0}\n{\"value\":2,\"partition\":9}\n";
    let (status, body) = api
        .send(
            api.http
                .post(format!("{}/v1/topics/wire/records:stream", api.base))
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(ndjson),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reports: Vec<RecordReport> = body.lines().map(|l| strict("ndjson report", l)).collect();
    assert!(matches!(reports[0], RecordReport::Delivered(_)), "{body}");
    match &reports[1] {
        RecordReport::Failed(f) => assert_eq!(f.error.error, "partition_not_found"),
        other => panic!("the line for partition 9 must fail: {other:?}"),
    }

    // Fetch, including a binary value (`encoding` on the record), and two error bodies.
    let fetched: FetchResponse = Api::expect(
        "fetch",
        api.get("/v1/topics/wire/partitions/0/records?offset=0")
            .await,
        200,
    );
    assert!(
        fetched.records.iter().any(|r| r.encoding.is_some()),
        "{fetched:?}"
    );
    let long_poll: FetchResponse = Api::expect(
        "long-poll",
        api.get("/v1/topics/wire/partitions/1/records?offset=latest&timeout_ms=200")
            .await,
        200,
    );
    assert!(long_poll.records.is_empty());
    let out_of_range: ErrorBody = Api::expect(
        "416",
        api.get("/v1/topics/wire/partitions/0/records?offset=999")
            .await,
        416,
    );
    assert!(out_of_range.high_watermark.is_some() && out_of_range.log_start_offset.is_some());
    let not_found: ErrorBody = Api::expect("404", api.get("/v1/topics/nope").await, 404);
    assert_eq!(
        (not_found.error.as_str(), not_found.status()),
        ("topic_not_found", 404)
    );

    // Partitions, after the writes (numbers present).
    let partitions: Vec<PartitionStatus> = Api::expect(
        "partitions",
        api.get("/v1/topics/wire/partitions").await,
        200,
    );
    assert_eq!(partitions.len(), 2);

    // Key views.
    let (status, body) = api
        .send(
            api.http
                .put(format!("{}/v1/topics/wire-table/keys/alice", api.base))
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"plan":"pro"}"#),
        )
        .await;
    let put: DeliveryReport = Api::expect("key put", (status, body), 200);
    let _: Record = Api::expect(
        "key get",
        api.get(&format!(
            "/v1/topics/wire-table/keys/alice?min_offset={}",
            put.offset
        ))
        .await,
        200,
    );
    let scan: KeyScan = Api::expect(
        "key scan",
        // Any replica answers: read one that has applied the put.
        api.get(&format!(
            "/v1/topics/wire-table/keys?prefix=a&min_offset={}",
            put.offset
        ))
        .await,
        200,
    );
    assert_eq!(scan.keys.len(), 1);
    let (status, body) = api
        .send(
            api.http
                .delete(format!("{}/v1/topics/wire-table/keys/alice", api.base)),
        )
        .await;
    let _: DeliveryReport = Api::expect("key delete", (status, body), 200);

    // Streams: the first items of a partition stream and of a member stream.
    let lines = api
        .first_lines("/v1/topics/wire/partitions/0/stream?offset=0", 1)
        .await;
    let item: StreamItem = strict("partition stream", &lines[0]);
    assert!(matches!(item, StreamItem::Record(_)), "{item:?}");
    let streamer = JoinRequest {
        topics: vec!["wire".into()],
        auto_offset_reset: Some(AutoOffsetReset::Earliest),
        ..JoinRequest::default()
    };
    let streaming: JoinResponse = Api::expect(
        "join a streaming member",
        api.json(Method::POST, "/v1/groups/wire-s/members", &streamer)
            .await,
        201,
    );
    let lines = api
        .first_lines(
            &format!("/v1/groups/wire-s/members/{}/stream", streaming.member_id),
            2,
        )
        .await;
    let items: Vec<StreamItem> = lines.iter().map(|l| strict("member stream", l)).collect();
    assert!(matches!(items[0], StreamItem::Assignment(_)), "{items:?}");
    assert!(matches!(items[1], StreamItem::Record(_)), "{items:?}");

    // Groups: every join field set.
    let join = JoinRequest {
        topics: vec!["wire".into()],
        session_timeout_ms: Some(30_000),
        auto_offset_reset: Some(AutoOffsetReset::Earliest),
        assignment_strategy: Some(AssignmentStrategy::RoundRobin),
    };
    let joined: JoinResponse = Api::expect(
        "join",
        api.json(Method::POST, "/v1/groups/wire-g/members", &join)
            .await,
        201,
    );
    let member = joined.member_id.clone();
    let fetch_path = format!("/v1/groups/wire-g/members/{member}/records?timeout_ms=1000");
    let first: MemberFetchResponse = Api::expect("member fetch", api.get(&fetch_path).await, 200);
    assert!(!first.records.is_empty());
    let summaries: Vec<GroupSummary> = Api::expect("list groups", api.get("/v1/groups").await, 200);
    assert!(
        summaries.iter().any(|g| g.group == "wire-g"),
        "{summaries:?}"
    );
    let described: GroupDescription =
        Api::expect("describe group", api.get("/v1/groups/wire-g").await, 200);
    assert_eq!(described.members.len(), 1);
    // A push subscription: its PUT and GET answers, and the `push` of its description.
    let push = psubd_wire::PushRequest {
        topics: vec!["wire".into()],
        endpoint: "http://127.0.0.1:9/wire".into(),
        secret: Some("s".into()),
        ..psubd_wire::PushRequest::default()
    };
    let _: psubd_wire::PushSubscription = Api::expect(
        "set push",
        api.json(Method::PUT, "/v1/groups/wire-push/push", &push)
            .await,
        200,
    );
    let _: psubd_wire::PushSubscription =
        Api::expect("get push", api.get("/v1/groups/wire-push/push").await, 200);
    let pushed: GroupDescription = Api::expect(
        "describe a push group",
        api.get("/v1/groups/wire-push").await,
        200,
    );
    assert!(pushed.push.is_some_and(|p| p.secret_set));
    let last = first.records.last().expect("records");
    let commit = CommitRequest {
        member_id: member.clone(),
        generation: first.generation,
        offsets: vec![CommitOffset {
            topic: last.topic.clone(),
            partition: last.partition,
            offset: last.offset + 1,
        }],
    };
    let (status, body) = api
        .json(Method::POST, "/v1/groups/wire-g/offsets", &commit)
        .await;
    assert_eq!(status, 204, "commit: {body}");
    let beyond = CommitRequest {
        offsets: vec![CommitOffset {
            offset: 1_000_000,
            ..commit.offsets[0].clone()
        }],
        ..commit.clone()
    };
    let refused: ErrorBody = Api::expect(
        "commit beyond the high watermark",
        api.json(Method::POST, "/v1/groups/wire-g/offsets", &beyond)
            .await,
        422,
    );
    assert!(refused.high_watermark.is_some(), "{refused:?}");
    let offsets: GroupOffsets = Api::expect(
        "group offsets",
        api.get("/v1/groups/wire-g/offsets").await,
        200,
    );
    assert_eq!(offsets.offsets.len(), 1);
    let (status, body) = api
        .send(
            api.http
                .delete(format!("{}/v1/groups/wire-g/members/{member}", api.base)),
        )
        .await;
    assert_eq!(status, 204, "leave: {body}");
    let reset = ResetRequest {
        offsets: vec![
            ResetEntry {
                topic: "wire".into(),
                partition: Some(1),
                offset: Some(ResetOffset::Earliest),
                timestamp_ms: None,
            },
            ResetEntry {
                topic: "wire".into(),
                partition: Some(0),
                offset: None,
                timestamp_ms: Some(0),
            },
        ],
    };
    let reset: ResetResponse = Api::expect(
        "reset",
        api.json(Method::PUT, "/v1/groups/wire-g/offsets", &reset)
            .await,
        200,
    );
    assert!(!reset.offsets.is_empty());

    access_routes(&api).await;
    websocket_frames(&api).await;
    move_routes(&api).await;

    // The cluster view, last: it lists every partition created above.
    let info: ClusterInfo = Api::expect("cluster", api.get("/v1/cluster").await, 200);
    assert_eq!(info.nodes.len(), 3);
}

/// Replica moves: a move that only reorders a partition's replicas (a new preferred
/// leader, the same voters), the moves in progress, and a decommission that three nodes
/// cannot afford (refused with the error body).
async fn move_routes(api: &Api) {
    use reqwest::Method;

    let partitions: Vec<PartitionStatus> = Api::expect(
        "partitions",
        api.get("/v1/topics/wire/partitions").await,
        200,
    );
    let mut replicas = partitions[0].replicas.clone();
    replicas.rotate_left(1);
    let started: Reassignment = Api::expect(
        "move replicas",
        api.json(
            Method::PUT,
            "/v1/topics/wire/partitions/0/replicas",
            &MoveReplicas {
                replicas: replicas.clone(),
            },
        )
        .await,
        202,
    );
    assert_eq!(started.to, replicas);
    let _: Reassignments = Api::expect("reassignments", api.get("/v1/reassignments").await, 200);
    let refused: ErrorBody = Api::expect(
        "decommission",
        api.json(Method::POST, "/v1/cluster/nodes/1/decommission", &())
            .await,
        409,
    );
    assert_eq!(refused.error, "move_conflict");
}

/// The admin's routes (a cluster without `--auth` lets any caller use them).
async fn access_routes(api: &Api) {
    use reqwest::Method;

    let made: NewPrincipal = Api::expect(
        "create principal",
        api.json(
            Method::POST,
            "/v1/principals",
            &NewPrincipal {
                name: "wire-p".into(),
            },
        )
        .await,
        201,
    );
    assert_eq!(made.name, "wire-p");
    let key: NewKey = Api::expect(
        "create key",
        api.send(
            api.http
                .post(format!("{}/v1/principals/wire-p/keys", api.base)),
        )
        .await,
        201,
    );
    assert!(key.key.starts_with(&format!("{}.", key.key_id)));
    let quota = Quota {
        produce_bytes_per_sec: Some(1 << 20),
        fetch_bytes_per_sec: None,
        requests_per_sec: Some(100),
    };
    let set: PrincipalQuota = Api::expect(
        "set quota",
        api.json(Method::PUT, "/v1/principals/wire-p/quota", &quota)
            .await,
        200,
    );
    assert_eq!(set.quota, quota);
    let principals: Vec<Principal> =
        Api::expect("list principals", api.get("/v1/principals").await, 200);
    let listed = principals
        .iter()
        .find(|p| p.name == "wire-p")
        .expect("the new principal is listed");
    assert_eq!(listed.key_ids, vec![key.key_id.clone()]);
    let acl = Acl {
        principal: "wire-p".into(),
        resource_type: ResourceType::Topic,
        pattern_type: PatternType::Prefixed,
        resource_name: "wire".into(),
        operation: Operation::Read,
        permission: Permission::Allow,
    };
    let created: Acl = Api::expect(
        "create ACL",
        api.json(Method::POST, "/v1/acls", &acl).await,
        201,
    );
    assert_eq!(created, acl);
    let acls: Vec<Acl> = Api::expect("list ACLs", api.get("/v1/acls?principal=wire-p").await, 200);
    assert_eq!(acls, vec![acl.clone()]);
    let (status, body) = api.json(Method::DELETE, "/v1/acls", &acl).await;
    assert_eq!(status, 204, "delete ACL: {body}");
    let (status, body) = api
        .send(api.http.delete(format!(
            "{}/v1/principals/wire-p/keys/{}",
            api.base, key.key_id
        )))
        .await;
    assert_eq!(status, 204, "delete key: {body}");
    let (status, body) = api
        .send(
            api.http
                .delete(format!("{}/v1/principals/wire-p", api.base)),
        )
        .await;
    assert_eq!(status, 204, "delete principal: {body}");
}

/// The next text frame of `socket`, decoded strictly.
async fn next_frame<S>(socket: &mut S) -> ServerFrame
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let message = tokio::time::timeout(REQUEST_TIMEOUT, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return strict::<ServerFrame>("WebSocket frame", text.as_str());
        }
    }
}

/// Each WebSocket frame kind decodes strictly as a [`ServerFrame`].
async fn websocket_frames(api: &Api) {
    use tokio_tungstenite::tungstenite::Message;

    let url = format!("{}/v1/ws", api.base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("WebSocket upgrade");
    let ops = [
        json!({"op": "publish", "id": 1, "topic": "wire", "records": [{"key": "k", "value": 1}]}),
        json!({"op": "subscribe", "id": "s", "topic": "wire", "partition": 0, "offset": 0, "credit": 1}),
    ];
    for op in &ops {
        socket
            .send(Message::text(op.to_string()))
            .await
            .expect("send an operation");
    }
    let mut seen = (false, false, false);
    while !(seen.0 && seen.1 && seen.2) {
        match next_frame(&mut socket).await {
            ServerFrame::Ack(ack) if ack.offsets.is_some() => {
                assert_eq!(ack.partial, Some(false));
                seen.0 = true;
            }
            ServerFrame::Ack(ack) => {
                assert_eq!(ack.topic.as_deref(), Some("wire"));
                seen.1 = true;
            }
            ServerFrame::Record(frame) => {
                assert_eq!(frame.record.topic, "wire");
                seen.2 = true;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    socket
        .send(Message::text(
            json!({"op": "publish", "id": 9, "topic": "nope", "records": [{"value": 1}]})
                .to_string(),
        ))
        .await
        .expect("send an operation");
    match next_frame(&mut socket).await {
        ServerFrame::Error(frame) => {
            assert_eq!(frame.id, Some(json!(9)));
            assert_eq!(frame.error.error, "topic_not_found");
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}
