//! A Server-Sent Events reader for the end-to-end tests: parses `text/event-stream` blocks
//! off a response body as they arrive (the partition and member streams of docs/api.md).

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;

/// One parsed SSE event.
#[derive(Debug)]
pub struct SseEvent {
    /// The `id:` field (`<partition>-<offset>` for records).
    pub id: Option<String>,
    /// The `event:` field (`record`, `assignment`, `error`, ...).
    pub event: Option<String>,
    /// The `data:` lines, joined.
    pub data: String,
}

/// Reads SSE events off a response body as they arrive.
pub struct SseReader {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl SseReader {
    /// A reader over `response`'s body (the caller checked status and content type).
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or None when the stream ends or
    /// no event arrives within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                    }
                }
                if event.event.is_some() || !event.data.is_empty() {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(within, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads the rest of the body until it ends: Ok for a clean end of the stream, Err when
    /// the connection broke instead (an aborted response) or nothing ended it within
    /// `within` of the last bytes.
    pub async fn read_to_end(&mut self, within: Duration) -> Result<(), String> {
        loop {
            match tokio::time::timeout(within, self.body.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(format!("the stream broke instead of ending: {e}")),
                Err(_) => return Err(format!("the stream did not end within {within:?}")),
            }
        }
    }
}
