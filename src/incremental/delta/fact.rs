//! Which table is the fact table (docs/incremental-deltas.md, "Which table is the fact
//! table"), what the buffer copies of it, and the names the apply adds to the query.

use std::collections::BTreeSet;

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::ast::{self, node, strings};
use super::{no, DeltaFacts, DeltaTable, NoDelta};
use crate::incremental::lineage::Lineage;
use crate::incremental::{Derivation, How};

/// The fact table and the columns of it the view reads.
pub(super) struct Fact<'a> {
    pub table: &'a DeltaTable,
    /// Its alias in the definition: the consumed rows take it.
    pub alias: String,
    /// The columns the view reads with their types, in the table's order: the buffer's.
    pub columns: Vec<(String, String)>,
    /// Their names.
    pub names: Vec<String>,
}

/// The caller's fact table, or the eligible one with the most estimated rows.
pub(super) fn choose<'a>(
    d: &Derivation,
    f: &DeltaFacts<'a>,
    stmt: &pb::SelectStmt,
    lin: &Lineage,
) -> Result<Fact<'a>, NoDelta> {
    if let Some(t) = f.tables.iter().find(|t| t.row_security) {
        return Err(no(format!(
            "row-level security is enabled on {}: a change's rows are not the rows the view's owner sees through its policies",
            t.name
        )));
    }
    let top = ast::top_level_tables(f.catalog, stmt);
    let eligible = |t: &str| eligible(t, d, f, lin, &top);
    let table = match f.fact {
        Some(t) => eligible(t).map_err(|r| no(format!("{t} cannot take deltas: {r}")))?,
        None => {
            let mut best: Option<&DeltaTable> = None;
            let mut reasons = Vec::new();
            let mut seen = BTreeSet::new();
            for i in &lin.instances {
                if !seen.insert(i.table.clone()) {
                    continue;
                }
                match eligible(&i.table) {
                    Ok(t) => {
                        if best.is_none_or(|b| t.estimated_rows > b.estimated_rows) {
                            best = Some(t);
                        }
                    }
                    Err(r) => reasons.push(format!("{}: {r}", i.relname)),
                }
            }
            best.ok_or_else(|| no(format!("no table can take deltas ({})", reasons.join("; "))))?
        }
    };
    read_columns(d, table, lin)
}

/// The table's catalog facts when it can take deltas, else why not: once in the
/// definition, in the top-level FROM, on no nullable side, and no other table reaches
/// the key through it.
fn eligible<'a>(
    t: &str,
    d: &Derivation,
    f: &DeltaFacts<'a>,
    lin: &Lineage,
    top: &[String],
) -> Result<&'a DeltaTable, String> {
    let facts = f
        .tables
        .iter()
        .find(|x| x.table == t)
        .ok_or_else(|| "no catalog facts (column types) for it".to_string())?;
    let insts: Vec<_> = lin.instances.iter().filter(|i| i.table == t).collect();
    if insts.len() != 1 {
        return Err(format!(
            "it appears {} times in the definition (deltas of two occurrences in one snapshot count their pairs twice)",
            insts.len()
        ));
    }
    if insts[0].opaque {
        return Err("it is read only inside a subquery expression".into());
    }
    if insts[0].nullable {
        return Err("it is on the nullable side of an outer join".into());
    }
    if let Some(g) = d
        .table(t)
        .and_then(|x| x.reads.iter().find(|c| facts.generated.contains(c)))
    {
        return Err(format!(
            "it is read through its generated column {g}, whose value a trigger's transition table may not hold (VIRTUAL, or STORED in a partitioned table)"
        ));
    }
    if top.iter().filter(|x| *x == t).count() != 1 {
        return Err("it is read through a view or a subquery, not in the top-level FROM".into());
    }
    for other in &d.tables {
        if let How::JoinPath { paths, .. } = &other.how {
            if other.table != t && paths.iter().any(|p| p.tables.iter().any(|x| x == t)) {
                return Err(format!(
                    "{} reaches the key through it (its changes would not find the fact rows deleted since the last refresh)",
                    other.name
                ));
            }
        }
    }
    Ok(facts)
}

