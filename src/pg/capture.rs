//! refreshd's own change capture: the SQL that installs it (shared by `init` and by
//! `capture = "managed"` in `run`), and the catalog query that checks it.

use crate::pg::ident::{quote_ident, sql_comment, QualifiedName};
use crate::pg::refresh::quote_literal;

/// The fixed name of refreshd's capture trigger on every table it captures.
pub const TRIGGER: &str = "refreshd_notify";

/// refreshd's schema for SQL control (`refreshd.force`), as shipped in `sql/refreshd/`.
pub const CONTROL_SQL: &str = include_str!("../../sql/refreshd/001_control.sql");
/// Its rollback.
pub const CONTROL_ROLLBACK_SQL: &str = include_str!("../../sql/refreshd/901_rollback_control.sql");

/// The capture function: a statement-level trigger function for the channel given as
/// its argument. It notifies (a constant payload: PostgreSQL folds repeats within a
/// transaction) only while refreshd holds the channel's lock; otherwise it takes that
/// lock shared until its commit, which refreshd waits for before its next refresh
/// (see `engine::arming`: one notification per refresh, not per writing transaction,
/// and none at all while no refreshd runs). Idempotent; replaces older versions.
pub const FUNCTION_SQL: &str = "CREATE SCHEMA IF NOT EXISTS refreshd;
CREATE OR REPLACE FUNCTION refreshd.notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- 1919316840 + 0..15: refreshd's channel locks, one slot per backend. Held by
    -- refreshd: a refresh is not due yet, so say so. Not held: one is due, and it
    -- waits for this transaction.
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1919316840 + pg_catalog.pg_backend_pid() % 16, pg_catalog.hashtext(TG_ARGV[0])) THEN
        PERFORM pg_catalog.pg_notify(TG_ARGV[0], '');
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION refreshd.notify_changed() IS 'refreshd: change capture (statement-level; notifies the channel in TG_ARGV[0] while refreshd arms it, see refreshd''s docs/semantics.md)';
";

/// Drops the capture function (after every trigger that uses it).
pub const FUNCTION_ROLLBACK_SQL: &str = "DROP FUNCTION IF EXISTS refreshd.notify_changed();\n";

/// (Re)creates refreshd's capture trigger on `table`, notifying `channel`. Idempotent:
/// an earlier one (another channel, or disabled) is replaced.
pub fn trigger_sql(table: &QualifiedName, channel: &str) -> String {
    let t = table.quoted();
    format!(
        "DROP TRIGGER IF EXISTS {trg} ON {t};\n\
         CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}\n    \
         FOR EACH STATEMENT EXECUTE FUNCTION refreshd.notify_changed({ch});\n\
         COMMENT ON TRIGGER {trg} ON {t} IS {comment};\n",
        trg = quote_ident(TRIGGER),
        ch = quote_literal(channel),
        comment = quote_literal(&format!(
            "refreshd: change capture -> channel {}",
            sql_comment(channel)
        )),
    )
}

/// Drops refreshd's capture trigger on `table` (idempotent).
pub fn drop_trigger_sql(table: &QualifiedName) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {};\n",
        quote_ident(TRIGGER),
        table.quoted()
    )
}

/// One trigger on a captured table, as the check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFacts {
    pub name: String,
    /// `tgenabled <> 'D'`.
    pub enabled: bool,
    /// refreshd's own capture trigger.
    pub ours: bool,
    /// Its function's source and its arguments: a channel named here may be notified.
    pub text: String,
}

/// A base table (or partition) a view reads, with its triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    pub oid: u32,
    pub name: QualifiedName,
    /// The root of its partition tree (its own oid when it is none's partition).
    pub root: u32,
    pub triggers: Vec<TriggerFacts>,
}

