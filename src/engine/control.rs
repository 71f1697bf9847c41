//! The control channel's gate. `NOTIFY refreshd_control, 'schema.view'` forces a
//! refresh, and any role that can connect can send it; refreshd honours it only when
//! the sending session runs as refreshd's own role, a member of it, or a role named in
//! `control_roles` (SPEC "Semantics"). The notification carries the sender's backend
//! pid; this task looks it up in `pg_stat_activity` on its own connection, so the core
//! loop never waits on the database. Verdicts are cached per pid for a moment, so a
//! flood costs one lookup per sender, not one per notification.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::engine::throttle::{Throttle, LOG_PERIOD};
use crate::pg::connect::ConnectInfo;
use crate::serve::metrics::Metrics;

/// A control notification as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlNote {
    pub payload: String,
    /// The sending backend's pid.
    pub pid: i32,
}

/// How long a pid's verdict is trusted. A pid is reused only after its backend
/// exited, which takes far longer to cycle than this.
const VERDICT_TTL: Duration = Duration::from_secs(2);
/// Most notifications waiting for a verdict; past this a flood is dropped (and counted
/// as rejected) rather than grow memory without bound.
pub const QUEUE: usize = 10_000;

/// Why a sender was or was not honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// The role is neither refreshd's, a member of it, nor listed.
    Role(String),
    /// The session had ended before it could be looked up.
    Gone,
}

const SENDER_SQL: &str = "SELECT a.usename::text, \
     coalesce(pg_catalog.pg_has_role(a.usesysid, current_user, 'MEMBER'), false) \
     FROM pg_catalog.pg_stat_activity a WHERE a.pid = $1";

/// Runs until `stop`: each allowed note's payload goes to `allowed`.
pub async fn run(
    info: ConnectInfo,
    roles: watch::Receiver<Vec<String>>,
    mut notes: mpsc::Receiver<ControlNote>,
    allowed: mpsc::UnboundedSender<String>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut cache: HashMap<i32, (Instant, Verdict)> = HashMap::new();
    let mut throttle = Throttle::new(LOG_PERIOD);
    loop {
        let note = tokio::select! {
            _ = stop.cancelled() => return,
            n = notes.recv() => match n { Some(n) => n, None => return },
        };
        let now = Instant::now();
        let cached = cache
            .get(&note.pid)
            .filter(|(at, _)| now.saturating_duration_since(*at) < VERDICT_TTL)
            .map(|(_, v)| v.clone());
        let verdict = match cached {
            Some(v) => v,
            None => {
                let listed = roles.borrow().clone();
                match lookup(&info, &mut client, note.pid, &listed).await {
                    Ok(v) => {
                        if cache.len() > 1024 {
                            cache.retain(|_, (at, _)| {
                                now.saturating_duration_since(*at) < VERDICT_TTL
                            });
                        }
                        cache.insert(note.pid, (now, v.clone()));
                        v
                    }
                    Err(e) => {
                        // Fail closed: an unchecked sender is not honoured.
                        client = None;
                        metrics.control_rejected.inc();
                        if let Some(n) = throttle.admit(&"lookup", now) {
                            tracing::warn!(error = %e, suppressed = n, "control channel: cannot look the sender up; notification ignored");
                        }
                        continue;
                    }
                }
            }
        };
        match verdict {
            Verdict::Allowed => {
                if allowed.send(note.payload).is_err() {
                    return;
                }
            }
            Verdict::Role(role) => {
                metrics.control_rejected.inc();
                if let Some(n) = throttle.admit(&"role", now) {
                    tracing::warn!(sender_role = %role, sender_pid = note.pid, suppressed = n, "control channel: the sender's role may not control refreshd (not refreshd's role, a member of it, or in control_roles); ignored");
                }
            }
            Verdict::Gone => {
                metrics.control_rejected.inc();
                if let Some(n) = throttle.admit(&"gone", now) {
                    tracing::warn!(sender_pid = note.pid, suppressed = n, "control channel: the sending session ended before its role could be checked; ignored (keep the session open a moment after NOTIFY, or use POST /refresh or SIGUSR1)");
                }
            }
        }
    }
}

/// Looks the sender up (connecting first if needed).
async fn lookup(
    info: &ConnectInfo,
    client: &mut Option<tokio_postgres::Client>,
    pid: i32,
    listed: &[String],
) -> Result<Verdict, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(info.connect().await.map_err(|e| e.to_string())?);
    }
    let c = client.as_ref().expect("just connected");
    // query_typed: one round trip with an unnamed statement, safe through a pooler.
    let rows = tokio::time::timeout(
        Duration::from_secs(5),
        c.query_typed(SENDER_SQL, &[(&pid, Type::INT4)]),
    )
    .await
    .map_err(|_| "the sender lookup timed out".to_string())?
    .map_err(|e| crate::pg::connect::error_chain(&e))?;
    let Some(row) = rows.first() else {
        return Ok(Verdict::Gone);
    };
    let role: Option<String> = row.get(0);
    let member: bool = row.get(1);
    let role = role.unwrap_or_default();
    if member || listed.iter().any(|r| r == &role) {
        Ok(Verdict::Allowed)
    } else {
        Ok(Verdict::Role(role))
    }
}
