//! Work the core runs off its loop (see [`Job`]): capture checks, consuming
//! `refreshd.force`'s requests, reloads, a standby's relays. Each is a task in the
//! core's `jobs` set whose result comes back as a [`Command`]; this module starts them
//! and handles what they bring back.

use std::time::Duration;

use super::{Command, Core};
use crate::engine::capture::Report;
use crate::engine::reason::Reason;
use crate::engine::startup::{self, Prepared, StartupError};
use crate::engine::tasks;
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;

/// How long a reload's catalog checks may take before the reload is abandoned.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Work the core runs off its loop, in its `jobs` set. A job's result is a command for
/// the loop; a job that panics is answered with what its failure would be.
#[derive(Debug, Clone)]
pub(super) enum Job {
    /// A capture check ([`Command::CaptureChecked`]).
    Capture,
    /// Reading `refreshd.force`'s requests ([`Command::ForceRequests`]).
    Force,
    /// A reload ([`Command::Reloaded`]).
    Reload,
    /// A standby's relay to the leader (no result).
    Relay,
    /// Granting `refreshd.force` to `control_roles` (no result).
    Grant,
    /// Waiting for the writers of a view whose foreign-key guard broke
    /// ([`Command::GuardSettled`]).
    Guard(QualifiedName),
}

impl Job {
    /// The command that stands for a job that panicked (the failure its callers expect).
    fn panicked(self, message: &str) -> Option<Command> {
        let why = format!("the task panicked: {message}");
        match self {
            Job::Capture => Some(Command::CaptureChecked(Err(why))),
            Job::Force => Some(Command::ForceRequests(Err(why))),
            Job::Reload => Some(Command::Reloaded(Box::new(Err(StartupError::Panicked(
                message.to_string(),
            ))))),
            Job::Guard(view) => Some(Command::GuardSettled(view)),
            Job::Relay | Job::Grant => None,
        }
    }

    /// Its `reason` in `refreshd_task_panics_total`.
    fn label(&self) -> &'static str {
        match self {
            Job::Capture => "capture",
            _ => "background",
        }
    }
}

impl Core {
    /// Starts work off the loop; its result comes back through [`Core::job_ended`].
    pub(super) fn spawn_job(
        &mut self,
        kind: Job,
        job: impl std::future::Future<Output = Option<Command>> + Send + 'static,
    ) {
        let handle = self.jobs.spawn(job);
        self.job_kinds.insert(handle.id(), kind);
    }

    /// A job ended: its command is handled; a panic is logged, counted, and handled as
    /// the failure it stands for.
    pub(super) async fn job_ended(
        &mut self,
        done: Result<(tokio::task::Id, Option<Command>), tokio::task::JoinError>,
    ) {
        let cmd = match done {
            Ok((id, cmd)) => {
                self.job_kinds.remove(&id);
                cmd
            }
            Err(e) => {
                let Some(kind) = self.job_kinds.remove(&e.id()) else {
                    return;
                };
                if !e.is_panic() {
                    return;
                }
                let message = tasks::join_error_message(e);
                tasks::panicked(&self.metrics, kind.label(), &message);
                kind.panicked(&message)
            }
        };
        if let Some(cmd) = cmd {
            self.handle(cmd).await;
        }
    }

    /// Starts a capture check when one is due (the leader only: it alone installs
    /// triggers and refreshes), off the loop; it comes back as
    /// [`Command::CaptureChecked`].
    pub(super) fn check_capture(&mut self) {
        if !self.leading || self.stopping.is_some() {
            return;
        }
        let Some(check) = self.capture.start_if_due(std::time::Instant::now()) else {
            return;
        };
        let info = self.refresh_info.clone();
        let views = self.config.views.clone();
        let previous = self.capture.previous();
        let tx = self.tx.clone();
        let read = move |ok| {
            let _ = tx.send(Command::CaptureRead { check, ok });
        };
        self.spawn_job(Job::Capture, async move {
            // Bounded inside: the catalog by CHECK_TIMEOUT, a conversion by its view's
            // statement_timeout.
            let result = crate::engine::capture::run_check(info, views, previous, read).await;
            Some(Command::CaptureChecked(result))
        });
    }

