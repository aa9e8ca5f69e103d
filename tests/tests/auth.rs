//! Authentication, ACLs, quotas and the audit log, as an operator and their clients meet
//! them: three-node clusters started with `--auth` and an admin key file, principals and
//! keys made through the admin routes, and clients using those keys. Each test ends by
//! checking that no node's log holds a key's secret.
//!
//! Needs the binary: `cargo build -p psubd` first.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use psubd_tests::{expect_error, Cluster, NewRecord, NodeClient};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A revoked key must be refused by every node within this (the documented contract); a
/// new key is taken by every node as soon, since both travel the same way.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

/// Polls `GET /v1/topics` on node `index` with `user`'s key until it answers `want`,
/// asserting it does within [`REVOKED_WITHIN`] of `since`; answers the last response.
async fn await_status(user: &User, index: usize, want: u16, since: Instant) -> reqwest::Response {
    loop {
        let resp = user
            .http
            .get(format!("{}/v1/topics", user.bases[index]))
            .send()
            .await
            .expect("GET /v1/topics");
        if resp.status().as_u16() == want {
            return resp;
        }
        assert!(
            since.elapsed() <= REVOKED_WITHIN,
            "node {} still answers {} instead of {want} {:?} after the change",
            index + 1,
            resp.status(),
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A random hex string of `bytes` bytes from the operating system.
fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP client that sends `key` as a Bearer token on every request.
fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).expect("header value");
    value.set_sensitive(true);
    headers.insert(AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("build a client")
}

/// One user of the cluster: a key and a client on every node.
#[derive(Clone)]
struct User {
    key: String,
    http: reqwest::Client,
    bases: Vec<String>,
}

impl User {
    fn new(cluster: &Cluster, key: &str) -> Self {
        Self {
            key: key.to_string(),
            http: client_with_key(key),
            bases: cluster.ids().iter().map(|id| cluster.http(*id)).collect(),
        }
    }

    /// A URL on node 1.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.bases[0])
    }

    fn node(&self, index: usize) -> NodeClient {
        NodeClient::new(self.http.clone(), self.bases[index].clone())
    }

    /// `GET` on node 1 (the request is built at once; the future owns it).
    fn get(&self, path: &str) -> impl Future<Output = reqwest::Response> + 'static {
        let request = self.http.get(self.url(path));
        async move { request.send().await.expect("GET") }
    }

    /// `POST` of a JSON body on node 1.
    fn post(&self, path: &str, body: Value) -> impl Future<Output = reqwest::Response> + 'static {
        let request = self.http.post(self.url(path)).json(&body);
        async move { request.send().await.expect("POST") }
    }

    /// `DELETE` with a JSON body on node 1.
    fn delete_json(
        &self,
        path: &str,
        body: Value,
    ) -> impl Future<Output = reqwest::Response> + 'static {
        let request = self.http.delete(self.url(path)).json(&body);
        async move { request.send().await.expect("DELETE") }
    }
}

fn acl(
    principal: &str,
    resource_type: &str,
    pattern: &str,
    name: &str,
    op: &str,
    perm: &str,
) -> Value {
    json!({
        "principal": principal,
        "resource_type": resource_type,
        "pattern_type": pattern,
        "resource_name": name,
        "operation": op,
        "permission": perm,
    })
}

async fn status_of(resp: reqwest::Response, want: u16, what: &str) -> Value {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, want, "{what}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// A JSON publish of one small record to `topic` on node 1, as `user`.
fn publish(user: &User, topic: &str) -> impl Future<Output = reqwest::Response> + 'static {
    user.post(
        &format!("/v1/topics/{topic}/records"),
        json!({ "records": [{ "value": "x" }] }),
    )
}

fn record(value: &str) -> NewRecord {
    NewRecord {
        value: json!(value),
        ..NewRecord::default()
    }
}

/// A three-node cluster started with `--auth`, its admin, and every key handed out (for
/// the check that no log holds a secret).
struct AuthCluster {
    cluster: Cluster,
    admin: User,
    keys: Vec<String>,
    _admin_key_dir: tempfile::TempDir,
}

