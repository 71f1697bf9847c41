//! Probing groups that lost rows (docs/incremental-deltas.md, "How each column is
//! kept"): in a view without a `count(*)` column, whose sums' inputs are never NULL
//! ([`super::values::Values::lost`]), a group that lost rows has exactly the values the
//! delta gives it if it still exists; whether it does is one lookup in the definition's
//! FROM and WHERE with the key's expressions equal to the key, which stops at the first
//! row, where a recompute aggregates every row of the group (a fifth of TPC-H Q5's
//! join for one nation). The apply puts those keys in a probe table; this PL/pgSQL block,
//! run after it in the same snapshot, deletes the groups with no row left.

use pg_query::protobuf as pb;

use super::ast::{deparse, expr_text};
use super::columns::Out;
use super::{DeltaFacts, NoDelta};
use crate::incremental::generate::pg_op;
use crate::pg::ident::{quote_ident, QualifiedName};

/// The block (a PL/pgSQL statement: `DECLARE … BEGIN … END`): for each key taken from
/// `probe`, the group is deleted from the live table unless the definition's FROM and
/// WHERE still hold a row with the key's expressions equal to it. `row` names the loop's
/// record (a name the definition does not use: in the probe it would be a column).
pub(super) fn block(
    f: &DeltaFacts<'_>,
    stmt: &pb::SelectStmt,
    outs: &[Out],
    key_idx: &[usize],
    probe: &QualifiedName,
    row: &str,
) -> Result<String, NoDelta> {
    let from = deparse(pb::SelectStmt {
        target_list: one_target()?,
        from_clause: stmt.from_clause.clone(),
        op: pb::SetOperation::SetopNone as i32,
        limit_option: pb::LimitOption::Default as i32,
        ..Default::default()
    })?;
    let mut conds = Vec::new();
    if let Some(w) = stmt.where_clause.as_deref() {
        conds.push(format!("({})", expr_text(w)?));
    }
    let mut live_match = Vec::new();
    for &k in key_idx {
        let Out::Group(e) = &outs[k] else {
            return Err(super::no("internal: a key column is not a grouping value"));
        };
        let name = &f.columns[k].0;
        let eq = f
            .equality
            .iter()
            .find(|(c, _)| c == name)
            .map_or_else(|| pg_op("="), |(_, op)| op.clone());
        let r = format!("{}.{}", quote_ident(row), quote_ident(name));
        conds.push(format!("({e}) {eq} {r}"));
        live_match.push(format!("l.{} {eq} {r}", quote_ident(name)));
    }
    Ok(format!(
        "DECLARE\n    {row} record;\nBEGIN\n    FOR {row} IN DELETE FROM {probe} RETURNING * LOOP\n        \
         IF NOT EXISTS ({from} WHERE {conds}) THEN\n            \
         DELETE FROM {live} AS l WHERE {live_match};\n        END IF;\n    END LOOP;\nEND",
        row = quote_ident(row),
        probe = probe.quoted(),
        conds = conds.join(" AND "),
        live = f.live.quoted(),
        live_match = live_match.join(" AND "),
    ))
}

/// The target list `1`.
fn one_target() -> Result<Vec<pb::Node>, NoDelta> {
    let parsed = pg_query::parse("SELECT 1", pg_query::ParserOptions::DEFAULT)
        .map_err(|e| super::no(format!("internal: {e}")))?;
    match parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(|n| n.node.as_ref())
    {
        Some(pg_query::NodeEnum::SelectStmt(s)) => Ok(s.target_list.clone()),
        _ => Err(super::no("internal: SELECT 1 is not a SELECT")),
    }
}
