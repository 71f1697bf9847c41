//! The control channel's gate. `NOTIFY refreshd_control, 'schema.view'` forces a
//! refresh, and any role that can connect can send it; refreshd honours it only when
//! the sending session runs as refreshd's own role, a member of it, or a role named in
//! `control_roles` (SPEC "Semantics").
//!
//! The notification carries the sender's backend pid, which is looked up in
//! `pg_stat_activity`. A sender that disconnects right after its NOTIFY (`psql -c`)
//! races that lookup, so the LISTEN session itself asks, the moment the notification
//! arrives: no other task or connection sits in between. Verdicts are cached per pid
//! for a moment and one lookup per pid is in flight at a time, so a flood costs one
//! lookup per sender, not one per notification.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use crate::engine::throttle::{Throttle, LOG_PERIOD};
use crate::serve::metrics::Metrics;

/// How long a pid's verdict is trusted. A pid is reused only after its backend
/// exited, which takes far longer to cycle than this.
const VERDICT_TTL: Duration = Duration::from_secs(2);
/// Distinct payloads kept per sender while its lookup runs; more are dropped (forces
/// coalesce anyway, and a sender naming hundreds of views is not a person).
const MAX_WAITING: usize = 64;

/// Whether a sender is honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The role is neither refreshd's, a member of it, nor listed.
    Role(String),
    /// The session had ended before it could be looked up.
    Gone,
}

/// What to do with a control notification right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The sender is known to be allowed: act on the payload.
    Act(String),
    /// The sender was refused (already counted and, throttled, logged).
    Drop,
    /// Start a lookup of this pid; its payload waits for the verdict.
    Lookup(i32),
    /// A lookup of this pid is under way; the payload waits with it.
    Wait,
}

const SENDER_SQL: &str = "SELECT a.usename::text, \
     coalesce(pg_catalog.pg_has_role(a.usesysid, current_user, 'MEMBER'), false) \
     FROM pg_catalog.pg_stat_activity a WHERE a.pid = $1";

/// Looks the sender `pid` up. `listed` is `control_roles`.
pub async fn lookup(
    client: &tokio_postgres::Client,
    pid: i32,
    listed: &[String],
) -> Result<Verdict, tokio_postgres::Error> {
    // query_typed: one round trip with an unnamed statement.
    let rows = client
        .query_typed(SENDER_SQL, &[(&pid, Type::INT4)])
        .await?;
    let Some(row) = rows.first() else {
        return Ok(Verdict::Gone);
    };
    let role: Option<String> = row.get(0);
    let member: bool = row.get(1);
    let role = role.unwrap_or_default();
    if member || listed.iter().any(|r| r == &role) {
        Ok(Verdict::Allowed)
    } else {
        Ok(Verdict::Role(role))
    }
}

/// The gate's memory: verdicts per pid, payloads waiting for a lookup, and the
/// throttle of its log lines.
pub struct Gate {
    verdicts: HashMap<i32, (Instant, Verdict)>,
    /// Per sender: the distinct payloads waiting for its verdict, and how many
    /// notifications they stand for (every one is counted, kept or not).
    waiting: HashMap<i32, (Vec<String>, u64)>,
    throttle: Throttle<&'static str>,
    metrics: Metrics,
}

