//! The LISTEN connection: one dedicated connection, driven through
//! `Connection::poll_message` so that no notification is dropped, which also holds the
//! leader's advisory lock. It only forwards: it never waits on a refresh, so a slow
//! refresh cannot slow the draining of PostgreSQL's cluster-wide notification queue.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::engine::control::{self, Gate, Next, Verdict};
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::quote_ident;
use crate::serve::health::{Health, Role};
use crate::serve::metrics::Metrics;

/// What the listener reports to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerEvent {
    /// A notification on a LISTENed channel.
    Notification {
        channel: String,
        payload: String,
        /// The sending backend's pid.
        pid: i32,
    },
    /// This replica now leads and LISTENs; every view must be caught up.
    /// `first` is true for the first time in the process's life.
    Leading { first: bool },
    /// Connected, but another replica leads.
    Standby,
    /// The channels now LISTENed (after the initial LISTEN and after every change).
    Listening(BTreeSet<String>),
    /// The connection (and with it leadership) is gone.
    Lost,
    /// A control-channel payload from a sender the gate allowed.
    Control(String),
}

/// How often the idle listener proves its connection works (and samples the queue).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long that probe may take before the connection is declared dead.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

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

/// Capped exponential backoff with full jitter: a random delay in [base/2, base].
pub fn jittered(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(10))).min(cap);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let frac = 0.5 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(frac)
}

