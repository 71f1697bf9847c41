//! Repeated events are logged at most once per period per kind, with a count of what
//! was suppressed in between (SPEC "Semantics"): a flood of notifications or a view that
//! fails every second must not fill a disk. Counting in metrics is not throttled.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often one kind of repeated event may be logged.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Remembers, per kind, when it was last logged and how many were suppressed since.
#[derive(Debug)]
pub struct Throttle<K> {
    period: Duration,
    kinds: HashMap<K, Slot>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    logged_at: Instant,
    suppressed: u64,
}

/// The most kinds remembered; past this the oldest entries are forgotten (a kind
/// forgotten is logged again at its next occurrence, which is harmless).
const MAX_KINDS: usize = 4096;

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            kinds: HashMap::new(),
        }
    }

    /// [`Throttle::admit`] for `count` events of one kind at once (at least one): the
    /// others count as suppressed, reported by the next line logged.
    pub fn admit_many(&mut self, kind: &K, now: Instant, count: u64) -> Option<u64> {
        let admitted = self.admit(kind, now);
        if let Some(slot) = self.kinds.get_mut(kind) {
            slot.suppressed += count.saturating_sub(1);
        }
        admitted
    }

    /// `Some(n)` when the event may be logged now, `n` being how many of its kind were
    /// suppressed since it was last logged; `None` when it is to be suppressed.
    pub fn admit(&mut self, kind: &K, now: Instant) -> Option<u64> {
        if let Some(slot) = self.kinds.get_mut(kind) {
            if now.saturating_duration_since(slot.logged_at) < self.period {
                slot.suppressed += 1;
                return None;
            }
            let n = slot.suppressed;
            *slot = Slot {
                logged_at: now,
                suppressed: 0,
            };
            return Some(n);
        }
        if self.kinds.len() >= MAX_KINDS {
            let period = self.period;
            self.kinds
                .retain(|_, s| now.saturating_duration_since(s.logged_at) < period);
        }
        self.kinds.insert(
            kind.clone(),
            Slot {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }

    /// Forgets a kind (a view that recovered logs its next failure at once).
    pub fn reset(&mut self, kind: &K) {
        self.kinds.remove(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Notifications refused together (they waited for one sender's role lookup) are
    /// one line and count as suppressed: a flood of 200 reported 83 (found by a review,
    /// 2026-12-05).
    #[test]
    fn events_admitted_together_count_the_others_as_suppressed() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.admit_many(&"a", t0, 200), Some(0));
        assert_eq!(t.admit_many(&"a", t0 + Duration::from_secs(1), 5), None);
        assert_eq!(t.admit(&"a", t0 + Duration::from_secs(11)), Some(199 + 5));
    }

    #[test]
    fn one_line_per_period_with_a_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.admit(&"a", t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.admit(&"a", t0 + Duration::from_millis(i)), None);
        }
        // Another kind is independent.
        assert_eq!(t.admit(&"b", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(t.admit(&"a", t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(t.admit(&"a", t0 + Duration::from_secs(11)), None);
        t.reset(&"a");
        assert_eq!(t.admit(&"a", t0 + Duration::from_secs(12)), Some(0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..(MAX_KINDS as u64 * 3) {
            t.admit(&i, t0 + Duration::from_secs(20 * (i / MAX_KINDS as u64)));
        }
        assert!(t.kinds.len() <= MAX_KINDS + 1);
    }
}
