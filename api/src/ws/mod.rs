//! `GET /v1/ws`: the WebSocket API (docs/api.md § Streams).
//!
//! The client sends JSON operations as text messages, each with an optional `id` that the
//! answer echoes:
//!
//! - `publish` — `{"op":"publish","id":1,"topic":"t","records":[...],"encoding":"json",
//!   "acks":"all"}`, answered by `{"type":"ack","id":1,"offsets":[...]}`;
//! - `subscribe` — a partition (`"topic","partition","offset"`), or group membership:
//!   join (`"group","topics"`, with the join options) or attach to a member
//!   (`"group","member_id"`); optional initial `"credit"`. Answered by an `ack` naming the
//!   `subscription`;
//! - `credit` — `{"op":"credit","subscription":1,"n":100}`: the client may receive `n` more
//!   records of that subscription. The server never sends records beyond granted credit;
//! - `commit` — `{"op":"commit","group","member_id","generation","offsets":[...]}`,
//!   answered by an `ack`. Offsets move only by an explicit commit, never on delivery;
//! - `unsubscribe` — `{"op":"unsubscribe","subscription":1}` (a group member leaves after
//!   the re-attach grace, [`STREAM_REATTACH_GRACE`], unless a subscription or stream
//!   attaches to it again meanwhile; a closed connection does the same).
//!
//! The server sends `ack`, `record` (`{"type":"record","subscription":1,"record":{...}}`),
//! `assignment` (a member's generation or partitions changed) and `error` (the API's
//! error body with the request's `id`, and `subscription` when one ended).
//!
//! Publish, join and commit are the HTTP routes themselves, called in-process: the same
//! validation, semantics and error bodies by construction. Subscriptions are the sources
//! of SSE streams ([`partition_records`], [`member_records`]).
//!
//! Bounds: one stream slot for the connection and one per subscription (429 past the
//! node's limit), at most [`MAX_SUBSCRIPTIONS`] subscriptions and [`MAX_IN_FLIGHT`]
//! operations at once (beyond that the connection's messages are not read: TCP
//! backpressure on the client), at most one fetch of records buffered per subscription,
//! and messages up to the request size limit. A client that does not take a frame within
//! [`SEND_STALL`] is closed (1008), as is one sending too large a message (1009);
//! shutdown closes every connection with 1001.
//!
//! [`partition_records`]: crate::stream::partition_records
//! [`member_records`]: crate::group_stream::member_records
//! [`STREAM_REATTACH_GRACE`]: crate::group_stream::STREAM_REATTACH_GRACE

mod frames;
mod ops;
mod subscription;

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use psubd_wire::{Ack, ServerFrame};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, instrument};

use crate::error::ApiError;
use crate::service::Caller;
use crate::state::AppState;
use crate::stream::acquire;
use frames::{error_frame, send, End};
pub use frames::{MAX_SUBSCRIPTIONS, SEND_STALL};
use ops::{Done, Op};
use subscription::Subscriptions;

/// Most operations of one connection being served at once.
pub const MAX_IN_FLIGHT: usize = 32;

/// Room for the operation's own fields around the largest publish body.
const MESSAGE_SLACK: usize = 64 << 10;

/// Bound of the socket's write buffer: a safety net behind TCP backpressure.
const MAX_WRITE_BUFFER: usize = 8 << 20;

/// How long a close frame may take to go out.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// The WebSocket endpoint's path.
pub const PATH: &str = "/v1/ws";

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new().route(PATH, get(upgrade)).with_state(state)
}

#[instrument(skip_all)]
async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|rejection| ApiError::InvalidRequest {
        message: format!("/v1/ws takes a WebSocket upgrade: {rejection}"),
    })?;
    let permit = acquire(&state)?;
    let max_message = state.service.limits.max_request_bytes + MESSAGE_SLACK;
    Ok(ws
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .max_write_buffer_size(MAX_WRITE_BUFFER.max(2 * max_message))
        .on_upgrade(move |socket| serve(state, caller, socket, permit)))
}

/// Serves one connection for the caller its upgrade authenticated.
async fn serve(state: AppState, caller: Caller, socket: WebSocket, permit: OwnedSemaphorePermit) {
    let _slot = permit;
    let (mut sink, mut incoming) = socket.split();
    let shutdown = state.shutdown.clone();
    let mut subs = Subscriptions::default();
    let mut in_flight = FuturesUnordered::new();
    let end = loop {
        if let Err(end) = subs.send_pending(&mut sink).await {
            break end;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                break End::Close(close_code::AWAY, "server shutting down".into());
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let sent = match done {
                    Done::Reply(text) => send(&mut sink, text).await,
                    Done::Subscribed { reply, subscription } => {
                        subs.insert(subscription);
                        send(&mut sink, reply).await
                    }
                    Done::SubscribeFailed(reply) => {
                        subs.release();
                        send(&mut sink, reply).await
                    }
                };
                if let Err(end) = sent {
                    break end;
                }
            }
            message = incoming.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                let text = match message {
                    None => break End::Gone,
                    Some(Err(error)) => break read_error(&error),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let error = ApiError::UnsupportedMediaType {
                            content_type: "binary WebSocket message".into(),
                            expected: "text messages holding JSON operations",
                        };
                        if let Err(end) = send(&mut sink, error_frame(&None, &error, None)).await {
                            break end;
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) => break End::Gone,
                    // Pings are answered by the socket itself.
                    Some(Ok(_)) => continue,
                };
                let reply = match Op::parse(text.as_str()) {
                    Err((id, error)) => Some(error_frame(&id, &error, None)),
                    Ok(Op::Credit { id, subscription, n }) => subs
                        .grant(subscription, n)
                        .err()
                        .map(|error| error_frame(&id, &error, None)),
                    Ok(Op::Unsubscribe { id, subscription }) => Some(match subs.remove(subscription) {
                        Ok(()) => frames::text(&ServerFrame::Ack(Ack {
                            id,
                            subscription: Some(subscription),
                            ..Ack::default()
                        })),
                        Err(error) => error_frame(&id, &error, None),
                    }),
                    Ok(op) => {
                        let reserved = subs.reserve(op.is_subscribe());
                        match reserved {
                            Err(error) => Some(error_frame(&op.id(), &error, None)),
                            Ok(number) => {
                                in_flight.push(op.run(state.clone(), caller.clone(), number));
                                None
                            }
                        }
                    }
                };
                if let Some(reply) = reply {
                    if let Err(end) = send(&mut sink, reply).await {
                        break end;
                    }
                }
            }
            Some(outcome) = subs.next_item() => {
                if let Err(end) = subs.take(outcome, &mut sink).await {
                    break end;
                }
            }
        }
    };
    if let End::Close(code, reason) = end {
        info!(code, reason = %reason, "closing a WebSocket connection");
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_WITHIN, sink.send(frame)).await;
    } else {
        debug!("WebSocket client went away");
    }
}

/// The close for a message the socket refused to read.
fn read_error(error: &axum::Error) -> End {
    let text = error.to_string();
    if text.contains("too long") || text.contains("Space limit") {
        End::Close(close_code::SIZE, format!("message too large: {text}"))
    } else {
        End::Close(close_code::PROTOCOL, format!("unreadable message: {text}"))
    }
}
