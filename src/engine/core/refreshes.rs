//! Refresh tasks: starting each refresh the coalescer says is due (in its span, in the
//! core's `tasks` set), and accounting for its end, a panic included (a failure):
//! metrics, history, the keyed views' groups, the waiters, the coalescer's outcome.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::Instrument as _;

use super::book::unix;
use super::Core;
use crate::config::ViewConfig;
use crate::engine::coalesce::{Outcome, Start};
use crate::engine::tasks;
use crate::pg::ident::QualifiedName;
use crate::pg::keyed::Work;
use crate::pg::refresh::{FailureClass, RefreshError, Refreshed};

/// What a refresh task returns.
pub(super) struct Finished {
    pub(super) view: QualifiedName,
    pub(super) start: Start,
    /// When the refresh task began (read-your-writes compares it with a request).
    pub(super) started: std::time::Instant,
    /// A keyed view's groups (given back if the refresh does not commit).
    pub(super) work: Option<Work>,
    pub(super) result: Result<Refreshed, RefreshError>,
}

/// A refresh task while it runs: what its end (or its panic) is matched to.
pub(super) struct Running {
    view: QualifiedName,
    start: Start,
    started: std::time::Instant,
    work: Option<Work>,
    /// The refresh's span (see [`refresh_span`]).
    span: tracing::Span,
}

/// The span of one refresh: every line it logs (its start, its end, what the refresh
/// path logs on the way) carries the view, why it runs, its run id (unique in the
/// process and increasing: the coalescer's run) and whether it recomputes everything.
fn refresh_span(view: &ViewConfig, start: &Start, work: Option<&Work>) -> tracing::Span {
    tracing::info_span!(
        "refresh",
        view = %view.name,
        reason = start.reason.as_str(),
        run = start.run,
        keyed = view.keyed.is_some(),
        full = work.is_none_or(|w| w.keys().is_none()),
    )
}

impl Core {
    /// Starts every refresh the coalescer says is due, each in its span.
    pub(super) fn start_due(&mut self, now: Instant) {
        for start in self.coalescer.poll(now.into_std()) {
            let view = self.config.views[start.view].clone();
            let refresher = self.refresher.clone();
            self.history[start.view].started(SystemTime::now());
            let work = self.keys[start.view].as_mut().map(|k| k.take(start.full));
            let span = refresh_span(&view, &start, work.as_ref());
            span.in_scope(|| {
                tracing::debug!(coalesced = start.coalesced, "refresh starting");
                if let Some(k) = work.as_ref().and_then(Work::keys) {
                    tracing::debug!(keys = k.len(), "keyed refresh of the dirty groups");
                }
            });
            let name = view.name.clone();
            let started = std::time::Instant::now();
            let events = self.config.events;
            let history = self.config.history.clone();
            let task_work = work.clone();
            let task = async move {
                let row = history
                    .as_ref()
                    .map(|config| crate::pg::refresh::HistoryRow {
                        config,
                        reason: start.reason.as_str(),
                    });
                let result = refresher
                    .refresh(&view, task_work.as_ref(), events, row)
                    .await;
                Finished {
                    view: view.name,
                    start,
                    started,
                    work: task_work,
                    result,
                }
            };
            let handle = self.tasks.spawn(task.instrument(span.clone()));
            self.task_runs.insert(
                handle.id(),
                Running {
                    view: name,
                    start,
                    started,
                    work,
                    span,
                },
            );
        }
    }

    /// A refresh task ended (or panicked: a failure): accounted in its span.
    pub(super) fn task_ended(
        &mut self,
        ended: Result<(tokio::task::Id, Finished), tokio::task::JoinError>,
    ) {
        let (finished, span) = match ended {
            Ok((id, f)) => {
                let span = self
                    .task_runs
                    .remove(&id)
                    .map_or_else(tracing::Span::none, |r| r.span);
                (f, span)
            }
            Err(e) => {
                let Some(run) = self.task_runs.remove(&e.id()) else {
                    return;
                };
                let what = if e.is_panic() {
                    let message = tasks::join_error_message(e);
                    run.span
                        .in_scope(|| tasks::panicked(&self.metrics, "refresh", &message));
                    "panicked"
                } else {
                    "was aborted"
                };
                let finished = Finished {
                    view: run.view,
                    start: run.start,
                    started: run.started,
                    work: run.work,
                    result: Err(RefreshError {
                        class: FailureClass::Transient,
                        code: None,
                        message: format!("the refresh task {what}"),
                        detail: None,
                        hint: Some("a bug in refreshd: please report it; the view is retried"),
                        duration: Duration::ZERO,
                        connection_broken: false,
                    }),
                };
                (finished, run.span)
            }
        };
        span.in_scope(|| self.finished(finished));
    }

