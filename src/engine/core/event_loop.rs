//! The core's loop: one task that owns [`Core`], wakes for its commands, its tasks'
//! ends and its deadlines, dispatches each [`Command`] to its handler, and carries out
//! the shutdown (wait for running refreshes, cancel them on the server after
//! `shutdown_timeout`, give up after a grace).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Command, Core, DRAIN};
use crate::engine::reason::Reason;
use crate::engine::schedule::Schedules;
use crate::engine::tasks;

/// How long after cancelling refreshes at shutdown the loop waits for them to end.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// The loop wakes at least this often (liveness beat).
const HEARTBEAT: Duration = Duration::from_secs(1);

impl Core {
    /// The loop: each turn beats, starts what is due (schedules, a capture check,
    /// refreshes), then waits for the first of shutdown, a refresh or job ending, a
    /// detector ending, a command, or the next wake-up. Ends when shutdown has run its
    /// course or every sender is gone.
    pub(super) async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        shutdown: &CancellationToken,
    ) {
        self.shared
            .core_started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            self.health.beat_core();
            let now = Instant::now();
            if self.stopping.is_some() && self.shutdown_progress(now).await {
                break;
            }
            for name in self.schedules.take_due(chrono::Utc::now()) {
                self.mark_named(&name, Reason::Schedule, now.into_std());
            }
            self.check_capture();
            self.start_due(now);
            let wake = self.next_wake(now);
            tokio::select! {
                _ = shutdown.cancelled(), if self.stopping.is_none() => self.begin_shutdown().await,
                Some(ended) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.task_ended(ended),
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => self.job_ended(done).await,
                Some(ended) = self.detectors.join_next(), if !self.detectors.is_empty() => {
                    if let Err(e) = ended {
                        tracing::error!(error = %tasks::join_error_message(e), "the statistics detector's task ended abnormally");
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.detector.cancel();
    }

    /// At shutdown, after the loop: the jobs still running are abandoned (their results
    /// would have nobody to act on them), the detectors get [`DRAIN`] to stop.
    pub(super) async fn drain(&mut self) {
        self.jobs.abort_all();
        while self.jobs.join_next().await.is_some() {}
        self.detector.cancel();
        let detectors = &mut self.detectors;
        if tokio::time::timeout(DRAIN, async {
            while detectors.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            self.detectors.abort_all();
            while self.detectors.join_next().await.is_some() {}
        }
    }

    /// When the loop must wake at the latest: the heartbeat, the coalescer's next
    /// deadline, the next schedule (unless stopping), the shutdown's next step.
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + HEARTBEAT;
        if let Some(w) = self.coalescer.next_wake(now.into_std()) {
            wake = wake.min(Instant::from_std(w));
        }
        if self.stopping.is_none() {
            if let Some(fire) = self.schedules.next_fire() {
                let wait = (fire - chrono::Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                wake = wake.min(now + wait);
            }
        }
        if let Some(since) = self.stopping {
            let limit = self
                .cancelled_at
                .map_or(since + self.config.shutdown_timeout, |c| c + CANCEL_GRACE);
            wake = wake.min(limit);
        }
        wake
    }

    /// Shutdown begins: no new refreshes (running ones keep the lock until they end),
    /// no detector, no schedules.
    async fn begin_shutdown(&mut self) {
        tracing::info!(running = self.coalescer.running_count(), timeout = ?self.config.shutdown_timeout, "shutting down: no new refreshes; waiting for running ones (leadership is kept until they end)");
        self.stopping = Some(Instant::now());
        self.coalescer.set_paused(true);
        self.detector.cancel();
        self.schedules = Schedules::new(&[], chrono::Utc::now());
    }

    /// True when the loop may end: nothing runs, or cancelled refreshes had their grace.
    async fn shutdown_progress(&mut self, now: Instant) -> bool {
        let since = self.stopping.expect("stopping");
        if self.tasks.is_empty() {
            return true;
        }
        if self.cancelled_at.is_none() && now >= since + self.config.shutdown_timeout {
            let n = self.refresher.cancel_all().await;
            tracing::warn!(cancelled = n, timeout = ?self.config.shutdown_timeout, "shutdown_timeout expired: cancelled running refreshes on the server");
            self.cancelled_at = Some(now);
        }
        if self.cancelled_at.is_some_and(|c| now >= c + CANCEL_GRACE) {
            tracing::error!("refreshes did not end after cancellation; exiting anyway");
            self.tasks.abort_all();
            return true;
        }
        false
    }

    /// Hands a command to its handler.
    pub(super) async fn handle(&mut self, cmd: Command) {
        let now = Instant::now().into_std();
        match cmd {
            Command::Listener(ev) => self.listener_event(ev, now),
            Command::Detected(name) => self.mark_named(&name, Reason::Detected, now),
            Command::ForceAll(source) => {
                tracing::info!(source, "forced refresh of every view");
                self.force(None, now);
            }
            Command::Http(request) => self.request(request, now),
            Command::Reload => self.reload(),
            Command::Reloaded(result) => self.reloaded(*result).await,
            Command::ForceRequests(taken) => self.forced_from_sql(taken, now),
            Command::CatalogChanged { first } => self.catalog_changed(first),
            Command::CaptureChecked(result) => self.capture_checked(result, now),
            Command::GuardSettled(view) => self.guard_settled(view, now),
            Command::CaptureRead { check, ok } => self.capture_read(check, ok, now),
        }
    }
}
