//! Which base tables' INSERTs cannot change the view: those guarded by foreign keys.
//!
//! A row `d` inserted into table D changes the view only through the rows the view is
//! made of that contain `d`. When every occurrence of D in the view is joined by an
//! equality `R.a = D.b` to an occurrence of another table R that is on no nullable
//! side of an outer join, and R has a validated, not deferrable, enforced foreign key
//! `R (a) REFERENCES D (b)` on exactly those columns, then no row of R can match `d`
//! before `d` exists: every such R row is inserted (or updated to point at `d`) later
//! or in the same statement, and that change is R's capture to report. So D's INSERT
//! needs no capture, which is what a dimension row inserted with its first facts (a
//! new order with its lineitems) costs otherwise: the recompute of a whole group.
//!
//! Only INSERTs: a deleted or updated D row may have been matched by rows of R that
//! still exist when the change commits (ON DELETE CASCADE deletes them in the same
//! statement, but a delta computed afterwards could no longer find their group).
//!
//! Soundness needs the guards to have a root: if D is guarded by R and R by D (a
//! cycle of foreign keys, both rows inserted by one statement through a data-modifying
//! CTE), nobody captures the new pair. So a table is guarded only by tables whose own
//! inserts are captured or are guarded in turn by such a chain (no cycle), and never
//! by another occurrence of itself. Inheritance children escape a foreign key (it
//! checks the parent only), so tables with children that are not partitions are
//! never relied on; the catalog reader leaves those keys out, and the keeper checks it
//! again, with the key's state.
//!
//! Whether the keys still hold (exist, validated, not deferrable, enforced) is not
//! checked by the writers: the conversion's guard keeper (incremental::guard) checks it
//! at each of refreshd's capture checks, and a key found dropped or altered makes the
//! capture take INSERTs again and the view be recomputed once the writers that relied
//! on it have ended.

use std::collections::{BTreeMap, BTreeSet};

use super::generate::pg_op;
use super::lineage::{InstCol, Lineage};
use super::Catalog;

/// A foreign key, as the catalog reader found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// `pg_constraint.oid`: what the generated guard checks.
    pub oid: u32,
    pub name: String,
    /// The referencing table (`schema.name`) and its columns.
    pub table: String,
    pub columns: Vec<String>,
    /// The referenced table (`schema.name`) and its columns, pairwise.
    pub references: String,
    pub ref_columns: Vec<String>,
}

/// Why a table's INSERTs need no capture: per occurrence of the table in the view,
/// the foreign keys any one of which guards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertGuard {
    pub occurrences: Vec<Vec<ForeignKey>>,
}