    /// Consumes the requests `refreshd.force` recorded, on a connection of its own
    /// (off the loop); they come back as [`Command::ForceRequests`]. Only the leader
    /// consumes them: a standby leaves them for it.
    pub(super) fn take_force_requests(&mut self) {
        if !self.leading {
            return;
        }
        if self.draining {
            self.drain_again = true;
            return;
        }
        self.draining = true;
        let info = self.refresh_info.clone();
        self.spawn_job(Job::Force, async move {
            let mut last = String::new();
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                }
                let taken = async {
                    let client = info.connect().await.map_err(|e| e.to_string())?;
                    crate::pg::force::take_requests(&client)
                        .await
                        .map_err(|e| crate::pg::connect::error_chain(&e))
                };
                match tokio::time::timeout(Duration::from_secs(15), taken).await {
                    Ok(Ok(t)) => return Some(Command::ForceRequests(Ok(t))),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = "no answer within 15 s".into(),
                }
            }
            Some(Command::ForceRequests(Err(last)))
        });
    }

    /// What SQL control needs of the leader, on a connection of its own, when it starts
    /// leading and after a reload: the views it manages recorded in
    /// `refreshd.managed_views` (`refreshd.force` refuses other names), and
    /// `refreshd.force` granted to the roles of `control_roles` that may not call it yet
    /// (SPEC "SQL control": EXECUTE is granted to refreshd's role and to
    /// `control_roles`); each grant, or why it could not be made, is logged.
    pub(super) fn share_control(&mut self) {
        if !self.leading {
            return;
        }
        let roles = self.config.control_roles.clone();
        let deployment = self.config.ha.lock_name.clone();
        let views: Vec<QualifiedName> = self.config.views.iter().map(|v| v.name.clone()).collect();
        let info = self.refresh_info.clone();
        self.spawn_job(Job::Grant, async move {
            let client = match tokio::time::timeout(Duration::from_secs(15), info.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not record the managed views for refreshd.force nor grant control_roles");
                    return None;
                }
                Err(_) => {
                    tracing::warn!("could not record the managed views for refreshd.force: no connection within 15 s");
                    return None;
                }
            };
            match tokio::time::timeout(
                Duration::from_secs(15),
                crate::pg::force::record_managed(&client, &deployment, &views),
            )
            .await
            {
                Ok(Ok(true)) => tracing::debug!(views = views.len(), "recorded the managed views in refreshd.managed_views"),
                Ok(Ok(false)) => tracing::debug!("refreshd.managed_views is not installed (refreshd init --apply installs it): refreshd.force accepts any materialized view or table"),
                Ok(Err(e)) => tracing::warn!(error = %crate::pg::connect::error_chain(&e), "could not record the managed views in refreshd.managed_views (refreshd's role needs SELECT, INSERT and DELETE on it): refreshd.force checks names against what was recorded before"),
                Err(_) => tracing::warn!("could not record the managed views in refreshd.managed_views: no answer within 15 s"),
            }
            if roles.is_empty() {
                return None;
            }
            match tokio::time::timeout(
                Duration::from_secs(15),
                crate::pg::force::grant_control_roles(&client, &roles),
            )
            .await
            {
                Ok(Ok(done)) => {
                    for (role, granted) in done {
                        match granted {
                            Ok(()) => tracing::info!(role = %role, "granted EXECUTE on refreshd.force (and USAGE on schema refreshd) to a role of control_roles"),
                            Err(e) => tracing::warn!(role = %role, error = %e, "could not grant EXECUTE on refreshd.force to a role of control_roles; grant it as the function's owner (GRANT USAGE ON SCHEMA refreshd, EXECUTE ON FUNCTION refreshd.force(text))"),
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %crate::pg::connect::error_chain(&e), "could not check control_roles' privilege on refreshd.force"),
                Err(_) => tracing::warn!("could not check control_roles' privilege on refreshd.force: no answer within 15 s"),
            }
            None
        });
    }

    /// Carries out what `refreshd.force` recorded. The function already refused
    /// names that are no relation; one refreshd does not manage is logged.
    pub(super) fn forced_from_sql(
        &mut self,
        taken: Result<Option<Vec<String>>, String>,
        now: std::time::Instant,
    ) {
        self.draining = false;
        match taken {
            Ok(Some(names)) => {
                for name in names {
                    if name == "*" {
                        tracing::info!(source = "sql", "forced refresh of every view");
                        self.force(None, now);
                        continue;
                    }
                    let found = QualifiedName::parse(&name)
                        .ok()
                        .and_then(|n| self.index.by_name.get(&n).copied());
                    match found {
                        Some(i) => {
                            let view = self.config.views[i].name.clone();
                            tracing::info!(view = %view, source = "sql", "forced refresh");
                            self.force(Some(&view), now);
                        }
                        None => self.log_throttled(("force_unknown", String::new()), |n| {
                            tracing::warn!(view = ?name, suppressed = n, "refreshd.force named a view refreshd does not manage; ignored")
                        }),
                    }
                }
            }
            Ok(None) => tracing::debug!(
                "refreshd.force is not installed (refreshd init --apply installs it)"
            ),
            Err(e) => self.log_throttled(("force_requests", String::new()), |n| {
                tracing::warn!(error = %e, suppressed = n, "could not read refreshd.force's requests; they wait for the next wake-up or reconnect")
            }),
        }
        if std::mem::take(&mut self.drain_again) {
            self.take_force_requests();
        }
    }

    /// Starts a reload on a task of its own; its result comes back as
    /// [`Command::Reloaded`]. A SIGHUP during a reload runs one more after it.
    pub(super) fn reload(&mut self) {
        if self.reloading {
            self.reload_again = true;
            return;
        }
        self.reloading = true;
        let path = self.config_path.clone();
        let info = self.refresh_info.clone();
        self.spawn_job(Job::Reload, async move {
            let result = startup::load_and_prepare(&path, &info, RELOAD_TIMEOUT).await;
            Some(Command::Reloaded(Box::new(result)))
        });
    }

    /// A reload's result: installed when it worked, logged when not; a SIGHUP that
    /// came meanwhile starts the next one.
    pub(super) async fn reloaded(&mut self, result: Result<Prepared, StartupError>) {
        self.reloading = false;
        match result {
            Ok(p) => self.apply(p, false).await,
            Err(StartupError::Config(c)) => {
                let (file, line, key) = (c.file.display(), c.line, c.key.as_deref());
                tracing::error!(error = %c, %file, line, key, "SIGHUP: the new configuration is invalid or does not fit the database; keeping the old one")
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the new configuration is invalid or does not fit the database; keeping the old one")
            }
        }
        if std::mem::take(&mut self.reload_again) {
            self.reload();
        }
    }

    /// The catalog changed (DDL): the leader checks capture now.
    /// The catalog fingerprint changed, or was read for the first time (`first`: DDL
    /// between the leadership's first check and that reading is seen so, see
    /// [`crate::engine::capture::watch_ddl`]).
    pub(super) fn catalog_changed(&mut self, first: bool) {
        if self.leading {
            if first {
                tracing::debug!("catalog read for the first time: checking change capture now");
            } else {
                tracing::debug!("catalog changed (DDL): checking change capture now");
            }
            self.capture.check_now();
        }
    }

    /// A capture check read the catalog (or ended without): the catch-up refreshes it
    /// held start now.
    pub(super) fn capture_read(&mut self, check: u64, ok: bool, now: std::time::Instant) {
        for (view, reason) in self.capture.read(check, ok) {
            if self.leading {
                self.mark_named(&view, reason, now);
            }
        }
    }

    /// A capture check ended: its findings recorded and logged; the views whose changes
    /// may have been missed (open or closed gaps, a definition reading new tables) are
    /// refreshed fully.
    pub(super) fn capture_checked(
        &mut self,
        mut result: Result<Report, String>,
        now: std::time::Instant,
    ) {
        if let Ok(report) = &mut result {
            for g in std::mem::take(&mut report.guards) {
                self.guard_found(g);
            }
        }
        let views = self.capture.finished(
            result,
            self.config.capture_check_interval,
            &self.metrics.views,
        );
        for v in views {
            self.mark_named(&v, Reason::Resync, now);
        }
    }

    /// A keyed view's foreign-key guard as its keeper found it at a check: logged; a
    /// guard found broken has the transactions then writing the view's tables waited
    /// for (off the loop, blocking no one), then the recompute it owed settled and the
    /// view recomputed fully ([`Core::guard_settled`]).
    fn guard_found(&mut self, g: crate::engine::capture::GuardResult) {
        use crate::incremental::guard::Kept;
        let view = g.view.clone();
        match &g.kept {
            Ok(Kept::Held | Kept::Off | Kept::Settled | Kept::Moved | Kept::Replica) => {}
            Ok(Kept::Restored) => {
                tracing::info!(view = %view, "the foreign keys guarding its capture are in force and no row references a missing one: dimension INSERTs they guard are no longer captured")
            }
            Ok(Kept::Orphans) => {
                tracing::warn!(view = %view, "the foreign keys guarding its capture are in force again, but rows reference keys that do not exist (loaded while the keys' triggers were disabled?): the INSERTs they would guard stay captured")
            }
            Ok(Kept::Broken(epoch)) => {
                if !self.leading || !self.guard_waits.insert(view.clone()) {
                    return;
                }
                tracing::warn!(view = %view, writers = g.writers.len(), "a foreign key guarding its capture stopped holding (dropped, altered, its triggers disabled, or a write in the replica role): the INSERTs it guarded are captured again, and the view is recomputed fully once the transactions writing its tables now have ended");
                let (info, epoch) = (self.refresh_info.clone(), *epoch);
                self.spawn_job(Job::Guard(view.clone()), async move {
                    wait_and_settle(info, &g, epoch).await;
                    Some(Command::GuardSettled(view))
                });
            }
            Err(e) => {
                tracing::warn!(view = %view, error = %e, "could not check the foreign keys guarding its capture: the guard stays as it was")
            }
        }
    }

    /// The writers of a broken guard ended: the view is recomputed fully, and capture
    /// checked again at once, so that a guard whose keys hold again is turned back on
    /// without waiting for `capture_check_interval`.
    pub(super) fn guard_settled(&mut self, view: QualifiedName, now: std::time::Instant) {
        self.guard_waits.remove(&view);
        if self.leading {
            self.mark_named(&view, Reason::Resync, now);
            self.capture.check_now();
        }
    }
}

