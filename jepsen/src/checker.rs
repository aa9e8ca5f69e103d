//! The checker: reads a history and finds every anomaly class of the failure contract.
//!
//! Classes that make a run invalid:
//! - `lost-write`: an acknowledged value never read anywhere, although later offsets of
//!   its partition were read.
//! - `unseen-after-drain`: an acknowledged value absent from every node's final read.
//! - `inconsistent-offset`: one partition offset read with two values; an acknowledged
//!   offset read holding another value; two values acknowledged at one offset; an
//!   acknowledged value read only at offsets other than its acknowledged one.
//! - `phantom`: a value read that no publish sent (or sent to another partition).
//! - `aborted-read`: a value read whose publish `fail`ed (was certainly refused).
//! - `replica-divergence`: after the final reads converged (or gave up), a partition
//!   offset present on one node and absent or different on another.
//! - `send-order`: publish A completed before publish B was invoked, same partition, and
//!   B got the lower offset.
//! - `read-gap`: a read (by offset, by a group member within its session, or the final
//!   read) skipped offsets that exist: offsets are dense and start at 0
//!   (docs/architecture.md § Fetch path).
//! - `nonmonotonic-read`: offsets going backwards within one answer, an answer starting
//!   below the requested offset, or a member re-delivered offsets within one session and
//!   generation.
//! - `group-skip`: a member's first poll of a partition (after a join or a rebalance)
//!   starts beyond every offset the group may have committed, although offsets in
//!   between exist; or, after the drain, an offset below the final committed offset was
//!   never delivered to any member.
//! - `commit-regression`: a committed offset read back lower than a commit acknowledged
//!   before the read began.
//! - `replica-lost-ack`: an acknowledged value absent from one node's own replica in the
//!   final read (which reads each replica locally, never forwarding), while other
//!   replicas hold it.
//! - `node-crash`: a node process exited without being signalled (a fail-stop under a
//!   failing fsync that kept the contract — non-zero status after an ERROR line — is
//!   counted as `fail-stops` instead).
//! - `sync-failure-ignored`: fsyncs failed on a node's file system and the node kept
//!   running until the fault healed.
//! - `incomplete`: the final phase did not produce a final read of every partition on
//!   every node (so durability cannot be judged), or the group did not drain.
//! - `idempotence-duplicate`: in a history of idempotent writers (every record sent with
//!   an id, and sent again only with the same id), a value stored at more than one offset.
//!
//! Counted, not failed: `duplicates` (a value stored at more than one offset, e.g. an
//! edge retry after an unclear leader change) and `re-deliveries` (a group offset
//! delivered more than once: at-least-once) and `fail-stops` (a node stopped itself on
//! a failing fsync, as it must).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::availability::{self, Availability};
use crate::error::JepsenError;
use crate::history::{read_history, Event, EventType, KeyOffset, Op, SeenRecord};

/// Examples kept per anomaly class.
pub const MAX_EXAMPLES: usize = 8;

/// Classes whose presence makes a run invalid, in report order.
pub const INVALID_CLASSES: &[&str] = &[
    "lost-write",
    "unseen-after-drain",
    "inconsistent-offset",
    "phantom",
    "aborted-read",
    "replica-divergence",
    "replica-lost-ack",
    "send-order",
    "read-gap",
    "nonmonotonic-read",
    "group-skip",
    "commit-regression",
    "node-crash",
    "sync-failure-ignored",
    "incomplete",
    "idempotence-duplicate",
];

/// Classes that are counted and reported but allowed.
pub const COUNTED_CLASSES: &[&str] = &["duplicates", "re-deliveries", "fail-stops"];

/// One class: how many, and the first few with their evidence.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Class {
    /// Number of distinct occurrences.
    pub count: u64,
    /// Up to [`MAX_EXAMPLES`] occurrences, each with the events that show it.
    pub examples: Vec<Value>,
}

impl Class {
    fn add(&mut self, example: impl FnOnce() -> Value) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// Operation counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    /// Invoked.
    pub invoked: u64,
    /// Completed ok.
    pub ok: u64,
    /// Certainly not applied.
    pub fail: u64,
    /// Unknown (including invocations never completed).
    pub info: u64,
}

/// What `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// True when no class of [`INVALID_CLASSES`] occurred.
    pub valid: bool,
    /// Every class, zero or not.
    pub anomalies: BTreeMap<String, Class>,
    /// Per operation (`f`) counts.
    pub ops: BTreeMap<String, OpCounts>,
    /// Distinct values acknowledged.
    pub acked: u64,
    /// Nodes and partitions in the final read.
    pub final_nodes: Vec<u64>,
    /// Availability during healthy windows and faults.
    pub availability: Availability,
}