/// The listener task's settings.
pub struct Listener {
    pub info: ConnectInfo,
    pub lock_key: i64,
    pub retry_interval: Duration,
    pub channels: watch::Receiver<BTreeSet<String>>,
    pub events: mpsc::UnboundedSender<ListenerEvent>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    /// `control_roles`, for the control channel's gate.
    pub control_roles: watch::Receiver<Vec<String>>,
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl Listener {
    /// Runs until shutdown, reconnecting as needed.
    pub async fn run(mut self) {
        let mut attempt = 0u32;
        let mut ever_connected = false;
        let mut ever_led = false;
        loop {
            self.health.beat_listener();
            match self
                .session(&mut ever_connected, &mut ever_led, &mut attempt)
                .await
            {
                Ended::Shutdown => break,
                Ended::Lost(why) => {
                    self.set_disconnected();
                    let delay = jittered(attempt, Duration::from_secs(30));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "LISTEN connection lost; reconnecting");
                    let _ = self.events.send(ListenerEvent::Lost);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.set_disconnected();
    }

    fn set_disconnected(&self) {
        self.health.set_role(Role::Disconnected);
        self.metrics.listener_connected.set(0);
        self.metrics.leader.set(0);
    }

    /// One connection's life: connect, win the lock, LISTEN, forward, probe.
    async fn session(
        &mut self,
        ever_connected: &mut bool,
        ever_led: &mut bool,
        attempt: &mut u32,
    ) -> Ended {
        let connected = tokio::select! {
            _ = self.shutdown.cancelled() => return Ended::Shutdown,
            c = self.info.connect_raw() => c,
        };
        let (client, connection) = match connected {
            Ok(pair) => pair,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let client = Arc::new(client);
        let (dead_tx, mut dead_rx) = tokio::sync::oneshot::channel::<String>();
        let driver = tokio::spawn(drive(
            connection,
            client.clone(),
            self.events.clone(),
            self.metrics.clone(),
            self.control_roles.clone(),
            dead_tx,
        ));
        let _abort = AbortOnDrop(driver);

        if *ever_connected {
            self.metrics.listener_reconnects.inc();
        }
        *ever_connected = true;
        self.metrics.listener_connected.set(1);

        // Leadership: a session-level advisory lock, held for as long as this
        // connection lives. Standbys stay connected and try again.
        let mut announced_standby = false;
        loop {
            self.health.beat_listener();
            let key = self.lock_key;
            let params = [(
                &key as &(dyn tokio_postgres::types::ToSql + Sync),
                tokio_postgres::types::Type::INT8,
            )];
            let try_lock =
                client.query_typed("SELECT pg_catalog.pg_try_advisory_lock($1)", &params);
            let won = tokio::select! {
                _ = self.shutdown.cancelled() => return Ended::Shutdown,
                why = &mut dead_rx => return Ended::Lost(why.unwrap_or_default()),
                r = tokio::time::timeout(PROBE_DEADLINE, try_lock) => r,
            };
            match won {
                Ok(Ok(rows)) if rows.first().is_some_and(|r| r.get::<_, bool>(0)) => break,
                Ok(Ok(_)) => {
                    *attempt = 0;
                    if !announced_standby {
                        announced_standby = true;
                        tracing::info!("another replica leads; standing by");
                        self.health.set_role(Role::Standby);
                        self.metrics.leader.set(0);
                        let _ = self.events.send(ListenerEvent::Standby);
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ended::Shutdown,
                        why = &mut dead_rx => return Ended::Lost(why.unwrap_or_default()),
                        _ = tokio::time::sleep(self.retry_interval) => {}
                    }
                }
                Ok(Err(e)) => return Ended::Lost(crate::pg::connect::error_chain(&e)),
                Err(_) => return Ended::Lost("advisory lock query timed out".into()),
            }
        }

        let mut listening: BTreeSet<String> = BTreeSet::new();
        let wanted = self.channels.borrow_and_update().clone();
        if let Err(e) = self.sync_channels(&client, &mut listening, &wanted).await {
            return Ended::Lost(e);
        }
        *attempt = 0;
        let _ = self
            .events
            .send(ListenerEvent::Listening(listening.clone()));
        self.health.set_role(Role::Leader);
        self.metrics.leader.set(1);
        tracing::info!(channels = ?listening, first = !*ever_led, "leading: LISTEN established");
        let _ = self
            .events
            .send(ListenerEvent::Leading { first: !*ever_led });
        *ever_led = true;

        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.health.beat_listener();
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // Closing the connection releases the lock at once, so a standby
                    // can take over without waiting for a timeout.
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.batch_execute("UNLISTEN *")).await;
                    return Ended::Shutdown;
                }
                why = &mut dead_rx => return Ended::Lost(why.unwrap_or_default()),
                changed = self.channels.changed() => {
                    if changed.is_err() {
                        return Ended::Shutdown;
                    }
                    let wanted = self.channels.borrow_and_update().clone();
                    if let Err(e) = self.sync_channels(&client, &mut listening, &wanted).await {
                        return Ended::Lost(e);
                    }
                    tracing::info!(channels = ?listening, "LISTEN set updated");
                    let _ = self.events.send(ListenerEvent::Listening(listening.clone()));
                }
                _ = probe.tick() => {
                    // A cheap query with a deadline finds a half-open connection that
                    // keepalives have not yet declared dead.
                    match tokio::time::timeout(PROBE_DEADLINE, client.query_typed("SELECT pg_catalog.pg_notification_queue_usage()", &[])).await {
                        Ok(Ok(rows)) => self.metrics.queue_usage.set(rows.first().map_or(0.0, |r| r.get::<_, f64>(0))),
                        Ok(Err(e)) => return Ended::Lost(crate::pg::connect::error_chain(&e)),
                        Err(_) => return Ended::Lost(format!("probe query got no answer within {PROBE_DEADLINE:?}")),
                    }
                }
            }
        }
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
        let mut sql = String::new();
        for ch in wanted.difference(listening) {
            sql.push_str(&format!("LISTEN {};", quote_ident(ch)));
        }
        for ch in listening.difference(&wanted) {
            sql.push_str(&format!("UNLISTEN {};", quote_ident(ch)));
        }
        if !sql.is_empty() {
            match tokio::time::timeout(PROBE_DEADLINE, client.batch_execute(&sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(crate::pg::connect::error_chain(&e)),
                Err(_) => return Err("LISTEN timed out".into()),
            }
        }
        *listening = wanted;
        Ok(())
    }
}

type Lookup =
    std::pin::Pin<Box<dyn std::future::Future<Output = (i32, Result<Verdict, String>)> + Send>>;

/// Drives the connection: forwards notifications, and looks up the senders of control
/// notifications on this same session the moment they arrive (see `control`). Sends
/// why the connection ended on `dead`.
async fn drive(
    mut connection: crate::pg::connect::PgConnection,
    client: Arc<tokio_postgres::Client>,
    events: mpsc::UnboundedSender<ListenerEvent>,
    metrics: Metrics,
    roles: watch::Receiver<Vec<String>>,
    dead: tokio::sync::oneshot::Sender<String>,
) {
    let mut gate = Gate::new(metrics.clone());
    let mut lookups: FuturesUnordered<Lookup> = FuturesUnordered::new();
    // A plain spawned connection future would discard the notifications.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let why = loop {
        let message = tokio::select! {
            m = messages.next() => m,
            Some((pid, verdict)) = lookups.next(), if !lookups.is_empty() => {
                for payload in gate.decided(pid, verdict, std::time::Instant::now()) {
                    let _ = events.send(ListenerEvent::Control(payload));
                }
                continue;
            }
        };
        match message {
            Some(Ok(AsyncMessage::Notification(n))) => {
                metrics
                    .notifications
                    .with_label_values(&[n.channel()])
                    .inc();
                if n.channel() != crate::CONTROL_CHANNEL {
                    let _ = events.send(ListenerEvent::Notification {
                        channel: n.channel().to_string(),
                        payload: n.payload().to_string(),
                        pid: n.process_id(),
                    });
                    continue;
                }
                let now = std::time::Instant::now();
                match gate.arrive(n.process_id(), n.payload().to_string(), now) {
                    Next::Act(p) => {
                        let _ = events.send(ListenerEvent::Control(p));
                    }
                    Next::Lookup(pid) => {
                        let client = client.clone();
                        let listed = roles.borrow().clone();
                        lookups.push(Box::pin(async move {
                            let v = tokio::time::timeout(
                                PROBE_DEADLINE,
                                control::lookup(&client, pid, &listed),
                            )
                            .await
                            .map_err(|_| "the sender lookup timed out".to_string())
                            .and_then(|r| r.map_err(|e| crate::pg::connect::error_chain(&e)));
                            (pid, v)
                        }));
                    }
                    Next::Drop | Next::Wait => {}
                }
            }
            Some(Ok(AsyncMessage::Notice(n))) => {
                tracing::debug!(notice = %n.message(), "server notice")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break crate::pg::connect::error_chain(&e),
            None => break "connection closed".to_string(),
        }
    };
    let _ = dead.send(why);
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

    #[test]
    fn backoff_is_capped() {
        for a in 0..40 {
            let d = jittered(a, Duration::from_secs(30));
            assert!(d <= Duration::from_secs(30));
            assert!(d >= Duration::from_millis(125));
        }
    }
}
