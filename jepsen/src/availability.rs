//! Availability figures of a history: how often each operation succeeded while the
//! cluster was healthy and during each kind of fault, the longest stretch without a
//! successful publish, and how long publishing took to come back after each heal.
//!
//! Only the main phase counts (up to the `final` phase event): the final phase's restart
//! is not a fault the nemesis chose.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::checker::Pair;
use crate::history::{Event, EventType, Op};

/// ok / total for one operation in one kind of window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Share {
    /// Completed ok.
    pub ok: u64,
    /// All operations invoked in the window.
    pub total: u64,
    /// ok / total, when total > 0.
    pub share: Option<f64>,
}

/// One heal and how long publishing took to recover after it.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// Fault kind healed.
    pub kind: String,
    /// When the heal completed, seconds since the start.
    pub healed_at_s: f64,
    /// Milliseconds from the heal to the first ok publish invoked after it, on the
    /// slowest partition; `None` when some partition had no ok publish before the next
    /// fault or the end of the main phase.
    pub recovery_ms: Option<u64>,
    /// False when no publish was attempted between this heal and the next fault (or the
    /// end of the main phase): nothing to measure, not counted as unrecovered.
    pub observed: bool,
}

/// What `results.json` reports under `availability`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Availability {
    /// f → window (`healthy`, `kill`, `kill-all`, `pause`, `partition`, `loss`,
    /// `lost-responses`; and `partition-majority`: the requests of a partition that isolated
    /// one node sent to the other nodes) → share.
    pub by_op: BTreeMap<String, BTreeMap<String, Share>>,
    /// Publish ok share while healthy.
    pub publish_ok_share_healthy: Option<f64>,
    /// Publish ok share during any fault.
    pub publish_ok_share_during_faults: Option<f64>,
    /// Longest time without an ok publish completing, in the main phase.
    pub longest_publish_gap_ms: u64,
    /// When that gap began, seconds since the start.
    pub longest_publish_gap_from_s: f64,
    /// One entry per heal.
    pub recoveries: Vec<Recovery>,
    /// Heals after which publishing did not recover before the next fault.
    pub unrecovered: u64,
}

/// A fault window: from the fault's invocation to its heal's completion.
#[derive(Debug, Clone)]
struct Window {
    kind: String,
    start: u64,
    end: u64,
    /// The node a partition isolated (the minority side), when it isolated one.
    minority: Option<u64>,
}

/// The node an isolating partition cut off, from its fault event.
fn minority(e: &Event) -> Option<u64> {
    e.value
        .as_ref()
        .and_then(|v| v.get("minority"))
        .and_then(Value::as_u64)
}

/// The fault's availability window name (`window`, else its `kind` in histories written
/// before windows were named).
fn fault_kind(e: &Event) -> String {
    let value = e.value.as_ref();
    value
        .and_then(|v| v.get("window"))
        .or_else(|| value.and_then(|v| v.get("kind")))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string()
}

