//! `refreshd run`: the core loop. [`Core`] owns the coalescer (the rules) and everything
//! the rules need to act: the refresh tasks (in a `JoinSet`, so a panic is a failure,
//! never a view stuck "running"), the views' history for `/status`, the channel and name
//! indexes (work per notification is proportional to the views on its channel), and the
//! reload in progress. Every other part talks to it through one channel of [`Command`]s;
//! nothing in the loop waits on the database except cancelling refreshes at shutdown.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

mod book;
mod relay;
mod reload;

use book::{rfc3339, summary, unix, wall, History, Waiters};
use reload::ReloadPlan;

use crate::config::{Config, ViewConfig};
use crate::engine::coalesce::{Coalescer, Outcome, Share, Start, Timing};
use crate::engine::keys::{self, DirtyKeys, Payload};
use crate::engine::listener::{lock_key, Listener, ListenerEvent};
use crate::engine::reason::Reason;
use crate::engine::refresher::Refresher;
use crate::engine::schedule::Schedules;
use crate::engine::startup::{self, Prepared, StartupError};
use crate::engine::tasks::{self, Mapped};
use crate::engine::throttle::{Throttle, LOG_PERIOD};
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;
use crate::pg::keyed::Work;
use crate::pg::refresh::{FailureClass, RefreshError, Refreshed};
use crate::serve::health::Health;
use crate::serve::metrics::Metrics;
use crate::serve::status::{Request, Shared, Snapshot, ViewStatus, WaitOutcome, MAX_VIEW_NAME};

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
    /// The catalog changed (DDL): check capture now.
    CatalogChanged,
    /// A capture check ended (see [`crate::engine::capture`]).
    CaptureChecked(Result<crate::engine::capture::Report, String>),
}

/// What a refresh task returns.
struct Finished {
    view: QualifiedName,
    start: Start,
    /// When the refresh task began (read-your-writes compares it with a request).
    started: std::time::Instant,
    /// A keyed view's groups (given back if the refresh does not commit).
    work: Option<Work>,
    result: Result<Refreshed, RefreshError>,
}

/// A refresh task while it runs: what its end (or its panic) is matched to.
struct Running {
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

/// Work the core runs off its loop, in its `jobs` set. A job's result is a command for
/// the loop; a job that panics is answered with what its failure would be.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// A capture check ([`Command::CaptureChecked`]).
    Capture,
    /// Reading `refreshd.force`'s requests ([`Command::ForceRequests`]).
    Force,
    /// A reload ([`Command::Reloaded`]).
    Reload,
    /// A standby's relay to the leader (no result).
    Relay,
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
            Job::Relay => None,
        }
    }

    /// Its `reason` in `refreshd_task_panics_total`.
    fn label(self) -> &'static str {
        match self {
            Job::Capture => "capture",
            _ => "background",
        }
    }
}