/// How often the writers of a broken guard are looked for again.
const GUARD_POLL: Duration = Duration::from_millis(200);

/// Waits until every transaction of `g.writers` has ended (polling `pg_locks`, on a
/// connection of its own, again after a failure), then settles the recompute the
/// keeper recorded at `epoch`. A settle that fails leaves it owed: the next check
/// finds the guard broken again and waits again.
async fn wait_and_settle(info: ConnectInfo, g: &crate::engine::capture::GuardResult, epoch: i64) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut logged = std::time::Instant::now();
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = tokio::time::timeout(Duration::from_secs(15), info.connect())
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some(c) = &client {
            match crate::pg::guard::still_running(c, &g.writers).await {
                Ok(0) => break,
                Ok(n) => {
                    if logged.elapsed() > Duration::from_secs(60) {
                        logged = std::time::Instant::now();
                        tracing::warn!(view = %g.view, transactions = n, "still waiting for transactions writing its tables to end before recomputing it (its foreign-key guard broke)");
                    }
                }
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(GUARD_POLL).await;
    }
    let Some(c) = &client else { return };
    match crate::pg::guard::keep(c, &g.function, Some(epoch)).await {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(view = %g.view, error = %e, "could not record the recompute a broken foreign-key guard owed: the next capture check recomputes it again")
        }
    }
}
