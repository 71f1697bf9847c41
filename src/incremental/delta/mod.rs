//! Delta application (issue 20, item 4; SPEC "Incremental maintenance"): for a view whose
//! aggregates allow it (`count(*)`, `count(x)`, `sum(x)`, `avg(x)`, with or without
//! `FILTER`), a change to ONE base table, the *fact* table, is applied to its groups as
//! a delta instead of recomputing them. Pure, like the rest of the wing: from the
//! [`Derivation`] and the catalog facts ([`DeltaFacts`]) to SQL text ([`DeltaPlan`]); the
//! caller installs and runs it. See `docs/incremental-deltas.md` for the design.
//!
//! - A **row buffer**: an UNLOGGED table in schema `refreshd` holding `sign` (+1 / −1) and
//!   a copy of the fact table's columns the view reads. Statement triggers with
//!   transition tables fill it ([`DeltaPlan::capture_insert`], ...).
//! - The **apply** ([`DeltaPlan::apply`]): one statement that consumes the buffer with
//!   `DELETE … RETURNING` (exactly the rows it read are removed; through a take function
//!   that tells the planner to expect a few rows, so they are looked up by index), runs the view's own
//!   definition over those rows (the fact table replaced by them, every other table
//!   joined as it is now), grouped like the view, each aggregate turned into its
//!   contribution, and merges the result into the live table (`INSERT … ON CONFLICT
//!   (key) DO UPDATE`, and `DELETE` for groups whose row count reaches zero).
//! - Groups it cannot decide from the live table's own columns (no `count(*)` column
//!   to tell that a group vanished, no non-NULL count to tell that a sum became NULL, a
//!   NULL key member, several delta groups for one key) are not guessed: their keys go
//!   to a **recheck** table ([`DeltaPlan::recheck_keys`] consumes it) and the caller
//!   recomputes those groups from the definition, after the apply, in the same
//!   transaction. A recheck row with a NULL key member means "recompute everything".
//!
//! Everything runs in the refresh transaction at REPEATABLE READ: one snapshot for the
//! buffer and the base tables, so a change is applied exactly once.
//!
//! The steps, one submodule each, in [`delta_plan`]'s order: `ast` (the definition as
//! PostgreSQL parses it; the shapes and functions refused), `fact` (which table takes
//! deltas, the columns the buffer copies), `columns` (what each output column is),
//! `values` (how each column is kept, and when its group is rechecked), `query` (the
//! delta SELECT, by editing the parse tree), `sql` (the statements).

mod ast;
mod columns;
mod fact;
mod probe;
mod query;
mod sql;
mod tombs;
mod values;

pub use tombs::{Near, Tomb};

use super::{Catalog, ColumnClass, Derivation};
use crate::pg::ident::{QualifiedName, MAX_IDENTIFIER_BYTES};

/// The schema of refreshd's own change buffers.
pub const BUFFER_SCHEMA: &str = "refreshd";

pub use sql::{BULK_FROM, BULK_FROM_WITH_TOMBS};

/// Catalog facts of one base table the view reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaTable {
    /// As the derivation names it (`schema.name`, [`super::TableDerivation::table`]).
    pub table: String,
    pub name: QualifiedName,
    /// Every column with its `format_type` (a `COLLATE` clause may be appended).
    pub columns: Vec<(String, String)>,
    /// Its `NOT NULL` columns.
    pub not_null: Vec<String>,
    /// Columns whose type has no equality (json, xml, point...): an UPDATE cannot be
    /// reduced to the rows that changed, all its old and new rows are buffered.
    pub incomparable: Vec<String>,
    /// Generated columns whose value its statement triggers' transition tables may not
    /// hold (`BaseTable::generated`).
    pub generated: Vec<String>,
    /// Row-level security is enabled on it: the view's owner may not see every row a
    /// change holds, so no deltas are taken while it is (groups are recomputed).
    pub row_security: bool,
    /// `pg_class.reltuples` (or any estimate): the largest eligible table is the fact.
    pub estimated_rows: f64,
}

