//! A WebSocket connection's subscriptions and their credit.
//!
//! Invariant: records sent on a subscription never exceed the credit granted on it. A
//! subscription's source is polled only while it has credit and nothing pending, so at
//! most one fetch of records (a stream step: ≤ 500 records, ≈ 1 MiB) waits per
//! subscription for credit.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::task::Poll;

use axum::extract::ws::Message;
use futures::stream::{BoxStream, StreamExt};
use futures::SinkExt;
use psubd_wire::{AssignmentFrame, ServerFrame};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::frames::{self, error_frame, send, stalled, End, Sink, MAX_SUBSCRIPTIONS, SEND_STALL};
use crate::error::ApiError;
use crate::stream::{Item, StreamRecord};

/// One subscription of a connection.
pub(crate) struct Subscription {
    /// Its number on the connection.
    pub(crate) number: u64,
    /// The id of the `subscribe` request, echoed on its terminal error.
    pub(crate) id: Option<Value>,
    /// Where its records come from.
    pub(crate) source: BoxStream<'static, Item>,
    /// Records the client may still receive.
    pub(crate) credit: u64,
    /// Records fetched, waiting for credit.
    pub(crate) pending: VecDeque<StreamRecord>,
    /// Its stream slot on the node.
    pub(crate) _slot: OwnedSemaphorePermit,
}

/// What one source produced.
pub(crate) struct Produced {
    number: u64,
    item: Option<Item>,
}

/// The subscriptions of one connection.
#[derive(Default)]
pub(crate) struct Subscriptions {
    active: BTreeMap<u64, Subscription>,
    /// Subscribe operations under way (they count against the limit).
    reserved: usize,
    /// The last subscription number handed out.
    last: u64,
}

impl Subscriptions {
    /// Reserves a number for a subscribe operation (0 for other operations).
    ///
    /// # Errors
    /// 400 when the connection holds its maximum of subscriptions.
    pub(crate) fn reserve(&mut self, subscribe: bool) -> Result<u64, ApiError> {
        if !subscribe {
            return Ok(0);
        }
        if self.active.len() + self.reserved >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "a WebSocket connection may hold at most {MAX_SUBSCRIPTIONS} subscriptions"
                ),
            });
        }
        self.reserved += 1;
        self.last += 1;
        Ok(self.last)
    }

    /// A subscribe operation ended without a subscription.
    pub(crate) fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// A subscribe operation succeeded.
    pub(crate) fn insert(&mut self, subscription: Subscription) {
        self.release();
        self.active.insert(subscription.number, subscription);
    }

    /// Grants `n` more records.
    ///
    /// # Errors
    /// 400 for an unknown subscription.
    pub(crate) fn grant(&mut self, number: u64, n: u64) -> Result<(), ApiError> {
        let sub = self
            .active
            .get_mut(&number)
            .ok_or_else(|| unknown(number))?;
        sub.credit = sub.credit.saturating_add(n);
        Ok(())
    }

    /// Ends a subscription (a group member leaves when its source is dropped).
    ///
    /// # Errors
    /// 400 for an unknown subscription.
    pub(crate) fn remove(&mut self, number: u64) -> Result<(), ApiError> {
        self.active
            .remove(&number)
            .map(|_| ())
            .ok_or_else(|| unknown(number))
    }

    /// The next item of any subscription that has credit and nothing pending; never
    /// ready when there is none.
    pub(crate) async fn next_item(&mut self) -> Option<Produced> {
        poll_fn(|cx| {
            for sub in self.active.values_mut() {
                if sub.credit == 0 || !sub.pending.is_empty() {
                    continue;
                }
                if let Poll::Ready(item) = sub.source.poll_next_unpin(cx) {
                    return Poll::Ready(Some(Produced {
                        number: sub.number,
                        item,
                    }));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Takes what a source produced: records wait for credit; an assignment is sent; an
    /// error or the end of the source ends the subscription.
    pub(crate) async fn take(&mut self, produced: Produced, sink: &mut Sink) -> Result<(), End> {
        let number = produced.number;
        let Some(sub) = self.active.get_mut(&number) else {
            return Ok(());
        };
        match produced.item {
            Some(Item::Records(records)) => {
                sub.pending.extend(records);
                Ok(())
            }
            Some(Item::Assignment {
                generation,
                assignments,
            }) => {
                let frame = ServerFrame::Assignment(AssignmentFrame {
                    subscription: number,
                    generation,
                    assignments: crate::wire::topic_partitions(&assignments),
                });
                send(sink, frames::text(&frame)).await
            }
            Some(Item::Error(error)) => {
                let id = sub.id.clone();
                self.active.remove(&number);
                send(sink, error_frame(&id, &error, Some(number))).await
            }
            None => {
                // The source ended (the node is shutting down): the close frame follows.
                self.active.remove(&number);
                Ok(())
            }
        }
    }

    /// Sends pending records within credit.
    pub(crate) async fn send_pending(&mut self, sink: &mut Sink) -> Result<(), End> {
        let mut fed = false;
        for sub in self.active.values_mut() {
            while sub.credit > 0 {
                let Some(record) = sub.pending.pop_front() else {
                    break;
                };
                sub.credit -= 1;
                let frame = record_frame(sub.number, &record.json);
                match tokio::time::timeout(SEND_STALL, sink.feed(Message::text(frame))).await {
                    Ok(Ok(())) => fed = true,
                    Ok(Err(_)) => return Err(End::Gone),
                    Err(_) => return Err(stalled()),
                }
            }
        }
        if fed {
            match tokio::time::timeout(SEND_STALL, sink.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Gone),
                Err(_) => return Err(stalled()),
            }
        }
        Ok(())
    }
}

fn unknown(number: u64) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("no subscription {number} on this connection"),
    }
}

/// `{"type":"record","subscription":N,"record":{...}}` (a [`psubd_wire::RecordFrame`]),
/// written around the already rendered record rather than re-serialised: records are the
/// hot path of a subscription.
fn record_frame(number: u64, record: &[u8]) -> String {
    let mut out = Vec::with_capacity(record.len() + 48);
    out.extend_from_slice(b"{\"type\":\"record\",\"subscription\":");
    out.extend_from_slice(number.to_string().as_bytes());
    out.extend_from_slice(b",\"record\":");
    out.extend_from_slice(record);
    out.push(b'}');
    // Rendered records are UTF-8 (strings are escaped, JSON values were validated).
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_frames_are_json() {
        let frame = record_frame(3, br#"{"offset":7}"#);
        let parsed: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(parsed["type"], "record");
        assert_eq!(parsed["subscription"], 3);
        assert_eq!(parsed["record"]["offset"], 7);
    }
}
