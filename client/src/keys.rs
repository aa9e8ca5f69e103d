//! [`Keys`]: a compacted topic read and written as a table (docs/api.md § Key views).

use std::time::Duration;

use psubd_wire::{DeliveryReport, KeyScan, Record};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::client::{segment, Call, Client};
use crate::error::Error;
use crate::records::MAX_LONG_POLL;

/// The key views of one compacted topic. Get one with [`Client::keys`].
///
/// Reads are served by any replica; pass the offset a write returned as `min_offset` to
/// read your own write (the replica first waits until it has applied it).
#[derive(Debug, Clone)]
pub struct Keys {
    client: Client,
    topic: String,
}

impl Client {
    /// The key views of compacted `topic`.
    pub fn keys(&self, topic: &str) -> Keys {
        Keys {
            client: self.clone(),
            topic: topic.to_string(),
        }
    }
}

impl Keys {
    fn path(&self, key: &str) -> String {
        format!("/v1/topics/{}/keys/{}", segment(&self.topic), segment(key))
    }

    /// The latest record of `key`, `None` when it was never written or is deleted.
    ///
    /// # Errors
    ///
    /// `topic_not_compacted`, `not_available` (no replica reached `min_offset` within
    /// `wait`), another server error, or [`Error::Transport`].
    pub async fn get(
        &self,
        key: &str,
        min_offset: Option<u64>,
        wait: Duration,
    ) -> Result<Option<Record>, Error> {
        let wait = wait.min(MAX_LONG_POLL);
        let mut call = Call::get(self.path(key))
            .query("timeout_ms", wait.as_millis())
            .long_poll(wait);
        if let Some(offset) = min_offset {
            call = call.query("min_offset", offset);
        }
        match self.client.json(&call, StatusCode::OK).await {
            Ok(record) => Ok(Some(record)),
            Err(e) if e.code() == Some("key_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets `key` to the JSON `value`.
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`]; `outcome_unknown` is not retried.
    pub async fn put(&self, key: &str, value: &Value) -> Result<DeliveryReport, Error> {
        let call = Call::new(Method::PUT, self.path(key)).json(value)?;
        self.client.json(&call, StatusCode::OK).await
    }

    /// Sets `key` to the string `text`.
    ///
    /// # Errors
    ///
    /// As [`Keys::put`].
    pub async fn put_text(&self, key: &str, text: &str) -> Result<DeliveryReport, Error> {
        let call = Call::new(Method::PUT, self.path(key))
            .raw("text/plain; charset=utf-8", text.as_bytes().to_vec());
        self.client.json(&call, StatusCode::OK).await
    }

    /// Sets `key` to the bytes `value` (read back base64-encoded).
    ///
    /// # Errors
    ///
    /// As [`Keys::put`].
    pub async fn put_bytes(&self, key: &str, value: Vec<u8>) -> Result<DeliveryReport, Error> {
        let call = Call::new(Method::PUT, self.path(key)).raw("application/octet-stream", value);
        self.client.json(&call, StatusCode::OK).await
    }

    /// Deletes `key` (writes its tombstone).
    ///
    /// # Errors
    ///
    /// As [`Keys::put`].
    pub async fn delete(&self, key: &str) -> Result<DeliveryReport, Error> {
        let call = Call::new(Method::DELETE, self.path(key));
        self.client.json(&call, StatusCode::OK).await
    }

    /// One page of live keys in key order, from `start` (the previous page's `next`),
    /// those starting with `prefix`, at most `limit` (the server caps it at 1000).
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn scan(
        &self,
        prefix: Option<&str>,
        start: Option<&str>,
        limit: u32,
    ) -> Result<KeyScan, Error> {
        let mut call =
            Call::get(format!("/v1/topics/{}/keys", segment(&self.topic))).query("limit", limit);
        if let Some(prefix) = prefix {
            call = call.query("prefix", prefix);
        }
        if let Some(start) = start {
            call = call.query("start", start);
        }
        self.client.json(&call, StatusCode::OK).await
    }
}
