//! A thin HTTP client for the psubd API (docs/api.md), as the harness needs it: one request per
//! call, never a retry, and every failure described precisely enough to classify it as
//! `fail` or `info` (history.rs). Request bodies are psubd-wire's types, as the server
//! reads them; answers are read leniently from JSON, so the harness can describe an
//! answer that breaks the contract instead of failing to decode it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psubd_wire::{
    AutoOffsetReset, CommitOffset, CommitRequest, JoinRequest, MoveReplicas, NewRecord,
    PublishRequest, TopicSpec,
};
use serde_json::Value;

use crate::error::JepsenError;
use crate::history::{key_of, KeyOffset, SeenRecord};
use crate::proxy::CONNECT_FAILED_HEADER;

/// Why a request did not succeed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The node answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// The `error` string of the error body, when the body is the documented JSON.
        error: Option<String>,
        /// The `message` of the error body, when present.
        message: Option<String>,
        /// The body, cut to a few hundred bytes, for the history.
        body: String,
    },
    /// No answer.
    Transport {
        /// True when no connection was established: nothing was sent.
        connect: bool,
        /// The transport error.
        detail: String,
    },
    /// The node answered 2xx with a body the harness cannot read.
    Malformed {
        /// What was wrong.
        detail: String,
    },
}

impl Failure {
    /// A one-line description for the history's `error` field.
    pub fn describe(&self) -> String {
        match self {
            Failure::Status {
                status,
                error,
                message,
                body,
            } => match (error, message) {
                (Some(e), Some(m)) => format!("{status} {e}: {m}"),
                (Some(e), None) => format!("{status} {e}"),
                _ => format!("{status} {body}"),
            },
            Failure::Transport { connect, detail } => {
                if *connect {
                    format!("connect: {detail}")
                } else {
                    format!("transport: {detail}")
                }
            }
            Failure::Malformed { detail } => format!("malformed: {detail}"),
        }
    }
}

/// A node as the client sees it.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// Node id.
    pub id: u64,
    /// `http://host:port`.
    pub base: String,
}

/// The client. Connections are not pooled: every request opens its own connection, so
/// "connection refused" really means the request never reached a node and a killed
/// node never leaves a half-dead pooled connection behind.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    nodes: Vec<NodeAddr>,
    /// Ids of the nodes the workload may pick: the members that serve clients (a spare
    /// joins it when it joins the cluster, a decommissioned node leaves it). Shared by the
    /// clones.
    serving: Arc<Mutex<Vec<u64>>>,
    /// When each node last refused a connection (shared by the clones: one client's view).
    refused: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// How long [`Client::pick_node`] avoids a node that refused a connection.
pub const AVOID_REFUSING_NODE: Duration = Duration::from_secs(1);

/// Answer of a publish: the acknowledged offset.
#[derive(Debug, Clone)]
pub struct Published {
    /// The offset the node acknowledged.
    pub offset: u64,
}

/// Answer of a read by offset.
#[derive(Debug, Clone)]
pub struct ReadAnswer {
    /// Records, in the order returned.
    pub records: Vec<SeenRecord>,
    /// `next_offset`.
    pub next_offset: Option<u64>,
    /// `high_watermark`.
    pub high_watermark: Option<u64>,
}

/// Answer of a join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The member id.
    pub member_id: String,
    /// The generation.
    pub generation: Option<i64>,
    /// Assigned `topic/partition` keys.
    pub assignments: Vec<String>,
}

/// Answer of a group poll.
#[derive(Debug, Clone)]
pub struct Polled {
    /// Records, in the order returned.
    pub records: Vec<SeenRecord>,
    /// New generation, when it changed.
    pub generation: Option<i64>,
    /// New assignments, when they changed.
    pub assignments: Option<Vec<String>>,
    /// The position token to present at the next poll (older servers send
    /// none).
    pub position: Option<String>,
}

/// One partition's leader as `GET /v1/topics/{t}/partitions` reports it.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// Leader node id, when there is one.
    pub leader: Option<u64>,
    /// High watermark.
    pub high_watermark: Option<u64>,
    /// The nodes holding the partition.
    pub replicas: Vec<u64>,
}

