//! `refreshd check` for a keyed view: the table and its query fit, the key is unique in
//! the table, the query restricted to one key does not scan large tables, some
//! trigger sends keys on the view's channels, and the consume function of its change
//! buffer (`buffer`) is one refreshd can call.
//!
//! What is a problem (exit 1) and what a warning follows SPEC "check": a problem is what
//! keeps refreshd from keeping the view exact (a missing object, a privilege, no capture,
//! a consume function a refresh cannot call); a warning is what only makes it slower (a
//! group's rows found by a sequential scan, NULL keys: refreshd then recomputes
//! everything, which is correct).

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::config::{Keyed, ViewConfig};
use crate::pg::catalog::{transitive_tables, Verdict, ViewReport};
use crate::pg::ident::{quote_ident, QualifiedName};
use crate::pg::keyed::{shape, Shape};

/// A base table larger than this, scanned whole by the query restricted to one key,
/// makes a keyed refresh of a group cost about what a full one does (a warning).
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
    if let Some(buffer) = &keyed.buffer {
        consume_function(client, view, keyed, buffer, &mut r).await?;
        guard(client, view, buffer, &mut r).await?;
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
        null_keys(client, view, &nullable, r).await?;
    }
    Ok(())
}

/// Nullable key columns: a warning only when the table holds a group with a NULL key
/// member (a NULL matches no key, so such a group is only recomputed with everything,
/// and each change to it makes the refresh recompute everything: correct, and slow).
/// Nullable columns alone are the rule, not a fault: a materialized view's columns are
/// all nullable, and so is the table `init --keyed --in-place` makes of it.
async fn null_keys(
    client: &Client,
    view: &ViewConfig,
    nullable: &[String],
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    let cols: Vec<String> = nullable.iter().map(|k| quote_ident(k)).collect();
    let any_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NULL")).collect();
    let n: i64 = client
        .query_typed(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT 1000) AS s",
                view.name.quoted(),
                any_null.join(" OR ")
            ),
            &[],
        )
        .await?[0]
        .get(0);
    if n == 0 {
        r.facts.push(format!(
            "no NULL in the nullable key column(s) {}",
            cols.join(", ")
        ));
        return Ok(());
    }
    let not_null: Vec<String> = cols
        .iter()
        .map(|c| format!("ALTER COLUMN {c} SET NOT NULL"))
        .collect();
    r.warnings.push(format!(
        "{}{n} row(s) have a NULL in key column(s) {}: a NULL matches no key, so every change to such a group recomputes the whole view; \
         keep NULLs out of the definition's key (then ALTER TABLE {} {})",
        if n >= 1000 { "at least " } else { "" },
        cols.join(", "),
        view.name.quoted(),
        not_null.join(", ")
    ));
    Ok(())
}

/// One key of the table, as text (the first row without a NULL in the key), for
/// [`plan`]; `None` when there is none.
async fn sample_key(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
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
    Ok(sample
        .first()
        .map(|row| (0..keyed.key.len()).map(|i| row.get(i)).collect()))
}

/// EXPLAIN of the query restricted to one key (taken from the table): a sequential
/// scan of a base table with more than [`LARGE_TABLE_ROWS`] rows is a warning, with
/// what to do about it (an index on its filter, or nothing when a group is a large
/// part of the table). Not a problem: the refresh stays exact, and refreshd's cost
/// model recomputes everything when the dirty groups would cost more.
async fn plan(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    let Some(key) = sample_key(client, view, keyed).await? else {
        r.warnings.push(
            "the table is empty, so the plan of the query restricted to one key was not checked: run check again after refreshd filled it".into(),
        );
        return Ok(());
    };
    let cond: Vec<String> = keyed
        .key
        .iter()
        .zip(shape.key_types.iter().zip(&shape.key_ops))
        .enumerate()
        .map(|(i, (k, (ty, op)))| format!("d.{} {op} ${}::text::{ty}", quote_ident(k), i + 1))
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
    // One finding per table: the scan that keeps the most rows.
    scanned.sort_by(|a, b| {
        (&a.schema, &a.name)
            .cmp(&(&b.schema, &b.name))
            .then(b.rows.total_cmp(&a.rows))
    });
    scanned.dedup_by(|a, b| (&a.schema, &a.name) == (&b.schema, &b.name));
    let mut large = Vec::new();
    for scan in scanned {
        let n = rows_at_least(client, &scan.schema, &scan.name).await?;
        if n > LARGE_TABLE_ROWS {
            large.push(scan_finding(&scan, n));
        }
    }
    if large.is_empty() {
        r.facts
            .push("one key's rows are found without scanning a large table".into());
    } else {
        r.warnings.push(format!(
            "the query restricted to one key scans {}; refreshd stays exact (it recomputes everything whenever that is cheaper than the dirty groups)",
            large.join("; ")
        ));
    }
    Ok(())
}

