//! The LISTEN session's plumbing: the task that drives the connection (forwarding
//! notifications, judging control senders), and the proof that the connection is a
//! real session.
//!
//! Why a proof: through a transaction-mode pooler (PgBouncer, Supavisor, RDS Proxy) a
//! `LISTEN` succeeds, the socket stays open, queries answer — and no notification ever
//! arrives, because the LISTEN registered on a server connection the pooler hands to
//! other clients. So refreshd LISTENs on a private channel and has a *separate*
//! connection (the prober) send a notification there; only a real session receives it.
//! (A self-NOTIFY on the same client proves nothing: a pooler tends to run it on the
//! same server connection, which delivers it in the response.) The same round trip is
//! the listener's periodic probe: it proves the notification path, not just the socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::Type;
use tokio_postgres::AsyncMessage;

use crate::engine::arming::{Arming, HeldBack};
use crate::engine::control::{self, Gate, Next, Verdict};
use crate::engine::listen_event::{ListenerEvent, PROBE_DEADLINE};
use crate::pg::connect::{error_chain, ConnectInfo, PgConnection};
use crate::pg::notify;
use crate::serve::metrics::Metrics;

/// Why a proof failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// The test notification was sent but never arrived: not a real session.
    NotDelivered(Duration),
    /// The prober could not send it (the database is unreachable, say).
    Prober(String),
    /// The LISTEN connection closed meanwhile.
    Closed,
    /// The LISTEN session could not be opened (no connection, or LISTEN refused).
    Listen(String),
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::NotDelivered(t) => write!(
                f,
                "the LISTEN session did not receive refreshd's test notification within {}: \
                 notifications are not delivered on this connection. Most likely a transaction-mode \
                 pooler (PgBouncer, Supavisor, RDS Proxy) sits in front of it: set database.listen_url \
                 (or listen_url_env) to connect straight to PostgreSQL; database.url may keep using the pooler",
                humantime::format_duration(*t)
            ),
            ProofError::Prober(e) => write!(f, "cannot send the test notification: {e}"),
            ProofError::Closed => write!(f, "the LISTEN connection closed"),
            ProofError::Listen(e) => f.write_str(e),
        }
    }
}

/// A private channel name for one process's proofs.
pub fn private_channel() -> String {
    format!("refreshd_probe_{}_{:08x}", std::process::id(), random_u32())
}

fn random_u32() -> u32 {
    rand::random()
}

/// The prober: a connection of its own that sends the test notifications (and samples
/// the notification queue). Reconnects when needed.
pub struct Prober {
    info: ConnectInfo,
    client: Option<tokio_postgres::Client>,
    seq: u64,
}

impl Prober {
    pub fn new(info: ConnectInfo) -> Self {
        Self {
            info,
            client: None,
            seq: 0,
        }
    }

    /// Connects the prober if it is not connected.
    async fn ensure_connected(&mut self) -> Result<(), String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.info.connect().await.map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    /// Sends a fresh nonce on `channel`; returns it and `pg_notification_queue_usage()`.
    async fn send(&mut self, channel: &str) -> Result<(String, f64), String> {
        self.ensure_connected().await?;
        self.seq += 1;
        let nonce = format!("{}-{:08x}", self.seq, random_u32());
        let c = self.client.as_ref().expect("just connected");
        let sent = tokio::time::timeout(
            PROBE_DEADLINE,
            c.query_typed(
                "SELECT pg_catalog.pg_notify($1, $2), pg_catalog.pg_notification_queue_usage()",
                &[(&channel, Type::TEXT), (&nonce, Type::TEXT)],
            ),
        )
        .await;
        match sent {
            Ok(Ok(rows)) => Ok((nonce, rows.first().map_or(0.0, |r| r.get(1)))),
            Ok(Err(e)) => {
                self.client = None;
                Err(error_chain(&e))
            }
            Err(_) => {
                self.client = None;
                Err(format!("no answer within {PROBE_DEADLINE:?}"))
            }
        }
    }

