//! The SQL of a keyed conversion (SPEC "Keyed refresh", "Incremental maintenance",
//! "Change capture"): from a [`Derivation`] and the catalog facts of the materialized
//! view ([`Facts`]), the plain view holding the definition, the live table refreshd
//! keeps equal to it, the view's change buffer and the function that consumes it, and
//! per base table a set of statement-level triggers that write the keys of the changed
//! rows into the buffer — plus the rollback. Pure: no I/O; `init --keyed` reads the
//! facts and writes or applies the result.
//!
//! What a base table's triggers buffer (transition tables `old_rows`/`new_rows`):
//! - [`How::Carries`]: the keys of its old and new rows, read from the rows themselves.
//! - [`How::JoinPath`]: the changed rows (old and new) joined along each path to the
//!   table that carries the key; the rows reached are locked `FOR KEY SHARE`, and an
//!   UPDATE of a table reached that way takes `FOR UPDATE` on the rows whose key or
//!   path columns changed, so it waits for the writers holding those locks (the rule
//!   `sql/attendance/005_keyed_statistics.sql` works out by hand, for any path).
//! - [`How::Recompute`], or a key that is an expression rather than a column: the
//!   "everything" marker (`all_`).
//! - TRUNCATE: the marker. A key with a NULL member is buffered as it is; the consume
//!   function returns it as "everything" (a NULL never matches a key).
//!
//! The buffer (an UNLOGGED table in schema `refreshd`) spares writers a NOTIFY per
//! transaction, which PostgreSQL serializes at commit: a trigger that buffered rows
//! notifies the view's channel (empty payload: "read the buffer") only when it cannot
//! take its slot of the channel's advisory lock shared, the test of
//! `refreshd.notify_changed()` (`engine::arming`): while refreshd holds the lock, a
//! refresh is not due yet and must be woken; otherwise one is due, and it waits for
//! this writer's commit before it reads the buffer.
//!
//! UPDATE compares old and new rows on the columns the definition reads
//! (`EXCEPT ALL`), so an update of other columns buffers nothing — unless one of those
//! columns has a type without equality ([`BaseTable::incomparable`]): then all its old
//! and new rows count as changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::delta::DeltaPlan;
use super::{Carry, Derivation, How};
use crate::engine::arming::{ARM_CLASS, ARM_SLOTS};
use crate::pg::ident::{quote_ident, sql_comment, QualifiedName, MAX_IDENTIFIER_BYTES};

/// One base table the definition reads, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseTable {
    /// As the derivation names it (`schema.name`, [`super::TableDerivation::table`]).
    pub table: String,
    pub name: QualifiedName,
    /// `pg_class.relkind`: `r`, `p` (partitioned), `m`, `f`, ...
    pub relkind: char,
    /// Every partition below it, at any depth (statement triggers are not cloned to
    /// partitions, and a write straight into one fires only its own).
    pub partitions: Vec<QualifiedName>,
    /// Its columns whose type has no default btree or hash operator class (json, xml,
    /// point...): an UPDATE cannot compare them, so its old and new rows are all taken.
    pub incomparable: Vec<String>,
    /// The role creating the triggers (their functions run as it) may lock its rows
    /// (`FOR KEY SHARE` / `FOR UPDATE` need UPDATE privilege on some column).
    pub lockable: bool,
}

/// One privilege of the materialized view's ACL (`aclexplode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `SELECT`, `INSERT`, ...
    pub privilege: String,
    /// The role; `None` for PUBLIC.
    pub grantee: Option<String>,
    pub grantable: bool,
}

/// The catalog facts of the materialized view being converted.
#[derive(Debug, Clone)]
pub struct Facts {
    pub view: QualifiedName,
    /// As `pg_get_viewdef` printed it (a trailing `;` is allowed).
    pub definition: String,
    /// Name and `format_type` of every column, in order.
    pub columns: Vec<(String, String)>,
    /// The schemas the definition was printed against (names it did not qualify
    /// resolve through them; the install SQL sets it). `init` prints definitions under
    /// `pg_catalog` alone, so that every other name is qualified: the consume function
    /// (SECURITY DEFINER) always runs with `search_path = pg_catalog, pg_temp`.
    pub search_path: Vec<String>,
    pub tables: Vec<BaseTable>,
    /// `pg_get_indexdef` of the view's indexes (restored on the table in place, and on
    /// the materialized view by the in-place rollback).
    pub indexes: Vec<String>,
    pub grants: Vec<Grant>,
    /// Replace the materialized view by a table of the same name.
    pub in_place: bool,
    /// Changes to its fact table applied as deltas ([`super::delta::delta_plan`], whose
    /// `live` must be this conversion's [`Generated::table`]): its row buffer and recheck
    /// table installed, the fact table's triggers (root and partitions) buffering rows
    /// instead of keys, the apply as [`Generated::consume_prelude`] and the recheck keys
    /// returned by the consume function. `None`: every change recomputes its groups.
    pub delta: Option<DeltaPlan>,
}