fn timing(v: &ViewConfig) -> Timing {
    Timing {
        debounce: v.debounce,
        max_delay: v.max_delay,
        min_interval: v.min_interval,
        max_load: Share::from_fraction(v.max_load),
    }
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

/// How long a reload's catalog checks may take before the reload is abandoned.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after cancelling refreshes at shutdown the loop waits for them to end.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// The loop wakes at least this often (liveness beat).
const HEARTBEAT: Duration = Duration::from_secs(1);
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

/// The daemon. Returns when `shutdown` is cancelled and in-flight work has ended (or
/// was cancelled after `shutdown_timeout`), or with an error that makes it exit
/// non-zero.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    tasks::arm_fault_hook().map_err(RunError::FaultHook)?;
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    health.beat_core();
    health.beat_listener();
    let (tx, rx) = mpsc::unbounded_channel::<Command>();
    let dir = config.dir();
    let refresh_info = ConnectInfo::for_refresh(&config.database, &dir)?;
    let listen_info = ConnectInfo::for_listen(&config.database, &dir)?;
    let shared = Arc::new(Shared {
        config: RwLock::new(Arc::new(config.clone())),
        health: health.clone(),
        metrics: metrics.clone(),
        requests: Mapped::new(tx.clone(), Command::Http),
        admin_token: RwLock::new(startup::read_token(&config)?),
        bound: config.http.listen,
    });
    let (http_stop, http_task, supervisor) = start_serving(&shared, &shutdown).await?;
    tracing::info!(listen = %config.http.listen, version = crate::VERSION, views = config.views.len(), "refreshd starting");
    let signals = spawn_signals(&tx, &shutdown)?;

    for v in &config.views {
        metrics.register_view(&v.name.to_string(), &v.channels, v.keyed.is_some());
    }
    let prepared = match startup_client(&refresh_info, &shutdown, &health).await {
        Some(client) => startup::prepare(&client, config).await?,
        None => {
            http_stop.cancel();
            let served = http_task.await;
            let _ = tokio::time::timeout(Duration::from_secs(2), supervisor).await;
            let _ = signals.await;
            refresh_info.drain(DRAIN).await;
            return served_result(served);
        }
    };
    health.set_config_loaded();

    let listener_stop = CancellationToken::new();
    let (roles_tx, roles_rx) = watch::channel(prepared.config.control_roles.clone());
    let (channels_tx, channels_rx) =
        watch::channel(prepared.config.channels().into_iter().collect());
    let arming = Arc::new(crate::engine::arming::Arming::new());
    let listener_task = spawn_listener(Listener {
        info: listen_info.clone(),
        lock_key: lock_key(&prepared.config.ha.lock_name),
        retry_interval: prepared.config.ha.retry_interval,
        proof_timeout: prepared.config.database.connect_timeout,
        channels: channels_rx,
        events: Mapped::new(tx.clone(), Command::Listener),
        metrics: metrics.clone(),
        health: health.clone(),
        shutdown: listener_stop.clone(),
        control_roles: roles_rx,
        fence_info: refresh_info.clone(),
        fences: Default::default(),
        restarted: false,
        arming: arming.clone(),
    });

    let mut core = Core {
        coalescer: Coalescer::new(Vec::new(), Vec::new(), 1),
        config: prepared.config.clone(),
        config_path,
        shared,
        metrics,
        health,
        index: Index::default(),
        history: Vec::new(),
        reads: Vec::new(),
        refresher: Refresher::new(refresh_info.clone(), arming),
        refresh_info: refresh_info.clone(),
        tasks: JoinSet::new(),
        task_runs: HashMap::new(),
        keys: Vec::new(),
        waiters: Waiters::default(),
        listen_info: listen_info.clone(),
        tx,
        channels_tx,
        roles_tx,
        listening: BTreeSet::new(),
        awaiting_listen: Vec::new(),
        leading: false,
        schedules: Schedules::new(&[], chrono::Utc::now()),
        detector: CancellationToken::new(),
        detectors: JoinSet::new(),
        jobs: JoinSet::new(),
        job_kinds: HashMap::new(),
        reloading: false,
        reload_again: false,
        draining: false,
        drain_again: false,
        throttle: Throttle::new(LOG_PERIOD),
        capture: Default::default(),
        stopping: None,
        cancelled_at: None,
    };
    core.apply(prepared, true).await;
    core.coalescer.set_paused(true);
    // DDL under the views (a new partition, a dropped trigger, a replaced view) starts a
    // capture check within seconds; only the leader acts on it.
    let ddl_stop = CancellationToken::new();
    let ddl_task = core
        .config
        .views
        .iter()
        .any(crate::engine::capture::checked)
        .then(|| {
            let (tx, info, stop) = (core.tx.clone(), core.refresh_info.clone(), ddl_stop.clone());
            tokio::spawn(tasks::supervise(
                "capture",
                core.metrics.clone(),
                ddl_stop.clone(),
                move || {
                    let tx = tx.clone();
                    crate::engine::capture::watch_ddl(info.clone(), stop.clone(), move || {
                        let _ = tx.send(Command::CatalogChanged);
                    })
                },
                || {},
            ))
        });
    core.run(rx, &shutdown).await;
    ddl_stop.cancel();
    if let Some(t) = ddl_task {
        let _ = t.await;
    }
    core.drain().await;
    drop(core);

    // The lock goes last: while refreshes of ours run, no other replica may start.
    listener_stop.cancel();
    let _ = listener_task.await;
    http_stop.cancel();
    let served = http_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), supervisor).await;
    let _ = signals.await;
    // Every client is gone now: their connections say goodbye to the server.
    let (a, b) = (refresh_info.drain(DRAIN), listen_info.drain(DRAIN));
    tokio::join!(a, b);
    tracing::info!("refreshd stopped");
    served_result(served)
}

