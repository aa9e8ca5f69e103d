//! The one home of the request limits and their defaults (docs/api.md § Names and
//! limits). The node's flags take their defaults from here, and the read bounds of
//! fetches, streams and key reads are here too. Over a limit: 413, nothing written.

/// Default largest record (key + value), bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// Default largest request body, bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 10 << 20;
/// Default most records in one publish request.
pub const DEFAULT_MAX_RECORDS_PER_REQUEST: usize = 1000;
/// Default largest headers of one record, bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 << 10;
/// Default most fire-and-forget (`acks=0`) publishes being written at once.
pub const DEFAULT_MAX_UNACKED_PUBLISHES: usize = 1024;
/// Default most open streams per node.
pub const DEFAULT_MAX_STREAMS: usize = 1024;
/// Default longest delay of a delayed record, ms: 7 days, the default retention, so a
/// record is never delayed past the time its topic would by default have dropped it.
pub const DEFAULT_MAX_DELAY_MS: u64 = 7 * 24 * 3600 * 1000;
/// Default most push subscriptions per offsets partition (the cluster has
/// `OFFSETS_PARTITIONS` of them, 4): each costs a pusher with one task per subscribed
/// partition on the node leading its offsets partition.
pub const DEFAULT_MAX_PUSH_SUBSCRIPTIONS: u32 = 256;

/// Default and largest `max_records` of one read.
pub const DEFAULT_MAX_RECORDS: u32 = 500;
/// Largest `max_records` of one read.
pub const MAX_MAX_RECORDS: u32 = 10_000;
/// Default `max_bytes` of one read.
pub const DEFAULT_MAX_BYTES: u32 = 1 << 20;
/// Largest `max_bytes` of one read.
pub const MAX_MAX_BYTES: u32 = 16 << 20;
/// Longest long-poll, ms.
pub const MAX_TIMEOUT_MS: u64 = 30_000;

/// Request limits of one node.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest record (key + value), bytes.
    pub max_record_bytes: usize,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// Most records in one request.
    pub max_records_per_request: usize,
    /// Largest headers of one record, bytes.
    pub max_header_bytes: usize,
    /// Most fire-and-forget (`acks=0`) publishes being written at once; more wait.
    pub max_unacked_publishes: usize,
    /// Most open streams (SSE, NDJSON) per node; more are refused with 429.
    pub max_streams: usize,
    /// Longest delay of a delayed record (`deliver_at_ms`, `delay_ms`), ms; more is 400.
    pub max_delay_ms: u64,
    /// Most push subscriptions per offsets partition; a new one past it is 409
    /// `limit_reached` (decided when the subscription's write applies).
    pub max_push_subscriptions: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_records_per_request: DEFAULT_MAX_RECORDS_PER_REQUEST,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_unacked_publishes: DEFAULT_MAX_UNACKED_PUBLISHES,
            max_streams: DEFAULT_MAX_STREAMS,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
            max_push_subscriptions: DEFAULT_MAX_PUSH_SUBSCRIPTIONS,
        }
    }
}