/// The conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The table refreshd keeps (the view's own name in place, `<view>_live` otherwise).
    pub table: QualifiedName,
    /// The plain view holding the definition, `<view>_def`.
    pub definition: QualifiedName,
    /// The channel the triggers notify.
    pub channel: String,
    pub key: Vec<String>,
    /// `format_type` of each key column, in `key` order.
    pub key_types: Vec<String>,
    /// The change buffer, `refreshd."<schema>_<view>_keys"`: an UNLOGGED table of the
    /// key columns (nullable) and [`Generated::all_column`].
    pub buffer: QualifiedName,
    /// The buffer's "everything" column (`all_`, or longer if a key column has that name).
    pub all_column: String,
    /// The function refreshd calls first in each refresh of the view (config `buffer`),
    /// `refreshd."<schema>_<view>_consume"()`: runs [`Generated::consume_prelude`], then
    /// deletes the buffer's rows and returns their distinct keys and whether one means
    /// everything. See [`consume_function_sql`].
    pub consume: QualifiedName,
    /// Statements run at the top of the consume function's body, before the buffer is
    /// consumed, in the refresh's transaction and snapshot: where delta statements (row
    /// deltas applied to the live table) go. Empty: every change recomputes its groups.
    /// Set it and append [`consume_function_sql`] to the install (it replaces the
    /// function).
    pub consume_prelude: Vec<String>,
    /// A query returning more keys to recompute (typed and named like the key columns; a
    /// NULL member means everything), run after the prelude and returned with the
    /// buffer's: the delta plan's [`DeltaPlan::recheck_keys`].
    pub consume_recheck: Option<String>,
    /// The fact table whose changes are applied as deltas (`schema.name`).
    pub delta_fact: Option<QualifiedName>,
    /// Statements, without BEGIN/COMMIT: the caller runs them in its transaction.
    pub install: String,
    pub rollback: String,
    /// One line per base table: what its triggers send.
    pub capture: Vec<String>,
}

const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "MAINTAIN",
];