/// A group's share of a table at or above which no index would spare the scan: the
/// view has a few big groups (TPC-H Q1's four over lineitem).
const BIG_GROUP_SHARE: f64 = 0.1;

/// The longest filter quoted in a finding.
const MAX_FILTER_CHARS: usize = 200;

/// What to do about one large table scanned for one key: an index on the filter's
/// columns, or nothing when one group is a large part of the table anyway.
fn scan_finding(scan: &SeqScan, n: i64) -> String {
    let table = format!("{}.{}", quote_ident(&scan.schema), quote_ident(&scan.name));
    let share = (scan.rows / n.max(1) as f64).min(1.0);
    if scan.filter.is_none() && share >= BIG_GROUP_SHARE {
        // No filter on the scan: the key is applied only after a join, so this is no
        // group's size but the whole table (a review read "one group being ~105%").
        return format!(
            "all of {table} (~{n} rows) sequentially: the key is applied only after joining it, not to its rows (an index on the column it is joined by may let PostgreSQL start from the key's side; or its changes take deltas)"
        );
    }
    if share >= BIG_GROUP_SHARE {
        return format!(
            "{table} (~{n} rows) sequentially, one group being ~{:.0}% of it: no index would help, a keyed refresh of a group costs about what a full one does (fine for a view of a few big groups, or one whose fact table takes deltas)",
            share * 100.0
        );
    }
    let filter = match &scan.filter {
        Some(f) if f.chars().count() > MAX_FILTER_CHARS => {
            format!(
                " filtered by {}...",
                f.chars().take(MAX_FILTER_CHARS).collect::<String>()
            )
        }
        Some(f) => format!(" filtered by {f}"),
        None => String::new(),
    };
    format!(
        "{table} (~{n} rows) sequentially{filter} for ~{:.0} row(s): an index on the columns that filter (or the key's join) compares lets a keyed refresh read one group instead of the table",
        scan.rows
    )
}

/// A sequential scan in an EXPLAIN: the table, its filter and the rows the planner
/// expects it to keep.
struct SeqScan {
    schema: String,
    name: String,
    filter: Option<String>,
    rows: f64,
}

/// Every sequential scan in an EXPLAIN (VERBOSE, FORMAT JSON).
fn seq_scans(v: &serde_json::Value, out: &mut Vec<SeqScan>) {
    scans_under(v, 1.0, out)
}