impl InsertGuard {
    /// A boolean SQL expression, true while every occurrence still has one of its keys
    /// in force: what the guard's keeper checks at each of refreshd's capture checks
    /// (incremental::guard; the writer's role is the trigger's to check). A key is in
    /// force when it is validated, not deferrable and enforced, between tables without
    /// inheritance children other than partitions, and nothing on either table or its
    /// partitions lets a row escape it: no disabled (or replica-only) internal trigger
    /// — the key's checks and actions are such triggers, `ALTER TABLE ... DISABLE
    /// TRIGGER ALL` turns them off — and, when the key cascades, sets NULL or sets a
    /// default on DELETE or UPDATE, no user BEFORE ROW trigger on DELETE or UPDATE
    /// (returning NULL, it cancels the key's action and leaves orphans) and no DELETE or
    /// UPDATE rule on the referencing side. `conenforced` (PostgreSQL 18) is read
    /// through `to_jsonb` so that one text works on every major.
    pub fn keys_hold_sql(&self) -> String {
        let mut seen: Vec<Vec<u32>> = Vec::new();
        let mut parts = Vec::new();
        let eq = pg_op("=");
        let ne = pg_op("<>");
        let and = pg_op("&");
        for occ in &self.occurrences {
            let mut oids: Vec<u32> = occ.iter().map(|k| k.oid).collect();
            oids.sort_unstable();
            if seen.contains(&oids) {
                continue;
            }
            let list = oids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            // Run by a trigger function under its caller's search_path: every operator
            // named with its schema (`IN` and `IS DISTINCT FROM` would look `=` up).
            // On the table itself, and (only when it is partitioned: pg_partition_tree
            // is the dearest part) on its partitions: each a lookup by index.
            let on_tree = |rel: &str, kind: &str, what: &str, cond: &str| {
                let (alias, column) = match what {
                    "pg_trigger" => ("t", "tgrelid"),
                    _ => ("w", "ev_class"),
                };
                format!(
                    "NOT EXISTS (SELECT 1 FROM pg_catalog.{what} {alias} WHERE {alias}.{column} {eq} {rel} AND ({cond})) \
                     AND NOT ({kind} {eq} 'p' AND EXISTS (SELECT 1 FROM pg_catalog.pg_partition_tree({rel}) AS x \
                     JOIN pg_catalog.{what} {alias} ON {alias}.{column} {eq} x.relid WHERE {cond}))"
                )
            };
            let internal_off =
                "t.tgisinternal AND t.tgconstraint {ne} 0 AND t.tgenabled {ne} 'O' AND t.tgenabled {ne} 'A'"
                    .replace("{ne}", &ne);
            // A cascaded DELETE (ON DELETE CASCADE), or a cascaded UPDATE (ON DELETE SET
            // NULL / SET DEFAULT, any ON UPDATE action but NO ACTION and RESTRICT), runs
            // the referencing table's BEFORE ROW triggers and rules for that event.
            let deletes = format!("c.confdeltype {eq} 'c'");
            let updates = format!(
                "(c.confdeltype {eq} ANY (ARRAY['n', 'd']::pg_catalog.\"char\"[]) OR c.confupdtype {eq} ANY (ARRAY['c', 'n', 'd']::pg_catalog.\"char\"[]))"
            );
            // tgtype: ROW 1, BEFORE 2, DELETE 8, UPDATE 16; ev_type: '3' UPDATE, '4' DELETE.
            let bits = |mask: u8| format!("(t.tgtype::pg_catalog.int4 {and} {mask}) {ne} 0");
            let cancels = format!(
                "NOT t.tgisinternal AND t.tgenabled {ne} 'D' AND t.tgenabled {ne} 'R' \
                 AND (t.tgtype::pg_catalog.int4 {and} 3) {eq} 3 \
                 AND (({deletes} AND {}) OR ({updates} AND {}))",
                bits(8),
                bits(16),
            );
            let rules =
                format!("({deletes} AND w.ev_type {eq} '4') OR ({updates} AND w.ev_type {eq} '3')");
            let checks = [
                on_tree(
                    "c.conrelid",
                    "r.relkind",
                    "pg_trigger",
                    &format!("({internal_off}) OR ({cancels})"),
                ),
                on_tree("c.confrelid", "f.relkind", "pg_trigger", &internal_off),
                on_tree("c.conrelid", "r.relkind", "pg_rewrite", &rules),
            ]
            .join(" AND ");
            parts.push(format!(
                "EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
                 JOIN pg_catalog.pg_class r ON r.oid {eq} c.conrelid \
                 JOIN pg_catalog.pg_class f ON f.oid {eq} c.confrelid \
                 WHERE c.oid {eq} ANY (ARRAY[{list}]::pg_catalog.oid[]) AND c.contype {eq} 'f' AND c.convalidated AND NOT c.condeferrable \
                 AND COALESCE((pg_catalog.to_jsonb(c) {field} 'conenforced') {ne} 'false', true) \
                 AND (r.relkind {eq} 'p' OR NOT r.relhassubclass) AND (f.relkind {eq} 'p' OR NOT f.relhassubclass) \
                 AND {checks})",
                field = pg_op("->>"),
            ));
            seen.push(oids);
        }
        parts.join(" AND ")
    }

    /// The writer is not in the replica role (a logical replication apply worker, for which
    /// no foreign key is checked).
    pub fn not_replica_sql() -> String {
        format!(
            "pg_catalog.current_setting('session_replication_role') {} 'replica'",
            pg_op("<>")
        )
    }

    /// What `init` prints: the keys relied on, by referencing table and name.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for occ in &self.occurrences {
            let keys: Vec<String> = occ
                .iter()
                .map(|k| format!("{} (its foreign key {})", k.table, k.name))
                .collect();
            let text = keys.join(" or ");
            if !parts.contains(&text) {
                parts.push(text);
            }
        }
        format!(
            "not captured: a row of the view reading it also reads a row of {} that must reference it, while refreshd finds the keys in force at its capture checks",
            parts.join("; and ")
        )
    }
}

/// The candidate guards of one occurrence: foreign keys of other, non-nullable,
/// traceable occurrences that reference this occurrence's table on columns the view
/// equates pairwise, directly.
fn candidates(lineage: &Lineage, catalog: &Catalog, i: usize) -> Vec<(ForeignKey, String)> {
    let inst = &lineage.instances;
    let d = &inst[i];
    let equal = |a: &InstCol, b: &InstCol| {
        lineage
            .equalities
            .iter()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    };
    let mut out = Vec::new();
    for (j, r) in inst.iter().enumerate() {
        if j == i || r.nullable || r.opaque || r.table == d.table {
            continue;
        }
        for fk in catalog
            .foreign_keys
            .iter()
            .filter(|k| k.table == r.table && k.references == d.table)
        {
            let all = !fk.columns.is_empty()
                && fk.columns.len() == fk.ref_columns.len()
                && fk.columns.iter().zip(&fk.ref_columns).all(|(a, b)| {
                    equal(
                        &InstCol {
                            inst: j,
                            col: a.clone(),
                        },
                        &InstCol {
                            inst: i,
                            col: b.clone(),
                        },
                    )
                });
            if all
                && !out
                    .iter()
                    .any(|(k, _): &(ForeignKey, String)| k.oid == fk.oid)
            {
                out.push((fk.clone(), r.table.clone()));
            }
        }
    }
    out
}

