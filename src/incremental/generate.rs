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
//! - [`How::JoinPath`]: the columns its changed rows (old and new) reach the key by
//!   (the first column of each path, and any key column it carries itself), into the
//!   table's *reach* buffer ([`Reach`]); the refresh joins them along each path to
//!   the table that carries the key, in its own snapshot, and recomputes the keys it
//!   finds. No lock: a key read at the refresh is right whatever moved before it, where
//!   a key read by the writer's trigger was right only if nothing on its path moved
//!   before the writer committed (`sql/attendance/005_keyed_statistics.sql` locks the
//!   path for that; `tests/keyed_locks.rs` shows what locking left open).
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
//! The trigger functions are SECURITY DEFINER without a `SET search_path` (it costs
//! every writing statement): nothing in them resolves through the writer's path
//! (qualified tables and functions, operators as [`pg_op`]).
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
    /// Its generated columns whose value a statement trigger's transition table may not
    /// hold: VIRTUAL ones (PostgreSQL 18: always NULL there), and STORED ones of a
    /// partitioned table or a partition (NULL through the parent when the partition's
    /// columns are laid out otherwise, after a dropped column). Read by the capture,
    /// an UPDATE takes all its old and new rows; as a key or join column, every change
    /// means everything; and no deltas are taken from such a table.
    pub generated: Vec<String>,
    /// Row-level security applies to that role on this table: the triggers' joins
    /// would not see the rows its policies hide, and miss their keys. Refused.
    pub row_security: bool,
    /// One of its row-level security policies reads the role evaluating it
    /// (`CURRENT_USER`, a privilege inquiry): the view's rows depend on who computes
    /// them (REFRESH: the owner; refreshd: its own role). Refused.
    pub policy_reads_role: bool,
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
    /// The columns whose collation is not their type's (a `COLLATE "C"` label, a
    /// case-insensitive ICU collation): name and collation, schema-qualified and quoted.
    /// The table and the key buffer keep them, so that the table sorts and compares
    /// keys as the view did (with a nondeterministic collation, 'zz' and 'ZZ' are one
    /// group, and must be one row of the table).
    pub collations: Vec<(String, String)>,
    /// The columns whose type's equality is not in `pg_catalog`, as
    /// `OPERATOR(schema.=)` (see [`super::delta::DeltaFacts::equality`]).
    pub equality: Vec<(String, String)>,
    /// The columns whose type is a domain: name and the domain's base type
    /// (`format_type`, through domains over domains). The key buffer and the consume
    /// function hold keys in the base type: their "everything" rows have NULL keys,
    /// which a `NOT NULL` domain refuses (every write failed).
    pub domains: Vec<(String, String)>,
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
    /// The view's owner. In place, the table and the definition view are given to it
    /// (and the rollback gives it the materialized view again): the role that owned
    /// the view keeps reading and writing what replaced it, whoever ran `init`.
    pub owner: Option<String>,
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
    /// `format_type` of each key column, in `key` order (a domain's base type).
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
    /// The consume function runs with `enable_mergejoin = off` (a function setting,
    /// reverted when it returns): with tombstones, the apply reads a dimension as a
    /// UNION ALL, for whose columns PostgreSQL has no statistics, and its default
    /// estimates made it read a whole dimension in key order for a merge join (TPC-H
    /// Q3 at SF 0.1, 6,000 changed lineitems: 135 ms, against 22 ms by index lookups
    /// and hash joins).
    pub consume_no_merge_join: bool,
    /// Every table in schema `refreshd` the install makes for this view (key, row, reach,
    /// tombstone and pending buffers): what the consume function empties without reading
    /// when refreshd recomputes everything ([`CONSUME_EVERYTHING`]).
    pub buffers: Vec<QualifiedName>,
    /// The fact table whose changes are applied as deltas (`schema.name`).
    pub delta_fact: Option<QualifiedName>,
    /// The same as the derivation names it (`schema.name`): written into the consume
    /// function's comment, where `check` reads which table takes deltas.
    pub delta_fact_table: Option<String>,
    /// Statements, without BEGIN/COMMIT: the caller runs them in its transaction.
    pub install: String,
    pub rollback: String,
    /// One line per base table: what its triggers send.
    pub capture: Vec<String>,
    /// A boolean SQL expression: whether this very conversion is in place already (the
    /// definition view records the digest of this install, and every trigger, buffer
    /// and function it creates is there as it creates them, the triggers enabled
    /// ALWAYS). `init --keyed --apply` run again then applies nothing: no lock, no
    /// recompute ([`crate::pg::conversion::in_place_already`]).
    pub current: String,
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

/// The setting refreshd turns on (`SET LOCAL`) before it calls a consume function in a
/// refresh that recomputes everything: the function then empties its buffers and
/// returns no key (functions generated before it read them as always).
pub const CONSUME_EVERYTHING: &str = "refreshd.consume_everything";

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
    if plpgsql {
        body.push_str(&everything_sql(g));
    }
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
    // With tombstones, no merge joins (Generated::consume_no_merge_join), and the bulk
    // apply's ANALYZE of the buffer samples a few thousand rows, not 30,000.
    let merge = if g.consume_no_merge_join {
        "SET enable_mergejoin = off\nSET default_statistics_target = 10\n"
    } else {
        ""
    };
    format!(
        "CREATE OR REPLACE FUNCTION {f}()\nRETURNS TABLE ({})\nLANGUAGE {}\nVOLATILE\nSECURITY DEFINER\nSET search_path = {search_path}\n{merge}AS {};\nREVOKE ALL ON FUNCTION {f}() FROM PUBLIC;\nCOMMENT ON FUNCTION {f}() IS {};\n",
        returns(g),
        if plpgsql { "plpgsql" } else { "sql" },
        dollar(&body),
        literal(&consume_comment(g)),
        f = g.consume.quoted(),
    )
}

/// The top of a PL/pgSQL consume function: in a refresh that recomputes everything
/// ([`CONSUME_EVERYTHING`]), which covers every change buffered, the buffers are
/// emptied (in the refresh's snapshot, as below), not read. Resolving a reach buffer
/// looks each changed row's facts up, a scan per row without an index on the join
/// column: 200 times a REFRESH of the same query (found by a review).
fn everything_sql(g: &Generated) -> String {
    if g.buffers.is_empty() {
        return String::new();
    }
    let deletes: String = g
        .buffers
        .iter()
        .map(|b| format!("    DELETE FROM {};\n", b.quoted()))
        .collect();
    format!(
        "IF pg_catalog.current_setting('{CONSUME_EVERYTHING}', true) {} 'on' THEN\n{deletes}    RETURN;\nEND IF;\n",
        pg_op("=")
    )
}

/// The consume function's comment; its end says whether the view takes deltas, and
/// from which table (as the derivation names it), for `check` ([`deltas_of_comment`]).
fn consume_comment(g: &Generated) -> String {
    let deltas = match &g.delta_fact_table {
        Some(t) => format!("{DELTAS_FROM}{t}"),
        None => NO_DELTAS.to_string(),
    };
    format!("{}{deltas}", consume_comment_head(&g.table))
}

fn consume_comment_head(table: &QualifiedName) -> String {
    format!(
        "refreshd: consumes the change buffer of keyed view {table} (called by refreshd in its refresh transaction: config buffer)"
    )
}

const DELTAS_FROM: &str = "; deltas from ";
const NO_DELTAS: &str = "; no deltas";

/// What the comment of keyed view `table`'s consume function says of deltas:
/// `Some(Some(fact))` (the table, as the derivation names it), `Some(None)` (none),
/// `None` (another comment, or one written before it said).
pub fn deltas_of_comment(comment: &str, table: &QualifiedName) -> Option<Option<String>> {
    let rest = comment.strip_prefix(&consume_comment_head(table))?;
    if let Some(t) = rest.strip_prefix(DELTAS_FROM) {
        return Some(Some(t.to_string()));
    }
    (rest == NO_DELTAS).then_some(None)
}

