//! What a refresh (materialized or keyed) ends as, and the transaction prologue both
//! share: the outcome and failure types, the failure classes, the history row, the
//! timeouts and client check. A leaf: `refresh` (REFRESH MATERIALIZED VIEW) and `keyed`
//! (keyed refresh) both build on it, so neither depends on the other through it.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::config::ViewConfig;
/// Which statement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshKind {
    /// `REFRESH MATERIALIZED VIEW CONCURRENTLY`.
    Concurrently,
    /// Plain `REFRESH`, because the view sets `concurrently = false`.
    Plain,
    /// Plain `REFRESH` because the view was not populated (CONCURRENTLY refuses those).
    Populate,
    /// A keyed view: every group recomputed.
    KeyedAll,
    /// A keyed view: the dirty groups only.
    KeyedKeys,
}

impl RefreshKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshKind::Concurrently => "concurrently",
            RefreshKind::Plain => "plain",
            RefreshKind::Populate => "populate",
            RefreshKind::KeyedAll => "keyed_all",
            RefreshKind::KeyedKeys => "keyed_keys",
        }
    }
}

/// A refresh that committed.
#[derive(Debug, Clone, Copy)]
pub struct Refreshed {
    pub kind: RefreshKind,
    /// Time of the REFRESH statement alone.
    pub duration: Duration,
    /// A keyed view's notified keys did not cast to its key columns' types, so it
    /// recomputed every group instead.
    pub bad_keys: bool,
    /// The groups a keyed refresh by keys recomputed, when the refresh knows them
    /// better than the work it was given (a buffered view: its buffer's keys too).
    pub keys: Option<usize>,
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Lock timeout, deadlock, serialization failure, cancel, lost connection: retry
    /// with backoff.
    Transient,
    /// Privilege, duplicate rows, missing unique index...: wait for the next trigger.
    Permanent,
}

/// A refresh that did not commit.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", hint.map(|h| format!(" (hint: {h})")).unwrap_or_default())]
pub struct RefreshError {
    pub class: FailureClass,
    /// SQLSTATE, when the server sent one.
    pub code: Option<String>,
    pub message: String,
    /// The server's DETAIL: for logs only, it can hold row values.
    pub detail: Option<String>,
    pub hint: Option<&'static str>,
    /// How long the failing statement ran.
    pub duration: Duration,
    /// The connection must not be reused (no answer, or the ROLLBACK after the
    /// failure did not work).
    pub connection_broken: bool,
}

impl RefreshError {
    /// Classifies a tokio-postgres error by SQLSTATE.
    pub fn from_pg(e: &tokio_postgres::Error, duration: Duration) -> Self {
        let Some(db) = e.as_db_error() else {
            // No SQLSTATE: the connection broke (or never worked).
            return Self {
                class: FailureClass::Transient,
                code: None,
                message: crate::pg::connect::error_chain(e),
                detail: None,
                hint: Some("the connection was lost; refreshd reconnects and retries"),
                duration,
                connection_broken: true,
            };
        };
        let code = db.code();
        let mut message = format!("{}: {}", db.severity(), db.message());
        if let Some(h) = db.hint() {
            message.push_str(&format!(" HINT: {h}"));
        }
        message.push_str(&format!(" (SQLSTATE {})", code.code()));
        let (class, hint) = classify(code);
        Self {
            class,
            code: Some(code.code().to_string()),
            message,
            detail: db.detail().map(str::to_string),
            hint,
            duration,
            connection_broken: false,
        }
    }

    /// The server did not answer (`when`: for how long, or for what): the connection
    /// is dropped and the refresh retried on a new one.
    pub fn no_answer(when: String, duration: Duration) -> Self {
        Self {
            class: FailureClass::Transient,
            code: None,
            message: format!("no answer from the server {when}"),
            detail: None,
            hint: Some(
                "the connection is presumed dead; refreshd drops it and retries on a new one",
            ),
            duration,
            connection_broken: true,
        }
    }

    /// A short label for logs and `/status`.
    pub fn label(&self) -> &'static str {
        match self.class {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        }
    }
}

