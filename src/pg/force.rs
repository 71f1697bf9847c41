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

/// The roles of `roles` (`control_roles`) that exist and may not call `refreshd.force`
/// yet (no `EXECUTE` on it, or no `USAGE` on schema `refreshd`); none when it is not
/// installed.
const UNGRANTED_SQL: &str = "SELECT r.rolname::text FROM unnest($1::text[]) AS x(name) \
    JOIN pg_catalog.pg_roles r ON r.rolname = x.name \
   WHERE pg_catalog.to_regprocedure('refreshd.force(text)') IS NOT NULL \
     AND NOT (pg_catalog.has_function_privilege(r.oid, 'refreshd.force(text)', 'EXECUTE') \
              AND pg_catalog.has_schema_privilege(r.oid, 'refreshd', 'USAGE')) \
   ORDER BY 1";

/// Grants `EXECUTE` on `refreshd.force` (and `USAGE` on schema `refreshd`) to each role
/// of `control_roles` that lacks it (SPEC "SQL control"). Per role: granted, or why not
/// (refreshd's role must own the function or hold the grant option: the role that ran
/// `init --apply` can grant it instead). Roles that do not exist are skipped.
pub async fn grant_control_roles(
    client: &Client,
    roles: &[String],
) -> Result<Vec<(String, Result<(), String>)>, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let rows = client
        .query_typed(UNGRANTED_SQL, &[(&roles, Type::TEXT_ARRAY)])
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let role: String = r.get(0);
        let quoted = crate::pg::ident::quote_ident(&role);
        let granted = client
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA refreshd TO {quoted}; \
                 GRANT EXECUTE ON FUNCTION refreshd.force(text) TO {quoted}"
            ))
            .await
            .map_err(|e| crate::pg::connect::error_chain(&e));
        out.push((role, granted));
    }
    Ok(out)
}

/// Records the views this deployment (`deployment`: its `ha.lock_name`) manages in
/// `refreshd.managed_views`, replacing what it recorded before, in one statement
/// (poolable): `refreshd.force` refuses names no deployment manages (SPEC: "Unknown
/// names are refused by the function"). Names are stored as the function computes
/// them, `quote_ident(schema) || '.' || quote_ident(name)`. `Ok(false)` when the table
/// is not installed (an install from before it).
pub async fn record_managed(
    client: &Client,
    deployment: &str,
    views: &[crate::pg::ident::QualifiedName],
) -> Result<bool, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let schemas: Vec<&str> = views.iter().map(|v| v.schema.as_str()).collect();
    let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
    let done = client
        .query_typed(
            "WITH now(view_name) AS ( \
                 SELECT pg_catalog.quote_ident(s) || '.' || pg_catalog.quote_ident(n) \
                   FROM unnest($2::text[], $3::text[]) AS x(s, n)), \
             gone AS (DELETE FROM refreshd.managed_views m WHERE m.deployment = $1 \
                 AND m.view_name NOT IN (SELECT view_name FROM now)) \
             INSERT INTO refreshd.managed_views (deployment, view_name) \
             SELECT $1, view_name FROM now ON CONFLICT DO NOTHING",
            &[
                (&deployment, Type::TEXT),
                (&schemas, Type::TEXT_ARRAY),
                (&names, Type::TEXT_ARRAY),
            ],
        )
        .await;
    match done {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_db_error()
                .is_some_and(|d| matches!(d.code().code(), "42P01" | "3F000")) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
