//! The LISTEN connection: one dedicated connection, driven through
//! `Connection::poll_message` so that no notification is dropped, proven to be a real
//! session (see `session.rs`), which also holds the leader's advisory lock. It only
//! forwards: it never waits on a refresh, so a slow refresh cannot slow the draining of
//! PostgreSQL's cluster-wide notification queue.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::engine::arming::Arming;
use crate::engine::session::{
    drive, listen_error, listen_private, private_channel, Prober, ProofError, Routes,
    SERVER_KEEPALIVES,
};
use crate::engine::tasks::Mapped;
use crate::pg::connect::{Backoff, ConnectInfo};
use crate::pg::notify;
use crate::serve::health::{Health, Role};
use crate::serve::metrics::Metrics;

pub use crate::engine::listen_event::{ListenerEvent, PROBE_DEADLINE, PROBE_INTERVAL};

/// How often the leader takes the wake-ups two-phase writers recorded in
/// `refreshd.wakes` (see `pg::wakes`): their changes are seen this much later than a
/// notification would make them.
pub const WAKE_POLL: Duration = Duration::from_secs(1);

/// How often the leader looks again for a `refreshd.wakes` it did not find.
const WAKES_RECHECK: Duration = Duration::from_secs(30);

/// The advisory lock key: FNV-1a over `refreshd:` and the lock name, as a signed
/// 64-bit integer. Fixed forever, so that every version of refreshd agrees.
pub fn lock_key(lock_name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "refreshd:".bytes().chain(lock_name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Ends backend `$1` if it holds refreshd's advisory lock `$2` (a bigint key: `classid`
/// holds its high half, `objid` its low half, `objsubid` 1) in this database.
const FENCE_SQL: &str = "SELECT pg_catalog.pg_terminate_backend(l.pid) FROM pg_catalog.pg_locks l \
     WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $1 AND l.objsubid = 1 \
       AND ((l.classid::int8 << 32) | l.objid::int8) = $2 \
       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())";

/// The listener task's settings (cloned to start it again after a panic).
#[derive(Clone)]
pub struct Listener {
    pub info: ConnectInfo,
    pub lock_key: i64,
    pub retry_interval: Duration,
    /// How long the session's proof may take (`database.connect_timeout`).
    pub proof_timeout: Duration,
    pub channels: watch::Receiver<BTreeSet<String>>,
    pub events: Mapped<ListenerEvent>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    /// `control_roles`, for the control channel's gate.
    pub control_roles: watch::Receiver<Vec<String>>,
    /// Where to reach the database when the LISTEN connection is cut off (the refresh
    /// connections' settings), to end the old session's backend (see `fence`).
    pub fence_info: ConnectInfo,
    /// The channel locks this session holds while leading (see `arming`).
    pub arming: Arc<Arming>,
    /// The fence tasks (see `fence`); `run` waits for them before it returns.
    pub fences: tokio_util::task::TaskTracker,
    /// Started again after a panic: its first leadership is not the process's first.
    pub restarted: bool,
}

enum Ended {
    Shutdown,
    /// A working session ended.
    Lost(String),
    /// No session was made: the connection, the LISTEN or its proof failed.
    Failed(String),
    /// Not a real session (a transaction pooler): refused, retried with backoff.
    Refused(String),
}

/// What outlives one connection.
#[derive(Default)]
struct History {
    ever_connected: bool,
    ever_led: bool,
    backoff: Backoff,
    /// Sessions begun (the `session` field of the listener's span).
    sessions: u64,
    /// The host of the last session (of a multi-host URL, the one that answered).
    host: Option<String>,
}

/// One connection's state.
struct Conn {
    client: Arc<tokio_postgres::Client>,
    dead: tokio::sync::oneshot::Receiver<String>,
    probes: mpsc::UnboundedReceiver<String>,
    private: String,
    pid: i32,
    /// `user@host:port/db` of the host that answered.
    host: String,
    _driver: AbortOnDrop,
}

impl Listener {
    /// Runs until shutdown, reconnecting as needed.
    pub async fn run(mut self) {
        let mut history = History {
            ever_connected: self.restarted,
            ever_led: self.restarted,
            ..History::default()
        };
        let mut prober = Prober::new(self.info.clone());
        loop {
            self.health.beat_listener();
            history.sessions += 1;
            let ended = self.session(&mut history, &mut prober).await;
            let why = match ended {
                Ended::Shutdown => break,
                Ended::Lost(why) => {
                    let host = history.host.as_deref().unwrap_or(self.info.target());
                    tracing::warn!(%host, reason = %why, "LISTEN connection lost; reconnecting");
                    why
                }
                Ended::Failed(why) => {
                    tracing::warn!(reason = %why, "LISTEN connection failed; retrying");
                    why
                }
                Ended::Refused(why) => {
                    tracing::error!(target = %self.info.target(), "refusing the LISTEN connection: {why}");
                    why
                }
            };
            self.set_disconnected();
            let _ = self.events.send(ListenerEvent::Lost);
            let delay = history.backoff.next_delay();
            tracing::debug!(reason = %why, retry_in_ms = delay.as_millis() as u64, "LISTEN: retrying");
            if !self.wait(delay).await {
                break;
            }
        }
        self.set_disconnected();
        // A fence still running ends within its own 10 s bound.
        self.fences.close();
        self.fences.wait().await;
    }

    /// After the listener panicked (its connection, and with it the lock, are gone):
    /// what a lost connection reports.
    pub fn panicked(&self) {
        self.arming.lost();
        self.set_disconnected();
        let _ = self.events.send(ListenerEvent::Lost);
    }

    fn set_disconnected(&self) {
        self.health.set_role(Role::Disconnected);
        self.metrics.listener_connected.set(0);
        self.metrics.leader.set(0);
    }

    /// Sleeps `d` while beating (liveness never depends on how long a wait is); false
    /// on shutdown.
    async fn wait(&self, d: Duration) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            self.health.beat_listener();
            let step = until.min(tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(step) => {}
            }
            if tokio::time::Instant::now() >= until {
                return true;
            }
        }
    }

    /// Connects, LISTENs on a private channel and proves the session (see
    /// `session.rs`).
    async fn open(&mut self, prober: &mut Prober) -> Result<Conn, Ended> {
        let connected = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(Ended::Shutdown),
            c = self.info.open() => c,
        };
        let opened = connected.map_err(|e| Ended::Failed(e.to_string()))?;
        let host = opened.host;
        // Until the session is proven, a failure means it was never made.
        let failed = |why: String| Ended::Failed(format!("{host}: {why}"));
        let mut conn = self.start_driver(opened.client, opened.connection, host.clone());
        conn.pid = listen_private(&conn.client, &conn.private)
            .await
            .map_err(failed)?;
        self.prove(&mut conn, prober, failed).await?;
        Ok(conn)
    }

    /// Starts driving the connection (see [`drive`]) on a task of its own, in the
    /// current span. The driver's panic ends this session like a lost connection, with
    /// its message (and is logged and counted); the listener reconnects as after any
    /// loss.
    fn start_driver(
        &self,
        client: tokio_postgres::Client,
        connection: crate::pg::connect::PgConnection,
        host: String,
    ) -> Conn {
        let client = Arc::new(client);
        let private = private_channel();
        let (probe_tx, probes) = mpsc::unbounded_channel();
        let (drive_tx, drive_rx) = tokio::sync::oneshot::channel::<String>();
        let driven = drive(
            connection,
            client.clone(),
            Routes {
                events: self.events.clone(),
                metrics: self.metrics.clone(),
                roles: self.control_roles.clone(),
                private: private.clone(),
                probes: probe_tx,
                arming: self.arming.clone(),
            },
            drive_tx,
        );
        let driven = async move {
            crate::engine::tasks::fault("listener_driver");
            driven.await
        };
        let (dead_tx, dead) = tokio::sync::oneshot::channel::<String>();
        let metrics = self.metrics.clone();
        let span = tracing::Span::current();
        let driver = tokio::spawn(tracing::Instrument::instrument(
            async move {
                use futures_util::FutureExt as _;
                let why = match std::panic::AssertUnwindSafe(driven).catch_unwind().await {
                    Ok(()) => drive_rx.await.unwrap_or_default(),
                    Err(payload) => {
                        let message = crate::engine::tasks::panic_message(payload.as_ref());
                        crate::engine::tasks::panicked(&metrics, "listener", &message);
                        format!("the connection's task panicked: {message}")
                    }
                };
                let _ = dead_tx.send(why);
            },
            span,
        ));
        Conn {
            client,
            dead,
            probes,
            private,
            pid: 0,
            host,
            _driver: AbortOnDrop(driver),
        }
    }

    /// Proves the session with one round trip through the prober (its time and the
    /// queue's usage recorded), then gives it its keepalive settings: only a proven
    /// session gets settings of its own (through a pooler they would stay behind on a
    /// shared server connection). A notification not delivered refuses the connection.
    async fn prove(
        &self,
        conn: &mut Conn,
        prober: &mut Prober,
        failed: impl Fn(String) -> Ended,
    ) -> Result<(), Ended> {
        let proved = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(Ended::Shutdown),
            r = prober.round_trip(&conn.private, &mut conn.probes, self.proof_timeout) => r,
        };
        match proved {
            Ok((rtt, usage)) => {
                self.metrics.listener_roundtrip.set(rtt.as_secs_f64());
                self.metrics.queue_usage.set(usage);
            }
            Err(e @ ProofError::NotDelivered(_)) => return Err(Ended::Refused(e.to_string())),
            Err(e) => return Err(failed(e.to_string())),
        }
        match tokio::time::timeout(PROBE_DEADLINE, conn.client.batch_execute(SERVER_KEEPALIVES))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(crate::pg::connect::error_chain(&e))),
            Err(_) => Err(failed("SET got no answer".into())),
        }
    }

    /// One connection's life: connect and prove, win the lock, LISTEN, forward, probe.
    /// Its lines (and its connection's driver's, and the fence after it) carry the
    /// `listen` span: the session's number, then the host that answered and the
    /// backend's pid.
    #[tracing::instrument(
        name = "listen",
        skip_all,
        fields(session = history.sessions, host = tracing::field::Empty, pid = tracing::field::Empty)
    )]
    async fn session(&mut self, history: &mut History, prober: &mut Prober) -> Ended {
        let mut conn = match self.open(prober).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        if history.ever_connected {
            self.metrics.listener_reconnects.inc();
        }
        history.ever_connected = true;
        history.host = Some(conn.host.clone());
        let span = tracing::Span::current();
        span.record("host", conn.host.as_str());
        span.record("pid", conn.pid);
        self.metrics.listener_connected.set(1);
        if let Err(e) = self.acquire(&mut conn, prober).await {
            return e;
        }
        history.backoff.reset();
        let mut listening: BTreeSet<String> = BTreeSet::new();
        let wanted = self.channels.borrow_and_update().clone();
        if let Err(e) = self
            .sync_channels(&conn.client, &mut listening, &wanted)
            .await
        {
            return Ended::Lost(e);
        }
        let _ = self
            .events
            .send(ListenerEvent::Listening(listening.clone()));
        if let Err(e) = self
            .arming
            .attach(conn.client.clone(), self.events.clone())
            .await
        {
            return Ended::Lost(e);
        }
        self.health.set_role(Role::Leader);
        self.metrics.leader.set(1);
        tracing::info!(channels = ?listening, first = !history.ever_led, "leading: LISTEN established");
        let _ = self.events.send(ListenerEvent::Leading {
            first: !history.ever_led,
        });
        history.ever_led = true;
        let ended = self.lead(&mut conn, prober, listening).await;
        self.arming.detach().await;
        if matches!(ended, Ended::Lost(_)) {
            self.fence(conn.pid);
        }
        ended
    }

    /// A leader whose LISTEN session stopped answering (a proxy or a network that keeps
    /// the sockets open) has stopped refreshing, but the server may not notice for a
    /// long time — a proxy's kernel even answers its keepalives — and keeps the advisory
    /// lock, so no standby can take over. Over another connection, end the old
    /// backend, but only if it still holds refreshd's lock in this database.
    fn fence(&self, pid: i32) {
        use tracing::Instrument as _;
        let info = self.fence_info.clone();
        let key = self.lock_key;
        let span = tracing::Span::current();
        self.fences.spawn(async move {
            let work = async {
                let client = info.connect().await.map_err(|e| e.to_string())?;
                let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
                    [(&pid, Type::INT4), (&key, Type::INT8)];
                let rows = client
                    .query_typed(FENCE_SQL, &params)
                    .await
                    .map_err(|e| crate::pg::connect::error_chain(&e))?;
                Ok::<usize, String>(rows.len())
            };
            match tokio::time::timeout(Duration::from_secs(10), work).await {
                Ok(Ok(0)) => {}
                Ok(Ok(_)) => tracing::warn!(backend = pid, "ended the cut-off LISTEN session's backend, releasing the leader lock for another replica"),
                Ok(Err(e)) => tracing::warn!(backend = pid, error = %e, "could not end the cut-off LISTEN session's backend; the server releases its lock when it notices the dead connection"),
                Err(_) => tracing::warn!(backend = pid, "ending the cut-off LISTEN session's backend timed out"),
            }
        }.instrument(span));
    }

    /// Leadership: a session-level advisory lock held for as long as this connection
    /// lives, taken only on the backend that LISTENs. Standbys stay connected, beat,
    /// and try again every `retry_interval`.
    async fn acquire(&mut self, conn: &mut Conn, prober: &mut Prober) -> Result<(), Ended> {
        let mut announced_standby = false;
        loop {
            self.health.beat_listener();
            let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] =
                [(&conn.pid, Type::INT4), (&self.lock_key, Type::INT8)];
            let try_lock = conn.client.query_typed(
                "SELECT CASE WHEN pg_catalog.pg_backend_pid() = $1 \
                 THEN pg_catalog.pg_try_advisory_lock($2) END",
                &params,
            );
            let won = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Ended::Shutdown),
                why = &mut conn.dead => return Err(Ended::Lost(why.unwrap_or_default())),
                r = tokio::time::timeout(PROBE_DEADLINE, try_lock) => r,
            };
            let won: Option<bool> = match won {
                Ok(Ok(rows)) => rows.first().and_then(|r| r.get(0)),
                Ok(Err(e)) => return Err(Ended::Lost(crate::pg::connect::error_chain(&e))),
                Err(_) => return Err(Ended::Lost("advisory lock query timed out".into())),
            };
            match won {
                Some(true) => return Ok(()),
                None => {
                    return Err(Ended::Refused(format!(
                        "the lock statement ran on another backend than the LISTEN session's ({}): \
                         a transaction-mode pooler sits in front of database.listen_url; point it straight at PostgreSQL",
                        conn.pid
                    )))
                }
                Some(false) => {}
            }
            if !announced_standby {
                announced_standby = true;
                tracing::info!("another replica leads; standing by");
                self.health.set_role(Role::Standby);
                self.metrics.leader.set(0);
                let _ = self.events.send(ListenerEvent::Standby);
            }
            tokio::select! {
                why = &mut conn.dead => return Err(Ended::Lost(why.unwrap_or_default())),
                ok = self.wait(self.retry_interval) => if !ok { return Err(Ended::Shutdown) },
            }
            // A standby is ready only while its session works: prove it again.
            self.probe(conn, prober).await?;
        }
    }

    /// The periodic proof: a notification from the prober must arrive.
    async fn probe(&mut self, conn: &mut Conn, prober: &mut Prober) -> Result<(), Ended> {
        crate::engine::tasks::fault("listener");
        match prober.round_trip(&conn.private, &mut conn.probes, PROBE_DEADLINE).await {
            Ok((rtt, usage)) => {
                self.metrics.listener_roundtrip.set(rtt.as_secs_f64());
                self.metrics.queue_usage.set(usage);
                Ok(())
            }
            Err(ProofError::NotDelivered(t)) => Err(Ended::Lost(format!(
                "the probe notification did not arrive within {}: the connection is half-open or no longer delivers notifications",
                humantime::format_duration(t)
            ))),
            Err(e) => Err(Ended::Lost(e.to_string())),
        }
    }

    /// Leading: forward, follow the wanted channels, probe.
    async fn lead(
        &mut self,
        conn: &mut Conn,
        prober: &mut Prober,
        mut listening: BTreeSet<String>,
    ) -> Ended {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut rearm = tokio::time::interval(Duration::from_millis(250));
        rearm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wake_poll = tokio::time::interval(WAKE_POLL);
        wake_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wakes = Wakes::default();
        loop {
            self.health.beat_listener();
            tokio::select! {
                _ = wake_poll.tick() => {
                    if let Err(e) = self.take_wakes(conn, &mut wakes, &listening).await {
                        return e;
                    }
                }
                _ = rearm.tick(), if self.arming.has_pending() || self.arming.has_quiet() => {
                    if self.arming.has_pending() {
                        let events = &self.events;
                        self.arming.retry_pending(|ev| { let _ = events.send(ev); }).await;
                    }
                    // Channels whose views wait for quiet: armed again off this loop
                    // (a flowing re-arm waits for writers), see `arming`.
                    let quiet = self.arming.due_quiet(std::time::Instant::now());
                    if !quiet.is_empty() {
                        let arming = self.arming.clone();
                        tokio::spawn(async move { arming.arm(&quiet).await });
                    }
                }
                _ = self.shutdown.cancelled() => {
                    // Closing the connection releases the lock at once, so a standby
                    // can take over without waiting for a timeout.
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.client.batch_execute("UNLISTEN *")).await;
                    return Ended::Shutdown;
                }
                why = &mut conn.dead => return Ended::Lost(why.unwrap_or_default()),
                changed = self.channels.changed() => {
                    if changed.is_err() {
                        return Ended::Shutdown;
                    }
                    let wanted = self.channels.borrow_and_update().clone();
                    if let Err(e) = self.sync_channels(&conn.client, &mut listening, &wanted).await {
                        return Ended::Lost(e);
                    }
                    tracing::info!(channels = ?listening, "LISTEN set updated");
                    let _ = self.events.send(ListenerEvent::Listening(listening.clone()));
                }
                _ = tick.tick() => {
                    if let Err(e) = self.probe(conn, prober).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Takes the wake-ups two-phase writers recorded (see `pg::wakes`) and passes each
    /// on as a notification on its channel would be: the channel released first (see
    /// `arming`). Channels not LISTENed are dropped, the control channels too.
    async fn take_wakes(
        &self,
        conn: &Conn,
        wakes: &mut Wakes,
        listening: &BTreeSet<String>,
    ) -> Result<(), Ended> {
        use crate::pg::wakes::Found;
        let now = std::time::Instant::now();
        if !wakes.present {
            if wakes.recheck_at.is_some_and(|t| now < t) {
                return Ok(());
            }
            wakes.recheck_at = Some(now + WAKES_RECHECK);
            let found = match tokio::time::timeout(
                PROBE_DEADLINE,
                crate::pg::wakes::find(&conn.client),
            )
            .await
            {
                Ok(Ok(found)) => found,
                Ok(Err(e)) if e.as_db_error().is_none() => {
                    return Err(Ended::Lost(crate::pg::connect::error_chain(&e)))
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %crate::pg::connect::error_chain(&e), "looking for refreshd.wakes failed");
                    return Ok(());
                }
                Err(_) => return Err(Ended::Lost("looking for refreshd.wakes timed out".into())),
            };
            if found == Found::Unusable && !wakes.warned {
                wakes.warned = true;
                tracing::warn!("refreshd.wakes exists but refreshd's role may not take from it (it needs USAGE on schema refreshd, SELECT and DELETE on the table): the changes of writers with refreshd.two_phase = on wait for another notification");
            }
            wakes.present = found == Found::Usable;
            if !wakes.present {
                return Ok(());
            }
        }
        let taken = match tokio::time::timeout(PROBE_DEADLINE, crate::pg::wakes::take(&conn.client))
            .await
        {
            Ok(Ok(Some(t))) => t,
            Ok(Ok(None)) => {
                wakes.present = false;
                return Ok(());
            }
            Ok(Err(e)) if e.as_db_error().is_some() => {
                // Privileges changed since the check, say: looked at again later.
                tracing::debug!(error = %crate::pg::connect::error_chain(&e), "taking refreshd.wakes failed");
                wakes.present = false;
                return Ok(());
            }
            Ok(Err(e)) => return Err(Ended::Lost(crate::pg::connect::error_chain(&e))),
            Err(_) => return Err(Ended::Lost("taking refreshd.wakes timed out".into())),
        };
        for channel in taken {
            if !listening.contains(&channel)
                || channel == crate::CONTROL_CHANNEL
                || channel == crate::pg::force::FORCE_CHANNEL
            {
                continue;
            }
            tracing::debug!(%channel, "a two-phase writer's wake-up");
            self.metrics
                .notifications
                .with_label_values(&[channel.as_str()])
                .inc();
            self.arming.disarm(&channel).await;
            let _ = self.events.send(ListenerEvent::Notification {
                channel,
                payload: String::new(),
                pid: 0,
            });
        }
        Ok(())
    }

    /// LISTENs on what is wanted (plus the control channel) and UNLISTENs the rest.
    async fn sync_channels(
        &self,
        client: &tokio_postgres::Client,
        listening: &mut BTreeSet<String>,
        wanted: &BTreeSet<String>,
    ) -> Result<(), String> {
        let mut wanted = wanted.clone();
        wanted.insert(crate::CONTROL_CHANNEL.to_string());
        wanted.insert(crate::pg::force::FORCE_CHANNEL.to_string());
        let sql = notify::sync_sql(listening, &wanted);
        if !sql.is_empty() {
            match tokio::time::timeout(PROBE_DEADLINE, client.batch_execute(&sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(listen_error(&e)),
                Err(_) => return Err("LISTEN timed out".into()),
            }
        }
        *listening = wanted;
        Ok(())
    }
}

/// Whether `refreshd.wakes` was found, and when to look again if not.
#[derive(Default)]
struct Wakes {
    present: bool,
    recheck_at: Option<std::time::Instant>,
    /// Found without the privileges to take from it, and said so (once a session).
    warned: bool,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_is_fixed() {
        // Changing this breaks mixed-version deployments: two versions would not
        // exclude each other.
        assert_eq!(lock_key("refreshd"), lock_key("refreshd"));
        assert_ne!(lock_key("refreshd"), lock_key("other"));
        assert_eq!(lock_key("refreshd"), -4_436_802_329_783_051_469);
    }
}