impl Results {
    /// Count of a class (0 when absent).
    pub fn count(&self, class: &str) -> u64 {
        self.anomalies.get(class).map(|c| c.count).unwrap_or(0)
    }

    /// The one-line summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} acked={} lost={} unseen={} inconsistent={} phantom={} aborted={} divergent={} send-order={} gaps={} nonmonotonic={} group-skips={} commit-regressions={} crashes={} incomplete={} duplicates={} re-deliveries={}",
            if self.valid { "VALID" } else { "INVALID" },
            self.acked,
            self.count("lost-write"),
            self.count("unseen-after-drain"),
            self.count("inconsistent-offset"),
            self.count("phantom"),
            self.count("aborted-read"),
            self.count("replica-divergence"),
            self.count("send-order"),
            self.count("read-gap"),
            self.count("nonmonotonic-read"),
            self.count("group-skip"),
            self.count("commit-regression"),
            self.count("node-crash"),
            self.count("incomplete"),
            self.count("duplicates"),
            self.count("re-deliveries"),
        );
        s.push_str(&format!(
            " replica-lost-acks={} sync-failures-ignored={} fail-stops={} idempotence-duplicates={}",
            self.count("replica-lost-ack"),
            self.count("sync-failure-ignored"),
            self.count("fail-stops"),
            self.count("idempotence-duplicate"),
        ));
        if let Some(share) = self.availability.publish_ok_share_during_faults {
            s.push_str(&format!(" publish-ok-during-faults={share:.2}"));
        }
        if let Some(share) = self.availability.publish_ok_share_healthy {
            s.push_str(&format!(" publish-ok-healthy={share:.2}"));
        }
        // Per fault window, so a one-node kill is not averaged with killing every node.
        if let Some(windows) = self.availability.by_op.get("publish") {
            for (window, share) in windows.iter().filter(|(w, _)| *w != "healthy") {
                if let Some(share) = share.share {
                    s.push_str(&format!(" publish-ok[{window}]={share:.2}"));
                }
            }
        }
        s.push_str(&format!(
            " longest-unavailable={:.1}s",
            self.availability.longest_publish_gap_ms as f64 / 1000.0
        ));
        s
    }
}

/// An operation: its invocation and its completion (none if the run ended first).
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    /// The invoke event.
    pub inv: &'a Event,
    /// The completion, if any.
    pub done: Option<&'a Event>,
}

impl Pair<'_> {
    /// The outcome; an operation never completed counts as `info`.
    pub fn outcome(&self) -> EventType {
        self.done.map(|d| d.kind).unwrap_or(EventType::Info)
    }

    /// Index of the completion, or `u64::MAX` when never completed (it may take effect
    /// at any later point).
    pub fn done_index(&self) -> u64 {
        self.done.map(|d| d.index).unwrap_or(u64::MAX)
    }
}

/// Pairs each invoke with the next completion of the same process.
pub fn pair(events: &[Event]) -> Vec<Pair<'_>> {
    let mut open: HashMap<&str, usize> = HashMap::new();
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    for e in events {
        match e.kind {
            EventType::Invoke => {
                open.insert(e.process.as_str(), pairs.len());
                pairs.push(Pair { inv: e, done: None });
            }
            _ => {
                if let Some(i) = open.remove(e.process.as_str()) {
                    if pairs[i].inv.f == e.f {
                        pairs[i].done = Some(e);
                    }
                }
            }
        }
    }
    pairs
}

/// Reads `history` and writes `results.json` into `out_dir`.
///
/// # Errors
/// The history cannot be read or the results cannot be written.
pub fn check_file(history: &Path, out_dir: &Path) -> Result<Results, JepsenError> {
    let events = read_history(history)?;
    let results = check(&events);
    let path = out_dir.join("results.json");
    let text = serde_json::to_string_pretty(&results).map_err(|source| JepsenError::Encode {
        what: "results",
        source,
    })?;
    std::fs::write(&path, text).map_err(|e| JepsenError::io(&path, e))?;
    Ok(results)
}

/// A publish as the checker sees it.
#[derive(Debug, Clone, Copy)]
struct Publish<'a> {
    pair: Pair<'a>,
    key: &'a str,
    value: u64,
    /// The acknowledged offset, for `ok` publishes.
    offset: Option<u64>,
}