/// SQLSTATE → class and an operator's hint.
pub fn classify(code: &SqlState) -> (FailureClass, Option<&'static str>) {
    use FailureClass::*;
    let s = code.code();
    match s {
        "55P03" => (Transient, Some("lock_timeout expired: another session holds a conflicting lock on the view (often a long transaction or a manual REFRESH); refreshd retries")),
        "40P01" => (Transient, Some("deadlock with another session; refreshd retries")),
        "40001" => (Transient, Some("serialization failure; refreshd retries")),
        "57014" => (Transient, Some("the statement was cancelled (statement_timeout, or pg_cancel_backend); raise statement_timeout if the view needs longer")),
        "57P01" | "57P02" | "57P03" => (Transient, Some("the server is shutting down or starting up; refreshd retries")),
        "25006" => (Transient, Some("the server is read-only (a standby, or a failover in progress): refreshd retries; if this lasts, point database.url at the primary (target_session_attrs=read-write)")),
        "42501" => (Permanent, Some("only the owner of a materialized view (or a member of the owning role) may refresh it, and on PostgreSQL 17+ a role with the MAINTAIN privilege on it (GRANT MAINTAIN ON ... TO, or the pg_maintain role): ALTER MATERIALIZED VIEW ... OWNER TO a role refreshd's user belongs to, or grant MAINTAIN")),
        "21000" | "23505" => (Permanent, Some("the view's query produces duplicate rows for its unique index; fix the view definition or the index")),
        "55000" => (Permanent, Some("REFRESH ... CONCURRENTLY needs a unique index on plain columns of the view, without WHERE: create one, or set concurrently = false for this view")),
        "0A000" => (Permanent, Some("this form of REFRESH is not supported for the view in its current state")),
        "42P01" => (Permanent, Some("a relation the refresh reads does not exist: the view (dropped or renamed? fix the name in the configuration), or a table or schema a keyed view's generated SQL names, renamed since (`refreshd check` says; `refreshd init --keyed VIEW` converts it again, capture = \"managed\" does it itself)")),
        "42704" => (Permanent, Some("an object the refresh reads does not exist: for a keyed view, a column or table its generated SQL names may have been renamed while the refresh ran (`refreshd check` says; `refreshd init --keyed VIEW` converts it again, capture = \"managed\" does it itself)")),
        "42703" => (Permanent, Some("a column the refresh reads does not exist: for a keyed view, one its generated SQL names was renamed (`refreshd check` says; `refreshd init --keyed VIEW` converts it again, capture = \"managed\" does it itself)")),
        "42809" => (Permanent, Some("the relation is not a materialized view")),
        "3D000" | "28000" | "28P01" => (Permanent, Some("check database.url: database, user or password")),
        _ if s.starts_with("08") || s.starts_with("53") || s.starts_with("58") => {
            (Transient, Some("connection or resource problem on the server; refreshd retries"))
        }
        _ => (Permanent, None),
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

/// How often the server checks, while a refresh runs, that refreshd is still there
/// (`client_connection_check_interval`, PostgreSQL 14+): a refresh whose client was
/// killed stops within about this long instead of running to `statement_timeout` and
/// holding its locks against the next refresher.
pub const CLIENT_CHECK: Duration = Duration::from_secs(1);

/// The start of every refresh transaction, materialized or keyed: `BEGIN`, the view's
/// timeouts, and the client-connection check. Everything is transaction-local (`SET
/// LOCAL`, `set_config(..., true)`), so nothing outlives it on a pooled connection. The
/// check is set through `pg_settings` so that PostgreSQL 13, which lacks the setting,
/// sets nothing instead of failing: there a killed refresher's statement runs on until
/// it ends or reaches `statement_timeout`, and the refresher after it waits for it (the
/// locks it holds), never collides with it.
pub fn begin(view: &ViewConfig) -> String {
    format!("BEGIN; {}; {}", timeouts(view), client_check())
}

/// The view's timeouts, for its transaction only (see [`begin`]).
pub fn timeouts(view: &ViewConfig) -> String {
    format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
        millis(view.statement_timeout),
        millis(view.lock_timeout)
    )
}

/// The client-connection check ([`CLIENT_CHECK`]) for the transaction only, set
/// through `pg_settings` so that PostgreSQL 13 sets nothing (see [`begin`]). A query:
/// in a `REPEATABLE READ` transaction it takes the snapshot.
pub fn client_check() -> String {
    format!(
        "SELECT pg_catalog.set_config(name, '{}', true) FROM pg_catalog.pg_settings \
         WHERE name = 'client_connection_check_interval'",
        millis(CLIENT_CHECK)
    )
}

/// Where a refresh is recorded (`[history]`), and why it ran.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRow<'a> {
    pub config: &'a crate::config::HistoryConfig,
    pub reason: &'a str,
}

impl HistoryRow<'_> {
    /// The INSERT of a success, run inside the refresh transaction just before COMMIT:
    /// the row commits with the refresh or not at all. `now()` is the transaction's
    /// start. `keys`: the groups a keyed refresh recomputed.
    pub fn success_sql(&self, view: &ViewConfig, kind: RefreshKind, keys: Option<usize>) -> String {
        format!(
            "INSERT INTO {} (view, reason, kind, started, duration, outcome, sqlstate, keys) \
             VALUES ({}, {}, {}, now(), clock_timestamp() - now(), 'success', NULL, {}); ",
            self.config.table.quoted(),
            quote_literal(&view.name.to_string()),
            quote_literal(self.reason),
            quote_literal(kind.as_str()),
            keys.map_or("NULL".to_string(), |k| k.to_string())
        )
    }

    /// The INSERT of a failure, on its own (autocommit) after the ROLLBACK.
    pub fn failure_sql(&self, view: &ViewConfig, e: &RefreshError) -> String {
        let secs = e.duration.as_secs_f64();
        format!(
            "INSERT INTO {} (view, reason, kind, started, duration, outcome, sqlstate, keys) \
             VALUES ({}, {}, NULL, now() - make_interval(secs => {secs}), make_interval(secs => {secs}), 'failure', {}, NULL)",
            self.config.table.quoted(),
            quote_literal(&view.name.to_string()),
            quote_literal(self.reason),
            e.code.as_deref().map_or("NULL".to_string(), quote_literal),
        )
    }
}

/// A string literal for SQL, correct whatever `standard_conforming_strings` says:
/// quotes doubled, and an `E''` literal with backslashes doubled when there are any.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// How long past `statement_timeout` the client waits before giving a connection up.
pub const CLIENT_GRACE: Duration = Duration::from_secs(10);
