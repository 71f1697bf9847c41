//! Running one `REFRESH MATERIALIZED VIEW` and classifying how it failed.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::config::ViewConfig;
pub use crate::pg::outcome::{
    begin, classify, client_check, quote_literal, timeouts, FailureClass, HistoryRow, RefreshError,
    RefreshKind, Refreshed, CLIENT_CHECK, CLIENT_GRACE,
};

/// `REFRESH MATERIALIZED VIEW [CONCURRENTLY] "schema"."name"` for a view, as decided from
/// whether it is populated. The name is always quoted; nothing else enters the SQL.
pub fn refresh_sql(view: &ViewConfig, populated: bool) -> (RefreshKind, String) {
    let kind = if !populated {
        RefreshKind::Populate
    } else if view.concurrently {
        RefreshKind::Concurrently
    } else {
        RefreshKind::Plain
    };
    let sql = match kind {
        RefreshKind::Concurrently => format!(
            "REFRESH MATERIALIZED VIEW CONCURRENTLY {}",
            view.name.quoted()
        ),
        _ => format!("REFRESH MATERIALIZED VIEW {}", view.name.quoted()),
    };
    (kind, sql)
}

/// Whether the view is populated; `None` when no materialized view has that name.
/// `query_typed` is one round trip with an unnamed statement: nothing is prepared on
/// the server, so it works through a transaction-mode pooler.
async fn populated(
    client: &Client,
    view: &ViewConfig,
) -> Result<Option<bool>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT c.relispopulated FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'm'",
            &[
                (&view.name.schema, Type::TEXT),
                (&view.name.name, Type::TEXT),
            ],
        )
        .await?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// The history table, when missing.
pub fn history_table_sql(table: &crate::pg::ident::QualifiedName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (\
           id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
           view text NOT NULL, reason text NOT NULL, kind text, \
           started timestamptz NOT NULL, duration interval NOT NULL, \
           outcome text NOT NULL CHECK (outcome IN ('success', 'failure')), \
           sqlstate text, keys bigint); \
         CREATE INDEX IF NOT EXISTS {i} ON {t} (started)",
        t = table.quoted(),
        i = crate::pg::ident::quote_ident(&format!("{}_started", table.name)),
    )
}

/// Tables this process made sure exist (a mutex: two first refreshes at once must not
/// race on `CREATE TABLE IF NOT EXISTS`).
static HISTORY_TABLES: tokio::sync::Mutex<Vec<String>> = tokio::sync::Mutex::const_new(Vec::new());

/// When rows past the retention were last deleted.
static HISTORY_PRUNED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// How often old history rows are deleted at most.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Creates the history table once per process; `false` when that failed (logged):
/// the refresh then runs without its row, never fails for it.
async fn ensure_history(client: &Client, table: &crate::pg::ident::QualifiedName) -> bool {
    let mut made = HISTORY_TABLES.lock().await;
    let key = table.to_string();
    if made.contains(&key) {
        return true;
    }
    match client.batch_execute(&history_table_sql(table)).await {
        Ok(()) => {
            made.push(key);
            true
        }
        Err(e) => {
            tracing::warn!(table = %table, error = %crate::pg::connect::error_chain(&e), "history: cannot create the table; this refresh is not recorded");
            false
        }
    }
}