/// Computes the figures from a history and its pairs.
pub fn compute(events: &[Event], pairs: &[Pair<'_>]) -> Availability {
    let main_end = events
        .iter()
        .find(|e| e.f == Op::Phase && e.value.as_ref().and_then(Value::as_str) == Some("final"))
        .or(events.last())
        .map(|e| e.time)
        .unwrap_or(0);
    let mut windows: Vec<Window> = Vec::new();
    let mut heals: Vec<(String, u64)> = Vec::new();
    let mut open: Option<(String, u64, Option<u64>)> = None;
    for p in pairs {
        match p.inv.f {
            Op::Fault if p.outcome() != EventType::Fail => {
                let event = p.done.unwrap_or(p.inv);
                open = Some((fault_kind(event), p.inv.time, minority(event)));
            }
            Op::Heal => {
                let end = p.done.map(|d| d.time).unwrap_or(main_end);
                if let Some((kind, start, minority)) = open.take() {
                    windows.push(Window {
                        kind: kind.clone(),
                        start,
                        end,
                        minority,
                    });
                    heals.push((kind, end));
                }
            }
            _ => {}
        }
    }
    if let Some((kind, start, minority)) = open {
        windows.push(Window {
            kind,
            start,
            end: main_end,
            minority,
        });
    }
    let window_at = |t: u64| windows.iter().find(|w| w.start <= t && t <= w.end);
    let window_of = |t: u64| -> &str { window_at(t).map(|w| w.kind.as_str()).unwrap_or("healthy") };

    let client_ops = [
        Op::Publish,
        Op::Read,
        Op::Join,
        Op::Poll,
        Op::Commit,
        Op::Committed,
    ];
    let main: Vec<&Pair<'_>> = pairs
        .iter()
        .filter(|p| {
            client_ops.contains(&p.inv.f)
                && p.inv.time <= main_end
                && !p.inv.process.starts_with("final")
        })
        .collect();
    let mut by_op: BTreeMap<String, BTreeMap<String, Share>> = BTreeMap::new();
    let (mut h_ok, mut h_total, mut f_ok, mut f_total) = (0u64, 0u64, 0u64, 0u64);
    for p in &main {
        let f = serde_json::to_value(p.inv.f)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let w = window_of(p.inv.time).to_string();
        let ok = p.outcome() == EventType::Ok;
        let ops = by_op.entry(f).or_default();
        let s = ops.entry(w.clone()).or_default();
        s.total += 1;
        s.ok += u64::from(ok);
        // Also by side: a request sent to a node the partition did not cut off.
        if let Some(isolated) = window_at(p.inv.time).and_then(|w| w.minority) {
            if p.inv.node.is_some_and(|n| n != isolated) {
                let s = ops.entry(format!("{w}-majority")).or_default();
                s.total += 1;
                s.ok += u64::from(ok);
            }
        }
        if p.inv.f == Op::Publish {
            if w == "healthy" {
                h_total += 1;
                h_ok += u64::from(ok);
            } else {
                f_total += 1;
                f_ok += u64::from(ok);
            }
        }
    }
    for m in by_op.values_mut() {
        for s in m.values_mut() {
            s.share = ratio(s.ok, s.total);
        }
    }

    // Longest gap between ok publish completions.
    let publishes: Vec<&&Pair<'_>> = main.iter().filter(|p| p.inv.f == Op::Publish).collect();
    let mut ok_times: Vec<u64> = publishes
        .iter()
        .filter(|p| p.outcome() == EventType::Ok)
        .filter_map(|p| p.done.map(|d| d.time))
        .collect();
    ok_times.sort_unstable();
    let first_invoke = publishes.iter().map(|p| p.inv.time).min();
    let mut longest = (0u64, 0u64);
    if let Some(start) = first_invoke {
        let mut prev = start;
        for t in ok_times.iter().copied().chain(std::iter::once(main_end)) {
            let t = t.min(main_end);
            if t.saturating_sub(prev) > longest.0 {
                longest = (t.saturating_sub(prev), prev);
            }
            prev = prev.max(t);
        }
    }

    // Recovery after each heal, per partition, up to the next fault.
    let keys: BTreeSet<&str> = publishes
        .iter()
        .filter_map(|p| p.inv.key.as_deref())
        .collect();
    let mut recoveries = Vec::new();
    let mut unrecovered = 0;
    for (kind, healed) in &heals {
        let horizon = windows
            .iter()
            .map(|w| w.start)
            .filter(|s| s > healed)
            .min()
            .unwrap_or(main_end);
        // Slowest partition; partitions nobody wrote to in the interval do not count.
        let mut worst: Option<u64> = Some(0);
        let mut observed = false;
        for key in &keys {
            let tried: Vec<&&&Pair<'_>> = publishes
                .iter()
                .filter(|p| {
                    p.inv.key.as_deref() == Some(*key)
                        && p.inv.time >= *healed
                        && p.inv.time <= horizon
                })
                .collect();
            if tried.is_empty() {
                continue;
            }
            observed = true;
            let first_ok = tried
                .iter()
                .filter(|p| p.outcome() == EventType::Ok)
                .filter_map(|p| p.done.map(|d| d.time))
                .filter(|t| *t <= horizon)
                .min();
            worst = match (worst, first_ok) {
                (Some(w), Some(t)) => Some(w.max(t - healed)),
                _ => None,
            };
        }
        if !observed {
            worst = None;
        } else if worst.is_none() {
            unrecovered += 1;
        }
        recoveries.push(Recovery {
            kind: kind.clone(),
            healed_at_s: *healed as f64 / 1e9,
            recovery_ms: worst.map(|ns| ns / 1_000_000),
            observed,
        });
    }

    Availability {
        by_op,
        publish_ok_share_healthy: ratio(h_ok, h_total),
        publish_ok_share_during_faults: ratio(f_ok, f_total),
        longest_publish_gap_ms: longest.0 / 1_000_000,
        longest_publish_gap_from_s: longest.1 as f64 / 1e9,
        recoveries,
        unrecovered,
    }
}

fn ratio(ok: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| ok as f64 / total as f64)
}
