//! Streams: a partition's records, or a group member's, as one long HTTP answer framed as
//! Server-Sent Events or NDJSON (docs/api.md § Streams), read as a [`futures::Stream`]
//! of the wire's [`StreamItem`]s.
//!
//! A stream does not reconnect by itself: when it ends (the node shut down, the
//! connection broke, an error item) the caller decides what to do — open a partition
//! stream again from the offset after the last record it handled, or a member stream
//! again (the group's committed offsets are where it starts). Lines (and SSE events) are
//! bounded by [`StreamOptions::max_line_bytes`], so a misbehaving peer cannot grow the
//! reader's memory without bound.
//!
//! ```no_run
//! # async fn demo() -> Result<(), psubd_client::Error> {
//! use futures::StreamExt;
//! use psubd_client::streams::StreamOptions;
//! use psubd_client::wire::StreamItem;
//! use psubd_client::{Client, OffsetSpec};
//!
//! let client = Client::new(["http://127.0.0.1:8081"])?;
//! let mut stream = client
//!     .partition_stream("orders", 0, OffsetSpec::Earliest, StreamOptions::default())
//!     .await?;
//! while let Some(item) = stream.next().await {
//!     match item? {
//!         StreamItem::Record(record) => println!("{}: {}", record.offset, record.value),
//!         StreamItem::Error(body) => eprintln!("the stream ended: {}", body.message),
//!         StreamItem::Assignment(_) => {} // member streams only
//!     }
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use psubd_wire::{JoinRequest, JoinResponse, OffsetSpec, StreamItem};
use reqwest::{Method, StatusCode};

use crate::client::{segment, Call, Client};
use crate::error::Error;

/// Default bound on one NDJSON line or one SSE event: above the largest record a node
/// takes by default (1 MiB, base64 in a JSON line) with a wide margin.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How a stream is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFormat {
    /// One JSON item per line (`Accept: application/x-ndjson`).
    #[default]
    Ndjson,
    /// Server-Sent Events (`Accept: text/event-stream`): the item is each event's data.
    Sse,
}

impl StreamFormat {
    fn accept(self) -> &'static str {
        match self {
            StreamFormat::Ndjson => "application/x-ndjson",
            StreamFormat::Sse => "text/event-stream",
        }
    }
}

/// Settings of one stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// The framing asked for.
    pub format: StreamFormat,
    /// Longest line (NDJSON) or event (SSE) accepted; a longer one ends the stream with
    /// an [`Error::Unexpected`].
    pub max_line_bytes: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            format: StreamFormat::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// The items of one open stream, in the order the node sent them. Ends when the answer
/// ends; an `Err` (the connection broke, a line over the bound or one that does not
/// parse) is the last item.
pub struct ItemStream {
    inner: Pin<Box<dyn Stream<Item = Result<StreamItem, Error>> + Send>>,
}

impl std::fmt::Debug for ItemStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ItemStream")
    }
}