/// Deletes rows older than the retention, at most once a minute (autocommit).
async fn prune_history(client: &Client, config: &crate::config::HistoryConfig) {
    {
        let mut last = HISTORY_PRUNED.lock().expect("not poisoned");
        if last.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    let sql = format!(
        "DELETE FROM {} WHERE started < now() - make_interval(secs => {})",
        config.table.quoted(),
        config.retention.as_secs_f64()
    );
    if let Err(e) = client.batch_execute(&sql).await {
        tracing::warn!(table = %config.table, error = %crate::pg::connect::error_chain(&e), "history: deleting old rows failed");
    }
}

/// The refresh as one simple-protocol round trip: the timeouts are `SET LOCAL`, so
/// nothing outlives the transaction on the server connection (a pooler hands that
/// connection to other clients next), and the refresh event, when on, is sent inside
/// the same transaction so whoever receives it reads the new contents.
pub fn refresh_transaction(
    view: &ViewConfig,
    populated: bool,
    event: bool,
) -> (RefreshKind, String) {
    refresh_transaction_with(view, populated, event, None)
}

/// [`refresh_transaction`] with the history row, when on.
pub fn refresh_transaction_with(
    view: &ViewConfig,
    populated: bool,
    event: bool,
    history: Option<HistoryRow<'_>>,
) -> (RefreshKind, String) {
    let (kind, refresh) = refresh_sql(view, populated);
    let mut sql = format!("{}; {refresh}; ", begin(view));
    if let Some(h) = history {
        sql.push_str(&h.success_sql(view, kind, None));
    }
    if event {
        sql.push_str(&format!(
            "SELECT pg_catalog.pg_notify({}, {}); ",
            quote_literal(crate::EVENTS_CHANNEL),
            quote_literal(&view.name.to_string())
        ));
    }
    sql.push_str("COMMIT");
    (kind, sql)
}

/// Refreshes `view` once. With `event`, also `NOTIFY refreshd_refreshed` in the same
/// transaction. Cancel it from elsewhere with the client's cancel token.
///
/// A failed refresh leaves its transaction aborted; it is rolled back here, so the
/// connection (or the pooler's server connection behind it) is clean again. A connection
/// that cannot even do that is reported without SQLSTATE, and the caller drops it.
pub async fn refresh_view(
    client: &Client,
    view: &ViewConfig,
    event: bool,
) -> Result<Refreshed, RefreshError> {
    refresh_view_with(client, view, event, None).await
}

/// [`refresh_view`] with the history row, when on, in the refresh transaction.
async fn refresh_view_with(
    client: &Client,
    view: &ViewConfig,
    event: bool,
    history: Option<HistoryRow<'_>>,
) -> Result<Refreshed, RefreshError> {
    let populated = match populated(client, view).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(RefreshError {
                class: FailureClass::Permanent,
                code: Some("42P01".into()),
                message: format!("materialized view {} does not exist", view.name),
                detail: None,
                hint: Some("create it (see sql/), or fix the name in the configuration (a view `init --keyed --in-place` converted is a table now: configure the kind = \"keyed\" block init printed for it)"),
                duration: Duration::ZERO,
                connection_broken: false,
            })
        }
        Err(e) => return Err(RefreshError::from_pg(&e, Duration::ZERO)),
    };
    let (kind, sql) = refresh_transaction_with(view, populated, event, history);
    let start = Instant::now();
    // statement_timeout bounds the refresh on the server; this bounds it here, for a
    // connection that went half-open and will never answer.
    // statement_timeout = 0 means no limit in PostgreSQL; then the client waits too.
    let deadline = if view.statement_timeout.is_zero() {
        Duration::from_secs(u32::MAX as u64)
    } else {
        view.statement_timeout + CLIENT_GRACE
    };
    match tokio::time::timeout(deadline, client.batch_execute(&sql)).await {
        Ok(Ok(())) => Ok(Refreshed {
            kind,
            duration: start.elapsed(),
            bad_keys: false,
            keys: None,
        }),
        Ok(Err(e)) => {
            let mut err = RefreshError::from_pg(&e, start.elapsed());
            if !client.is_closed() {
                let rolled_back =
                    tokio::time::timeout(ROLLBACK_DEADLINE, client.batch_execute("ROLLBACK")).await;
                // A connection that cannot roll back is not handed out again.
                err.connection_broken = !matches!(rolled_back, Ok(Ok(())));
            }
            Err(err)
        }
        Err(_) => Err(RefreshError::no_answer(
            format!(
                "{} after statement_timeout ({})",
                humantime::format_duration(CLIENT_GRACE),
                humantime::format_duration(view.statement_timeout)
            ),
            start.elapsed(),
        )),
    }
}

