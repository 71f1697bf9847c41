//! SQL control: the requests `refreshd.force(view)` records (`sql/refreshd/`). The
//! function checks the caller's privilege (PostgreSQL's EXECUTE) and the name; refreshd
//! only consumes the rows, so nothing depends on looking up a session that may be gone.

use tokio_postgres::Client;

/// The wake-up `refreshd.force` sends (constant payload, never read).
pub const FORCE_CHANNEL: &str = "refreshd_force";

/// Takes every waiting request in one statement (autocommit: one round trip, so it
/// works through a transaction-mode pooler), oldest first. `Ok(None)` when refreshd's
/// schema is not installed (SQL control is then simply not in use).
pub async fn take_requests(client: &Client) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .simple_query(
            "WITH taken AS (DELETE FROM refreshd.force_requests RETURNING id, view_name) \
             SELECT view_name FROM taken ORDER BY id",
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e)
            if e.as_db_error()
                .is_some_and(|d| matches!(d.code().code(), "42P01" | "3F000")) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    Ok(Some(
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect(),
    ))
}
