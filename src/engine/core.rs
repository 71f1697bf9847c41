//! `refreshd run`: wires the listener, the coalescer, the refresh pool, the schedules,
//! the signals and the HTTP server together. The core loop owns the coalescer; every
//! other part talks to it through one channel of [`Command`]s.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::cli::config_dir;
use crate::config::{Config, ViewConfig};
use crate::engine::coalesce::{Coalescer, Outcome, Reason, Start, Timing};
use crate::engine::listener::{lock_key, Listener, ListenerEvent};
use crate::engine::refresher::Refresher;
use crate::pg::catalog;
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;
use crate::pg::refresh::{FailureClass, RefreshError, Refreshed};
use crate::serve::health::Health;
use crate::serve::http;
use crate::serve::metrics::Metrics;

/// The longest control payload considered; anything longer is hostile or a mistake.
pub const MAX_CONTROL_PAYLOAD: usize = 300;

/// Everything the core loop acts on.
#[derive(Debug)]
pub enum Command {
    Listener(ListenerEvent),
    /// Statistics detection saw the view's base tables move.
    Detected(QualifiedName),
    Schedule(QualifiedName),
    /// `None` forces every view.
    Force(Option<QualifiedName>, &'static str),
    Finished {
        view: QualifiedName,
        start: Start,
        result: Result<Refreshed, RefreshError>,
    },
    Reload,
}

/// One view's line in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewStatus {
    pub view: String,
    /// idle, pending, running, retrying, failed.
    pub state: &'static str,
    pub pending_since: Option<String>,
    pub pending_since_seconds: f64,
    /// For `refreshd_pending_since_seconds`, computed at scrape time.
    #[serde(skip)]
    pub pending_since_instant: Option<std::time::Instant>,
    pub pending_changes: u64,
    pub last_start: Option<String>,
    pub last_end: Option<String>,
    pub last_outcome: Option<&'static str>,
    pub last_reason: Option<&'static str>,
    pub last_duration_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub last_success: Option<String>,
    pub refreshes: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub channels: Vec<String>,
    pub schedule: Option<String>,
    pub reads: Vec<String>,
}

/// What the HTTP server reads and how it reaches the core.
pub struct Shared {
    pub config: RwLock<Arc<Config>>,
    pub status: Mutex<Vec<ViewStatus>>,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    pub commands: mpsc::UnboundedSender<Command>,
    pub admin_token: RwLock<Option<String>>,
    /// The address the HTTP server is bound to ([http] changes need a restart).
    pub bound: std::net::SocketAddr,
}

#[derive(Debug, Clone, Default)]
struct History {
    last_start: Option<SystemTime>,
    last_end: Option<SystemTime>,
    last_outcome: Option<&'static str>,
    last_reason: Option<&'static str>,
    last_duration: Option<Duration>,
    last_error: Option<String>,
    last_success: Option<SystemTime>,
    refreshes: u64,
    failures: u64,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An `Instant` of the coalescer as wall-clock time.
fn wall(i: std::time::Instant) -> SystemTime {
    let now_i = Instant::now().into_std();
    let now_s = SystemTime::now();
    if i <= now_i {
        now_s - (now_i - i)
    } else {
        now_s + (i - now_i)
    }
}

fn read_token(config: &Config) -> anyhow::Result<Option<String>> {
    match &config.http.admin_token_file {
        None => Ok(None),
        Some(p) => {
            let path = config_dir(config).join(p);
            let t = std::fs::read_to_string(&path).with_context(|| {
                format!("http.admin_token_file: cannot read {}", path.display())
            })?;
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "http.admin_token_file {} is empty",
                path.display()
            );
            Ok(Some(t))
        }
    }
}

fn timing(v: &ViewConfig) -> Timing {
    Timing {
        debounce: v.debounce,
        max_delay: v.max_delay,
        min_interval: v.min_interval,
    }
}