/// Refreshes any configured view: a materialized view with `REFRESH`, a keyed view
/// with `work` (everything without it).
pub async fn refresh_one(
    client: &Client,
    view: &ViewConfig,
    work: Option<&crate::pg::keyed::Work>,
    event: bool,
) -> Result<Refreshed, RefreshError> {
    refresh_recorded(client, view, work, event, None).await
}

/// [`refresh_one`], recorded in the history table when `history` is set: a success in
/// the refresh's own transaction, a failure by an INSERT of its own after the
/// ROLLBACK; old rows deleted at most once a minute.
pub async fn refresh_recorded(
    client: &Client,
    view: &ViewConfig,
    work: Option<&crate::pg::keyed::Work>,
    event: bool,
    history: Option<HistoryRow<'_>>,
) -> Result<Refreshed, RefreshError> {
    let history = match history {
        Some(h) if ensure_history(client, &h.config.table).await => Some(h),
        _ => None,
    };
    let result = match &view.keyed {
        Some(keyed) => {
            let all = crate::pg::keyed::Work::All;
            crate::pg::keyed::refresh_keyed(
                client,
                view,
                keyed,
                work.unwrap_or(&all),
                event,
                history,
            )
            .await
        }
        None => refresh_view_with(client, view, event, history).await,
    };
    if let Some(h) = history {
        if result.is_err() {
            // A dropped history table fails the refresh: the next one creates it again.
            let key = h.config.table.to_string();
            HISTORY_TABLES.lock().await.retain(|t| *t != key);
        }
        if let Err(e) = &result {
            if !e.connection_broken && !client.is_closed() {
                if let Err(err) = client.batch_execute(&h.failure_sql(view, e)).await {
                    tracing::warn!(table = %h.config.table, error = %crate::pg::connect::error_chain(&err), "history: recording the failure failed");
                }
            }
        }
        if !client.is_closed() {
            prune_history(client, h.config).await;
        }
    }
    result
}

/// How long the ROLLBACK after a failed refresh may take.
const ROLLBACK_DEADLINE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    #[test]
    fn literals_are_quoted_for_either_string_setting() {
        assert_eq!(quote_literal("public.v"), "'public.v'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
    }

    #[test]
    fn one_transaction_with_local_settings_only() {
        let cfg = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[database]\nurl = \"postgresql://u@h/d\"\n[[view]]\nname = \"\\\"S\\\".\\\"V's\\\"\"\nchannels = [\"c\"]\nstatement_timeout = \"2s\"\nlock_timeout = \"250ms\"\n",
        )
        .unwrap();
        let v = &cfg.views[0];
        let (kind, sql) = refresh_transaction(v, true, true);
        assert_eq!(kind, RefreshKind::Concurrently);
        assert_eq!(
            sql,
            "BEGIN; SET LOCAL statement_timeout = 2000; SET LOCAL lock_timeout = 250; \
             SELECT pg_catalog.set_config(name, '1000', true) FROM pg_catalog.pg_settings \
             WHERE name = 'client_connection_check_interval'; \
             REFRESH MATERIALIZED VIEW CONCURRENTLY \"S\".\"V's\"; \
             SELECT pg_catalog.pg_notify('refreshd_refreshed', '\"S\".\"V''s\"'); COMMIT"
        );
        let (kind, sql) = refresh_transaction(v, false, false);
        assert_eq!(kind, RefreshKind::Populate);
        assert!(
            !sql.contains("pg_notify")
                && sql.ends_with("REFRESH MATERIALIZED VIEW \"S\".\"V's\"; COMMIT")
        );
        assert!(
            !sql.contains("SET statement_timeout"),
            "never session-level"
        );
    }

    #[test]
    fn a_read_only_server_is_a_failover_in_progress_not_a_permanent_failure() {
        let (class, hint) = classify(&SqlState::from_code("25006"));
        assert_eq!(class, FailureClass::Transient);
        assert!(hint.unwrap().contains("target_session_attrs=read-write"));
        assert_eq!(
            classify(&SqlState::from_code("42501")).0,
            FailureClass::Permanent
        );
    }
}
