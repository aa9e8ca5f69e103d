//! What a connection sends: frames, the one way to send them (bounded by [`SEND_STALL`]),
//! and why a connection ends. Shared by the connection loop, operations and
//! subscriptions.

use std::time::Duration;

use axum::extract::ws::{close_code, Message, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;
use psubd_wire::{Ack, ErrorFrame, ServerFrame};
use serde_json::Value;

use crate::error::ApiError;

/// Most subscriptions on one connection.
pub const MAX_SUBSCRIPTIONS: usize = 16;

/// How long one frame (or one batch of records) may wait for the client to read before
/// the connection is closed as not keeping up.
pub const SEND_STALL: Duration = Duration::from_secs(60);

/// Why a connection ends.
pub(crate) enum End {
    /// The client closed or went away.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

pub(crate) type Sink = SplitSink<WebSocket, Message>;

/// Sends one frame, or gives up when the client does not take it in time.
pub(crate) async fn send(sink: &mut Sink, text: String) -> Result<(), End> {
    match tokio::time::timeout(SEND_STALL, sink.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(stalled()),
    }
}

pub(crate) fn stalled() -> End {
    End::Close(
        close_code::POLICY,
        format!(
            "client is not reading: a frame waited {} s",
            SEND_STALL.as_secs()
        ),
    )
}

/// An `error` frame: the API's error body, with the request's id.
pub(crate) fn error_frame(
    id: &Option<Value>,
    error: &ApiError,
    subscription: Option<u64>,
) -> String {
    if let ApiError::Internal { detail } = error {
        tracing::error!(cause = %detail, "internal error");
    }
    text(&ServerFrame::Error(ErrorFrame {
        id: id.clone(),
        subscription,
        error: error.body(),
    }))
}

/// An `ack` frame with only the request's id.
pub(crate) fn ack(id: Option<Value>) -> String {
    text(&ServerFrame::Ack(Ack {
        id,
        ..Ack::default()
    }))
}

/// A frame's JSON text.
pub(crate) fn text(frame: &ServerFrame) -> String {
    crate::stream::json_text(frame)
}
