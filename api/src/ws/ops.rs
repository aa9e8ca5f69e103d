//! The client's WebSocket operations: parsing, and serving them.
//!
//! `publish`, `commit` and a group `subscribe`'s join are served by the HTTP routes
//! themselves (called in-process, no network): the WebSocket cannot drift from HTTP in
//! validation, semantics or error bodies.

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::error_frame;
use super::subscription::Subscription;
use crate::error::ApiError;
use crate::fetch::{parse_offset, parse_partition};
use crate::group_stream::member_records;
use crate::groups::{validate_group, validate_member};
use crate::state::AppState;
use crate::stream::{acquire, partition_records};

/// What an operation resulted in.
pub(crate) enum Done {
    /// A frame to send.
    Reply(String),
    /// A subscription started: its ack, then its records.
    Subscribed {
        /// The ack.
        reply: String,
        /// The subscription.
        subscription: Subscription,
    },
    /// A subscribe operation failed: its error frame.
    SubscribeFailed(String),
}

/// A parsed operation.
pub(crate) enum Op {
    Publish {
        id: Option<Value>,
        topic: String,
        body: Bytes,
        acks: Option<String>,
    },
    Subscribe {
        id: Option<Value>,
        body: SubscribeOp,
    },
    Commit {
        id: Option<Value>,
        group: String,
        body: Bytes,
    },
    Credit {
        id: Option<Value>,
        subscription: u64,
        n: u64,
    },
    Unsubscribe {
        id: Option<Value>,
        subscription: u64,
    },
}

#[derive(Deserialize)]
struct Envelope {
    op: String,
    #[serde(default)]
    id: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishOp<'a> {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    topic: String,
    #[serde(borrow)]
    records: &'a RawValue,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    acks: Option<String>,
}

/// `subscribe`: a partition, or a group (join with `topics`, or attach with `member_id`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeOp {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<u64>,
    #[serde(default)]
    offset: Option<Value>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    member_id: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    session_timeout_ms: Option<u64>,
    #[serde(default)]
    auto_offset_reset: Option<String>,
    #[serde(default)]
    assignment_strategy: Option<String>,
    #[serde(default)]
    credit: Option<u64>,
}