/// The fact table's alias and the columns the view reads of it (at least one).
fn read_columns<'a>(
    d: &Derivation,
    table: &'a DeltaTable,
    lin: &Lineage,
) -> Result<Fact<'a>, NoDelta> {
    let inst = lin
        .instances
        .iter()
        .find(|i| i.table == table.table)
        .expect("eligible");
    let reads = d
        .table(&table.table)
        .map(|t| t.reads.clone())
        .unwrap_or_default();
    let columns: Vec<(String, String)> = table
        .columns
        .iter()
        .filter(|(c, _)| reads.contains(c))
        .cloned()
        .collect();
    if columns.is_empty() {
        return Err(no(format!("the view reads no column of {}", table.name)));
    }
    let names = columns.iter().map(|(c, _)| c.clone()).collect();
    Ok(Fact {
        table,
        alias: inst.alias.clone(),
        columns,
        names,
    })
}

impl Fact<'_> {
    /// The fact column an expression is, when it is one plain column read (by its plain
    /// or fact-qualified name).
    pub fn column_of(&self, e: &pb::Node) -> Option<String> {
        let Some(NodeEnum::ColumnRef(c)) = node(e) else {
            return None;
        };
        let parts = strings(&c.fields);
        let col = match parts.as_slice() {
            [col] => col,
            [alias, col] if *alias == self.alias => col,
            _ => return None,
        };
        self.names.contains(col).then(|| col.clone())
    }

    /// Whether an expression cannot be NULL: arithmetic (+, -, *) and casts over
    /// constants and NOT NULL columns of the fact table.
    pub fn never_null(&self, e: &pb::Node) -> bool {
        match node(e) {
            Some(NodeEnum::ColumnRef(_)) => self
                .column_of(e)
                .is_some_and(|c| self.table.not_null.contains(&c)),
            Some(NodeEnum::AConst(c)) => c.val.is_some() && !c.isnull,
            Some(NodeEnum::TypeCast(t)) => t.arg.as_deref().is_some_and(|a| self.never_null(a)),
            Some(NodeEnum::AExpr(a)) => {
                let op = strings(&a.name);
                a.kind == pb::AExprKind::AexprOp as i32
                    && matches!(op.as_slice(), [o] if o == "+" || o == "-" || o == "*")
                    && [&a.lexpr, &a.rexpr]
                        .iter()
                        .all(|x| x.as_deref().is_some_and(|x| self.never_null(x)))
            }
            _ => false,
        }
    }
}

/// Names that cannot collide: the sign column with any column the query could see,
/// the consumed rows' CTE with any relation name the definition uses.
pub(super) struct Names {
    pub sign: String,
    pub rows_cte: String,
    /// The probe's loop record ([`super::probe::block`]).
    pub probe_row: String,
}

impl Names {
    pub fn pick(f: &DeltaFacts<'_>, relnames: &BTreeSet<String>) -> Self {
        // Not refreshd's own tables (its buffers): their columns are what an earlier
        // conversion named, and taking them would make each conversion name the sign
        // column otherwise than the one before.
        let taken: BTreeSet<&str> = f
            .catalog
            .relations
            .iter()
            .filter(|r| r.schema != "refreshd")
            .flat_map(|r| r.columns.iter().map(String::as_str))
            .chain(
                f.tables
                    .iter()
                    .flat_map(|t| t.columns.iter().map(|(c, _)| c.as_str())),
            )
            .collect();
        Names {
            sign: unique("refreshd_sign", &|s| taken.contains(s)),
            rows_cte: unique("refreshd_delta_rows", &|s| relnames.contains(s)),
            probe_row: unique("refreshd_probe_row", &|s| relnames.contains(s)),
        }
    }
}

/// `base`, or `base_2`, `base_3`... the first not taken.
fn unique(base: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}