/// What [`delta_plan`] needs besides the derivation.
#[derive(Debug, Clone)]
pub struct DeltaFacts<'a> {
    /// The view being converted (names the buffers).
    pub view: &'a QualifiedName,
    /// The table refreshd keeps (the view's own name in place, `<view>_live`
    /// otherwise); it has a unique index on exactly the key columns.
    pub live: &'a QualifiedName,
    /// As `pg_get_viewdef` printed it.
    pub definition: &'a str,
    /// The view's columns with their `format_type`, in order.
    pub columns: &'a [(String, String)],
    /// The columns whose type's equality (its default btree operator class's) is not
    /// in `pg_catalog` (`citext`'s, an extension's), as `OPERATOR(schema.=)`. The apply
    /// runs with `search_path = pg_catalog, pg_temp`: a bare `=` on two `citext` keys
    /// would compare them as text, case-sensitively, unlike the view's groups and the
    /// table's unique index (a delta added to a group found by its key's other case
    /// replaced the group's values: wrong counts and sums).
    pub equality: &'a [(String, String)],
    /// The catalog the derivation used (its `search_path` is the one the definition
    /// was printed against).
    pub catalog: &'a Catalog,
    /// The base tables the view reads (at least the candidate fact tables).
    pub tables: &'a [DeltaTable],
    /// The caller's choice of fact table (`schema.name`); `None`: the largest eligible.
    pub fact: Option<&'a str>,
}

/// Why a view's changes are not applied as deltas (its groups are recomputed, as
/// without this module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoDelta {
    pub reason: String,
}

impl std::fmt::Display for NoDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no deltas: {}", self.reason)
    }
}

impl std::error::Error for NoDelta {}

/// The SQL of delta application for one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPlan {
    /// The fact table (`schema.name`), whose changes are applied as deltas; every other
    /// table keeps its key capture and group recomputes.
    pub fact: String,
    pub fact_name: QualifiedName,
    /// `refreshd."<schema>_<view>_delta"`: sign and the fact columns read.
    pub buffer: QualifiedName,
    /// The sign column's name (`refreshd_sign` unless a table read has such a column).
    pub sign_column: String,
    /// The fact columns copied into the buffer, in the fact table's order.
    pub columns: Vec<String>,
    /// `refreshd."<schema>_<view>_recheck"`: keys the apply could not decide.
    pub recheck: QualifiedName,
    /// `refreshd."<schema>_<view>_take"()`: takes the buffer's rows (created by
    /// `install`).
    pub take: QualifiedName,
    /// Statements creating both tables (idempotent), run by `init` before the triggers.
    pub install: Vec<String>,
    pub rollback: Vec<String>,
    /// Trigger statements (in a statement-level trigger function whose trigger has
    /// `REFERENCING NEW TABLE AS new_rows` / `OLD TABLE AS old_rows`), for the fact
    /// table and each of its partitions. These replace the fact table's key capture;
    /// TRUNCATE still sends `*`.
    pub capture_insert: String,
    pub capture_delete: String,
    pub capture_update: String,
    /// Statements for the consume prelude, run before the keys are read (deltas first,
    /// recomputes after: a recompute overwrites a group).
    pub apply: Vec<String>,
    /// The same apply for a change of [`sql::BULK_FROM`] rows or more: it reads the
    /// buffer directly, planned for its size; `apply` assumes a few rows and looks them
    /// up by index. The consume function picks one at each refresh.
    pub apply_bulk: String,
    /// A query (`DELETE … RETURNING` the key columns, typed like the view's) giving the
    /// keys to recompute on top of the key buffer's; run after `apply`. A row with a NULL
    /// member means every group.
    pub recheck_keys: String,
    /// Empties the buffers (for a caller that recomputes everything without applying;
    /// running `apply` instead is as correct).
    pub discard: Vec<String>,
    /// `apply` holds the definition's text: run it with this search_path (the one the
    /// definition was printed against), e.g. `SET search_path` on the consume function.
    pub search_path: Vec<String>,
    /// One line per output column: how the apply maintains it (for `check`/`init`).
    pub notes: Vec<String>,
    /// Dimensions whose DELETEs keep their rows for the apply instead of naming
    /// groups ([`Tomb`]); their tables are in `install`, `rollback` and `discard`.
    pub tombs: Vec<Tomb>,
    /// With tombs: true when one would be matched twice; the consume function then
    /// recomputes everything (run before `apply`).
    pub tomb_conflicts: Option<String>,
    /// With tombs: empties them, run after `apply` in the same snapshot.
    pub tomb_cleanup: Vec<String>,
    /// A PL/pgSQL block run after `apply`, in the same snapshot: deletes the groups
    /// that lost rows and have none left ([`probe`]); `None` when the view's groups
    /// losing rows are rechecked instead (or decided by a `count(*)` column).
    pub probe: Option<String>,
    /// The table the apply puts the keys to probe in (created only with `probe`).
    pub probe_table: QualifiedName,
}

