//! Reads partition 0 of `example-orders` from the start and follows it (Ctrl-C stops).
//!
//! Run against `psubd dev`: `cargo run -p psubd-client --example consume [URL]`.

use psubd_client::{Client, Consumer, OffsetSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let client = Client::new([url])?;
    let mut consumer = Consumer::new(client, "example-orders", 0, OffsetSpec::Earliest);
    loop {
        for record in consumer.poll().await? {
            println!("{}@{}: {}", record.partition, record.offset, record.value);
        }
    }
}
