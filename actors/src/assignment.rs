//! Partition assignment for consumer groups: who reads which partition.
//!
//! Two strategies (docs/api.md § Consumer groups, docs/architecture.md § Consumer groups): `range`
//! gives each member a contiguous run of every topic's partitions; `round_robin` deals all
//! partitions out one by one. Both are **sticky**: when membership changes, a member keeps
//! the partitions it had (up to its fair share), and only the partitions of members that
//! left, of new topics, or above someone's fair share move. The strategy decides where a
//! partition goes when nobody keeps it, so a fresh group gets the textbook layout.
//!
//! Invariants of [`assign`]'s result: every partition of a subscribed topic is owned by
//! exactly one member subscribed to its topic; loads differ by at most one between two
//! members that could trade a partition; the result depends only on the inputs (every
//! coordinator computes the same layout from the same state).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition number.
    pub partition: u32,
}

/// How a group spreads partitions over its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentStrategy {
    /// Contiguous runs of each topic's partitions (Kafka's `range`).
    #[default]
    Range,
    /// Partitions dealt one at a time over the members (Kafka's `roundrobin`).
    RoundRobin,
}

impl AssignmentStrategy {
    /// The API's name of the strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "round_robin",
        }
    }
}

/// Members and their subscribed topics, by member id.
pub type Subscriptions = BTreeMap<String, BTreeSet<String>>;

