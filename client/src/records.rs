//! The single-request calls behind the producer and the consumers: one publish, one
//! fetch. Usable directly when batching is the caller's business.

use std::time::Duration;

use psubd_wire::{FetchResponse, NewRecord, OffsetSpec, PublishRequest, PublishResponse};
use reqwest::{Method, StatusCode};

use crate::client::{segment, Answer, Call, Client};
use crate::error::Error;

/// Longest long-poll the server grants (docs/api.md § Names and limits).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(30);

impl Client {
    /// One batch publish with `acks=all` of JSON values: the answer of a 200 or a 207,
    /// one report per record in request order — check each, a 207 mixes stored and
    /// failed records.
    ///
    /// # Errors
    ///
    /// The server's error when every record failed (503: nothing written; 504: the
    /// outcome is unknown), any 4xx, or [`Error::Transport`].
    pub async fn publish(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<PublishResponse, Error> {
        let request = PublishRequest {
            encoding: None,
            records,
        };
        self.publish_request(topic, &request).await
    }

    /// As [`Client::publish`] with the whole body given, e.g. `encoding: base64` for
    /// binary values and keys.
    ///
    /// # Errors
    ///
    /// As [`Client::publish`].
    pub async fn publish_request(
        &self,
        topic: &str,
        request: &PublishRequest,
    ) -> Result<PublishResponse, Error> {
        let answer = self.call(&publish_call(topic, request)?).await?;
        publish_answer(answer)
    }

    /// One fetch by offset, long-polling up to `wait` at the end of the log.
    ///
    /// # Errors
    ///
    /// `offset_out_of_range` (the body carries the log's bounds), `topic_not_found`,
    /// `partition_not_found`, or [`Error::Transport`].
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: OffsetSpec,
        max_records: u32,
        wait: Duration,
    ) -> Result<FetchResponse, Error> {
        let wait = wait.min(MAX_LONG_POLL);
        let call = Call::get(format!(
            "/v1/topics/{}/partitions/{partition}/records",
            segment(topic)
        ))
        .query("offset", offset)
        .query("max_records", max_records)
        .query("timeout_ms", wait.as_millis())
        .long_poll(wait);
        self.json(&call, StatusCode::OK).await
    }
}

/// The batch publish of `request` to `topic`.
pub(crate) fn publish_call(topic: &str, request: &PublishRequest) -> Result<Call, Error> {
    Call::new(
        Method::POST,
        format!("/v1/topics/{}/records", segment(topic)),
    )
    .json(request)
}

/// A publish's answer: the reports of a 200 or a 207, else the server's error.
pub(crate) fn publish_answer(answer: Answer) -> Result<PublishResponse, Error> {
    match answer.status {
        StatusCode::OK | StatusCode::MULTI_STATUS => {
            let status = answer.status;
            answer.decode(status)
        }
        _ => Err(answer.into_error()),
    }
}
