//! The wiring: [`run`] builds the core from the configuration, starts what surrounds
//! it (the HTTP server and systemd supervision, signals, the listener, the DDL watch),
//! runs the loop, and stops them all in order: the lock (the listener) goes last but
//! for the HTTP server.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::book::Waiters;
use super::{Command, Core, Index, RunError, DRAIN};
use crate::config::Config;
use crate::engine::arming::Arming;
use crate::engine::coalesce::Coalescer;
use crate::engine::listener::{lock_key, Listener};
use crate::engine::refresher::Refresher;
use crate::engine::schedule::Schedules;
use crate::engine::startup::{self, Prepared};
use crate::engine::tasks::{self, Mapped};
use crate::engine::throttle::{Throttle, LOG_PERIOD};
use crate::pg::connect::ConnectInfo;
use crate::serve::health::Health;
use crate::serve::metrics::Metrics;
use crate::serve::status::Shared;

/// The daemon. Returns when `shutdown` is cancelled and in-flight work has ended (or
/// was cancelled after `shutdown_timeout`), or with an error that makes it exit
/// non-zero.
/// `config_path`: the file SIGHUP reloads; `None` (the demo's configuration, made in
/// memory) leaves SIGHUP to the caller.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    tasks::arm_fault_hook().map_err(RunError::FaultHook)?;
    let (tx, rx) = mpsc::unbounded_channel::<Command>();
    let base = Base::new(&config, &tx)?;
    let serving = start_serving(&base.shared, &shutdown).await?;
    tracing::info!(listen = %config.http.listen, version = crate::VERSION, views = config.views.len(), "refreshd starting");
    let signals = spawn_signals(&tx, &shutdown, config_path.is_some())?;
    let config_path = config_path.unwrap_or_default();
    let outside = Outside { serving, signals };

    for v in &config.views {
        base.metrics
            .register_view(&v.name.to_string(), &v.channels, v.keyed.is_some());
    }
    let prepared = match startup_client(&base.refresh_info, &shutdown, &base.health).await {
        Some(client) => startup::prepare(&client, config).await?,
        None => {
            let served = outside.stop().await;
            base.refresh_info.drain(DRAIN).await;
            return served_result(served);
        }
    };
    base.health.set_config_loaded();

    let (refresh_info, listen_info) = (base.refresh_info.clone(), base.listen_info.clone());
    let arming = Arc::new(Arming::new());
    let (listening, wires) = start_listener(&base, &prepared, &tx, &arming);
    let mut core = Core::new(
        base,
        wires,
        prepared.config.clone(),
        config_path,
        tx,
        arming,
    );
    core.apply(prepared, true).await;
    core.coalescer.set_paused(true);
    let ddl = spawn_ddl_watch(&core);
    core.run(rx, &shutdown).await;
    ddl.stop().await;
    core.drain().await;
    drop(core);

    // The lock goes last: while refreshes of ours run, no other replica may start.
    listening.stop().await;
    let served = outside.stop().await;
    // Every client is gone now: their connections say goodbye to the server.
    let (a, b) = (refresh_info.drain(DRAIN), listen_info.drain(DRAIN));
    tokio::join!(a, b);
    tracing::info!("refreshd stopped");
    served_result(served)
}

/// What the core and the tasks around it share from the start: the metrics, the
/// health beats, the two kinds of connections, and what the HTTP server reads.
struct Base {
    metrics: Metrics,
    health: Arc<Health>,
    refresh_info: ConnectInfo,
    listen_info: ConnectInfo,
    shared: Arc<Shared>,
}

impl Base {
    /// Builds them from `config`; HTTP requests go to the core through `tx`.
    fn new(config: &Config, tx: &mpsc::UnboundedSender<Command>) -> Result<Self, RunError> {
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        health.beat_core();
        health.beat_listener();
        let dir = config.dir();
        let refresh_info = ConnectInfo::for_refresh(&config.database, &dir)?;
        let listen_info = ConnectInfo::for_listen(&config.database, &dir)?;
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(config.clone())),
            health: health.clone(),
            metrics: metrics.clone(),
            requests: Mapped::new(tx.clone(), Command::Http),
            admin_token: RwLock::new(startup::read_token(config)?),
            bound: config.http.listen,
            core_started: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Base {
            metrics,
            health,
            refresh_info,
            listen_info,
            shared,
        })
    }
}

/// The tasks around the core that outlive it: the HTTP server, its supervisor, and
/// the signal handler.
struct Outside {
    serving: Serving,
    signals: JoinHandle<()>,
}