impl Client {
    /// Builds a client for `nodes`. `local` binds every connection to that source address;
    /// in namespace mode it is the control namespace's address, which exists nowhere
    /// else, so a client that somehow ran outside that namespace could not send a packet.
    ///
    /// # Errors
    /// reqwest cannot build the client.
    pub fn new(nodes: Vec<NodeAddr>, local: Option<IpAddr>) -> Result<Self, JepsenError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_millis(1000))
            .local_address(local)
            .build()
            .map_err(|e| JepsenError::Client {
                detail: e.to_string(),
            })?;
        let serving = nodes.iter().map(|n| n.id).collect();
        Ok(Client {
            http,
            nodes,
            serving: Arc::new(Mutex::new(serving)),
            refused: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> &[NodeAddr] {
        &self.nodes
    }

    /// Sets the nodes [`Client::pick_node`] chooses from (every node by default): the
    /// members that serve clients.
    pub fn set_serving(&self, ids: &[u64]) {
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = ids.to_vec();
    }

    /// The nodes [`Client::pick_node`] chooses from.
    pub fn serving(&self) -> Vec<u64> {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A serving node for the next request, chosen at random among those that did not refuse a
    /// connection in the last [`AVOID_REFUSING_NODE`] (among all when every node did): a
    /// client given every node's address moves on from one that is down, as client
    /// libraries do, instead of sending every third request into a refused connection.
    /// Refusals are remembered only where nothing was sent, so no retry is hidden.
    pub fn pick_node(&self, rng: &mut impl rand::Rng) -> u64 {
        let serving = self.serving();
        let refused = self.lock_refused();
        let live: Vec<u64> = serving
            .iter()
            .copied()
            .filter(|id| {
                refused
                    .get(id)
                    .is_none_or(|at| at.elapsed() >= AVOID_REFUSING_NODE)
            })
            .collect();
        let from: Vec<u64> = if live.is_empty() { serving } else { live };
        from[rng.gen_range(0..from.len())]
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn base(&self, node: u64) -> Result<&str, Failure> {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.base.as_str())
            .ok_or_else(|| Failure::Malformed {
                detail: format!("unknown node {node}"),
            })
    }

    /// Sends a request to `node`; a refused connection is remembered (see
    /// [`Client::pick_node`]).
    async fn send(
        &self,
        node: u64,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(u16, Value), Failure> {
        let result = self.send_once(req, timeout).await;
        if let Err(Failure::Transport { connect: true, .. }) = &result {
            self.lock_refused().insert(node, Instant::now());
        }
        result
    }

    async fn send_once(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(u16, Value), Failure> {
        let resp = req.timeout(timeout).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        if resp.headers().contains_key(CONNECT_FAILED_HEADER) {
            // The lost-responses proxy could not reach the node: nothing was sent.
            return Err(Failure::Transport {
                connect: true,
                detail: "proxy: the node refused the connection".into(),
            });
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        if status >= 400 {
            let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
            let error = parsed
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let message = parsed
                .as_ref()
                .and_then(|v| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let mut body = String::from_utf8_lossy(&bytes).into_owned();
            body.truncate(300);
            return Err(Failure::Status {
                status,
                error,
                message,
                body,
            });
        }
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| Failure::Malformed {
            detail: format!("status {status}: {e}"),
        })?;
        Ok((status, value))
    }

    /// `GET /readyz`: true on 200.
    pub async fn ready(&self, node: u64) -> bool {
        let Ok(base) = self.base(node) else {
            return false;
        };
        let req = self.http.get(format!("{base}/readyz"));
        matches!(
            self.send(node, req, Duration::from_secs(2)).await,
            Ok((200, _))
        )
    }

    /// `POST /v1/topics`. A 409 `topic_exists` counts as success (a create retried by the
    /// harness's setup after an unclear answer).
    ///
    /// # Errors
    /// Any other failure.
    pub async fn create_topic(
        &self,
        node: u64,
        topic: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<(), Failure> {
        let base = self.base(node)?;
        let req = self
            .http
            .post(format!("{base}/v1/topics"))
            .json(&TopicSpec {
                partitions: Some(partitions),
                replication_factor: Some(replication_factor),
                ..TopicSpec::new(topic)
            });
        match self.send(node, req, Duration::from_secs(10)).await {
            Ok(_) => Ok(()),
            Err(Failure::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/topics/{t}/partitions`.
    ///
    /// # Errors
    /// Any failure, or an answer that is not the documented array.
    pub async fn partitions(&self, node: u64, topic: &str) -> Result<Vec<PartitionInfo>, Failure> {
        let base = self.base(node)?;
        let req = self
            .http
            .get(format!("{base}/v1/topics/{topic}/partitions"));
        let (_, v) = self.send(node, req, Duration::from_secs(3)).await?;
        let arr = v.as_array().ok_or_else(|| Failure::Malformed {
            detail: "partitions: not an array".into(),
        })?;
        let mut out = Vec::with_capacity(arr.len());
        for p in arr {
            let partition = p
                .get("partition")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| Failure::Malformed {
                    detail: "partitions: entry without partition".into(),
                })?;
            out.push(PartitionInfo {
                partition,
                leader: p.get("leader").and_then(Value::as_u64),
                high_watermark: p.get("high_watermark").and_then(Value::as_u64),
                replicas: p
                    .get("replicas")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// `GET /v1/cluster` → the controller leader's id, when known.
    ///
    /// # Errors
    /// Any failure.
    pub async fn controller_leader(&self, node: u64) -> Result<Option<u64>, Failure> {
        let base = self.base(node)?;
        let req = self.http.get(format!("{base}/v1/cluster"));
        let (_, v) = self.send(node, req, Duration::from_secs(3)).await?;
        Ok(v.get("controller_leader").and_then(Value::as_u64))
    }

    /// Publishes one record with value `value` to an explicit partition, `acks=all`, with a
    /// `pad` header unless `pad` is empty, and the idempotency `id` if given (a duplicate's
    /// report names the stored copy's offset, which is what is returned then).
    ///
    /// # Errors
    /// Any failure, or a 200 whose `offsets` does not hold exactly one offset for this
    /// partition.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish(
        &self,
        node: u64,
        topic: &str,
        partition: u32,
        value: u64,
        pad: &str,
        id: Option<&str>,
        timeout: Duration,
    ) -> Result<Published, Failure> {
        let base = self.base(node)?;
        let mut record = NewRecord::new(value)
            .key(format!("v{value}"))
            .partition(partition);
        if !pad.is_empty() {
            record = record.header("pad", pad);
        }
        if let Some(id) = id {
            record = record.id(id);
        }
        let req = self
            .http
            .post(format!("{base}/v1/topics/{topic}/records?acks=all"))
            .json(&PublishRequest {
                encoding: None,
                records: vec![record],
            });
        let (_, v) = self.send(node, req, timeout).await?;
        let offsets =
            v.get("offsets")
                .and_then(Value::as_array)
                .ok_or_else(|| Failure::Malformed {
                    detail: "publish: no offsets".into(),
                })?;
        let [one] = offsets.as_slice() else {
            return Err(Failure::Malformed {
                detail: format!("publish: {} offsets for one record", offsets.len()),
            });
        };
        let answered_partition = one.get("partition").and_then(Value::as_u64);
        if answered_partition != Some(u64::from(partition)) {
            return Err(Failure::Malformed {
                detail: format!("publish: answered partition {answered_partition:?}"),
            });
        }
        let offset =
            one.get("offset")
                .and_then(Value::as_u64)
                .ok_or_else(|| Failure::Malformed {
                    detail: "publish: offset missing".into(),
                })?;
        Ok(Published { offset })
    }

    /// `GET /v1/topics/{t}/partitions/{p}/records?offset=N`.
    ///
    /// # Errors
    /// Any failure (416 included).
    pub async fn read(
        &self,
        node: u64,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: u32,
        wait_ms: u64,
    ) -> Result<ReadAnswer, Failure> {
        self.read_from(node, topic, partition, offset, max_records, wait_ms, false)
            .await
    }

    /// `GET /v1/topics/{t}/partitions/{p}/records?offset=N&replica=local`: only `node`'s
    /// own replica, never forwarded; `high_watermark` is that replica's end.
    ///
    /// # Errors
    /// As [`Client::read`]; a 400 when the node holds no replica of the partition.
    pub async fn read_local(
        &self,
        node: u64,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: u32,
    ) -> Result<ReadAnswer, Failure> {
        self.read_from(node, topic, partition, offset, max_records, 0, true)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_from(
        &self,
        node: u64,
        topic: &str,
        partition: u32,
        offset: u64,
        max_records: u32,
        wait_ms: u64,
        local: bool,
    ) -> Result<ReadAnswer, Failure> {
        let base = self.base(node)?;
        let replica = if local { "&replica=local" } else { "" };
        let req = self.http.get(format!(
            "{base}/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records={max_records}&timeout_ms={wait_ms}{replica}"
        ));
        let (_, v) = self
            .send(node, req, Duration::from_millis(wait_ms + 5000))
            .await?;
        let records = parse_records(&v, Some((topic, partition)))?;
        Ok(ReadAnswer {
            records,
            next_offset: v.get("next_offset").and_then(Value::as_u64),
            high_watermark: v.get("high_watermark").and_then(Value::as_u64),
        })
    }

    /// `POST /v1/groups/{g}/members`.
    ///
    /// # Errors
    /// Any failure, or an answer without `member_id`.
    pub async fn join(
        &self,
        node: u64,
        group: &str,
        topics: &[String],
        session_timeout_ms: u64,
    ) -> Result<Joined, Failure> {
        let base = self.base(node)?;
        let req = self
            .http
            .post(format!("{base}/v1/groups/{group}/members"))
            .json(&JoinRequest {
                topics: topics.to_vec(),
                session_timeout_ms: Some(session_timeout_ms),
                auto_offset_reset: Some(AutoOffsetReset::Earliest),
                assignment_strategy: None,
            });
        let (_, v) = self.send(node, req, Duration::from_secs(10)).await?;
        let member_id = match v.get("member_id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(Failure::Malformed {
                    detail: "join: no member_id".into(),
                })
            }
        };
        Ok(Joined {
            member_id,
            generation: v.get("generation").and_then(Value::as_i64),
            assignments: parse_assignments(v.get("assignments")).unwrap_or_default(),
        })
    }

    /// `GET /v1/groups/{g}/members/{m}/records`.
    ///
    /// # Errors
    /// Any failure (409 `member_fenced` included).
    pub async fn poll(
        &self,
        node: u64,
        group: &str,
        member: &str,
        max_records: u32,
        wait_ms: u64,
        position: Option<&str>,
    ) -> Result<Polled, Failure> {
        let base = self.base(node)?;
        let mut req = self.http.get(format!(
            "{base}/v1/groups/{group}/members/{member}/records?max_records={max_records}&timeout_ms={wait_ms}"
        ));
        if let Some(position) = position {
            req = req.query(&[("position", position)]);
        }
        let (_, v) = self
            .send(node, req, Duration::from_millis(wait_ms + 5000))
            .await?;
        Ok(Polled {
            records: parse_records(&v, None)?,
            generation: v.get("generation").and_then(Value::as_i64),
            assignments: parse_assignments(v.get("assignments")),
            position: v.get("position").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// `POST /v1/groups/{g}/offsets`: commits next offsets to read.
    ///
    /// # Errors
    /// Any failure (409 stale generation included).
    pub async fn commit(
        &self,
        node: u64,
        group: &str,
        member: &str,
        generation: Option<i64>,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), Failure> {
        let base = self.base(node)?;
        // A commit names the generation its records were fetched under; without one
        // (a join answer that lacked it) there is nothing valid to send.
        let Some(generation) = generation.and_then(|g| u64::try_from(g).ok()) else {
            return Err(Failure::Transport {
                connect: true,
                detail: "no generation to commit under: not sent".into(),
            });
        };
        let body = CommitRequest {
            member_id: member.to_string(),
            generation,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| CommitOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
        };
        let req = self
            .http
            .post(format!("{base}/v1/groups/{group}/offsets"))
            .json(&body);
        self.send(node, req, Duration::from_secs(6))
            .await
            .map(|_| ())
    }

    /// `GET /v1/groups/{g}/offsets`: the committed offsets.
    ///
    /// Accepts the answer as an array or as an object holding the array under `offsets`
    /// or `partitions`; each entry's committed offset under `committed_offset`,
    /// `committed` or `offset` (`null` = no commit).
    ///
    /// # Errors
    /// Any failure, or an answer of another shape.
    pub async fn committed(&self, node: u64, group: &str) -> Result<Vec<KeyOffset>, Failure> {
        let base = self.base(node)?;
        let req = self.http.get(format!("{base}/v1/groups/{group}/offsets"));
        let (_, v) = self.send(node, req, Duration::from_secs(5)).await?;
        parse_committed(&v)
    }

    /// `PUT /v1/topics/{t}/partitions/{p}/replicas`: starts a move (202).
    ///
    /// # Errors
    /// Any failure (a 409 `move_conflict` while another move of it runs).
    pub async fn move_replicas(
        &self,
        node: u64,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<(), Failure> {
        let base = self.base(node)?;
        let body = MoveReplicas {
            replicas: replicas.to_vec(),
        };
        let req = self
            .http
            .put(format!(
                "{base}/v1/topics/{topic}/partitions/{partition}/replicas"
            ))
            .json(&body);
        self.send(node, req, Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// `GET /v1/reassignments`: how many moves are in progress.
    ///
    /// # Errors
    /// Any failure, or an answer without the list.
    pub async fn moves_in_progress(&self, node: u64) -> Result<usize, Failure> {
        let base = self.base(node)?;
        let req = self.http.get(format!("{base}/v1/reassignments"));
        let (_, v) = self.send(node, req, Duration::from_secs(3)).await?;
        v.get("reassignments")
            .and_then(Value::as_array)
            .map(Vec::len)
            .ok_or_else(|| Failure::Malformed {
                detail: "reassignments: no list".into(),
            })
    }

    /// `POST /v1/cluster/nodes/{id}/decommission` (202).
    ///
    /// # Errors
    /// Any failure (409 `move_conflict` when too few nodes would be left).
    pub async fn decommission(&self, node: u64, id: u64) -> Result<(), Failure> {
        let base = self.base(node)?;
        let req = self
            .http
            .post(format!("{base}/v1/cluster/nodes/{id}/decommission"));
        self.send(node, req, Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// `GET /v1/cluster` → node `id`'s `state` (`active`, `decommissioning`,
    /// `decommissioned`), when listed.
    ///
    /// # Errors
    /// Any failure.
    pub async fn node_state(&self, node: u64, id: u64) -> Result<Option<String>, Failure> {
        let base = self.base(node)?;
        let req = self.http.get(format!("{base}/v1/cluster"));
        let (_, v) = self.send(node, req, Duration::from_secs(3)).await?;
        Ok(v.get("nodes")
            .and_then(Value::as_array)
            .and_then(|nodes| {
                nodes
                    .iter()
                    .find(|n| n.get("id").and_then(Value::as_u64) == Some(id))
            })
            .and_then(|n| n.get("state"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// `DELETE /v1/groups/{g}/members/{m}`.
    ///
    /// # Errors
    /// Any failure.
    pub async fn leave(&self, node: u64, group: &str, member: &str) -> Result<(), Failure> {
        let base = self.base(node)?;
        let req = self
            .http
            .delete(format!("{base}/v1/groups/{group}/members/{member}"));
        self.send(node, req, Duration::from_secs(5))
            .await
            .map(|_| ())
    }
}

fn transport(e: reqwest::Error) -> Failure {
    Failure::Transport {
        connect: e.is_connect(),
        detail: describe_reqwest(&e),
    }
}

/// reqwest's Display hides the cause; the history wants it ("connection refused").
fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Parses a `records` array. `fixed` gives topic and partition when the request named
/// them (a read by offset); otherwise each record carries its own.
fn parse_records(v: &Value, fixed: Option<(&str, u32)>) -> Result<Vec<SeenRecord>, Failure> {
    let Some(arr) = v.get("records").and_then(Value::as_array) else {
        return Err(Failure::Malformed {
            detail: "no records array".into(),
        });
    };
    let mut out = Vec::with_capacity(arr.len());
    for r in arr {
        let offset = r
            .get("offset")
            .and_then(Value::as_u64)
            .ok_or_else(|| Failure::Malformed {
                detail: "record without offset".into(),
            })?;
        let key = match fixed {
            Some((t, p)) => {
                // A record of another partition in a by-offset read is itself evidence;
                // keep the key it claims so the checker sees it.
                let rt = r.get("topic").and_then(Value::as_str).unwrap_or(t);
                let rp = r
                    .get("partition")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(p);
                key_of(rt, rp)
            }
            None => {
                let t = r.get("topic").and_then(Value::as_str);
                let p = r
                    .get("partition")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok());
                match (t, p) {
                    (Some(t), Some(p)) => key_of(t, p),
                    _ => {
                        return Err(Failure::Malformed {
                            detail: "group record without topic/partition".into(),
                        })
                    }
                }
            }
        };
        let value = r.get("value").cloned().unwrap_or(Value::Null);
        out.push(SeenRecord { key, offset, value });
    }
    Ok(out)
}

/// `[{"topic","partition"}]` → keys. `None` when absent or not an array.
fn parse_assignments(v: Option<&Value>) -> Option<Vec<String>> {
    let arr = v?.as_array()?;
    let mut out = Vec::with_capacity(arr.len());
    for a in arr {
        let t = a.get("topic").and_then(Value::as_str)?;
        let p = a
            .get("partition")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())?;
        out.push(key_of(t, p));
    }
    Some(out)
}

fn parse_committed(v: &Value) -> Result<Vec<KeyOffset>, Failure> {
    let arr = if let Some(a) = v.as_array() {
        a
    } else if let Some(a) = v.get("offsets").and_then(Value::as_array) {
        a
    } else if let Some(a) = v.get("partitions").and_then(Value::as_array) {
        a
    } else {
        return Err(Failure::Malformed {
            detail: "committed offsets: no array".into(),
        });
    };
    let mut out = Vec::with_capacity(arr.len());
    for e in arr {
        let t = e.get("topic").and_then(Value::as_str);
        let p = e
            .get("partition")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        let (Some(t), Some(p)) = (t, p) else {
            return Err(Failure::Malformed {
                detail: "committed offsets: entry without topic/partition".into(),
            });
        };
        let offset = ["committed_offset", "committed", "offset"]
            .iter()
            .find_map(|k| e.get(*k))
            .and_then(Value::as_u64);
        out.push(KeyOffset {
            key: key_of(t, p),
            offset,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn committed_offsets_parse_in_the_shapes_accepted() {
        let a = json!([{"topic": "t", "partition": 1, "committed_offset": 5, "high_watermark": 9}]);
        let b = json!({"offsets": [{"topic": "t", "partition": 1, "offset": 5}]});
        let c = json!({"partitions": [{"topic": "t", "partition": 1, "committed": null}]});
        assert_eq!(parse_committed(&a).unwrap()[0].offset, Some(5));
        assert_eq!(parse_committed(&b).unwrap()[0].offset, Some(5));
        assert_eq!(parse_committed(&c).unwrap()[0].offset, None);
        assert!(parse_committed(&json!({"x": 1})).is_err());
    }

    #[test]
    fn group_records_need_their_partition() {
        let ok = json!({"records": [{"topic": "t", "partition": 0, "offset": 3, "value": 9}]});
        let recs = parse_records(&ok, None).unwrap();
        assert_eq!(recs[0].key, "t/0");
        let bad = json!({"records": [{"offset": 3, "value": 9}]});
        assert!(parse_records(&bad, None).is_err());
    }
}
