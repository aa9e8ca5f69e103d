//! The checker against synthetic histories: a clean history passes, and each anomaly
//! class the checker reports, planted on its own, is caught and makes the run invalid.
//! (docs/architecture.md § Failure contract; the classes are listed in checker.rs.)

use psubd_jepsen::checker::{check, Results};
use psubd_jepsen::history::{Event, EventType, KeyOffset, Op, SeenRecord};
use serde_json::{json, Value};

/// Builds a history the way the harness records one: index and time assigned in order.
#[derive(Default)]
struct H {
    events: Vec<Event>,
}

fn rec(key: &str, offset: u64, value: u64) -> SeenRecord {
    SeenRecord {
        key: key.into(),
        offset,
        value: json!(value),
    }
}

fn ko(key: &str, offset: u64) -> KeyOffset {
    KeyOffset {
        key: key.into(),
        offset: Some(offset),
    }
}

impl H {
    fn push(&mut self, mut e: Event) -> Event {
        e.index = self.events.len() as u64;
        e.time = e.index * 1_000_000; // 1 ms per event
        self.events.push(e.clone());
        e
    }

    fn phase(&mut self, name: &str) {
        let mut e = Event::new("harness", EventType::Info, Op::Phase);
        e.value = Some(json!(name));
        self.push(e);
    }

    fn publish_invoke(&mut self, p: &str, key: &str, value: u64) -> Event {
        self.publish_invoke_through(1, p, key, value)
    }

    fn publish_invoke_through(&mut self, node: u64, p: &str, key: &str, value: u64) -> Event {
        let mut e = Event::new(p, EventType::Invoke, Op::Publish);
        e.key = Some(key.into());
        e.value = Some(json!(value));
        e.node = Some(node);
        self.push(e)
    }

    fn publish_done(&mut self, inv: &Event, kind: EventType, offset: Option<u64>) {
        let mut e = inv.complete(kind);
        e.offset = offset;
        if kind != EventType::Ok {
            e.error = Some("503 not_available".into());
        }
        self.push(e);
    }

    fn publish(&mut self, key: &str, value: u64, kind: EventType, offset: Option<u64>) {
        let inv = self.publish_invoke("w0", key, value);
        self.publish_done(&inv, kind, offset);
    }

    fn read(&mut self, node: u64, key: &str, from: u64, records: Vec<SeenRecord>, next: u64) {
        let mut e = Event::new("r0", EventType::Invoke, Op::Read);
        e.key = Some(key.into());
        e.node = Some(node);
        e.offset = Some(from);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.offset = Some(next);
        d.high_watermark = Some(next);
        d.records = Some(records);
        self.push(d);
    }

    fn join(&mut self, p: &str, member: &str, generation: i64, assignments: &[&str]) {
        let mut e = Event::new(p, EventType::Invoke, Op::Join);
        e.group = Some("g".into());
        e.node = Some(1);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.member = Some(member.into());
        d.generation = Some(generation);
        d.assignments = Some(assignments.iter().map(|s| s.to_string()).collect());
        self.push(d);
    }

    fn poll(&mut self, p: &str, member: &str, generation: i64, records: Vec<SeenRecord>) {
        let mut e = Event::new(p, EventType::Invoke, Op::Poll);
        e.group = Some("g".into());
        e.member = Some(member.into());
        e.generation = Some(generation);
        e.node = Some(2);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.records = Some(records);
        self.push(d);
    }