/// Which configured views each configured view reads, from the catalog.
pub async fn dependency_graph(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> anyhow::Result<Vec<Vec<usize>>> {
    let mut oid_to_index = HashMap::new();
    let mut bases = Vec::with_capacity(views.len());
    for (i, v) in views.iter().enumerate() {
        let facts = client
            .query_opt(
                "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'm'",
                &[&v.name.schema, &v.name.name],
            )
            .await?;
        match facts {
            Some(row) => {
                let oid: u32 = row.get(0);
                oid_to_index.insert(oid, i);
                bases.push(catalog::base_relations(client, oid).await?);
            }
            None => bases.push(Vec::new()),
        }
    }
    Ok(bases
        .iter()
        .map(|b| {
            let mut r: Vec<usize> = b
                .iter()
                .filter_map(|rel| oid_to_index.get(&rel.oid).copied())
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect())
}

/// The tables whose statistics stand for each `detect = "statistics"` view.
async fn watched_views(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> anyhow::Result<Vec<crate::engine::detect::Watched>> {
    let mut out = Vec::new();
    for v in views
        .iter()
        .filter(|v| v.detect == crate::config::Detect::Statistics)
    {
        let Some(facts) = catalog::inspect(client, v).await? else {
            continue;
        };
        let tables: Vec<u32> = facts
            .base
            .iter()
            .filter(|b| matches!(b.relkind, 'r' | 'm'))
            .map(|b| b.oid)
            .collect();
        tracing::info!(view = %v.name, tables = ?facts.base.iter().map(|b| b.name.to_string()).collect::<Vec<_>>(), "watching table statistics");
        out.push(crate::engine::detect::Watched {
            view: v.name.clone(),
            tables,
            poll_interval: v.poll_interval,
        });
    }
    Ok(out)
}

/// Starts statistics detection for `watched`; its findings arrive as
/// [`Command::Detected`]. Cancel the returned token to stop it.
fn spawn_detector(
    info: &ConnectInfo,
    watched: Vec<crate::engine::detect::Watched>,
    tx: &mpsc::UnboundedSender<Command>,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let (dtx, mut drx) = mpsc::unbounded_channel();
    tokio::spawn(crate::engine::detect::run(
        info.clone(),
        watched,
        dtx,
        stop.clone(),
    ));
    let tx = tx.clone();
    tokio::spawn(async move {
        while let Some(v) = drx.recv().await {
            if tx.send(Command::Detected(v)).is_err() {
                break;
            }
        }
    });
    stop
}

/// The views `run` refuses: no usable unique index while `concurrently = true`.
async fn validate_views(
    client: &tokio_postgres::Client,
    views: &[ViewConfig],
) -> anyhow::Result<()> {
    let mut refused = Vec::new();
    for v in views {
        let Some(facts) = catalog::inspect(client, v).await? else {
            tracing::error!(view = %v.name, "materialized view does not exist; its refreshes will fail until it is created");
            continue;
        };
        if facts.relkind == 'm' && v.concurrently && facts.usable_unique_indexes.is_empty() {
            refused.push(v.name.to_string());
        }
    }
    anyhow::ensure!(
        refused.is_empty(),
        "no unique index usable by REFRESH CONCURRENTLY on {}: create one, or set concurrently = false for the view",
        refused.join(", ")
    );
    Ok(())
}

/// Connects for the startup checks, retrying until it works or shutdown.
async fn startup_client(
    info: &ConnectInfo,
    shutdown: &CancellationToken,
    health: &Health,
) -> Option<tokio_postgres::Client> {
    let mut attempt = 0;
    loop {
        health.beat_core();
        health.beat_listener();
        match info.connect().await {
            Ok(c) => return Some(c),
            Err(e) => {
                let delay = crate::engine::listener::jittered(attempt, Duration::from_secs(30));
                attempt += 1;
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot connect for the startup checks; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn start_scheduler(
    views: &[ViewConfig],
    tx: &mpsc::UnboundedSender<Command>,
) -> anyhow::Result<Option<JobScheduler>> {
    if views.iter().all(|v| v.schedule.is_none()) {
        return Ok(None);
    }
    let sched = JobScheduler::new()
        .await
        .context("starting the cron scheduler")?;
    for v in views {
        let Some(s) = &v.schedule else { continue };
        let name = v.name.clone();
        let tx = tx.clone();
        let job = Job::new_async(s.with_seconds.as_str(), move |_id, _lock| {
            let tx = tx.clone();
            let name = name.clone();
            Box::pin(async move {
                let _ = tx.send(Command::Schedule(name));
            })
        })
        .with_context(|| format!("schedule {:?} of {}", s.expr, v.name))?;
        sched.add(job).await.context("adding a cron job")?;
    }
    sched.start().await.context("starting the cron scheduler")?;
    Ok(Some(sched))
}

fn channel_set(config: &Config) -> BTreeSet<String> {
    config.channels().into_iter().collect()
}

/// The daemon. Returns when `shutdown` is cancelled and in-flight work has ended (or
/// was cancelled after `shutdown_timeout`), or with an error that makes it exit
/// non-zero.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    health.beat_core();
    health.beat_listener();
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    let dir = config_dir(&config);
    let refresh_info = ConnectInfo::for_refresh(&config.database, &dir)?;
    let listen_info = ConnectInfo::for_listen(&config.database, &dir)?;
    let shared = Arc::new(Shared {
        config: RwLock::new(Arc::new(config.clone())),
        status: Mutex::new(Vec::new()),
        health: health.clone(),
        metrics: metrics.clone(),
        commands: tx.clone(),
        admin_token: RwLock::new(read_token(&config)?),
        bound: config.http.listen,
    });
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot bind {}", config.http.listen))?;
    tracing::info!(listen = %config.http.listen, version = crate::VERSION, views = config.views.len(), "refreshd starting");
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        http_listener,
        shared.clone(),
        http_stop.clone(),
    ));
    tokio::spawn(crate::serve::systemd::supervise(
        health.clone(),
        shutdown.clone(),
    ));

    // Signals: SIGHUP reloads, SIGUSR1 forces every view.
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let tx = tx.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    Some(()) = hup.recv() => { let _ = tx.send(Command::Reload); }
                    Some(()) = usr1.recv() => { let _ = tx.send(Command::Force(None, "SIGUSR1")); }
                }
            }
        });
    }

    let mut config = Arc::new(config);
    for v in &config.views {
        metrics.register_view(&v.name.to_string(), &v.channels);
    }
    let refresher = Refresher::new(refresh_info.clone());
    let reads;
    let watched;
    if let Some(client) = startup_client(&refresh_info, &shutdown, &health).await {
        validate_views(&client, &config.views).await?;
        reads = dependency_graph(&client, &config.views).await?;
        watched = watched_views(&client, &config.views).await?;
    } else {
        http_stop.cancel();
        let _ = http_task.await;
        return Ok(());
    }
    health.set_config_loaded();
    let mut reads = reads;
    let mut detector = spawn_detector(&refresh_info, watched, &tx);

    let mut coalescer = Coalescer::new(
        config.views.iter().map(timing).collect(),
        reads.clone(),
        config.database.max_concurrent_refreshes,
    );
    coalescer.set_paused(true);
    let mut history: Vec<History> = vec![History::default(); config.views.len()];
    let mut scheduler = start_scheduler(&config.views, &tx).await?;

    let (channels_tx, channels_rx) = watch::channel(channel_set(&config));
    let listener_stop = CancellationToken::new();
    let (ltx, mut lrx) = mpsc::unbounded_channel();
    let listener = Listener {
        info: listen_info,
        lock_key: lock_key(&config.ha.lock_name),
        retry_interval: config.ha.retry_interval,
        channels: channels_rx,
        events: ltx,
        metrics: metrics.clone(),
        health: health.clone(),
        shutdown: listener_stop.clone(),
    };
    let listener_task = tokio::spawn(listener.run());
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = lrx.recv().await {
                if tx.send(Command::Listener(ev)).is_err() {
                    break;
                }
            }
        });
    }

    let mut stopping: Option<Instant> = None;
    // Channels the listener has confirmed, and views added by a reload that wait for
    // theirs before their first refresh.
    let mut listening: BTreeSet<String> = BTreeSet::new();
    let mut awaiting_listen: Vec<QualifiedName> = Vec::new();
    let mut cancelled_at: Option<Instant> = None;
    let heartbeat = Duration::from_secs(5);
    loop {
        health.beat_core();
        let now = Instant::now();
        if let Some(since) = stopping {
            if coalescer.running_count() == 0 {
                break;
            }
            if cancelled_at.is_none() && now >= since + config.shutdown_timeout {
                let n = refresher.cancel_all().await;
                tracing::warn!(cancelled = n, timeout = ?config.shutdown_timeout, "shutdown_timeout expired: cancelled running refreshes on the server");
                cancelled_at = Some(now);
            }
            if cancelled_at.is_some_and(|c| now >= c + Duration::from_secs(2)) {
                tracing::error!("refreshes did not end after cancellation; exiting anyway");
                break;
            }
        }
        if !awaiting_listen.is_empty() {
            awaiting_listen.retain(|name| {
                let Some(i) = config.views.iter().position(|v| &v.name == name) else {
                    return false;
                };
                if config.views[i]
                    .channels
                    .iter()
                    .all(|c| listening.contains(c))
                {
                    coalescer.mark(i, Reason::Startup, now.into_std());
                    false
                } else {
                    true
                }
            });
        }
        for start in coalescer.poll(now.into_std()) {
            let view = config.views[start.view].clone();
            let refresher = refresher.clone();
            let tx = tx.clone();
            history[start.view].last_start = Some(SystemTime::now());
            tracing::debug!(view = %view.name, reason = start.reason.as_str(), coalesced = start.coalesced, "refresh starting");
            tokio::spawn(async move {
                let result = refresher.refresh(&view).await;
                let _ = tx.send(Command::Finished {
                    view: view.name.clone(),
                    start,
                    result,
                });
            });
        }
        publish_status(&shared, &config, &coalescer, &history, &reads);
        let mut wake = now + heartbeat;
        if let Some(w) = coalescer.next_wake() {
            wake = wake.min(Instant::from_std(w));
        }
        if let Some(since) = stopping {
            let limit = cancelled_at.map_or(since + config.shutdown_timeout, |c| {
                c + Duration::from_secs(2)
            });
            wake = wake.min(limit);
        }
        let cmd = tokio::select! {
            _ = shutdown.cancelled(), if stopping.is_none() => {
                tracing::info!(running = coalescer.running_count(), timeout = ?config.shutdown_timeout, "shutting down: no new refreshes; waiting for running ones");
                stopping = Some(Instant::now());
                coalescer.set_paused(true);
                listener_stop.cancel();
                if let Some(mut s) = scheduler.take() {
                    let _ = s.shutdown().await;
                }
                continue;
            }
            cmd = rx.recv() => cmd,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let Some(cmd) = cmd else { break };
        let now_std = Instant::now().into_std();
        match cmd {
            Command::Listener(ListenerEvent::Notification { channel, payload }) => {
                if channel == crate::CONTROL_CHANNEL {
                    control(&config, &mut coalescer, &metrics, &payload, now_std);
                } else {
                    let short: String = payload.chars().take(64).collect();
                    tracing::debug!(%channel, payload = %short, "notification");
                    for (i, v) in config.views.iter().enumerate() {
                        if v.channels.iter().any(|c| c == &channel) {
                            coalescer.mark(i, Reason::Notify, now_std);
                        }
                    }
                }
            }
            Command::Listener(ListenerEvent::Listening(set)) => {
                listening = set;
            }
            Command::Listener(ListenerEvent::Leading { first }) => {
                // Every view is caught up now, those waiting for their channels too.
                awaiting_listen.clear();
                if stopping.is_none() {
                    coalescer.set_paused(false);
                }
                let reason = if first {
                    Reason::Startup
                } else {
                    Reason::Resync
                };
                coalescer.mark_all(reason, now_std);
            }
            Command::Listener(ListenerEvent::Standby) | Command::Listener(ListenerEvent::Lost) => {
                listening.clear();
                // Without the lock another replica may lead: start nothing until it
                // is ours again.
                coalescer.set_paused(true);
                refresher.close_idle();
            }
            Command::Detected(name) => {
                if let Some(i) = config.views.iter().position(|v| v.name == name) {
                    coalescer.mark(i, Reason::Detected, now_std);
                }
            }
            Command::Schedule(name) => {
                if let Some(i) = config.views.iter().position(|v| v.name == name) {
                    coalescer.mark(i, Reason::Schedule, now_std);
                }
            }
            Command::Force(None, source) => {
                tracing::info!(source, "forced refresh of every view");
                coalescer.mark_all(Reason::Force, now_std);
            }
            Command::Force(Some(name), source) => {
                if let Some(i) = config.views.iter().position(|v| v.name == name) {
                    tracing::info!(view = %name, source, "forced refresh");
                    coalescer.mark(i, Reason::Force, now_std);
                }
            }
            Command::Finished {
                view,
                start,
                result,
            } => {
                finished(
                    &config,
                    &mut coalescer,
                    &mut history,
                    &metrics,
                    &view,
                    start,
                    result,
                    now_std,
                );
            }
            Command::Reload => {
                let new = match Config::load(&config_path) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the old one");
                        continue;
                    }
                };
                match reload(
                    &shared,
                    &mut config,
                    new,
                    &mut coalescer,
                    &mut history,
                    &mut reads,
                    &metrics,
                    &refresh_info,
                    &channels_tx,
                    &mut scheduler,
                    &mut detector,
                    &tx,
                )
                .await
                {
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload failed; keeping the old configuration")
                    }
                    // A new view starts with a refresh, as at startup, but only once its
                    // channels are LISTENed: a change committed in between would reach
                    // nobody and not be in the refresh.
                    Ok(added) => awaiting_listen.extend(added),
                }
            }
        }
    }

    listener_stop.cancel();
    detector.cancel();
    let _ = listener_task.await;
    if let Some(mut s) = scheduler.take() {
        let _ = s.shutdown().await;
    }
    http_stop.cancel();
    let _ = http_task.await;
    tracing::info!("refreshd stopped");
    Ok(())
}

