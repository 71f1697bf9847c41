//! `refreshd check` for a keyed view: the table and its query fit, the key is unique in
//! the table, the query restricted to one key does not scan large tables, and some
//! trigger sends keys on the view's channels.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::config::{Keyed, ViewConfig};
use crate::pg::catalog::{transitive_tables, Verdict, ViewReport};
use crate::pg::ident::quote_ident;
use crate::pg::keyed::{shape, Shape};

/// A base table larger than this, scanned whole by the query restricted to one key,
/// makes keyed refresh pointless.
pub const LARGE_TABLE_ROWS: i64 = 10_000;

/// Judges a keyed view; `Err` only when the catalog cannot be read.
pub async fn judge_keyed(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
) -> Result<ViewReport, tokio_postgres::Error> {
    let mut r = ViewReport {
        verdict: Verdict::Ok,
        problems: Vec::new(),
        warnings: Vec::new(),
        facts: vec![format!(
            "keyed: table filled from {} by key ({})",
            keyed.query,
            keyed
                .key
                .iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        )],
    };
    match shape(client, view, keyed).await? {
        Err(m) => r.problems.push(m.message),
        Ok(s) => {
            privileges(client, view, keyed, &mut r).await?;
            unique_key(client, view, keyed, &mut r).await?;
            plan(client, view, keyed, &s, &mut r).await?;
            triggers(client, view, keyed, &mut r).await?;
        }
    }
    r.verdict = if !r.problems.is_empty() {
        Verdict::Fail
    } else if !r.warnings.is_empty() {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    Ok(r)
}

async fn privileges(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    let table = view.name.quoted();
    let query = keyed.query.quoted();
    let row = client
        .query_typed(
            "SELECT has_table_privilege($1::text::regclass, 'INSERT') \
                AND has_table_privilege($1::text::regclass, 'DELETE'), \
                    has_table_privilege($2::text::regclass, 'SELECT')",
            &[(&table, Type::TEXT), (&query, Type::TEXT)],
        )
        .await?;
    let (write, read): (bool, bool) = (row[0].get(0), row[0].get(1));
    if !write {
        r.problems.push(format!(
            "refreshd's role may not INSERT into and DELETE from {}: GRANT INSERT, DELETE, SELECT ON {} TO it",
            view.name, table
        ));
    }
    if !read {
        r.problems.push(format!(
            "refreshd's role may not SELECT from {}: GRANT SELECT ON {} TO it",
            keyed.query, query
        ));
    }
    Ok(())
}

/// A unique index without predicate or expressions whose columns are all key columns
/// (so no two rows share a key), and NOT NULL key columns.
async fn unique_key(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    let table = view.name.quoted();
    let rows = client
        .query_typed(
            "SELECT EXISTS ( \
                 SELECT 1 FROM pg_catalog.pg_index i \
                  WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indisvalid \
                    AND i.indpred IS NULL AND i.indexprs IS NULL \
                    AND (SELECT bool_and(a.attname = ANY ($2::text[])) \
                           FROM unnest(i.indkey::int2[]) AS k(attnum) \
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)), \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                           WHERE a.attrelid = $1::text::regclass AND a.attname = ANY ($2::text[]) \
                             AND NOT a.attnotnull ORDER BY a.attnum)",
            &[(&table, Type::TEXT), (&keyed.key, Type::TEXT_ARRAY)],
        )
        .await?;
    let unique: bool = rows[0].get(0);
    let nullable: Vec<String> = rows[0].get(1);
    let cols = keyed
        .key
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    if !unique {
        r.problems.push(format!(
            "the key ({cols}) is not unique in {}: ALTER TABLE {} ADD PRIMARY KEY ({cols})",
            view.name, table
        ));
    }
    if !nullable.is_empty() {
        r.warnings.push(format!(
            "key column(s) {} may be NULL: a group with a NULL key is only recomputed by a full recompute (make them NOT NULL)",
            nullable.join(", ")
        ));
    }
    Ok(())
}

/// EXPLAIN of the query restricted to one key (taken from the table): no sequential
/// scan of a base table with more than [`LARGE_TABLE_ROWS`] rows.
async fn plan(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    let cols: Vec<String> = keyed
        .key
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect();
    let not_null: Vec<String> = keyed
        .key
        .iter()
        .map(|k| format!("{} IS NOT NULL", quote_ident(k)))
        .collect();
    let sample = client
        .query_typed(
            &format!(
                "SELECT {} FROM {} WHERE {} LIMIT 1",
                cols.join(", "),
                view.name.quoted(),
                not_null.join(" AND ")
            ),
            &[],
        )
        .await?;
    let Some(row) = sample.first() else {
        r.warnings.push(
            "the table is empty, so the plan of the query restricted to one key was not checked: run check again after refreshd filled it".into(),
        );
        return Ok(());
    };
    let key: Vec<String> = (0..keyed.key.len()).map(|i| row.get(i)).collect();
    let cond: Vec<String> = keyed
        .key
        .iter()
        .zip(&shape.key_types)
        .enumerate()
        .map(|(i, (k, ty))| format!("d.{} = ${}::text::{ty}", quote_ident(k), i + 1))
        .collect();
    let sql = format!(
        "EXPLAIN (VERBOSE, FORMAT JSON) SELECT * FROM {} AS d WHERE {}",
        keyed.query.quoted(),
        cond.join(" AND ")
    );
    let params: Vec<(&(dyn ToSql + Sync), Type)> = key
        .iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    let rows = client.query_typed(&sql, &params).await?;
    let mut scanned = Vec::new();
    for row in &rows {
        seq_scans(&row.get::<_, serde_json::Value>(0), &mut scanned);
    }
    scanned.sort();
    scanned.dedup();
    let mut large = Vec::new();
    for (schema, name) in scanned {
        let n = rows_at_least(client, &schema, &name).await?;
        if n > LARGE_TABLE_ROWS {
            large.push(format!(
                "{}.{} (~{n} rows)",
                quote_ident(&schema),
                quote_ident(&name)
            ));
        }
    }
    if large.is_empty() {
        r.facts
            .push("one key's rows are found without scanning a large table".into());
    } else {
        r.problems.push(format!(
            "the query restricted to one key scans {} sequentially: index the columns the key is joined and filtered on, or a keyed refresh costs as much as a full one",
            large.join(", ")
        ));
    }
    Ok(())
}

/// `(schema, relation)` of every sequential scan in an EXPLAIN (VERBOSE, FORMAT JSON).
fn seq_scans(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(o) => {
            if o.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
                if let (Some(s), Some(n)) = (
                    o.get("Schema").and_then(|s| s.as_str()),
                    o.get("Relation Name").and_then(|s| s.as_str()),
                ) {
                    out.push((s.to_string(), n.to_string()));
                }
            }
            for child in o.values() {
                seq_scans(child, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| seq_scans(c, out)),
        _ => {}
    }
}

/// The table's estimated rows, counted (up to just past the limit) when it was never
/// analyzed.
async fn rows_at_least(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<i64, tokio_postgres::Error> {
    let rel = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let est: f32 = client
        .query_typed(
            "SELECT reltuples FROM pg_catalog.pg_class WHERE oid = $1::text::regclass",
            &[(&rel, Type::TEXT)],
        )
        .await?[0]
        .get(0);
    if est > 0.0 {
        return Ok(est as i64);
    }
    let n: i64 = client
        .query_typed(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {rel} LIMIT {}) AS s",
                LARGE_TABLE_ROWS + 1
            ),
            &[],
        )
        .await?[0]
        .get(0);
    Ok(n)
}