    /// A poll whose answer never reached the client (`info`).
    fn poll_lost(&mut self, p: &str, member: &str, generation: i64) {
        let mut e = Event::new(p, EventType::Invoke, Op::Poll);
        e.group = Some("g".into());
        e.member = Some(member.into());
        e.generation = Some(generation);
        e.node = Some(2);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Info);
        d.error = Some("transport: connection closed before message completed".into());
        self.push(d);
    }

    fn commit(
        &mut self,
        p: &str,
        member: &str,
        generation: i64,
        offsets: Vec<KeyOffset>,
        kind: EventType,
    ) {
        let mut e = Event::new(p, EventType::Invoke, Op::Commit);
        e.group = Some("g".into());
        e.member = Some(member.into());
        e.generation = Some(generation);
        e.offsets = Some(offsets.clone());
        e.node = Some(3);
        let inv = self.push(e);
        let mut d = inv.complete(kind);
        d.offsets = Some(offsets);
        self.push(d);
    }

    fn committed(&mut self, p: &str, offsets: Vec<KeyOffset>) {
        let mut e = Event::new(p, EventType::Invoke, Op::Committed);
        e.group = Some("g".into());
        e.node = Some(1);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.offsets = Some(offsets);
        self.push(d);
    }

    fn final_state(&mut self, node: u64, key: &str, records: Vec<SeenRecord>) {
        let mut e = Event::new("final", EventType::Invoke, Op::FinalState);
        e.key = Some(key.into());
        e.node = Some(node);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.high_watermark = Some(records.len() as u64);
        d.records = Some(records);
        self.push(d);
    }

    fn fault(&mut self, kind: &str) {
        self.fault_value(json!({"kind": kind, "target": "all"}));
    }

    /// A fault whose event carries `value` as the nemesis writes it.
    fn fault_value(&mut self, value: Value) {
        let mut e = Event::new("nemesis", EventType::Invoke, Op::Fault);
        e.value = Some(value);
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.value = inv.value.clone();
        self.push(d);
    }

    fn heal(&mut self, kind: &str) {
        let mut e = Event::new("nemesis", EventType::Invoke, Op::Heal);
        e.value = Some(json!({"kind": kind}));
        let inv = self.push(e);
        let mut d = inv.complete(EventType::Ok);
        d.value = inv.value.clone();
        self.push(d);
    }

    fn check(&self) -> Results {
        check(&self.events)
    }
}

/// t/0 holds v1..v5 at 0..4, t/1 holds v6, v7 at 0..1.
fn t0() -> Vec<SeenRecord> {
    (0..5).map(|o| rec("t/0", o, o + 1)).collect()
}
fn t1() -> Vec<SeenRecord> {
    vec![rec("t/1", 0, 6), rec("t/1", 1, 7)]
}

/// The main phase of a clean run, including an at-least-once re-delivery (member m1
/// abandoned after an unclear commit; m2 resumes from the committed offset).
fn main_phase() -> H {
    let mut h = H::default();
    h.phase("setup");
    h.phase("main");
    for v in 1..=5 {
        h.publish("t/0", v, EventType::Ok, Some(v - 1));
    }
    h.publish("t/1", 6, EventType::Ok, Some(0));
    h.publish("t/1", 7, EventType::Ok, Some(1));
    // A refused publish that nobody ever reads: fine.
    h.publish("t/1", 100, EventType::Fail, None);
    // An unclear publish that never shows up: fine.
    h.publish("t/1", 101, EventType::Info, None);
    h.read(2, "t/0", 0, t0(), 5);
    h.read(3, "t/0", 3, t0()[3..].to_vec(), 5);
    h.read(1, "t/1", 0, t1(), 2);
    h.join("g0", "m1", 1, &["t/0", "t/1"]);
    h.poll("g0", "m1", 1, t0()[..3].to_vec());
    h.commit("g0", "m1", 1, vec![ko("t/0", 3)], EventType::Ok);
    h.committed("o0", vec![ko("t/0", 3)]);
    h.poll("g0", "m1", 1, t0()[3..].to_vec());
    h.commit("g0", "m1", 1, vec![ko("t/0", 5)], EventType::Info);
    // m1 abandoned; m2 resumes at the committed offset 3 (or 5: the commit was unclear).
    h.join("g0", "m2", 2, &["t/0", "t/1"]);
    let mut recs = t0()[3..].to_vec();
    recs.extend(t1());
    h.poll("g0", "m2", 2, recs);
    h.commit(
        "g0",
        "m2",
        2,
        vec![ko("t/0", 5), ko("t/1", 2)],
        EventType::Ok,
    );
    h.committed("o0", vec![ko("t/0", 5), ko("t/1", 2)]);
    h
}

fn final_phase(h: &mut H) {
    h.phase("final");
    h.phase("restart");
    h.phase("final-read");
    for node in 1..=3 {
        h.final_state(node, "t/0", t0());
        h.final_state(node, "t/1", t1());
    }
    h.phase("drain");
    h.committed("final-o", vec![ko("t/0", 5), ko("t/1", 2)]);
    h.phase("done");
}

fn clean() -> H {
    let mut h = main_phase();
    final_phase(&mut h);
    h
}