/// How the HTTP server's task ended: a panic of its accept loop makes the process exit
/// non-zero (after the usual shutdown), so that its supervisor starts it again.
fn served_result(
    served: Result<Result<(), String>, tokio::task::JoinError>,
) -> Result<(), RunError> {
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(panic)) => Err(RunError::HttpPanicked(panic)),
        Err(e) => Err(RunError::HttpTask(tasks::join_error_message(e))),
    }
}

/// Starts the listener (its events go straight to the core), started again after a
/// panic (see [`tasks::supervise`]).
fn spawn_listener(listener: Listener) -> tokio::task::JoinHandle<()> {
    let metrics = listener.metrics.clone();
    let stop = listener.shutdown.clone();
    let (again, after) = (listener.clone(), listener.clone());
    let mut listener = Some(listener);
    tokio::spawn(tasks::supervise(
        "listener",
        metrics,
        stop,
        move || match listener.take() {
            Some(first) => first.run(),
            None => Listener {
                restarted: true,
                ..again.clone()
            }
            .run(),
        },
        move || after.panicked(),
    ))
}

/// What [`start_serving`] started.
type Serving = (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), String>>,
    tokio::task::JoinHandle<()>,
);

/// The HTTP server and systemd supervision: the token stops the server; the tasks are
/// the server's and the supervisor's (which says `STOPPING=1` once `shutdown` is
/// cancelled, and must be awaited so that it gets to say it before the process ends).
///
/// A panic in the server's accept loop (one in a request's handler is the server's own
/// business: 500) is logged and counted, and stops the daemon (`shutdown`): the server
/// task then ends with the panic's message, and `run` with an error (exit 1).
async fn start_serving(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Serving, RunError> {
    use futures_util::FutureExt as _;
    let listen = shared.bound;
    let http_listener = crate::serve::http::bind(listen).map_err(|e| RunError::Bind {
        addr: listen,
        reason: e.to_string(),
    })?;
    let http_stop = CancellationToken::new();
    let serve = crate::serve::http::serve(http_listener, shared.clone(), http_stop.clone());
    let (metrics, stop_all) = (shared.metrics.clone(), shutdown.clone());
    let http_task = tokio::spawn(async move {
        let Err(payload) = std::panic::AssertUnwindSafe(serve).catch_unwind().await else {
            return Ok(());
        };
        let message = tasks::panic_message(payload.as_ref());
        tasks::panicked(&metrics, "http", &message);
        tracing::error!("the HTTP server is gone: stopping refreshd, which exits 1 so that its supervisor starts it again");
        stop_all.cancel();
        Err(message)
    });
    let supervisor = tokio::spawn(crate::serve::systemd::supervise(
        shared.health.clone(),
        shutdown.clone(),
    ));
    Ok((http_stop, http_task, supervisor))
}

/// SIGHUP reloads, SIGUSR1 forces every view; the task ends with `stop`.
fn spawn_signals(
    tx: &mpsc::UnboundedSender<Command>,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(RunError::Signals)?;
    let tx = tx.clone();
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = hup.recv() => { let _ = tx.send(Command::Reload); }
                Some(()) = usr1.recv() => { let _ = tx.send(Command::ForceAll("SIGUSR1")); }
            }
        }
    }))
}

/// Connects for the startup checks, retrying until it works or shutdown.
async fn startup_client(
    info: &ConnectInfo,
    shutdown: &CancellationToken,
    health: &Health,
) -> Option<tokio_postgres::Client> {
    health.beat_core();
    health.beat_listener();
    info.connect_until(shutdown, |e, delay| {
        health.beat_core();
        health.beat_listener();
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot connect for the startup checks; retrying");
    })
    .await
}