/// Some enabled trigger on a table the query reads sends keys on one of the channels:
/// row-level, or statement-level with a transition table. "Sends on the channel" is
/// read from the function's source, or from a function it calls by name (one level).
async fn triggers(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    if view.channels.is_empty() {
        r.warnings.push(
            "no channels: nothing names dirty keys, so only schedules and forced refreshes recompute (everything)".into(),
        );
        return Ok(());
    }
    let query_oid: u32 = client
        .query_typed(
            "SELECT $1::text::regclass::oid",
            &[(&keyed.query.quoted(), Type::TEXT)],
        )
        .await?[0]
        .get(0);
    let tables = transitive_tables(client, query_oid).await?;
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let rows = client
        .query_typed(
            &format!(
                "SELECT DISTINCT c.relname::text, t.tgname::text, \
                    (t.tgtype & 1) = 1 OR t.tgoldtable IS NOT NULL OR t.tgnewtable IS NOT NULL \
               FROM pg_catalog.pg_trigger t \
               JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
               JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
               CROSS JOIN unnest($2::text[]) AS ch \
               CROSS JOIN LATERAL (SELECT {re} AS re) m \
              WHERE t.tgrelid = ANY ($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                AND (p.prosrc ~ m.re OR encode(t.tgargs, 'escape') ~ m.re \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p2 \
                                 WHERE p2.oid <> p.oid AND p2.prosrc ~ m.re \
                                   AND strpos(p.prosrc, p2.proname) > 0)) \
              ORDER BY 1, 2",
                re = crate::pg::capture::CHANNEL_WORD_RE_SQL
            ),
            &[(&oids, Type::OID_ARRAY), (&view.channels, Type::TEXT_ARRAY)],
        )
        .await?;
    let keyed_triggers: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    if keyed_triggers.is_empty() && rows.is_empty() {
        r.problems.push(format!(
            "no trigger on the tables {} reads sends on {}: changes would go unnoticed (see sql/attendance/005_keyed_statistics.sql for triggers that send keys)",
            keyed.query,
            view.channels.join(", ")
        ));
    } else if keyed_triggers.is_empty() {
        r.warnings.push(format!(
            "the triggers that notify {} are statement-level without transition tables, so they cannot name keys: every notification recomputes every group",
            view.channels.join(", ")
        ));
    } else {
        r.facts
            .push(format!("keys sent by {}", keyed_triggers.join(", ")));
    }
    Ok(())
}