fn assert_caught(h: &H, class: &str) -> Results {
    let r = h.check();
    assert!(
        r.count(class) >= 1,
        "{class} not caught: {}",
        serde_json::to_string_pretty(&r.anomalies).unwrap()
    );
    assert!(!r.valid, "{class} present but the run is valid");
    assert!(
        !r.anomalies[class].examples.is_empty(),
        "{class} has no example"
    );
    r
}

#[test]
fn a_clean_history_is_valid() {
    let r = clean().check();
    assert!(
        r.valid,
        "clean history flagged: {}",
        serde_json::to_string_pretty(&r.anomalies).unwrap()
    );
    assert_eq!(r.acked, 7);
    assert_eq!(r.count("duplicates"), 0);
    assert_eq!(
        r.count("re-deliveries"),
        2,
        "offsets 3 and 4 of t/0 went to m1 and m2"
    );
    assert_eq!(r.final_nodes, vec![1, 2, 3]);
    assert!(r.summary().starts_with("VALID"));
}

#[test]
fn lost_write_is_caught() {
    let mut h = main_phase();
    h.publish("t/1", 8, EventType::Ok, Some(2));
    h.publish("t/1", 9, EventType::Ok, Some(3));
    // Offset 3 is read, offset 2 (value 8) never is.
    h.read(1, "t/1", 3, vec![rec("t/1", 3, 9)], 4);
    final_phase(&mut h);
    assert_caught(&h, "lost-write");
}

#[test]
fn unseen_after_drain_is_caught() {
    let mut h = main_phase();
    h.publish("t/1", 8, EventType::Ok, Some(2));
    final_phase(&mut h); // the final reads end at offset 1
    let r = assert_caught(&h, "unseen-after-drain");
    assert_eq!(r.count("lost-write"), 0, "nothing later was read");
}

#[test]
fn one_offset_with_two_values_is_caught() {
    let mut h = main_phase();
    h.read(2, "t/0", 2, vec![rec("t/0", 2, 4)], 3); // offset 2 holds 3 elsewhere
    final_phase(&mut h);
    assert_caught(&h, "inconsistent-offset");
}

#[test]
fn an_acked_offset_holding_another_value_is_caught() {
    let mut h = main_phase();
    // Acknowledged at offset 2 of t/1, but every read shows 11 there.
    h.publish("t/1", 10, EventType::Ok, Some(2));
    h.publish("t/1", 11, EventType::Info, None);
    h.read(1, "t/1", 2, vec![rec("t/1", 2, 11)], 3);
    final_phase(&mut h);
    assert_caught(&h, "inconsistent-offset");
}

#[test]
fn phantom_is_caught() {
    let mut h = main_phase();
    h.read(1, "t/1", 2, vec![rec("t/1", 2, 424_242)], 3);
    final_phase(&mut h);
    let r = assert_caught(&h, "phantom");
    assert_eq!(r.count("phantom"), 1);
}

#[test]
fn a_value_read_on_another_partition_is_a_phantom() {
    let mut h = main_phase();
    h.read(1, "t/1", 2, vec![rec("t/1", 2, 1)], 3); // value 1 was sent to t/0
    final_phase(&mut h);
    assert_caught(&h, "phantom");
}

#[test]
fn aborted_read_is_caught() {
    let mut h = main_phase();
    // Value 100 was refused with 503 not_available, yet it is read.
    h.read(1, "t/1", 2, vec![rec("t/1", 2, 100)], 3);
    final_phase(&mut h);
    assert_caught(&h, "aborted-read");
}

#[test]
fn an_info_publish_read_back_is_fine() {
    let mut h = main_phase();
    h.read(1, "t/1", 2, vec![rec("t/1", 2, 101)], 3);
    h.phase("final");
    h.phase("final-read");
    let mut t1_all = t1();
    t1_all.push(rec("t/1", 2, 101));
    for node in 1..=3 {
        h.final_state(node, "t/0", t0());
        h.final_state(node, "t/1", t1_all.clone());
    }
    let r = h.check();
    assert!(
        r.valid,
        "{}",
        serde_json::to_string_pretty(&r.anomalies).unwrap()
    );
}

#[test]
fn replica_divergence_is_caught() {
    let mut h = main_phase();
    h.phase("final");
    h.phase("final-read");
    for node in 1..=3 {
        let t0_view = if node == 3 { t0()[..4].to_vec() } else { t0() };
        h.final_state(node, "t/0", t0_view);
        h.final_state(node, "t/1", t1());
    }
    let r = assert_caught(&h, "replica-divergence");
    assert_eq!(r.count("replica-divergence"), 1);
    assert_eq!(r.count("unseen-after-drain"), 0, "nodes 1 and 2 hold it");
}