/// The join body of `POST /v1/groups/{g}/members`.
#[derive(Serialize)]
struct JoinFields {
    topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_offset_reset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assignment_strategy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitOp<'a> {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    group: String,
    member_id: String,
    generation: u64,
    #[serde(borrow)]
    offsets: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditOp {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    subscription: u64,
    n: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeOp {
    #[serde(rename = "op")]
    _op: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: Option<IgnoredAny>,
    subscription: u64,
}

fn invalid_json(error: serde_json::Error) -> ApiError {
    ApiError::InvalidJson {
        message: format!("invalid operation: {error}"),
    }
}

impl Op {
    /// Parses one text message.
    ///
    /// # Errors
    /// 400 `invalid_json` (with the id when it could be read) for a malformed operation or
    /// an unknown `op`.
    pub(crate) fn parse(text: &str) -> Result<Op, (Option<Value>, ApiError)> {
        let envelope: Envelope = serde_json::from_str(text).map_err(|e| (None, invalid_json(e)))?;
        let id = envelope.id;
        let fail = |e: serde_json::Error| (id.clone(), invalid_json(e));
        match envelope.op.as_str() {
            "publish" => {
                let op: PublishOp<'_> = serde_json::from_str(text).map_err(fail)?;
                let mut body = Vec::with_capacity(op.records.get().len() + 48);
                body.extend_from_slice(b"{\"records\":");
                body.extend_from_slice(op.records.get().as_bytes());
                if let Some(encoding) = &op.encoding {
                    body.extend_from_slice(b",\"encoding\":");
                    body.extend_from_slice(json!(encoding).to_string().as_bytes());
                }
                body.push(b'}');
                Ok(Op::Publish {
                    id,
                    topic: op.topic,
                    body: Bytes::from(body),
                    acks: op.acks,
                })
            }
            "subscribe" => {
                let body: SubscribeOp = serde_json::from_str(text).map_err(fail)?;
                Ok(Op::Subscribe { id, body })
            }
            "commit" => {
                let op: CommitOp<'_> = serde_json::from_str(text).map_err(fail)?;
                let body = format!(
                    "{{\"member_id\":{},\"generation\":{},\"offsets\":{}}}",
                    json!(op.member_id),
                    op.generation,
                    op.offsets.get()
                );
                Ok(Op::Commit {
                    id,
                    group: op.group,
                    body: Bytes::from(body),
                })
            }
            "credit" => {
                let op: CreditOp = serde_json::from_str(text).map_err(fail)?;
                Ok(Op::Credit {
                    id,
                    subscription: op.subscription,
                    n: op.n,
                })
            }
            "unsubscribe" => {
                let op: UnsubscribeOp = serde_json::from_str(text).map_err(fail)?;
                Ok(Op::Unsubscribe {
                    id,
                    subscription: op.subscription,
                })
            }
            other => Err((
                id,
                ApiError::InvalidRequest {
                    message: format!(
                        "unknown op '{other}'; expected publish, subscribe, commit, credit or unsubscribe"
                    ),
                },
            )),
        }
    }

    /// True for `subscribe`.
    pub(crate) fn is_subscribe(&self) -> bool {
        matches!(self, Op::Subscribe { .. })
    }

    /// The request's id.
    pub(crate) fn id(&self) -> Option<Value> {
        match self {
            Op::Publish { id, .. }
            | Op::Subscribe { id, .. }
            | Op::Commit { id, .. }
            | Op::Credit { id, .. }
            | Op::Unsubscribe { id, .. } => id.clone(),
        }
    }

    /// Serves a publish, commit or subscribe (`number` is the subscription's number).
    pub(crate) fn run(self, state: AppState, number: u64) -> BoxFuture<'static, Done> {
        async move {
            match self {
                Op::Publish {
                    id,
                    topic,
                    body,
                    acks,
                } => {
                    let mut uri = format!("/v1/topics/{}/records", path_segment(&topic));
                    if let Some(acks) = acks {
                        uri.push_str("?acks=");
                        uri.push_str(&path_segment(&acks));
                    }
                    Done::Reply(match call(&state, &uri, body).await {
                        Ok((StatusCode::ACCEPTED, answer)) => {
                            json!({"type": "ack", "id": id, "accepted": answer["accepted"]})
                                .to_string()
                        }
                        Ok((status, answer)) => json!({
                            "type": "ack",
                            "id": id,
                            "offsets": answer["offsets"],
                            "partial": status == StatusCode::MULTI_STATUS,
                        })
                        .to_string(),
                        Err(error) => error_reply(&id, error),
                    })
                }
                Op::Commit { id, group, body } => {
                    let uri = format!("/v1/groups/{}/offsets", path_segment(&group));
                    Done::Reply(match call(&state, &uri, body).await {
                        Ok(_) => json!({"type": "ack", "id": id}).to_string(),
                        Err(error) => error_reply(&id, error),
                    })
                }
                Op::Subscribe { id, body } => match subscribe(&state, &id, body, number).await {
                    Ok((reply, subscription)) => Done::Subscribed {
                        reply,
                        subscription,
                    },
                    Err(error) => Done::SubscribeFailed(error_reply(&id, error)),
                },
                Op::Credit { id, .. } | Op::Unsubscribe { id, .. } => {
                    Done::Reply(json!({"type": "ack", "id": id}).to_string())
                }
            }
        }
        .boxed()
    }
}

/// An error answered by an HTTP route, or one of ours.
enum CallError {
    /// The route's error body.
    Route(Value),
    /// Ours.
    Api(ApiError),
}

impl From<ApiError> for CallError {
    fn from(error: ApiError) -> Self {
        CallError::Api(error)
    }
}

fn error_reply(id: &Option<Value>, error: CallError) -> String {
    match error {
        CallError::Api(error) => error_frame(id, &error, None),
        CallError::Route(mut body) => {
            body["type"] = json!("error");
            if let Some(id) = id {
                body["id"] = id.clone();
            }
            body.to_string()
        }
    }
}

/// The routes WebSocket operations are served by.
fn routes(state: &AppState) -> Router {
    crate::publish::router(state.clone()).merge(crate::groups::router(state.clone()))
}

/// POSTs a JSON body to one of the API's own routes, in-process.
async fn call(state: &AppState, uri: &str, body: Bytes) -> Result<(StatusCode, Value), CallError> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| {
            CallError::Api(ApiError::InvalidRequest {
                message: format!("cannot form the request: {e}"),
            })
        })?;
    let response = match routes(state).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    // The routes' answers are small (offsets, member ids) or error bodies.
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .map_err(|e| {
            CallError::Api(ApiError::Internal {
                detail: format!("reading an in-process answer: {e}"),
            })
        })?;
    let answer: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Api(ApiError::Internal {
                detail: format!("in-process answer is not JSON: {e}"),
            })
        })?
    };
    if status.is_client_error() || status.is_server_error() {
        Err(CallError::Route(answer))
    } else {
        Ok((status, answer))
    }
}

