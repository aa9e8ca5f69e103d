//! Group member streams (docs/api.md § Streams): `GET /v1/groups/{g}/members/{m}/stream`, as
//! SSE or NDJSON like partition streams, and the member side of WebSocket group
//! subscriptions.
//!
//! A member stream is a loop of ordinary member fetches (`Service::poll_member` then
//! `Service::read_and_report`), so positions, rebalances and fencing behave exactly as for
//! `GET .../records`. On top of that:
//!
//! - The stream starts with an `assignment` item and emits another whenever the member's
//!   generation or partitions change.
//! - While it is open, a heartbeat task keeps the member alive even when the client reads
//!   nothing (a stalled reader is slow, not dead; TCP backpressure holds the fetch loop).
//! - It starts at the group's committed offsets (a member resuming a partition starts at
//!   the committed offset: records handed to an earlier connection but never committed
//!   are delivered again, never skipped). While it is open, its positions advance as its
//!   records are written to it (each fetch confirms the previous fetch's position token).
//! - Closing it (the client goes away) detaches the member: it leaves the group
//!   [`STREAM_REATTACH_GRACE`] later unless a stream re-attached to it meanwhile (a
//!   browser's EventSource reconnects on its own), so the member's partitions move to the
//!   others without waiting for the session timeout, and a reconnect does not meet 409.
//!   Session expiry remains the fallback when this node dies. A node shutting down does
//!   not detach: the client may re-attach to the same member on another node.
//! - It never commits: offsets move only by an explicit `POST /v1/groups/{g}/offsets`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream, StreamExt};
use psubd_actors::assignment::TopicPartition;
use psubd_actors::coordinator::{PollFrom, PositionToken};
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument};

use crate::error::ApiError;
use crate::service::reads::ReadBounds;
use crate::service::{names, Caller};
use crate::state::AppState;
use crate::stream::{
    acquire, negotiate, respond, Item, StreamRecord, STREAM_MAX_BYTES, STREAM_MAX_RECORDS,
    UNAVAILABLE_BACKOFF,
};

/// Long-poll of one fetch of a member stream. Shorter than a partition stream's: a member
/// hears of a rebalance only between fetches, and the remaining members of a group should
/// take over a leaving member's partitions promptly.
const MEMBER_POLL_MS: u64 = 2_000;

/// How often an open stream heartbeats its member. Below the shortest session timeout.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(1_000);

/// How long each heartbeat keeps the member alive beyond its session timeout: covers
/// the gap to the next heartbeat. It is also how much later than its session timeout a
/// member whose node died is removed.
const HEARTBEAT_GRACE_MS: u64 = 2_000;

/// How long a member whose stream closed waits for a stream to re-attach before it leaves
/// the group: longer than a browser EventSource's reconnect delay (about 3 s), short
/// enough that its partitions soon move to the other members.
pub(crate) const STREAM_REATTACH_GRACE: Duration = Duration::from_secs(5);

/// The routes of this resource.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/groups/{group}/members/{member}/stream",
            get(stream_member),
        )
        .with_state(state)
}

#[instrument(skip_all, fields(group = %group))]
async fn stream_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, member)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    names::group(&group)?;
    names::member(&member)?;
    let framing = negotiate(&headers)?;
    let permit = acquire(&state)?;
    let items = member_records(state, caller, group, member).await?;
    Ok(respond(items, framing, permit))
}

/// Keeps the member alive while the stream lives, and detaches it when it is dropped.
struct MemberGuard {
    state: AppState,
    caller: Caller,
    group: String,
    member: String,
    /// The attachment this stream holds (the attaching poll's lease): its detach names it.
    attachment: u64,
    /// Stops the heartbeat task.
    heartbeat: CancellationToken,
}

impl MemberGuard {
    fn start(
        state: AppState,
        caller: Caller,
        group: String,
        member: String,
        attachment: u64,
    ) -> Self {
        let heartbeat = state.shutdown.child_token();
        let stop = heartbeat.clone();
        let (hb_state, hb_caller) = (state.clone(), caller.clone());
        let (hb_group, hb_member) = (group.clone(), member.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                }
                match hb_state
                    .service
                    .poll_member(
                        &hb_caller,
                        &hb_group,
                        &hb_member,
                        HEARTBEAT_GRACE_MS,
                        PollFrom::Confirmed,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(ApiError::MemberFenced { .. }) => return,
                    Err(error) => debug!(%error, "member stream heartbeat failed"),
                }
            }
        });
        Self {
            state,
            caller,
            group,
            member,
            attachment,
            heartbeat,
        }
    }
}