/// The tables whose INSERTs need no capture, with their guards (module doc).
pub(super) fn guards(lineage: &Lineage, catalog: &Catalog) -> BTreeMap<String, InsertGuard> {
    let inst = &lineage.instances;
    let tables: BTreeSet<&str> = inst.iter().map(|o| o.table.as_str()).collect();
    // Per table, per occurrence: the candidate keys and the table each comes from.
    let mut cands: BTreeMap<&str, Vec<Vec<(ForeignKey, String)>>> = BTreeMap::new();
    for (i, o) in inst.iter().enumerate() {
        cands
            .entry(o.table.as_str())
            .or_default()
            .push(if o.opaque {
                Vec::new()
            } else {
                candidates(lineage, catalog, i)
            });
    }
    // Settled tables: captured (no guard possible) or guarded through settled ones.
    let mut captured: BTreeSet<&str> = tables
        .iter()
        .copied()
        .filter(|t| cands[t].iter().any(Vec::is_empty))
        .collect();
    let mut guarded: BTreeMap<String, InsertGuard> = BTreeMap::new();
    loop {
        let mut progress = false;
        for t in &tables {
            if captured.contains(t) || guarded.contains_key(*t) {
                continue;
            }
            let settled = |from: &String| {
                captured.contains(from.as_str()) || guarded.contains_key(from.as_str())
            };
            let occurrences: Vec<Vec<ForeignKey>> = cands[t]
                .iter()
                .map(|occ| {
                    occ.iter()
                        .filter(|(_, from)| settled(from))
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            if occurrences.iter().all(|o| !o.is_empty()) {
                guarded.insert(t.to_string(), InsertGuard { occurrences });
                progress = true;
            }
        }
        if progress {
            continue;
        }
        // Left: tables guarding each other in a cycle. Capture the first one's
        // INSERTs; the others may then be guarded through it.
        match tables
            .iter()
            .find(|t| !captured.contains(*t) && !guarded.contains_key(**t))
        {
            Some(t) => {
                captured.insert(t);
            }
            None => break,
        }
    }
    guarded
}

/// The tables whose DELETEs need no group recompute under a view whose `fact` table
/// takes deltas, with the foreign keys that make it so: every occurrence of the table
/// is joined, by an equality on exactly a foreign key's columns, to an occurrence of the
/// fact table or of a table guarded so in turn, whose rows reference it. A row of such
/// a table can only be deleted once every row of the view containing it has lost its
/// fact row (deleted first, through the chain of keys: a negative delta in the fact
/// table's buffer). The apply joins those deleted fact rows to the dimension as it is
/// at the refresh, so the dimension's deleted rows are kept for it (a tombstone
/// buffer, [`super::delta`]) instead of naming their groups. A key dropped or altered
/// later is noticed by the trigger at every DELETE, which then names groups again.
///
/// `eligible` says which tables may keep tombstones at all (the caller's conditions);
/// a table that may not is never relied on by another.
pub(super) fn delete_guards(
    lineage: &Lineage,
    catalog: &Catalog,
    fact: &str,
    eligible: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, InsertGuard> {
    let inst = &lineage.instances;
    let tables: BTreeSet<&str> = inst
        .iter()
        .map(|o| o.table.as_str())
        .filter(|t| *t != fact && eligible(t))
        .collect();
    let mut guarded: BTreeMap<String, InsertGuard> = BTreeMap::new();
    loop {
        let mut progress = false;
        for t in &tables {
            if guarded.contains_key(*t) {
                continue;
            }
            let settled = |from: &str| from == fact || guarded.contains_key(from);
            let mut occurrences = Vec::new();
            for (i, o) in inst.iter().enumerate().filter(|(_, o)| o.table == *t) {
                let keys: Vec<ForeignKey> = if o.nullable || o.opaque {
                    Vec::new()
                } else {
                    candidates(lineage, catalog, i)
                        .into_iter()
                        .filter(|(_, from)| settled(from))
                        .map(|(k, _)| k)
                        .collect()
                };
                occurrences.push(keys);
            }
            if !occurrences.is_empty() && occurrences.iter().all(|o| !o.is_empty()) {
                guarded.insert(t.to_string(), InsertGuard { occurrences });
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    guarded
}