impl Core {
    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        shutdown: &CancellationToken,
    ) {
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
    async fn drain(&mut self) {
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

    /// Starts work off the loop; its result comes back through [`Core::job_ended`].
    fn spawn_job(
        &mut self,
        kind: Job,
        job: impl std::future::Future<Output = Option<Command>> + Send + 'static,
    ) {
        let handle = self.jobs.spawn(job);
        self.job_kinds.insert(handle.id(), kind);
    }

    /// A job ended: its command is handled; a panic is logged, counted, and handled as
    /// the failure it stands for.
    async fn job_ended(
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

    /// Starts every refresh the coalescer says is due, each in its span.
    fn start_due(&mut self, now: Instant) {
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
    fn task_ended(&mut self, ended: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
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

    async fn handle(&mut self, cmd: Command) {
        let now = Instant::now().into_std();
        match cmd {
            Command::Listener(ev) => self.listener_event(ev, now),
            Command::Detected(name) => self.mark_named(&name, Reason::Detected, now),
            Command::ForceAll(source) => {
                tracing::info!(source, "forced refresh of every view");
                self.force(None, now);
            }
            Command::Http(Request::Force { view, source }) => {
                if self.leading {
                    if let Some(n) = &view {
                        tracing::info!(view = %n, source, "forced refresh");
                    }
                    self.force(view.as_ref(), now);
                } else {
                    self.relay(view);
                }
            }
            Command::Http(Request::Status(reply)) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Http(Request::PendingAges(reply)) => {
                let now = std::time::Instant::now();
                let ages = self
                    .config
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
                    .collect();
                let _ = reply.send(ages);
            }
            Command::Http(Request::Wait {
                view,
                arrived,
                reply,
            }) => self.wait(view, arrived, reply, now),
            Command::Reload => self.reload(),
            Command::ForceRequests(taken) => self.forced_from_sql(taken, now),
            Command::CatalogChanged => {
                if self.leading {
                    tracing::debug!("catalog changed (DDL): checking change capture now");
                    self.capture.check_now();
                }
            }
            Command::CaptureChecked(result) => {
                let views = self.capture.finished(
                    result,
                    self.config.capture_check_interval,
                    &self.metrics.views,
                );
                for v in views {
                    self.mark_named(&v, Reason::Resync, now);
                }
            }
            Command::Reloaded(result) => {
                self.reloading = false;
                match *result {
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
        }
    }

    fn listener_event(&mut self, ev: ListenerEvent, now: std::time::Instant) {
        match ev {
            ListenerEvent::Control(payload) => self.control(&payload, now),
            ListenerEvent::Notification { channel, .. }
                if channel == crate::pg::force::FORCE_CHANNEL =>
            {
                self.take_force_requests()
            }
            ListenerEvent::Notification {
                channel, payload, ..
            } => {
                tracing::trace!(%channel, payload = %payload.chars().take(64).collect::<String>(), "notification");
                if let Some(views) = self.index.by_channel.get(&channel) {
                    for &i in views {
                        if let Some(k) = &mut self.keys[i] {
                            let view = &self.config.views[i];
                            let arity = view.keyed.as_ref().map_or(1, |k| k.key.len());
                            let parsed = keys::parse(&payload, arity);
                            if let Payload::Malformed(why) = parsed {
                                let name = view.name.clone();
                                self.metrics.views.keyed_malformed(&name.to_string());
                                let bytes = payload.len();
                                if let Some(n) =
                                    self.throttle.admit(&("malformed", name.to_string()), now)
                                {
                                    tracing::warn!(view = %name, %channel, why, bytes, suppressed = n, "a notification's payload is not a key list for this keyed view; recomputing every group");
                                }
                            }
                            k.apply(parsed);
                        }
                        self.coalescer.mark(i, Reason::Notify, now);
                    }
                }
            }
            ListenerEvent::Listening(set) => {
                self.listening = set;
                self.release_awaiting(now);
            }
            ListenerEvent::Leading { first } => {
                self.leading = true;
                // Every view is caught up now, those waiting for their channels too.
                self.awaiting_listen.clear();
                if self.stopping.is_none() {
                    self.coalescer.set_paused(false);
                }
                let reason = if first {
                    Reason::Startup
                } else {
                    Reason::Resync
                };
                self.coalescer.mark_all(reason, now);
                // Requests made while no refreshd led (or while this one was away).
                self.take_force_requests();
                self.capture.check_now();
            }
            ListenerEvent::Standby | ListenerEvent::Lost => {
                self.leading = false;
                self.listening.clear();
                // Without the lock another replica may lead: start nothing until it
                // is ours again.
                self.coalescer.set_paused(true);
                self.refresher.close_idle();
            }
        }
    }

    /// Catch-up refreshes for views whose channels are now all LISTENed.
    fn release_awaiting(&mut self, now: std::time::Instant) {
        let listening = &self.listening;
        let index = &self.index;
        let config = &self.config;
        let coalescer = &mut self.coalescer;
        self.awaiting_listen.retain(|(name, reason)| {
            let Some(&i) = index.by_name.get(name) else {
                return false;
            };
            if config.views[i]
                .channels
                .iter()
                .all(|c| listening.contains(c))
            {
                coalescer.mark(i, *reason, now);
                false
            } else {
                true
            }
        });
    }

    fn mark_named(&mut self, name: &QualifiedName, reason: Reason, now: std::time::Instant) {
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

    /// A control payload from an allowed sender: `*` or a configured view's name.
    fn control(&mut self, payload: &str, now: std::time::Instant) {
        let p = payload.trim();
        if p == "*" {
            self.log_throttled(("control", "*".into()), |n| {
                tracing::info!(
                    suppressed = n,
                    "control channel: forced refresh of every view"
                )
            });
            self.force(None, now);
            return;
        }
        let found = (p.len() <= MAX_VIEW_NAME)
            .then(|| QualifiedName::parse(p).ok())
            .flatten()
            .and_then(|n| self.index.by_name.get(&n).copied());
        match found {
            Some(i) => {
                let name = self.config.views[i].name.clone();
                self.log_throttled(("control", name.to_string()), |n| {
                    tracing::info!(view = %name, suppressed = n, "control channel: forced refresh")
                });
                self.force(Some(&name), now);
            }
            None => {
                self.metrics.control_rejected.inc();
                let shown: String = p.chars().take(80).collect();
                let bytes = p.len();
                self.log_throttled(("control", String::new()), |n| {
                    tracing::warn!(payload = ?shown, bytes, suppressed = n, "control channel: payload names no configured view; ignored")
                });
            }
        }
    }

    fn log_throttled(&mut self, kind: (&'static str, String), log: impl FnOnce(u64)) {
        if let Some(n) = self.throttle.admit(&kind, std::time::Instant::now()) {
            log(n);
        }
    }

    /// Starts a capture check when one is due (the leader only: it alone installs
    /// triggers and refreshes), off the loop; it comes back as
    /// [`Command::CaptureChecked`].
    fn check_capture(&mut self) {
        if !self.leading || self.stopping.is_some() {
            return;
        }
        if !self.capture.start_if_due(std::time::Instant::now()) {
            return;
        }
        let info = self.refresh_info.clone();
        let views = self.config.views.clone();
        let previous = self.capture.previous();
        self.spawn_job(Job::Capture, async move {
            let check = crate::engine::capture::run_check(info, views, previous);
            let result = match tokio::time::timeout(Duration::from_secs(60), check).await {
                Ok(r) => r,
                Err(_) => Err("no answer within 60 s".into()),
            };
            Some(Command::CaptureChecked(result))
        });
    }

    /// Consumes the requests `refreshd.force` recorded, on a connection of its own
    /// (off the loop); they come back as [`Command::ForceRequests`]. Only the leader
    /// consumes them: a standby leaves them for it.
    fn take_force_requests(&mut self) {
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

    /// Carries out what `refreshd.force` recorded. The function already refused
    /// names that are no relation; one refreshd does not manage is logged.
    fn forced_from_sql(
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

    /// Starts a reload on a task of its own; its result comes back as
    /// [`Command::Reloaded`]. A SIGHUP during a reload runs one more after it.
    fn reload(&mut self) {
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

    /// Takes a prepared configuration (at startup, and after each reload): computes
    /// what changes ([`ReloadPlan`]) and installs it.
    async fn apply(&mut self, p: Prepared, first: bool) {
        let plan = if first {
            ReloadPlan::initial(&p.config)
        } else {
            let plan = ReloadPlan::diff(&self.config, &p.config);
            for section in &plan.restart_needed {
                tracing::warn!(
                    section,
                    "SIGHUP: {section} changed; that takes effect at the next restart"
                );
            }
            if let Err(e) = reload::refuse(self.shared.bound, p.token.as_deref()) {
                tracing::error!(error = %e, "SIGHUP: reload refused; keeping the old one");
                return;
            }
            plan
        };
        self.install(p, &plan);
        if !first {
            tracing::info!(
                views = self.config.views.len(),
                added = plan.added.len(),
                removed = plan.removed.len(),
                listen = ?plan.listen,
                unlisten = ?plan.unlisten,
                "SIGHUP: configuration reloaded"
            );
            self.release_awaiting(std::time::Instant::now());
        }
    }

    /// Installs `plan`: metrics, the coalescer's and the book's per-view state, the
    /// dirty groups, the catch-ups, the indexes, schedules, the detector, the channels
    /// and roles the listener follows, and what the HTTP server reads.
    fn install(&mut self, p: Prepared, plan: &ReloadPlan) {
        let new = p.config.clone();
        for name in &plan.removed {
            self.metrics.forget_view(&name.to_string());
        }
        for name in &plan.added {
            if let Some(v) = new.view(name) {
                self.metrics
                    .register_view(&v.name.to_string(), &v.channels, v.keyed.is_some());
            }
        }
        self.coalescer.reconfigure(
            new.views.iter().map(timing).collect(),
            p.reads.clone(),
            &plan.previous,
            new.database.max_concurrent_refreshes,
        );
        self.history = plan
            .previous
            .iter()
            .map(|p| p.map(|p| self.history[p].clone()).unwrap_or_default())
            .collect();
        self.keys = self.carry_keys(&new, plan);
        self.awaiting_listen.extend(plan.catch_up.iter().cloned());
        self.reads = p.reads;
        self.index = Index::new(&new);
        if self.stopping.is_none() {
            self.schedules = Schedules::new(&new.views, chrono::Utc::now());
        }
        self.restart_detector(p.watched);
        self.channels_tx
            .send_replace(new.channels().into_iter().collect());
        self.roles_tx.send_replace(new.control_roles.clone());
        *self.shared.config.write().expect("not poisoned") = new.clone();
        *self.shared.admin_token.write().expect("not poisoned") = p.token;
        self.config = new;
    }

    /// The dirty groups of the new keyed views: carried over, or everything dirty for
    /// the plan's fresh ones.
    fn carry_keys(&mut self, new: &Config, plan: &ReloadPlan) -> Vec<Option<DirtyKeys>> {
        new.views
            .iter()
            .zip(&plan.previous)
            .enumerate()
            .map(|(i, (v, prev))| {
                let keyed = v.keyed.as_ref()?;
                let kept = prev
                    .filter(|_| !plan.fresh_keys.contains(&i))
                    .and_then(|j| self.keys.get_mut(j).and_then(Option::take));
                Some(match kept {
                    Some(mut k) => {
                        k.set_max(keyed.max_keys);
                        k
                    }
                    None => {
                        let mut k = DirtyKeys::new(keyed.max_keys);
                        k.add_all();
                        k
                    }
                })
            })
            .collect()
    }

    /// Stops the statistics detector and starts one for `watched` (if any).
    fn restart_detector(&mut self, watched: Vec<crate::engine::detect::Watched>) {
        self.detector.cancel();
        self.detector = CancellationToken::new();
        if !watched.is_empty() {
            self.detectors.spawn(detector(
                self.refresh_info.clone(),
                watched,
                Mapped::new(self.tx.clone(), Command::Detected),
                self.metrics.clone(),
                self.detector.clone(),
            ));
        }
    }

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
    fn answer_waiters(&mut self, f: &Finished) {
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

/// Statistics detection for `watched` until `stop`, its findings sent as
/// [`Command::Detected`]; started again after a panic (see [`tasks::supervise`]).
async fn detector(
    info: ConnectInfo,
    watched: Vec<crate::engine::detect::Watched>,
    changed: Mapped<QualifiedName>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let stop2 = stop.clone();
    tasks::supervise(
        "detector",
        metrics,
        stop,
        move || {
            crate::engine::detect::run(
                info.clone(),
                watched.clone(),
                changed.clone(),
                stop2.clone(),
            )
        },
        || {},
    )
    .await
}