impl Drop for MemberGuard {
    fn drop(&mut self) {
        self.heartbeat.cancel();
        if self.state.shutdown.is_cancelled() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        let caller = self.caller.clone();
        let group = std::mem::take(&mut self.group);
        let member_id = std::mem::take(&mut self.member);
        let grace_ms = STREAM_REATTACH_GRACE.as_millis() as u64;
        let attachment = self.attachment;
        runtime.spawn(async move {
            let outcome = state
                .service
                .detach_member(&caller, &group, member_id, grace_ms, attachment)
                .await;
            debug!(group = %group, ok = outcome.is_ok(), "member stream closed: detached");
        });
    }
}

/// Where a member stream is.
struct MemberCursor {
    state: AppState,
    caller: Caller,
    group: String,
    member: String,
    /// The position token of the last fetch, whose records were written to the stream:
    /// the next fetch confirms it.
    position: Option<PositionToken>,
    /// Generation and partitions the client was last told.
    told: (u64, Vec<TopicPartition>),
    done: bool,
    _guard: MemberGuard,
}

/// The member's records, as stream items, from its assigned partitions: an `assignment`
/// item first and on every change, then records as they come. Checks the member exists
/// first, so that a fenced member is refused (409) before a stream starts.
///
/// # Errors
/// 409 `member_fenced`; 503 when the coordinator or the offsets are unreachable.
pub(crate) async fn member_records(
    state: AppState,
    caller: Caller,
    group: String,
    member: String,
) -> Result<impl Stream<Item = Item> + Send + 'static, ApiError> {
    // Attaching starts over from the committed offsets (and ends a detach).
    let lease = state
        .service
        .poll_member(
            &caller,
            &group,
            &member,
            HEARTBEAT_GRACE_MS,
            PollFrom::Committed,
        )
        .await?;
    let shutdown = state.shutdown.clone();
    let first = Item::Assignment {
        generation: lease.generation,
        assignments: lease.assignments.clone(),
    };
    let cursor = MemberCursor {
        _guard: MemberGuard::start(
            state.clone(),
            caller.clone(),
            group.clone(),
            member.clone(),
            lease.attachment,
        ),
        state,
        caller,
        group,
        member,
        position: None,
        told: (lease.generation, lease.assignments),
        done: false,
    };
    let rest = stream::unfold(cursor, |mut cursor| async move {
        if cursor.done {
            return None;
        }
        let items = cursor.step().await;
        Some((items, cursor))
    })
    .flat_map(stream::iter);
    Ok(stream::iter([first])
        .chain(rest)
        .take_until(async move { shutdown.cancelled().await }))
}

impl MemberCursor {
    /// One or more fetches, until there is something to emit.
    async fn step(&mut self) -> Vec<Item> {
        let bounds = ReadBounds {
            max_records: STREAM_MAX_RECORDS,
            max_bytes: STREAM_MAX_BYTES,
            timeout_ms: MEMBER_POLL_MS,
        };
        loop {
            let from = match &self.position {
                Some(token) => PollFrom::Token(token.clone()),
                None => PollFrom::Confirmed,
            };
            let outcome = match self
                .state
                .service
                .poll_member(
                    &self.caller,
                    &self.group,
                    &self.member,
                    MEMBER_POLL_MS,
                    from,
                )
                .await
            {
                Ok(lease) => {
                    self.state
                        .service
                        .read_and_report(&self.caller, &self.group, &lease, bounds)
                        .await
                }
                Err(error) => Err(error),
            };
            let batch = match outcome {
                Ok(batch) => batch,
                Err(error) if error.retriable() => {
                    tokio::time::sleep(UNAVAILABLE_BACKOFF).await;
                    continue;
                }
                Err(error) => {
                    self.done = true;
                    return vec![Item::Error(error)];
                }
            };
            self.position = Some(batch.position.clone());
            let mut items = Vec::new();
            if self.told.0 != batch.generation || self.told.1 != batch.assignments {
                self.told = (batch.generation, batch.assignments.clone());
                items.push(Item::Assignment {
                    generation: batch.generation,
                    assignments: batch.assignments,
                });
            }
            let mut records = Vec::new();
            for part in batch.parts {
                for span in &part.spans {
                    if let Some(json) = part.json.get(span.start..span.end) {
                        records.push(StreamRecord {
                            partition: part.partition.partition,
                            offset: span.offset,
                            json: json.to_vec(),
                        });
                    }
                }
            }
            if !records.is_empty() {
                items.push(Item::Records(records));
            }
            if !items.is_empty() {
                return items;
            }
        }
    }
}