#[test]
fn send_order_is_caught() {
    let mut h = main_phase();
    h.publish("t/1", 10, EventType::Ok, Some(3)); // completes first...
    h.publish("t/1", 11, EventType::Ok, Some(2)); // ...invoked after, lower offset
    final_phase(&mut h);
    assert_caught(&h, "send-order");
}

#[test]
fn concurrent_publishes_may_take_either_order() {
    let mut h = main_phase();
    let a = h.publish_invoke("w0", "t/1", 10);
    let b = h.publish_invoke("w1", "t/1", 11);
    h.publish_done(&a, EventType::Ok, Some(3));
    h.publish_done(&b, EventType::Ok, Some(2));
    let r = h.check();
    assert_eq!(r.count("send-order"), 0);
}

#[test]
fn read_gap_is_caught() {
    let mut h = main_phase();
    h.read(1, "t/0", 0, vec![rec("t/0", 0, 1), rec("t/0", 2, 3)], 3);
    final_phase(&mut h);
    assert_caught(&h, "read-gap");
}

#[test]
fn a_read_not_starting_at_the_requested_offset_is_a_gap() {
    let mut h = main_phase();
    h.read(1, "t/0", 1, vec![rec("t/0", 3, 4)], 4);
    final_phase(&mut h);
    assert_caught(&h, "read-gap");
}

#[test]
fn nonmonotonic_read_is_caught() {
    let mut h = main_phase();
    h.read(1, "t/0", 2, vec![rec("t/0", 3, 4), rec("t/0", 2, 3)], 4);
    final_phase(&mut h);
    assert_caught(&h, "nonmonotonic-read");
}

#[test]
fn a_member_going_back_within_its_session_is_nonmonotonic() {
    let mut h = main_phase();
    h.join("g1", "m3", 3, &["t/0"]);
    h.poll("g1", "m3", 3, t0()[3..].to_vec());
    h.poll("g1", "m3", 3, t0()[2..].to_vec()); // goes back to 2 within generation 3
    final_phase(&mut h);
    assert_caught(&h, "nonmonotonic-read");
}

/// A naive member keeps its id after a lost poll answer; its next poll may
/// re-deliver from what it last received, but must not start beyond it.
#[test]
fn a_poll_after_a_lost_answer_that_skips_is_a_group_skip() {
    let mut h = main_phase();
    h.publish("t/1", 8, EventType::Ok, Some(2));
    h.publish("t/1", 9, EventType::Ok, Some(3));
    // Committed t/1 is 2; m3 receives 0-1, loses the answer carrying 2, then gets 3.
    h.join("g1", "m3", 3, &["t/1"]);
    h.poll("g1", "m3", 3, t1());
    h.poll_lost("g1", "m3", 3);
    h.poll("g1", "m3", 3, vec![rec("t/1", 3, 9)]);
    final_phase(&mut h);
    let r = assert_caught(&h, "group-skip");
    assert_eq!(r.count("nonmonotonic-read"), 0);
}

#[test]
fn a_poll_after_a_lost_answer_may_redeliver() {
    let mut h = main_phase();
    h.join("g1", "m3", 3, &["t/0"]);
    h.poll("g1", "m3", 3, t0()[..2].to_vec());
    h.poll_lost("g1", "m3", 3);
    h.poll("g1", "m3", 3, t0()[2..].to_vec()); // from what it last received: fine
    h.poll("g1", "m3", 3, vec![]);
    final_phase(&mut h);
    let r = h.check();
    assert!(
        r.valid,
        "re-delivery after a lost answer flagged: {}",
        serde_json::to_string_pretty(&r.anomalies).unwrap()
    );
}

#[test]
fn group_skip_is_caught() {
    let mut h = main_phase();
    h.publish("t/1", 8, EventType::Ok, Some(2));
    h.publish("t/1", 9, EventType::Ok, Some(3));
    // Committed t/1 is 2; a new member's first poll starts at 3: offset 2 skipped.
    h.join("g1", "m9", 3, &["t/1"]);
    h.poll("g1", "m9", 3, vec![rec("t/1", 3, 9)]);
    final_phase(&mut h);
    assert_caught(&h, "group-skip");
}