/// The consume function of a conversion (`CREATE OR REPLACE`): LANGUAGE sql, SECURITY
/// DEFINER (its owner, the role that ran `init`, owns the buffer; EXECUTE is revoked
/// from PUBLIC: whoever may call it may discard changes). Its body: the
/// [`Generated::consume_prelude`] statements, then
/// `WITH d AS (DELETE FROM buffer RETURNING *) SELECT DISTINCT` the key columns and
/// `all_` (true for the marker and for a key with a NULL member). Called in refreshd's
/// REPEATABLE READ refresh transaction, it deletes only the rows that snapshot sees:
/// rows committed later stay for the next refresh, and a refresh that rolls back
/// gives them all back.
pub fn consume_function_sql(g: &Generated) -> String {
    let keys = list(&g.key, "d.");
    let nulls: String = g
        .key
        .iter()
        .map(|k| format!(" OR d.{} IS NULL", quote_ident(k)))
        .collect();
    // With delta statements: PL/pgSQL (each statement sees the rows the previous ones
    // wrote: in a LANGUAGE sql function, the last statement's DELETE of the recheck rows
    // the apply had just inserted failed with "attempted to delete invisible tuple");
    // table columns win over the output columns' variables of the same names.
    let plpgsql = !g.consume_prelude.is_empty() || g.consume_recheck.is_some();
    let mut body = if plpgsql {
        String::from("#variable_conflict use_column\nBEGIN\n")
    } else {
        String::new()
    };
    body.push_str(
        "-- refreshd: delta statements (Generated::consume_prelude) run here, before the keys are consumed.\n",
    );
    for st in &g.consume_prelude {
        let st = st.trim().trim_end_matches(';');
        let _ = writeln!(body, "{st};");
    }
    if plpgsql {
        body.push_str("RETURN QUERY\n");
    }
    match &g.consume_recheck {
        None => {
            let _ = writeln!(
                body,
                "WITH d AS (DELETE FROM {} RETURNING *)\nSELECT DISTINCT {keys}, d.{all}{nulls} FROM d;",
                g.buffer.quoted(),
                all = quote_ident(&g.all_column),
            );
        }
        Some(recheck) => {
            // The keys the apply could not decide, with the buffer's (UNION: distinct).
            let r_nulls: String = g
                .key
                .iter()
                .map(|k| format!(" OR r.{} IS NULL", quote_ident(k)))
                .collect();
            let _ = writeln!(
                body,
                "WITH d AS (DELETE FROM {} RETURNING *), r AS ({})\nSELECT {keys}, d.{all}{nulls} FROM d\nUNION\nSELECT {}, false{r_nulls} FROM r;",
                g.buffer.quoted(),
                recheck.trim().trim_end_matches(';'),
                list(&g.key, "r."),
                all = quote_ident(&g.all_column),
            );
        }
    }
    if plpgsql {
        body.push_str("END;\n");
    }
    // Pinned: the function is SECURITY DEFINER, and the delta statements hold the
    // definition's text, which is resolved again at every call. The definition must
    // have been printed with every name outside pg_catalog qualified (`init` reads it
    // under `search_path = pg_catalog`), so nothing in a schema others may create in
    // can shadow what it names.
    let search_path = "pg_catalog, pg_temp";
    let signature: Vec<String> = g
        .key
        .iter()
        .zip(&g.key_types)
        .map(|(k, ty)| format!("{} {ty}", quote_ident(k)))
        .chain(std::iter::once(format!(
            "{} boolean",
            quote_ident(&g.all_column)
        )))
        .collect();
    format!(
        "CREATE OR REPLACE FUNCTION {f}()\nRETURNS TABLE ({})\nLANGUAGE {}\nVOLATILE\nSECURITY DEFINER\nSET search_path = {search_path}\nAS {};\nREVOKE ALL ON FUNCTION {f}() FROM PUBLIC;\nCOMMENT ON FUNCTION {f}() IS {};\n",
        signature.join(", "),
        if plpgsql { "plpgsql" } else { "sql" },
        dollar(&body),
        literal(&format!(
            "refreshd: consumes the change buffer of keyed view {} (called by refreshd in its refresh transaction: config buffer)",
            g.table
        )),
        f = g.consume.quoted(),
    )
}

/// FNV-1a (64 bits) of the parts, separated by a byte no name contains.
fn hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// `readable` when it fits in an identifier and `exact`; otherwise a prefix of it cut at
/// a character boundary, `_` and a hash of `identity`: bounded, and the same every run.
fn bounded(readable: &str, identity: &[&str], exact: bool) -> String {
    if exact && readable.len() <= MAX_IDENTIFIER_BYTES {
        return readable.to_string();
    }
    let suffix = format!("_{}", hash(identity));
    let mut cut = MAX_IDENTIFIER_BYTES - suffix.len();
    while !readable.is_char_boundary(cut.min(readable.len())) {
        cut -= 1;
    }
    format!("{}{suffix}", &readable[..cut.min(readable.len())])
}

/// The view's channel: `refreshd_keys_<schema>_<view>` when that is plain lower-case
/// (the schema without `_`) and fits; otherwise a `[a-z0-9_]` prefix and a hash.
pub fn channel_for(view: &QualifiedName) -> String {
    let full = format!("refreshd_keys_{}_{}", view.schema, view.name);
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let exact = plain(&view.schema) && !view.schema.contains('_') && plain(&view.name);
    let readable: String = full
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    bounded(&readable, &[&view.schema, &view.name], exact)
}

/// Dollar-quotes `body` with a tag it does not contain.
fn dollar(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = if n == 0 {
            "$refreshd$".to_string()
        } else {
            format!("$refreshd{n}$")
        };
        if !body.contains(&tag) {
            return format!("{tag}\n{body}{tag}");
        }
        n += 1;
    }
}

fn literal(s: &str) -> String {
    crate::pg::refresh::quote_literal(s)
}

