//! Consumer-group members (docs/api.md § Consumer groups): join, long-poll the member's
//! records (which is also the heartbeat), commit positions every `--commit-interval`,
//! re-join when fenced, leave at the end.
//!
//! Members share one duplicate tracker (a partition moves between members on a
//! rebalance, and redelivery after one is exactly what it should see); it is locked once
//! per answer, never across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::consumer::{stopped_now, ConsumerStop};
use super::duplicates::DuplicateTracker;
use super::error_class::{ErrorClass, ErrorCounts};
use super::fetch::{ConsumeStats, FetchAnswer};
use super::phase::RunClock;
use super::sampler::LiveCounters;
use super::target::Target;

/// Session timeout of bench members: short, so members of a killed bench expire soon.
const SESSION_TIMEOUT_MS: u64 = 10_000;

/// Pause after a failed call before the next one.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How group members read.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// Members of the group.
    pub members: u32,
    /// Group name.
    pub group: String,
    /// The topic they subscribe to.
    pub topic: String,
    /// `max_records` per fetch.
    pub max_records: u32,
    /// `max_bytes` per fetch.
    pub max_bytes: u64,
    /// `timeout_ms` per fetch.
    pub timeout_ms: u64,
    /// How often positions are committed.
    pub commit_interval: Duration,
    /// Transport timeout on top of the long-poll time.
    pub request_timeout: Duration,
}

/// A joined member.
#[derive(Debug, Clone, Deserialize)]
struct Member {
    member_id: String,
    generation: u64,
}

/// How long a new cluster may answer 503 to the first join (the consumer offsets topic
/// is created by the controller shortly after the nodes report ready).
const GROUPS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between those first joins.
const GROUPS_READY_POLL: Duration = Duration::from_millis(250);