impl Stream for ItemStream {
    type Item = Result<StreamItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Client {
    /// Opens `GET /v1/topics/{topic}/partitions/{partition}/stream` from `offset`:
    /// the partition's records, then new ones as they arrive.
    ///
    /// # Errors
    ///
    /// The node's error for the opening request (`topic_not_found`,
    /// `partition_not_found`, `offset_out_of_range`, 429 `too_many_streams`…) or
    /// [`Error::Transport`] when no seed answers.
    pub async fn partition_stream(
        &self,
        topic: &str,
        partition: u32,
        offset: OffsetSpec,
        options: StreamOptions,
    ) -> Result<ItemStream, Error> {
        let call = Call::get(format!(
            "/v1/topics/{}/partitions/{partition}/stream",
            segment(topic)
        ))
        .query("offset", offset);
        self.stream(&call, options).await
    }

    /// Opens `GET /v1/groups/{group}/members/{member}/stream`: an assignment item first,
    /// then the member's records from the group's committed offsets. The stream
    /// heartbeats the member while it is open; closing it (dropping the stream) leaves the
    /// group. It never commits: see [`Client::join_group`] and docs/api.md.
    ///
    /// # Errors
    ///
    /// As [`Client::partition_stream`], and `member_not_found` for an unknown member.
    pub async fn member_stream(
        &self,
        group: &str,
        member: &str,
        options: StreamOptions,
    ) -> Result<ItemStream, Error> {
        let call = Call::get(format!(
            "/v1/groups/{}/members/{}/stream",
            segment(group),
            segment(member)
        ));
        self.stream(&call, options).await
    }

    /// Joins `group` as a new member (`POST /v1/groups/{group}/members`), e.g. before
    /// [`Client::member_stream`]; [`GroupConsumer`](crate::GroupConsumer) joins by itself.
    ///
    /// # Errors
    ///
    /// The server's error (`topic_not_found`, `invalid_config`, `group_full`, …) or
    /// [`Error::Transport`].
    pub async fn join_group(
        &self,
        group: &str,
        request: &JoinRequest,
    ) -> Result<JoinResponse, Error> {
        let call = Call::new(
            Method::POST,
            format!("/v1/groups/{}/members", segment(group)),
        )
        .json(request)?;
        self.json(&call, StatusCode::CREATED).await
    }

    async fn stream(&self, call: &Call, options: StreamOptions) -> Result<ItemStream, Error> {
        let response = self.open_stream(call, options.format.accept()).await?;
        let url = response.url().to_string();
        let body = response.bytes_stream();
        let state = Reader {
            body: Box::pin(body),
            framing: Framing::new(options),
            url,
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        Ok(ItemStream {
            inner: Box::pin(inner),
        })
    }
}

/// The state of one stream: the body, the bytes not yet framed, and whether it ended.
struct Reader<S> {
    body: Pin<Box<S>>,
    framing: Framing,
    url: String,
    done: bool,
}

impl<S, B> Reader<S>
where
    S: Stream<Item = reqwest::Result<B>>,
    B: AsRef<[u8]>,
{
    /// The next item, reading the body as needed; `None` once the stream is over.
    async fn next_item(&mut self) -> Option<Result<StreamItem, Error>> {
        loop {
            if self.done {
                return None;
            }
            match self.framing.next_payload() {
                Ok(Some(payload)) => {
                    return Some(serde_json::from_slice(&payload).map_err(|e| {
                        self.done = true;
                        Error::Unexpected {
                            url: self.url.clone(),
                            status: 200,
                            detail: format!("a stream item does not parse: {e}"),
                        }
                    }));
                }
                Ok(None) => {}
                Err(detail) => {
                    self.done = true;
                    return Some(Err(Error::Unexpected {
                        url: self.url.clone(),
                        status: 200,
                        detail,
                    }));
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.framing.push(chunk.as_ref()),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Error::Transport {
                        url: self.url.clone(),
                        message: format!("the stream broke off: {}", crate::error::chain(&e)),
                        maybe_sent: true,
                    }));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

/// Cuts the bytes received into item payloads: NDJSON lines, or SSE events' data.
#[derive(Debug)]
struct Framing {
    format: StreamFormat,
    max: usize,
    /// Bytes received and not yet cut into lines.
    pending: Vec<u8>,
    /// SSE: the data lines of the event being read.
    data: Vec<u8>,
    /// SSE: whether the event being read has a data field.
    has_data: bool,
}

impl Framing {
    fn new(options: StreamOptions) -> Self {
        Self {
            format: options.format,
            max: options.max_line_bytes.max(1),
            pending: Vec::new(),
            data: Vec::new(),
            has_data: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// The next complete payload, `None` when more bytes are needed, or why the stream
    /// cannot be read on (a line or an event over the bound).
    fn next_payload(&mut self) -> Result<Option<Vec<u8>>, String> {
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > self.max {
                return Err(self.too_long());
            }
            match self.format {
                StreamFormat::Ndjson => {
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        return Ok(Some(line));
                    }
                }
                StreamFormat::Sse => {
                    if let Some(payload) = self.sse_line(&line)? {
                        return Ok(Some(payload));
                    }
                }
            }
        }
        if self.pending.len() > self.max {
            return Err(self.too_long());
        }
        Ok(None)
    }

    /// One SSE line: a blank line ends the event (its data is the payload, if it has
    /// any); `data:` lines add to it; comments, `event:`, `id:` and `retry:` carry
    /// nothing the item does not (a record's id is its partition and offset).
    fn sse_line(&mut self, line: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if line.is_empty() {
            self.has_data = false;
            return Ok((!self.data.is_empty()).then(|| std::mem::take(&mut self.data)));
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.has_data = true;
            self.data.extend_from_slice(value);
            if self.data.len() > self.max {
                return Err(self.too_long());
            }
        }
        Ok(None)
    }

    fn too_long(&self) -> String {
        format!(
            "a stream line or event is longer than {} bytes (StreamOptions::max_line_bytes)",
            self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(format: StreamFormat, max: usize) -> Framing {
        Framing::new(StreamOptions {
            format,
            max_line_bytes: max,
        })
    }

    fn drain(f: &mut Framing) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(p)) = f.next_payload() {
            out.push(String::from_utf8_lossy(&p).into_owned());
        }
        out
    }

    #[test]
    fn ndjson_lines_are_cut_across_chunks_and_blank_lines_skipped() {
        let mut f = framing(StreamFormat::Ndjson, 100);
        f.push(b"{\"a\":1}\n\n{\"b\"");
        assert_eq!(drain(&mut f), vec!["{\"a\":1}"]);
        f.push(b":2}\r\n");
        assert_eq!(drain(&mut f), vec!["{\"b\":2}"]);
    }

    #[test]
    fn sse_events_yield_their_data_and_skip_comments() {
        let mut f = framing(StreamFormat::Sse, 100);
        f.push(b": keep-alive\n\nevent: record\nid: 0-1\ndata: {\"x\":\n");
        assert!(drain(&mut f).is_empty());
        f.push(b"data: 1}\n\n");
        assert_eq!(drain(&mut f), vec!["{\"x\":\n1}"]);
    }

    #[test]
    fn lines_and_events_over_the_bound_end_the_stream() {
        let mut f = framing(StreamFormat::Ndjson, 8);
        f.push(b"0123456789");
        assert!(
            f.next_payload().is_err(),
            "an unterminated line over the bound"
        );
        let mut f = framing(StreamFormat::Sse, 8);
        f.push(b"data: 12345\ndata: 6789\n");
        assert!(
            f.next_payload().is_err(),
            "an event whose data lines add up over it"
        );
    }
}