/// [`seq_scans`] below a node whose processes each see `1/divisor` of the rows: a
/// parallel scan's "Plan Rows" is per process, so it is scaled back by PostgreSQL's
/// parallel divisor (workers, plus the leader's share: 1 − 0.3 × workers).
fn scans_under(v: &serde_json::Value, divisor: f64, out: &mut Vec<SeqScan>) {
    match v {
        serde_json::Value::Object(o) => {
            let node = o.get("Node Type").and_then(|t| t.as_str());
            if node == Some("Seq Scan") {
                if let (Some(s), Some(n)) = (
                    o.get("Schema").and_then(|s| s.as_str()),
                    o.get("Relation Name").and_then(|s| s.as_str()),
                ) {
                    let rows = o.get("Plan Rows").and_then(|r| r.as_f64()).unwrap_or(0.0);
                    let parallel = o.get("Parallel Aware").and_then(|p| p.as_bool()) == Some(true);
                    out.push(SeqScan {
                        schema: s.to_string(),
                        name: n.to_string(),
                        filter: o.get("Filter").and_then(|f| f.as_str()).map(String::from),
                        rows: if parallel { rows * divisor } else { rows },
                    });
                }
            }
            let divisor = match o.get("Workers Planned").and_then(|w| w.as_f64()) {
                Some(w) if matches!(node, Some("Gather" | "Gather Merge")) => {
                    w + (1.0 - 0.3 * w).max(0.0)
                }
                _ => divisor,
            };
            for child in o.values() {
                scans_under(child, divisor, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| scans_under(c, divisor, out)),
        _ => {}
    }
}

/// The table's estimated rows, counted (up to just past the limit) when it was never
/// analyzed and refreshd's role may read it (it needs no SELECT on the base tables of
/// a definition it reads as the definition's owner): 0 otherwise, as the catalog says.
async fn rows_at_least(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<i64, tokio_postgres::Error> {
    let rel = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let row = client
        .query_typed(
            "SELECT reltuples, pg_catalog.has_table_privilege(oid, 'SELECT') \
               FROM pg_catalog.pg_class WHERE oid = $1::text::regclass",
            &[(&rel, Type::TEXT)],
        )
        .await?;
    let (est, readable): (f32, bool) = (row[0].get(0), row[0].get(1));
    if est > 0.0 || !readable {
        return Ok(est.max(0.0) as i64);
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
/// The view's triggers left on tables it no longer reads (a detached partition): a
/// problem, since their changes still reach its buffers (`run` with `capture =
/// "managed"` drops them).
async fn stray_triggers(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    // Its query names refreshd's capture function: a role without USAGE on schema
    // refreshd cannot run it (another problem, reported with the consume function).
    let Ok(facts) = crate::pg::capture::inspect(client, std::slice::from_ref(&keyed.query)).await
    else {
        return Ok(());
    };
    let read: std::collections::BTreeSet<u32> = facts
        .views
        .first()
        .and_then(|v| v.as_ref())
        .map(|ts| ts.iter().map(|t| t.oid).collect())
        .unwrap_or_default();
    let triggers = crate::pg::capture::channel_triggers(client, &view.channels).await?;
    for (table, names) in crate::pg::capture::strays(&view.channels, &read, &triggers) {
        r.problems.push(format!(
            "{table}: {}",
            crate::pg::capture::stray_why(&names)
        ));
    }
    Ok(())
}

/// The problem with the record a generated conversion left on its definition view
/// (`query_oid`), if any: its capture was generated for names, columns or a text the
/// definition no longer has (see [`crate::incremental::generate::stale_capture_sql`]),
/// or, for a view whose configuration names a buffer (only `init --keyed` writes one),
/// the record is gone ([`crate::pg::capture::RECORD_LOST`]). One query, under the
/// settings the record was printed with.
async fn record_problem(
    client: &Client,
    keyed: &Keyed,
    query_oid: u32,
) -> Result<Option<String>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {}, coalesce(pg_catalog.starts_with(pg_catalog.obj_description($1, 'pg_class'), $2), false)",
        crate::incremental::generate::stale_capture_sql("$1::pg_catalog.oid")
    );
    let rows = crate::pg::capture::with_catalog_path(
        client,
        client.query_typed(
            &sql,
            &[
                (&query_oid, Type::OID),
                (
                    &crate::incremental::generate::DEFINITION_COMMENT_PREFIX,
                    Type::TEXT,
                ),
            ],
        ),
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(if row.get::<_, Option<bool>>(0) == Some(true) {
        Some(format!(
            "{} (the capture recorded the names {} read when it was generated)",
            crate::pg::capture::STALE_CAPTURE,
            keyed.query.shown()
        ))
    } else if keyed.buffer.is_some() && !row.get::<_, bool>(1) {
        Some(format!(
            "{}: {}",
            keyed.query.shown(),
            crate::pg::capture::RECORD_LOST
        ))
    } else {
        None
    })
}

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
    if let Some(problem) = record_problem(client, keyed, query_oid).await? {
        r.problems.push(problem);
    }
    stray_triggers(client, view, keyed, r).await?;
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
                AND ({src} ~ m.re OR encode(t.tgargs, 'escape') ~ m.re \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p2 \
                                 WHERE p2.oid <> p.oid AND p2.prosrc ~ m.re \
                                   AND strpos(p.prosrc, p2.proname) > 0)) \
              ORDER BY 1, 2",
                re = crate::pg::capture::CHANNEL_WORD_RE_SQL,
                src = crate::pg::capture::TRIGGER_SOURCE_SQL
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

/// What the catalog says about one function of the `buffer` name.
struct ConsumeFacts {
    /// `regprocedure` text: name and argument types.
    signature: String,
    args: i32,
    /// `pg_proc.prokind`: `f` a function.
    kind: String,
    returns_set: bool,
    volatile: String,
    security_definer: bool,
    owner: String,
    /// refreshd's role has the owner's privileges (is it, a member of it, or superuser).
    as_owner: bool,
    executable: bool,
    /// refreshd's role may use the function's schema (USAGE), without which it cannot
    /// name it.
    schema_usable: bool,
    /// refreshd's role (`current_user`).
    role: String,
    /// The result columns' types (`None`: `RETURNS SETOF record` without columns).
    result: Option<Vec<(u32, String)>>,
}

/// `buffer`: the consume function every refresh of the view calls first
/// (`SELECT ... FROM buffer() AS b(k1, ..., all_)`, [`crate::pg::keyed::consume_sql`])
/// exists without arguments, returns a set of the key columns and a boolean
/// "everything" flag (what `init --keyed` generates), is VOLATILE (it deletes from the
/// buffer), and refreshd's role may execute it with the privileges it needs: SECURITY
/// DEFINER (it runs as its owner, who owns the buffer), or SECURITY INVOKER where
/// refreshd's role has its owner's privileges (no weaker than SECURITY DEFINER). A
/// key column of another type than the table's is a warning (the refresh casts keys
/// through text).
async fn consume_function(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    buffer: &QualifiedName,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    let what = format!("buffer {}() of {}", buffer.shown(), view.name.shown());
    let candidates = consume_facts(client, buffer).await?;
    let Some(f) = candidates.iter().find(|f| f.args == 0) else {
        r.problems.push(if candidates.is_empty() {
            format!("{what}: no such function (run init --keyed again, which creates it, or correct buffer)")
        } else {
            format!(
                "{what}: no such function without arguments, refreshd calls it without any (found {})",
                candidates
                    .iter()
                    .map(|f| f.signature.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        return Ok(());
    };
    let before = r.problems.len();
    let want = consume_result(client, view, keyed).await?;
    if f.kind != "f" {
        r.problems.push(format!(
            "{what}: not a plain function (a procedure or an aggregate): refreshd selects from it"
        ));
    } else if let Err(m) = consume_columns(f, keyed, &want) {
        r.problems.push(format!("{what}: {m}"));
    } else if let Some(m) = key_types_differ(f, keyed, &want) {
        r.warnings.push(format!("{what}: {m}"));
    }
    if f.volatile != "v" {
        r.problems.push(format!(
            "{what}: declared {}, but it deletes what it returns from the buffer, which only a VOLATILE function may: ALTER FUNCTION {}() VOLATILE",
            if f.volatile == "s" { "STABLE" } else { "IMMUTABLE" },
            buffer.quoted()
        ));
    }
    if !f.schema_usable {
        r.problems.push(format!(
            "{what}: refreshd's role {} may not use schema {}: GRANT USAGE ON SCHEMA {} TO {}",
            crate::pg::ident::escape_display(&f.role),
            crate::pg::ident::escape_display(&buffer.schema),
            quote_ident(&buffer.schema),
            quote_ident(&f.role)
        ));
    }
    if !f.executable {
        r.problems.push(format!(
            "{what}: refreshd's role {} may not execute it: GRANT EXECUTE ON FUNCTION {}() TO {}",
            crate::pg::ident::escape_display(&f.role),
            buffer.quoted(),
            quote_ident(&f.role)
        ));
    }
    if !f.security_definer && !f.as_owner {
        r.problems.push(format!(
            "{what}: SECURITY INVOKER, so it runs with the privileges of refreshd's role {}, which lack those of its owner {}: ALTER FUNCTION {}() SECURITY DEFINER (init --keyed makes it so)",
            crate::pg::ident::escape_display(&f.role),
            crate::pg::ident::escape_display(&f.owner),
            buffer.quoted()
        ));
    }
    if r.problems.len() == before {
        r.facts
            .push(format!("buffer consumed by {}()", buffer.shown()));
    }
    Ok(())
}

/// Every function named `buffer`, those without arguments first.
async fn consume_facts(
    client: &Client,
    buffer: &QualifiedName,
) -> Result<Vec<ConsumeFacts>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT p.oid::pg_catalog.regprocedure::text, p.pronargs::int4, p.prokind::text, \
                    p.proretset, p.provolatile::text, p.prosecdef, \
                    pg_catalog.pg_get_userbyid(p.proowner)::text, \
                    pg_catalog.pg_has_role(p.proowner, 'USAGE'), \
                    pg_catalog.has_function_privilege(p.oid, 'EXECUTE'), \
                    r.types, \
                    ARRAY(SELECT pg_catalog.format_type(t.oid, NULL) \
                            FROM unnest(r.types) WITH ORDINALITY AS t(oid, i) ORDER BY t.i), \
                    pg_catalog.has_schema_privilege(n.oid, 'USAGE'), current_user::text \
               FROM pg_catalog.pg_proc p \
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
               JOIN pg_catalog.pg_type rt ON rt.oid = p.prorettype \
              CROSS JOIN LATERAL (SELECT CASE \
                   WHEN p.proallargtypes IS NOT NULL THEN \
                        ARRAY(SELECT a.t FROM unnest(p.proallargtypes, p.proargmodes) WITH ORDINALITY AS a(t, m, i) \
                               WHERE a.m IN ('o', 'b', 't') ORDER BY a.i) \
                   WHEN rt.typrelid <> 0 THEN \
                        ARRAY(SELECT at.atttypid FROM pg_catalog.pg_attribute at \
                               WHERE at.attrelid = rt.typrelid AND at.attnum > 0 AND NOT at.attisdropped \
                               ORDER BY at.attnum) \
                   WHEN p.prorettype = 'pg_catalog.record'::pg_catalog.regtype THEN NULL \
                   ELSE ARRAY[p.prorettype] END AS types) r \
              WHERE n.nspname = $1 AND p.proname = $2 \
              ORDER BY p.pronargs, 1",
            &[(&buffer.schema, Type::TEXT), (&buffer.name, Type::TEXT)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ConsumeFacts {
            signature: row.get(0),
            args: row.get(1),
            kind: row.get(2),
            returns_set: row.get(3),
            volatile: row.get(4),
            security_definer: row.get(5),
            owner: row.get(6),
            as_owner: row.get(7),
            executable: row.get(8),
            result: row.get::<_, Option<Vec<u32>>>(9).map(|oids| {
                oids.into_iter()
                    .zip(row.get::<_, Vec<String>>(10))
                    .collect()
            }),
            schema_usable: row.get(11),
            role: row.get(12),
        })
        .collect())
}

/// The table's key columns' types (oid and name), in `key` order; empty when the table
/// does not exist (reported on its own).
async fn consume_result(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
) -> Result<Vec<(u32, String)>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod) \
               FROM unnest($2::text[]) WITH ORDINALITY AS k(name, i) \
               JOIN pg_catalog.pg_attribute a \
                 ON a.attrelid = pg_catalog.to_regclass($1) AND a.attname = k.name AND NOT a.attisdropped \
              ORDER BY k.i",
            &[(&view.name.quoted(), Type::TEXT), (&keyed.key, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The consume function's result against what the refresh reads (`Err`: a refresh
/// would fail): a set of rows of the key columns and then a boolean.
fn consume_columns(
    f: &ConsumeFacts,
    keyed: &Keyed,
    table_key: &[(u32, String)],
) -> Result<(), String> {
    let want = {
        let cols: Vec<String> = keyed
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let ty = table_key.get(i).map_or("<type>", |t| t.1.as_str());
                format!("{} {ty}", quote_ident(k))
            })
            .collect();
        format!("RETURNS TABLE ({}, all_ boolean)", cols.join(", "))
    };
    let Some(result) = &f.result else {
        return Err(format!(
            "returns records without declared columns; refreshd reads the key columns and an all-flag: {want}"
        ));
    };
    if !f.returns_set {
        return Err(format!(
            "returns one row, not a set of them (every buffered key is a row): {want}"
        ));
    }
    let shown: Vec<&str> = result.iter().map(|t| t.1.as_str()).collect();
    if result.len() != keyed.key.len() + 1 || result.last().map(|t| t.1.as_str()) != Some("boolean")
    {
        return Err(format!(
            "returns ({}), refreshd reads the {} key column(s) and then a boolean all-flag: {want}",
            shown.join(", "),
            keyed.key.len()
        ));
    }
    Ok(())
}

/// Key columns the consume function returns with another type than the table's: the
/// refresh reads them as text and casts them to the table's types, which works as
/// long as every value's text is one of the table's type (not what init generates).
fn key_types_differ(
    f: &ConsumeFacts,
    keyed: &Keyed,
    table_key: &[(u32, String)],
) -> Option<String> {
    let result = f.result.as_ref()?;
    let differ: Vec<String> = keyed
        .key
        .iter()
        .zip(result)
        .zip(table_key)
        .filter(|((_, got), want)| got.0 != want.0)
        .map(|((k, got), want)| {
            format!(
                "{} as {} where the table has {}",
                quote_ident(k),
                got.1,
                want.1
            )
        })
        .collect();
    (!differ.is_empty()).then(|| {
        format!(
            "returns key column(s) {}: the refresh casts them through text, so a value that is not one of the table's type fails it",
            differ.join(", ")
        )
    })
}

/// How each base table's changes reach the keys (SPEC "Incremental maintenance":
/// `check` says which of the three cases applies, and why), as
/// [`crate::pg::definitions::derivation_lines`] derived it. Not a problem when it cannot
/// be derived: the keyed refresh recomputes the groups its capture names whatever the
/// derivation says.
pub fn derivation_facts(
    r: &mut ViewReport,
    derived: &Result<crate::pg::definitions::Derived, String>,
) {
    match derived {
        Ok(d) => {
            r.facts
                .extend(d.lines.iter().map(|line| format!("derived: {line}")));
            r.warnings.extend(d.warnings.iter().cloned());
            if !d.warnings.is_empty() {
                r.verdict = r.verdict.max(crate::pg::catalog::Verdict::Warn);
            }
        }
        Err(why) => r
            .facts
            .push(format!("not derived from its definition: {why}")),
    }
}

/// The conversion's foreign-key guard, if it has one (incremental::guard): its state as
/// a fact; a guard held that nobody keeps is a problem (a key dropped later would go
/// unseen, and dimension INSERTs uncaptured for good): refreshd's role cannot call the
/// keeper, or the view's capture is not checked (`capture = "off"`). An off guard that
/// refreshd cannot turn on is a warning (INSERTs stay captured: slower, not wrong).
async fn guard(
    client: &Client,
    view: &ViewConfig,
    consume: &QualifiedName,
    r: &mut ViewReport,
) -> Result<(), tokio_postgres::Error> {
    use crate::incremental::guard::{guard_function, guard_table};
    let (table, keeper) = (guard_table(consume), guard_function(consume));
    let signature = format!("{}(bigint)", keeper.quoted());
    // By name in the catalog: to_regclass fails without USAGE on the schema (which the
    // consume function's check reports).
    let row = client
        .query_one(
            "WITH t AS (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2), \
                  u AS (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM t) THEN false \
                                    ELSE pg_catalog.has_schema_privilege($1, 'USAGE') END AS usage) \
             SELECT EXISTS (SELECT 1 FROM t), \
                    CASE WHEN u.usage THEN pg_catalog.to_regprocedure($3) IS NOT NULL \
                              AND pg_catalog.has_function_privilege(pg_catalog.to_regprocedure($3), 'EXECUTE') \
                         ELSE false END, \
                    CASE WHEN u.usage THEN pg_catalog.has_table_privilege((SELECT oid FROM t), 'SELECT') \
                         ELSE false END \
               FROM u",
            &[&table.schema, &table.name, &signature],
        )
        .await?;
    let (exists, callable, readable): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !exists {
        return Ok(());
    }
    if !readable {
        // Without USAGE on schema refreshd the consume function's check reports it.
        r.facts.push(format!(
            "foreign-key guard: {} (its state not readable by this role)",
            table.shown()
        ));
        return Ok(());
    }
    // A replica-role transaction's mark turns it off until the keeper takes it.
    let marks = crate::incremental::guard::guard_marks(consume);
    let (holds, owed) = client
        .query_opt(
            &format!(
                "SELECT holds AND NOT EXISTS (SELECT 1 FROM {}), owed FROM {}",
                marks.quoted(),
                table.quoted()
            ),
            &[],
        )
        .await?
        .map_or((false, false), |row| (row.get(0), row.get(1)));
    r.facts.push(format!(
        "foreign-key guard: {}",
        match (holds, owed) {
            (true, _) => "held (the dimension INSERTs it guards are not captured)",
            (false, true) => "off, a full recompute owed (refreshd waits for the writers of the moment it broke)",
            (false, false) => "off (the INSERTs it would guard are captured; refreshd turns it on when it finds the keys in force)",
        }
    ));
    let unkept = if !callable {
        Some(format!(
            "refreshd's role cannot call {signature}: GRANT USAGE ON SCHEMA refreshd and EXECUTE ON FUNCTION {signature}"
        ))
    } else if !crate::engine::capture::checked(view) {
        Some("its capture is not checked (capture = \"off\", or no channels): nothing keeps the guard".to_string())
    } else {
        None
    };
    if let Some(why) = unkept {
        let m = format!("foreign-key guard of {}: {why}", view.name.shown());
        if holds {
            r.problems.push(format!(
                "{m}; it is held, so a key dropped or disabled later would go unseen and dimension INSERTs uncaptured"
            ));
        } else {
            r.warnings
                .push(format!("{m}; it stays off (INSERTs captured)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scans(plan: serde_json::Value) -> Vec<(String, Option<String>, f64)> {
        let mut out = Vec::new();
        seq_scans(&plan, &mut out);
        out.into_iter()
            .map(|s| (format!("{}.{}", s.schema, s.name), s.filter, s.rows))
            .collect()
    }

    #[test]
    fn a_parallel_scans_rows_are_counted_for_every_process() {
        let plan = serde_json::json!([{"Plan": {
            "Node Type": "Gather", "Workers Planned": 2, "Plans": [{
                "Node Type": "Seq Scan", "Parallel Aware": true, "Schema": "s",
                "Relation Name": "big", "Filter": "(g = 1)", "Plan Rows": 1000.0
            }, {
                "Node Type": "Seq Scan", "Parallel Aware": false, "Schema": "s",
                "Relation Name": "small", "Plan Rows": 10.0
            }]
        }}]);
        assert_eq!(
            scans(plan),
            vec![
                ("s.big".to_string(), Some("(g = 1)".to_string()), 2400.0),
                ("s.small".to_string(), None, 10.0)
            ]
        );
    }

    #[test]
    fn a_scan_says_whether_an_index_would_help() {
        let scan = |rows: f64, filter: Option<&str>| SeqScan {
            schema: "s".into(),
            name: "big".into(),
            filter: filter.map(String::from),
            rows,
        };
        let small = scan_finding(&scan(400.0, Some("(big.g = 42)")), 20_000);
        assert!(
            small.starts_with("\"s\".\"big\" (~20000 rows) sequentially filtered by (big.g = 42) for ~400 row(s): an index"),
            "{small}"
        );
        let big = scan_finding(&scan(5_000.0, Some("(big.flag = 1)")), 20_000);
        assert!(
            big.contains("one group being ~25% of it: no index would help"),
            "{big}"
        );
        // No filter on the scan (the key applies after a join): the whole table, not a
        // group "~105%" of it.
        let whole = scan_finding(&scan(21_000.0, None), 20_000);
        assert!(
            whole.starts_with("all of \"s\".\"big\" (~20000 rows) sequentially: the key is applied only after joining it"),
            "{whole}"
        );
        let long = scan_finding(&scan(1.0, Some(&"x".repeat(500))), 20_000);
        assert!(long.contains(&format!("{}...", "x".repeat(MAX_FILTER_CHARS))));
        assert!(!long.contains(&"x".repeat(MAX_FILTER_CHARS + 1)));
    }
}