impl Outside {
    /// Stops the HTTP server and waits for it, its supervisor (which says `STOPPING=1`)
    /// and the signal handler (which ends with `shutdown`); how the server ended.
    async fn stop(self) -> Result<Result<(), String>, tokio::task::JoinError> {
        let (http_stop, http_task, supervisor) = self.serving;
        http_stop.cancel();
        let served = http_task.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), supervisor).await;
        let _ = self.signals.await;
        served
    }
}

/// A task and the token that stops it.
struct Stoppable {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Stoppable {
    /// Stops the task and waits for it to end.
    async fn stop(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// What the core keeps of the listener's wiring: the channels and roles it follows.
struct Wires {
    channels_tx: watch::Sender<BTreeSet<String>>,
    roles_tx: watch::Sender<Vec<String>>,
}

/// Starts the listener for `prepared`'s channels, roles and lock; its events go to
/// the core through `tx`.
fn start_listener(
    base: &Base,
    prepared: &Prepared,
    tx: &mpsc::UnboundedSender<Command>,
    arming: &Arc<Arming>,
) -> (Stoppable, Wires) {
    let stop = CancellationToken::new();
    let (roles_tx, roles_rx) = watch::channel(prepared.config.control_roles.clone());
    let (channels_tx, channels_rx) =
        watch::channel(prepared.config.channels().into_iter().collect());
    let task = spawn_listener(Listener {
        info: base.listen_info.clone(),
        lock_key: lock_key(&prepared.config.ha.lock_name),
        retry_interval: prepared.config.ha.retry_interval,
        proof_timeout: prepared.config.database.connect_timeout,
        channels: channels_rx,
        events: Mapped::new(tx.clone(), Command::Listener),
        metrics: base.metrics.clone(),
        health: base.health.clone(),
        shutdown: stop.clone(),
        control_roles: roles_rx,
        fence_info: base.refresh_info.clone(),
        fences: Default::default(),
        restarted: false,
        arming: arming.clone(),
    });
    let listening = Stoppable {
        stop,
        task: Some(task),
    };
    (
        listening,
        Wires {
            channels_tx,
            roles_tx,
        },
    )
}

impl Core {
    /// A core with no views yet (the first [`Core::apply`] installs them), paused.
    fn new(
        base: Base,
        wires: Wires,
        config: Arc<Config>,
        config_path: PathBuf,
        tx: mpsc::UnboundedSender<Command>,
        arming: Arc<Arming>,
    ) -> Self {
        Core {
            coalescer: Coalescer::new(Vec::new(), Vec::new(), 1),
            config,
            config_path,
            shared: base.shared,
            metrics: base.metrics,
            health: base.health,
            index: Index::default(),
            history: Vec::new(),
            reads: Vec::new(),
            refresher: Refresher::new(base.refresh_info.clone(), arming),
            refresh_info: base.refresh_info,
            tasks: JoinSet::new(),
            task_runs: HashMap::new(),
            keys: Vec::new(),
            waiters: Waiters::default(),
            listen_info: base.listen_info,
            tx,
            channels_tx: wires.channels_tx,
            roles_tx: wires.roles_tx,
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
            guard_waits: Default::default(),
            stopping: None,
            cancelled_at: None,
        }
    }
}

/// DDL under the views (a new partition, a dropped trigger, a replaced view) starts a
/// capture check within seconds; only the leader acts on it. No task when no view's
/// capture is checked.
fn spawn_ddl_watch(core: &Core) -> Stoppable {
    let stop = CancellationToken::new();
    let task = core
        .config
        .views
        .iter()
        .any(crate::engine::capture::checked)
        .then(|| {
            let (tx, info, stop2) = (core.tx.clone(), core.refresh_info.clone(), stop.clone());
            tokio::spawn(tasks::supervise(
                "capture",
                core.metrics.clone(),
                stop.clone(),
                move || {
                    let tx = tx.clone();
                    crate::engine::capture::watch_ddl(info.clone(), stop2.clone(), move |first| {
                        let _ = tx.send(Command::CatalogChanged { first });
                    })
                },
                || {},
            ))
        });
    Stoppable { stop, task }
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

/// SIGHUP reloads (when there is a file to reload), SIGUSR1 forces every view; the
/// task ends with `stop`.
fn spawn_signals(
    tx: &mpsc::UnboundedSender<Command>,
    stop: &CancellationToken,
    reloads: bool,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match reloads {
        true => Some(signal(SignalKind::hangup()).map_err(RunError::Signals)?),
        false => None,
    };
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(RunError::Signals)?;
    let tx = tx.clone();
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => { let _ = tx.send(Command::Reload); }
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