fn control(
    config: &Config,
    coalescer: &mut Coalescer,
    metrics: &Metrics,
    payload: &str,
    now: std::time::Instant,
) {
    let p = payload.trim();
    if p == "*" {
        tracing::info!("control channel: forced refresh of every view");
        coalescer.mark_all(Reason::Force, now);
        return;
    }
    let found = if p.len() <= MAX_CONTROL_PAYLOAD {
        QualifiedName::parse(p)
            .ok()
            .and_then(|n| config.views.iter().position(|v| v.name == n))
    } else {
        None
    };
    match found {
        Some(i) => {
            tracing::info!(view = %config.views[i].name, "control channel: forced refresh");
            coalescer.mark(i, Reason::Force, now);
        }
        None => {
            metrics.control_rejected.inc();
            let shown: String = p.chars().take(80).collect();
            tracing::warn!(payload = ?shown, bytes = p.len(), "control channel: payload names no configured view; ignored");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn finished(
    config: &Config,
    coalescer: &mut Coalescer,
    history: &mut [History],
    metrics: &Metrics,
    name: &QualifiedName,
    start: Start,
    result: Result<Refreshed, RefreshError>,
    now: std::time::Instant,
) {
    if coalescer.finished_orphan(start.run) {
        tracing::info!(view = %name, ok = result.is_ok(), "refresh of a view no longer configured ended");
        return;
    }
    let Some(i) = config.views.iter().position(|v| &v.name == name) else {
        return;
    };
    let label = name.to_string();
    let h = &mut history[i];
    let end = SystemTime::now();
    h.last_end = Some(end);
    h.last_reason = Some(start.reason.as_str());
    match result {
        Ok(r) => {
            let lag = now.saturating_duration_since(start.first_change);
            metrics
                .refresh_duration
                .with_label_values(&[&label])
                .observe(r.duration.as_secs_f64());
            metrics
                .refresh_lag
                .with_label_values(&[&label])
                .observe(lag.as_secs_f64());
            metrics
                .refreshes
                .with_label_values(&[&label, start.reason.as_str(), "success"])
                .inc();
            metrics
                .last_success
                .with_label_values(&[&label])
                .set(unix(end));
            h.last_outcome = Some("success");
            h.last_duration = Some(r.duration);
            h.last_error = None;
            h.last_success = Some(end);
            h.refreshes += 1;
            tracing::info!(
                view = %name,
                reason = start.reason.as_str(),
                kind = r.kind.as_str(),
                duration_ms = (r.duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                lag_ms = lag.as_millis() as u64,
                coalesced = start.coalesced,
                outcome = "success",
                "refreshed"
            );
            let deps = coalescer.finished(i, start.run, Outcome::Success, now);
            for d in deps {
                tracing::debug!(view = %config.views[d].name, after = %name, "dependency refresh queued");
            }
        }
        Err(e) => {
            metrics
                .refreshes
                .with_label_values(&[&label, start.reason.as_str(), "failure"])
                .inc();
            h.last_outcome = Some("failure");
            h.last_duration = Some(e.duration);
            h.last_error = Some(e.to_string());
            h.failures += 1;
            let outcome = match e.class {
                FailureClass::Transient => Outcome::Transient,
                FailureClass::Permanent => Outcome::Permanent,
            };
            coalescer.finished(i, start.run, outcome, now);
            let retry_in = coalescer
                .retry_at(i)
                .map(|r| r.saturating_duration_since(now).as_millis() as u64);
            tracing::warn!(
                view = %name,
                reason = start.reason.as_str(),
                duration_ms = e.duration.as_millis() as u64,
                coalesced = start.coalesced,
                outcome = "failure",
                class = e.label(),
                sqlstate = e.code.as_deref().unwrap_or(""),
                retry_in_ms = retry_in,
                error = %e.message,
                hint = e.hint.unwrap_or(""),
                "refresh failed"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn reload(
    shared: &Shared,
    config: &mut Arc<Config>,
    new: Config,
    coalescer: &mut Coalescer,
    history: &mut Vec<History>,
    reads: &mut Vec<Vec<usize>>,
    metrics: &Metrics,
    refresh_info: &ConnectInfo,
    channels_tx: &watch::Sender<BTreeSet<String>>,
    scheduler: &mut Option<JobScheduler>,
    detector: &mut CancellationToken,
    tx: &mpsc::UnboundedSender<Command>,
) -> anyhow::Result<Vec<QualifiedName>> {
    if new.database != config.database {
        tracing::warn!("SIGHUP: [database] changed; that takes effect at the next restart");
    }
    if new.http != config.http || new.ha != config.ha {
        tracing::warn!("SIGHUP: [http] or [ha] changed; that takes effect at the next restart");
    }
    let token = read_token(&new)?;
    anyhow::ensure!(
        token.is_some() || shared.bound.ip().is_loopback(),
        "the HTTP server listens on {} (not loopback) until a restart: http.admin_token_file cannot be removed by a reload",
        shared.bound
    );
    let client = refresh_info
        .connect()
        .await
        .context("connecting to check the new views")?;
    validate_views(&client, &new.views).await?;
    let new_reads = dependency_graph(&client, &new.views).await?;
    let new_watched = watched_views(&client, &new.views).await?;
    let new_scheduler = start_scheduler(&new.views, tx).await?;

    let previous_names: Vec<QualifiedName> = config.views.iter().map(|v| v.name.clone()).collect();
    let previous: Vec<Option<usize>> = new
        .views
        .iter()
        .map(|v| config.views.iter().position(|o| o.name == v.name))
        .collect();
    let new_history = previous
        .iter()
        .map(|p| p.map(|p| history[p].clone()).unwrap_or_default())
        .collect();
    for old in &config.views {
        if !new.views.iter().any(|v| v.name == old.name) {
            metrics.forget_view(&old.name.to_string());
        }
    }
    for v in &new.views {
        metrics.register_view(&v.name.to_string(), &v.channels);
    }
    coalescer.reconfigure(
        new.views.iter().map(timing).collect(),
        new_reads.clone(),
        &previous,
        new.database.max_concurrent_refreshes,
    );
    if let Some(mut old) = scheduler.take() {
        let _ = old.shutdown().await;
    }
    *scheduler = new_scheduler;
    detector.cancel();
    *detector = spawn_detector(refresh_info, new_watched, tx);
    *history = new_history;
    *reads = new_reads;
    let new = Arc::new(new);
    channels_tx.send_replace(channel_set(&new));
    *shared.config.write().expect("not poisoned") = new.clone();
    *shared.admin_token.write().expect("not poisoned") = token;
    tracing::info!(views = new.views.len(), "SIGHUP: configuration reloaded");
    let added = new
        .views
        .iter()
        .filter(|v| !previous_names.contains(&v.name))
        .map(|v| v.name.clone())
        .collect();
    *config = new;
    Ok(added)
}

fn publish_status(
    shared: &Shared,
    config: &Config,
    c: &Coalescer,
    history: &[History],
    reads: &[Vec<usize>],
) {
    let now = std::time::Instant::now();
    let mut out = Vec::with_capacity(config.views.len());
    for (i, v) in config.views.iter().enumerate() {
        let h = &history[i];
        let pending = c.pending(i);
        let state = if c.is_running(i) {
            "running"
        } else if c.retry_at(i).is_some() {
            "retrying"
        } else if pending.is_some() {
            "pending"
        } else if h.last_outcome == Some("failure") {
            "failed"
        } else {
            "idle"
        };
        let since = c.pending_since(i);
        let age = since.map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        out.push(ViewStatus {
            view: v.name.to_string(),
            state,
            pending_since: since.map(|s| rfc3339(wall(s))),
            pending_since_seconds: age,
            pending_since_instant: since,
            pending_changes: pending.map_or(0, |p| p.count),
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
            schedule: v.schedule.as_ref().map(|s| s.expr.clone()),
            reads: reads
                .get(i)
                .map(|r| {
                    r.iter()
                        .map(|&j| config.views[j].name.to_string())
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    *shared.status.lock().expect("not poisoned") = out;
}

/// Indexes of `reads` in an order where every view comes after the views it reads;
/// among independent views, the given order. `reads` is acyclic (PostgreSQL cannot
/// build a cycle of materialized views).
pub fn topological_order(reads: &[Vec<usize>]) -> Vec<usize> {
    let mut done = vec![false; reads.len()];
    let mut order = Vec::with_capacity(reads.len());
    fn visit(i: usize, reads: &[Vec<usize>], done: &mut [bool], order: &mut Vec<usize>) {
        if done[i] {
            return;
        }
        done[i] = true;
        for &l in &reads[i] {
            visit(l, reads, done, order);
        }
        order.push(i);
    }
    for i in 0..reads.len() {
        visit(i, reads, &mut done, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topological_order_puts_lower_views_first() {
        // 0 reads 2, 2 reads 1; 3 independent.
        let reads = vec![vec![2], vec![], vec![1], vec![]];
        assert_eq!(topological_order(&reads), vec![1, 2, 0, 3]);
        assert_eq!(topological_order(&[vec![], vec![]]), vec![0, 1]);
    }
}