fn list(names: &[String], prefix: &str) -> String {
    names
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plain columns of a carry, when every key column is one.
fn plain(c: &Carry) -> Option<Vec<String>> {
    c.columns.iter().cloned().collect()
}

/// What one base table's trigger function computes.
enum Source {
    /// Every change sends `*`, for this reason.
    All(String),
    /// Key SELECTs (each over `d`, the changed rows), and the path locks they take.
    Keys(Vec<String>),
}

/// Rows of a table reached through a join path: by which column, and which of its
/// columns move the rows that reach it to other keys.
#[derive(Default)]
struct Reached {
    by: Vec<String>,
    moving: Vec<String>,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

pub fn generate(d: &Derivation, f: &Facts) -> Result<Generated, String> {
    if d.key.is_empty() {
        return Err("no key".into());
    }
    for k in &d.key {
        if !f.columns.iter().any(|(c, _)| c == k) {
            return Err(format!("key column {k} is not a column of the view"));
        }
    }
    for g in &f.grants {
        if !PRIVILEGES.contains(&g.privilege.as_str()) {
            return Err(format!(
                "unknown privilege {} in the view's ACL",
                g.privilege
            ));
        }
    }
    let by_name: BTreeMap<&str, &BaseTable> =
        f.tables.iter().map(|t| (t.table.as_str(), t)).collect();
    let table_of = |name: &str| -> Result<&BaseTable, String> {
        by_name
            .get(name)
            .copied()
            .ok_or_else(|| format!("{name} is not among the base tables' catalog facts"))
    };
    for t in &d.tables {
        let b = table_of(&t.table)?;
        match b.relkind {
            'r' | 'p' => {}
            'm' => {
                return Err(format!(
                    "it reads materialized view {}, whose refreshes fire no trigger",
                    b.name
                ))
            }
            'f' => {
                return Err(format!(
                    "it reads foreign table {}: remote writes fire no trigger here",
                    b.name
                ))
            }
            other => return Err(format!("it reads {} of relkind {other}", b.name)),
        }
    }

    let v = &f.view;
    let table = if f.in_place {
        v.clone()
    } else {
        QualifiedName::new(
            v.schema.clone(),
            bounded(
                &format!("{}_live", v.name),
                &[&v.schema, &v.name, "live"],
                true,
            ),
        )
    };
    let def = QualifiedName::new(
        v.schema.clone(),
        bounded(
            &format!("{}_def", v.name),
            &[&v.schema, &v.name, "def"],
            true,
        ),
    );
    let channel = channel_for(v);
    let public = v.schema == "public";
    let trigger_name = |op: &str| {
        bounded(
            &format!("{}_keys_{op}", v.name),
            &[&v.schema, &v.name, op],
            public,
        )
    };
    let function = |t: &BaseTable| {
        let same_name = f
            .tables
            .iter()
            .filter(|o| o.name.name == t.name.name)
            .count()
            > 1;
        QualifiedName::new(
            v.schema.clone(),
            bounded(
                &format!("{}_keys_from_{}", v.name, t.name.name),
                &[&v.schema, &v.name, &t.name.schema, &t.name.name],
                !same_name,
            ),
        )
    };
    let all_function = QualifiedName::new(
        v.schema.clone(),
        bounded(
            &format!("{}_keys_all", v.name),
            &[&v.schema, &v.name, "all"],
            true,
        ),
    );

    // The buffer and its consume function, in schema refreshd: named after the view's
    // schema and name (exact when the schema has no `_`, so that no two views' names
    // meet), bounded like every other name.
    let stem = format!("{}_{}", v.schema, v.name);
    let exact = !v.schema.contains('_');
    let buffer = QualifiedName::new(
        "refreshd",
        bounded(
            &format!("{stem}_keys"),
            &[&v.schema, &v.name, "buffer"],
            exact,
        ),
    );
    let consume = QualifiedName::new(
        "refreshd",
        bounded(
            &format!("{stem}_consume"),
            &[&v.schema, &v.name, "consume"],
            exact,
        ),
    );
    let mut all_column = "all_".to_string();
    while d.key.contains(&all_column) {
        all_column.push('_');
    }
    let key_types: Vec<String> = d
        .key
        .iter()
        .map(|k| {
            f.columns
                .iter()
                .find(|(c, _)| c == k)
                .map(|(_, ty)| ty.clone())
                .expect("checked above")
        })
        .collect();

    // Tables reached through a path: their UPDATE waits for the path's lockers.
    let mut reached: BTreeMap<String, Reached> = BTreeMap::new();
    for t in &d.tables {
        if let How::JoinPath { paths, .. } = &t.how {
            for name in paths.iter().flat_map(|p| p.tables.iter().skip(1)) {
                let b = table_of(name)?;
                if !b.lockable {
                    return Err(format!(
                        "the role running init may not lock rows of {} (the capture of {} locks the rows it joins FOR KEY SHARE, which needs UPDATE privilege on a column of it; its trigger functions run as this role)",
                        b.name, t.name
                    ));
                }
            }
        }
    }
    for t in &d.tables {
        if let How::JoinPath { paths, .. } = &t.how {
            for p in paths {
                for (i, step) in p.steps.iter().enumerate() {
                    let r = reached.entry(p.tables[i + 1].clone()).or_default();
                    push_unique(&mut r.by, &step.to_column);
                    match p.steps.get(i + 1) {
                        Some(next) => push_unique(&mut r.moving, &next.from_column),
                        None => {
                            for c in p.carry.columns.iter().flatten() {
                                push_unique(&mut r.moving, c);
                            }
                        }
                    }
                }
            }
        }
    }

    let mut install = String::new();
    let mut rollback = String::new();
    let mut capture = Vec::new();
    let w = &mut install;
    let _ = writeln!(
        w,
        "\n-- {}",
        sql_comment(&format!(
            "Keyed conversion of {v} (generated by `refreshd init --keyed`): definition {def}, table {table}, key ({}), channel {channel}.",
            d.key.join(", ")
        ))
    );
    let search_path = if f.search_path.is_empty() {
        "pg_catalog".to_string()
    } else {
        list(&f.search_path, "")
    };
    let definition = f.definition.trim().trim_end_matches(';').trim_end();
    let cols: Vec<String> = f.columns.iter().map(|(c, _)| c.clone()).collect();
    let column_list = list(&cols, "");
    let relkind_is = |name: &QualifiedName, kind: &str| {
        format!(
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind = {}",
            literal(&name.schema),
            literal(&name.name),
            literal(kind)
        )
    };
    let index_sql = |out: &mut String| {
        for ix in &f.indexes {
            let ix = ix.trim().trim_end_matches(';');
            let ix = if let Some(rest) = ix.strip_prefix("CREATE UNIQUE INDEX ") {
                format!("CREATE UNIQUE INDEX IF NOT EXISTS {rest}")
            } else if let Some(rest) = ix.strip_prefix("CREATE INDEX ") {
                format!("CREATE INDEX IF NOT EXISTS {rest}")
            } else {
                ix.to_string()
            };
            let _ = writeln!(out, "{ix};");
        }
    };
    let grant_sql = |out: &mut String, on: &str| {
        for g in &f.grants {
            let _ = writeln!(
                out,
                "GRANT {} ON {on} TO {}{};",
                g.privilege,
                g.grantee
                    .as_deref()
                    .map(quote_ident)
                    .unwrap_or_else(|| "PUBLIC".into()),
                if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            );
        }
    };

    // The definition, resolved as it was printed.
    let _ = writeln!(w, "SET LOCAL search_path TO {search_path};");
    if f.in_place {
        let _ = writeln!(
            w,
            "-- The materialized view gives way to a table of the same name (its definition stays in {}).",
            sql_comment(&def.to_string())
        );
        let body = format!(
            "BEGIN\n    IF EXISTS ({}) THEN\n        DROP MATERIALIZED VIEW {};\n    END IF;\nEND;\n",
            relkind_is(v, "m"),
            v.quoted()
        );
        let _ = writeln!(w, "DO {};", dollar(&body));
    }
    let _ = writeln!(
        w,
        "CREATE OR REPLACE VIEW {} AS\n{definition};",
        def.quoted()
    );
    let _ = writeln!(
        w,
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n);",
        table.quoted(),
        f.columns
            .iter()
            .map(|(c, ty)| format!("    {} {ty}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(",\n")
    );
    if f.in_place {
        index_sql(w);
    } else {
        let ix = bounded(
            &format!("{}_key", table.name),
            &[&table.schema, &table.name, "key"],
            true,
        );
        let _ = writeln!(
            w,
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({});",
            quote_ident(&ix),
            table.quoted(),
            list(&d.key, "")
        );
    }
    grant_sql(w, &format!("TABLE {}", table.quoted()));
    let _ = writeln!(
        w,
        "COMMENT ON TABLE {} IS {};",
        table.quoted(),
        literal(&format!(
            "Kept equal to {def} by refreshd (kind = \"keyed\", key {}), fed by channel {channel}.",
            d.key.join(", ")
        ))
    );

    // The change buffer (dropped and created again: the fill below covers whatever it
    // held) and its consume function.
    let _ = writeln!(w, "CREATE SCHEMA IF NOT EXISTS refreshd;");
    let _ = writeln!(w, "DROP TABLE IF EXISTS {};", buffer.quoted());
    let _ = writeln!(
        w,
        "CREATE UNLOGGED TABLE {} (\n{},\n    {} boolean NOT NULL DEFAULT false\n);",
        buffer.quoted(),
        d.key
            .iter()
            .zip(&key_types)
            .map(|(k, ty)| format!("    {} {ty}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(",\n"),
        quote_ident(&all_column)
    );
    let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", buffer.quoted());
    let _ = writeln!(
        w,
        "COMMENT ON TABLE {} IS {};",
        buffer.quoted(),
        literal(&format!(
            "refreshd: change buffer of keyed view {table} (the keys its capture triggers found; {all_column} = everything), consumed by {consume}(). Unlogged: lost in a crash, after which refreshd recomputes everything."
        ))
    );
    let mut generated = Generated {
        table: table.clone(),
        definition: def.clone(),
        channel: channel.clone(),
        key: d.key.clone(),
        key_types: key_types.clone(),
        buffer: buffer.clone(),
        all_column: all_column.clone(),
        consume: consume.clone(),
        consume_prelude: Vec::new(),
        consume_recheck: None,
        delta_fact: None,
        install: String::new(),
        rollback: String::new(),
        capture: Vec::new(),
    };
    if let Some(p) = &f.delta {
        if table_of(&p.fact)?.name != p.fact_name {
            return Err(format!(
                "the delta plan's fact table {} is not {}",
                p.fact_name, p.fact
            ));
        }
        // The row buffer and the recheck table, created again empty (the fill below
        // covers whatever they held), before the consume function that reads them.
        let _ = writeln!(
            w,
            "-- {}",
            sql_comment(&format!(
                "Deltas: changes to {} are buffered as rows in {} and applied to {table} by {consume}() (keys it cannot decide go through {}).",
                p.fact_name, p.buffer, p.recheck
            ))
        );
        for st in p.rollback.iter().chain(&p.install) {
            let _ = writeln!(w, "{};", st.trim().trim_end_matches(';'));
        }
        let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", p.buffer.quoted());
        let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", p.recheck.quoted());
        generated.consume_prelude = p.apply.clone();
        generated.consume_recheck = Some(p.recheck_keys.clone());
        generated.delta_fact = Some(p.fact_name.clone());
    }
    w.push_str(&consume_function_sql(&generated));

    // The trigger functions.
    let key_cols: Vec<String> = (1..=d.key.len()).map(|i| format!("k{i}")).collect();
    let buffer_keys = list(&d.key, "");
    // Rows buffered: wake refreshd unless a refresh is already due (see the module doc).
    let wake = format!(
        "    IF v_rows > 0 AND NOT pg_catalog.pg_try_advisory_xact_lock_shared({ARM_CLASS} + pg_catalog.pg_backend_pid() % {ARM_SLOTS}, pg_catalog.hashtext({ch})) THEN\n        PERFORM pg_catalog.pg_notify({ch}, '');\n    END IF;\n    RETURN NULL;\n",
        ch = literal(&channel)
    );
    let mark_all = format!(
        "INSERT INTO {} ({}) VALUES (true);",
        buffer.quoted(),
        quote_ident(&all_column)
    );
    let _ = writeln!(
        w,
        "CREATE OR REPLACE FUNCTION {}()\nRETURNS trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\nAS {};",
        all_function.quoted(),
        dollar(&format!(
            "DECLARE\n    v_rows bigint := 1;\nBEGIN\n    {mark_all}\n{wake}END;\n"
        ))
    );
    let ops = ["insert", "update", "delete", "truncate"];
    for t in &d.tables {
        let b = table_of(&t.table)?;
        let reads = &t.reads;
        let source = match &t.how {
            How::Recompute { reason } => Source::All(reason.clone()),
            How::Carries(carries) => match carries.iter().map(plain).collect::<Option<Vec<_>>>() {
                None => Source::All(
                    "a key column is an expression over its columns (generated capture reads plain columns)".into(),
                ),
                Some(cs) => Source::Keys(
                    cs.iter()
                        .map(|c| format!("SELECT {} FROM d", list(c, "d.")))
                        .collect(),
                ),
            },
            How::JoinPath { carries, paths } => {
                let mut keys = Vec::new();
                let mut why = None;
                for c in carries {
                    match plain(c) {
                        Some(c) => keys.push(format!("SELECT {} FROM d", list(&c, "d."))),
                        None => why = Some("a key column is an expression over its columns (generated capture reads plain columns)".to_string()),
                    }
                }
                for p in paths {
                    let Some(last) = plain(&p.carry) else {
                        why = Some(format!(
                            "the key of {} is an expression (generated capture reads plain columns)",
                            p.tables.last().map(String::as_str).unwrap_or("?")
                        ));
                        continue;
                    };
                    let mut from = "d".to_string();
                    let mut joins = String::new();
                    let mut locks = Vec::new();
                    for (i, s) in p.steps.iter().enumerate() {
                        let alias = format!("j{}", i + 1);
                        let _ = write!(
                            joins,
                            " JOIN {} AS {alias} ON {alias}.{} = {from}.{}",
                            table_of(&p.tables[i + 1])?.name.quoted(),
                            quote_ident(&s.to_column),
                            quote_ident(&s.from_column)
                        );
                        locks.push(alias.clone());
                        from = alias;
                    }
                    keys.push(format!(
                        "SELECT * FROM (SELECT {} FROM d{joins} FOR KEY SHARE OF {}) AS p",
                        list(&last, &format!("{from}.")),
                        locks.join(", ")
                    ));
                }
                match why {
                    Some(w) => Source::All(w),
                    None => Source::Keys(keys),
                }
            }
        };
        // Nothing to compute keys from (no occurrence gave one): everything.
        let source = match source {
            Source::Keys(k) if k.is_empty() => {
                Source::All("no occurrence of it gives the key".to_string())
            }
            other => other,
        };
        let fname = function(b);
        let reads_of = |alias: &str| list(reads, &format!("{alias}."));
        let changed = |op: &str| -> String {
            match op {
                "insert" => format!("SELECT {} FROM new_rows n", reads_of("n")),
                "delete" => format!("SELECT {} FROM old_rows o", reads_of("o")),
                _ if reads.iter().any(|r| b.incomparable.contains(r)) => format!(
                    "SELECT {} FROM old_rows o UNION ALL SELECT {} FROM new_rows n",
                    reads_of("o"),
                    reads_of("n")
                ),
                _ => format!(
                    "(SELECT {o} FROM old_rows o EXCEPT ALL SELECT {n} FROM new_rows n) \
                     UNION ALL (SELECT {n} FROM new_rows n EXCEPT ALL SELECT {o} FROM old_rows o)",
                    o = reads_of("o"),
                    n = reads_of("n")
                ),
            }
        };
        let mut body = String::from("DECLARE\n    v_rows bigint := 0;\nBEGIN\n");
        let delta = f.delta.as_ref().filter(|p| p.fact == t.table);
        for (i, op) in ["insert", "delete", "update"].iter().enumerate() {
            let _ = writeln!(
                body,
                "    {} TG_OP = {} THEN",
                if i == 0 { "IF" } else { "ELSIF" },
                literal(&op.to_ascii_uppercase())
            );
            if *op == "update" {
                if let Some(r) = reached.get(&t.table) {
                    // Rows other tables reach through a join path, moved to other keys:
                    // wait for the writers that locked them FOR KEY SHARE.
                    let mut moving = r.by.clone();
                    for m in &r.moving {
                        push_unique(&mut moving, m);
                    }
                    // Located by every such column's new value: the moved rows (and
                    // any other rows equal to them on those columns).
                    let _ = writeln!(
                        body,
                        "        PERFORM 1 FROM {} AS t WHERE ({}) IN (SELECT {} FROM (SELECT {n} FROM new_rows n EXCEPT ALL SELECT {o} FROM old_rows o) AS m) FOR UPDATE OF t;",
                        b.name.quoted(),
                        list(&moving, "t."),
                        list(&moving, "m."),
                        n = list(&moving, "n."),
                        o = list(&moving, "o."),
                    );
                }
            }
            let rows = if *op == "update" && reads.is_empty() {
                None
            } else if reads.is_empty() {
                Some(if *op == "insert" {
                    "SELECT 1 FROM new_rows".to_string()
                } else {
                    "SELECT 1 FROM old_rows".to_string()
                })
            } else {
                Some(changed(op))
            };
            if let Some(p) = delta {
                // Rows for the apply instead of keys: no join, no lock.
                let capture = match *op {
                    "insert" => &p.capture_insert,
                    "delete" => &p.capture_delete,
                    _ => &p.capture_update,
                };
                let _ = writeln!(
                    body,
                    "        {};\n        GET DIAGNOSTICS v_rows = ROW_COUNT;",
                    capture.trim().trim_end_matches(';')
                );
                continue;
            }
            match (&source, rows) {
                (_, None) => {
                    let _ = writeln!(body, "        NULL;");
                }
                (Source::All(_), Some(rows)) => {
                    let _ = writeln!(
                        body,
                        "        IF EXISTS ({rows}) THEN\n            {mark_all}\n            v_rows := 1;\n        END IF;"
                    );
                }
                (Source::Keys(keys), Some(rows)) => {
                    let _ = writeln!(
                        body,
                        "        WITH d AS ({rows})\n        INSERT INTO {} ({buffer_keys})\n        SELECT DISTINCT * FROM ({}) AS u({});\n        GET DIAGNOSTICS v_rows = ROW_COUNT;",
                        buffer.quoted(),
                        keys.join(" UNION ALL "),
                        key_cols.join(", ")
                    );
                }
            }
        }
        body.push_str("    END IF;\n");
        body.push_str(&wake);
        body.push_str("END;\n");
        let _ = writeln!(
            w,
            "CREATE OR REPLACE FUNCTION {}()\nRETURNS trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\nAS {};",
            fname.quoted(),
            dollar(&body)
        );
        let line = match &source {
            Source::All(reason) => format!(
                "{}: every change buffers \"everything\" ({reason})",
                b.name
            ),
            Source::Keys(_) => match &t.how {
                How::JoinPath { .. } => format!(
                    "{}: the keys of its changed rows, joined along its path (rows reached locked FOR KEY SHARE)",
                    b.name
                ),
                _ => format!("{}: the keys of its old and new rows", b.name),
            },
        };
        let line = match delta {
            Some(p) => format!(
                "{}: its changed rows, buffered in {} and applied as deltas (TRUNCATE: everything)",
                b.name, p.buffer
            ),
            None => line,
        };
        let line = if reached.contains_key(&t.table) {
            format!(
                "{line}; an UPDATE moving rows reached through a join path locks them FOR UPDATE"
            )
        } else {
            line
        };
        let _ = writeln!(w, "-- {}", sql_comment(&line));
        capture.push(line);
        let members: Vec<&QualifiedName> = std::iter::once(&b.name)
            .chain(b.partitions.iter())
            .collect();
        for m in &members {
            for op in ops {
                let tg = quote_ident(&trigger_name(op));
                let _ = writeln!(w, "DROP TRIGGER IF EXISTS {tg} ON {};", m.quoted());
                let _ = writeln!(rollback, "DROP TRIGGER IF EXISTS {tg} ON {};", m.quoted());
                let (referencing, func) = match op {
                    "insert" => ("REFERENCING NEW TABLE AS new_rows ", &fname),
                    "update" => (
                        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows ",
                        &fname,
                    ),
                    "delete" => ("REFERENCING OLD TABLE AS old_rows ", &fname),
                    _ => ("", &all_function),
                };
                let _ = writeln!(
                    w,
                    "CREATE TRIGGER {tg} AFTER {} ON {} {referencing}FOR EACH STATEMENT EXECUTE FUNCTION {}();",
                    op.to_ascii_uppercase(),
                    m.quoted(),
                    func.quoted()
                );
            }
        }
        let _ = writeln!(rollback, "DROP FUNCTION IF EXISTS {}();", fname.quoted());
    }
    let _ = writeln!(
        rollback,
        "DROP FUNCTION IF EXISTS {}();",
        all_function.quoted()
    );
    let _ = writeln!(
        rollback,
        "DROP FUNCTION IF EXISTS {}();\nDROP TABLE IF EXISTS {};",
        consume.quoted(),
        buffer.quoted()
    );
    if let Some(p) = &f.delta {
        for st in &p.rollback {
            let _ = writeln!(rollback, "{};", st.trim().trim_end_matches(';'));
        }
    }

    // Fill: readers see the old rows until commit; the trigger DDL above holds the base
    // tables, so no change slips between the fill and the triggers.
    let _ = writeln!(
        w,
        "LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE;\nDELETE FROM {t};\nINSERT INTO {t} ({column_list}) SELECT {column_list} FROM {};",
        def.quoted(),
        t = table.quoted()
    );

    // Rollback, after the triggers and functions.
    let r = &mut rollback;
    if f.in_place {
        let body = format!(
            "BEGIN\n    IF EXISTS ({}) THEN\n        DROP TABLE {};\n    END IF;\nEND;\n",
            relkind_is(v, "r"),
            v.quoted()
        );
        let _ = writeln!(r, "DO {};", dollar(&body));
        let _ = writeln!(r, "SET LOCAL search_path TO {search_path};");
        let _ = writeln!(
            r,
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {} AS\n{definition};",
            v.quoted()
        );
        index_sql(r);
        grant_sql(r, &format!("TABLE {}", v.quoted()));
    } else {
        let _ = writeln!(r, "DROP TABLE IF EXISTS {};", table.quoted());
    }
    let _ = writeln!(r, "DROP VIEW IF EXISTS {};", def.quoted());
    generated.install = install;
    generated.rollback = rollback;
    generated.capture = capture;
    Ok(generated)
}
