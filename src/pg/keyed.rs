//! Keyed views: a table kept equal to a plain view (the definition), recomputed one
//! group (key value) at a time. Everything here is one transaction per refresh; key
//! values only ever travel as bind parameters, cast on the server to the key columns'
//! types, never as SQL text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::config::{Keyed, ViewConfig};
use crate::pg::ident::{quote_ident, QualifiedName};
use crate::pg::outcome::{
    quote_literal, FailureClass, RefreshError, RefreshKind, Refreshed, CLIENT_GRACE,
};

/// One key: the text form of each key column's value, in `key` order.
pub type Key = Vec<String>;

/// What a keyed refresh recomputes.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Every group: delete all rows, insert the whole definition.
    All,
    /// These groups only.
    Keys(Vec<Key>),
    /// These groups, unless a probe says recomputing everything costs less: for a
    /// view whose time per group has not been measured yet (right after start), so
    /// that a first refresh of many groups is never assumed cheap. With the measured
    /// time of a full recompute, in seconds, when there is one.
    KeysIfCheaper(Vec<Key>, Option<f64>),
    /// A wake-up that named no keys (an empty payload), with the keys payloads named.
    /// For a view with a change buffer (`buffer`): these groups and those the buffer
    /// holds, unless they would cost more than everything (by the moving averages so
    /// far, seconds per key and for everything; without a time per key, by the
    /// planner). For a view without one, an empty payload means everything.
    Wake {
        keys: Vec<Key>,
        per_key: Option<f64>,
        full: Option<f64>,
    },
}

impl Work {
    /// The groups, when this is not a recompute of everything (for a wake-up, the
    /// groups payloads named: its buffer's are read by the refresh).
    pub fn keys(&self) -> Option<&[Key]> {
        match self {
            Work::All => None,
            Work::Keys(k) | Work::KeysIfCheaper(k, _) | Work::Wake { keys: k, .. } => Some(k),
        }
    }
}

/// The columns a keyed refresh writes, read from the catalog at each refresh (so an
/// `ALTER` between refreshes is seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The table's columns (the definition has the same ones), in the table's order.
    pub columns: Vec<String>,
    /// `format_type` of each key column, in `key` order.
    pub key_types: Vec<String>,
    /// The equality each key column is compared with, in `key` order: `=`, or
    /// `OPERATOR(schema.=)` where its type's (its default btree operator class's, a
    /// domain's base type's) is not in `pg_catalog`: an extension's type (`citext`)
    /// installed in a schema not on the search_path would otherwise compare as the
    /// type it casts to (text, case-sensitive), and a group recompute found only the
    /// rows spelled like its key.
    pub key_ops: Vec<String>,
    /// The role may create temporary tables: a full recompute computes the definition
    /// into one ([`replace_all_sql`]).
    pub temp: bool,
}

/// Why a table and a definition do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Misfit {
    /// The configuration key at fault (`name`, `query` or `key`).
    pub key: &'static str,
    pub message: String,
    /// One of them does not exist (yet): the refresh fails until it is created, but
    /// startup does not refuse it.
    pub missing: bool,
}

/// A column's name and `format_type`.
type Columns = Vec<(String, String)>;