/// Joins and leaves once, so that a server without consumer groups is reported before
/// the run instead of as a column of errors.
///
/// # Errors
///
/// The server has no group routes (404/405 without an API error body), or refuses the
/// join for another reason (named).
pub async fn check_supported(target: &Target, plan: &GroupPlan) -> anyhow::Result<()> {
    let client = target.control();
    let base = target.url(0);
    // A cluster that has just become ready may still be creating the consumer offsets
    // topic (503, retriable): wait for it rather than fail the whole bench.
    let deadline = tokio::time::Instant::now() + GROUPS_READY_TIMEOUT;
    let resp = loop {
        let resp = client
            .post(format!("{base}/v1/groups/{}/members", plan.group))
            .json(&join_body(plan))
            .send()
            .await
            .context("joining the consumer group failed")?;
        if resp.status() != StatusCode::SERVICE_UNAVAILABLE
            || tokio::time::Instant::now() >= deadline
        {
            break resp;
        }
        let _ = resp.bytes().await;
        tokio::time::sleep(GROUPS_READY_POLL).await;
    };
    let status = resp.status();
    if status == StatusCode::CREATED || status == StatusCode::OK {
        let member: Member = resp
            .json()
            .await
            .context("failed to parse the join answer")?;
        let _ = client
            .delete(format!(
                "{base}/v1/groups/{}/members/{}",
                plan.group, member.member_id
            ))
            .send()
            .await;
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let api_error = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    let unsupported =
        matches!(status.as_u16(), 404 | 405) && api_error.as_deref() != Some("topic_not_found");
    if unsupported {
        bail!(
            "this server does not support consumer groups (POST /v1/groups/{{g}}/members answered {status}); run without --group-consumers"
        );
    }
    bail!(
        "joining consumer group '{}' failed with {status}: {text}",
        plan.group
    )
}

fn join_body(plan: &GroupPlan) -> serde_json::Value {
    serde_json::json!({
        "topics": [plan.topic],
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "auto_offset_reset": "latest",
    })
}

/// Starts every member of a run.
///
/// # Errors
///
/// An HTTP client that cannot be built.
pub fn spawn(
    tasks: &mut JoinSet<ConsumeStats>,
    plan: &GroupPlan,
    target: &Target,
    clock: &Arc<RunClock>,
    stop: &watch::Receiver<ConsumerStop>,
    live: &Arc<LiveCounters>,
) -> anyhow::Result<()> {
    let dups = Arc::new(Mutex::new(DuplicateTracker::default()));
    for i in 0..plan.members {
        let client = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .timeout(plan.request_timeout + Duration::from_millis(plan.timeout_ms))
            .build()
            .context("failed to build a group member's HTTP client")?;
        tasks.spawn(member_loop(MemberLoop {
            client,
            base: target.url(i as usize).to_string(),
            plan: plan.clone(),
            clock: Arc::clone(clock),
            stop: stop.clone(),
            live: Arc::clone(live),
            dups: Arc::clone(&dups),
        }));
    }
    Ok(())
}

/// One member's state.
struct MemberLoop {
    client: Client,
    base: String,
    plan: GroupPlan,
    clock: Arc<RunClock>,
    stop: watch::Receiver<ConsumerStop>,
    live: Arc<LiveCounters>,
    dups: Arc<Mutex<DuplicateTracker>>,
}

async fn member_loop(mut s: MemberLoop) -> ConsumeStats {
    let mut stats = ConsumeStats::default();
    let mut member: Option<Member> = None;
    // Next offset to read per partition (what a commit sends).
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    // The last answer's position token, presented by the next fetch.
    let mut position_token: Option<String> = None;
    let mut dirty = false;
    let mut last_commit = Instant::now();
    let group_url = format!("{}/v1/groups/{}", s.base, s.plan.group);
    loop {
        let draining = match &*s.stop.borrow() {
            ConsumerStop::Now => break,
            ConsumerStop::Drain(_) => true,
            ConsumerStop::Running => false,
        };
        let Some(m) = member.as_ref() else {
            let joined = tokio::select! {
                r = join(&s.client, &group_url, &s.plan) => r,
                _ = stopped_now(&mut s.stop) => break,
            };
            match joined {
                Ok(m) => {
                    positions.clear();
                    position_token = None;
                    dirty = false;
                    member = Some(m);
                }
                Err(class) => {
                    count(&mut stats.errors, &s.clock, class);
                    backoff(&mut s.stop).await;
                }
            }
            continue;
        };
        let mut url = format!(
            "{group_url}/members/{}/records?max_records={}&max_bytes={}&timeout_ms={}",
            m.member_id, s.plan.max_records, s.plan.max_bytes, s.plan.timeout_ms
        );
        // Confirms what the previous answer delivered (positions advance only so).
        if let Some(token) = &position_token {
            url.push_str("&position=");
            url.push_str(token);
        }
        let sent = Instant::now();
        let result = tokio::select! {
            r = get(&s.client, &url) => r,
            _ = stopped_now(&mut s.stop) => break,
        };
        let received = Instant::now();
        let mut empty = false;
        let failure = match result {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<FetchAnswer>(&body) {
                Ok(answer) => {
                    if answer.position.is_some() {
                        position_token = answer.position.clone();
                    }
                    if let Some(m) = member.as_mut() {
                        if let Some(g) = answer.generation {
                            m.generation = g;
                        }
                        if let Some(a) = &answer.assignments {
                            // Commit only partitions still ours.
                            positions.retain(|p, _| {
                                a.iter()
                                    .any(|x| x.topic == s.plan.topic && x.partition == *p)
                            });
                        }
                    }
                    {
                        let mut dups = s.dups.lock().unwrap_or_else(|e| e.into_inner());
                        stats.count_answer(&answer, &s.clock, sent, received, 0, &mut dups);
                    }
                    for r in &answer.records {
                        positions.insert(r.partition.unwrap_or(0), r.offset + 1);
                        dirty = true;
                    }
                    s.live.add_consumed(answer.records.len() as u64);
                    empty = answer.records.is_empty();
                    None
                }
                Err(_) => Some(ErrorClass::Decode),
            },
            Ok((status, _)) => {
                if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND {
                    member = None; // fenced or expired: re-join
                }
                Some(ErrorClass::of_status(status))
            }
            Err(e) => Some(ErrorClass::of_transport(&e)),
        };
        if let Some(class) = failure {
            count(&mut stats.errors, &s.clock, class);
            backoff(&mut s.stop).await;
            continue;
        }
        if draining && empty {
            break;
        }
        if dirty && last_commit.elapsed() >= s.plan.commit_interval {
            if let Some(m) = member.as_ref() {
                match commit(&s.client, &group_url, &s.plan.topic, m, &positions).await {
                    Ok(()) => dirty = false,
                    Err(class) => {
                        if class == ErrorClass::Conflict {
                            member = None;
                        }
                        count(&mut stats.errors, &s.clock, class);
                    }
                }
            }
            last_commit = Instant::now();
        }
    }
    if let Some(m) = member {
        if dirty {
            let _ = commit(&s.client, &group_url, &s.plan.topic, &m, &positions).await;
        }
        let _ = s
            .client
            .delete(format!("{group_url}/members/{}", m.member_id))
            .send()
            .await;
    }
    stats
}

/// Counts an error if it happened inside the window.
fn count(errors: &mut ErrorCounts, clock: &RunClock, class: ErrorClass) {
    if clock.in_window(Instant::now()) {
        errors.add(class);
    }
}

async fn backoff(stop: &mut watch::Receiver<ConsumerStop>) {
    tokio::select! {
        _ = tokio::time::sleep(ERROR_BACKOFF) => {}
        _ = stopped_now(stop) => {}
    }
}

async fn join(client: &Client, group_url: &str, plan: &GroupPlan) -> Result<Member, ErrorClass> {
    let resp = client
        .post(format!("{group_url}/members"))
        .json(&join_body(plan))
        .send()
        .await
        .map_err(|e| ErrorClass::of_transport(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let _ = resp.bytes().await;
        return Err(ErrorClass::of_status(status));
    }
    resp.json().await.map_err(|_| ErrorClass::Decode)
}

async fn get(client: &Client, url: &str) -> Result<(StatusCode, bytes::Bytes), reqwest::Error> {
    let resp = client.get(url).send().await?;
    let status = resp.status();
    Ok((status, resp.bytes().await?))
}

/// `POST /v1/groups/{g}/offsets` with the next offset to read per partition.
async fn commit(
    client: &Client,
    group_url: &str,
    topic: &str,
    member: &Member,
    positions: &BTreeMap<u32, u64>,
) -> Result<(), ErrorClass> {
    let offsets: Vec<serde_json::Value> = positions
        .iter()
        .map(|(p, o)| serde_json::json!({"topic": topic, "partition": p, "offset": o}))
        .collect();
    let body = serde_json::json!({
        "member_id": member.member_id,
        "generation": member.generation,
        "offsets": offsets,
    });
    let resp = client
        .post(format!("{group_url}/offsets"))
        .json(&body)
        .send()
        .await
        .map_err(|e| ErrorClass::of_transport(&e))?;
    let status = resp.status();
    let _ = resp.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(ErrorClass::of_status(status))
    }
}
