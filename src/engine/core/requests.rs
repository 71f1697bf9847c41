//! The HTTP server's requests: a forced refresh (relayed to the leader by a standby),
//! `/status` (built from the coalescer, the book and the capture checks), the pending
//! ages `/metrics` reads, and read-your-writes waits (answered when a refresh that
//! started after them ends).

use std::time::SystemTime;

use super::book::{self, rfc3339, summary, wall};
use super::jobs::Job;
use super::refreshes::Finished;
use super::{relay, Core};
use crate::pg::ident::QualifiedName;
use crate::serve::status::{Request, Snapshot, ViewStatus, WaitOutcome};

impl Core {
    /// Hands an HTTP request to its handler.
    pub(super) fn request(&mut self, request: Request, now: std::time::Instant) {
        match request {
            Request::Force { view, source } => {
                if self.leading {
                    if let Some(n) = &view {
                        tracing::info!(view = %n, source, "forced refresh");
                    }
                    self.force(view.as_ref(), now);
                } else {
                    self.relay(view);
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Request::PendingAges(reply) => {
                let _ = reply.send(self.pending_ages());
            }
            Request::Wait {
                view,
                arrived,
                reply,
            } => self.wait(view, arrived, reply, now),
        }
    }

    /// Every view's pending age in seconds (0 when fresh), for `/metrics`.
    fn pending_ages(&self) -> Vec<(String, f64)> {
        let now = std::time::Instant::now();
        self.config
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let age = self
                    .coalescer
                    .pending_since(i)
                    .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
                (v.name.to_string(), age)
            })
            .collect()
    }

    /// A standby hands a forced refresh to the leader through the control channel
    /// (its own role is always allowed there).
    fn relay(&mut self, view: Option<QualifiedName>) {
        let payload = view.map_or_else(|| "*".to_string(), |n| n.to_string());
        let info = self.refresh_info.clone();
        self.spawn_job(Job::Relay, async move {
            relay::force(info, payload).await;
            None
        });
    }

    /// Read-your-writes: force the view and remember the request until a refresh that
    /// started after it ends. A standby relays the force and waits for the leader's
    /// refresh event instead.
    fn wait(
        &mut self,
        view: QualifiedName,
        arrived: std::time::Instant,
        reply: tokio::sync::oneshot::Sender<WaitOutcome>,
        now: std::time::Instant,
    ) {
        if !self.index.by_name.contains_key(&view) {
            return; // dropping `reply` answers "unknown view"
        }
        if !self.leading {
            let info = self.listen_info.clone();
            self.spawn_job(Job::Relay, async move {
                relay::and_wait(info, view, reply).await;
                None
            });
            return;
        }
        if self.waiters.add(&view, arrived, reply) {
            self.force(Some(&view), now);
        }
    }

    /// Answers the waiters a finished refresh satisfies: those that arrived before it
    /// started.
    pub(super) fn answer_waiters(&mut self, f: &Finished) {
        let outcome = match &f.result {
            Ok(r) => WaitOutcome::Refreshed {
                end: rfc3339(SystemTime::now()),
                duration_seconds: r.duration.as_secs_f64(),
            },
            Err(e) => WaitOutcome::Failed(summary(e)),
        };
        self.waiters.answer(&f.view, f.started, &outcome);
    }

    /// `/status`, built on request.
    fn snapshot(&self) -> Snapshot {
        let now = std::time::Instant::now();
        let c = &self.coalescer;
        let views = self
            .config
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let h = &self.history[i];
                let pending = c.pending(i);
                let held_until = c.held_by_budget(i, now);
                let state = book::state(
                    book::Now {
                        running: c.is_running(i),
                        retrying: c.retry_at(i).is_some(),
                        held_by_budget: held_until.is_some(),
                        pending: pending.is_some(),
                    },
                    h,
                );
                let since = c.pending_since(i);
                ViewStatus {
                    view: v.name.to_string(),
                    state,
                    pending_since: since.map(|s| rfc3339(wall(s))),
                    pending_since_seconds: since
                        .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64()),
                    pending_changes: pending.map_or(0, |p| p.count),
                    held_until: held_until.map(|s| rfc3339(wall(s))),
                    last_start: h.last_start.map(rfc3339),
                    last_end: h.last_end.map(rfc3339),
                    last_outcome: h.last_outcome,
                    last_reason: h.last_reason,
                    last_duration_seconds: h.last_duration.map(|d| d.as_secs_f64()),
                    last_error: h.last_error.clone(),
                    last_success: h.last_success.map(rfc3339),
                    refreshes: h.refreshes,
                    failures: h.failures,
                    consecutive_failures: c.failures(i),
                    channels: v.channels.clone(),
                    capture_gaps: self.capture.gaps(&v.name),
                    schedule: v.schedule.as_ref().map(|s| s.expr.clone()),
                    recent: h.recent.iter().copied().collect(),
                    reads: self
                        .reads
                        .get(i)
                        .map(|r| {
                            r.iter()
                                .map(|&j| self.config.views[j].name.to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        Snapshot { views }
    }
}
