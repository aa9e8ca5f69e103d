//! The cluster under test: its node URLs, readiness, the topic and its partitions.
//!
//! Control-plane calls only (a handful per run); the load itself is in `producer.rs`,
//! `consumer.rs` and `group.rs`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde::Deserialize;

/// How often readiness and leadership are re-checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One partition as `GET /v1/topics/{t}/partitions` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// Current leader's node id, `None` while there is none.
    pub leader: Option<u64>,
    /// First readable offset.
    pub log_start_offset: u64,
    /// Offset of the next record to be committed.
    pub high_watermark: u64,
}

/// The topic the bench runs on, as the cluster knows it.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicInfo {
    /// Partitions of the topic (may differ from `--partitions` if it existed).
    pub partitions: u32,
    /// Its replication factor.
    pub replication_factor: u32,
}

/// The client of the control requests (topic set-up, readiness, fetches, groups).
fn control_client(authorization: Option<&HeaderValue>) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(AUTHORIZATION, value.clone());
    }
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .context("failed to build the HTTP client")
}

/// The nodes the bench talks to.
#[derive(Debug, Clone)]
pub struct Target {
    urls: Vec<String>,
    control: reqwest::Client,
    /// `Bearer <key>` for every request, when the cluster requires API keys.
    authorization: Option<HeaderValue>,
}

impl Target {
    /// A target over `urls` (`http://host:port`, trailing slashes ignored).
    ///
    /// # Errors
    ///
    /// An empty list, or a URL that is not `http://`.
    pub fn new(urls: &[String]) -> anyhow::Result<Self> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            bail!("no node URL given");
        }
        for u in &urls {
            if !u.starts_with("http://") {
                bail!("node URL '{u}' must start with http://");
            }
        }
        Ok(Target {
            urls,
            control: control_client(None)?,
            authorization: None,
        })
    }

    /// The same target, sending `token` as `Authorization: Bearer` with every request.
    ///
    /// # Errors
    ///
    /// A token that cannot be a header value.
    pub fn with_token(self, token: &str) -> anyhow::Result<Self> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("the API key is not a valid header value")?;
        authorization.set_sensitive(true);
        Ok(Target {
            control: control_client(Some(&authorization))?,
            authorization: Some(authorization),
            urls: self.urls,
        })
    }

    /// The `Authorization` header every request carries, if any.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// The node URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL used by connection `i` (round-robin over the nodes).
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// Waits until every node answers `GET /readyz` with 200.
    ///
    /// # Errors
    ///
    /// A node that is not ready within `timeout` (its last answer is named).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for url in &self.urls {
            let last = loop {
                let last = match self.control.get(format!("{url}/readyz")).send().await {
                    Ok(r) if r.status().is_success() => break None,
                    Ok(r) => format!("status {}", r.status()),
                    Err(e) => format!("{e}"),
                };
                if Instant::now() >= deadline {
                    break Some(last);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            };
            if let Some(last) = last {
                bail!("{url} is not ready after {timeout:?} (last answer: {last})");
            }
        }
        Ok(())
    }

    /// Creates the topic, or finds it if it exists, and waits until every partition has a
    /// leader. Retries 503 while the controller elects a leader.
    ///
    /// # Errors
    ///
    /// The cluster refuses the topic (bad name or config) or the partitions stay
    /// leaderless past `timeout`.
    pub async fn ensure_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        timeout: Duration,
    ) -> anyhow::Result<(TopicInfo, Vec<PartitionInfo>)> {
        let deadline = Instant::now() + timeout;
        let base = &self.urls[0];
        let body = serde_json::json!({
            "name": name,
            "partitions": partitions,
            "replication_factor": replication_factor,
        });
        let topic: TopicInfo = loop {
            let resp = self
                .control
                .post(format!("{base}/v1/topics"))
                .json(&body)
                .send()
                .await;
            let retry_why = match resp {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    break r.json().await.context("failed to read the created topic")?;
                }
                Ok(r) if r.status() == StatusCode::CONFLICT => {
                    break self.topic(name).await?;
                }
                Ok(r) if is_retriable(r.status()) => format!("status {}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    bail!("creating topic '{name}' failed with {status}: {text}");
                }
                Err(e) => format!("{e}"),
            };
            if Instant::now() >= deadline {
                bail!("could not create topic '{name}' within {timeout:?} (last: {retry_why})");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let parts = loop {
            let why = match self.partitions(name).await {
                Ok(p)
                    if p.len() as u32 == topic.partitions
                        && p.iter().all(|p| p.leader.is_some()) =>
                {
                    break p;
                }
                Ok(p) => format!(
                    "{} of {} partitions have a leader",
                    p.iter().filter(|p| p.leader.is_some()).count(),
                    topic.partitions
                ),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("topic '{name}' not ready within {timeout:?}: {why}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        Ok((topic, parts))
    }

    /// `GET /v1/topics/{t}`.
    async fn topic(&self, name: &str) -> anyhow::Result<TopicInfo> {
        let url = format!("{}/v1/topics/{name}", self.urls[0]);
        let resp = self
            .control
            .get(&url)
            .send()
            .await
            .context("GET topic failed")?;
        if !resp.status().is_success() {
            bail!("GET {url} answered {}", resp.status());
        }
        resp.json().await.context("failed to parse the topic")
    }

    /// `GET /v1/topics/{t}/partitions`, sorted by partition.
    ///
    /// # Errors
    ///
    /// Transport errors, a non-200 answer, or an answer that does not parse.
    pub async fn partitions(&self, topic: &str) -> anyhow::Result<Vec<PartitionInfo>> {
        let url = format!("{}/v1/topics/{topic}/partitions", self.urls[0]);
        let resp = self
            .control
            .get(&url)
            .send()
            .await
            .context("GET partitions failed")?;
        if !resp.status().is_success() {
            return Err(anyhow!("GET {url} answered {}", resp.status()));
        }
        let mut parts: Vec<PartitionInfo> = resp
            .json()
            .await
            .context("failed to parse the partitions")?;
        parts.sort_by_key(|p| p.partition);
        Ok(parts)
    }

    /// `GET /v1/cluster` of the first node, kept verbatim in the JSON report.
    pub async fn cluster(&self) -> Option<serde_json::Value> {
        let resp = self
            .control
            .get(format!("{}/v1/cluster", self.urls[0]))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// The shared control-plane client (short timeouts, no proxy).
    pub fn control(&self) -> &reqwest::Client {
        &self.control
    }
}

/// Answers worth retrying while a cluster settles.
fn is_retriable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}
