//! [`GroupConsumer`]: a member of a consumer group — join, fetch, commit, re-join.

use std::collections::BTreeMap;
use std::time::Duration;

use psubd_wire::{
    AssignmentStrategy, AutoOffsetReset, CommitOffset, CommitRequest, JoinRequest,
    MemberFetchResponse, Record, TopicPartition,
};
use reqwest::{Method, StatusCode};

use crate::client::{segment, Call, Client};
use crate::error::Error;
use crate::records::MAX_LONG_POLL;

/// Settings of a [`GroupConsumer`].
#[derive(Debug, Clone, Default)]
pub struct GroupConfig {
    /// Session timeout, ms (server default 30,000): poll or [`GroupConsumer::heartbeat`]
    /// more often than this.
    pub session_timeout_ms: Option<u64>,
    /// Where a partition without a committed offset starts (server default `latest`).
    pub auto_offset_reset: Option<AutoOffsetReset>,
    /// The group's strategy (server default: the members', else `range`).
    pub assignment_strategy: Option<AssignmentStrategy>,
    /// Most records per poll (server default 500).
    pub max_records: Option<u32>,
    /// How long a poll waits for records (default 5 s, at most 30 s).
    pub poll_timeout: Option<Duration>,
}

/// Default long-poll of [`GroupConsumer::poll`].
const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often one poll joins again after being fenced before it gives up: a member is
/// fenced once per rebalance, so more means the group is unstable.
const MAX_REJOINS_PER_POLL: u32 = 3;

#[derive(Debug, Clone)]
struct Member {
    id: String,
    generation: u64,
    assignments: Vec<TopicPartition>,
    /// Token of the last answer handed to the caller: the next fetch confirms it.
    position: Option<String>,
    /// Next offset per partition of the records handed out under `generation`.
    handed: BTreeMap<TopicPartition, u64>,
}

/// A member of a consumer group, for the at-least-once loop: `poll`, process, `commit`.
///
/// - [`GroupConsumer::poll`] is the member fetch, and also the member's heartbeat. It
///   presents the position token of the previous answer, which tells the server those
///   records reached the caller; an answer that is lost on the way is therefore fetched
///   again, never skipped.
/// - [`GroupConsumer::commit`] commits, per partition, the offset after the last record
///   handed out, under the generation they were fetched in.
/// - When the member is fenced (session expired, coordinator moved) `poll` joins again
///   by itself; the group then resumes at the committed offsets, so records handed out
///   but not committed are delivered again. A commit refused because of a rebalance
///   returns an error for which [`Error::is_rebalance`] holds, and those records come
///   back too.
///
/// ```no_run
/// # async fn demo() -> Result<(), psubd_client::Error> {
/// use psubd_client::{AutoOffsetReset, Client, GroupConfig, GroupConsumer};
/// let client = Client::new(["http://127.0.0.1:8081"])?;
/// let config = GroupConfig { auto_offset_reset: Some(AutoOffsetReset::Earliest), ..GroupConfig::default() };
/// let mut member = GroupConsumer::join(client, "billing", &["orders"], config).await?;
/// loop {
///     let records = member.poll().await?;
///     for record in &records { println!("{}", record.value); }
///     if let Err(e) = member.commit().await {
///         if !e.is_rebalance() { return Err(e); }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    group: String,
    join: JoinRequest,
    config: GroupConfig,
    member: Option<Member>,
}

