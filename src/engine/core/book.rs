//! The core's book: what `/status` shows of each view's past (its [`History`]), the
//! read-your-writes requests waiting for a refresh ([`Waiters`]), and the state a view
//! is shown in. Pure, like the coalescer: no I/O, time passed in, unit-tested.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::pg::ident::QualifiedName;
use crate::pg::refresh::RefreshError;
use crate::serve::status::{ErrorSummary, Trend, WaitOutcome};

/// Successful refreshes kept per view for the status page's trend.
pub const TREND_LEN: usize = 20;
/// Read-your-writes waiters per view at most; more are answered at once with the
/// outcome of the next refresh anyway, so this only bounds memory.
pub const MAX_WAITERS: usize = 10_000;

/// One view's past, as `/status` shows it.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub last_start: Option<SystemTime>,
    pub last_end: Option<SystemTime>,
    pub last_outcome: Option<&'static str>,
    pub last_reason: Option<&'static str>,
    pub last_duration: Option<Duration>,
    pub last_error: Option<ErrorSummary>,
    pub last_success: Option<SystemTime>,
    pub refreshes: u64,
    pub failures: u64,
    pub recent: VecDeque<Trend>,
}

impl History {
    pub fn started(&mut self, at: SystemTime) {
        self.last_start = Some(at);
    }

    /// A refresh for `reason` ended at `end`, having taken `duration`; `lag` is the time
    /// from the first change it covers to its end.
    pub fn succeeded(
        &mut self,
        reason: &'static str,
        end: SystemTime,
        duration: Duration,
        lag: Duration,
    ) {
        self.last_end = Some(end);
        self.last_reason = Some(reason);
        self.last_outcome = Some("success");
        self.last_duration = Some(duration);
        self.last_error = None;
        self.last_success = Some(end);
        self.refreshes += 1;
        if self.recent.len() == TREND_LEN {
            self.recent.pop_front();
        }
        self.recent.push_back(Trend {
            end: unix(end),
            duration_seconds: duration.as_secs_f64(),
            lag_seconds: lag.as_secs_f64(),
        });
    }

    /// A refresh failed: the last success (and the trend) stay what they were.
    pub fn failed(&mut self, reason: &'static str, end: SystemTime, e: &RefreshError) {
        self.last_end = Some(end);
        self.last_reason = Some(reason);
        self.last_outcome = Some("failure");
        self.last_duration = Some(e.duration);
        self.last_error = Some(summary(e));
        self.failures += 1;
    }
}

/// What the coalescer says of a view right now, for [`state`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Now {
    pub running: bool,
    pub retrying: bool,
    pub held_by_budget: bool,
    pub pending: bool,
}

/// The state a view is shown in: what it is doing, else whether its last refresh failed.
pub fn state(now: Now, history: &History) -> &'static str {
    if now.running {
        "running"
    } else if now.retrying {
        "retrying"
    } else if now.held_by_budget {
        "budget"
    } else if now.pending {
        "pending"
    } else if history.last_outcome == Some("failure") {
        "failed"
    } else {
        "idle"
    }
}

type Reply = oneshot::Sender<WaitOutcome>;

/// Read-your-writes requests per view: when each arrived, and where to answer.
#[derive(Debug, Default)]
pub struct Waiters {
    by_view: HashMap<QualifiedName, Vec<(std::time::Instant, Reply)>>,
}

impl Waiters {
    /// Remembers a request; false (and `reply` dropped: "unknown view" is not what it
    /// says, the caller answers) when the view already has [`MAX_WAITERS`].
    pub fn add(&mut self, view: &QualifiedName, arrived: std::time::Instant, reply: Reply) -> bool {
        let list = self.by_view.entry(view.clone()).or_default();
        list.retain(|(_, r)| !r.is_closed());
        if list.len() >= MAX_WAITERS {
            return false;
        }
        list.push((arrived, reply));
        true
    }

    /// A refresh of `view` that started at `started` ended with `outcome`: answers the
    /// requests that arrived before it started; later ones wait for the next.
    pub fn answer(
        &mut self,
        view: &QualifiedName,
        started: std::time::Instant,
        outcome: &WaitOutcome,
    ) {
        let Some(list) = self.by_view.get_mut(view) else {
            return;
        };
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(|(arrived, _)| *arrived <= started);
        for (_, reply) in due {
            let _ = reply.send(outcome.clone());
        }
        if keep.is_empty() {
            self.by_view.remove(view);
        } else {
            self.by_view.insert(view.clone(), keep);
        }
    }

