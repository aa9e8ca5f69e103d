//! The client's WebSocket operations: parsing, and serving them.
//!
//! `publish`, `commit` and a group `subscribe`'s join call the same service operations
//! as the HTTP routes, and records and offsets are parsed by the same JSON shapes: the
//! WebSocket cannot drift from HTTP in validation, semantics or error bodies.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use psubd_actors::controller::access::Operation;
use psubd_wire::{Ack, ServerFrame};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::frames::{self, error_frame};
use super::subscription::Subscription;
use crate::error::ApiError;
use crate::fetch::{parse_offset, parse_partition};
use crate::group_stream::member_records;
use crate::groups::commit_offset;
use crate::publish::{push_records, report, Encoding, PublishRecord};
use crate::service::groups::{CommitRequest, GroupName, JoinRequest};
use crate::service::publish::{total_failure, Acks, Published};
use crate::service::{names, Caller};
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
        /// The `records` array, as sent.
        records: Box<RawValue>,
        encoding: Option<String>,
        acks: Option<String>,
    },
    Subscribe {
        id: Option<Value>,
        body: SubscribeOp,
    },
    Commit {
        id: Option<Value>,
        group: String,
        member_id: String,
        generation: u64,
        /// The `offsets` array, as sent.
        offsets: Box<RawValue>,
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
                Ok(Op::Publish {
                    id,
                    topic: op.topic,
                    records: op.records.to_owned(),
                    encoding: op.encoding,
                    acks: op.acks,
                })
            }
            "subscribe" => {
                let body: SubscribeOp = serde_json::from_str(text).map_err(fail)?;
                Ok(Op::Subscribe { id, body })
            }
            "commit" => {
                let op: CommitOp<'_> = serde_json::from_str(text).map_err(fail)?;
                Ok(Op::Commit {
                    id,
                    group: op.group,
                    member_id: op.member_id,
                    generation: op.generation,
                    offsets: op.offsets.to_owned(),
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

    /// Serves a publish, commit or subscribe (`number` is the subscription's number) for
    /// the connection's caller: each operation is checked against the caller's ACLs and
    /// counts against its request quota.
    pub(crate) fn run(
        self,
        state: AppState,
        caller: Caller,
        number: u64,
    ) -> BoxFuture<'static, Done> {
        async move {
            if let Err(error) = state.service.admit_request(&caller) {
                let frame = error_frame(&self.id(), &error, None);
                return if self.is_subscribe() {
                    Done::SubscribeFailed(frame)
                } else {
                    Done::Reply(frame)
                };
            }
            let caller = &caller;
            match self {
                Op::Publish {
                    id,
                    topic,
                    records,
                    encoding,
                    acks,
                } => Done::Reply(
                    match publish(&state, caller, &topic, &records, encoding, acks.as_deref()).await
                    {
                        Ok(Published::Accepted(count)) => frames::text(&ServerFrame::Ack(Ack {
                            id,
                            accepted: Some(count as u64),
                            ..Ack::default()
                        })),
                        Ok(Published::Delivered(reports)) => match total_failure(&reports) {
                            Some(error) => error_frame(&id, &error, None),
                            None => frames::text(&ServerFrame::Ack(Ack {
                                id,
                                offsets: Some(reports.iter().map(report).collect()),
                                partial: Some(reports.iter().any(|d| d.result.is_err())),
                                ..Ack::default()
                            })),
                        },
                        Err(error) => error_frame(&id, &error, None),
                    },
                ),
                Op::Commit {
                    id,
                    group,
                    member_id,
                    generation,
                    offsets,
                } => Done::Reply(
                    match commit(&state, caller, group, member_id, generation, &offsets).await {
                        Ok(()) => frames::ack(id),
                        Err(error) => error_frame(&id, &error, None),
                    },
                ),
                Op::Subscribe { id, body } => {
                    match subscribe(&state, caller, &id, body, number).await {
                        Ok((reply, subscription)) => Done::Subscribed {
                            reply,
                            subscription,
                        },
                        Err(error) => Done::SubscribeFailed(error_frame(&id, &error, None)),
                    }
                }
                Op::Credit { id, .. } | Op::Unsubscribe { id, .. } => Done::Reply(frames::ack(id)),
            }
        }
        .boxed()
    }
}

/// Parses a JSON body part the way the HTTP routes parse their bodies.
fn from_json<'a, T: Deserialize<'a>>(raw: &'a str) -> Result<T, ApiError> {
    serde_json::from_str(raw).map_err(|e| ApiError::InvalidJson {
        message: format!("invalid JSON body: {e}"),
    })
}

/// `publish`: the records of an HTTP JSON publish, through the same service operation.
async fn publish(
    state: &AppState,
    caller: &Caller,
    topic: &str,
    records: &RawValue,
    encoding: Option<String>,
    acks: Option<&str>,
) -> Result<Published, ApiError> {
    let acks = Acks::parse(acks)?;
    let limit = state.service.limits().max_request_bytes;
    if records.get().len() > limit {
        return Err(ApiError::RequestTooLarge { limit });
    }
    let mut batch = state.service.begin_publish(caller, topic).await?;
    let encoding: Encoding = match encoding {
        None => Encoding::default(),
        Some(name) => {
            serde_json::from_value(Value::String(name)).map_err(|e| ApiError::InvalidJson {
                message: format!("invalid JSON body: {e}"),
            })?
        }
    };
    let records: Vec<PublishRecord<'_>> = from_json(records.get())?;
    push_records(&mut batch, records, encoding)?;
    state.service.publish(caller, batch, acks).await
}

/// `commit`: an HTTP commit, through the same service operation.
async fn commit(
    state: &AppState,
    caller: &Caller,
    group: String,
    member_id: String,
    generation: u64,
    offsets: &RawValue,
) -> Result<(), ApiError> {
    let group = GroupName::parse(group)?;
    let offsets: Vec<psubd_wire::CommitOffset> = from_json(offsets.get())?;
    let request = CommitRequest {
        member_id,
        generation,
        offsets: offsets.into_iter().map(commit_offset).collect(),
    };
    state.service.commit(caller, &group, request).await
}

/// Starts a subscription: a partition from an offset, or a group member (joined here,
/// or an existing one).
async fn subscribe(
    state: &AppState,
    caller: &Caller,
    id: &Option<Value>,
    op: SubscribeOp,
    number: u64,
) -> Result<(String, Subscription), ApiError> {
    let slot = acquire(state)?;
    let credit = op.credit.unwrap_or(0);
    let (source, source_ack) = match (op.topic, op.group) {
        (Some(topic), None) => {
            if op.member_id.is_some() || op.topics.is_some() {
                return Err(mixed());
            }
            let raw_partition = op.partition.ok_or_else(|| ApiError::InvalidRequest {
                message: "a partition subscription needs 'partition'".into(),
            })?;
            let meta = state.service.topic(caller, &topic, Operation::Read).await?;
            let partition =
                parse_partition(&topic, &raw_partition.to_string(), meta.config.partitions)?;
            let offset = match &op.offset {
                None => parse_offset(None)?,
                Some(Value::String(text)) => parse_offset(Some(text))?,
                Some(Value::Number(n)) => parse_offset(Some(&n.to_string()))?,
                Some(other) => parse_offset(Some(&other.to_string()))?,
            };
            let source =
                partition_records(state.clone(), caller.clone(), meta, partition, offset).boxed();
            (
                source,
                Ack {
                    topic: Some(topic),
                    partition: Some(partition),
                    ..Ack::default()
                },
            )
        }
        (None, Some(group)) => {
            if op.partition.is_some() || op.offset.is_some() {
                return Err(mixed());
            }
            let group = GroupName::parse(group)?;
            let (member, joined) = match (op.member_id, op.topics) {
                (Some(member), None) => {
                    names::member(&member)?;
                    (member, false)
                }
                (None, Some(topics)) => {
                    let request = JoinRequest::new(
                        topics,
                        op.session_timeout_ms,
                        op.auto_offset_reset.as_deref(),
                        op.assignment_strategy.as_deref(),
                    )?;
                    let lease = state.service.join(caller, &group, request).await?;
                    (lease.member_id, true)
                }
                _ => return Err(ApiError::InvalidRequest {
                    message:
                        "a group subscription takes either 'topics' (join) or 'member_id' (attach)"
                            .into(),
                }),
            };
            let name = group.as_str().to_string();
            match member_records(state.clone(), caller.clone(), name.clone(), member.clone()).await
            {
                Ok(source) => (
                    source.boxed(),
                    Ack {
                        group: Some(name),
                        member_id: Some(member),
                        ..Ack::default()
                    },
                ),
                Err(error) => {
                    if joined {
                        let _ = state.service.leave(caller, &group, member).await;
                    }
                    return Err(error);
                }
            }
        }
        _ => {
            return Err(ApiError::InvalidRequest {
                message: "subscribe takes either 'topic' and 'partition', or 'group'".into(),
            })
        }
    };
    let ack = ServerFrame::Ack(Ack {
        id: id.clone(),
        subscription: Some(number),
        credit: Some(credit),
        ..source_ack
    });
    Ok((
        frames::text(&ack),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        let Ok(Op::Publish {
            records, encoding, ..
        }) = Op::parse(
            r#"{"op":"publish","topic":"t","records":[{"value":1.50}],"encoding":"json"}"#,
        )
        else {
            panic!("publish parses");
        };
        assert_eq!(
            records.get(),
            r#"[{"value":1.50}]"#,
            "records pass through byte for byte"
        );
        assert_eq!(encoding.as_deref(), Some("json"));
    }
}
