//! `refreshd run`: the core. [`Core`] owns the coalescer (the rules) and everything
//! the rules need to act: the refresh tasks (in a `JoinSet`, so a panic is a failure,
//! never a view stuck "running"), the views' history for `/status`, the channel and name
//! indexes (work per notification is proportional to the views on its channel), and the
//! reload in progress. Every other part talks to it through one channel of [`Command`]s;
//! nothing in the loop waits on the database except cancelling refreshes at shutdown.
//!
//! The rooms:
//! - [`wiring`]: [`run`], building the core from the configuration and starting and
//!   stopping what surrounds it (HTTP server, signals, listener, DDL watch);
//! - [`event_loop`]: the loop itself, its dispatch of [`Command`]s, and shutdown;
//! - [`events`]: the listener's events (notifications, control payloads, leadership);
//! - [`requests`]: the HTTP server's requests (force, `/status`, read-your-writes);
//! - [`refreshes`]: starting refresh tasks and accounting for their ends;
//! - [`jobs`]: work off the loop (capture checks, `refreshd.force`, reloads, relays);
//! - [`install`]: installing a configuration, at startup and after a reload;
//! - [`book`] (pure): history, waiters and the state `/status` shows;
//! - [`reload`] (pure): what a reload changes; [`relay`]: a standby's relays.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod book;
mod event_loop;
mod events;
mod install;
mod jobs;
mod refreshes;
mod relay;
mod reload;
mod requests;
mod wiring;

pub use wiring::run;

use book::{History, Waiters};
use jobs::Job;
use refreshes::{Finished, Running};

use crate::config::Config;
use crate::engine::coalesce::Coalescer;
use crate::engine::keys::DirtyKeys;
use crate::engine::listener::ListenerEvent;
use crate::engine::reason::Reason;
use crate::engine::refresher::Refresher;
use crate::engine::schedule::Schedules;
use crate::engine::startup::{Prepared, StartupError};
use crate::engine::throttle::Throttle;
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;
use crate::serve::health::Health;
use crate::serve::metrics::Metrics;
use crate::serve::status::{Request, Shared};