    /// Accounts for a refresh's end: the waiters it satisfies, the keyed groups, the
    /// metrics, the history and the log line, and its outcome to the coalescer (which
    /// may queue dependents, or a retry after a failure).
    fn finished(&mut self, f: Finished) {
        let now = std::time::Instant::now();
        self.answer_waiters(&f);
        if self.coalescer.finished_orphan(f.start.run) {
            tracing::info!(
                ok = f.result.is_ok(),
                "refresh of a view no longer configured ended"
            );
            return;
        }
        let Some(&i) = self.index.by_name.get(&f.view) else {
            return;
        };
        let label = f.view.to_string();
        let end = SystemTime::now();
        self.account_keys(i, &label, &f);
        match f.result {
            Ok(r) => {
                let lag = now.saturating_duration_since(f.start.first_change);
                self.metrics.views.refreshed(
                    &label,
                    f.start.reason,
                    Some((r.duration.as_secs_f64(), lag.as_secs_f64(), unix(end))),
                );
                self.history[i].succeeded(f.start.reason.as_str(), end, r.duration, lag);
                self.throttle.reset(&("failing", label));
                tracing::info!(
                    kind = r.kind.as_str(),
                    duration_ms = (r.duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                    lag_ms = lag.as_millis() as u64,
                    coalesced = f.start.coalesced,
                    outcome = "success",
                    "refreshed"
                );
                for d in self
                    .coalescer
                    .finished(i, f.start.run, Outcome::Success, now)
                {
                    tracing::debug!(dependent = %self.config.views[d].name, "dependency refresh queued");
                }
            }
            Err(e) => {
                self.history[i].failed(f.start.reason.as_str(), end, &e);
                self.failed(i, &f.view, f.start, e, now)
            }
        }
    }

    /// A keyed view's groups: counted when recomputed one by one, given back when the
    /// refresh did not commit (the next refresh recomputes them).
    fn account_keys(&mut self, i: usize, label: &str, f: &Finished) {
        let (Some(dirty), Some(work)) = (&mut self.keys[i], &f.work) else {
            return;
        };
        match &f.result {
            Ok(r) if r.bad_keys => {
                self.metrics.views.keyed_malformed(label);
                if let Some(n) = self
                    .throttle
                    .admit(&("malformed", label.to_string()), std::time::Instant::now())
                {
                    tracing::warn!(suppressed = n, "notified key values do not cast to the key columns' types; every group was recomputed instead");
                }
            }
            Ok(r) => {
                // What ran, which for keys the planner judged dearer is everything.
                let keys = match (r.kind, work.keys()) {
                    (crate::pg::refresh::RefreshKind::KeyedKeys, Some(k)) => {
                        Some(r.keys.unwrap_or(k.len()))
                    }
                    _ => None,
                };
                dirty.timed(keys, r.duration.as_secs_f64());
                if let Some(n) = keys {
                    self.metrics.views.keyed_keys(label, n as u64);
                }
            }
            Err(e) => dirty.failed(work, e.duration.as_secs_f64()),
        }
    }

    /// A refresh failed: counted, its outcome to the coalescer (transient failures are
    /// retried), logged at most once per throttle period per view.
    fn failed(
        &mut self,
        i: usize,
        name: &QualifiedName,
        start: Start,
        e: RefreshError,
        now: std::time::Instant,
    ) {
        let label = name.to_string();
        self.metrics.views.refreshed(&label, start.reason, None);
        let outcome = match e.class {
            FailureClass::Transient => Outcome::Transient,
            FailureClass::Permanent => Outcome::Permanent,
        };
        self.coalescer.finished(i, start.run, outcome, now);
        let retry_in = self
            .coalescer
            .retry_at(i)
            .map(|r| r.saturating_duration_since(now).as_millis() as u64);
        self.log_throttled(("failing", label), |n| {
            tracing::warn!(
                duration_ms = e.duration.as_millis() as u64,
                coalesced = start.coalesced,
                outcome = "failure",
                class = e.label(),
                sqlstate = e.code.as_deref().unwrap_or(""),
                retry_in_ms = retry_in,
                error = %e.message,
                hint = e.hint.unwrap_or(""),
                suppressed = n,
                "refresh failed"
            )
        });
    }
}
