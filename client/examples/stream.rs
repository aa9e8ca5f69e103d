//! Follows partition 0 of `example-orders` as a Server-Sent Events stream, from the start
//! (Ctrl-C stops); when the stream ends it opens it again after the last record printed.
//!
//! Run against `psubd dev`: `cargo run -p psubd-client --example stream [URL]`.

use futures::StreamExt;
use psubd_client::wire::StreamItem;
use psubd_client::{Client, OffsetSpec, StreamFormat, StreamOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let client = Client::new([url])?;
    let options = StreamOptions {
        format: StreamFormat::Sse,
        ..StreamOptions::default()
    };
    let mut from = OffsetSpec::Earliest;
    loop {
        let mut stream = client
            .partition_stream("example-orders", 0, from, options)
            .await?;
        while let Some(item) = stream.next().await {
            match item {
                Ok(StreamItem::Record(record)) => {
                    println!("{}@{}: {}", record.partition, record.offset, record.value);
                    from = OffsetSpec::At(record.offset + 1);
                }
                Ok(StreamItem::Error(body)) => eprintln!("stream ended: {}", body.message),
                Ok(StreamItem::Assignment(_)) => {}
                Err(e) => eprintln!("stream broke: {e}"),
            }
        }
        // The caller decides about reconnecting: here, after a pause.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
