//! Domain values to their psubd-wire forms: the enums and small structs several
//! resources' answers share, converted in one place so every route names them alike.

use psubd_actors::assignment::{AssignmentStrategy, TopicPartition};
use psubd_actors::coordinator::AutoOffsetReset;

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