/// Partitions owned per member id.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// The layout a fresh group would get: partition → member.
fn ideal(
    strategy: AssignmentStrategy,
    members: &Subscriptions,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<TopicPartition, String> {
    let mut out = BTreeMap::new();
    match strategy {
        AssignmentStrategy::Range => {
            for (topic, count) in partitions {
                let eligible: Vec<&String> = members
                    .iter()
                    .filter(|(_, topics)| topics.contains(topic))
                    .map(|(id, _)| id)
                    .collect();
                if eligible.is_empty() {
                    continue;
                }
                let m = eligible.len() as u32;
                let (quotient, remainder) = (count / m, count % m);
                let mut next = 0u32;
                for (i, member) in eligible.iter().enumerate() {
                    let take = quotient + u32::from((i as u32) < remainder);
                    for partition in next..next + take {
                        out.insert(
                            TopicPartition {
                                topic: topic.clone(),
                                partition,
                            },
                            (*member).clone(),
                        );
                    }
                    next += take;
                }
            }
        }
        AssignmentStrategy::RoundRobin => {
            let ids: Vec<&String> = members.keys().collect();
            if ids.is_empty() {
                return out;
            }
            let mut cursor = 0usize;
            for (topic, count) in partitions {
                if !members.values().any(|topics| topics.contains(topic)) {
                    continue;
                }
                for partition in 0..*count {
                    // Skip members not subscribed to this topic; one of them is.
                    while !members[ids[cursor % ids.len()]].contains(topic) {
                        cursor += 1;
                    }
                    out.insert(
                        TopicPartition {
                            topic: topic.clone(),
                            partition,
                        },
                        ids[cursor % ids.len()].clone(),
                    );
                    cursor += 1;
                }
            }
        }
    }
    out
}

/// Computes a sticky assignment.
///
/// `members` are the live members with their subscriptions, `partitions` the partition
/// count of every existing topic (topics nobody subscribes to are ignored), `previous` the
/// assignment before the change (members gone from `members` are ignored).
pub fn assign(
    strategy: AssignmentStrategy,
    members: &Subscriptions,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut result: Assignment = members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    if members.is_empty() {
        return result;
    }
    let preferred = ideal(strategy, members, partitions);
    let total = preferred.len();
    // Fair share, rounded up: no member keeps more than this through a change.
    let cap = total.div_ceil(members.len());
    let eligible = |member: &str, tp: &TopicPartition| {
        members.get(member).is_some_and(|t| t.contains(&tp.topic))
    };
    let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();

    // 1. Keep what each member had, up to the fair share.
    for (member, owned) in previous {
        if !members.contains_key(member) {
            continue;
        }
        for tp in owned {
            let kept = result.get(member).map_or(0, BTreeSet::len);
            if kept >= cap {
                break;
            }
            if preferred.contains_key(tp) && eligible(member, tp) && !owner.contains_key(tp) {
                owner.insert(tp.clone(), member.clone());
                if let Some(set) = result.get_mut(member) {
                    set.insert(tp.clone());
                }
            }
        }
    }

    // 2. Place the rest: at the strategy's choice while it is under its share, else at
    //    the least loaded eligible member.
    for (tp, ideal_member) in &preferred {
        if owner.contains_key(tp) {
            continue;
        }
        let ideal_load = result.get(ideal_member).map_or(usize::MAX, BTreeSet::len);
        let chosen = if ideal_load < cap {
            ideal_member.clone()
        } else {
            match members
                .keys()
                .filter(|m| eligible(m, tp))
                .min_by_key(|m| result.get(*m).map_or(usize::MAX, BTreeSet::len))
            {
                Some(m) => m.clone(),
                None => continue,
            }
        };
        owner.insert(tp.clone(), chosen.clone());
        if let Some(set) = result.get_mut(&chosen) {
            set.insert(tp.clone());
        }
    }

    // 3. Even out: move one partition at a time from a member to an eligible member with
    //    at least two fewer. Each move lowers the sum of squared loads, so this ends; the
    //    bound is a guard, not the expected count.
    for _ in 0..=total * total {
        let mut best: Option<(TopicPartition, String, String)> = None;
        let mut by_load: Vec<(&String, usize)> =
            result.iter().map(|(m, set)| (m, set.len())).collect();
        by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        'search: for (heavy, heavy_load) in &by_load {
            for tp in result[*heavy].iter().rev() {
                let light = members
                    .keys()
                    .filter(|m| eligible(m, tp) && result[*m].len() + 1 < *heavy_load)
                    .min_by_key(|m| (preferred.get(tp) != Some(*m), result[*m].len()));
                if let Some(light) = light {
                    best = Some((tp.clone(), (*heavy).clone(), light.clone()));
                    break 'search;
                }
            }
        }
        let Some((tp, from, to)) = best else { break };
        if let Some(set) = result.get_mut(&from) {
            set.remove(&tp);
        }
        if let Some(set) = result.get_mut(&to) {
            set.insert(tp);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    fn subs(list: &[(&str, &[&str])]) -> Subscriptions {
        list.iter()
            .map(|(m, topics)| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn owned(a: &Assignment, member: &str) -> Vec<TopicPartition> {
        a[member].iter().cloned().collect()
    }

    /// Every partition exactly once, each to a subscribed member.
    fn assert_complete(a: &Assignment, members: &Subscriptions, parts: &BTreeMap<String, u32>) {
        let mut seen = BTreeSet::new();
        for (member, set) in a {
            for p in set {
                assert!(
                    members[member].contains(&p.topic),
                    "{member} not subscribed"
                );
                assert!(seen.insert(p.clone()), "{p:?} assigned twice");
            }
        }
        for (topic, n) in parts {
            if members.values().any(|t| t.contains(topic)) {
                for p in 0..*n {
                    assert!(seen.contains(&tp(topic, p)), "{topic}/{p} unassigned");
                }
            }
        }
    }

    fn moved(before: &Assignment, after: &Assignment) -> usize {
        after
            .iter()
            .map(|(m, set)| {
                set.iter()
                    .filter(|p| before.get(m).is_none_or(|b| !b.contains(*p)))
                    .count()
            })
            .sum()
    }

    #[test]
    fn range_gives_contiguous_runs() {
        let members = subs(&[("a", &["t"]), ("b", &["t"])]);
        let parts = counts(&[("t", 4)]);
        let a = assign(
            AssignmentStrategy::Range,
            &members,
            &parts,
            &Assignment::new(),
        );
        assert_eq!(owned(&a, "a"), vec![tp("t", 0), tp("t", 1)]);
        assert_eq!(owned(&a, "b"), vec![tp("t", 2), tp("t", 3)]);
    }

    #[test]
    fn round_robin_deals_one_at_a_time() {
        let members = subs(&[("a", &["t"]), ("b", &["t"])]);
        let parts = counts(&[("t", 4)]);
        let a = assign(
            AssignmentStrategy::RoundRobin,
            &members,
            &parts,
            &Assignment::new(),
        );
        assert_eq!(owned(&a, "a"), vec![tp("t", 0), tp("t", 2)]);
        assert_eq!(owned(&a, "b"), vec![tp("t", 1), tp("t", 3)]);
    }

    #[test]
    fn complete_and_balanced_for_many_sizes() {
        for strategy in [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin] {
            for m in 1..6usize {
                for n in 0..13u32 {
                    let names: Vec<String> = (0..m).map(|i| format!("m{i}")).collect();
                    let members: Subscriptions = names
                        .iter()
                        .map(|id| (id.clone(), ["t".to_string(), "u".to_string()].into()))
                        .collect();
                    let parts = counts(&[("t", n), ("u", n / 2 + 1)]);
                    let a = assign(strategy, &members, &parts, &Assignment::new());
                    assert_complete(&a, &members, &parts);
                    let loads: Vec<usize> = a.values().map(BTreeSet::len).collect();
                    let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                    assert!(hi - lo <= 1, "{strategy:?} m={m} n={n}: loads {loads:?}");
                }
            }
        }
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        let parts = counts(&[("t", 4)]);
        let one = subs(&[("a", &["t"])]);
        let before = assign(AssignmentStrategy::Range, &one, &parts, &Assignment::new());
        assert_eq!(before["a"].len(), 4);
        let two = subs(&[("a", &["t"]), ("b", &["t"])]);
        let after = assign(AssignmentStrategy::Range, &two, &parts, &before);
        assert_complete(&after, &two, &parts);
        assert_eq!(after["a"].len(), 2);
        assert_eq!(after["b"].len(), 2);
        assert!(after["a"].is_subset(&before["a"]), "a keeps what it had");
        assert_eq!(moved(&before, &after), 2, "only b's share moves");
    }

    #[test]
    fn a_leaving_member_moves_only_its_partitions() {
        for strategy in [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin] {
            let parts = counts(&[("t", 6)]);
            let three = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
            let before = assign(strategy, &three, &parts, &Assignment::new());
            let two = subs(&[("a", &["t"]), ("c", &["t"])]);
            let after = assign(strategy, &two, &parts, &before);
            assert_complete(&after, &two, &parts);
            assert!(before["a"].is_subset(&after["a"]), "{strategy:?}: a keeps");
            assert!(before["c"].is_subset(&after["c"]), "{strategy:?}: c keeps");
            assert_eq!(after["a"].len(), 3);
            assert_eq!(after["c"].len(), 3);
            assert_eq!(moved(&before, &after), 2, "{strategy:?}: only b's two move");
        }
    }

    #[test]
    fn partitions_go_only_to_subscribers() {
        let members = subs(&[("a", &["t"]), ("b", &["t", "u"])]);
        let parts = counts(&[("t", 2), ("u", 4), ("other", 3)]);
        for strategy in [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin] {
            let a = assign(strategy, &members, &parts, &Assignment::new());
            assert_complete(&a, &members, &parts);
            assert!(a["a"].iter().all(|p| p.topic == "t"));
            assert!(a.values().flatten().all(|p| p.topic != "other"));
            // b must take all of u; a should then take all of t.
            assert_eq!(a["a"].len(), 2, "{strategy:?}: {a:?}");
        }
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let members = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let parts = counts(&[("t", 2)]);
        let a = assign(
            AssignmentStrategy::Range,
            &members,
            &parts,
            &Assignment::new(),
        );
        assert_complete(&a, &members, &parts);
        assert_eq!(a.values().filter(|s| s.is_empty()).count(), 1);
    }

    #[test]
    fn vanished_partitions_are_dropped() {
        let members = subs(&[("a", &["t", "gone"])]);
        let previous: Assignment = [(
            "a".to_string(),
            [tp("t", 0), tp("t", 5), tp("gone", 0)].into(),
        )]
        .into();
        let a = assign(
            AssignmentStrategy::Range,
            &members,
            &counts(&[("t", 2)]),
            &previous,
        );
        assert_eq!(owned(&a, "a"), vec![tp("t", 0), tp("t", 1)]);
    }

    #[test]
    fn empty_group_gets_nothing() {
        let a = assign(
            AssignmentStrategy::Range,
            &Subscriptions::new(),
            &counts(&[("t", 3)]),
            &Assignment::new(),
        );
        assert!(a.is_empty());
    }
}
