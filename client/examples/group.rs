//! A consumer-group member of `example-billing` reading `example-orders`: the
//! at-least-once loop — poll, process, commit (Ctrl-C stops; start two to see the
//! partitions shared).
//!
//! Run against `psubd dev`: `cargo run -p psubd-client --example group [URL]`.

use psubd_client::{AutoOffsetReset, Client, GroupConfig, GroupConsumer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let client = Client::new([url])?;
    let config = GroupConfig {
        auto_offset_reset: Some(AutoOffsetReset::Earliest),
        ..GroupConfig::default()
    };
    let mut member =
        GroupConsumer::join(client, "example-billing", &["example-orders"], config).await?;
    println!("joined with {:?}", member.assignments());
    loop {
        tokio::select! {
            records = member.poll() => {
                for record in records? {
                    println!("{}/{}@{}: {}", record.topic, record.partition, record.offset, record.value);
                }
                if let Err(e) = member.commit().await {
                    if !e.is_rebalance() {
                        return Err(e.into());
                    }
                    eprintln!("rebalanced; uncommitted records come again: {e}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    member.leave().await?;
    Ok(())
}
