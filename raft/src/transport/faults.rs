//! Injected network faults: the test hooks that cut, drop or delay a peer's traffic.
//!
//! Faults act on frames, in both directions, at this node: a frame sent to a faulty peer is
//! judged before it is written, and a frame received from it is judged before it is
//! dispatched. Cutting a peer on one node therefore silences the pair in both directions,
//! like a real partition: the TCP connection stays up, nothing crosses, and requests time
//! out (or fail at once if the connection is later dropped for silence).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use crate::types::NodeId;

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Let it through now.
    Pass,
    /// Discard it silently.
    Drop,
    /// Let it through after this long.
    Delay(Duration),
}

/// The faults set for one peer.
#[derive(Debug, Clone, Copy, Default)]
struct PeerFault {
    /// Every frame is dropped.
    cut: bool,
    /// Each frame is dropped with this probability (0.0..=1.0).
    drop_probability: f64,
    /// Each frame that passes is held this long.
    delay: Duration,
}

impl PeerFault {
    fn is_clear(&self) -> bool {
        !self.cut && self.drop_probability <= 0.0 && self.delay.is_zero()
    }
}

/// The fault switches of one node, per peer. Cheap to consult when no fault is set.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fast path: false when `peers` is empty, so healthy traffic takes no lock.
    any: AtomicBool,
    /// Faults per peer; a peer without an entry is healthy. The lock is never held across
    /// an await.
    peers: Mutex<HashMap<NodeId, PeerFault>>,
}

impl Faults {
    /// Drops every frame to and from `peer` until healed (a partition of the pair).
    pub fn cut(&self, peer: NodeId) {
        self.update(peer, |f| f.cut = true);
    }

    /// Drops each frame to and from `peer` with `probability` (clamped to 0.0..=1.0), to test
    /// retries and lost messages.
    pub fn drop(&self, peer: NodeId, probability: f64) {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.update(peer, |f| f.drop_probability = p);
    }

    /// Holds each frame to and from `peer` for `delay` (order is kept), to test slow links.
    pub fn delay(&self, peer: NodeId, delay: Duration) {
        self.update(peer, |f| f.delay = delay);
    }

    /// Clears every fault set for `peer`.
    pub fn heal(&self, peer: NodeId) {
        self.update(peer, |f| *f = PeerFault::default());
    }

    /// Clears every fault on this node.
    pub fn heal_all(&self) {
        let mut peers = self.lock();
        peers.clear();
        self.any.store(false, Ordering::Release);
    }

    /// True when `peer` is cut (used to refuse new connections from it at hello).
    pub(crate) fn is_cut(&self, peer: NodeId) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.lock().get(&peer).is_some_and(|f| f.cut)
    }

    /// Judges one frame to or from `peer`.
    pub(crate) fn verdict(&self, peer: NodeId) -> Verdict {
        if !self.any.load(Ordering::Acquire) {
            return Verdict::Pass;
        }
        let fault = match self.lock().get(&peer) {
            Some(f) => *f,
            None => return Verdict::Pass,
        };
        if fault.cut {
            return Verdict::Drop;
        }
        if fault.drop_probability > 0.0 && rand::thread_rng().gen_bool(fault.drop_probability) {
            return Verdict::Drop;
        }
        if fault.delay.is_zero() {
            Verdict::Pass
        } else {
            Verdict::Delay(fault.delay)
        }
    }

    fn update(&self, peer: NodeId, change: impl FnOnce(&mut PeerFault)) {
        let mut peers = self.lock();
        let fault = peers.entry(peer).or_default();
        change(fault);
        if fault.is_clear() {
            peers.remove(&peer);
        }
        self.any.store(!peers.is_empty(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerFault>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update
        // is a single insert or remove), so a poisoned lock is still usable.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_drops_until_healed_and_only_for_that_peer() {
        let faults = Faults::default();
        assert_eq!(faults.verdict(2), Verdict::Pass);
        faults.cut(2);
        assert_eq!(faults.verdict(2), Verdict::Drop);
        assert_eq!(faults.verdict(3), Verdict::Pass);
        faults.heal(2);
        assert_eq!(faults.verdict(2), Verdict::Pass);
    }

    #[test]
    fn delay_and_drop_combine_and_heal_all_clears() {
        let faults = Faults::default();
        faults.delay(2, Duration::from_millis(30));
        assert_eq!(faults.verdict(2), Verdict::Delay(Duration::from_millis(30)));
        faults.drop(3, 1.0);
        assert_eq!(faults.verdict(3), Verdict::Drop);
        faults.drop(3, 0.0);
        assert_eq!(faults.verdict(3), Verdict::Pass);
        faults.cut(4);
        faults.heal_all();
        assert_eq!(faults.verdict(2), Verdict::Pass);
        assert_eq!(faults.verdict(4), Verdict::Pass);
    }
}