/// Everything the core loop acts on.
#[derive(Debug)]
pub enum Command {
    Listener(ListenerEvent),
    /// Statistics detection saw the view's base tables move.
    Detected(QualifiedName),
    /// SIGUSR1: force every view.
    ForceAll(&'static str),
    Http(Request),
    Reload,
    Reloaded(Box<Result<Prepared, StartupError>>),
    /// The requests `refreshd.force` had recorded, now consumed (`None`: its schema
    /// is not installed).
    ForceRequests(Result<Option<Vec<String>>, String>),
    /// The catalog changed (DDL), or was read for the first time: check capture now.
    CatalogChanged {
        first: bool,
    },
    /// A capture check ended (see [`crate::engine::capture`]).
    CaptureChecked(Result<crate::engine::capture::Report, String>),
    /// The writers a broken foreign-key guard may have let through uncaptured have
    /// ended (or the wait failed): the view is recomputed fully.
    GuardSettled(QualifiedName),
    /// Capture check number `check` read the catalog (`ok`), or ended without: the
    /// catch-up refreshes held for it start.
    CaptureRead {
        check: u64,
        ok: bool,
    },
}

/// Lookups from a name or a channel to the views they concern.
#[derive(Debug, Default)]
struct Index {
    by_name: HashMap<QualifiedName, usize>,
    by_channel: HashMap<String, Vec<usize>>,
}

impl Index {
    fn new(config: &Config) -> Self {
        let mut ix = Index::default();
        for (i, v) in config.views.iter().enumerate() {
            ix.by_name.insert(v.name.clone(), i);
            for c in &v.channels {
                ix.by_channel.entry(c.clone()).or_default().push(i);
            }
        }
        ix
    }
}

/// How long shutdown waits for the tasks left (detectors stopping, connections saying
/// goodbye) before it lets the runtime drop them.
const DRAIN: Duration = Duration::from_secs(2);

/// The core loop's state.
struct Core {
    config: Arc<Config>,
    config_path: PathBuf,
    shared: Arc<Shared>,
    metrics: Metrics,
    health: Arc<Health>,
    coalescer: Coalescer,
    index: Index,
    history: Vec<History>,
    reads: Vec<Vec<usize>>,
    refresher: Arc<Refresher>,
    refresh_info: ConnectInfo,
    tasks: JoinSet<Finished>,
    /// Every refresh task's run, for its end and for a task that panicked.
    task_runs: HashMap<tokio::task::Id, Running>,
    /// The dirty groups of each keyed view (`None` for materialized views).
    keys: Vec<Option<DirtyKeys>>,
    /// Read-your-writes requests waiting for a refresh.
    waiters: Waiters,
    listen_info: ConnectInfo,
    tx: mpsc::UnboundedSender<Command>,
    channels_tx: watch::Sender<BTreeSet<String>>,
    roles_tx: watch::Sender<Vec<String>>,
    /// Channels the listener has confirmed.
    listening: BTreeSet<String>,
    /// Views (added, or given new channels, by a reload) that wait for their channels
    /// to be LISTENed before their catch-up refresh: a change committed before that
    /// would reach nobody and might not be in the refresh.
    awaiting_listen: Vec<(QualifiedName, Reason)>,
    leading: bool,
    schedules: Schedules,
    /// Stops the current detector.
    detector: CancellationToken,
    /// The detectors (the current one, and stopped ones until they have ended).
    detectors: JoinSet<()>,
    /// Work off the loop (see [`Job`]), and the kind of each.
    jobs: JoinSet<Option<Command>>,
    job_kinds: HashMap<tokio::task::Id, Job>,
    reloading: bool,
    reload_again: bool,
    /// Consuming `refreshd.force`'s requests; woken again while at it.
    draining: bool,
    drain_again: bool,
    throttle: Throttle<(&'static str, String)>,
    capture: crate::engine::capture::CaptureState,
    /// Keyed views whose broken foreign-key guard's writers are being waited for.
    guard_waits: std::collections::HashSet<QualifiedName>,
    stopping: Option<Instant>,
    cancelled_at: Option<Instant>,
}

/// Why the daemon stops with an error (and exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    FaultHook(String),
    #[error(transparent)]
    Database(#[from] crate::pg::connect::DbError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("http.listen: cannot bind {addr}: {reason}")]
    Bind {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("the HTTP server panicked: {0}")]
    HttpPanicked(String),
    #[error("the HTTP server's task failed: {0}")]
    HttpTask(String),
}

/// What every handler uses: marking, forcing, logging at most once a period.
impl Core {
    /// Marks the view named `name` (if configured) as changed.
    fn mark_named(&mut self, name: &QualifiedName, reason: Reason, now: std::time::Instant) {
        // A standby refreshes nothing and catches every view up when it leads: its
        // schedules and detections would only show views stale that the leader keeps
        // fresh (found by a review, 2026-12-05).
        if !self.leading {
            return;
        }
        if let Some(&i) = self.index.by_name.get(name) {
            self.coalescer.mark(i, reason, now);
        }
    }

    /// Forces one view (or all). A force that finds one already queued joins it.
    fn force(&mut self, view: Option<&QualifiedName>, now: std::time::Instant) {
        let targets: Vec<usize> = match view {
            None => (0..self.config.views.len()).collect(),
            Some(n) => self.index.by_name.get(n).copied().into_iter().collect(),
        };
        for i in targets {
            if self.coalescer.pending(i).is_some_and(|p| p.forced) {
                self.metrics.control_coalesced.inc();
            }
            self.coalescer.mark(i, Reason::Force, now);
        }
    }

    /// Logs through `log` (given how many were suppressed) unless a line of `kind` was
    /// logged within the throttle's period.
    fn log_throttled(&mut self, kind: (&'static str, String), log: impl FnOnce(u64)) {
        if let Some(n) = self.throttle.admit(&kind, std::time::Instant::now()) {
            log(n);
        }
    }
}