/// One record observed by a read, a poll or a final read.
#[derive(Debug, Clone, Copy)]
struct Obs<'a> {
    record: &'a SeenRecord,
    event: &'a Event,
}

/// Runs every check on `events`.
pub fn check(events: &[Event]) -> Results {
    let pairs = pair(events);
    let mut classes: BTreeMap<String, Class> = BTreeMap::new();
    for c in INVALID_CLASSES.iter().chain(COUNTED_CLASSES) {
        classes.insert((*c).to_string(), Class::default());
    }
    let mut ops: BTreeMap<String, OpCounts> = BTreeMap::new();
    for p in &pairs {
        if matches!(p.inv.f, Op::Fault | Op::Heal | Op::Phase) {
            continue;
        }
        let c = ops.entry(f_name(p.inv.f)).or_default();
        c.invoked += 1;
        match p.outcome() {
            EventType::Ok => c.ok += 1,
            EventType::Fail => c.fail += 1,
            _ => c.info += 1,
        }
    }

    // Publishes by value.
    let mut publishes: HashMap<u64, Publish<'_>> = HashMap::new();
    for p in pairs.iter().filter(|p| p.inv.f == Op::Publish) {
        let (Some(key), Some(value)) = (
            p.inv.key.as_deref(),
            p.inv.value.as_ref().and_then(Value::as_u64),
        ) else {
            continue;
        };
        let offset = match p.done {
            Some(d) if d.kind == EventType::Ok => d.offset,
            _ => None,
        };
        publishes.insert(
            value,
            Publish {
                pair: *p,
                key,
                value,
                offset,
            },
        );
    }
    let acked: Vec<&Publish<'_>> = {
        let mut v: Vec<&Publish<'_>> = publishes.values().filter(|p| p.offset.is_some()).collect();
        v.sort_by_key(|p| p.value);
        v
    };

    // Every record observed by an ok read, poll or final read.
    let mut obs: Vec<Obs<'_>> = Vec::new();
    for e in events {
        if e.kind == EventType::Ok && matches!(e.f, Op::Read | Op::Poll | Op::FinalState) {
            for r in e.records.iter().flatten() {
                obs.push(Obs {
                    record: r,
                    event: e,
                });
            }
        }
    }

    check_values(&publishes, &acked, &obs, &mut classes);
    check_final(events, &pairs, &publishes, &acked, &mut classes);
    check_send_order(&acked, &mut classes);
    check_reads(&pairs, &mut classes);
    check_groups(events, &pairs, &mut classes);
    let idempotent = events.iter().any(|e| {
        e.f == Op::Phase
            && e.value.as_ref().and_then(Value::as_str) == Some(crate::workload::IDEMPOTENT_PHASE)
    });
    if idempotent {
        // With ids, psubd promises what is otherwise only counted: one copy per value.
        let duplicates = get(&mut classes, "duplicates").clone();
        *get(&mut classes, "idempotence-duplicate") = duplicates;
    }
    for e in events.iter().filter(|e| e.f == Op::Phase) {
        if let Some(name) = e.value.as_ref().and_then(Value::as_str) {
            if name.ends_with("-failed") {
                get(&mut classes, "incomplete")
                    .add(|| json!({"phase": name, "error": e.error, "event": e}));
            }
        }
        if e.value.as_ref().and_then(Value::as_str) == Some("node-exit") {
            get(&mut classes, "node-crash").add(|| json!({"event": e}));
        }
        if e.value.as_ref().and_then(Value::as_str) == Some("node-fail-stop") {
            get(&mut classes, "fail-stops").add(|| json!({"event": e}));
        }
    }
    for e in events.iter().filter(|e| e.f == Op::Heal) {
        if let Some(ignored) = e
            .value
            .as_ref()
            .and_then(|v| v.get("ignored_sync_failures"))
            .and_then(Value::as_array)
        {
            for i in ignored {
                get(&mut classes, "sync-failure-ignored").add(|| json!({"node": i, "event": e}));
            }
        }
    }

    let valid = INVALID_CLASSES
        .iter()
        .all(|c| classes.get(*c).map(|x| x.count).unwrap_or(0) == 0);
    let final_nodes: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.f == Op::FinalState)
        .filter_map(|e| e.node)
        .collect();
    Results {
        valid,
        anomalies: classes,
        ops,
        acked: acked.len() as u64,
        final_nodes: final_nodes.into_iter().collect(),
        availability: availability::compute(events, &pairs),
    }
}

fn get<'c>(classes: &'c mut BTreeMap<String, Class>, name: &str) -> &'c mut Class {
    classes.entry(name.to_string()).or_default()
}