    /// How many requests wait for `view`.
    #[cfg(test)]
    pub fn waiting(&self, view: &QualifiedName) -> usize {
        self.by_view.get(view).map_or(0, Vec::len)
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An `Instant` of the coalescer as wall-clock time.
pub fn wall(i: std::time::Instant) -> SystemTime {
    let now_i = std::time::Instant::now();
    let now_s = SystemTime::now();
    if i <= now_i {
        now_s - (now_i - i)
    } else {
        now_s + (i - now_i)
    }
}

/// What `/status` may show of a failure: class, SQLSTATE and refreshd's hint, never the
/// server's text (its DETAIL, and some messages, hold row values).
pub fn summary(e: &RefreshError) -> ErrorSummary {
    ErrorSummary {
        class: e.label(),
        sqlstate: e.code.clone(),
        hint: e.hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::refresh::FailureClass;
    use std::time::Instant;

    fn error() -> RefreshError {
        RefreshError {
            class: FailureClass::Transient,
            code: Some("57014".into()),
            message: "canceling statement due to statement timeout, row (1, 'secret')".into(),
            detail: Some("Key (id)=(1) already exists.".into()),
            hint: Some("a hint"),
            duration: Duration::from_millis(7),
            connection_broken: false,
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_failure_keeps_the_last_success_and_its_trend() {
        let mut h = History::default();
        h.succeeded(
            "notify",
            at(10),
            Duration::from_millis(5),
            Duration::from_secs(1),
        );
        h.failed("schedule", at(20), &error());
        assert_eq!(h.last_success, Some(at(10)));
        assert_eq!(h.last_end, Some(at(20)));
        assert_eq!(h.last_outcome, Some("failure"));
        assert_eq!(h.last_reason, Some("schedule"));
        assert_eq!((h.refreshes, h.failures), (1, 1));
        assert_eq!(h.recent.len(), 1);
        // The summary carries the class, the SQLSTATE and refreshd's hint, not the text.
        let s = h.last_error.clone().unwrap();
        assert_eq!(s.sqlstate.as_deref(), Some("57014"));
        assert!(!format!("{s:?}").contains("secret"));
        h.succeeded("notify", at(30), Duration::from_millis(5), Duration::ZERO);
        assert_eq!(h.last_error, None);
        assert_eq!(h.last_outcome, Some("success"));
    }

    #[test]
    fn the_trend_keeps_the_last_twenty() {
        let mut h = History::default();
        for s in 0..50 {
            h.succeeded("notify", at(s), Duration::from_millis(s), Duration::ZERO);
        }
        assert_eq!(h.recent.len(), TREND_LEN);
        assert_eq!(h.recent.front().unwrap().end, 30.0);
        assert_eq!(h.recent.back().unwrap().end, 49.0);
    }

    #[test]
    fn what_a_view_does_comes_before_how_it_last_ended() {
        let mut failed = History::default();
        failed.failed("notify", at(1), &error());
        let idle = History::default();
        let n = |running, retrying, held_by_budget, pending| Now {
            running,
            retrying,
            held_by_budget,
            pending,
        };
        assert_eq!(state(n(true, true, true, true), &failed), "running");
        assert_eq!(state(n(false, true, true, true), &failed), "retrying");
        assert_eq!(state(n(false, false, true, true), &failed), "budget");
        assert_eq!(state(n(false, false, false, true), &failed), "pending");
        assert_eq!(state(Now::default(), &failed), "failed");
        assert_eq!(state(Now::default(), &idle), "idle");
    }

    #[test]
    fn waiters_are_answered_by_a_refresh_that_started_after_them() {
        let view = QualifiedName::new("public", "v");
        let mut w = Waiters::default();
        let t0 = Instant::now();
        let (early_tx, mut early) = oneshot::channel();
        let (late_tx, mut late) = oneshot::channel();
        assert!(w.add(&view, t0, early_tx));
        assert!(w.add(&view, t0 + Duration::from_secs(2), late_tx));
        let ok = WaitOutcome::Refreshed {
            end: "now".into(),
            duration_seconds: 0.1,
        };
        // A refresh that started between the two answers only the first.
        w.answer(&view, t0 + Duration::from_secs(1), &ok);
        assert!(early.try_recv().is_ok());
        assert!(late.try_recv().is_err());
        assert_eq!(w.waiting(&view), 1);
        w.answer(&view, t0 + Duration::from_secs(3), &ok);
        assert!(late.try_recv().is_ok());
        assert_eq!(w.waiting(&view), 0);
    }

    #[test]
    fn waiters_are_bounded_and_gone_ones_forgotten() {
        let view = QualifiedName::new("public", "v");
        let mut w = Waiters::default();
        let t0 = Instant::now();
        let mut kept = Vec::new();
        for _ in 0..MAX_WAITERS {
            let (tx, rx) = oneshot::channel();
            assert!(w.add(&view, t0, tx));
            kept.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        assert!(!w.add(&view, t0, tx), "one over the bound");
        // Clients that went away make room.
        kept.truncate(10);
        let (tx, _rx) = oneshot::channel();
        assert!(w.add(&view, t0, tx));
        assert_eq!(w.waiting(&view), 11);
    }
}