#[test]
fn a_committed_but_never_delivered_offset_is_a_group_skip() {
    let mut h = main_phase();
    h.publish("t/1", 8, EventType::Ok, Some(2));
    h.phase("final");
    h.phase("final-read");
    let mut t1_all = t1();
    t1_all.push(rec("t/1", 2, 8));
    for node in 1..=3 {
        h.final_state(node, "t/0", t0());
        h.final_state(node, "t/1", t1_all.clone());
    }
    h.phase("drain");
    // The group's committed offset moved past offset 2, which no member was given.
    h.committed("final-o", vec![ko("t/0", 5), ko("t/1", 3)]);
    let r = assert_caught(&h, "group-skip");
    assert_eq!(r.count("group-skip"), 1);
}

#[test]
fn commit_regression_is_caught() {
    let mut h = main_phase();
    h.committed("o0", vec![ko("t/0", 3), ko("t/1", 2)]); // 5 was acknowledged for t/0
    final_phase(&mut h);
    assert_caught(&h, "commit-regression");
}

#[test]
fn a_node_exiting_by_itself_is_caught() {
    let mut h = main_phase();
    let mut e = Event::new("harness", EventType::Info, Op::Phase);
    e.value = Some(json!("node-exit"));
    e.node = Some(2);
    e.error = Some("exited by itself: exit status: 101".into());
    h.push(e);
    final_phase(&mut h);
    assert_caught(&h, "node-crash");
}

#[test]
fn a_missing_final_read_is_incomplete() {
    let mut h = main_phase();
    h.phase("final");
    h.phase("final-read");
    for node in 1..=3 {
        h.final_state(node, "t/0", t0());
        if node != 2 {
            h.final_state(node, "t/1", t1());
        }
    }
    assert_caught(&h, "incomplete");
}

#[test]
fn a_history_without_final_phase_is_incomplete() {
    let h = main_phase();
    assert_caught(&h, "incomplete");
}

#[test]
fn a_failed_final_phase_is_incomplete() {
    let mut h = main_phase();
    h.phase("final");
    let mut e = Event::new("harness", EventType::Info, Op::Phase);
    e.value = Some(json!("final-failed"));
    e.error = Some("cluster not ready".into());
    h.push(e);
    assert_caught(&h, "incomplete");
}

/// A history where value 5, acknowledged at 4, is also stored at 5; with idempotent
/// writers when `idempotent`.
fn duplicated(idempotent: bool) -> H {
    let mut h = H::default();
    if idempotent {
        h.phase(psubd_jepsen::workload::IDEMPOTENT_PHASE);
    }
    for e in main_phase().events {
        h.push(e);
    }
    h.read(1, "t/0", 4, vec![rec("t/0", 4, 5), rec("t/0", 5, 5)], 6);
    h.phase("final");
    h.phase("final-read");
    let mut t0_all = t0();
    t0_all.push(rec("t/0", 5, 5));
    for node in 1..=3 {
        h.final_state(node, "t/0", t0_all.clone());
        h.final_state(node, "t/1", t1());
    }
    h
}

#[test]
fn a_duplicate_under_idempotent_writers_is_an_anomaly() {
    let r = assert_caught(&duplicated(true), "idempotence-duplicate");
    assert_eq!(r.count("idempotence-duplicate"), 1);
    assert_eq!(duplicated(false).check().count("idempotence-duplicate"), 0);
}

#[test]
fn duplicates_are_counted_not_failed() {
    let mut h = main_phase();
    // Value 5 acknowledged at 4 is also stored at 5 (a retried append).
    h.read(1, "t/0", 4, vec![rec("t/0", 4, 5), rec("t/0", 5, 5)], 6);
    h.phase("final");
    h.phase("final-read");
    let mut t0_all = t0();
    t0_all.push(rec("t/0", 5, 5));
    for node in 1..=3 {
        h.final_state(node, "t/0", t0_all.clone());
        h.final_state(node, "t/1", t1());
    }
    let r = h.check();
    assert!(
        r.valid,
        "{}",
        serde_json::to_string_pretty(&r.anomalies).unwrap()
    );
    assert_eq!(r.count("duplicates"), 1);
}