    /// One round trip: the prober notifies `channel`, and `received` (the LISTEN
    /// session's notifications on it) must deliver that payload within `timeout`.
    /// Returns the time it took and the queue usage.
    pub async fn round_trip(
        &mut self,
        channel: &str,
        received: &mut mpsc::UnboundedReceiver<String>,
        timeout: Duration,
    ) -> Result<(Duration, f64), ProofError> {
        while received.try_recv().is_ok() {}
        // Connecting is not part of the round trip: with a multi-host URL whose first
        // host hangs, it alone takes a connect_timeout.
        self.ensure_connected().await.map_err(ProofError::Prober)?;
        let start = Instant::now();
        let (nonce, usage) = self.send(channel).await.map_err(ProofError::Prober)?;
        let deadline = tokio::time::Instant::now() + timeout.saturating_sub(start.elapsed());
        loop {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(p)) if p == nonce => return Ok((start.elapsed(), usage)),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(ProofError::Closed),
                Err(_) => return Err(ProofError::NotDelivered(timeout)),
            }
        }
    }
}

/// LISTENs on `private` and returns the session's backend pid.
pub async fn listen_private(client: &tokio_postgres::Client, private: &str) -> Result<i32, String> {
    let work = async {
        client.batch_execute(&notify::listen_sql(private)).await?;
        let rows = client
            .query_typed("SELECT pg_catalog.pg_backend_pid()", &[])
            .await?;
        Ok::<i32, tokio_postgres::Error>(rows.first().map_or(0, |r| r.get(0)))
    };
    match tokio::time::timeout(PROBE_DEADLINE, work).await {
        Ok(Ok(pid)) => Ok(pid),
        Ok(Err(e)) => Err(listen_error(&e)),
        Err(_) => Err(format!("LISTEN got no answer within {PROBE_DEADLINE:?}")),
    }
}

/// What a hot standby answers to LISTEN ("cannot execute LISTEN during recovery"):
/// SQLSTATE 25006, read_only_sql_transaction.
pub const STANDBY_HINT: &str = "hint: this server is a standby (in recovery), where LISTEN is impossible; \
     point the URL at the primary, or list every host (host=a,b) with target_session_attrs=read-write \
     so that refreshd connects to whichever one is the primary";

/// A LISTEN's error, with [`STANDBY_HINT`] when the server is a standby.
pub fn listen_error(e: &tokio_postgres::Error) -> String {
    let text = error_chain(e);
    if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
        format!("{text} ({STANDBY_HINT})")
    } else {
        text
    }
}

/// Server-side keepalives for the proven session: a leader cut off without FIN or RST
/// loses its backend, and with it the advisory lock, within about a minute (PostgreSQL's
/// defaults follow the kernel's: two hours). Harmless over a Unix socket.
pub const SERVER_KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 20000";

type Lookup =
    std::pin::Pin<Box<dyn std::future::Future<Output = (i32, Result<Verdict, String>)> + Send>>;

/// Where a driven connection's messages go.
pub struct Routes {
    pub events: crate::engine::tasks::Mapped<ListenerEvent>,
    pub metrics: Metrics,
    pub roles: watch::Receiver<Vec<String>>,
    /// The private probe channel and where its payloads go.
    pub private: String,
    pub probes: mpsc::UnboundedSender<String>,
    /// The channel locks (see `arming`): a notification on an armed channel is passed
    /// on only once its lock is released.
    pub arming: Arc<Arming>,
}