/// Reads both relations' kinds and columns in one query, and whether the role may
/// create temporary tables.
/// Also the equality operators of the table's columns whose type's is not in
/// `pg_catalog` (see [`Shape::key_ops`]).
async fn columns(
    client: &Client,
    table: &QualifiedName,
    query: &QualifiedName,
) -> Result<([Option<(char, Columns)>; 2], bool, HashMap<String, String>), tokio_postgres::Error> {
    let schemas = [table.schema.as_str(), query.schema.as_str()];
    let names = [table.name.as_str(), query.name.as_str()];
    let rows = client
        .query_typed(
            "SELECT r.ord::int, c.relkind::text, a.attname::text, \
                    pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    (SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMPORARY')), \
                    (SELECT 'OPERATOR(' || pg_catalog.quote_ident(opn.nspname) || '.' || o.oprname || ')' \
                       FROM pg_catalog.pg_type ty \
                       JOIN pg_catalog.pg_opclass oc ON oc.opcdefault \
                        AND oc.opcintype = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END \
                       JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod AND am.amname = 'btree' \
                       JOIN pg_catalog.pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amopmethod = am.oid \
                        AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype AND ao.amopstrategy = 3 \
                       JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr \
                       JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace \
                      WHERE ty.oid = a.atttypid AND opn.nspname <> 'pg_catalog' LIMIT 1) \
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(schema, name, ord) \
               JOIN pg_catalog.pg_namespace n ON n.nspname = r.schema \
               JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = r.name \
               LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                    AND NOT a.attisdropped \
              ORDER BY r.ord, a.attnum",
            &[
                (&schemas.as_slice(), Type::TEXT_ARRAY),
                (&names.as_slice(), Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let mut out: [Option<(char, Columns)>; 2] = [None, None];
    let mut ops = HashMap::new();
    for r in &rows {
        let ord: i32 = r.get(0);
        let kind = r.get::<_, String>(1).chars().next().unwrap_or('?');
        let slot = out[(ord - 1) as usize].get_or_insert_with(|| (kind, Vec::new()));
        if let (Some(name), Some(ty)) =
            (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3))
        {
            if let (1, Some(op)) = (ord, r.get::<_, Option<String>>(5)) {
                ops.insert(name.clone(), op);
            }
            slot.1.push((name, ty));
        }
    }
    let temp = rows.first().is_some_and(|r| r.get::<_, bool>(4));
    Ok((out, temp, ops))
}

/// The shape of a keyed view, or why its table and definition do not fit.
pub async fn shape(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
) -> Result<Result<Shape, Misfit>, tokio_postgres::Error> {
    let ([table, query], temp, ops) = columns(client, &view.name, &keyed.query).await?;
    Ok(fit(view, keyed, table, query).map(|s| {
        let key_ops = keyed
            .key
            .iter()
            .map(|k| ops.get(k).cloned().unwrap_or_else(|| "=".into()))
            .collect();
        Shape { temp, key_ops, ..s }
    }))
}

/// Checks what [`columns`] read.
fn fit(
    view: &ViewConfig,
    keyed: &Keyed,
    table: Option<(char, Columns)>,
    query: Option<(char, Columns)>,
) -> Result<Shape, Misfit> {
    let tcols = the_table(view, table)?;
    let qcols = the_query(keyed, query)?;
    same_columns(view, keyed, &tcols, &qcols)?;
    let key_types = key_types(view, keyed, &tcols)?;
    Ok(Shape {
        columns: tcols.into_iter().map(|(n, _)| n).collect(),
        key_ops: vec!["=".into(); key_types.len()],
        key_types,
        temp: false,
    })
}

fn misfit(key: &'static str, message: String, missing: bool) -> Misfit {
    Misfit {
        key,
        message,
        missing,
    }
}

/// The table's columns, when `name` is a table.
fn the_table(view: &ViewConfig, table: Option<(char, Columns)>) -> Result<Columns, Misfit> {
    let Some((tkind, tcols)) = table else {
        return Err(misfit(
            "name",
            format!("table {} does not exist", view.name),
            true,
        ));
    };
    if !matches!(tkind, 'r' | 'p') {
        return Err(misfit(
            "name",
            format!(
                "{} is not a table (a keyed view is a table refreshd fills from its query; relkind '{tkind}')",
                view.name
            ),
            false,
        ));
    }
    Ok(tcols)
}

/// The query's columns, when `query` is a plain view.
fn the_query(keyed: &Keyed, query: Option<(char, Columns)>) -> Result<Columns, Misfit> {
    let Some((qkind, qcols)) = query else {
        return Err(misfit(
            "query",
            format!("view {} does not exist", keyed.query),
            true,
        ));
    };
    if qkind != 'v' {
        return Err(misfit(
            "query",
            format!(
                "{} is not a view (relkind '{qkind}'): the query of a keyed view is a plain view",
                keyed.query
            ),
            false,
        ));
    }
    Ok(qcols)
}

/// The table and its query have the same columns, of the same types (in any order).
fn same_columns(
    view: &ViewConfig,
    keyed: &Keyed,
    tcols: &Columns,
    qcols: &Columns,
) -> Result<(), Misfit> {
    for (name, ty) in tcols {
        match qcols.iter().find(|(n, _)| n == name) {
            None => {
                return Err(misfit(
                    "query",
                    format!(
                        "column {} of table {} is not in {}: the table and its query need the same columns",
                        quote_ident(name),
                        view.name,
                        keyed.query
                    ),
                    false,
                ))
            }
            Some((_, qty)) if qty != ty => {
                return Err(misfit(
                    "query",
                    format!(
                        "column {} is {ty} in table {} but {qty} in {}: the types must be the same",
                        quote_ident(name),
                        view.name,
                        keyed.query
                    ),
                    false,
                ))
            }
            Some(_) => {}
        }
    }
    if let Some((name, _)) = qcols
        .iter()
        .find(|(n, _)| !tcols.iter().any(|(t, _)| t == n))
    {
        return Err(misfit(
            "query",
            format!(
                "column {} of {} is not in table {}: the table and its query need the same columns",
                quote_ident(name),
                keyed.query,
                view.name
            ),
            false,
        ));
    }
    Ok(())
}

/// The type of each key column, in `key` order: every key is a column of the table.
fn key_types(view: &ViewConfig, keyed: &Keyed, tcols: &Columns) -> Result<Vec<String>, Misfit> {
    let mut key_types = Vec::with_capacity(keyed.key.len());
    for k in &keyed.key {
        match tcols.iter().find(|(n, _)| n == k) {
            Some((_, ty)) => key_types.push(ty.clone()),
            None => {
                return Err(misfit(
                    "key",
                    format!(
                        "key column {} is not a column of {}",
                        quote_ident(k),
                        view.name
                    ),
                    false,
                ))
            }
        }
    }
    Ok(key_types)
}

fn column_list(shape: &Shape) -> String {
    shape
        .columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The start of both keyed transactions.
/// - `jit = off`: one `UNION ALL` branch per key soon passes `jit_above_cost`, and
///   compiling them costs far more than running them (70 keys: 15 s with JIT, 0.5 s
///   without).
/// - `LOCK TABLE ... IN EXCLUSIVE MODE` (readers still read): keyed refreshes of one
///   table exclude each other on the server, so one that another process started (a
///   killed refreshd whose statement still runs, a replica, a removed and re-added view)
///   is waited for, and the next one's statements see what it committed. Without it the
///   second DELETE waits for the first's row locks, cannot see the first's new rows, and
///   its INSERT collides with them (23505).
fn prologue(view: &ViewConfig) -> String {
    format!(
        "{}; {}",
        crate::pg::outcome::begin(view),
        jit_off_and_lock(view)
    )
}

/// What both keyed transactions take after their timeouts (see [`prologue`]).
fn jit_off_and_lock(view: &ViewConfig) -> String {
    format!(
        "SET LOCAL jit = off; {FAITHFUL_TEXT}; LOCK TABLE {} IN EXCLUSIVE MODE",
        view.name.quoted()
    )
}

/// Output styles under which a key's text (a consumed key, `k::text`, bound back as
/// `$n::text::type`) is the key again, whatever the database or role sets: `DateStyle`
/// SQL, Postgres or German print a time zone as an abbreviation that may read back as
/// another zone (`IST`: India printed, Israel read before PostgreSQL 18), and
/// `extra_float_digits = 0` rounds a float8 (0.30000000000000004 printed as 0.3). ISO
/// (the field order for input is kept), every float digit, the default interval style.
/// Every keyed transaction sets them, so a definition casting such values to text
/// gives one text whether a group or everything is recomputed.
const FAITHFUL_TEXT: &str =
    "SET LOCAL datestyle = 'ISO'; SET LOCAL extra_float_digits = 3; SET LOCAL intervalstyle = 'postgres'";

/// The end of the transaction with `history` (the history row's INSERT, or empty).
fn epilogue_with(view: &ViewConfig, event: bool, history: &str) -> String {
    let mut sql = history.to_string();
    if event {
        sql.push_str(&format!(
            "SELECT pg_catalog.pg_notify({}, {}); ",
            quote_literal(crate::EVENTS_CHANNEL),
            quote_literal(&view.name.to_string())
        ));
    }
    sql.push_str("COMMIT");
    sql
}

/// Recomputing every group: one simple-protocol round trip, one transaction. Readers
/// see the old rows until it commits (a DELETE, not a TRUNCATE, which would lock them
/// out).
pub fn full_sql(view: &ViewConfig, keyed: &Keyed, shape: &Shape, event: bool) -> String {
    full_sql_with(view, keyed, shape, event, "")
}

/// [`full_sql`] with the history row's INSERT (or empty) before the COMMIT.
fn full_sql_with(
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    event: bool,
    history: &str,
) -> String {
    format!(
        "{}; {}; {}",
        prologue(view),
        replace_all_sql(view, keyed, shape),
        epilogue_with(view, event, history),
    )
}

/// Makes the table equal to its definition, writing only the rows that differ (as
/// `REFRESH MATERIALIZED VIEW CONCURRENTLY` does): the definition is computed once,
/// into a temporary table when the role may create one (`CREATE TEMP TABLE ... AS`,
/// which PostgreSQL may plan in parallel, as REFRESH CONCURRENTLY's own; then analyzed,
/// as REFRESH CONCURRENTLY does), else into a materialized CTE of the one statement
/// (never planned in parallel: it modifies data); the table's rows with no identical row in it
/// (the same key, and `*=`: the same bytes in every column) are deleted, then its rows
/// with no identical row in the table are inserted. Deleting every row and inserting
/// the whole definition wrote every row again at each full recompute (WAL, dead rows,
/// index entries) however little changed. The INSERT waits for the DELETE (a one-time
/// filter on the count of its rows: the DELETE runs to its end before the first row
/// is inserted), so a group whose values changed never meets its old row in the
/// unique index. The types of the table and the definition are the same ([`fit`]).
pub fn replace_all_sql(view: &ViewConfig, keyed: &Keyed, shape: &Shape) -> String {
    let cols = column_list(shape);
    let of = |alias: &str| {
        shape
            .columns
            .iter()
            .map(|c| format!("{alias}.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = |a: &str, b: &str| {
        let keys: Vec<String> = keyed
            .key
            .iter()
            .map(|k| format!("{a}.{k} = {b}.{k}", k = quote_ident(k)))
            .collect();
        format!(
            "{} AND {a}.* OPERATOR(pg_catalog.*=) {b}.*",
            keys.join(" AND ")
        )
    };
    let (prelude, new, cte, end) = if shape.temp {
        (
            format!(
                "CREATE TEMP TABLE \"refreshd_new\" ON COMMIT DROP AS SELECT {cols} FROM {}; \
                 ANALYZE pg_temp.\"refreshd_new\"; ",
                keyed.query.quoted()
            ),
            "pg_temp.\"refreshd_new\"",
            String::new(),
            "; DROP TABLE pg_temp.\"refreshd_new\"",
        )
    } else {
        (
            String::new(),
            "\"refreshd_new\"",
            format!(
                "\"refreshd_new\" AS MATERIALIZED (SELECT {cols} FROM {}), ",
                keyed.query.quoted()
            ),
            "",
        )
    };
    format!(
        "{prelude}WITH {cte}\"refreshd_gone\" AS (DELETE FROM {table} AS t WHERE NOT EXISTS \
         (SELECT FROM {new} AS n WHERE {t_in_n}) RETURNING 1) \
         INSERT INTO {table} ({cols}) SELECT {n_cols} FROM {new} AS n \
         WHERE (SELECT pg_catalog.count(*) FROM \"refreshd_gone\") OPERATOR(pg_catalog.>=) 0 \
         AND NOT EXISTS (SELECT FROM {table} AS t WHERE {n_in_t}){end}",
        table = view.name.quoted(),
        t_in_n = same("n", "t"),
        n_in_t = same("t", "n"),
        n_cols = of("n"),
    )
}

/// Deleting the table's rows of a set of keys: one text array per key column
/// (`$1`..`$n`), unnested, each element cast to its column's type. Element by element:
/// casting the array (`$1::text[]::integer[][]`) would flatten an array-typed key into
/// its elements, and a composite one into its fields.
pub fn delete_keys_sql(view: &ViewConfig, keyed: &Keyed, shape: &Shape) -> String {
    let arrays: Vec<String> = (1..=shape.key_types.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let slots: Vec<String> = (1..=shape.key_types.len())
        .map(|i| format!("k{i}"))
        .collect();
    let names: Vec<String> = keyed.key.iter().map(|k| quote_ident(k)).collect();
    let cast: Vec<String> = names
        .iter()
        .zip(&shape.key_types)
        .enumerate()
        .map(|(i, (k, ty))| format!("u.k{}::{ty} AS {k}", i + 1))
        .collect();
    let cond: Vec<String> = names
        .iter()
        .zip(&shape.key_ops)
        .map(|(k, op)| format!("t.{k} {op} k.{k}"))
        .collect();
    format!(
        "DELETE FROM {} AS t USING (SELECT {} FROM unnest({}) AS u({})) AS k WHERE {}",
        view.name.quoted(),
        cast.join(", "),
        arrays.join(", "),
        slots.join(", "),
        cond.join(" AND ")
    )
}

/// Inserting the definition's rows of `n` keys: one branch per key, each with the key
/// as constants (`d.k = $i::text::type`), because that is what PostgreSQL pushes down
/// into grouped subqueries and joins of the definition (an `= ANY(array)` or a join
/// with the key list is not pushed through an outer join, and computes every group).
pub fn insert_keys_sql(view: &ViewConfig, keyed: &Keyed, shape: &Shape, n: usize) -> String {
    let cols = column_list(shape);
    let arity = keyed.key.len();
    let branches: Vec<String> = (0..n)
        .map(|j| {
            let cond: Vec<String> = keyed
                .key
                .iter()
                .zip(shape.key_types.iter().zip(&shape.key_ops))
                .enumerate()
                .map(|(c, (k, (ty, op)))| {
                    format!(
                        "d.{} {op} ${}::text::{ty}",
                        quote_ident(k),
                        j * arity + c + 1
                    )
                })
                .collect();
            format!(
                "SELECT {cols} FROM {} AS d WHERE {}",
                keyed.query.quoted(),
                cond.join(" AND ")
            )
        })
        .collect();
    format!(
        "INSERT INTO {} ({cols}) {}",
        view.name.quoted(),
        branches.join(" UNION ALL ")
    )
}

/// Refreshes a keyed view: `work`'s groups, or everything. Cancel it from elsewhere
/// with the client's cancel token.
pub async fn refresh_keyed(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    work: &Work,
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<Refreshed, RefreshError> {
    let shape = read_shape(client, view, keyed).await?;
    let start = Instant::now();
    let deadline = if view.statement_timeout.is_zero() {
        Duration::from_secs(u32::MAX as u64)
    } else {
        view.statement_timeout + CLIENT_GRACE
    };
    let attempt = recompute(client, view, keyed, &shape, work, event, history);
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok((kind, bad_keys, keys))) => Ok(Refreshed {
            kind,
            duration: start.elapsed(),
            bad_keys,
            keys,
        }),
        Ok(Err(e)) => {
            let mut err = RefreshError::from_pg(&e, start.elapsed());
            if err.code.as_deref() == Some("23505") {
                err.hint = Some("the query produces more than one row for a key: the key must be unique in the query's output (its grouping columns)");
            }
            if !client.is_closed() {
                err.connection_broken = rollback(client).await.is_err();
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

/// The keyed view's [`Shape`], read with the refresh's bound: a connection gone
/// half-open must not hold the view "running" forever. A misfit is a permanent failure.
async fn read_shape(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
) -> Result<Shape, RefreshError> {
    match tokio::time::timeout(CLIENT_GRACE, shape(client, view, keyed)).await {
        Ok(Ok(Ok(s))) => Ok(s),
        Ok(Ok(Err(m))) => Err(RefreshError {
            class: FailureClass::Permanent,
            code: Some(if m.missing { "42P01" } else { "42804" }.into()),
            message: m.message,
            detail: None,
            hint: Some("a keyed view needs its table and its query (a plain view) with the same columns, and the key among them; see refreshd check"),
            duration: Duration::ZERO,
            connection_broken: false,
        }),
        Ok(Err(e)) => Err(RefreshError::from_pg(&e, Duration::ZERO)),
        Err(_) => Err(RefreshError::no_answer(
            format!(
                "within {} reading the keyed view's columns",
                humantime::format_duration(CLIENT_GRACE)
            ),
            CLIENT_GRACE,
        )),
    }
}

/// The statements of one keyed refresh: the groups, or everything when that is
/// cheaper or the groups cannot be written; with whether a key did not cast.
async fn recompute(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    work: &Work,
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<(RefreshKind, bool, Option<usize>), tokio_postgres::Error> {
    if let Some(buffer) = &keyed.buffer {
        return buffered(client, view, keyed, buffer, shape, work, event, history).await;
    }
    recompute_named(client, view, keyed, shape, work, event, history)
        .await
        .map(|(k, bad)| (k, bad, None))
}

/// [`recompute`] of a view without a change buffer: the groups `work` names.
async fn recompute_named(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    work: &Work,
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<(RefreshKind, bool), tokio_postgres::Error> {
    let keys = match work {
        // Without a buffer, a wake-up that names no keys means everything.
        Work::All | Work::Wake { .. } => None,
        Work::Keys(k) => Some(k),
        Work::KeysIfCheaper(k, full)
            if cheaper_in_full(client, view, keyed, shape, k, *full).await =>
        {
            None
        }
        Work::KeysIfCheaper(k, _) => Some(k),
    };
    match keys {
        None => full(client, view, keyed, shape, event, history)
            .await
            .map(|k| (k, false)),
        Some(keys) if keys.is_empty() => Ok((RefreshKind::KeyedKeys, false)),
        Some(keys) => {
            match keys_transaction(client, view, keyed, shape, keys, event, history).await {
                // Keys that do not cast, or a duplicate key (a refresh that another
                // process ran at the same time, or a query that is not unique by its
                // key): everything is recomputed, and only that outcome is classified.
                Err(e) if is_cast_error(&e) || is_duplicate(&e) => {
                    rollback(client).await?;
                    full(client, view, keyed, shape, event, history)
                        .await
                        .map(|k| (k, is_cast_error(&e)))
                }
                other => other.map(|k| (k, false)),
            }
        }
    }
}

fn is_duplicate(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.code().code() == "23505")
}

/// The planner's total cost of a statement (`EXPLAIN`, nothing executed).
async fn planned_cost(
    client: &Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Option<f64> {
    let rows = client
        .query_typed(&format!("EXPLAIN (FORMAT JSON) {sql}"), params)
        .await
        .ok()?;
    let plan: serde_json::Value = rows.first()?.try_get(0).ok()?;
    plan.get(0)?.get("Plan")?.get("Total Cost")?.as_f64()
}

/// Whether refreshing `keys`' groups one by one is likely to cost more than
/// recomputing everything: how the first keyed refresh after start is decided, before
/// any time per key has been measured. A probe plans one key's branch (each key is a
/// branch planned on its own, and planning a rich definition is most of a key's time:
/// ~13 ms a key on the attendance definition, where all 80 groups take ~600 ms in one
/// statement), and the plan of everything. With the measured time of a full recompute,
/// `keys` are estimated at n × (the probe's wall time + its planned cost in the seconds a
/// unit of the full plan's cost took); without, by planned costs alone. When the planner
/// cannot tell (an error, a key that does not cast), the keys are refreshed and the
/// refresh itself decides.
async fn cheaper_in_full(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    keys: &[Key],
    full_seconds: Option<f64>,
) -> bool {
    let Some(first) = keys.first() else {
        return false;
    };
    let params: Vec<(&(dyn ToSql + Sync), Type)> = first
        .iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    let cols = column_list(shape);
    let all = format!(
        "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
        view.name.quoted(),
        keyed.query.quoted()
    );
    let probe = Instant::now();
    let Some(one) = planned_cost(client, &insert_keys_sql(view, keyed, shape, 1), &params).await
    else {
        return false;
    };
    let planning = probe.elapsed().as_secs_f64();
    let Some(every) = planned_cost(client, &all, &[]).await else {
        return false;
    };
    let n = keys.len() as f64;
    match full_seconds {
        Some(f) if every > 0.0 => n * (planning + one * f / every) > f,
        _ => n * one > every,
    }
}

/// A value that does not cast to the key column's type (class 22: data exception),
/// raised by the DELETE, which only casts the keys.
fn is_cast_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code().code().starts_with("22"))
}

async fn rollback(client: &Client) -> Result<(), tokio_postgres::Error> {
    match tokio::time::timeout(Duration::from_secs(5), client.batch_execute("ROLLBACK")).await {
        Ok(r) => r,
        Err(_) => client.batch_execute("ROLLBACK").await, // unreachable in practice: the caller's deadline
    }
}

async fn full(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<RefreshKind, tokio_postgres::Error> {
    let row = history.map_or(String::new(), |h| {
        h.success_sql(view, RefreshKind::KeyedAll, None)
    });
    client
        .batch_execute(&full_sql_with(view, keyed, shape, event, &row))
        .await?;
    Ok(RefreshKind::KeyedAll)
}

/// BEGIN and the local settings (simple protocol), the DELETE and the INSERT (each one
/// unnamed statement with bind parameters: nothing prepared outlives it, so it works
/// through a transaction-mode pooler), then the event and COMMIT.
async fn keys_transaction(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    keys: &[Key],
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<RefreshKind, tokio_postgres::Error> {
    client.batch_execute(&prologue(view)).await?;
    keys_statements(client, view, keyed, shape, keys, event, history).await
}

/// The DELETE and INSERT of `keys`' groups (none: nothing but the end), then the event
/// and COMMIT, in the transaction begun.
async fn keys_statements(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    keys: &[Key],
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<RefreshKind, tokio_postgres::Error> {
    if keys.is_empty() {
        return commit_keys(client, view, event, history, 0).await;
    }
    let columns: Vec<Vec<&str>> = (0..keyed.key.len())
        .map(|c| keys.iter().map(|k| k[c].as_str()).collect())
        .collect();
    let params: Vec<(&(dyn ToSql + Sync), Type)> = columns
        .iter()
        .map(|c| (c as &(dyn ToSql + Sync), Type::TEXT_ARRAY))
        .collect();
    client
        .query_typed(&delete_keys_sql(view, keyed, shape), &params)
        .await?;
    let flat: Vec<&str> = keys
        .iter()
        .flat_map(|k| k.iter().map(String::as_str))
        .collect();
    let params: Vec<(&(dyn ToSql + Sync), Type)> = flat
        .iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    client
        .query_typed(&insert_keys_sql(view, keyed, shape, keys.len()), &params)
        .await?;
    commit_keys(client, view, event, history, keys.len()).await
}

/// The end of a transaction that recomputed `n` groups: the history row (if kept), the
/// event (if asked for) and COMMIT.
async fn commit_keys(
    client: &Client,
    view: &ViewConfig,
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
    n: usize,
) -> Result<RefreshKind, tokio_postgres::Error> {
    let row = history.map_or(String::new(), |h| {
        h.success_sql(view, RefreshKind::KeyedKeys, Some(n))
    });
    client
        .batch_execute(&epilogue_with(view, event, &row))
        .await?;
    Ok(RefreshKind::KeyedKeys)
}

/// Probing whether keys cost more than everything is skipped below this many keys of a
/// buffered view whose time per key is not known: a handful of groups is always
/// cheaper than a full recompute of a view worth keying, and the probe (planning one
/// branch and the whole definition) would cost more than refreshing them.
const PROBE_FROM_KEYS: usize = 16;

/// The start of a buffered view's transaction. `REPEATABLE READ`: the buffer and the
/// base tables are read in ONE snapshot. A group recomputed in a later snapshot than
/// the one its buffer was read in would see a row committed in between whose buffer
/// entry stays for the next refresh: recomputing a group twice is harmless, but once
/// the consume function applies row deltas (its prelude) that row would be counted
/// twice, by this refresh's recompute and by the next one's delta. And a full
/// recompute that consumes the buffer must see exactly the rows whose entries it
/// consumed. The snapshot is taken by the first query after `LOCK TABLE` (the
/// client-connection check), so a keyed refresh that held the lock (another process)
/// has committed before it: what it consumed and wrote is seen, never a serialization
/// failure. Everything else as [`prologue`].
fn buffered_prologue(view: &ViewConfig) -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; {}; {}; {}",
        crate::pg::outcome::timeouts(view),
        jit_off_and_lock(view),
        crate::pg::outcome::client_check()
    )
}

/// Consuming the buffer: every key as text, in `key` order, and whether it means
/// everything (the function's last column, or a NULL key member: a NULL never matches
/// a key). At most `max_keys + 1` rows: one more means everything anyway (the
/// function itself runs to its end whatever the LIMIT: a set-returning function in
/// FROM is materialized on its first row).
pub fn consume_sql(keyed: &Keyed, buffer: &QualifiedName) -> String {
    let names: Vec<String> = (1..=keyed.key.len()).map(|i| format!("k{i}")).collect();
    let texts: Vec<String> = names.iter().map(|n| format!("b.{n}::text")).collect();
    format!(
        "SELECT {}, b.all_ FROM {}() AS b({}, all_) LIMIT {}",
        texts.join(", "),
        buffer.quoted(),
        names.join(", "),
        keyed.max_keys + 1
    )
}

/// Recomputing everything in a buffered view's transaction: consumes the buffer (its
/// entries are older than the recompute, which covers them: a consume function
/// generated since 2026-12-05 only empties its buffers then, see
/// [`crate::incremental::generate::CONSUME_EVERYTHING`]), then writes the rows
/// that differ from the definition ([`replace_all_sql`]), all in one snapshot.
pub fn full_buffered_sql(
    view: &ViewConfig,
    keyed: &Keyed,
    buffer: &QualifiedName,
    shape: &Shape,
    event: bool,
    history: &str,
) -> String {
    format!(
        "{}; SET LOCAL {} = 'on'; SELECT pg_catalog.count(*) FROM {}(); {}",
        buffered_prologue(view),
        crate::incremental::generate::CONSUME_EVERYTHING,
        buffer.quoted(),
        rest_of_full(view, keyed, shape, event, history)
    )
}

/// The table made equal to the definition ([`replace_all_sql`]), the event and COMMIT.
fn rest_of_full(
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    event: bool,
    history: &str,
) -> String {
    format!(
        "{}; {}",
        replace_all_sql(view, keyed, shape),
        epilogue_with(view, event, history),
    )
}

/// A buffered view's refresh, one transaction: the buffer consumed first, its keys
/// merged with the payloads' (`work`), then those groups or everything recomputed in
/// the same snapshot. A refresh that does not commit gives the buffer back (the
/// DELETE that consumed it rolls back with it).
#[allow(clippy::too_many_arguments)]
async fn buffered(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    buffer: &QualifiedName,
    shape: &Shape,
    work: &Work,
    event: bool,
    history: Option<crate::pg::outcome::HistoryRow<'_>>,
) -> Result<(RefreshKind, bool, Option<usize>), tokio_postgres::Error> {
    let full_row = history.map_or(String::new(), |h| {
        h.success_sql(view, RefreshKind::KeyedAll, None)
    });
    let Some(named) = work.keys() else {
        client
            .batch_execute(&full_buffered_sql(
                view, keyed, buffer, shape, event, &full_row,
            ))
            .await?;
        return Ok((RefreshKind::KeyedAll, false, None));
    };
    client.batch_execute(&buffered_prologue(view)).await?;
    let (keys, everything) = consume(client, keyed, buffer, named).await?;
    let everything = everything
        || keys.len() > keyed.max_keys
        || dearer_than_everything(client, view, keyed, shape, work, &keys).await?;
    if everything {
        client
            .batch_execute(&rest_of_full(view, keyed, shape, event, &full_row))
            .await?;
        return Ok((RefreshKind::KeyedAll, false, None));
    }
    match keys_statements(client, view, keyed, shape, &keys, event, history).await {
        // As in [`recompute`]: keys that do not cast (a payload's), or a duplicate key:
        // everything, in a new transaction (the buffer was given back by the rollback).
        Err(e) if is_cast_error(&e) || is_duplicate(&e) => {
            rollback(client).await?;
            client
                .batch_execute(&full_buffered_sql(
                    view, keyed, buffer, shape, event, &full_row,
                ))
                .await?;
            Ok((RefreshKind::KeyedAll, is_cast_error(&e), None))
        }
        // The groups recomputed: the payloads' and the buffer's (for the metric and
        // the time per key; a delta applied is not a group recomputed).
        other => other.map(|k| (k, false, Some(keys.len()))),
    }
}

/// Consumes the buffer (in the transaction begun): its keys merged with `named`, and
/// whether that means everything (more than `max_keys` entries, a NULL key member, or
/// an entry that says "everything").
async fn consume(
    client: &Client,
    keyed: &Keyed,
    buffer: &QualifiedName,
    named: &[Key],
) -> Result<(Vec<Key>, bool), tokio_postgres::Error> {
    let rows = client.query_typed(&consume_sql(keyed, buffer), &[]).await?;
    let arity = keyed.key.len();
    let mut keys: std::collections::BTreeSet<Key> = named.iter().cloned().collect();
    let mut everything = rows.len() > keyed.max_keys;
    for r in &rows {
        if everything {
            break;
        }
        let all: Option<bool> = r.get(arity);
        let key: Option<Key> = (0..arity).map(|i| r.get::<_, Option<String>>(i)).collect();
        match key {
            Some(k) if all != Some(true) => {
                keys.insert(k);
            }
            _ => everything = true,
        }
    }
    Ok((keys.into_iter().collect(), everything))
}

/// Whether `keys`' groups are likely to cost more than recomputing everything: by the
/// measured time per key and of a full recompute when both are known; else, from
/// [`PROBE_FROM_KEYS`] keys on, by a probe (see [`cheaper_in_full`]) under a savepoint,
/// so that a probe that fails (a payload's key that does not cast) does not abort the
/// transaction.
async fn dearer_than_everything(
    client: &Client,
    view: &ViewConfig,
    keyed: &Keyed,
    shape: &Shape,
    work: &Work,
    keys: &[Key],
) -> Result<bool, tokio_postgres::Error> {
    match work {
        Work::Wake {
            per_key: Some(k),
            full: Some(f),
            ..
        } => Ok(*k * keys.len() as f64 > *f),
        Work::Wake {
            per_key: None,
            full,
            ..
        }
        | Work::KeysIfCheaper(_, full)
            if keys.len() >= PROBE_FROM_KEYS =>
        {
            client.batch_execute("SAVEPOINT refreshd_probe").await?;
            let dear = cheaper_in_full(client, view, keyed, shape, keys, *full).await;
            client
                .batch_execute("ROLLBACK TO SAVEPOINT refreshd_probe")
                .await?;
            Ok(dear)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> (ViewConfig, Keyed) {
        let cfg = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[database]\nurl = \"postgresql://u@h/d\"\n[[view]]\nname = \"public.Live\"\nkind = \"keyed\"\nquery = \"public.def\"\nkey = [\"a\", \"B\"]\nchannels = [\"c\"]\nstatement_timeout = \"2s\"\nlock_timeout = \"250ms\"\n",
        )
        .unwrap();
        let v = cfg.views[0].clone();
        let k = v.keyed.clone().unwrap();
        (v, k)
    }

    fn cols(c: &[(&str, &str)]) -> Option<(char, Columns)> {
        Some((
            'r',
            c.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        ))
    }

    /// Columns `a`, `B`, `n`, key (`a`, `B`) of types uuid and integer.
    fn shape(temp: bool) -> Shape {
        Shape {
            columns: vec!["a".into(), "B".into(), "n".into()],
            key_types: vec!["uuid".into(), "integer".into()],
            key_ops: vec!["=".into(), "=".into()],
            temp,
        }
    }

    #[test]
    fn statements_quote_names_and_bind_values() {
        let (v, k) = view();
        let shape = shape(false);
        assert_eq!(
            delete_keys_sql(&v, &k, &shape),
            r#"DELETE FROM "public"."live" AS t USING (SELECT u.k1::uuid AS "a", u.k2::integer AS "B" FROM unnest($1::text[], $2::text[]) AS u(k1, k2)) AS k WHERE t."a" = k."a" AND t."B" = k."B""#
        );
        assert_eq!(
            insert_keys_sql(&v, &k, &shape, 2),
            r#"INSERT INTO "public"."live" ("a", "B", "n") SELECT "a", "B", "n" FROM "public"."def" AS d WHERE d."a" = $1::text::uuid AND d."B" = $2::text::integer UNION ALL SELECT "a", "B", "n" FROM "public"."def" AS d WHERE d."a" = $3::text::uuid AND d."B" = $4::text::integer"#
        );
        assert_eq!(
            full_sql(&v, &k, &shape, true),
            r#"BEGIN; SET LOCAL statement_timeout = 2000; SET LOCAL lock_timeout = 250; SELECT pg_catalog.set_config(name, '1000', true) FROM pg_catalog.pg_settings WHERE name = 'client_connection_check_interval'; SET LOCAL jit = off; SET LOCAL datestyle = 'ISO'; SET LOCAL extra_float_digits = 3; SET LOCAL intervalstyle = 'postgres'; LOCK TABLE "public"."live" IN EXCLUSIVE MODE; WITH "refreshd_new" AS MATERIALIZED (SELECT "a", "B", "n" FROM "public"."def"), "refreshd_gone" AS (DELETE FROM "public"."live" AS t WHERE NOT EXISTS (SELECT FROM "refreshd_new" AS n WHERE n."a" = t."a" AND n."B" = t."B" AND n.* OPERATOR(pg_catalog.*=) t.*) RETURNING 1) INSERT INTO "public"."live" ("a", "B", "n") SELECT n."a", n."B", n."n" FROM "refreshd_new" AS n WHERE (SELECT pg_catalog.count(*) FROM "refreshd_gone") OPERATOR(pg_catalog.>=) 0 AND NOT EXISTS (SELECT FROM "public"."live" AS t WHERE t."a" = n."a" AND t."B" = n."B" AND t.* OPERATOR(pg_catalog.*=) n.*); SELECT pg_catalog.pg_notify('refreshd_refreshed', 'public.live'); COMMIT"#
        );
    }

    #[test]
    fn a_full_recompute_computes_the_definition_into_a_temporary_table_when_it_may() {
        let (v, k) = view();
        let shape = shape(true);
        assert_eq!(
            replace_all_sql(&v, &k, &shape),
            r#"CREATE TEMP TABLE "refreshd_new" ON COMMIT DROP AS SELECT "a", "B", "n" FROM "public"."def"; ANALYZE pg_temp."refreshd_new"; WITH "refreshd_gone" AS (DELETE FROM "public"."live" AS t WHERE NOT EXISTS (SELECT FROM pg_temp."refreshd_new" AS n WHERE n."a" = t."a" AND n."B" = t."B" AND n.* OPERATOR(pg_catalog.*=) t.*) RETURNING 1) INSERT INTO "public"."live" ("a", "B", "n") SELECT n."a", n."B", n."n" FROM pg_temp."refreshd_new" AS n WHERE (SELECT pg_catalog.count(*) FROM "refreshd_gone") OPERATOR(pg_catalog.>=) 0 AND NOT EXISTS (SELECT FROM "public"."live" AS t WHERE t."a" = n."a" AND t."B" = n."B" AND t.* OPERATOR(pg_catalog.*=) n.*); DROP TABLE pg_temp."refreshd_new""#
        );
    }

    #[test]
    fn both_prologues_share_the_timeouts_the_lock_and_the_client_check() {
        let (v, _) = view();
        let rest = "SET LOCAL statement_timeout = 2000; SET LOCAL lock_timeout = 250";
        let lock = r#"SET LOCAL jit = off; SET LOCAL datestyle = 'ISO'; SET LOCAL extra_float_digits = 3; SET LOCAL intervalstyle = 'postgres'; LOCK TABLE "public"."live" IN EXCLUSIVE MODE"#;
        let check = "SELECT pg_catalog.set_config(name, '1000', true) FROM pg_catalog.pg_settings WHERE name = 'client_connection_check_interval'";
        assert_eq!(prologue(&v), format!("BEGIN; {rest}; {check}; {lock}"));
        // The buffered one takes its snapshot (the check's query) after the lock.
        assert_eq!(
            buffered_prologue(&v),
            format!("BEGIN ISOLATION LEVEL REPEATABLE READ; {rest}; {lock}; {check}")
        );
    }

    #[test]
    fn a_buffered_refresh_reads_the_buffer_after_the_lock_in_one_snapshot() {
        let (v, mut k) = view();
        let buffer = QualifiedName::new("refreshd", "public_Live_consume");
        k.buffer = Some(buffer.clone());
        k.max_keys = 10;
        assert_eq!(
            consume_sql(&k, &buffer),
            r#"SELECT b.k1::text, b.k2::text, b.all_ FROM "refreshd"."public_Live_consume"() AS b(k1, k2, all_) LIMIT 11"#
        );
        let shape = shape(false);
        let sql = full_buffered_sql(&v, &k, &buffer, &shape, false, "");
        assert!(
            sql.starts_with("BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL statement_timeout = 2000; SET LOCAL lock_timeout = 250;"),
            "{sql}"
        );
        // The first statement that takes a snapshot comes after the LOCK, and the buffer
        // is consumed before the table is rewritten.
        let lock = sql.find("LOCK TABLE").unwrap();
        let select = sql.find("SELECT").unwrap();
        let consume = sql
            .find(r#"SELECT pg_catalog.count(*) FROM "refreshd"."public_Live_consume"();"#)
            .unwrap();
        assert!(lock < select && select < consume, "{sql}");
        assert!(consume < sql.find("DELETE FROM").unwrap(), "{sql}");
        assert!(sql.ends_with("COMMIT"), "{sql}");
    }

    #[test]
    fn table_and_query_must_fit() {
        let (v, k) = view();
        let t = cols(&[("a", "uuid"), ("B", "integer"), ("n", "bigint")]);
        let mut q = cols(&[("B", "integer"), ("a", "uuid"), ("n", "bigint")]);
        q.as_mut().unwrap().0 = 'v';
        let s = fit(&v, &k, t.clone(), q.clone()).unwrap();
        assert_eq!(s.key_types, vec!["uuid", "integer"]);
        assert!(fit(&v, &k, None, q.clone()).unwrap_err().missing);
        let e = fit(&v, &k, t.clone(), None).unwrap_err();
        assert_eq!((e.key, e.missing), ("query", true));
        let mut wrong = q.clone();
        wrong.as_mut().unwrap().1[2].1 = "numeric".into();
        let e = fit(&v, &k, t.clone(), wrong).unwrap_err();
        assert!(
            e.message.contains("bigint in table") && e.key == "query",
            "{e:?}"
        );
        let mut fewer = q.clone();
        fewer.as_mut().unwrap().1.pop();
        assert!(fit(&v, &k, t.clone(), fewer)
            .unwrap_err()
            .message
            .contains("column \"n\" of table"));
        let nokey = cols(&[("a", "uuid"), ("n", "bigint")]);
        let mut q2 = cols(&[("a", "uuid"), ("n", "bigint")]);
        q2.as_mut().unwrap().0 = 'v';
        assert_eq!(fit(&v, &k, nokey, q2).unwrap_err().key, "key");
        let mut notview = q.clone();
        notview.as_mut().unwrap().0 = 'r';
        assert!(fit(&v, &k, t, notview)
            .unwrap_err()
            .message
            .contains("not a view"));
    }
}
