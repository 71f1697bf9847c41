//! Dimension deletes as tombstones (docs/incremental-deltas.md, "Dimension deletes").
//!
//! A table whose DELETEs foreign keys guard under the fact table
//! ([`crate::incremental::inserts::delete_guards`]) loses a row only after every fact
//! row reaching it is gone, each a negative delta in the fact table's buffer. The
//! apply joins those to the dimensions as they are at the refresh, where the deleted
//! row is missing: so its DELETE keeps the deleted rows (the columns the view reads)
//! in an UNLOGGED *tombstone* table, and in the delta query the dimension is read as
//! `(SELECT cols FROM dim UNION ALL SELECT cols FROM tombstones)`. Its DELETE then
//! names no group: a fact table's rows deleted with their order, customer or store are
//! applied as deltas, where they recomputed every group those rows reached.
//!
//! The union must not hold one row twice: a row deleted and inserted again under the
//! same referenced key (or deleted twice) before the refresh makes its tombstone
//! *conflict*, and the refresh then recomputes everything (rare: a dimension row
//! replaced between two refreshes, with its facts deleted first). The refresh empties
//! the tombstones after the apply, in its snapshot.
//!
//! Nor may the deleted facts meet a row of another table that changed after them: the
//! apply joins them to every table as it is at the refresh. A table whose join path to
//! the key crosses a tombstoned table names its groups through that table's rows, and
//! a deleted row is not there to be crossed. So every change to such a table also
//! writes, per step into a tombstoned table, the value it would have crossed by into
//! the tombstoned table's *near* table (`..._near_...`: its changed rows' join column
//! values, old and new); the refresh recomputes everything when a tombstone matches one
//! (in its snapshot, before the apply; the near tables are emptied with the
//! tombstones). At the refresh, not in the trigger: a statement that deletes a row
//! and changes a table reaching through it (`ON DELETE SET NULL`, a data-modifying CTE)
//! may run that table's trigger before the tombstone is written.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::ast::{node, range_vars_mut, resolve};
use super::sql::list;
use super::{buffer_name, hash, DeltaFacts, BUFFER_SCHEMA};
use crate::incremental::generate::pg_op;
use crate::incremental::lineage::Lineage;
use crate::incremental::{inserts, Derivation, InsertGuard};
use crate::pg::ident::QualifiedName;

/// One dimension whose deleted rows are kept for the apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tomb {
    /// As the derivation names it (`schema.name`).
    pub table: String,
    pub name: QualifiedName,
    /// `refreshd."<schema>_<view>_gone_<table>…"`: the deleted rows' columns read.
    pub buffer: QualifiedName,
    /// The columns the view reads of it, with their types, in the table's order.
    pub columns: Vec<(String, String)>,
    /// The column lists its guarding foreign keys reference (each a unique key of the
    /// table), shortest first: a row is the same row again when any of them matches
    /// (a table read twice, through its id and through a code, say).
    pub matching: Vec<Vec<String>>,
    /// The keys relied on: the trigger checks them at every DELETE.
    pub guard: InsertGuard,
    /// The DELETE trigger's statement (reads the transition table `old_rows`).
    pub capture: String,
    /// `refreshd."<schema>_<view>_near_<table>…"`: values other tables' changes
    /// reached this table by (module doc); `None` when no join path crosses it.
    pub near: Option<Near>,
}

/// The columns other tables' join paths reach a tombstoned table by, with their types,
/// and the table their changes write the values they reached it by into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Near {
    pub buffer: QualifiedName,
    pub columns: Vec<(String, String)>,
}