impl AuthCluster {
    /// Starts the cluster with a fresh random admin key in a file.
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin_key = format!("admin.{}", random_hex(24));
        let key_file = dir.path().join("admin.key");
        std::fs::write(&key_file, format!("{admin_key}\n")).expect("write the admin key file");
        let key_path = key_file.display().to_string();
        let cluster = Cluster::start_with_env(
            3,
            &[("PSUBD_AUTH", "true"), ("PSUBD_ADMIN_KEY_FILE", &key_path)],
        )
        .await;
        let admin = User::new(&cluster, &admin_key);
        Self {
            cluster,
            admin,
            keys: vec![admin_key],
            _admin_key_dir: dir,
        }
    }

    /// Makes a principal with one key; answers its user.
    async fn principal(&mut self, name: &str) -> User {
        status_of(
            self.admin
                .post("/v1/principals", json!({ "name": name }))
                .await,
            201,
            &format!("create principal {name}"),
        )
        .await;
        self.new_key(name).await.0
    }

    /// Makes another key of a principal; answers its user and the key id.
    async fn new_key(&mut self, principal: &str) -> (User, String) {
        let made = status_of(
            self.admin
                .post(&format!("/v1/principals/{principal}/keys"), json!({}))
                .await,
            201,
            &format!("create a key of {principal}"),
        )
        .await;
        let key = made["key"].as_str().expect("key").to_string();
        let key_id = made["key_id"].as_str().expect("key_id").to_string();
        assert!(key.starts_with(&format!("{key_id}.")), "{made}");
        self.keys.push(key.clone());
        (User::new(&self.cluster, &key), key_id)
    }

    /// Grants (or denies) with one ACL.
    async fn acl(&self, rule: Value) {
        status_of(
            self.admin.post("/v1/acls", rule.clone()).await,
            201,
            &format!("ACL {rule}"),
        )
        .await;
    }

    /// Sets a principal's quota.
    async fn quota(&self, principal: &str, quota: Value) {
        let resp = self
            .admin
            .http
            .put(self.admin.url(&format!("/v1/principals/{principal}/quota")))
            .json(&quota)
            .send()
            .await
            .expect("PUT quota");
        status_of(resp, 200, "set a quota").await;
    }

    /// Checks every node's log: no key's secret anywhere, and no WARN or ERROR from the
    /// edge (refusals are audited at INFO: a cluster refusing requests is still healthy;
    /// only the edge's lines are checked, as a slow disk on a busy test machine may rightly
    /// warn). Answers the audit lines.
    fn checked_logs(&self) -> Vec<String> {
        let secrets: Vec<&str> = self
            .keys
            .iter()
            .map(|key| key.split_once('.').expect("key_id.secret").1)
            .collect();
        let mut audit = Vec::new();
        for id in self.cluster.ids() {
            let log =
                std::fs::read_to_string(self.cluster.log_path(id)).expect("read a node's log");
            for secret in &secrets {
                assert!(
                    !log.contains(secret),
                    "node {id}'s log holds a key's secret"
                );
            }
            let loud: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .filter(|l| l.contains("psubd_api") || l.contains(" audit"))
                .collect();
            assert!(loud.is_empty(), "node {id} logged WARN/ERROR: {loud:#?}");
            audit.extend(
                log.lines()
                    .filter(|l| l.contains(" audit:"))
                    .map(str::to_string),
            );
        }
        audit
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_required_and_a_revoked_key_is_refused_everywhere_within_a_second() {
    let mut auth = AuthCluster::start().await;
    let anonymous = reqwest::Client::new();
    let base = auth.cluster.http(1);
    let admin = auth.admin.clone();

    // Open endpoints stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path} without a key");
    }

    // 401: no key, a malformed key, an unknown key, a wrong secret.
    let no_key = anonymous
        .get(format!("{base}/v1/topics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        no_key.headers().get(WWW_AUTHENTICATE).map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    expect_error(no_key, 401, "unauthenticated", "no key").await;
    for (header, what) in [
        ("Bearer nodot", "a key without a '.'"),
        ("Basic YWRtaW46YWRtaW4=", "another scheme"),
        ("Bearer 0123456789abcdef.unknown", "an unknown key id"),
        ("Bearer admin.wrong", "a wrong admin secret"),
    ] {
        let resp = anonymous
            .get(format!("{base}/v1/topics"))
            .header(AUTHORIZATION, header)
            .send()
            .await
            .unwrap();
        expect_error(resp, 401, "unauthenticated", what).await;
    }

    let outsider = auth.principal("outsider").await;

    // A second key works on every node within a second; revoked, every node refuses it
    // within a second of the 204.
    let (revocable, second_id) = auth.new_key("outsider").await;
    let made_at = Instant::now();
    status_of(
        revocable.get("/v1/topics").await,
        200,
        "a new key on the node that made it",
    )
    .await;
    for index in 1..3 {
        await_status(&revocable, index, 200, made_at).await;
    }
    let revoke = admin
        .http
        .delete(admin.url(&format!("/v1/principals/outsider/keys/{second_id}")))
        .send()
        .await
        .unwrap();
    status_of(revoke, 204, "revoke").await;
    let revoked_at = Instant::now();
    let first_refusal = revocable
        .http
        .get(revocable.url("/v1/topics"))
        .send()
        .await
        .unwrap();
    expect_error(
        first_refusal,
        401,
        "unauthenticated",
        "the revoked key on the node that revoked it",
    )
    .await;
    for index in 1..3 {
        let resp = await_status(&revocable, index, 401, revoked_at).await;
        expect_error(resp, 401, "unauthenticated", "a revoked key").await;
    }
    // The principal's other key still works.
    status_of(outsider.get("/v1/topics").await, 200, "the other key").await;

    // Deleting a principal takes its keys with it.
    status_of(
        admin
            .http
            .delete(admin.url("/v1/principals/outsider"))
            .send()
            .await
            .unwrap(),
        204,
        "delete a principal",
    )
    .await;
    expect_error(
        outsider.get("/v1/topics").await,
        401,
        "unauthenticated",
        "a deleted principal's key",
    )
    .await;
    expect_error(
        admin
            .http
            .delete(admin.url("/v1/principals/outsider"))
            .send()
            .await
            .unwrap(),
        404,
        "principal_not_found",
        "delete it twice",
    )
    .await;

    auth.checked_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acls_decide_what_each_principal_may_do_and_refusals_are_audited() {
    let mut auth = AuthCluster::start().await;
    let base = auth.cluster.http(1);
    let admin = auth.admin.clone();

    // The admin makes principals and keys.
    let producer = auth.principal("producer").await;
    let consumer = auth.principal("consumer").await;
    let outsider = auth.principal("outsider").await;
    let listed = status_of(admin.get("/v1/principals").await, 200, "list principals").await;
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["consumer", "outsider", "producer"]);
    expect_error(
        admin
            .post("/v1/principals", json!({ "name": "producer" }))
            .await,
        409,
        "principal_exists",
        "a second principal of one name",
    )
    .await;
    for bad in ["admin", "__x", "a b", ""] {
        expect_error(
            admin.post("/v1/principals", json!({ "name": bad })).await,
            400,
            "invalid_name",
            &format!("principal name {bad:?}"),
        )
        .await;
    }

    // 403 on admin routes for everyone but the admin.
    expect_error(
        outsider.get("/v1/principals").await,
        403,
        "forbidden",
        "list principals",
    )
    .await;
    expect_error(
        outsider
            .post("/v1/principals", json!({ "name": "mine" }))
            .await,
        403,
        "forbidden",
        "create a principal",
    )
    .await;
    expect_error(
        outsider
            .post("/v1/principals/outsider/keys", json!({}))
            .await,
        403,
        "forbidden",
        "create a key",
    )
    .await;
    let grant_self = acl("outsider", "topic", "prefixed", "o", "all", "allow");
    expect_error(
        outsider.post("/v1/acls", grant_self).await,
        403,
        "forbidden",
        "create an ACL",
    )
    .await;
    expect_error(
        outsider.get("/v1/acls").await,
        403,
        "forbidden",
        "list ACLs",
    )
    .await;

    // Topics made by the admin; the ACLs of the principals.
    admin.node(0).create_topic("orders", 1, 3).await;
    admin.node(0).create_topic("private", 1, 3).await;
    // Replica moves and decommissions are the admin's too.
    let moving = outsider
        .http
        .put(outsider.url("/v1/topics/orders/partitions/0/replicas"))
        .json(&json!({ "replicas": [3, 2, 1] }))
        .send()
        .await
        .expect("PUT");
    expect_error(moving, 403, "forbidden", "move replicas").await;
    expect_error(
        outsider
            .post("/v1/cluster/nodes/1/decommission", json!({}))
            .await,
        403,
        "forbidden",
        "decommission a node",
    )
    .await;
    for rule in [
        acl("producer", "topic", "literal", "orders", "write", "allow"),
        acl("consumer", "topic", "prefixed", "ord", "read", "allow"),
        acl("consumer", "group", "literal", "billing", "read", "allow"),
    ] {
        status_of(
            admin.post("/v1/acls", rule.clone()).await,
            201,
            &format!("ACL {rule}"),
        )
        .await;
    }
    let consumers = status_of(admin.get("/v1/acls?principal=consumer").await, 200, "ACLs").await;

    // Bad input is a 4xx JSON error and changes nothing.
    let mut bad_type = acl("consumer", "topic", "literal", "x", "read", "allow");
    bad_type["resource_type"] = json!("database");
    for (body, status, error, what) in [
        (bad_type, 400, "invalid_json", "an unknown resource type"),
        (
            acl("consumer", "cluster", "literal", "other", "create", "allow"),
            400,
            "invalid_name",
            "a cluster not named 'cluster'",
        ),
        (
            acl("consumer", "topic", "literal", "a b", "read", "allow"),
            400,
            "invalid_name",
            "a bad topic name",
        ),
        (
            acl("nobody", "topic", "literal", "x", "read", "allow"),
            404,
            "principal_not_found",
            "an unknown principal",
        ),
    ] {
        expect_error(admin.post("/v1/acls", body).await, status, error, what).await;
    }
    let put_quota = |body: Value| {
        admin
            .http
            .put(admin.url("/v1/principals/consumer/quota"))
            .json(&body)
            .send()
    };
    for (body, error) in [
        (json!({ "requests_per_sec": 0 }), "invalid_request"),
        (json!({ "requests_per_sec": -1 }), "invalid_json"),
        (json!({ "bytes": 1 }), "invalid_json"),
    ] {
        expect_error(put_quota(body).await.unwrap(), 400, error, "a bad quota").await;
    }
    expect_error(
        admin
            .http
            .delete(admin.url("/v1/principals/consumer/keys/0000000000000000"))
            .send()
            .await
            .unwrap(),
        404,
        "api_key_not_found",
        "delete an unknown key",
    )
    .await;
    let after = status_of(admin.get("/v1/acls?principal=consumer").await, 200, "ACLs").await;
    assert_eq!(after, consumers, "refused changes changed nothing");
    assert_eq!(consumers.as_array().map(Vec::len), Some(2), "{consumers}");

    // Publish: allowed with `write`, refused without.
    let reports = producer.node(0).publish("orders", &[record("o-1")]).await;
    assert_eq!(reports.len(), 1);
    expect_error(
        publish(&consumer, "orders").await,
        403,
        "forbidden",
        "publish without write",
    )
    .await;
    expect_error(
        publish(&producer, "private").await,
        403,
        "forbidden",
        "publish elsewhere",
    )
    .await;

    // Fetch and streams: allowed with `read`, refused without.
    let fetch_path = "/v1/topics/orders/partitions/0/records?offset=earliest";
    let fetched = status_of(consumer.get(fetch_path).await, 200, "fetch with read").await;
    assert_eq!(
        fetched["records"].as_array().map(Vec::len),
        Some(1),
        "{fetched}"
    );
    expect_error(
        producer.get(fetch_path).await,
        403,
        "forbidden",
        "fetch without read",
    )
    .await;
    let stream = producer
        .http
        .get(producer.url("/v1/topics/orders/partitions/0/stream"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    expect_error(stream, 403, "forbidden", "a stream without read").await;

    // Groups: `read` on the group and on its topics.
    let lease = consumer
        .node(0)
        .join_earliest("billing", &["orders"], 10_000)
        .await;
    let member = lease["member_id"].as_str().expect("member_id").to_string();
    let generation = lease["generation"].as_u64().expect("generation");
    let commit = |group: &str, topic: &str| {
        consumer.post(
            &format!("/v1/groups/{group}/offsets"),
            json!({
                "member_id": member,
                "generation": generation,
                "offsets": [{ "topic": topic, "partition": 0, "offset": 1 }],
            }),
        )
    };
    status_of(commit("billing", "orders").await, 204, "commit with read").await;
    expect_error(
        commit("payments", "orders").await,
        403,
        "forbidden",
        "commit to another group",
    )
    .await;
    expect_error(
        commit("billing", "private").await,
        403,
        "forbidden",
        "commit a topic without read",
    )
    .await;

    // Topic creation: `create` on the topic or the cluster.
    let create = |user: &User, name: &str| {
        user.post(
            "/v1/topics",
            json!({ "name": name, "replication_factor": 1 }),
        )
    };
    expect_error(
        create(&outsider, "outsider-topic").await,
        403,
        "forbidden",
        "create without create",
    )
    .await;
    let listed = status_of(outsider.get("/v1/topics").await, 200, "list topics").await;
    assert_eq!(listed, json!([]), "topics are listed by describe");
    status_of(
        admin
            .post(
                "/v1/acls",
                acl(
                    "outsider", "cluster", "literal", "cluster", "create", "allow",
                ),
            )
            .await,
        201,
        "grant create on the cluster",
    )
    .await;
    status_of(
        create(&outsider, "outsider-topic").await,
        201,
        "create with create",
    )
    .await;

    // Deny wins over allow; removing the deny restores the allow.
    let deny = acl("consumer", "topic", "literal", "orders", "read", "deny");
    status_of(
        admin.post("/v1/acls", deny.clone()).await,
        201,
        "add a deny",
    )
    .await;
    expect_error(
        consumer.get(fetch_path).await,
        403,
        "forbidden",
        "allow then deny",
    )
    .await;
    status_of(
        admin.delete_json("/v1/acls", deny.clone()).await,
        204,
        "remove the deny",
    )
    .await;
    status_of(consumer.get(fetch_path).await, 200, "the allow again").await;
    expect_error(
        admin.delete_json("/v1/acls", deny).await,
        404,
        "acl_not_found",
        "remove it twice",
    )
    .await;

    // WebSocket: the upgrade needs a key; each operation is checked against the ACLs.
    let ws_url = format!("{}/v1/ws", base.replace("http://", "ws://"));
    let refused = tokio_tungstenite::connect_async(&ws_url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401, "upgrade without a key")
        }
        other => panic!("an upgrade without a key was not refused with 401: {other:?}"),
    }
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        AUTHORIZATION,
        format!("Bearer {}", consumer.key).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let op = json!({"op": "publish", "id": 1, "topic": "orders", "records": [{"value": "w"}]});
    socket
        .send(Message::Text(op.to_string().into()))
        .await
        .unwrap();
    let reply = loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no reply to a WebSocket publish: {other:?}"),
        }
    };
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["error"], "forbidden", "{reply}");
    let _ = socket.close(None).await;

    let audit = auth.checked_logs();
    assert!(
        audit.iter().any(|l| l.contains("outcome=\"forbidden\"")),
        "no forbidden request in the audit log"
    );
    assert!(
        audit.iter().any(|l| l.contains("create_principal")),
        "no admin change in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_answer_429_with_retry_after() {
    let mut auth = AuthCluster::start().await;
    let admin = auth.admin.clone();
    let producer = auth.principal("producer").await;
    let consumer = auth.principal("consumer").await;
    admin.node(0).create_topic("orders", 1, 3).await;
    auth.acl(acl(
        "producer", "topic", "literal", "orders", "write", "allow",
    ))
    .await;

    // Quotas: 429 with Retry-After once past the rate; the bucket is per node.
    auth.quota(
        "consumer",
        json!({ "requests_per_sec": 2, "produce_bytes_per_sec": null }),
    )
    .await;
    let mut over = None;
    for _ in 0..20 {
        let resp = consumer.get("/v1/topics").await;
        if resp.status().as_u16() == 429 {
            over = Some(resp);
            break;
        }
        assert_eq!(resp.status().as_u16(), 200);
    }
    let over = over.expect("no 429 within 20 requests at 2 per second");
    let retry_after: u64 = over
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body = expect_error(over, 429, "quota_exceeded", "over the request quota").await;
    assert_eq!(body.error_code, 42902);
    // The buckets are per node (the documented N × limit): node 2 still admits.
    let elsewhere = consumer
        .http
        .get(format!("{}/v1/topics", consumer.bases[1]))
        .send()
        .await
        .unwrap();
    status_of(elsewhere, 200, "the same principal on another node").await;
    auth.quota("producer", json!({ "produce_bytes_per_sec": 64 }))
        .await;
    let big = "x".repeat(200);
    let first = producer
        .http
        .post(producer.url("/v1/topics/orders/records"))
        .json(&json!({ "records": [{ "value": big }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        first.status().as_u16(),
        200,
        "the first publish is admitted"
    );
    let second = publish(&producer, "orders").await;
    assert!(second.headers().contains_key(RETRY_AFTER));
    expect_error(second, 429, "quota_exceeded", "over the produce quota").await;

    // Fetched bytes are charged after the fetch: a read past the rate makes the next wait.
    let reader = auth.principal("reader").await;
    auth.acl(acl("reader", "topic", "literal", "orders", "read", "allow"))
        .await;
    auth.quota("reader", json!({ "fetch_bytes_per_sec": 10 }))
        .await;
    let fetch_path = "/v1/topics/orders/partitions/0/records?offset=earliest";
    let fetched = status_of(reader.get(fetch_path).await, 200, "the first fetch").await;
    assert_eq!(
        fetched["records"].as_array().map(Vec::len),
        Some(1),
        "{fetched}"
    );
    let refused = reader.get(fetch_path).await;
    assert!(refused.headers().contains_key(RETRY_AFTER));
    expect_error(refused, 429, "quota_exceeded", "over the fetch quota").await;

    auth.checked_logs();
}