impl Gate {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            verdicts: HashMap::new(),
            waiting: HashMap::new(),
            throttle: Throttle::new(LOG_PERIOD),
            metrics,
        }
    }

    /// A control notification arrived.
    pub fn arrive(&mut self, pid: i32, payload: String, now: Instant) -> Next {
        if let Some((w, n)) = self.waiting.get_mut(&pid) {
            *n += 1;
            if w.len() < MAX_WAITING && !w.contains(&payload) {
                w.push(payload);
            }
            return Next::Wait;
        }
        let known = self
            .verdicts
            .get(&pid)
            .filter(|(at, _)| now.saturating_duration_since(*at) < VERDICT_TTL)
            .map(|(_, v)| v.clone());
        match known {
            Some(Verdict::Allowed) => Next::Act(payload),
            Some(v) => {
                self.refuse(pid, &v, now, 1);
                Next::Drop
            }
            None => {
                self.waiting.insert(pid, (vec![payload], 1));
                Next::Lookup(pid)
            }
        }
    }

    /// A lookup ended; returns the payloads to act on. An error fails closed.
    pub fn decided(
        &mut self,
        pid: i32,
        verdict: Result<Verdict, String>,
        now: Instant,
    ) -> Vec<String> {
        let (payloads, count) = self.waiting.remove(&pid).unwrap_or_default();
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                self.metrics.control_rejected.inc_by(count);
                if let Some(n) = self.throttle.admit_many(&"lookup", now, count) {
                    tracing::warn!(error = %e, suppressed = n, "control channel: cannot look the sender up; notification ignored");
                }
                return Vec::new();
            }
        };
        if self.verdicts.len() > 1024 {
            self.verdicts
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < VERDICT_TTL);
        }
        self.verdicts.insert(pid, (now, verdict.clone()));
        if verdict == Verdict::Allowed {
            // Repeats of a payload are one force: they join it.
            self.metrics
                .control_coalesced
                .inc_by(count - payloads.len() as u64);
            return payloads;
        }
        self.refuse(pid, &verdict, now, count);
        Vec::new()
    }

    /// Refuses `count` notifications of sender `pid` (one log line at most, the
    /// others counted as suppressed).
    fn refuse(&mut self, pid: i32, verdict: &Verdict, now: Instant, count: u64) {
        self.metrics.control_rejected.inc_by(count);
        match verdict {
            Verdict::Allowed => {}
            Verdict::Role(role) => {
                if let Some(n) = self.throttle.admit_many(&"role", now, count) {
                    tracing::warn!(sender_role = %role, sender_pid = pid, suppressed = n, "control channel: the sender's role may not control refreshd (not refreshd's role, a member of it, or in control_roles); ignored");
                }
            }
            Verdict::Gone => {
                if let Some(n) = self.throttle.admit_many(&"gone", now, count) {
                    tracing::warn!(sender_pid = pid, suppressed = n, "control channel: the sending session ended before its role could be checked; ignored (keep the session open until the refresh starts, or use POST /refresh or SIGUSR1)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lookup_per_sender_and_cached_verdicts() {
        let metrics = Metrics::new();
        let mut g = Gate::new(metrics.clone());
        let t0 = Instant::now();
        assert_eq!(g.arrive(7, "a.b".into(), t0), Next::Lookup(7));
        assert_eq!(g.arrive(7, "a.b".into(), t0), Next::Wait);
        assert_eq!(g.arrive(7, "*".into(), t0), Next::Wait);
        assert_eq!(
            g.decided(7, Ok(Verdict::Allowed), t0),
            vec!["a.b".to_string(), "*".to_string()]
        );
        assert_eq!(g.arrive(7, "c.d".into(), t0), Next::Act("c.d".into()));
        // The verdict expires.
        assert_eq!(g.arrive(7, "c.d".into(), t0 + VERDICT_TTL), Next::Lookup(7));
    }

    #[test]
    fn refused_senders_are_counted_and_never_acted_on() {
        let metrics = Metrics::new();
        let mut g = Gate::new(metrics.clone());
        let t0 = Instant::now();
        assert_eq!(g.arrive(9, "*".into(), t0), Next::Lookup(9));
        assert_eq!(g.arrive(9, "x.y".into(), t0), Next::Wait);
        assert!(g
            .decided(9, Ok(Verdict::Role("intruder".into())), t0)
            .is_empty());
        assert_eq!(metrics.control_rejected.get(), 2);
        for _ in 0..1000 {
            assert_eq!(g.arrive(9, "*".into(), t0), Next::Drop);
        }
        assert_eq!(metrics.control_rejected.get(), 1002);
        assert_eq!(g.arrive(10, "*".into(), t0), Next::Lookup(10));
        assert!(g.decided(10, Err("boom".into()), t0).is_empty());
        assert_eq!(g.arrive(11, "*".into(), t0), Next::Lookup(11));
        assert!(g.decided(11, Ok(Verdict::Gone), t0).is_empty());
        assert_eq!(metrics.control_rejected.get(), 1004);
    }
}