type Release = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// Drives the connection: forwards notifications, hands probe payloads to the proof,
/// and looks up the senders of control notifications on this same session the moment
/// they arrive (see `control`). Sends why the connection ended on `dead`.
pub async fn drive(
    connection: PgConnection,
    client: Arc<tokio_postgres::Client>,
    routes: Routes,
    dead: tokio::sync::oneshot::Sender<String>,
) {
    let mut driver = Driver {
        gate: Gate::new(routes.metrics.clone()),
        client,
        routes,
        lookups: FuturesUnordered::new(),
        releases: FuturesUnordered::new(),
        held: HeldBack::default(),
    };
    let mut messages = notify::messages(connection);
    let why = loop {
        let message = tokio::select! {
            m = messages.next() => m,
            Some((pid, verdict)) = driver.lookups.next(), if !driver.lookups.is_empty() => {
                driver.looked_up(pid, verdict);
                continue;
            }
            Some(channel) = driver.releases.next(), if !driver.releases.is_empty() => {
                driver.released(&channel);
                continue;
            }
        };
        match message {
            Some(Ok(AsyncMessage::Notification(n))) => driver.notification(&n),
            Some(Ok(AsyncMessage::Notice(n))) => {
                tracing::debug!(notice = %n.message(), "server notice");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break error_chain(&e),
            None => break "connection closed".to_string(),
        }
    };
    let _ = dead.send(why);
}

/// What [`drive`] keeps besides the connection's messages: where they go, the control
/// gate and its sender lookups in flight, and the notifications held back on channels
/// being released (see `arming`).
struct Driver {
    client: Arc<tokio_postgres::Client>,
    routes: Routes,
    gate: Gate,
    lookups: FuturesUnordered<Lookup>,
    releases: FuturesUnordered<Release>,
    held: HeldBack,
}

impl Driver {
    /// A notification: a probe's payload goes to the proof; one on a view's channel is
    /// forwarded (or held back while its channel is armed); a control one goes through
    /// the gate. All but probes are counted.
    fn notification(&mut self, n: &tokio_postgres::Notification) {
        if n.channel() == self.routes.private {
            let _ = self.routes.probes.send(n.payload().to_string());
            return;
        }
        self.routes
            .metrics
            .notifications
            .with_label_values(&[n.channel()])
            .inc();
        if n.channel() == crate::CONTROL_CHANNEL {
            self.control(n);
        } else {
            self.forward(n);
        }
    }

    /// Forwards a notification on a view's channel: released before the views are made
    /// due, never after (see `arming`); meanwhile this connection keeps being driven
    /// (the release runs on it).
    fn forward(&mut self, n: &tokio_postgres::Notification) {
        let ev = ListenerEvent::Notification {
            channel: n.channel().to_string(),
            payload: n.payload().to_string(),
            pid: n.process_id(),
        };
        let arming = &self.routes.arming;
        if !self.held.holding(n.channel()) && !arming.is_armed(n.channel()) {
            let _ = self.routes.events.send(ev);
            return;
        }
        if self.held.hold(n.channel(), ev) {
            let arming = arming.clone();
            let channel = n.channel().to_string();
            self.releases.push(Box::pin(async move {
                arming.disarm(&channel).await;
                channel
            }));
        }
    }

    /// A control notification: acted on, dropped, kept waiting, or its sender looked up
    /// (on this session, bounded by [`PROBE_DEADLINE`]) as the gate says.
    fn control(&mut self, n: &tokio_postgres::Notification) {
        match self
            .gate
            .arrive(n.process_id(), n.payload().to_string(), Instant::now())
        {
            Next::Act(p) => {
                let _ = self.routes.events.send(ListenerEvent::Control(p));
            }
            Next::Lookup(pid) => {
                let client = self.client.clone();
                let listed = self.routes.roles.borrow().clone();
                self.lookups.push(Box::pin(async move {
                    let v = tokio::time::timeout(
                        PROBE_DEADLINE,
                        control::lookup(&client, pid, &listed),
                    )
                    .await
                    .map_err(|_| "the sender lookup timed out".to_string())
                    .and_then(|r| r.map_err(|e| error_chain(&e)));
                    (pid, v)
                }));
            }
            Next::Drop | Next::Wait => {}
        }
    }

    /// A sender's lookup ended: the payloads the gate now lets through are passed on.
    fn looked_up(&mut self, pid: i32, verdict: Result<Verdict, String>) {
        for payload in self.gate.decided(pid, verdict, Instant::now()) {
            let _ = self.routes.events.send(ListenerEvent::Control(payload));
        }
    }

    /// A channel's lock was released: the notifications held back on it are passed on.
    fn released(&mut self, channel: &str) {
        for ev in self.held.release(channel) {
            let _ = self.routes.events.send(ev);
        }
    }
}

/// The proof on its own, for `refreshd check`: connects a LISTEN session as `run`
/// would, and times one round trip from a separate connection.
pub async fn prove(info: &ConnectInfo, timeout: Duration) -> Result<Duration, ProofError> {
    let (client, connection) = info
        .connect_raw()
        .await
        .map_err(|e| ProofError::Listen(e.to_string()))?;
    let private = private_channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let channel = private.clone();
    // The connection is driven here, beside the proof, not on a task of its own.
    let driver = notify::drive(connection, move |n| {
        if n.channel() == channel {
            let _ = tx.send(n.payload().to_string());
        }
    });
    let result = async {
        listen_private(&client, &private)
            .await
            .map_err(ProofError::Listen)?;
        Prober::new(info.clone())
            .round_trip(&private, &mut rx, timeout)
            .await
            .map(|(t, _)| t)
    };
    let (mut driver, mut result) = (std::pin::pin!(driver), std::pin::pin!(result));
    tokio::select! {
        r = &mut result => r,
        // The connection ended: the proof fails with the client's own error.
        () = &mut driver => result.await,
    }
}