/// What one capture check read from the catalog.
#[derive(Debug, Clone, Default)]
pub struct CaptureFacts {
    /// Per view asked about, in order: `None` when no materialized view has the name.
    pub views: Vec<Option<Vec<TableFacts>>>,
    /// `refreshd.notify_changed()` exists.
    pub function_installed: bool,
    /// ... in this version (one that notifies only while refreshd arms the channel;
    /// older ones notify on every writing transaction: correct, but costly).
    pub function_current: bool,
}

/// Every base table and partition each view reads (through plain views; partition trees
/// whole, present partitions), with every user trigger on each, in ONE query whatever
/// the number of views.
const CHECK_SQL: &str = "WITH RECURSIVE v AS ( \
    SELECT x.ord, c.oid FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(s, n, ord) \
      JOIN pg_catalog.pg_namespace ns ON ns.nspname = x.s \
      JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = x.n AND c.relkind = 'm' \
), reads(ord, relid) AS ( \
    SELECT v.ord, d.refobjid FROM v \
      JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid \
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
       AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
     WHERE d.refobjid <> v.oid \
    UNION \
    SELECT reads.ord, d.refobjid FROM reads \
      JOIN pg_catalog.pg_class c ON c.oid = reads.relid AND c.relkind = 'v' \
      JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid \
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
       AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
     WHERE d.refobjid <> c.oid \
), tabs AS ( \
    SELECT reads.ord, reads.relid FROM reads \
      JOIN pg_catalog.pg_class c ON c.oid = reads.relid AND c.relkind IN ('r', 'p') \
), tree AS ( \
    SELECT tabs.ord, t.relid::oid AS relid FROM tabs \
      JOIN pg_catalog.pg_class p ON p.oid = tabs.relid AND p.relkind = 'p', \
           LATERAL pg_catalog.pg_partition_tree(tabs.relid) t \
    UNION SELECT tabs.ord, tabs.relid FROM tabs \
), fn AS ( \
    SELECT pg_catalog.to_regprocedure('refreshd.notify_changed()')::oid AS oid \
), trg AS ( \
    SELECT t.tgrelid, \
           array_agg(t.tgname::text ORDER BY t.tgname) AS names, \
           array_agg(t.tgenabled <> 'D' ORDER BY t.tgname) AS enabled, \
           array_agg(t.tgfoid IS NOT DISTINCT FROM (SELECT fn.oid FROM fn) AND t.tgname = 'refreshd_notify' ORDER BY t.tgname) AS ours, \
           array_agg(p.prosrc || ' ' || encode(t.tgargs, 'escape') ORDER BY t.tgname) AS texts \
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
     WHERE t.tgrelid IN (SELECT DISTINCT relid FROM tree) AND NOT t.tgisinternal \
     GROUP BY t.tgrelid \
) \
SELECT v.ord::int8, c.oid, n.nspname::text, c.relname::text, \
       CASE WHEN c.relispartition THEN pg_catalog.pg_partition_root(c.oid)::oid ELSE c.oid END, \
       trg.names, trg.enabled, trg.ours, trg.texts, (SELECT fn.oid IS NOT NULL FROM fn), \
       (SELECT p.prosrc LIKE '%1919316840 + pg_catalog.pg_backend_pid() \\% 16%' FROM fn JOIN pg_catalog.pg_proc p ON p.oid = fn.oid) \
  FROM v \
  LEFT JOIN tree ON tree.ord = v.ord \
  LEFT JOIN pg_catalog.pg_class c ON c.oid = tree.relid AND c.relkind IN ('r', 'p') \
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  LEFT JOIN trg ON trg.tgrelid = c.oid \
 ORDER BY 1, 3, 4";