fn no(reason: impl Into<String>) -> NoDelta {
    NoDelta {
        reason: reason.into(),
    }
}

/// FNV-1a (64 bits), the same kind of name hash as `generate`'s.
fn hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// `<schema>_<view>_<suffix>` when that is unambiguous (no `_` in the schema) and fits
/// an identifier; otherwise a prefix of it, `_` and a hash of schema, view and suffix.
fn buffer_name(view: &QualifiedName, suffix: &str) -> String {
    let readable = format!("{}_{}_{suffix}", view.schema, view.name);
    if !view.schema.contains('_') && readable.len() <= MAX_IDENTIFIER_BYTES {
        return readable;
    }
    let tail = format!("_{}", hash(&[&view.schema, &view.name, suffix]));
    let mut cut = (MAX_IDENTIFIER_BYTES - tail.len()).min(readable.len());
    while !readable.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tail}", &readable[..cut])
}

/// Derives the delta application of a view, or says why its changes are not applied as
/// deltas. `d` is [`super::derive`]'s result for the same definition and catalog.
pub fn delta_plan(d: &Derivation, f: &DeltaFacts<'_>) -> Result<DeltaPlan, NoDelta> {
    let a = analyse(d, f)?;
    assemble(d, f, a)
}

/// What [`delta_plan`] reads off the definition before writing statements.
struct Analysis<'a> {
    fact: fact::Fact<'a>,
    tombs: Vec<Tomb>,
    names: fact::Names,
    key_idx: Vec<usize>,
    values: values::Values,
    delta_select: String,
    tables: Tables,
    /// The probe block, when groups that lost rows are probed.
    probe: Option<String>,
}

/// The definition parsed and checked, the fact table and tombstones chosen, each
/// column's upkeep and the delta query.
fn analyse<'a>(d: &Derivation, f: &DeltaFacts<'a>) -> Result<Analysis<'a>, NoDelta> {
    check_classes(d, f)?;
    let def = ast::Definition::read(f.definition)?;
    let select = crate::incremental::parse::parse_view(f.definition).map_err(|e| no(e.reason))?;
    let (lin, _) =
        crate::incremental::lineage::resolve(&select, f.catalog).map_err(|e| no(e.reason))?;
    let fact = fact::choose(d, f, &def.stmt, &lin)?;
    let tombs = tombs::tombs(d, f, &lin, &def.stmt, &fact.table.table);
    let names = fact::Names::pick(f, &def.relnames);
    let targets = def.targets();
    let outs = columns::outputs(d, f, &targets)?;
    let key_idx = columns::key_positions(d, f, &outs)?;
    let values = values::compute(f.columns, &fact, &names.sign, &outs, &key_idx)?;
    // The tombstoned dimensions read with their deleted rows (delta::tombs).
    let mut stmt = def.stmt.clone();
    tombs::replace(&mut stmt.from_clause, f, &tombs)?;
    let delta_select = query::delta_select(
        f,
        &stmt,
        &targets,
        &outs,
        &fact,
        &names.rows_cte,
        &values.targets,
    )?;
    let tables = Tables::of(f.view);
    let probe = values
        .lost
        .as_ref()
        .map(|_| {
            probe::block(
                f,
                &def.stmt,
                &outs,
                &key_idx,
                &tables.probe,
                &names.probe_row,
            )
        })
        .transpose()?;
    Ok(Analysis {
        fact,
        tombs,
        names,
        key_idx,
        values,
        delta_select,
        tables,
        probe,
    })
}

