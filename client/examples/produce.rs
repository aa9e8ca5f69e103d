//! Creates a topic (if needed), produces 100 records and prints where they landed.
//!
//! Run against `psubd dev`: `cargo run -p psubd-client --example produce [URL]`.

use psubd_client::{Client, NewRecord, Producer, TopicSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let client = Client::new([url])?;
    let spec = TopicSpec {
        partitions: Some(3),
        ..TopicSpec::new("example-orders")
    };
    match client.admin().create_topic(&spec).await {
        Ok(topic) => println!("created {} ({} partitions)", topic.name, topic.partitions),
        Err(e) if e.code() == Some("topic_exists") => println!("{} exists", spec.name),
        Err(e) => return Err(e.into()),
    }
    let producer = Producer::new(client);
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let record = NewRecord::new(serde_json::json!({ "n": i })).key(format!("user-{}", i % 7));
        deliveries.push(producer.send("example-orders", record).await?);
    }
    for delivery in deliveries {
        let report = delivery.await?;
        println!("partition {} offset {}", report.partition, report.offset);
    }
    producer.close().await;
    Ok(())
}
