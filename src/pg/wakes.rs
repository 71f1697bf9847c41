//! Wake-ups recorded instead of notified: a writing session with `refreshd.two_phase =
//! on` may end its transactions in `PREPARE TRANSACTION`, which PostgreSQL refuses after
//! a `NOTIFY`, so refreshd's capture functions leave a row in `refreshd.wakes` for it
//! (see `pg::capture::FUNCTION_SQL`). The leader reads them on its LISTEN session.

use tokio_postgres::Client;

/// What the leader found of `refreshd.wakes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Not installed (`init --apply` never ran here, or an older one did).
    Absent,
    /// There, and refreshd's role may take from it.
    Usable,
    /// There, but refreshd's role lacks USAGE on schema refreshd, or SELECT or DELETE
    /// on the table (another role installed it).
    Unusable,
}

/// Looks for `refreshd.wakes` in the catalog and checks refreshd's privileges on it:
/// no error either way, so no line in the server's log every time it is not there.
pub async fn find(client: &Client) -> Result<Found, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') \
                    AND pg_catalog.has_table_privilege(c.oid, 'SELECT') \
                    AND pg_catalog.has_table_privilege(c.oid, 'DELETE') \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = 'refreshd' AND c.relname = 'wakes' AND c.relkind = 'r'",
            &[],
        )
        .await?;
    Ok(match rows.first().map(|r| r.get::<_, bool>(0)) {
        None => Found::Absent,
        Some(true) => Found::Usable,
        Some(false) => Found::Unusable,
    })
}

/// Takes every recorded wake-up in one statement (autocommit): the distinct channels,
/// in no particular order. `Ok(None)` when the table is gone.
pub async fn take(client: &Client) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "WITH taken AS (DELETE FROM refreshd.wakes RETURNING channel) \
             SELECT DISTINCT channel FROM taken",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => Ok(Some(rows.iter().map(|r| r.get(0)).collect())),
        Err(e)
            if e.as_db_error()
                .is_some_and(|d| matches!(d.code().code(), "42P01" | "3F000")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