impl Tomb {
    fn names(&self) -> Vec<String> {
        self.columns.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The dimension as the delta query reads it: its rows and its tombstones.
    pub(super) fn union_sql(&self) -> String {
        let cols = list(&self.names(), "");
        format!(
            "SELECT {cols} FROM {} UNION ALL SELECT {cols} FROM {}",
            self.name.quoted(),
            self.buffer.quoted()
        )
    }

    /// True when a tombstone would be matched twice: its row is back in the table, or
    /// it was deleted twice; or when a change to another table reached for it (its
    /// near table, module doc).
    pub fn conflict_sql(&self) -> String {
        // Joins, not one scan with an OR of subqueries: PostgreSQL plans an OR of EXISTS
        // as a hashed subplan over the whole dimension, a join by its index.
        let mut parts = Vec::new();
        for cols in &self.matching {
            let on = |a: &str, b: &str| {
                cols.iter()
                    .map(|m| format!("{a}.{m} {} {b}.{m}", pg_op("="), m = quote(m)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            parts.push(format!(
                "EXISTS (SELECT 1 FROM {tomb} AS t JOIN {dim} AS x ON {tx}) \
                 OR EXISTS (SELECT 1 FROM {tomb} AS t JOIN {tomb} AS u ON {tu} AND u.ctid {ne} t.ctid)",
                tomb = self.buffer.quoted(),
                dim = self.name.quoted(),
                tx = on("x", "t"),
                tu = on("u", "t"),
                ne = pg_op("<>"),
            ));
        }
        if let Some(near) = &self.near {
            // Checked only when a change wrote a value (the join is then small).
            let each: Vec<String> = near
                .columns
                .iter()
                .map(|(c, _)| {
                    format!(
                        "EXISTS (SELECT 1 FROM {near} AS s JOIN {tomb} AS t ON t.{c} {eq} s.{c})",
                        near = near.buffer.quoted(),
                        tomb = self.buffer.quoted(),
                        c = quote(c),
                        eq = pg_op("="),
                    )
                })
                .collect();
            parts.push(format!(
                "(EXISTS (SELECT 1 FROM {}) AND ({}))",
                near.buffer.quoted(),
                each.join(" OR ")
            ));
        }
        format!("({})", parts.join(" OR "))
    }
}

fn quote(s: &str) -> String {
    crate::pg::ident::quote_ident(s)
}

/// The tombstones of a plan: one per table [`inserts::delete_guards`] finds among
/// those whose every occurrence is in the top-level FROM as a plain table reference
/// (the delta query replaces them) and whose catalog facts are known; a table that
/// cannot keep tombstones guards no other. A row is identified by the shortest column
/// list its guarding keys reference (each is a unique key of the table).
pub(super) fn tombs(
    d: &Derivation,
    f: &DeltaFacts<'_>,
    lin: &Lineage,
    stmt: &pb::SelectStmt,
    fact: &str,
) -> Vec<Tomb> {
    let mut from = stmt.from_clause.clone();
    let mut rvs = Vec::new();
    range_vars_mut(&mut from, &mut rvs);
    let eligible = |table: &str| {
        let occurrences = lin.instances.iter().filter(|i| i.table == table).count();
        let top: Vec<&&mut pb::RangeVar> = rvs
            .iter()
            .filter(|rv| resolve(f.catalog, rv).as_deref() == Some(table))
            .collect();
        let plain = top
            .iter()
            .all(|rv| rv.inh && rv.alias.as_ref().is_none_or(|a| a.colnames.is_empty()));
        f.tables.iter().any(|t| t.table == table) && top.len() == occurrences && plain
    };
    let guards = inserts::delete_guards(lin, f.catalog, fact, &eligible);
    let mut out = Vec::new();
    for (table, guard) in guards {
        let facts = f
            .tables
            .iter()
            .find(|t| t.table == table)
            .expect("eligible tables have catalog facts");
        let mut matching: Vec<Vec<String>> = Vec::new();
        for k in guard.occurrences.iter().flatten() {
            if !matching.contains(&k.ref_columns) {
                matching.push(k.ref_columns.clone());
            }
        }
        matching.sort_by_key(Vec::len);
        let reads = d.table(&table).map(|t| t.reads.clone()).unwrap_or_default();
        let columns: Vec<(String, String)> = facts
            .columns
            .iter()
            .filter(|(c, _)| reads.contains(c) || matching.iter().flatten().any(|m| m == c))
            .cloned()
            .collect();
        let buffer = QualifiedName::new(
            BUFFER_SCHEMA,
            buffer_name(f.view, &per_table("gone", f.view, &facts.name)),
        );
        let names: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();
        let capture = format!(
            "INSERT INTO {} ({}) SELECT {} FROM old_rows o",
            buffer.quoted(),
            list(&names, ""),
            list(&names, "o.")
        );
        // A step by a column the catalog does not list (never, but not assumed): no
        // tombstones for this table, its DELETEs name their groups.
        let Ok(near) = near(d, f, &table, &facts.columns, &facts.name) else {
            continue;
        };
        out.push(Tomb {
            table,
            name: facts.name.clone(),
            buffer,
            columns,
            matching,
            guard,
            capture,
            near,
        });
    }
    out
}

/// The suffix of a per-table buffer name: `<what>_<table>_<hash>`, the hash (48 bits)
/// over the view's and the table's schema and name. A view's name and a table's may
/// share underscores in any way (`p` reading `q_gone_r` against `p_gone_q` reading
/// `r`): the readable part alone does not tell two views' tables apart.
fn per_table(what: &str, view: &QualifiedName, table: &QualifiedName) -> String {
    format!(
        "{what}_{}_{}",
        table.name,
        hash(&[&view.schema, &view.name, &table.schema, &table.name])
    )
}

/// The near table of tombstoned `table` (module doc): the columns of it that a step of
/// another table's join path reaches it by (`columns`: all of its columns), each typed
/// like the column the step comes from; `Err` when such a column is not among them, or
/// is reached from columns of different types.
fn near(
    d: &Derivation,
    f: &DeltaFacts<'_>,
    table: &str,
    columns: &[(String, String)],
    name: &QualifiedName,
) -> Result<Option<Near>, ()> {
    let mut reached: Vec<(String, String)> = Vec::new();
    for t in &d.tables {
        let crate::incremental::How::JoinPath { paths, .. } = &t.how else {
            continue;
        };
        for path in paths {
            for (i, st) in path.steps.iter().enumerate() {
                if path.tables[i + 1] != table {
                    continue;
                }
                // Typed like the column the value comes from (a bigint reaching an
                // int column must not fail the writer's statement with "out of
                // range"); the check compares it with the tombstone's column across
                // types. Two steps by one column from different types: no tombstones.
                let to_type = &columns
                    .iter()
                    .find(|(c, _)| c == &st.to_column)
                    .ok_or(())?
                    .1;
                let from_type = f
                    .tables
                    .iter()
                    .find(|x| x.table == path.tables[i])
                    .and_then(|x| x.columns.iter().find(|(c, _)| c == &st.from_column))
                    .map_or(to_type, |(_, t)| t);
                match reached.iter().find(|(c, _)| c == &st.to_column) {
                    Some((_, t)) if t != from_type => return Err(()),
                    Some(_) => {}
                    None => reached.push((st.to_column.clone(), from_type.clone())),
                }
            }
        }
    }
    Ok((!reached.is_empty()).then(|| Near {
        buffer: QualifiedName::new(
            BUFFER_SCHEMA,
            buffer_name(f.view, &per_table("near", f.view, name)),
        ),
        columns: reached,
    }))
}

/// True when a tombstone of any table conflicts ([`Tomb::conflict_sql`]; the consume function then
/// recomputes everything); `None` without tombstones.
pub(super) fn conflicts_sql(tombs: &[Tomb]) -> Option<String> {
    (!tombs.is_empty()).then(|| {
        tombs
            .iter()
            .map(Tomb::conflict_sql)
            .collect::<Vec<_>>()
            .join(" OR ")
    })
}

/// Empties every tombstone and near table (after the apply, in the refresh's snapshot).
pub(super) fn cleanup(tombs: &[Tomb]) -> Vec<String> {
    tombs
        .iter()
        .flat_map(|t| std::iter::once(&t.buffer).chain(t.near.as_ref().map(|n| &n.buffer)))
        .map(|b| format!("DELETE FROM {}", b.quoted()))
        .collect()
}

/// Replaces every top-level FROM reference to a tombstoned table by its union
/// ([`Tomb::union_sql`]) under the same name.
pub(super) fn replace(
    from: &mut [pb::Node],
    f: &DeltaFacts<'_>,
    tombs: &[Tomb],
) -> Result<(), super::NoDelta> {
    for item in from {
        let swap = match item.node.as_mut() {
            Some(NodeEnum::JoinExpr(j)) => {
                for side in [j.larg.as_deref_mut(), j.rarg.as_deref_mut()]
                    .into_iter()
                    .flatten()
                {
                    replace(std::slice::from_mut(side), f, tombs)?;
                }
                None
            }
            Some(NodeEnum::RangeVar(rv)) => {
                let table = resolve(f.catalog, rv);
                tombs
                    .iter()
                    .find(|t| Some(&t.table) == table.as_ref())
                    .map(|t| {
                        let alias = rv
                            .alias
                            .as_ref()
                            .map_or_else(|| rv.relname.clone(), |a| a.aliasname.clone());
                        (t, alias)
                    })
            }
            _ => None,
        };
        if let Some((t, alias)) = swap {
            *item = subselect(t, &alias)?;
        }
    }
    Ok(())
}

/// `(<union>) AS alias`, as a FROM item of the parse tree.
fn subselect(t: &Tomb, alias: &str) -> Result<pb::Node, super::NoDelta> {
    let sql = format!("SELECT 1 FROM ({}) AS {}", t.union_sql(), quote(alias));
    let parsed = pg_query::parse(&sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| super::no(format!("internal: the tombstone union does not parse: {e}")))?;
    parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(node)
        .and_then(|n| match n {
            NodeEnum::SelectStmt(s) => s.from_clause.first().cloned(),
            _ => None,
        })
        .ok_or_else(|| super::no("internal: the tombstone union is not a FROM item"))
}