#[test]
fn availability_splits_healthy_and_fault_windows() {
    let mut h = H::default();
    h.phase("main");
    h.publish("t/0", 1, EventType::Ok, Some(0));
    h.fault("kill");
    h.publish("t/0", 2, EventType::Fail, None);
    h.publish("t/0", 3, EventType::Info, None);
    h.publish("t/0", 4, EventType::Ok, Some(1));
    h.heal("kill");
    h.publish("t/0", 5, EventType::Ok, Some(2));
    h.phase("final");
    let r = h.check();
    let a = &r.availability;
    assert_eq!(a.publish_ok_share_healthy, Some(1.0));
    let during = a.publish_ok_share_during_faults.unwrap();
    assert!((during - 1.0 / 3.0).abs() < 1e-9, "{during}");
    assert_eq!(a.by_op["publish"]["kill"].total, 3);
    assert_eq!(a.recoveries.len(), 1);
    assert!(a.recoveries[0].recovery_ms.is_some());
    assert!(a.longest_publish_gap_ms > 0);
}

#[test]
fn availability_names_kill_all_and_the_majority_side_of_a_partition() {
    let mut h = H::default();
    h.phase("main");
    h.publish("t/0", 1, EventType::Ok, Some(0));
    // Every node killed: its own window, not averaged into `kill`.
    h.fault_value(json!({"kind": "kill", "target": "all", "window": "kill-all"}));
    h.publish("t/0", 2, EventType::Fail, None);
    h.heal("kill");
    // Node 2 isolated: publishes through node 1 (the majority side) are counted apart.
    h.fault_value(json!({"kind": "partition", "window": "partition", "minority": 2}));
    h.publish("t/0", 3, EventType::Ok, Some(1));
    let through_minority = h.publish_invoke_through(2, "w1", "t/0", 4);
    h.publish_done(&through_minority, EventType::Fail, None);
    h.heal("partition");
    h.phase("final");
    let a = h.check().availability;
    let publish = &a.by_op["publish"];
    assert_eq!(publish["kill-all"].total, 1);
    assert!(!publish.contains_key("kill"));
    assert_eq!(publish["partition"].total, 2);
    assert_eq!(publish["partition"].ok, 1);
    assert_eq!(publish["partition-majority"].total, 1);
    assert_eq!(publish["partition-majority"].ok, 1);
}

#[test]
fn a_replica_missing_an_acknowledged_value_is_caught() {
    // Node 3's own replica of t/1 lost its last record (a suffix lost at a power loss);
    // the other two hold it.
    let mut h = main_phase();
    h.phase("final");
    h.phase("final-read");
    for node in 1..=3 {
        let t1_view = if node == 3 { t1()[..1].to_vec() } else { t1() };
        h.final_state(node, "t/0", t0());
        h.final_state(node, "t/1", t1_view);
    }
    let r = assert_caught(&h, "replica-lost-ack");
    assert_eq!(r.count("replica-lost-ack"), 1);
    assert_eq!(r.count("unseen-after-drain"), 0, "nodes 1 and 2 hold it");
}

#[test]
fn a_fail_stop_under_failing_fsyncs_is_counted_not_failed() {
    let mut h = main_phase();
    h.fault_value(
        json!({"kind": "fsync-error", "target": "node", "node": 2, "window": "fsync-error"}),
    );
    let mut e = Event::new("harness", EventType::Info, Op::Phase);
    e.value = Some(json!("node-fail-stop"));
    e.node = Some(2);
    e.error = Some("fail-stop under a failing fsync: exit status: 74; ERROR ... seg".into());
    h.push(e);
    h.heal("fsync-error");
    final_phase(&mut h);
    let r = h.check();
    assert!(
        r.valid,
        "{}",
        serde_json::to_string_pretty(&r.anomalies).unwrap()
    );
    assert_eq!(r.count("fail-stops"), 1);
    assert_eq!(r.count("node-crash"), 0);
}

#[test]
fn a_node_that_ignores_failed_syncs_is_caught() {
    let mut h = main_phase();
    h.fault_value(
        json!({"kind": "fsync-error", "target": "node", "node": 2, "window": "fsync-error"}),
    );
    let mut e = Event::new("nemesis", EventType::Invoke, Op::Heal);
    e.value = Some(json!({"kind": "fsync-error", "window": "fsync-error"}));
    let inv = h.push(e);
    let mut d = inv.complete(EventType::Ok);
    d.value = Some(json!({"kind": "fsync-error", "window": "fsync-error",
        "ignored_sync_failures": [{"node": 2, "failed_syncs": 3}]}));
    h.push(d);
    final_phase(&mut h);
    assert_caught(&h, "sync-failure-ignored");
}