/// Reads what [`CHECK_SQL`] finds for `views` (schema-qualified names).
pub async fn inspect(
    client: &tokio_postgres::Client,
    views: &[QualifiedName],
) -> Result<CaptureFacts, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let schemas: Vec<&str> = views.iter().map(|n| n.schema.as_str()).collect();
    let names: Vec<&str> = views.iter().map(|n| n.name.as_str()).collect();
    let rows = client
        .query_typed(
            CHECK_SQL,
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    let mut facts = CaptureFacts {
        views: vec![None; views.len()],
        function_installed: false,
        function_current: false,
    };
    for r in &rows {
        facts.function_installed = r.get::<_, Option<bool>>(9).unwrap_or(false);
        facts.function_current = r.get::<_, Option<bool>>(10).unwrap_or(false);
        let Some(slot) = (r.get::<_, i64>(0) as usize)
            .checked_sub(1)
            .and_then(|i| facts.views.get_mut(i))
        else {
            continue;
        };
        let tables = slot.get_or_insert_with(Vec::new);
        let Some(oid) = r.get::<_, Option<u32>>(1) else {
            continue;
        };
        let names: Vec<String> = r.get::<_, Option<Vec<String>>>(5).unwrap_or_default();
        let enabled: Vec<bool> = r.get::<_, Option<Vec<bool>>>(6).unwrap_or_default();
        let ours: Vec<bool> = r.get::<_, Option<Vec<bool>>>(7).unwrap_or_default();
        let texts: Vec<Option<String>> = r
            .get::<_, Option<Vec<Option<String>>>>(8)
            .unwrap_or_default();
        let triggers = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| TriggerFacts {
                name,
                enabled: enabled.get(i).copied().unwrap_or(false),
                ours: ours.get(i).copied().unwrap_or(false),
                text: texts.get(i).cloned().flatten().unwrap_or_default(),
            })
            .collect();
        tables.push(TableFacts {
            oid,
            name: QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            root: r.get(4),
            triggers,
        });
    }
    Ok(facts)
}

/// Installs refreshd's capture trigger on each `(table, channel)`, in one transaction
/// (the capture function too when it is missing): the same SQL as `init --apply`.
pub async fn install(
    client: &tokio_postgres::Client,
    heals: &[(QualifiedName, String)],
    with_function: bool,
) -> Result<(), tokio_postgres::Error> {
    let mut sql = String::from("BEGIN;\n");
    if with_function {
        sql.push_str(FUNCTION_SQL);
    }
    for (table, channel) in heals {
        sql.push_str(&trigger_sql(table, channel));
    }
    sql.push_str("COMMIT;\n");
    let done = client.batch_execute(&sql).await;
    if done.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done
}

/// A fingerprint of the catalog's parts that capture depends on: relations (a new
/// partition), inheritance (an attached or detached partition), triggers (dropped,
/// disabled, replaced) and rewrite rules (`CREATE OR REPLACE VIEW`). Any DDL there
/// changes it, so polling it every few seconds observes DDL for the cost of a few
/// catalog scans (no event trigger, which would need a superuser).
///
/// Relations count by their oids only, never by their rows' `xmin`: every `REFRESH
/// MATERIALIZED VIEW` updates the view's own `pg_class` row, so with `xmin` each
/// refresh looked like DDL and a busy daemon checked capture every two seconds.
/// Temporary relations (a concurrent refresh creates two) are left out too.
pub const FINGERPRINT_SQL: &str = "SELECT \
    (SELECT count(*)::text || ':' || coalesce(sum(oid::int8), 0)::text \
       FROM pg_catalog.pg_class WHERE relkind IN ('r', 'p', 'v', 'm') AND relpersistence <> 't') || '|' || \
    (SELECT count(*)::text || ':' || coalesce(sum(xmin::text::int8), 0)::text FROM pg_catalog.pg_inherits) || '|' || \
    (SELECT count(*)::text || ':' || coalesce(sum(xmin::text::int8), 0)::text FROM pg_catalog.pg_trigger) || '|' || \
    (SELECT count(*)::text || ':' || coalesce(sum(xmin::text::int8), 0)::text FROM pg_catalog.pg_rewrite)";

/// Reads the catalog fingerprint (one statement, one round trip: poolable).
pub async fn fingerprint(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let rows = client.simple_query(FINGERPRINT_SQL).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}
