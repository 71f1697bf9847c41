//! Calls to the keyed conversions' guard keepers (incremental::guard), and the wait
//! for the writers a broken guard may have let through uncaptured.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::incremental::guard::{guard_function, Kept};
use crate::pg::ident::QualifiedName;

/// Each of `views` (a keyed view and its consume function) whose conversion has a
/// guard keeper, with the keeper: one query.
pub async fn keepers(
    client: &Client,
    views: &[(QualifiedName, QualifiedName)],
) -> Result<Vec<(QualifiedName, QualifiedName)>, tokio_postgres::Error> {
    if views.is_empty() {
        return Ok(Vec::new());
    }
    let functions: Vec<QualifiedName> = views.iter().map(|(_, c)| guard_function(c)).collect();
    let signatures: Vec<String> = functions
        .iter()
        .map(|f| format!("{}(bigint)", f.quoted()))
        .collect();
    let stmt = client
        .prepare_typed(
            "SELECT pg_catalog.to_regprocedure(s) IS NOT NULL FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS u(s, n) ORDER BY n",
            &[Type::TEXT_ARRAY],
        )
        .await?;
    let rows = client.query(&stmt, &[&signatures]).await?;
    Ok(views
        .iter()
        .zip(functions)
        .zip(rows)
        .filter(|(_, r)| r.get::<_, bool>(0))
        .map(|(((v, _), f), _)| (v.clone(), f))
        .collect())
}

/// Calls a keeper (its own transaction): to check the guard, or with `settle` to clear
/// the recompute it owed at that epoch.
pub async fn keep(
    client: &Client,
    function: &QualifiedName,
    settle: Option<i64>,
) -> Result<Kept, String> {
    let sql = format!("SELECT {}($1::pg_catalog.int8)", function.quoted());
    let row = client
        .query_one(&sql, &[&settle])
        .await
        .map_err(|e| crate::pg::connect::error_chain(&e))?;
    let text: String = row.get(0);
    Kept::parse(&text).ok_or_else(|| format!("{function}: unexpected answer {text:?}"))
}

/// The transactions (virtual ids) that may have read the guard as on and not yet
/// committed what they wrote uncaptured: those now holding a lock on any of `tables`
/// (oids) that lets them write (a READ COMMITTED writer locks the table before its
/// trigger reads the guard; a prepared transaction keeps its locks), and every client
/// session of this database now holding a snapshot (`backend_xmin`: a REPEATABLE READ
/// or SERIALIZABLE transaction reads the guard with the snapshot it took before the
/// guard was turned off, and may write later; found by a review, 2026-12-05), or whose
/// snapshot this role may not see (another role's session, without
/// `pg_read_all_stats`). This session's excepted.
pub async fn writers(
    client: &Client,
    tables: &[u32],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let oids: Vec<tokio_postgres::types::Oid> = tables.to_vec();
    let rows = client
        .query(
            "SELECT l.virtualtransaction FROM pg_catalog.pg_locks l \
              WHERE l.locktype = 'relation' AND l.granted \
                AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()) \
                AND l.relation = ANY ($1::pg_catalog.oid[]) \
                AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
                AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid() \
                AND l.virtualtransaction IS NOT NULL \
             UNION \
             SELECT l.virtualtransaction FROM pg_catalog.pg_locks l \
               JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
              WHERE l.locktype = 'virtualxid' AND l.granted \
                AND a.datname = pg_catalog.current_database() AND a.backend_type = 'client backend' \
                AND (a.backend_xmin IS NOT NULL OR a.query = '<insufficient privilege>') \
                AND a.pid <> pg_catalog.pg_backend_pid()",
            &[&oids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How many of `transactions` (virtual ids) are still running.
pub async fn still_running(
    client: &Client,
    transactions: &[String],
) -> Result<usize, tokio_postgres::Error> {
    if transactions.is_empty() {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT count(DISTINCT l.virtualtransaction) FROM pg_catalog.pg_locks l WHERE l.virtualtransaction = ANY ($1::pg_catalog.text[])",
            &[&transactions],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as usize)
}
