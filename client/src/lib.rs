//! An async Rust client for psubd's HTTP API (docs/api.md; guide in docs/clients.md).
//!
//! # Layout
//!
//! - [`client`]: [`Client`] — seed URLs tried in turn, timeouts, the bearer token, the
//!   bounded retry rules (only what promises nothing was done), and error decoding.
//! - [`tls`]: HTTPS to nodes serving TLS — the cluster's CA, a client certificate.
//! - [`error`]: [`Error`], carrying the server's `error`, `message` and `error_code`.
//! - [`admin`]: [`Admin`] — topics, groups, the cluster view.
//! - [`keys`]: [`Keys`] — a compacted topic as a table: get, put, delete, scan.
//! - [`records`]: one publish and one fetch, the calls the rest builds on.
//! - [`producer`]: [`Producer`] — batching with a linger bound, a bounded queue, a
//!   delivery future per record, each request sent straight to the partitions' leader.
//! - `routing` (private): where the producer sends a record — the partition's leader
//!   from `GET /v1/cluster`, with the server's own key hash — refreshed on errors.
//! - [`consumer`]: [`Consumer`] — one partition by offset, long-polling.
//! - [`streams`]: a partition's or a group member's stream (SSE or NDJSON) as a
//!   `futures::Stream` of the wire's `StreamItem`s; bounded lines, no reconnection.
//! - [`group`]: [`GroupConsumer`] — join, poll (the member fetch and heartbeat), commit,
//!   re-join when fenced; never skips a record it did not hand out.
//!
//! The JSON types are those of the `psubd-wire` crate, re-exported here.
//!
//! ```no_run
//! # async fn demo() -> Result<(), psubd_client::Error> {
//! use psubd_client::{Client, TopicSpec};
//! let client = Client::new(["http://127.0.0.1:8081", "http://127.0.0.1:8082"])?;
//! let topic = client.admin().create_topic(&TopicSpec { partitions: Some(3), ..TopicSpec::new("orders") }).await?;
//! println!("{} has {} partitions", topic.name, topic.partitions);
//! # Ok(()) }
//! ```

pub mod admin;
pub mod client;
pub mod consumer;
pub mod error;
pub mod group;
pub mod keys;
pub mod producer;
pub mod records;
mod routing;
pub mod streams;
pub mod tls;

pub use admin::Admin;
pub use client::{Client, ClientBuilder, ClientConfig};
pub use consumer::{Consumer, ConsumerConfig};
pub use error::Error;
pub use group::{GroupConfig, GroupConsumer};
pub use keys::Keys;
pub use producer::{
    Delivery, DeliveryResult, Producer, ProducerConfig, Stored, StoredDelivery, StoredResult,
};
pub use psubd_wire as wire;
pub use psubd_wire::{
    AutoOffsetReset, CleanupPolicy, DelayedReport, DeliveryReport, NewRecord, OffsetSpec, Record,
    ResetOffset, Topic, TopicSpec, TopicUpdate,
};
pub use streams::{ItemStream, StreamFormat, StreamOptions};
pub use tls::TlsSettings;
