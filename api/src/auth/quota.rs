//! Per-node quotas: one token bucket per principal and kind (produce bytes, fetch bytes,
//! requests). Each node counts only what it serves, so a principal spread over N nodes
//! may reach N times its limit cluster-wide; the limits are per node by design (no
//! message on the request path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psubd_actors::controller::access::{AccessState, MAX_PRINCIPALS};

/// What a bucket counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Record bytes published.
    Produce,
    /// Record bytes fetched.
    Fetch,
    /// Requests and WebSocket operations.
    Requests,
}

impl QuotaKind {
    /// The quota's name in errors and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::Produce => "produce_bytes_per_sec",
            QuotaKind::Fetch => "fetch_bytes_per_sec",
            QuotaKind::Requests => "requests_per_sec",
        }
    }
}

/// A token bucket holding at most one second of its rate. It admits while it holds a
/// whole token and may then go into debt by the admitted cost: a request larger than a second
/// of the rate is not refused forever, and the debt delays the next ones so the average
/// rate stays the limit.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` per second.
    pub fn new(rate: u64, now: Instant) -> Self {
        Self {
            tokens: rate as f64,
            last: now,
        }
    }

    fn refill(&mut self, rate: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(rate as f64);
        self.last = now;
    }

    /// Admits when a whole token is left, then takes `cost` (possibly into debt).
    ///
    /// # Errors
    /// How long until a token is back.
    pub fn take(&mut self, rate: u64, cost: u64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens < 1.0 || rate == 0 {
            let missing = 1.0 - self.tokens;
            return Err(Duration::from_secs_f64(missing / rate.max(1) as f64));
        }
        self.tokens -= cost as f64;
        Ok(())
    }

    /// Takes `cost` unconditionally (bytes already served).
    pub fn charge(&mut self, rate: u64, cost: u64, now: Instant) {
        self.refill(rate, now);
        self.tokens -= cost as f64;
    }
}

/// Every bucket of this node, bounded by the number of principals the model allows.
#[derive(Clone, Default)]
pub struct Quotas {
    buckets: Arc<Mutex<HashMap<(String, QuotaKind), TokenBucket>>>,
}

impl Quotas {
    /// Admits a request of `principal` costing `cost` against `rate` (per second).
    ///
    /// # Errors
    /// How long to wait.
    pub fn take(
        &self,
        access: &AccessState,
        principal: &str,
        kind: QuotaKind,
        rate: u64,
        cost: u64,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        self.with_bucket(access, principal, kind, rate, now, |b| {
            b.take(rate, cost, now)
        })
    }

    /// Charges what was served (fetched bytes) after the fact.
    pub fn charge(
        &self,
        access: &AccessState,
        principal: &str,
        kind: QuotaKind,
        rate: u64,
        cost: u64,
    ) {
        let now = Instant::now();
        self.with_bucket(access, principal, kind, rate, now, |b| {
            b.charge(rate, cost, now)
        });
    }

    fn with_bucket<T>(
        &self,
        access: &AccessState,
        principal: &str,
        kind: QuotaKind,
        rate: u64,
        now: Instant,
        f: impl FnOnce(&mut TokenBucket) -> T,
    ) -> T {
        // A poisoned lock only means another request panicked mid-update of a counter.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (principal.to_string(), kind);
        if !buckets.contains_key(&key) && buckets.len() >= 3 * MAX_PRINCIPALS {
            // Forget principals deleted since their buckets were made.
            buckets.retain(|(name, _), _| access.principals.contains_key(name));
        }
        f(buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_rate_then_refuses_until_refilled() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, start);
        for _ in 0..3 {
            assert!(bucket.take(3, 1, start).is_ok());
        }
        let wait = bucket.take(3, 1, start).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(bucket
            .take(3, 1, start + Duration::from_millis(400))
            .is_ok());
        // Never more than one second of tokens accumulates.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(3, 1, later).is_ok());
        }
        assert!(bucket.take(3, 1, later).is_err());
    }

    #[test]
    fn a_large_cost_is_admitted_once_and_paid_back_as_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start);
        assert!(bucket.take(100, 250, start).is_ok());
        let wait = bucket.take(100, 1, start).unwrap_err();
        assert!(wait >= Duration::from_millis(1_500), "{wait:?}");
        assert!(bucket.take(100, 1, start + Duration::from_secs(1)).is_err());
        assert!(bucket.take(100, 1, start + Duration::from_secs(2)).is_ok());
        bucket.charge(100, 1_000, start + Duration::from_secs(2));
        assert!(bucket.take(100, 0, start + Duration::from_secs(3)).is_err());
    }

    #[test]
    fn buckets_are_kept_per_principal_and_kind() {
        let quotas = Quotas::default();
        let access = AccessState::default();
        assert!(quotas.take(&access, "a", QuotaKind::Requests, 1, 1).is_ok());
        assert!(quotas
            .take(&access, "a", QuotaKind::Requests, 1, 1)
            .is_err());
        assert!(quotas.take(&access, "a", QuotaKind::Produce, 1, 1).is_ok());
        assert!(quotas.take(&access, "b", QuotaKind::Requests, 1, 1).is_ok());
    }
}
