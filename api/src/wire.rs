//! Domain values to their psubd-wire forms: the enums and small structs several
//! resources' answers share, converted in one place so every route names them alike.

use psubd_actors::assignment::{AssignmentStrategy, TopicPartition};
use psubd_actors::coordinator::AutoOffsetReset;
use psubd_actors::push::{PartitionPushStatus, PushConfig, PushStatus};

/// A partition as answers name it.
pub fn topic_partition(tp: &TopicPartition) -> psubd_wire::TopicPartition {
    psubd_wire::TopicPartition {
        topic: tp.topic.clone(),
        partition: tp.partition,
    }
}

/// Every partition of a member's assignment.
pub fn topic_partitions(tps: &[TopicPartition]) -> Vec<psubd_wire::TopicPartition> {
    tps.iter().map(topic_partition).collect()
}

/// A group's assignment strategy.
pub fn strategy(strategy: AssignmentStrategy) -> psubd_wire::AssignmentStrategy {
    match strategy {
        AssignmentStrategy::Range => psubd_wire::AssignmentStrategy::Range,
        AssignmentStrategy::RoundRobin => psubd_wire::AssignmentStrategy::RoundRobin,
    }
}

/// A member's reset policy.
pub fn auto_offset_reset(reset: AutoOffsetReset) -> psubd_wire::AutoOffsetReset {
    match reset {
        AutoOffsetReset::Earliest => psubd_wire::AutoOffsetReset::Earliest,
        AutoOffsetReset::Latest => psubd_wire::AutoOffsetReset::Latest,
    }
}

/// A group's state, from its member count (`stable` with members, `empty` without).
pub fn group_state(members: usize) -> psubd_wire::GroupState {
    if members > 0 {
        psubd_wire::GroupState::Stable
    } else {
        psubd_wire::GroupState::Empty
    }
}

/// A push subscription as answers show it: its settings without the secret, and the
/// state its pusher reports (none before it runs). `coordinator` is the pushing node.
pub fn push_subscription(
    group: &str,
    coordinator: u64,
    config: &PushConfig,
    status: Option<&PushStatus>,
) -> psubd_wire::PushSubscription {
    psubd_wire::PushSubscription {
        group: group.to_owned(),
        topics: config.topics.clone(),
        endpoint: config.endpoint.clone(),
        max_in_flight: config.max_in_flight,
        timeout_ms: config.timeout_ms,
        min_backoff_ms: config.min_backoff_ms,
        max_backoff_ms: config.max_backoff_ms,
        max_deliveries: config.max_deliveries,
        dead_letter_topic: config.dead_letter_topic.clone(),
        secret_set: config.secret.is_some(),
        coordinator,
        partitions: status
            .map(|s| s.partitions.iter().map(push_partition).collect())
            .unwrap_or_default(),
    }
}

fn push_partition(p: &PartitionPushStatus) -> psubd_wire::PushPartitionState {
    psubd_wire::PushPartitionState {
        topic: p.topic.clone(),
        partition: p.partition,
        committed_offset: p.committed_offset,
        high_watermark: p.high_watermark,
        lag: p
            .committed_offset
            .zip(p.high_watermark)
            .map(|(committed, high)| high.saturating_sub(committed)),
        pending_offset: p.pending_offset,
        delivery_attempt: p.delivery_attempt,
        last_error: p.last_error.clone(),
        delivered: p.delivered,
        dead_lettered: p.dead_lettered,
        dropped: p.dropped,
    }
}