/// The consume function's columns: the key columns with their types, then the
/// "everything" flag.
fn returns(g: &Generated) -> String {
    g.key
        .iter()
        .zip(&g.key_types)
        .map(|(k, ty)| format!("{} {ty}", quote_ident(k)))
        .chain(std::iter::once(format!(
            "{} boolean",
            quote_ident(&g.all_column)
        )))
        .collect::<Vec<_>>()
        .join(", ")
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
    let full = format!(
        "{}keys_{}_{}",
        crate::pg::capture::CHANNEL_PREFIX,
        view.schema,
        view.name
    );
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
/// The words before the hash in the definition view's comment ([`reads_marker_sql`]).
pub const READS_MARKER: &str = "names read: md5 ";

/// How the comment on a conversion's definition view begins (then the keyed table's
/// name and the [`READS_MARKER`]).
pub const DEFINITION_COMMENT_PREFIX: &str = "refreshd: the definition of keyed view ";

/// The md5 of every name a view reads, through the plain views it reads: each
/// relation as `schema.name`, each column read as `schema.name.column`, sorted in the
/// "C" collation; a table with row-level security on is marked so (then no delta
/// applies: its policies decide which rows the definition sees, not the change). Built
/// from the rewrite rules' dependencies, so no setting (`search_path`, quoting) changes
/// it; a table, schema or column renamed, row security turned on or off, or the view
/// replaced by one reading other columns, does. `view` is a SQL expression giving the
/// view's oid. The capture a keyed conversion generates names those tables and columns
/// in its trigger functions' SQL, which PostgreSQL resolves by name again whenever the
/// function's plan is invalidated: after such a rename every write to the table fails
/// until the capture is generated again. `check` and `run` compare this hash with the
/// one the install recorded.
pub fn reads_md5_sql(view: &str) -> String {
    format!("(SELECT h.names FROM {} AS h)", read_md5s_sql(view))
}

/// The md5 of what a delta plan assumes of the columns a view reads (through the plain
/// views it reads), each as `schema.name.column`: NOT NULL when it is so and validated
/// (PostgreSQL 18 sets `attnotnull` for a `NOT VALID` constraint too, while older rows
/// may still be NULL), and a stored generated column's expression (PostgreSQL 17's
/// `SET EXPRESSION` rewrites every row and fires no trigger), as `pg_get_expr` prints
/// it under [`PINNED_SETTINGS`] (its stored tree holds OIDs and changes form between
/// majors: a restore or an upgrade made it differ). A sum whose input cannot be NULL needs no count of its non-NULL
/// inputs: after `DROP NOT NULL` such a plan would keep 0 where the definition gives
/// NULL, so the install records this hash too, and `check` and `run` compare it as
/// they compare [`reads_md5_sql`]'s.
pub fn columns_md5_sql(view: &str) -> String {
    format!("(SELECT h.columns FROM {} AS h)", read_md5s_sql(view))
}

/// [`reads_md5_sql`] and [`columns_md5_sql`] as one row (`names`, `columns`), from one
/// walk of the dependencies (the catalog poll computes both for every keyed view).
pub fn read_md5s_sql(view: &str) -> String {
    let (eq, ne, gt, cat) = (pg_op("="), pg_op("<>"), pg_op(">"), pg_op("||"));
    let name = format!(
        "pg_catalog.quote_ident(n.nspname) {cat} '.' {cat} pg_catalog.quote_ident(c.relname)"
    );
    // NULL for a relation: only columns count.
    let column = format!(
        "{name} {cat} '.' {cat} pg_catalog.quote_ident(a.attname) \
         {cat} CASE WHEN a.attnotnull AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k \
              WHERE k.conrelid {eq} a.attrelid AND k.contype {eq} 'n' AND k.conkey[1] {eq} a.attnum \
                AND NOT k.convalidated) THEN ' not null' ELSE '' END \
         {cat} CASE WHEN a.attgenerated {ne} '' THEN ' generated ' {cat} COALESCE((SELECT \
              pg_catalog.md5(pg_catalog.pg_get_expr(x.adbin, x.adrelid)) \
              FROM pg_catalog.pg_attrdef x WHERE x.adrelid {eq} a.attrelid AND x.adnum {eq} a.attnum), '') \
              ELSE '' END"
    );
    let names = format!(
        "{name} {cat} COALESCE('.' {cat} pg_catalog.quote_ident(a.attname), '') \
         {cat} CASE WHEN c.relrowsecurity THEN ' with row security' ELSE '' END"
    );
    let agg = |which: &str| {
        format!(
            "pg_catalog.md5(COALESCE(pg_catalog.string_agg(s.x, ',' ORDER BY s.x COLLATE \"C\") FILTER (WHERE s.names {eq} {which}), ''))"
        )
    };
    format!(
        "(WITH RECURSIVE r(relid) AS (SELECT ({view})::pg_catalog.oid \
         UNION SELECT d.refobjid FROM r JOIN pg_catalog.pg_class rc ON rc.oid {eq} r.relid AND rc.relkind {eq} 'v' \
           JOIN pg_catalog.pg_rewrite w ON w.ev_class {eq} r.relid \
           JOIN pg_catalog.pg_depend d ON d.classid {eq} 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid {eq} w.oid \
            AND d.refclassid {eq} 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid {ne} r.relid) \
         SELECT {} AS names, {} AS columns FROM ( \
           SELECT DISTINCT v.names, v.x \
             FROM r JOIN pg_catalog.pg_rewrite w ON w.ev_class {eq} r.relid \
             JOIN pg_catalog.pg_depend d ON d.classid {eq} 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid {eq} w.oid \
              AND d.refclassid {eq} 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid {ne} r.relid \
             JOIN pg_catalog.pg_class c ON c.oid {eq} d.refobjid \
             JOIN pg_catalog.pg_namespace n ON n.oid {eq} c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid {eq} d.refobjid AND d.refobjsubid {gt} 0 \
              AND a.attnum {eq} d.refobjsubid \
             CROSS JOIN LATERAL (VALUES (true, {names}), (false, {column})) AS v(names, x) \
            WHERE v.x IS NOT NULL) AS s)",
        agg("true"),
        agg("false"),
    )
}

/// Whether the capture of the keyed view whose definition view's oid is `view` (a SQL
/// expression) was generated for other names than the definition reads now: the hash
/// [`reads_md5_sql`] recorded in its comment differs from the catalog's, or the hash
/// [`columns_md5_sql`] does (when recorded: conversions made before it recorded none).
/// False for a conversion that recorded neither (made before this check).
pub fn stale_capture_sql(view: &str) -> String {
    let comment = format!("pg_catalog.obj_description({view}, 'pg_class')");
    format!(
        "(SELECT rec.m IS NOT NULL AND (rec.m IS DISTINCT FROM h.names OR (rec.k IS NOT NULL AND rec.k IS DISTINCT FROM h.columns) \
                OR (rec.d IS NOT NULL AND rec.d IS DISTINCT FROM {})) \
           FROM (SELECT {} AS m, {} AS k, {} AS d) AS rec, {} AS h)",
        definition_md5_sql(view),
        recorded_md5_sql(&comment),
        recorded_columns_md5_sql(&comment),
        recorded_definition_md5_sql(&comment),
        read_md5s_sql(view),
    )
}

/// The settings under which the definition's text and a generated column's expression
/// are printed for their md5s (the install's and every check's): the schema path, and
/// what constants print with (a `timestamptz`, a date, an interval, a float, money), as
/// `pg_dump` pins them. Without them a role with another `TimeZone` read a definition
/// holding a `timestamptz` constant as changed (found by a review).
pub const PINNED_SETTINGS: &[(&str, &str)] = &[
    ("search_path", "pg_catalog"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("lc_monetary", "C"),
];

/// `SET LOCAL` of every [`PINNED_SETTINGS`], `;`-separated.
pub fn pinned_set_local_sql() -> String {
    PINNED_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET LOCAL {k} = {}", literal(v)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The md5 of a definition view's text (`view`: a SQL expression giving its oid), as
/// `pg_get_viewdef` prints it with `search_path = pg_catalog` (every other name
/// qualified): what the install records, and a check compares under that same
/// setting ([`crate::pg::capture::with_catalog_path`]). Names alone do not tell a
/// definition replaced by one reading the same columns otherwise (`CREATE OR REPLACE
/// VIEW` adding a condition): its deltas would still be computed from the old text.
pub fn definition_md5_sql(view: &str) -> String {
    format!("pg_catalog.md5(pg_catalog.pg_get_viewdef(({view})::pg_catalog.oid))")
}

/// The md5 a definition view's comment (`comment`, a SQL expression) recorded after
/// [`DEFINITION_MARKER`]; NULL without one.
fn recorded_definition_md5_sql(comment: &str) -> String {
    format!("pg_catalog.substring({comment}, '{DEFINITION_MARKER}([0-9a-f]{{32}})')")
}

/// The words before [`definition_md5_sql`]'s hash in the definition view's comment.
pub const DEFINITION_MARKER: &str = "definition: md5 ";

/// The md5 a definition view's comment (`comment`, a SQL expression) recorded after
/// [`READS_MARKER`]; NULL without one.
pub fn recorded_md5_sql(comment: &str) -> String {
    format!("pg_catalog.substring({comment}, '{READS_MARKER}([0-9a-f]{{32}})')")
}

/// The md5 a definition view's comment (`comment`, a SQL expression) recorded after
/// [`COLUMNS_MARKER`]; NULL without one.
pub fn recorded_columns_md5_sql(comment: &str) -> String {
    format!("pg_catalog.substring({comment}, '{COLUMNS_MARKER}([0-9a-f]{{32}})')")
}

/// The words before [`columns_md5_sql`]'s hash in the definition view's comment.
pub const COLUMNS_MARKER: &str = "columns read as: md5 ";

pub(super) fn dollar(body: &str) -> String {
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

/// A built-in operator, named with its schema (`OPERATOR(pg_catalog.=)`): the trigger
/// functions run with their caller's search_path (module doc), where a bare `=` could
/// resolve to an operator in a schema the caller put before `pg_catalog`. The syntax
/// has one precedence for every operator: parenthesize around it.
pub(crate) fn pg_op(o: &str) -> String {
    format!("OPERATOR(pg_catalog.{o})")
}

pub(super) fn literal(s: &str) -> String {
    crate::pg::refresh::quote_literal(s)
}

fn list(names: &[String], prefix: &str) -> String {
    names
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ROW(a."x", a."y")::pg_catalog.text AS "refreshd_image"`: the columns' text image,
/// compared next to the columns themselves where an UPDATE's old and new rows are
/// paired (a multiset difference). A type's `=` can call values equal that readers
/// see differently (numeric `1.0` and `1.00`, jsonb `{"v": 1}` and `{"v": 1.0}`,
/// intervals `24 hours` and `1 day`, a case-insensitive collation's `a` and `A`): paired
/// by `=` alone such an UPDATE changed nothing, and the view kept showing the old
/// value. Both old and new rows are printed by one statement under the same settings.
/// The alias is a name none of `names` has.
pub(crate) fn image_column(names: &[String], alias: &str) -> String {
    let mut name = String::from("refreshd_image");
    while names.contains(&name) {
        name.push('_');
    }
    format!(
        "ROW({})::pg_catalog.text AS {}",
        list(names, &format!("{alias}.")),
        quote_ident(&name)
    )
}

/// The plain columns of a carry, when every key column is one.
fn plain(c: &Carry) -> Option<Vec<String>> {
    c.columns.iter().cloned().collect()
}

/// What one base table's trigger function computes.
#[derive(Clone)]
enum Source {
    /// Every change sends `*`, for this reason.
    All(String),
    /// Key SELECTs (each over `d`, the changed rows): the key columns it carries.
    Keys(Vec<String>),
    /// The delta fact table's changed rows, into the delta plan's row buffer.
    Rows,
    /// The columns it reaches the key by, resolved into keys at the refresh.
    Reach(Reach),
}

/// A table reaching the key through join paths: its changed rows' columns that lead
/// to the key, buffered by its triggers into `refreshd."<schema>_<view>_reach_<table>…"`
/// (UNLOGGED, typed like the table's columns); the consume function turns them into
/// keys in the refresh's snapshot ([`Reach::resolve_sql`]) before it reads the key
/// buffer, and empties it.
#[derive(Clone)]
struct Reach {
    buffer: QualifiedName,
    table: QualifiedName,
    /// The table's columns buffered: each key column it carries, each path's first.
    columns: Vec<String>,
    /// Key SELECTs over `r`, the buffered rows (made distinct first).
    keys: Vec<String>,
}

impl Reach {
    /// The consume function's statement moving the buffered rows' keys into the key
    /// buffer `keys` (columns `key`).
    fn resolve_sql(&self, keys: &QualifiedName, key: &[String]) -> String {
        let cols: Vec<String> = (1..=key.len()).map(|i| format!("k{i}")).collect();
        format!(
            "WITH taken AS (DELETE FROM {} RETURNING {}), r AS (SELECT DISTINCT * FROM taken)\n\
             INSERT INTO {} ({}) SELECT * FROM ({}) AS u({})",
            self.buffer.quoted(),
            list(&self.columns, ""),
            keys.quoted(),
            list(key, ""),
            self.keys.join(" UNION ALL "),
            cols.join(", ")
        )
    }
}

/// An UNLOGGED table in schema refreshd with `columns` of `from` (typed and collated
/// like them), created empty again, closed to PUBLIC, its comment saying `what` it
/// holds; its DROP into `rollback`.
fn columns_table_sql(
    table: &QualifiedName,
    columns: &[String],
    from: &QualifiedName,
    what: &str,
    w: &mut String,
    rollback: &mut String,
) {
    let q = table.quoted();
    let _ = writeln!(
        w,
        "DROP TABLE IF EXISTS {q};\n\
         CREATE UNLOGGED TABLE {q} AS SELECT {} FROM {} WITH NO DATA;\n\
         REVOKE ALL ON TABLE {q} FROM PUBLIC;\n\
         COMMENT ON TABLE {q} IS {};",
        list(columns, ""),
        from.quoted(),
        literal(&format!(
            "refreshd: {what}. Unlogged: lost in a crash, after which refreshd recomputes everything."
        ))
    );
    let _ = writeln!(rollback, "DROP TABLE IF EXISTS {q};");
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// Why a key column that is an expression gets no generated capture.
const EXPRESSION_KEY: &str =
    "a key column is an expression over its columns (generated capture reads plain columns)";

/// The names of what a conversion creates, all derived from the view's and bounded to
/// an identifier.
struct Names {
    /// The live table (the view's own name in place).
    table: QualifiedName,
    /// The plain view holding the definition.
    def: QualifiedName,
    channel: String,
    /// The change buffer and its consume function, in schema refreshd.
    buffer: QualifiedName,
    consume: QualifiedName,
    /// The trigger function buffering "everything" (TRUNCATE).
    all_function: QualifiedName,
    /// The buffer's "everything" column: `all_`, longer while a key column has the name.
    all_column: String,
}

/// `<relation>_<suffix>` in the relation's schema (cut and hashed past 63 bytes): beside a
/// view, or (incremental::guard) beside a consume function.
pub(super) fn beside(v: &QualifiedName, suffix: &str) -> QualifiedName {
    QualifiedName::new(
        v.schema.clone(),
        bounded(
            &format!("{}_{suffix}", v.name),
            &[&v.schema, &v.name, suffix],
            true,
        ),
    )
}

/// The table a conversion not in place keeps (`<view>_live`).
pub fn live_table(v: &QualifiedName) -> QualifiedName {
    beside(v, "live")
}

/// The plain view holding a conversion's definition (`<view>_def`).
pub fn definition_view(v: &QualifiedName) -> QualifiedName {
    beside(v, "def")
}

/// How the comment on a keyed table refreshd created begins (see [`Conversion`]'s
/// table SQL): `init --keyed --in-place` recognizes a view it converted before by it.
pub fn keyed_table_comment_prefix(v: &QualifiedName) -> String {
    format!(
        "Kept equal to {} by refreshd (kind = \"keyed\"",
        definition_view(v)
    )
}

/// A name in schema `refreshd` for view `v`'s conversion: buffer and consume function
/// are named after the view's schema and name (exact when the schema has no `_`, so
/// that no two views' names meet).
fn in_refreshd(v: &QualifiedName, suffix: &str, identity: &str) -> QualifiedName {
    QualifiedName::new(
        "refreshd",
        bounded(
            &format!("{}_{}_{suffix}", v.schema, v.name),
            &[&v.schema, &v.name, identity],
            !v.schema.contains('_'),
        ),
    )
}

/// The function consuming view `v`'s change buffer (`refreshd.<schema>_<view>_consume`).
pub fn consume_function(v: &QualifiedName) -> QualifiedName {
    in_refreshd(v, "consume", "consume")
}

impl Names {
    fn new(d: &Derivation, v: &QualifiedName, in_place: bool) -> Names {
        let in_refreshd = |suffix: &str, identity: &str| in_refreshd(v, suffix, identity);
        let mut all_column = "all_".to_string();
        while d.key.contains(&all_column) {
            all_column.push('_');
        }
        Names {
            table: if in_place { v.clone() } else { live_table(v) },
            def: definition_view(v),
            channel: channel_for(v),
            buffer: in_refreshd("keys", "buffer"),
            consume: in_refreshd("consume", "consume"),
            all_function: QualifiedName::new(
                v.schema.clone(),
                bounded(
                    &format!("{}_keys_all", v.name),
                    &[&v.schema, &v.name, "all"],
                    true,
                ),
            ),
            all_column,
        }
    }
}

/// One conversion being generated: its inputs, the base tables by name, the names.
struct Conversion<'a> {
    d: &'a Derivation,
    f: &'a Facts,
    by_name: BTreeMap<&'a str, &'a BaseTable>,
    n: Names,
    /// The `format_type` of each key column, in key order.
    key_types: Vec<String>,
    /// The tables the install creates in schema refreshd (buffers), for
    /// [`Generated::current`].
    created: std::cell::RefCell<Vec<QualifiedName>>,
    /// The triggers it creates: (table, trigger, function), for [`Generated::current`].
    triggers: std::cell::RefCell<Vec<(QualifiedName, String, QualifiedName)>>,
    /// Parts of the install left out of its digest (see [`Conversion::table_sql`]).
    unhashed: std::cell::RefCell<Vec<String>>,
    /// The foreign-key guards' keeper, when a guard spares a table's capture
    /// ([`super::guard`]).
    keeper: Option<super::guard::Keeper>,
}

/// Refuses what no conversion can keep: no key, a key column the view lacks, an
/// unknown privilege in its ACL.
fn check_inputs(d: &Derivation, f: &Facts) -> Result<(), String> {
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
    Ok(())
}

impl<'a> Conversion<'a> {
    /// Checks the inputs and every base table's kind (a table triggers can capture).
    fn new(d: &'a Derivation, f: &'a Facts) -> Result<Conversion<'a>, String> {
        check_inputs(d, f)?;
        let key_types = d
            .key
            .iter()
            .map(|k| {
                f.domains
                    .iter()
                    .chain(&f.columns)
                    .find(|(c, _)| c == k)
                    .map(|(_, ty)| ty.clone())
                    .expect("checked above")
            })
            .collect();
        let by_name: BTreeMap<&str, &BaseTable> =
            f.tables.iter().map(|t| (t.table.as_str(), t)).collect();
        let guards: Vec<&super::InsertGuard> = d
            .tables
            .iter()
            .filter_map(|t| t.inserts.as_ref())
            .chain(
                f.delta
                    .iter()
                    .flat_map(|p| p.tombs.iter().map(|t| &t.guard)),
            )
            .collect();
        let keeper = super::guard::Keeper::new(&consume_function(&f.view), &guards, |t| {
            by_name.get(t).map(|b| b.name.clone())
        })?;
        let c = Conversion {
            d,
            f,
            by_name,
            n: Names::new(d, &f.view, f.in_place),
            key_types,
            created: Default::default(),
            triggers: Default::default(),
            unhashed: Default::default(),
            keeper,
        };
        for t in &d.tables {
            let b = c.table_of(&t.table)?;
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
        Ok(c)
    }

    fn table_of(&self, name: &str) -> Result<&'a BaseTable, String> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| format!("{name} is not among the base tables' catalog facts"))
    }

    fn trigger_name(&self, op: &str) -> String {
        let v = &self.f.view;
        bounded(
            &format!("{}_keys_{op}", v.name),
            &[&v.schema, &v.name, op],
            v.schema == "public",
        )
    }

    /// A base table's trigger function for one operation (`insert`, `update`,
    /// `delete`): one per operation, so that a writer's call runs no `TG_OP` test
    /// (exact unless two base tables share a name).
    /// Named `<view>_keys_{ins,upd,del}_<table>`.
    fn function(&self, t: &BaseTable, op: &str) -> QualifiedName {
        let short = match op {
            "insert" => "ins",
            "update" => "upd",
            _ => "del",
        };
        self.function_named(t, short, &[op])
    }

    /// The one trigger function per base table that conversions before per-operation
    /// functions installed (`<view>_keys_from_<table>`): dropped by the install once
    /// its triggers are replaced, and by the rollback.
    fn former_function(&self, t: &BaseTable) -> QualifiedName {
        self.function_named(t, "from", &[])
    }

    fn function_named(&self, t: &BaseTable, infix: &str, extra: &[&str]) -> QualifiedName {
        let v = &self.f.view;
        let same_name = self
            .f
            .tables
            .iter()
            .filter(|o| o.name.name == t.name.name)
            .count()
            > 1;
        let mut identity = vec![
            v.schema.as_str(),
            v.name.as_str(),
            t.name.schema.as_str(),
            t.name.name.as_str(),
        ];
        identity.extend_from_slice(extra);
        QualifiedName::new(
            v.schema.clone(),
            bounded(
                &format!("{}_keys_{infix}_{}", v.name, t.name.name),
                &identity,
                !same_name,
            ),
        )
    }

    /// Refuses base tables whose row-level security would hide rows from the capture
    /// or the refresh.
    fn check_row_security(&self) -> Result<(), String> {
        if let Some(b) = self.f.tables.iter().find(|b| b.policy_reads_role) {
            return Err(format!(
                "a row-level security policy on {} reads the role evaluating it (CURRENT_USER, a privilege inquiry...): REFRESH computes the view as its owner, refreshd as the role it connects as, so the rows could differ",
                b.name
            ));
        }
        if let Some(b) = self.f.tables.iter().find(|b| b.row_security) {
            return Err(format!(
                "row-level security on {} applies to the role running init, as whom the capture triggers run: they would not see the rows its policies hide, nor the keys those rows reach (run init as a role that bypasses it: a superuser, a BYPASSRLS role, or the table's owner when it does not FORCE ROW LEVEL SECURITY)",
                b.name
            ));
        }
        Ok(())
    }

    /// The `search_path` the definition resolves under (as it was printed).
    fn search_path(&self) -> String {
        if self.f.search_path.is_empty() {
            "pg_catalog".to_string()
        } else {
            list(&self.f.search_path, "")
        }
    }

    fn definition(&self) -> &str {
        self.f.definition.trim().trim_end_matches(';').trim_end()
    }

    /// The locks the install needs, taken first and in the order refreshd's refresh and
    /// the writers take theirs: the keyed table (a refresh locks it, then reads the
    /// buffers and the base tables), here when it is a table already (a conversion
    /// again; the first in place drops the materialized view before the base tables are
    /// locked, as a REFRESH of it takes them: [`Conversion::base_locks_sql`]).
    fn locks_sql(&self, w: &mut String) {
        let table = &self.n.table;
        // LOCK TABLE takes no materialized view.
        let body = format!(
            "BEGIN\n    IF EXISTS ({}) THEN\n        LOCK TABLE {} IN ACCESS EXCLUSIVE MODE;\n    END IF;\nEND;\n",
            Self::relkind_is(table, "r"),
            table.quoted()
        );
        let _ = writeln!(
            w,
            "\n-- {}",
            sql_comment(&format!(
                "Locks first: the keyed table {table}, then the base tables, the fact table first."
            ))
        );
        let _ = writeln!(w, "DO {};", dollar(&body));
    }

    /// The base tables' locks (each with its partitions; the fact table first: its
    /// writers lock it, then the dimensions its foreign keys name), all ACCESS
    /// EXCLUSIVE (DROP TRIGGER takes that on each), before any buffer is dropped: then
    /// no writer holds a buffer the install drops (a writer's trigger writes one while
    /// holding its table). Taken as the statements came, the install dropped the
    /// buffers first and then waited for a base table whose writers waited for a
    /// buffer: converting again under steady writers deadlocked at every attempt (found
    /// by a review).
    fn base_locks_sql(&self, w: &mut String) {
        let fact = self.f.delta.as_ref().map(|p| p.fact.as_str());
        let mut tables: Vec<&BaseTable> = Vec::new();
        for t in fact
            .into_iter()
            .chain(self.d.tables.iter().map(|t| t.table.as_str()))
        {
            if let Some(b) = self.by_name.get(t) {
                if !tables.iter().any(|x| x.name == b.name) {
                    tables.push(b);
                }
            }
        }
        if !tables.is_empty() {
            let names: Vec<String> = tables.iter().map(|b| b.name.quoted()).collect();
            let _ = writeln!(
                w,
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE;",
                names.join(", ")
            );
        }
    }

    /// A query finding `name` with this relkind.
    fn relkind_is(name: &QualifiedName, kind: &str) -> String {
        format!(
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind = {}",
            literal(&name.schema),
            literal(&name.name),
            literal(kind)
        )
    }

    /// The view's own indexes, each `IF NOT EXISTS`.
    fn index_sql(&self, out: &mut String) {
        for ix in &self.f.indexes {
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
    }

    /// The view's grants, on `on`.
    fn grant_sql(&self, out: &mut String, on: &str) {
        for g in &self.f.grants {
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
    }

    /// ` COLLATE <collation>` for a column whose collation is not its type's, else
    /// nothing.
    fn collate(&self, column: &str) -> String {
        self.f
            .collations
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, coll)| format!(" COLLATE {coll}"))
            .unwrap_or_default()
    }

    /// The header comment, the definition's view, and the live table with its index
    /// (or the view's indexes in place), grants and comment.
    fn table_sql(&self, w: &mut String) {
        let (d, f, n, v) = (self.d, self.f, &self.n, &self.f.view);
        let (table, def, channel) = (&n.table, &n.def, &n.channel);
        let _ = writeln!(
            w,
            "\n-- {}",
            sql_comment(&format!(
                "Keyed conversion of {v} (generated by `refreshd init --keyed`): definition {def}, table {table}, key ({}), channel {channel}.",
                d.key.join(", ")
            ))
        );
        // The definition, resolved as it was printed.
        let _ = writeln!(w, "SET LOCAL search_path TO {};", self.search_path());
        if f.in_place {
            let _ = writeln!(
                w,
                "-- The materialized view gives way to a table of the same name (its definition stays in {}).",
                sql_comment(&def.to_string())
            );
            // Views reading it are kept: saved and dropped here, created again once the
            // table is filled (the install's end).
            w.push_str(&super::dependents::save_and_drop_sql(v, 'm'));
            let body = format!(
                "BEGIN\n    IF EXISTS ({}) THEN\n        DROP MATERIALIZED VIEW {};\n    END IF;\nEND;\n",
                Self::relkind_is(v, "m"),
                v.quoted()
            );
            let _ = writeln!(w, "DO {};", dollar(&body));
        }
        self.base_locks_sql(w);
        let _ = writeln!(
            w,
            "CREATE OR REPLACE VIEW {} AS\n{};",
            def.quoted(),
            self.definition()
        );
        let _ = writeln!(
            w,
            "CREATE TABLE IF NOT EXISTS {} (\n{}\n);",
            table.quoted(),
            f.columns
                .iter()
                .map(|(c, ty)| format!("    {} {ty}{}", quote_ident(c), self.collate(c)))
                .collect::<Vec<_>>()
                .join(",\n")
        );
        self.table_indexes_and_grants_sql(w);
        let _ = writeln!(
            w,
            "COMMENT ON TABLE {} IS {};",
            table.quoted(),
            literal(&format!(
                "{}, key {}), fed by channel {channel}.",
                keyed_table_comment_prefix(v),
                d.key.join(", ")
            ))
        );
        self.owner_sql(w);
    }

    /// The keyed table's indexes and grants: in place, the view's own (read from it,
    /// or from the table it became), which applied again change nothing, so they are
    /// left out of the install's digest (a grant or index added later does not make a
    /// run again convert in full); beside, the key's unique index and the view's
    /// grants.
    fn table_indexes_and_grants_sql(&self, w: &mut String) {
        let (table, in_place) = (&self.n.table, self.f.in_place);
        let mut own = String::new();
        if in_place {
            self.index_sql(&mut own);
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
                list(&self.d.key, "")
            );
        }
        self.grant_sql(&mut own, &format!("TABLE {}", table.quoted()));
        w.push_str(&own);
        if in_place {
            self.unhashed.borrow_mut().push(own);
        }
    }

    /// In place, the table and the definition view go to the view's owner.
    fn owner_sql(&self, w: &mut String) {
        if let (true, Some(owner)) = (self.f.in_place, &self.f.owner) {
            let _ = writeln!(
                w,
                "ALTER TABLE {} OWNER TO {o};\nALTER VIEW {} OWNER TO {o};",
                self.n.table.quoted(),
                self.n.def.quoted(),
                o = quote_ident(owner)
            );
        }
    }

    /// The change buffer, dropped and created again (the fill covers whatever it held).
    fn buffer_sql(&self, w: &mut String) {
        let n = &self.n;
        let _ = writeln!(w, "CREATE SCHEMA IF NOT EXISTS refreshd;");
        let _ = writeln!(w, "DROP TABLE IF EXISTS {};", n.buffer.quoted());
        self.created.borrow_mut().push(n.buffer.clone());
        let _ = writeln!(
            w,
            "CREATE UNLOGGED TABLE {} (\n{},\n    {} boolean NOT NULL DEFAULT false\n);",
            n.buffer.quoted(),
            self.d
                .key
                .iter()
                .zip(&self.key_types)
                .map(|(k, ty)| format!("    {} {ty}{}", quote_ident(k), self.collate(k)))
                .collect::<Vec<_>>()
                .join(",\n"),
            quote_ident(&n.all_column)
        );
        let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", n.buffer.quoted());
        let _ = writeln!(
            w,
            "COMMENT ON TABLE {} IS {};",
            n.buffer.quoted(),
            literal(&format!(
                "refreshd: change buffer of keyed view {} (the keys its capture triggers found; {} = everything), consumed by {}(). Unlogged: lost in a crash, after which refreshd recomputes everything.",
                n.table, n.all_column, n.consume
            ))
        );
    }

    /// The conversion's names, before its SQL is written.
    fn generated(&self) -> Generated {
        let n = &self.n;
        Generated {
            table: n.table.clone(),
            definition: n.def.clone(),
            channel: n.channel.clone(),
            key: self.d.key.clone(),
            key_types: self.key_types.clone(),
            buffer: n.buffer.clone(),
            all_column: n.all_column.clone(),
            consume: n.consume.clone(),
            consume_prelude: Vec::new(),
            consume_recheck: None,
            consume_no_merge_join: false,
            buffers: Vec::new(),
            delta_fact: None,
            delta_fact_table: None,
            install: String::new(),
            rollback: String::new(),
            capture: Vec::new(),
            current: String::new(),
        }
    }

    /// With a delta plan: the row buffer and the recheck table, created again empty
    /// (the fill covers whatever they held) before the consume function that reads
    /// them; the apply becomes the consume function's prelude.
    fn delta_sql(&self, p: &DeltaPlan, w: &mut String, g: &mut Generated) -> Result<(), String> {
        if self.table_of(&p.fact)?.name != p.fact_name {
            return Err(format!(
                "the delta plan's fact table {} is not {}",
                p.fact_name, p.fact
            ));
        }
        let _ = writeln!(
            w,
            "-- {}",
            sql_comment(&format!(
                "Deltas: changes to {} are buffered as rows in {} and applied to {} by {}() (keys it cannot decide go through {}).",
                p.fact_name, p.buffer, self.n.table, self.n.consume, p.recheck
            ))
        );
        for st in p.rollback.iter().chain(&p.install) {
            let _ = writeln!(w, "{};", st.trim().trim_end_matches(';'));
        }
        let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", p.buffer.quoted());
        let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", p.recheck.quoted());
        let mut created = self.created.borrow_mut();
        created.extend([p.buffer.clone(), p.recheck.clone()]);
        for t in &p.tombs {
            let near = t.near.as_ref().map(|n| &n.buffer);
            for b in std::iter::once(&t.buffer).chain(near) {
                let _ = writeln!(w, "REVOKE ALL ON TABLE {} FROM PUBLIC;", b.quoted());
                created.push(b.clone());
            }
        }
        if p.probe.is_some() {
            let _ = writeln!(
                w,
                "REVOKE ALL ON TABLE {} FROM PUBLIC;",
                p.probe_table.quoted()
            );
            created.push(p.probe_table.clone());
        }
        drop(created);
        // A few rows: looked up by index; many: planned for their number (delta::sql).
        let few = p.apply.join(";\n");
        let mut prelude = Vec::new();
        // A tombstone matched twice would count its facts' deltas twice: everything
        // is recomputed instead (delta::tombs), after the apply, in this snapshot.
        if let Some(conflicts) = &p.tomb_conflicts {
            prelude.push(format!(
                "IF {conflicts} THEN\n{}\nEND IF",
                self.mark_all_sql(None)
            ));
        }
        prelude.push(format!(
            "IF (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM {buf} LIMIT {n}) AS b) < {n} THEN\n{few};\nELSE\n{bulk};\nEND IF",
            buf = p.buffer.quoted(),
            n = if p.tombs.is_empty() {
                super::delta::BULK_FROM
            } else {
                super::delta::BULK_FROM_WITH_TOMBS
            },
            bulk = p.apply_bulk,
        ));
        // Groups that lost rows, decided but for their existence (delta::probe).
        prelude.extend(p.probe.iter().cloned());
        prelude.extend(p.tomb_cleanup.iter().cloned());
        g.consume_prelude = prelude;
        g.consume_recheck = Some(p.recheck_keys.clone());
        g.consume_no_merge_join = !p.tombs.is_empty();
        g.delta_fact = Some(p.fact_name.clone());
        g.delta_fact_table = Some(p.fact.clone());
        Ok(())
    }

    /// The SELECT giving the keys a path reaches from the rows `r` its table's reach
    /// buffer took ([`Reach`]), joined in the refresh's snapshot; `Err`: the reason it
    /// cannot.
    fn path_keys(&self, p: &super::Path) -> Result<Result<String, String>, String> {
        let Some(last) = plain(&p.carry) else {
            return Ok(Err(format!(
                "the key of {} is an expression (generated capture reads plain columns)",
                p.tables.last().map(String::as_str).unwrap_or("?")
            )));
        };
        let mut from = "r".to_string();
        let mut joins = String::new();
        let mut by_row = String::new();
        for (i, s) in p.steps.iter().enumerate() {
            let alias = format!("j{}", i + 1);
            let on = format!(
                "{alias}.{} {} {from}.{}",
                quote_ident(&s.to_column),
                pg_op("="),
                quote_ident(&s.from_column)
            );
            let table = self.table_of(&p.tables[i + 1])?.name.quoted();
            let _ = if i == 0 {
                by_row = format!(" WHERE {on}");
                write!(joins, " FROM {table} AS {alias}")
            } else {
                write!(joins, " JOIN {table} AS {alias} ON {on}")
            };
            from = alias;
        }
        joins.push_str(&by_row);
        // Per buffered row, the path's rows by their join columns (OFFSET 0 keeps the
        // subquery a parameterized one): the buffer is never analyzed, and the planner,
        // sizing it by its pages, hashed whole dimensions for a few rows.
        Ok(Ok(format!(
            "SELECT x.* FROM r CROSS JOIN LATERAL (SELECT {}{joins} OFFSET 0) AS x",
            list(&last, &format!("{from}."))
        )))
    }

    /// The reach buffer of base table `b` (named after the view and the table).
    fn reach_buffer(&self, b: &BaseTable) -> QualifiedName {
        let v = &self.f.view;
        QualifiedName::new(
            "refreshd",
            bounded(
                &format!("{}_{}_reach_{}", v.schema, v.name, b.name.name),
                &[&v.schema, &v.name, "reach", &b.name.schema, &b.name.name],
                false,
            ),
        )
    }

    /// What a base table's trigger function computes from its changed rows.
    fn source(&self, t: &super::TableDerivation) -> Result<Source, String> {
        if let Some(g) = self.generated_key_column(t) {
            return Ok(Source::All(format!(
                "its column {g}, which gives the key or joins it, is generated, and its value may be missing from a trigger's transition table (VIRTUAL, or STORED in a partitioned table)"
            )));
        }
        let carried = |c: &Carry, alias: &str| {
            plain(c).map(|c| format!("SELECT {} FROM {alias}", list(&c, &format!("{alias}."))))
        };
        let source = match &t.how {
            How::Recompute { reason } => Source::All(reason.clone()),
            How::Carries(carries) => match carries.iter().map(|c| carried(c, "d")).collect() {
                None => Source::All(EXPRESSION_KEY.into()),
                Some(keys) => Source::Keys(keys),
            },
            How::JoinPath { carries, paths } => {
                let mut keys = Vec::new();
                let mut columns = Vec::new();
                let mut why = None;
                for c in carries {
                    match carried(c, "r") {
                        Some(k) => keys.push(k),
                        None => why = Some(EXPRESSION_KEY.to_string()),
                    }
                    for col in c.columns.iter().flatten() {
                        push_unique(&mut columns, col);
                    }
                }
                for p in paths {
                    match self.path_keys(p)? {
                        Ok(k) => keys.push(k),
                        Err(w) => why = Some(w),
                    }
                    if let Some(first) = p.steps.first() {
                        push_unique(&mut columns, &first.from_column);
                    }
                }
                match why {
                    Some(w) => Source::All(w),
                    None if keys.is_empty() => Source::Keys(keys),
                    None => {
                        let b = self.table_of(&t.table)?;
                        Source::Reach(Reach {
                            buffer: self.reach_buffer(b),
                            table: b.name.clone(),
                            columns,
                            keys,
                        })
                    }
                }
            }
        };
        // Nothing to compute keys from (no occurrence gave one): everything.
        Ok(match source {
            Source::Keys(k) if k.is_empty() => {
                Source::All("no occurrence of it gives the key".to_string())
            }
            other => other,
        })
    }

    /// Every reach buffer ([`Reach`]), created empty again (the fill covers what it
    /// held), and the rollback's DROPs.
    fn reach_sql(&self, sources: &[Source], w: &mut String, rollback: &mut String) {
        for r in sources.iter().filter_map(|s| match s {
            Source::Reach(r) => Some(r),
            _ => None,
        }) {
            let what = format!(
                "the values changed rows of {} reach keyed view {} by, turned into keys by {}() in its refresh's snapshot",
                r.table, self.n.table, self.n.consume
            );
            columns_table_sql(&r.buffer, &r.columns, &r.table, &what, w, rollback);
            self.created.borrow_mut().push(r.buffer.clone());
        }
    }
}

impl Conversion<'_> {
    /// A generated column of `t` ([`BaseTable::generated`]) the capture computes keys
    /// from (a key column it carries, or the first column of a join path).
    fn generated_key_column(&self, t: &super::TableDerivation) -> Option<String> {
        let b = self.table_of(&t.table).ok()?;
        let mut used: Vec<&String> = Vec::new();
        let carries = match &t.how {
            How::Carries(c) => c.as_slice(),
            How::JoinPath { carries, paths } => {
                used.extend(
                    paths
                        .iter()
                        .filter_map(|p| p.steps.first().map(|s| &s.from_column)),
                );
                carries.as_slice()
            }
            How::Recompute { .. } => &[],
        };
        used.extend(carries.iter().flat_map(|c| c.columns.iter().flatten()));
        used.into_iter().find(|c| b.generated.contains(c)).cloned()
    }
}

/// The changed rows of one operation, as a SELECT of the columns the definition reads
/// (an UPDATE: the rows that differ on them, by `=` or in their text image
/// ([`image_column`]), or all old and new rows when one of them cannot be compared, or
/// may be missing from the transition tables: a generated one).
fn changed_rows(reads: &[String], b: &BaseTable, op: &str) -> String {
    let reads_of = |alias: &str| list(reads, &format!("{alias}."));
    match op {
        "insert" => format!("SELECT {} FROM new_rows n", reads_of("n")),
        "delete" => format!("SELECT {} FROM old_rows o", reads_of("o")),
        _ if reads
            .iter()
            .any(|r| b.incomparable.contains(r) || b.generated.contains(r)) =>
        {
            format!(
                "SELECT {} FROM old_rows o UNION ALL SELECT {} FROM new_rows n",
                reads_of("o"),
                reads_of("n")
            )
        }
        _ => format!(
            "SELECT {d} FROM ((SELECT {o}, {oi} FROM old_rows o EXCEPT ALL SELECT {n}, {ni} FROM new_rows n) \
             UNION ALL (SELECT {n}, {ni} FROM new_rows n EXCEPT ALL SELECT {o}, {oi} FROM old_rows o)) AS d",
            d = reads_of("d"),
            o = reads_of("o"),
            n = reads_of("n"),
            oi = image_column(reads, "o"),
            ni = image_column(reads, "n"),
        ),
    }
}

/// For a table whose INSERTs foreign keys guard ([`super::inserts`]): the rows now in
/// it under a key its DELETE just removed, as its DELETE's capture reads them. A key
/// without `RESTRICT` is checked at the end of the statement, so one statement can
/// delete a referenced row and insert it again with other values (`WITH d AS (DELETE
/// ... RETURNING *) INSERT ... SELECT ... FROM d`): the facts then belong to the new
/// row, whose INSERT the guard let through uncaptured. The DELETE's trigger fires at
/// the end of that statement, after the INSERT, whichever of the two ran first, so it
/// finds the new row here and names its groups too (found by a review). One index
/// lookup per deleted row, by the referenced columns (a unique key). `None` when no
/// key guards the table's INSERTs.
fn reinserted_rows(reads: &[String], c: &TableCapture) -> Option<String> {
    let guard = c.t.inserts.as_ref()?;
    let mut keys: Vec<&Vec<String>> = Vec::new();
    for k in guard.occurrences.iter().flatten() {
        if k.references == c.t.table && !keys.contains(&&k.ref_columns) {
            keys.push(&k.ref_columns);
        }
    }
    if keys.is_empty() {
        return None;
    }
    let eq = pg_op("=");
    let matches: Vec<String> = keys
        .iter()
        .map(|cols| {
            let on: Vec<String> = cols
                .iter()
                .map(|col| format!("o.{q} {eq} t.{q}", q = quote_ident(col)))
                .collect();
            format!("({})", on.join(" AND "))
        })
        .collect();
    Some(format!(
        "SELECT {} FROM {} AS t WHERE EXISTS (SELECT 1 FROM old_rows o WHERE {})",
        list(reads, "t."),
        c.b.name.quoted(),
        matches.join(" OR ")
    ))
}

/// Drops a trigger function, with every trigger still using it wherever it is (a
/// partition detached since the conversion that created them, say): without them the
/// DROP would fail.
fn drop_function_sql(f: &QualifiedName) -> String {
    let body = format!(
        "DECLARE\n    t record;\nBEGIN\n    FOR t IN SELECT tg.tgname, tg.tgrelid::pg_catalog.regclass AS rel FROM pg_catalog.pg_trigger tg\n        WHERE tg.tgfoid {eq} pg_catalog.to_regprocedure({}) LOOP\n        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.rel);\n    END LOOP;\nEND;\n",
        literal(&format!("{}()", f.quoted())),
        eq = pg_op("="),
    );
    format!(
        "DO {};\nDROP FUNCTION IF EXISTS {}();\n",
        dollar(&body),
        f.quoted()
    )
}

/// `sql` with one level (four spaces) of indentation less on every line.
fn outdent(sql: &str) -> String {
    sql.lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One base table's capture: what its trigger function does, and how.
struct TableCapture<'c> {
    t: &'c super::TableDerivation,
    b: &'c BaseTable,
    source: Source,
    /// The delta plan, when this table is its fact table.
    delta: Option<&'c DeltaPlan>,
    /// Its DELETEs keep their rows for the apply (not naming groups).
    tomb: Option<&'c super::delta::Tomb>,
    /// The view's delta fact table, if any.
    delta_fact: Option<&'c String>,
}

impl Conversion<'_> {
    /// Rows buffered (`FOUND`, set by the buffer's INSERT, the last statement that sets
    /// it): wake refreshd unless a refresh is already due (module doc). One plpgsql
    /// expression: each costs a single-row writer its set-up once per transaction. A
    /// session that may PREPARE (`refreshd.two_phase = on`) records the wake-up in
    /// `refreshd.wakes` instead (a transaction that notified cannot be prepared); the
    /// setting is read only when a wake-up is due, so other writers never pay for it.
    fn wake_sql(&self) -> String {
        format!(
            "    IF FOUND AND NOT pg_catalog.pg_try_advisory_xact_lock_shared({ARM_CLASS} {plus} (pg_catalog.pg_backend_pid() {modulo} {ARM_SLOTS}), pg_catalog.hashtext({ch})) THEN\n        IF pg_catalog.current_setting({setting}, true) {eq} 'on' THEN\n            INSERT INTO {wakes} (channel) VALUES ({ch});\n        ELSE\n            PERFORM pg_catalog.pg_notify({ch}, '');\n        END IF;\n    END IF;\n    RETURN NULL;\n",
            ch = literal(&self.n.channel),
            plus = pg_op("+"),
            modulo = pg_op("%"),
            eq = pg_op("="),
            setting = literal(crate::pg::capture::TWO_PHASE_SETTING),
            wakes = crate::pg::capture::WAKES_TABLE,
        )
    }

    /// The "everything" marker, buffered when `rows` (a query) returns a row, or always.
    fn mark_all_sql(&self, rows: Option<&str>) -> String {
        let insert = format!(
            "INSERT INTO {} ({})",
            self.n.buffer.quoted(),
            quote_ident(&self.n.all_column)
        );
        match rows {
            Some(rows) => format!("{insert} SELECT true WHERE EXISTS ({rows});"),
            None => format!("{insert} VALUES (true);"),
        }
    }

    /// The body of a base table's trigger function for one operation: its rows (or
    /// keys) into the buffer, then the wake-up. No variable, no `TG_OP` test, no
    /// `GET DIAGNOSTICS`: every plpgsql expression and statement is paid by every
    /// single-row writing transaction (BENCHMARKS.md, "Capture cost in instructions").
    fn trigger_body(&self, c: &TableCapture, op: &str) -> String {
        let reads = &c.t.reads;
        let mut body = String::from("BEGIN\n");
        if let Some(k) = self.keeper.as_ref().filter(|k| k.touches(&c.b.name)) {
            body.push_str(&k.replica_sql());
        }
        let buffered = if let Some(p) = c.delta {
            // Rows for the apply instead of keys: no join, no lock.
            let capture = match op {
                "insert" => &p.capture_insert,
                "delete" => &p.capture_delete,
                _ => &p.capture_update,
            };
            Some((
                format!("        {};", capture.trim().trim_end_matches(';')),
                None,
            ))
        } else {
            let rows = match (op, reads.is_empty()) {
                ("update", true) => None,
                ("insert", true) => Some("SELECT 1 FROM new_rows".to_string()),
                (_, true) => Some("SELECT 1 FROM old_rows".to_string()),
                ("delete", false) => Some(match reinserted_rows(reads, c) {
                    Some(back) => format!("{} UNION ALL {back}", changed_rows(reads, c.b, op)),
                    None => changed_rows(reads, c.b, op),
                }),
                _ => Some(changed_rows(reads, c.b, op)),
            };
            let source = &c.source;
            let near = self.near_ctes(c.t);
            rows.map(|rows| {
                let pending = match self.pending_table(c, op) {
                    // Into the pending table, for the refresh to check (no wake-up: the
                    // deltas that make a row matter woke refreshd themselves).
                    Some((table, _)) => Some(format!(
                        "        INSERT INTO {} ({}) {rows};\n        RETURN NULL;",
                        table.quoted(),
                        list(reads, "")
                    )),
                    None => self
                        .pending_deltas(c, op)
                        .map(|cond| format!("SELECT r.* FROM ({rows}) AS r WHERE {cond}"))
                        .map(|rows| self.buffer_rows_sql(source, rows, op, &near)),
                };
                (self.buffer_rows_sql(source, rows, op, &near), pending)
            })
        };
        let buffered = buffered.map(|(b, pending)| {
            let b = self.guarded(op, c, b, pending);
            match (op, self.tomb_of(c.t), &self.keeper) {
                ("delete", Some(t), Some(k)) => Self::tombstoned(t, &k.holds_sql(), b),
                _ => b,
            }
        });
        match buffered {
            Some(b) => {
                let _ = writeln!(body, "{}", outdent(&b));
                body.push_str(&self.wake_sql());
            }
            // An UPDATE of a table whose columns the definition does not read.
            None => body.push_str("    RETURN NULL;\n"),
        }
        body.push_str("END;\n");
        body
    }

    /// An operation's capture statement, skipped for an INSERT while foreign keys
    /// guard the table's INSERTs (incremental::inserts) and the guard holds, as its
    /// keeper last found it (incremental::guard; `FOUND` stays
    /// false: it starts so in every call) — except, with `pending`, for the inserted
    /// rows the delta buffer's rows reference ([`Conversion::pending_deltas`]).
    fn guarded(
        &self,
        op: &str,
        c: &TableCapture,
        buffered: String,
        pending: Option<String>,
    ) -> String {
        match (op, &c.t.inserts, &self.keeper) {
            ("insert", Some(_), Some(k)) => format!(
                "        IF NOT ({}) THEN\n    {}\n{}        END IF;",
                k.holds_sql(),
                buffered.replace('\n', "\n    "),
                pending.map_or(String::new(), |p| format!(
                    "        ELSE\n    {}\n",
                    p.replace('\n', "\n    ")
                ))
            ),
            _ => buffered,
        }
    }

    /// For a table whose join paths to the key cross tombstoned tables: per such step,
    /// a data-modifying CTE writing the values its changed rows (`d`) reach the
    /// tombstoned table by into that table's near table (delta::tombs). A deleted row
    /// kept as a tombstone cannot be crossed, so this capture cannot name the groups
    /// the deleted facts' deltas reach through it (they are joined to this table as it
    /// is at the refresh, after this change); the refresh recomputes everything when a
    /// tombstone matches a value written here. Steps further along join the tables
    /// before them as they are now (a row missing there: its value was written for the
    /// step into it, if tombstoned).
    fn near_ctes(&self, t: &super::TableDerivation) -> Vec<String> {
        self.near_steps(t).into_iter().map(|(cte, _)| cte).collect()
    }

    /// [`Conversion::near_ctes`], each with whether it joins the path's tables (a step
    /// past the first): such a CTE reads them as they are when it runs.
    fn near_steps(&self, t: &super::TableDerivation) -> Vec<(String, bool)> {
        let (Some(p), How::JoinPath { paths, .. }) = (self.f.delta.as_ref(), &t.how) else {
            return Vec::new();
        };
        let mut ctes: Vec<(String, bool)> = Vec::new();
        for path in paths {
            let mut prev = "d".to_string();
            let mut joins = String::new();
            for (i, st) in path.steps.iter().enumerate() {
                let table = &path.tables[i + 1];
                if let Some(near) = p
                    .tombs
                    .iter()
                    .find(|x| &x.table == table)
                    .and_then(|x| x.near.as_ref())
                {
                    let cte = format!(
                        "INSERT INTO {} ({c}) SELECT DISTINCT {prev}.{f} FROM d{joins} WHERE {prev}.{f} IS NOT NULL",
                        near.buffer.quoted(),
                        c = quote_ident(&st.to_column),
                        f = quote_ident(&st.from_column),
                    );
                    if !ctes.iter().any(|(c, _)| c == &cte) {
                        ctes.push((cte, !joins.is_empty()));
                    }
                }
                let Ok(next) = self.table_of(table) else {
                    break;
                };
                let alias = format!("g{}", i + 1);
                let _ = write!(
                    joins,
                    " LEFT JOIN {} AS {alias} ON {alias}.{} {} {prev}.{}",
                    next.name.quoted(),
                    quote_ident(&st.to_column),
                    pg_op("="),
                    quote_ident(&st.from_column)
                );
                prev = alias;
            }
        }
        ctes
    }

    /// The tombstone of a table whose DELETEs keep their rows for the apply.
    fn tomb_of(&self, t: &super::TableDerivation) -> Option<&super::delta::Tomb> {
        self.f
            .delta
            .as_ref()
            .and_then(|p| p.tombs.iter().find(|x| x.table == t.table))
    }

    /// A DELETE's capture while the foreign keys guarding the view's tombstoned tables'
    /// DELETEs hold (as the keeper last found them, incremental::guard) and the writer
    /// is not in the replica role (`guard`): its rows into the tombstone table,
    /// where the apply finds them; else its keys, as before.
    fn tombstoned(t: &super::delta::Tomb, guard: &str, keys: String) -> String {
        format!(
            "        IF {guard} THEN\n            {};\n        ELSE\n    {}\n        END IF;",
            t.capture.trim().trim_end_matches(';'),
            keys.replace('\n', "\n    ")
        )
    }

    /// A guard by the delta fact table's foreign key (incremental::inserts) rests on
    /// "no row of the fact table matches a dimension row before it exists", which the
    /// delta buffer breaks: a fact row deleted (by `ON DELETE CASCADE`, say) is still
    /// buffered, and the apply joins it to the dimension as it is at the refresh. A
    /// dimension row deleted and inserted again under the same key, in another group,
    /// took those deltas, and its INSERT, guarded, named no group: the group stayed
    /// wrong. So an INSERT the fact table's key guards still buffers the keys of its
    /// rows that buffered fact rows reference (the condition on the inserted rows `r`
    /// returned here); `None` when no such key guards it. Without the referenced
    /// columns among those read, or the referencing ones in the buffer, every INSERT
    /// is captured (the condition is `true`).
    fn pending_deltas(&self, c: &TableCapture, op: &str) -> Option<String> {
        self.pending_deltas_if(c, op, false)
    }

    /// [`Conversion::pending_deltas`], or with `negative` its form for the refresh: only
    /// buffered rows that take a fact row away (sign < 0) count, and only while a row
    /// of the key exists. The refresh also sees the rows buffered after the INSERT, a
    /// new store's own first sales among them, which must not name its group; and
    /// whatever left a row of the deleted dimension row's facts buffered (a cascade,
    /// `SET NULL`, an UPDATE) left one taking it away.
    fn pending_deltas_if(&self, c: &TableCapture, op: &str, negative: bool) -> Option<String> {
        let (Some(p), "insert") = (&self.f.delta, op) else {
            return None;
        };
        let keys = Self::fact_guards(p, c.t)?;
        let mut conds = Vec::new();
        for k in keys {
            let usable = k.ref_columns.iter().all(|r| c.t.reads.contains(r))
                && k.columns.iter().all(|a| p.columns.contains(a));
            if !usable {
                return Some("true".to_string());
            }
            let mut on: Vec<String> = k
                .columns
                .iter()
                .zip(&k.ref_columns)
                .map(|(a, b)| format!("x.{} {} r.{}", quote_ident(a), pg_op("="), quote_ident(b)))
                .collect();
            if negative {
                on.push(format!(
                    "x.{} {} 0",
                    quote_ident(&p.sign_column),
                    pg_op("<")
                ));
            }
            let mut cond = format!(
                "EXISTS (SELECT 1 FROM {} AS x WHERE {})",
                p.buffer.quoted(),
                on.join(" AND ")
            );
            if negative {
                // At the refresh, and only while a row of that key exists: buffered
                // rows join the dimension as it is then, and with none there they
                // reach no group through it (a store inserted and deleted again, with
                // its sales, between two refreshes).
                let same: Vec<String> = k
                    .ref_columns
                    .iter()
                    .map(|b| format!("y.{b} {} r.{b}", pg_op("="), b = quote_ident(b)))
                    .collect();
                cond = format!(
                    "({cond} AND EXISTS (SELECT 1 FROM {} AS y WHERE {}))",
                    c.b.name.quoted(),
                    same.join(" AND ")
                );
            }
            conds.push(cond);
        }
        conds.dedup();
        Some(conds.join(" OR "))
    }

    /// Where a guarded INSERT's rows wait for the refresh to check them against the
    /// delta buffer ([`Conversion::pending_deltas`]), and the check (on rows `r`):
    /// reading the delta buffer in the writer's trigger made every such INSERT and
    /// every fact writer read what the other wrote, a cycle that failed SERIALIZABLE
    /// writers (40001; an adversarial review, 2026-12-04). The refresh checks them in
    /// its snapshot instead, before the apply reads the buffer: a buffered fact row
    /// that the INSERT's snapshot saw is still buffered then, or was applied by a
    /// refresh that could not see the inserted row (joined to no dimension row, it
    /// reached no group of it). `None` where the writer still checks: the condition is
    /// `true` (every row captured), the table's capture writes tombstones' near tables
    /// through joins (as the tables are at the write: a near table the first step
    /// reaches is written by the refresh's check, from the same rows), or its keys come
    /// from no key or reach buffer.
    fn pending_table(&self, c: &TableCapture, op: &str) -> Option<(QualifiedName, String)> {
        let cond = self.pending_deltas_if(c, op, true)?;
        let usable = cond != "true"
            && c.delta.is_none()
            && self.near_steps(c.t).iter().all(|(_, joins)| !joins)
            && !c.t.reads.is_empty()
            && matches!(c.source, Source::Keys(_) | Source::Reach(_));
        usable.then(|| {
            let v = &self.f.view;
            let b = c.b;
            let name = bounded(
                &format!("{}_{}_pending_{}", v.schema, v.name, b.name.name),
                &[&v.schema, &v.name, "pending", &b.name.schema, &b.name.name],
                false,
            );
            (QualifiedName::new("refreshd", name), cond)
        })
    }

    /// Base table `t`'s capture, computing `source`.
    fn table_capture<'t>(
        &'t self,
        t: &'t super::TableDerivation,
        source: Source,
    ) -> Result<TableCapture<'t>, String> {
        Ok(TableCapture {
            t,
            b: self.table_of(&t.table)?,
            source,
            delta: self.f.delta.as_ref().filter(|p| p.fact == t.table),
            tomb: self.tomb_of(t),
            delta_fact: self.f.delta.as_ref().map(|p| &p.fact),
        })
    }

    /// Every pending table ([`Conversion::pending_table`]): created empty again, its
    /// rollback's DROP, and the consume statements moving the rows the delta buffer's
    /// rows reference into the key or reach buffer (the others are dropped).
    fn pending_sql(
        &self,
        sources: &[Source],
        w: &mut String,
        rollback: &mut String,
    ) -> Result<Vec<String>, String> {
        let mut consume = Vec::new();
        for (t, source) in self.d.tables.iter().zip(sources) {
            let c = self.table_capture(t, source.clone())?;
            let b = c.b;
            let Some((table, cond)) = self.pending_table(&c, "insert") else {
                continue;
            };
            let q = table.quoted();
            let what = format!(
                "rows inserted into {} that foreign keys guard, kept by {}() in its refresh's snapshot where buffered deltas of keyed view {} reference them",
                b.name, self.n.consume, self.n.table
            );
            columns_table_sql(&table, &t.reads, &b.name, &what, w, rollback);
            self.created.borrow_mut().push(table.clone());
            consume.push(self.buffer_rows_with(
                &c.source,
                &format!("taken AS (DELETE FROM {q} RETURNING *), "),
                format!("SELECT r.* FROM taken AS r WHERE {cond}"),
                "insert",
                &self.near_ctes(t),
            ));
        }
        Ok(consume)
    }

    /// The delta fact table's foreign keys among those guarding `t`'s INSERTs, if any.
    fn fact_guards<'g>(
        p: &DeltaPlan,
        t: &'g super::TableDerivation,
    ) -> Option<Vec<&'g super::ForeignKey>> {
        let keys: Vec<&super::ForeignKey> = t
            .inserts
            .iter()
            .flat_map(|g| g.occurrences.iter().flatten())
            .filter(|k| k.table == p.fact)
            .collect();
        (!keys.is_empty()).then_some(keys)
    }

    /// An index on the delta buffer for each foreign key column list
    /// [`Conversion::pending_deltas`] looks buffered rows up by: a guarded INSERT then
    /// reads the rows of its keys, not the whole buffer (which grows while no refreshd
    /// runs). Created with the buffer, which the install creates again empty; only for
    /// the tables whose writers still look (not [`Conversion::pending_table`]'s).
    fn pending_indexes_sql(
        &self,
        p: &DeltaPlan,
        sources: &[Source],
        w: &mut String,
    ) -> Result<(), String> {
        let mut lists: Vec<&Vec<String>> = Vec::new();
        for (t, source) in self.d.tables.iter().zip(sources) {
            // Checked at the refresh: no writer looks the buffer up.
            if self
                .pending_table(&self.table_capture(t, source.clone())?, "insert")
                .is_some()
            {
                continue;
            }
            for k in Self::fact_guards(p, t).unwrap_or_default() {
                if k.columns.iter().all(|a| p.columns.contains(a)) && !lists.contains(&&k.columns) {
                    lists.push(&k.columns);
                }
            }
        }
        for cols in lists {
            let name = bounded(
                &format!("{}_{}", p.buffer.name, cols.join("_")),
                &[&p.buffer.schema, &p.buffer.name, &cols.join("\u{1f}")],
                false,
            );
            let _ = writeln!(
                w,
                "CREATE INDEX IF NOT EXISTS {} ON {} ({});",
                quote_ident(&name),
                p.buffer.quoted(),
                list(cols, "")
            );
        }
        Ok(())
    }

    /// The statement buffering one operation's changed rows as keys or the marker.
    /// An UPDATE's or DELETE's keys are made distinct first: a bulk statement touching
    /// few keys buffers a row per key, not per changed row. An INSERT's are not: its
    /// `SELECT DISTINCT` cost a single-row writing transaction ~20,000 CPU instructions
    /// (a sixth of it), and a bulk INSERT buffering a key per row costs what the row
    /// buffer of a delta view costs it anyway. The consume function returns distinct
    /// keys either way.
    fn buffer_rows_sql(&self, source: &Source, rows: String, op: &str, near: &[String]) -> String {
        self.buffer_rows_with(source, "", rows, op, near)
    }

    /// [`Conversion::buffer_rows_sql`] with `head` (CTEs, each followed by a comma)
    /// before `d`.
    fn buffer_rows_with(
        &self,
        source: &Source,
        head: &str,
        rows: String,
        op: &str,
        near: &[String],
    ) -> String {
        // The near tables' CTEs run to completion whatever the INSERT below finds
        // (PostgreSQL runs every data-modifying CTE); FOUND is the INSERT's.
        let near: String = near
            .iter()
            .enumerate()
            .map(|(i, c)| format!(",\n        near{i} AS ({c})"))
            .collect();
        let distinct = if op == "insert" { "" } else { "DISTINCT " };
        match source {
            // Rows: the delta fact table's trigger buffers its rows (trigger_body);
            // should it ever come here, everything is the safe answer.
            Source::All(_) | Source::Rows => format!("        {}", self.mark_all_sql(Some(&rows))),
            Source::Reach(r) => format!(
                "        WITH {head}d AS ({rows}){near}\n        INSERT INTO {} ({cols})\n        SELECT {distinct}{} FROM d;",
                r.buffer.quoted(),
                list(&r.columns, "d."),
                cols = list(&r.columns, ""),
            ),
            Source::Keys(keys) => {
                let key_cols: Vec<String> =
                    (1..=self.d.key.len()).map(|i| format!("k{i}")).collect();
                format!(
                    "        WITH {head}d AS ({rows}){near}\n        INSERT INTO {} ({})\n        SELECT {}* FROM ({}) AS u({});",
                    self.n.buffer.quoted(),
                    list(&self.d.key, ""),
                    distinct,
                    keys.join(" UNION ALL "),
                    key_cols.join(", ")
                )
            }
        }
    }

    /// The line `init` prints (and the install SQL comments) for a base table's capture.
    fn capture_line(c: &TableCapture) -> String {
        let b = c.b;
        let line = match (&c.source, c.delta) {
            (_, Some(p)) => format!(
                "{}: its changed rows, buffered in {} and applied as deltas (TRUNCATE: everything)",
                b.name, p.buffer
            ),
            (Source::Rows, None) => format!("{}: its changed rows", b.name),
            (Source::All(reason), None) => format!(
                "{}: every change buffers \"everything\" ({reason})",
                b.name
            ),
            (Source::Reach(r), None) => format!(
                "{}: the values its changed rows reach the key by ({}), buffered in {} and joined along its path at the refresh",
                b.name,
                r.columns.join(", "),
                r.buffer
            ),
            (Source::Keys(_), None) => format!("{}: the keys of its old and new rows", b.name),
        };
        let line = match &c.t.inserts {
            Some(g) => format!("{line}; INSERT {}", g.describe()),
            None => line,
        };
        let line = match c.tomb {
            Some(t) => format!(
                "{line}; DELETE: its deleted rows kept in {} for the deltas of the rows of {} deleted before them, no group named (relying on {}, and on the keys below them down to {}, while refreshd finds them in force at its capture checks, and not in the replica role)",
                t.buffer,
                c.delta_fact.map_or("?", |q| q.as_str()),
                t.guard
                    .occurrences
                    .iter()
                    .flatten()
                    .map(|k| format!("{}'s foreign key {}", k.table, k.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.delta_fact.map_or("?", |q| q.as_str()),
            ),
            None => line,
        };
        line
    }

    /// The statement triggers of a base table and every partition of it (dropped first;
    /// the rollback drops them).
    fn triggers_sql(&self, b: &BaseTable, w: &mut String, rollback: &mut String) {
        let members = std::iter::once(&b.name).chain(b.partitions.iter());
        for m in members {
            for op in ["insert", "update", "delete", "truncate"] {
                let tg = quote_ident(&self.trigger_name(op));
                let _ = writeln!(w, "DROP TRIGGER IF EXISTS {tg} ON {};", m.quoted());
                let _ = writeln!(rollback, "DROP TRIGGER IF EXISTS {tg} ON {};", m.quoted());
                let referencing = match op {
                    "insert" => "REFERENCING NEW TABLE AS new_rows ",
                    "update" => "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows ",
                    "delete" => "REFERENCING OLD TABLE AS old_rows ",
                    _ => "",
                };
                let func = match op {
                    "truncate" => self.n.all_function.clone(),
                    _ => self.function(b, op),
                };
                self.triggers
                    .borrow_mut()
                    .push((m.clone(), self.trigger_name(op), func.clone()));
                // ALWAYS: a logical replication subscription's apply worker writes with
                // `session_replication_role = replica`, where an origin-only trigger
                // does not fire (its changes were never captured).
                let _ = writeln!(
                    w,
                    "CREATE TRIGGER {tg} AFTER {} ON {} {referencing}FOR EACH STATEMENT EXECUTE FUNCTION {}();\nALTER TABLE {} ENABLE ALWAYS TRIGGER {tg};",
                    op.to_ascii_uppercase(),
                    m.quoted(),
                    func.quoted(),
                    m.quoted()
                );
            }
        }
    }

    /// The trigger functions and triggers of every base table (the TRUNCATE function
    /// first); returns the capture lines.
    fn capture_sql(
        &self,
        sources: Vec<Source>,
        w: &mut String,
        rollback: &mut String,
    ) -> Result<Vec<String>, String> {
        let _ = writeln!(
            w,
            "CREATE OR REPLACE FUNCTION {}()\nRETURNS trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nAS {};",
            self.n.all_function.quoted(),
            dollar(&format!(
                "BEGIN\n    {}\n{}END;\n",
                self.mark_all_sql(None),
                self.wake_sql()
            ))
        );
        let mut lines = Vec::new();
        for (t, source) in self.d.tables.iter().zip(sources) {
            let c = self.table_capture(t, source)?;
            let b = c.b;
            for op in ["insert", "update", "delete"] {
                let _ = writeln!(
                    w,
                    "CREATE OR REPLACE FUNCTION {}()\nRETURNS trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nAS {};",
                    self.function(b, op).quoted(),
                    dollar(&self.trigger_body(&c, op))
                );
            }
            let line = Self::capture_line(&c);
            let _ = writeln!(w, "-- {}", sql_comment(&line));
            lines.push(line);
            self.triggers_sql(b, w, rollback);
            // A conversion made before the per-operation functions: its triggers were
            // replaced just above.
            let former = drop_function_sql(&self.former_function(b));
            w.push_str(&former);
            // With every trigger still using them: `capture = "managed"` copies them
            // onto partitions created later, which the rollback's list does not name.
            for op in ["insert", "update", "delete"] {
                rollback.push_str(&drop_function_sql(&self.function(b, op)));
            }
            rollback.push_str(&former);
        }
        Ok(lines)
    }

    /// The definition view's comment, written by the server: the names the definition
    /// reads ([`reads_md5_sql`]) and what the plan assumes of its columns
    /// ([`columns_md5_sql`]) when this capture was generated from it, this install's
    /// digest, and `state` ([`Conversion::state_sql`]), computed once its
    /// objects are made.
    fn reads_marker_sql(&self, w: &mut String, state: &str) {
        let def = self.n.def.quoted();
        let text = format!(
            "{DEFINITION_COMMENT_PREFIX}{}; its capture was generated for the {READS_MARKER}",
            self.n.table
        );
        // The definition's text and the columns as a check prints them: under
        // PINNED_SETTINGS, whatever the install's are; set back at once.
        let saved: Vec<String> = PINNED_SETTINGS
            .iter()
            .map(|(k, _)| format!("pg_catalog.current_setting({})", literal(k)))
            .collect();
        let pin: String = PINNED_SETTINGS
            .iter()
            .map(|(k, v)| {
                format!(
                    "    PERFORM pg_catalog.set_config({}, {}, true);\n",
                    literal(k),
                    literal(v)
                )
            })
            .collect();
        let restore: String = PINNED_SETTINGS
            .iter()
            .enumerate()
            .map(|(i, (k, _))| {
                format!(
                    "    PERFORM pg_catalog.set_config({}, refreshd_saved[{}], true);\n",
                    literal(k),
                    i + 1
                )
            })
            .collect();
        let regclass = format!("{}::pg_catalog.regclass", literal(&def));
        let body = format!(
            "DECLARE\n    refreshd_saved text[] := ARRAY[{}];\n    refreshd_definition text;\n    refreshd_columns text;\nBEGIN\n{pin}    refreshd_definition := {};\n    refreshd_columns := {};\n{restore}    EXECUTE pg_catalog.format('COMMENT ON VIEW %s IS %L', {}, {} {or} {} {or} {} {or} refreshd_columns {or} {} {or} refreshd_definition {or} {} {or} {});\nEND;\n",
            saved.join(", "),
            definition_md5_sql(&regclass),
            columns_md5_sql(&regclass),
            literal(&def),
            literal(&text),
            reads_md5_sql(&regclass),
            literal(&format!("; the {COLUMNS_MARKER}")),
            literal(&format!("; the {DEFINITION_MARKER}")),
            literal(&format!("; {INSTALL_MARKER}{DIGEST_PLACEHOLDER}; {STATE_MARKER}")),
            state,
            or = pg_op("||"),
        );
        let _ = writeln!(w, "DO {};", dollar(&body));
    }

    /// The fill: readers see the old rows until commit; the trigger DDL before it holds
    /// the base tables, so no change slips between the fill and the triggers.
    fn fill_sql(&self, w: &mut String) {
        let cols: Vec<String> = self.f.columns.iter().map(|(c, _)| c.clone()).collect();
        let column_list = list(&cols, "");
        let _ = writeln!(
            w,
            "LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE;\nDELETE FROM {t};\nINSERT INTO {t} ({column_list}) SELECT {column_list} FROM {};",
            self.n.def.quoted(),
            t = self.n.table.quoted()
        );
    }

    /// The rollback after the triggers' and their functions' drops: the buffers and the
    /// consume function, then the table (in place: the materialized view again, with
    /// its indexes and grants) and the definition's view.
    fn rollback_sql(&self, r: &mut String) {
        let (n, v) = (&self.n, &self.f.view);
        r.push_str(&drop_function_sql(&n.all_function));
        let _ = writeln!(
            r,
            "DROP FUNCTION IF EXISTS {}();\nDROP TABLE IF EXISTS {};",
            n.consume.quoted(),
            n.buffer.quoted()
        );
        if let Some(p) = &self.f.delta {
            for st in &p.rollback {
                let _ = writeln!(r, "{};", st.trim().trim_end_matches(';'));
            }
        }
        if self.f.in_place {
            r.push_str(&super::dependents::save_and_drop_sql(v, 'r'));
            let body = format!(
                "BEGIN\n    IF EXISTS ({}) THEN\n        DROP TABLE {};\n    END IF;\nEND;\n",
                Self::relkind_is(v, "r"),
                v.quoted()
            );
            let _ = writeln!(r, "DO {};", dollar(&body));
            let _ = writeln!(r, "SET LOCAL search_path TO {};", self.search_path());
            // The definition as the definition view has it now (changed since, it is
            // the view's), printed with every name qualified; as converted if it is
            // gone.
            let body = format!(
                "DECLARE\n    refreshd_path text := pg_catalog.current_setting('search_path');\n    refreshd_definition text;\nBEGIN\n    PERFORM pg_catalog.set_config('search_path', 'pg_catalog', true);\n    refreshd_definition := pg_catalog.rtrim(pg_catalog.pg_get_viewdef(pg_catalog.to_regclass({})), ';');\n    PERFORM pg_catalog.set_config('search_path', refreshd_path, true);\n    EXECUTE pg_catalog.format('CREATE MATERIALIZED VIEW IF NOT EXISTS %s AS %s', {}, COALESCE(refreshd_definition, {}));\nEND;\n",
                literal(&n.def.quoted()),
                literal(&v.quoted()),
                literal(self.definition()),
            );
            let _ = writeln!(r, "DO {};", dollar(&body));
            self.index_sql(r);
            self.grant_sql(r, &format!("TABLE {}", v.quoted()));
            if let Some(owner) = &self.f.owner {
                let _ = writeln!(
                    r,
                    "ALTER MATERIALIZED VIEW {} OWNER TO {};",
                    v.quoted(),
                    quote_ident(owner)
                );
            }
            r.push_str(&super::dependents::restore_sql());
        } else {
            let _ = writeln!(r, "DROP TABLE IF EXISTS {};", n.table.quoted());
        }
        let _ = writeln!(r, "DROP VIEW IF EXISTS {};", n.def.quoted());
    }
}

/// The conversion of one view: its install SQL (statements, without BEGIN/COMMIT),
/// rollback and capture lines; `Err` names what it cannot keep.
pub fn generate(d: &Derivation, f: &Facts) -> Result<Generated, String> {
    let c = Conversion::new(d, f)?;
    c.check_row_security()?;
    let sources = d
        .tables
        .iter()
        .map(|t| match &f.delta {
            Some(p) if p.fact == t.table => Ok(Source::Rows),
            _ => c.source(t),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut install = String::new();
    let mut drop_reach = String::new();
    c.locks_sql(&mut install);
    c.table_sql(&mut install);
    c.buffer_sql(&mut install);
    c.reach_sql(&sources, &mut install, &mut drop_reach);
    let mut generated = c.generated();
    if let Some(p) = &f.delta {
        c.delta_sql(p, &mut install, &mut generated)?;
        c.pending_indexes_sql(p, &sources, &mut install)?;
    }
    // The reach buffers' keys into the key buffer, first (the apply reads neither).
    let resolve = sources.iter().filter_map(|s| match s {
        Source::Reach(r) => Some(r.resolve_sql(&generated.buffer, &generated.key)),
        _ => None,
    });
    generated.consume_prelude.splice(0..0, resolve);
    // Before those: pending rows may go into a reach buffer.
    let mut drop_pending = String::new();
    let pending = c.pending_sql(&sources, &mut install, &mut drop_pending)?;
    generated.consume_prelude.splice(0..0, pending);
    generated.buffers = c.created.borrow().clone();
    // Not a buffer: a recompute of everything must not empty it.
    let mut drop_guard = String::new();
    if let Some(k) = &c.keeper {
        let owner = f.owner.as_deref().filter(|_| f.in_place);
        k.install_sql(owner, &mut install, &mut drop_guard);
        c.created.borrow_mut().push(k.table.clone());
        c.created.borrow_mut().push(k.marks.clone());
    }
    install.push_str(&consume_function_sql(&generated));
    if let (true, Some(owner)) = (f.in_place, &f.owner) {
        // The owner could refresh its materialized view; it can run refreshd on the
        // table that replaced it (the consume function is refreshd's one entry).
        let _ = writeln!(
            install,
            "GRANT USAGE ON SCHEMA {} TO {o};\nGRANT EXECUTE ON FUNCTION {}() TO {o};",
            quote_ident(&generated.consume.schema),
            generated.consume.quoted(),
            o = quote_ident(owner)
        );
    }
    let mut rollback = String::new();
    generated.capture = c.capture_sql(sources, &mut install, &mut rollback)?;
    rollback.push_str(&drop_reach);
    rollback.push_str(&drop_pending);
    rollback.push_str(&drop_guard);
    let state = c.state_sql(f.delta.as_ref().map(|p| &p.take));
    c.reads_marker_sql(&mut install, &state);
    c.rollback_sql(&mut rollback);
    c.fill_sql(&mut install);
    if f.in_place {
        install.push_str(&super::dependents::restore_sql());
    }
    // The digest of the install with the placeholder, written where it stood: a
    // conversion generated the same way again has the same.
    let mut hashed = install.clone();
    for part in c.unhashed.borrow().iter().filter(|p| !p.is_empty()) {
        hashed = hashed.replacen(part.as_str(), "", 1);
    }
    let digest = install_digest(&hashed);
    generated.install = install.replace(DIGEST_PLACEHOLDER, &digest);
    generated.rollback = rollback;
    generated.current = c.current_sql(&digest, &state);
    Ok(generated)
}

/// What precedes the install's digest in the definition view's comment.
pub const INSTALL_MARKER: &str = "install: sha256 ";

/// What precedes the md5 of the generated objects' catalog rows
/// ([`Conversion::state_sql`]) in the definition view's comment.
pub const STATE_MARKER: &str = "objects: md5 ";

/// Where the digest goes in the install text it is computed over.
const DIGEST_PLACEHOLDER: &str = "<install digest>";

/// The SHA-256 of an install's text, in hex.
fn install_digest(install: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(install.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Conversion<'_> {
    /// [`Generated::current`]: the definition view's comment records `digest` (this
    /// very install) and `state` ([`Conversion::state_sql`], written by the install
    /// once it made its objects) is what it recorded.
    fn current_sql(&self, digest: &str, state: &str) -> String {
        let comment = format!(
            "pg_catalog.obj_description(pg_catalog.to_regclass({}), 'pg_class')",
            literal(&self.n.def.quoted())
        );
        format!(
            "pg_catalog.strpos({comment}, {}) {gt} 0\n   AND pg_catalog.strpos({comment}, {} {or} {state}) {gt} 0",
            literal(&format!("{INSTALL_MARKER}{digest}")),
            literal(STATE_MARKER),
            gt = pg_op(">"),
            or = pg_op("||"),
        )
    }

    /// An md5 of the catalog rows of everything the install makes that a later change
    /// by hand could break ([`relation_state`], the definition view's rule, owner,
    /// privileges and options, [`function_state`], [`trigger_state`]). A missing object
    /// counts as such. Only OIDs and names, never text printed under the session's
    /// search_path, so that the install (which sets one) and a later check (which does
    /// not) compute the same.
    fn state_sql(&self, take: Option<&QualifiedName>) -> String {
        // The keyed table in place is the user's (its owner, grants and indexes are
        // the view's); the rest is refreshd's own, all of it compared.
        let mut parts = vec![relation_state(&self.n.table, !self.f.in_place)];
        parts.extend(
            self.created
                .borrow()
                .iter()
                .map(|b| relation_state(b, true)),
        );
        parts.push(format!(
            "(SELECT pg_catalog.concat_ws(':', pg_catalog.md5(r.ev_action::pg_catalog.text), c.relowner, \
               c.relacl::pg_catalog.text, c.reloptions::pg_catalog.text) \
               FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid {eq} r.ev_class \
               WHERE r.ev_class {eq} {} AND r.rulename {eq} '_RETURN')",
            regclass(&self.n.def),
            eq = pg_op("=")
        ));
        let triggers = self.triggers.borrow();
        let mut functions: Vec<&QualifiedName> = vec![&self.n.consume];
        functions.extend(take);
        for (_, _, f) in triggers.iter() {
            if !functions.contains(&f) {
                functions.push(f);
            }
        }
        parts.extend(functions.into_iter().map(|f| function_state(f, "")));
        if let Some(k) = &self.keeper {
            parts.push(function_state(&k.function, "bigint"));
        }
        parts.extend(triggers.iter().map(|(t, name, _)| trigger_state(t, name)));
        let each: Vec<String> = parts
            .iter()
            .map(|p| format!("COALESCE({p}, 'missing')"))
            .collect();
        // An array, not concat_ws's arguments: a function takes at most 100.
        format!(
            "pg_catalog.md5(pg_catalog.array_to_string(ARRAY[{}]::pg_catalog.text[], '|'))",
            each.join(",\n  ")
        )
    }
}

/// `pg_catalog.to_regclass` of a qualified name.
fn regclass(q: &QualifiedName) -> String {
    format!("pg_catalog.to_regclass({})", literal(&q.quoted()))
}

/// A table's part of [`Conversion::state_sql`]: kind, persistence, columns (name,
/// type, NOT NULL, collation), defaults, constraints, rules and triggers; when `ours`
/// (refreshd made it), also its owner, privileges, options and indexes.
fn relation_state(r: &QualifiedName, ours: bool) -> String {
    let eq = pg_op("=");
    let own = if ours {
        format!(
            ", c.relowner, c.relacl::pg_catalog.text, c.reloptions::pg_catalog.text, \
             (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', i.indisunique, i.indkey::pg_catalog.text, \
                pg_catalog.md5(i.indexprs::pg_catalog.text), pg_catalog.md5(i.indpred::pg_catalog.text)), ',' \
                ORDER BY i.indkey::pg_catalog.text, i.indisunique) \
                FROM pg_catalog.pg_index i WHERE i.indrelid {eq} c.oid)"
        )
    } else {
        String::new()
    };
    format!(
        "(SELECT pg_catalog.concat_ws(':', c.relkind, c.relpersistence, \
           (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attcollation), ',' ORDER BY a.attnum) \
              FROM pg_catalog.pg_attribute a WHERE a.attrelid {eq} c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
           (SELECT pg_catalog.string_agg(d.adnum::pg_catalog.text {or} pg_catalog.md5(d.adbin::pg_catalog.text), ',' ORDER BY d.adnum) \
              FROM pg_catalog.pg_attrdef d WHERE d.adrelid {eq} c.oid), \
           (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', o.contype, o.conkey::pg_catalog.text, o.confrelid, pg_catalog.md5(o.conbin::pg_catalog.text)), ',' \
              ORDER BY o.contype, o.conkey::pg_catalog.text, o.conname) \
              FROM pg_catalog.pg_constraint o WHERE o.conrelid {eq} c.oid), \
           (SELECT pg_catalog.string_agg(w.rulename {or} pg_catalog.md5(w.ev_action::pg_catalog.text), ',' ORDER BY w.rulename) \
              FROM pg_catalog.pg_rewrite w WHERE w.ev_class {eq} c.oid), \
           (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(' ', t.tgname, t.tgfoid, t.tgtype, t.tgenabled), ',' ORDER BY t.tgname) \
              FROM pg_catalog.pg_trigger t WHERE t.tgrelid {eq} c.oid AND NOT t.tgisinternal){own}) \
           FROM pg_catalog.pg_class c WHERE c.oid {eq} {})",
        regclass(r),
        or = pg_op("||"),
    )
}

/// A function's part of [`Conversion::state_sql`]: source, language, volatility,
/// SECURITY DEFINER, settings, owner and privileges.
fn function_state(f: &QualifiedName, args: &str) -> String {
    format!(
        "(SELECT pg_catalog.concat_ws(':', pg_catalog.md5(p.prosrc), p.prolang, p.provolatile, p.prosecdef, p.proconfig::pg_catalog.text, \
           p.proowner, p.proacl::pg_catalog.text) \
           FROM pg_catalog.pg_proc p WHERE p.oid {} pg_catalog.to_regprocedure({}))",
        pg_op("="),
        literal(&format!("{}({args})", f.quoted()))
    )
}

/// A trigger's part of [`Conversion::state_sql`]: function, events and level, enabled
/// state, arguments, condition, transition tables and columns.
fn trigger_state(table: &QualifiedName, name: &str) -> String {
    format!(
        "(SELECT pg_catalog.concat_ws(':', t.tgfoid, t.tgtype, t.tgenabled, pg_catalog.encode(t.tgargs, 'hex'), \
           pg_catalog.md5(t.tgqual::pg_catalog.text), t.tgoldtable, t.tgnewtable, t.tgattr::pg_catalog.text) \
           FROM pg_catalog.pg_trigger t WHERE t.tgrelid {eq} {} AND t.tgname {eq} {}::pg_catalog.name)",
        regclass(table),
        literal(name),
        eq = pg_op("=")
    )
}