fn f_name(f: Op) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An event as evidence: the records of reads cut to those near `focus` (key, offset),
/// with the total kept.
fn brief(e: &Event, focus: Option<(&str, u64)>) -> Value {
    let mut e2 = e.clone();
    let total = e.records.as_ref().map(Vec::len);
    if let Some(records) = e2.records.as_mut() {
        match focus {
            Some((k, o)) => {
                records.retain(|r| r.key == k && r.offset + 2 >= o && r.offset <= o + 2)
            }
            None => records.truncate(5),
        }
    }
    let mut v = serde_json::to_value(&e2).unwrap_or(Value::Null);
    if let (Some(obj), Some(total)) = (v.as_object_mut(), total) {
        obj.insert("records_total".into(), json!(total));
    }
    v
}

fn pub_evidence(p: &Publish<'_>) -> Value {
    json!({
        "value": p.value,
        "key": p.key,
        "acked_offset": p.offset,
        "invoke": brief(p.pair.inv, None),
        "completion": p.pair.done.map(|d| brief(d, None)),
    })
}

fn check_values(
    publishes: &HashMap<u64, Publish<'_>>,
    acked: &[&Publish<'_>],
    obs: &[Obs<'_>],
    classes: &mut BTreeMap<String, Class>,
) {
    // Values per (key, offset), first observation of each.
    let mut at: BTreeMap<(&str, u64), BTreeMap<String, Obs<'_>>> = BTreeMap::new();
    // Offsets per value.
    let mut offsets_of: HashMap<u64, BTreeMap<u64, Obs<'_>>> = HashMap::new();
    let mut max_offset: HashMap<&str, (u64, Obs<'_>)> = HashMap::new();
    let mut phantom_seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut aborted_seen: BTreeSet<u64> = BTreeSet::new();
    for o in obs {
        let key = o.record.key.as_str();
        at.entry((key, o.record.offset))
            .or_default()
            .entry(o.record.value.to_string())
            .or_insert(*o);
        let m = max_offset.entry(key).or_insert((o.record.offset, *o));
        if o.record.offset > m.0 {
            *m = (o.record.offset, *o);
        }
        let sent = o.record.value.as_u64().and_then(|v| publishes.get(&v));
        match sent {
            Some(p) if p.key == key => {
                offsets_of
                    .entry(p.value)
                    .or_default()
                    .entry(o.record.offset)
                    .or_insert(*o);
                if p.pair.outcome() == EventType::Fail && aborted_seen.insert(p.value) {
                    get(classes, "aborted-read").add(|| {
                        json!({
                            "value": p.value,
                            "read_at": {"key": key, "offset": o.record.offset},
                            "publish": pub_evidence(p),
                            "read": brief(o.event, Some((key, o.record.offset))),
                        })
                    });
                }
            }
            _ => {
                if phantom_seen.insert((key.to_string(), o.record.value.to_string())) {
                    get(classes, "phantom").add(|| {
                        json!({
                            "key": key,
                            "offset": o.record.offset,
                            "value": o.record.value,
                            "sent_to": sent.map(|p| p.key),
                            "read": brief(o.event, Some((key, o.record.offset))),
                        })
                    });
                }
            }
        }
    }

    // inconsistent-offset.
    let mut flagged: BTreeSet<(String, u64)> = BTreeSet::new();
    for ((key, offset), values) in &at {
        if values.len() > 1 && flagged.insert((key.to_string(), *offset)) {
            get(classes, "inconsistent-offset").add(|| {
                json!({
                    "what": "one offset read with several values",
                    "key": key,
                    "offset": offset,
                    "reads": values.values().map(|o| brief(o.event, Some((key, *offset)))).collect::<Vec<_>>(),
                })
            });
        }
    }
    let mut acked_at: HashMap<(&str, u64), &Publish<'_>> = HashMap::new();
    for p in acked {
        let Some(offset) = p.offset else { continue };
        if let Some(other) = acked_at.insert((p.key, offset), p) {
            if flagged.insert((p.key.to_string(), offset)) {
                get(classes, "inconsistent-offset").add(|| {
                    json!({
                        "what": "two values acknowledged at one offset",
                        "key": p.key,
                        "offset": offset,
                        "publishes": [pub_evidence(other), pub_evidence(p)],
                    })
                });
            }
        }
        if let Some(values) = at.get(&(p.key, offset)) {
            let mine = json!(p.value).to_string();
            if let Some((_, other)) = values.iter().find(|(v, _)| **v != mine) {
                if flagged.insert((p.key.to_string(), offset)) {
                    get(classes, "inconsistent-offset").add(|| {
                        json!({
                            "what": "acknowledged offset holds another value",
                            "key": p.key,
                            "offset": offset,
                            "publish": pub_evidence(p),
                            "read": brief(other.event, Some((p.key, offset))),
                        })
                    });
                }
            }
        }
        if let Some(seen) = offsets_of.get(&p.value) {
            let first = seen.iter().next().map(|(o, ob)| (*o, *ob));
            if let (false, Some((o, first))) = (seen.contains_key(&offset), first) {
                if !flagged.insert((p.key.to_string(), offset)) {
                    continue;
                }
                get(classes, "inconsistent-offset").add(|| {
                    json!({
                        "what": "acknowledged value read only at other offsets",
                        "key": p.key,
                        "acked_offset": offset,
                        "read_offsets": seen.keys().collect::<Vec<_>>(),
                        "publish": pub_evidence(p),
                        "read": brief(first.event, Some((p.key, o))),
                    })
                });
            }
        }
    }

    // duplicates (counted).
    let mut dup_values: Vec<(&u64, &BTreeMap<u64, Obs<'_>>)> = offsets_of
        .iter()
        .filter(|(_, offs)| offs.len() > 1)
        .collect();
    dup_values.sort_by_key(|(v, _)| **v);
    for (v, offs) in dup_values {
        get(classes, "duplicates").add(|| {
            let p = publishes.get(v);
            json!({
                "value": v,
                "offsets": offs.keys().collect::<Vec<_>>(),
                "publish": p.map(pub_evidence),
            })
        });
    }

    // lost-write.
    for p in acked {
        let Some(offset) = p.offset else { continue };
        if offsets_of.contains_key(&p.value) {
            continue;
        }
        if let Some((max, later)) = max_offset.get(p.key) {
            if *max > offset {
                get(classes, "lost-write").add(|| {
                    json!({
                        "publish": pub_evidence(p),
                        "later_offset_read": {"offset": max, "read": brief(later.event, Some((p.key, *max)))},
                    })
                });
            }
        }
    }
}

/// unseen-after-drain, replica-divergence, and the completeness of the final read.
fn check_final(
    events: &[Event],
    pairs: &[Pair<'_>],
    publishes: &HashMap<u64, Publish<'_>>,
    acked: &[&Publish<'_>],
    classes: &mut BTreeMap<String, Class>,
) {
    let finals: Vec<&Pair<'_>> = pairs.iter().filter(|p| p.inv.f == Op::FinalState).collect();
    let final_started = events.iter().any(|e| {
        e.f == Op::Phase && e.value.as_ref().and_then(Value::as_str) == Some("final-read")
    });
    let nodes: BTreeSet<u64> = finals.iter().filter_map(|p| p.inv.node).collect();
    let mut keys: BTreeSet<&str> = publishes.values().map(|p| p.key).collect();
    keys.extend(finals.iter().filter_map(|p| p.inv.key.as_deref()));
    if finals.is_empty() {
        if !final_started {
            get(classes, "incomplete").add(|| json!({"what": "no final read in the history"}));
        }
        return;
    }
    // (key, node) -> offset -> value
    let mut views: BTreeMap<&str, BTreeMap<u64, BTreeMap<u64, &Value>>> = BTreeMap::new();
    let mut final_values: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for key in &keys {
        for node in &nodes {
            let found = finals
                .iter()
                .filter(|p| p.inv.key.as_deref() == Some(*key) && p.inv.node == Some(*node))
                .filter_map(|p| p.done.filter(|d| d.kind == EventType::Ok))
                .next_back();
            match found {
                Some(d) => {
                    let view = views.entry(key).or_default().entry(*node).or_default();
                    for r in d.records.iter().flatten() {
                        view.insert(r.offset, &r.value);
                        final_values
                            .entry(key)
                            .or_default()
                            .insert(r.value.to_string());
                    }
                    // read-gap within a final read: offsets start at 0 and are dense.
                    for (expect, r) in (0u64..).zip(d.records.iter().flatten()) {
                        if r.offset != expect {
                            let what = if r.offset > expect {
                                "read-gap"
                            } else {
                                "nonmonotonic-read"
                            };
                            get(classes, what).add(|| {
                                json!({"what": "final read not dense from 0", "key": key, "node": node, "expected": expect, "got": r.offset, "read": brief(d, Some((key, r.offset)))})
                            });
                            break;
                        }
                    }
                }
                None => {
                    get(classes, "incomplete").add(|| {
                        let err = finals
                            .iter()
                            .filter(|p| p.inv.key.as_deref() == Some(*key) && p.inv.node == Some(*node))
                            .filter_map(|p| p.done)
                            .next_back()
                            .and_then(|d| d.error.clone());
                        json!({"what": "no final read of a partition on a node", "key": key, "node": node, "error": err})
                    });
                }
            }
        }
    }
    let replica_values: HashMap<(&str, u64), BTreeSet<String>> = views
        .iter()
        .flat_map(|(key, by_node)| {
            by_node
                .iter()
                .map(move |(node, v)| ((*key, *node), v.values().map(|x| x.to_string()).collect()))
        })
        .collect();
    for p in acked {
        let present = final_values
            .get(p.key)
            .is_some_and(|vals| vals.contains(&json!(p.value).to_string()));
        if !present && views.contains_key(p.key) {
            get(classes, "unseen-after-drain").add(|| pub_evidence(p));
        }
        // Each replica on its own: held by some node, missing on this one.
        if present {
            let value = json!(p.value).to_string();
            for node in &nodes {
                if let Some(held) = replica_values.get(&(p.key, *node)) {
                    if !held.contains(&value) {
                        get(classes, "replica-lost-ack")
                            .add(|| json!({"node": node, "publish": pub_evidence(p)}));
                    }
                }
            }
        }
    }
    for (key, by_node) in &views {
        let all_offsets: BTreeSet<u64> = by_node.values().flat_map(|v| v.keys().copied()).collect();
        for offset in all_offsets {
            let vals: BTreeMap<u64, Option<&Value>> = nodes
                .iter()
                .map(|n| (*n, by_node.get(n).and_then(|v| v.get(&offset).copied())))
                .collect();
            let distinct: BTreeSet<String> = vals
                .values()
                .map(|v| v.map(|x| x.to_string()).unwrap_or_default())
                .collect();
            if distinct.len() > 1 {
                get(classes, "replica-divergence")
                    .add(|| json!({"key": key, "offset": offset, "values_by_node": vals}));
            }
        }
    }
}

fn check_send_order(acked: &[&Publish<'_>], classes: &mut BTreeMap<String, Class>) {
    let mut by_key: BTreeMap<&str, Vec<&Publish<'_>>> = BTreeMap::new();
    for p in acked {
        by_key.entry(p.key).or_default().push(p);
    }
    for (_, ps) in by_key {
        let mut by_invoke = ps.clone();
        by_invoke.sort_by_key(|p| p.pair.inv.index);
        let mut by_done = ps;
        by_done.sort_by_key(|p| p.pair.done_index());
        let mut i = 0;
        // The completed publish with the highest offset so far.
        let mut best: Option<&Publish<'_>> = None;
        for b in by_invoke {
            while i < by_done.len() && by_done[i].pair.done_index() < b.pair.inv.index {
                let a = by_done[i];
                if !matches!(best, Some(x) if a.offset <= x.offset) {
                    best = Some(a);
                }
                i += 1;
            }
            if let Some(a) = best {
                if b.offset < a.offset {
                    get(classes, "send-order").add(|| {
                        json!({
                            "what": "publish completed before another was invoked got the higher offset",
                            "earlier": pub_evidence(a),
                            "later": pub_evidence(b),
                        })
                    });
                }
            }
        }
    }
}

/// read-gap and nonmonotonic-read of reads by offset.
fn check_reads(pairs: &[Pair<'_>], classes: &mut BTreeMap<String, Class>) {
    for p in pairs.iter().filter(|p| p.inv.f == Op::Read) {
        let Some(d) = p.done.filter(|d| d.kind == EventType::Ok) else {
            continue;
        };
        let Some(key) = p.inv.key.as_deref() else {
            continue;
        };
        let requested = p.inv.offset.unwrap_or(0);
        // Each class at most once per read: (class, expected offset, offset got).
        let mut bad: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        let mut expect = requested;
        for r in d.records.iter().flatten() {
            if r.key != key {
                continue; // reported as phantom
            }
            if r.offset > expect {
                bad.entry("read-gap").or_insert((expect, r.offset));
            } else if r.offset < expect {
                bad.entry("nonmonotonic-read").or_insert((expect, r.offset));
            }
            expect = r.offset + 1;
        }
        if let Some(next) = d.offset {
            if next > expect {
                bad.entry("read-gap").or_insert((expect, next));
            } else if next < expect {
                bad.entry("nonmonotonic-read").or_insert((expect, next));
            }
        }
        for (class, (expected, got)) in bad {
            get(classes, class).add(|| {
                json!({
                    "what": "read by offset",
                    "key": key,
                    "requested": requested,
                    "expected_offset": expected,
                    "got_offset": got,
                    "invoke": brief(p.inv, None),
                    "read": brief(d, Some((key, got))),
                })
            });
        }
    }
}

/// `(group, topic/partition)`.
type GroupKey = (String, String);
/// An acknowledged commit of one partition: offset, completion index, the operation.
type AckedCommit<'a> = (u64, u64, Pair<'a>);

/// Per member id: what it was delivered in its current generation segment.
#[derive(Default)]
struct MemberState {
    generation: Option<i64>,
    /// Since the last unclear poll (an answer the member may never have received): the
    /// keys polled successfully again. `None` before any unclear poll.
    after_unclear: Option<BTreeSet<String>>,
    /// Last offset delivered to this member id, per key (across generations).
    last: BTreeMap<String, u64>,
    /// Keys delivered within the current generation segment.
    in_segment: BTreeSet<String>,
}

fn check_groups(events: &[Event], pairs: &[Pair<'_>], classes: &mut BTreeMap<String, Class>) {
    // Commits that may have taken effect: (group, key) -> [(offset, invoke index)].
    let mut commits: HashMap<(String, String), Vec<(u64, u64)>> = HashMap::new();
    // Acknowledged commits: (group, key) -> [(offset, done index, pair)].
    let mut acked_commits: HashMap<GroupKey, Vec<AckedCommit<'_>>> = HashMap::new();
    for p in pairs.iter().filter(|p| p.inv.f == Op::Commit) {
        let Some(group) = p.inv.group.clone() else {
            continue;
        };
        for KeyOffset { key, offset } in p.inv.offsets.iter().flatten() {
            let Some(offset) = offset else { continue };
            let gk = (group.clone(), key.clone());
            if p.outcome() != EventType::Fail {
                commits
                    .entry(gk.clone())
                    .or_default()
                    .push((*offset, p.inv.index));
            }
            if p.outcome() == EventType::Ok {
                acked_commits
                    .entry(gk)
                    .or_default()
                    .push((*offset, p.done_index(), *p));
            }
        }
    }
    let possible_committed = |group: &str, key: &str, before: u64| -> u64 {
        commits
            .get(&(group.to_string(), key.to_string()))
            .map(|v| {
                v.iter()
                    .filter(|(_, i)| *i < before)
                    .map(|(o, _)| *o)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };

    let mut members: HashMap<String, MemberState> = HashMap::new();
    let mut delivered: HashMap<(String, String, u64), u64> = HashMap::new();
    for p in pairs.iter().filter(|p| p.inv.f == Op::Poll) {
        let (Some(group), Some(member)) = (p.inv.group.as_deref(), p.inv.member.as_deref()) else {
            continue;
        };
        let state = members.entry(member.to_string()).or_default();
        let Some(d) = p.done else {
            state.after_unclear = Some(BTreeSet::new());
            continue;
        };
        match d.kind {
            EventType::Info => {
                state.after_unclear = Some(BTreeSet::new());
                continue;
            }
            EventType::Fail => continue,
            _ => {}
        }
        if state.generation.is_none() {
            state.generation = p.inv.generation;
        }
        if d.generation.is_some() && d.generation != state.generation {
            state.generation = d.generation;
            state.in_segment.clear();
        }
        // Records of this answer by key, in answer order.
        let mut by_key: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for r in d.records.iter().flatten() {
            by_key.entry(r.key.as_str()).or_default().push(r.offset);
            *delivered
                .entry((group.to_string(), r.key.clone(), r.offset))
                .or_insert(0) += 1;
        }
        for (key, offs) in by_key {
            // Within one answer: dense and increasing.
            for w in offs.windows(2) {
                if w[1] != w[0] + 1 {
                    let class = if w[1] > w[0] + 1 {
                        "read-gap"
                    } else {
                        "nonmonotonic-read"
                    };
                    get(classes, class).add(|| {
                        json!({"what": "group poll answer", "key": key, "after": w[0], "got": w[1], "poll": brief(d, Some((key, w[1])))})
                    });
                    break;
                }
            }
            let first = offs[0];
            let last = offs[offs.len() - 1];
            let first_since_unclear = state
                .after_unclear
                .as_mut()
                .is_some_and(|seen| seen.insert(key.to_string()));
            if first_since_unclear {
                // An answer was lost before this one: the member (which kept its id) may
                // be re-delivered anything from what it last received or the committed
                // offset, but must not start beyond both.
                let committed = possible_committed(group, key, d.index);
                let own = state.last.get(key).map(|l| l + 1).unwrap_or(0);
                if first > committed.max(own) {
                    get(classes, "group-skip").add(|| {
                        json!({"what": "poll after an unclear poll starts beyond what the member received and the committed offset", "group": group, "key": key, "member": member, "max_possible_committed": committed, "last_received_next": own, "first_offset": first, "poll_invoke": brief(p.inv, None), "poll": brief(d, Some((key, first)))})
                    });
                }
                state.in_segment.insert(key.to_string());
            } else if state.in_segment.contains(key) {
                let expect = state.last.get(key).map(|l| l + 1).unwrap_or(0);
                if first != expect {
                    let class = if first > expect {
                        "read-gap"
                    } else {
                        "nonmonotonic-read"
                    };
                    get(classes, class).add(|| {
                        json!({"what": "group member position within one session and generation", "key": key, "member": member, "expected_offset": expect, "got_offset": first, "poll": brief(d, Some((key, first)))})
                    });
                }
            } else {
                let committed = possible_committed(group, key, d.index);
                let own = state.last.get(key).map(|l| l + 1).unwrap_or(0);
                let allowance = committed.max(own);
                if first > allowance {
                    get(classes, "group-skip").add(|| {
                        json!({"what": "resume poll starts beyond the committed offset", "group": group, "key": key, "member": member, "max_possible_committed": committed, "first_offset": first, "poll_invoke": brief(p.inv, None), "poll": brief(d, Some((key, first)))})
                    });
                }
                state.in_segment.insert(key.to_string());
            }
            state.last.insert(key.to_string(), last);
        }
    }
    for ((group, key, offset), n) in &delivered {
        if *n > 1 {
            get(classes, "re-deliveries")
                .add(|| json!({"group": group, "key": key, "offset": offset, "deliveries": n}));
        }
    }

    // commit-regression.
    for p in pairs.iter().filter(|p| p.inv.f == Op::Committed) {
        let Some(d) = p.done.filter(|d| d.kind == EventType::Ok) else {
            continue;
        };
        let Some(group) = p.inv.group.as_deref() else {
            continue;
        };
        for KeyOffset { key, offset } in d.offsets.iter().flatten() {
            let Some(acks) = acked_commits.get(&(group.to_string(), key.clone())) else {
                continue;
            };
            let best = acks
                .iter()
                .filter(|(_, done, _)| *done < p.inv.index)
                .max_by_key(|(o, _, _)| *o);
            if let Some((o, _, commit)) = best {
                if !matches!(offset, Some(r) if *r >= *o) {
                    get(classes, "commit-regression").add(|| {
                        json!({"group": group, "key": key, "read_back": offset, "acknowledged": o, "commit_invoke": brief(commit.inv, None), "commit_ok": commit.done.map(|e| brief(e, None)), "read": brief(d, None)})
                    });
                }
            }
        }
    }

    // Undelivered below the final committed offset.
    let drained = events
        .iter()
        .any(|e| e.f == Op::Phase && e.value.as_ref().and_then(Value::as_str) == Some("drain"));
    if !drained {
        return;
    }
    let Some(last_committed) = pairs
        .iter()
        .filter(|p| p.inv.f == Op::Committed && p.inv.process.starts_with("final"))
        .filter_map(|p| p.done.filter(|d| d.kind == EventType::Ok))
        .next_back()
    else {
        return;
    };
    let Some(group) = last_committed.group.as_deref() else {
        return;
    };
    let mut existing: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == Op::FinalState && e.kind == EventType::Ok)
    {
        for r in e.records.iter().flatten() {
            existing.entry(r.key.as_str()).or_default().insert(r.offset);
        }
    }
    for KeyOffset { key, offset } in last_committed.offsets.iter().flatten() {
        let Some(committed) = offset else { continue };
        let Some(offs) = existing.get(key.as_str()) else {
            continue;
        };
        let missing: Vec<u64> = offs
            .range(..*committed)
            .filter(|o| !delivered.contains_key(&(group.to_string(), key.clone(), **o)))
            .copied()
            .collect();
        if !missing.is_empty() {
            get(classes, "group-skip").add(|| {
                json!({"what": "offsets below the final committed offset never delivered to any member", "group": group, "key": key, "committed": committed, "missing_count": missing.len(), "missing_first": missing.iter().take(20).collect::<Vec<_>>(), "committed_read": brief(last_committed, None)})
            });
        }
    }
}