/// The plan's statements from the analysis.
fn assemble(d: &Derivation, f: &DeltaFacts<'_>, a: Analysis<'_>) -> Result<DeltaPlan, NoDelta> {
    let Analysis {
        fact,
        tombs,
        names,
        key_idx,
        values,
        delta_select,
        tables,
        probe,
    } = a;

    let Tables {
        buffer,
        recheck,
        probe: probe_table,
        take,
    } = tables;
    let apply = sql::Apply {
        rows_cte: &names.rows_cte,
        take: &take,
        buffer: &buffer,
        recheck: &recheck,
        probe: &probe_table,
        live: f.live,
        columns: f.columns,
        equality: f.equality,
        key_idx: &key_idx,
        key_names: &d.key,
    };
    let (apply, apply_bulk) = apply.few_and_bulk(&values, &delta_select, !tombs.is_empty());
    let key_types: Vec<(String, String)> = key_idx.iter().map(|k| f.columns[*k].clone()).collect();
    let incomparable = fact
        .names
        .iter()
        .any(|c| fact.table.incomparable.contains(c));
    let capture = sql::Capture::new(&buffer, &names.sign, &fact.names, incomparable);
    let (install, rollback, discard) = sql::statements(
        [&buffer, &take, &recheck, &probe_table],
        &names.sign,
        &fact.columns,
        &key_types,
        probe.is_some(),
        &tombs,
    );
    Ok(DeltaPlan {
        take: take.clone(),
        fact: fact.table.table.clone(),
        fact_name: fact.table.name.clone(),
        install,
        rollback,
        discard,
        recheck_keys: format!(
            "DELETE FROM {} RETURNING {}",
            recheck.quoted(),
            sql::list(&d.key, "")
        ),
        buffer,
        sign_column: names.sign,
        columns: fact.names,
        recheck,
        capture_insert: capture.insert,
        capture_delete: capture.delete,
        capture_update: capture.update,
        apply: vec![apply],
        apply_bulk,
        search_path: f.catalog.search_path.clone(),
        notes: values.notes,
        tomb_conflicts: tombs::conflicts_sql(&tombs),
        tomb_cleanup: tombs::cleanup(&tombs),
        tombs,
        probe,
        probe_table: probe_table.clone(),
    })
}

/// The tables (and the take function) of a view's plan, in schema `refreshd`.
struct Tables {
    buffer: QualifiedName,
    recheck: QualifiedName,
    probe: QualifiedName,
    take: QualifiedName,
}

impl Tables {
    fn of(view: &QualifiedName) -> Tables {
        let name = |suffix| QualifiedName::new(BUFFER_SCHEMA, buffer_name(view, suffix));
        Tables {
            buffer: name("delta"),
            recheck: name("recheck"),
            probe: name("probe"),
            take: name("take"),
        }
    }
}

/// Every output column is a key, a grouping value or a delta aggregate, and one at
/// least is an aggregate.
fn check_classes(d: &Derivation, f: &DeltaFacts<'_>) -> Result<(), NoDelta> {
    if d.columns.len() != f.columns.len() {
        return Err(no(format!(
            "the derivation has {} columns, the view {}",
            d.columns.len(),
            f.columns.len()
        )));
    }
    let mut any_agg = false;
    for c in &d.columns {
        match &c.class {
            ColumnClass::Key | ColumnClass::Group => {}
            ColumnClass::Delta { .. } => any_agg = true,
            ColumnClass::Row => return Err(no("the view does not group")),
            ColumnClass::GroupRecompute { reason } => {
                return Err(no(format!("column {}: {reason}", c.name)))
            }
        }
    }
    if !any_agg {
        return Err(no("no aggregate column to apply a delta to"));
    }
    Ok(())
}