/// Percent-encodes a path segment or query value (names are validated by the route).
fn path_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Starts a subscription: a partition from an offset, or a group member (joined here,
/// or an existing one).
async fn subscribe(
    state: &AppState,
    id: &Option<Value>,
    op: SubscribeOp,
    number: u64,
) -> Result<(String, Subscription), CallError> {
    let slot = acquire(state)?;
    let credit = op.credit.unwrap_or(0);
    let (source, mut ack) = match (op.topic, op.group) {
        (Some(topic), None) => {
            if op.member_id.is_some() || op.topics.is_some() {
                return Err(mixed().into());
            }
            let raw_partition = op.partition.ok_or_else(|| ApiError::InvalidRequest {
                message: "a partition subscription needs 'partition'".into(),
            })?;
            let meta = state.edge.topic(&topic).await?;
            let partition =
                parse_partition(&topic, &raw_partition.to_string(), meta.config.partitions)?;
            let offset = match &op.offset {
                None => parse_offset(None)?,
                Some(Value::String(text)) => parse_offset(Some(text))?,
                Some(Value::Number(n)) => parse_offset(Some(&n.to_string()))?,
                Some(other) => parse_offset(Some(&other.to_string()))?,
            };
            let placement = meta.partitions[partition as usize].clone();
            let source =
                partition_records(state.clone(), topic.clone(), partition, placement, offset)
                    .boxed();
            (source, json!({"topic": topic, "partition": partition}))
        }
        (None, Some(group)) => {
            if op.partition.is_some() || op.offset.is_some() {
                return Err(mixed().into());
            }
            validate_group(&group)?;
            let (member, joined) = match (op.member_id, op.topics) {
                (Some(member), None) => {
                    validate_member(&member)?;
                    (member, false)
                }
                (None, Some(topics)) => {
                    let fields = JoinFields {
                        topics,
                        session_timeout_ms: op.session_timeout_ms,
                        auto_offset_reset: op.auto_offset_reset,
                        assignment_strategy: op.assignment_strategy,
                    };
                    (join(state, &group, &fields).await?, true)
                }
                _ => return Err(ApiError::InvalidRequest {
                    message:
                        "a group subscription takes either 'topics' (join) or 'member_id' (attach)"
                            .into(),
                }
                .into()),
            };
            match member_records(state.clone(), group.clone(), member.clone()).await {
                Ok(source) => (source.boxed(), json!({"group": group, "member_id": member})),
                Err(error) => {
                    if joined {
                        let _ = state
                            .edge
                            .group(
                                &group,
                                psubd_actors::coordinator::GroupRequest::Leave {
                                    member_id: member,
                                },
                            )
                            .await;
                    }
                    return Err(error.into());
                }
            }
        }
        _ => {
            return Err(ApiError::InvalidRequest {
                message: "subscribe takes either 'topic' and 'partition', or 'group'".into(),
            }
            .into())
        }
    };
    ack["type"] = json!("ack");
    ack["id"] = id.clone().unwrap_or(Value::Null);
    ack["subscription"] = json!(number);
    ack["credit"] = json!(credit);
    Ok((
        ack.to_string(),
        Subscription {
            number,
            id: id.clone(),
            source,
            credit,
            pending: Default::default(),
            _slot: slot,
        },
    ))
}

fn mixed() -> ApiError {
    ApiError::InvalidRequest {
        message: "subscribe takes either 'topic' and 'partition', or 'group', not both".into(),
    }
}

/// Joins through the HTTP route; returns the member id.
async fn join(state: &AppState, group: &str, fields: &JoinFields) -> Result<String, CallError> {
    let body = serde_json::to_vec(fields).map_err(|e| ApiError::Internal {
        detail: format!("join body: {e}"),
    })?;
    let uri = format!("/v1/groups/{}/members", path_segment(group));
    let (_, answer) = call(state, &uri, Bytes::from(body)).await?;
    answer["member_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::Internal {
                detail: "join answered without a member_id".into(),
            }
            .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse_and_keep_their_id() {
        let op = Op::parse(r#"{"op":"credit","id":"c1","subscription":2,"n":5}"#).unwrap();
        assert!(matches!(
            op,
            Op::Credit {
                subscription: 2,
                n: 5,
                ..
            }
        ));
        assert_eq!(op.id(), Some(json!("c1")));
        let Err((id, error)) = Op::parse(r#"{"op":"credit","id":7,"subscription":2}"#) else {
            panic!("a credit without n must be refused");
        };
        assert_eq!(id, Some(json!(7)));
        assert_eq!(error.code(), "invalid_json");
        let Err((_, error)) = Op::parse(r#"{"op":"fly","id":1}"#) else {
            panic!("unknown op");
        };
        assert_eq!(error.code(), "invalid_request");
        let Ok(Op::Publish { body, .. }) = Op::parse(
            r#"{"op":"publish","topic":"t","records":[{"value":1.50}],"encoding":"json"}"#,
        ) else {
            panic!("publish parses");
        };
        assert_eq!(
            &body[..],
            br#"{"records":[{"value":1.50}],"encoding":"json"}"#,
            "records pass through byte for byte"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("orders.v1-x_y"), "orders.v1-x_y");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