impl GroupConsumer {
    /// Joins `group` for `topics`.
    ///
    /// # Errors
    ///
    /// The server's error (`topic_not_found`, `invalid_config`, `group_full`, …) or
    /// [`Error::Transport`].
    pub async fn join(
        client: Client,
        group: &str,
        topics: &[&str],
        config: GroupConfig,
    ) -> Result<Self, Error> {
        let join = JoinRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout_ms: config.session_timeout_ms,
            auto_offset_reset: config.auto_offset_reset,
            assignment_strategy: config.assignment_strategy,
        };
        let mut consumer = Self {
            client,
            group: group.to_string(),
            join,
            config,
            member: None,
        };
        consumer.rejoin().await?;
        Ok(consumer)
    }

    async fn rejoin(&mut self) -> Result<(), Error> {
        let joined = self.client.join_group(&self.group, &self.join).await?;
        self.member = Some(Member {
            id: joined.member_id,
            generation: joined.generation,
            assignments: joined.assignments,
            position: None,
            handed: BTreeMap::new(),
        });
        Ok(())
    }

    /// The member id (changes when the member joins again).
    pub fn member_id(&self) -> Option<&str> {
        self.member.as_ref().map(|m| m.id.as_str())
    }

    /// The generation the member last heard of.
    pub fn generation(&self) -> Option<u64> {
        self.member.as_ref().map(|m| m.generation)
    }

    /// The member's partitions as last heard of.
    pub fn assignments(&self) -> &[TopicPartition] {
        self.member
            .as_ref()
            .map_or(&[], |m| m.assignments.as_slice())
    }

    async fn member_fetch(
        &self,
        member: &Member,
        max_records: Option<u32>,
        wait: Duration,
    ) -> Result<MemberFetchResponse, Error> {
        let mut call = Call::get(format!(
            "/v1/groups/{}/members/{}/records",
            segment(&self.group),
            segment(&member.id)
        ))
        .query("timeout_ms", wait.as_millis())
        .long_poll(wait);
        if let Some(max) = max_records {
            call = call.query("max_records", max);
        }
        if let Some(position) = &member.position {
            call = call.query("position", position);
        }
        self.client.json(&call, StatusCode::OK).await
    }

    /// The member's next records (long-polling up to the poll timeout); joins again when
    /// the member was fenced.
    ///
    /// # Errors
    ///
    /// The server's error, [`Error::Transport`], or `member_fenced` again after
    /// several joins in a row.
    pub async fn poll(&mut self) -> Result<Vec<Record>, Error> {
        let wait = self
            .config
            .poll_timeout
            .unwrap_or(DEFAULT_POLL_TIMEOUT)
            .min(MAX_LONG_POLL);
        let mut rejoins = 0;
        loop {
            let Some(member) = self.member.clone() else {
                self.rejoin().await?;
                continue;
            };
            match self
                .member_fetch(&member, self.config.max_records, wait)
                .await
            {
                Ok(answer) => {
                    self.take(answer.generation, answer.assignments, &answer.records);
                    if let Some(m) = self.member.as_mut() {
                        m.position = Some(answer.position);
                    }
                    return Ok(answer.records);
                }
                Err(e) if e.code() == Some("member_fenced") && rejoins < MAX_REJOINS_PER_POLL => {
                    rejoins += 1;
                    self.member = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Notes what an answer hands out, forgetting what an older generation handed out
    /// (after a rebalance positions restart at the committed offsets).
    fn take(
        &mut self,
        generation: u64,
        assignments: Option<Vec<TopicPartition>>,
        records: &[Record],
    ) {
        let Some(member) = self.member.as_mut() else {
            return;
        };
        if generation != member.generation {
            member.generation = generation;
            member.handed.clear();
        }
        if let Some(assignments) = assignments {
            member.handed.retain(|tp, _| assignments.contains(tp));
            member.assignments = assignments;
        }
        for record in records {
            let tp = TopicPartition {
                topic: record.topic.clone(),
                partition: record.partition,
            };
            let next = record.offset.saturating_add(1);
            let entry = member.handed.entry(tp).or_insert(next);
            *entry = (*entry).max(next);
        }
    }

    /// Keeps the member alive without taking records: a fetch that confirms what was
    /// handed out and whose own records are dropped unconfirmed (the next poll returns
    /// them). For processing that takes longer than the session timeout.
    ///
    /// # Errors
    ///
    /// `member_fenced` (the next poll joins again) or another error.
    pub async fn heartbeat(&mut self) -> Result<(), Error> {
        let Some(member) = self.member.clone() else {
            return Ok(());
        };
        match self.member_fetch(&member, Some(1), Duration::ZERO).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.code() == Some("member_fenced") {
                    self.member = None;
                }
                Err(e)
            }
        }
    }

    /// Commits every record handed out by `poll` so far (per partition, the offset after
    /// the last one). Nothing to commit is a success.
    ///
    /// # Errors
    ///
    /// An error for which [`Error::is_rebalance`] holds when the group rebalanced (the
    /// records are delivered again); another server error or [`Error::Transport`].
    pub async fn commit(&mut self) -> Result<(), Error> {
        let Some(member) = self.member.as_ref() else {
            return Ok(());
        };
        let offsets = member
            .handed
            .iter()
            .map(|(tp, offset)| CommitOffset {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: *offset,
            })
            .collect();
        self.commit_offsets(offsets).await
    }

    /// Commits `records` — some of those the last `poll` returned, e.g. the ones
    /// processed before stopping: per partition, the offset after the last of them.
    /// Records of a partition after an uncommitted one are delivered again later.
    ///
    /// # Errors
    ///
    /// As [`GroupConsumer::commit`].
    pub async fn commit_records(&mut self, records: &[Record]) -> Result<(), Error> {
        let mut next: BTreeMap<TopicPartition, u64> = BTreeMap::new();
        for record in records {
            let tp = TopicPartition {
                topic: record.topic.clone(),
                partition: record.partition,
            };
            let offset = record.offset.saturating_add(1);
            let entry = next.entry(tp).or_insert(offset);
            *entry = (*entry).max(offset);
        }
        let offsets = next
            .into_iter()
            .map(|(tp, offset)| CommitOffset {
                topic: tp.topic,
                partition: tp.partition,
                offset,
            })
            .collect();
        self.commit_offsets(offsets).await
    }

    async fn commit_offsets(&mut self, offsets: Vec<CommitOffset>) -> Result<(), Error> {
        let Some(member) = self.member.as_ref() else {
            return Ok(());
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let request = CommitRequest {
            member_id: member.id.clone(),
            generation: member.generation,
            offsets,
        };
        let call = Call::new(
            Method::POST,
            format!("/v1/groups/{}/offsets", segment(&self.group)),
        )
        .json(&request)?;
        let result = self.client.empty(&call, StatusCode::NO_CONTENT).await;
        let Some(member) = self.member.as_mut() else {
            return result;
        };
        match &result {
            Ok(()) => {
                for committed in &request.offsets {
                    let tp = TopicPartition {
                        topic: committed.topic.clone(),
                        partition: committed.partition,
                    };
                    if member
                        .handed
                        .get(&tp)
                        .is_some_and(|h| *h <= committed.offset)
                    {
                        member.handed.remove(&tp);
                    }
                }
            }
            Err(e) if e.is_rebalance() => {
                member.handed.clear();
                if e.code() == Some("member_fenced") {
                    self.member = None;
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Leaves the group: its partitions go to the other members at once. Records handed
    /// out and not committed are delivered again to them.
    ///
    /// # Errors
    ///
    /// The server's error or [`Error::Transport`].
    pub async fn leave(mut self) -> Result<(), Error> {
        let Some(member) = self.member.take() else {
            return Ok(());
        };
        let call = Call::new(
            Method::DELETE,
            format!(
                "/v1/groups/{}/members/{}",
                segment(&self.group),
                segment(&member.id)
            ),
        );
        match self.client.empty(&call, StatusCode::NO_CONTENT).await {
            Err(e) if e.code() == Some("member_fenced") => Ok(()),
            other => other,
        }
    }
}
