//! What the HTTP server needs from the rest of the daemon, and nothing more: the
//! configuration it answers about, health, metrics, and a channel of [`Request`]s to the
//! core loop. The core answers status requests with a [`Snapshot`] built on demand, so
//! the per-view work happens per scrape, not per notification.

use std::sync::{Arc, RwLock};

use tokio::sync::oneshot;

use crate::config::Config;
use crate::pg::ident::QualifiedName;
use crate::serve::health::Health;
use crate::serve::metrics::Metrics;

/// The longest view name a request may carry; anything longer is hostile or a mistake.
pub const MAX_VIEW_NAME: usize = 300;

/// One view's line in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewStatus {
    pub view: String,
    /// idle, pending, budget (pending, held back by `max_load`), running, retrying,
    /// failed.
    pub state: &'static str,
    pub pending_since: Option<String>,
    pub pending_since_seconds: f64,
    pub pending_changes: u64,
    /// While `max_load` holds the view's next refresh back: when it may start.
    pub held_until: Option<String>,
    pub last_start: Option<String>,
    pub last_end: Option<String>,
    pub last_outcome: Option<&'static str>,
    pub last_reason: Option<&'static str>,
    pub last_duration_seconds: Option<f64>,
    /// The last failure as refreshd classifies it: never the server's DETAIL, which can
    /// hold row values.
    pub last_error: Option<ErrorSummary>,
    pub last_success: Option<String>,
    pub refreshes: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub channels: Vec<String>,
    pub schedule: Option<String>,
    pub reads: Vec<String>,
    /// Base tables or partitions whose changes are not captured (see SPEC "Change
    /// capture"), each with why; empty when complete or not checked.
    pub capture_gaps: Vec<String>,
    /// The last few successful refreshes, oldest first (the status page's trend).
    pub recent: Vec<Trend>,
}

/// One successful refresh in a view's recent history.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Trend {
    /// Unix time the refresh committed.
    pub end: f64,
    pub duration_seconds: f64,
    /// First pending change → commit.
    pub lag_seconds: f64,
}

/// How a read-your-writes wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitOutcome {
    /// A refresh that started after the request committed.
    Refreshed { end: String, duration_seconds: f64 },
    /// That refresh failed.
    Failed(ErrorSummary),
}

/// A failed refresh as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorSummary {
    /// `transient` or `permanent`.
    pub class: &'static str,
    pub sqlstate: Option<String>,
    /// refreshd's own advice for the operator.
    pub hint: Option<&'static str>,
}

/// The core's answer to a status request.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub views: Vec<ViewStatus>,
}

/// What the HTTP server asks of the core loop.
#[derive(Debug)]
pub enum Request {
    /// Force a refresh of one view, or of every view (`None`). A standby relays it to
    /// the leader.
    Force {
        view: Option<QualifiedName>,
        source: &'static str,
    },
    /// Build a [`Snapshot`] now.
    Status(oneshot::Sender<Snapshot>),
    /// Each view's pending age in seconds (for `/metrics`: far cheaper than a snapshot).
    PendingAges(oneshot::Sender<Vec<(String, f64)>>),
    /// Force a refresh of `view` and answer once a refresh of it that started after
    /// `arrived` has ended (read-your-writes). The HTTP side bounds the wait.
    Wait {
        view: QualifiedName,
        arrived: std::time::Instant,
        reply: oneshot::Sender<WaitOutcome>,
    },
}

/// Shared between the core and the HTTP server.
pub struct Shared {
    pub config: RwLock<Arc<Config>>,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    /// Into the core's channel (each request wrapped as a command).
    pub requests: crate::engine::tasks::Mapped<Request>,
    pub admin_token: RwLock<Option<String>>,
    /// The address the HTTP server is bound to ([http] changes need a restart).
    pub bound: std::net::SocketAddr,
    /// The core loop has started (before: the startup checks wait for the database).
    pub core_started: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("not poisoned").clone()
    }

    /// Asks the core for the pending ages; `None` when it does not answer within `wait`.
    pub async fn pending_ages(&self, wait: std::time::Duration) -> Option<Vec<(String, f64)>> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::PendingAges(tx)).ok()?;
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }

    /// Asks the core for a snapshot; `None` when it does not answer within `wait`
    /// (shutting down, or stuck: `/healthz` says which).
    pub async fn snapshot(&self, wait: std::time::Duration) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Status(tx)).ok()?;
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }
}
