//! The delta query, by editing the definition's parse tree (never its text): its FROM
//! with the fact table replaced by the consumed rows under the same alias, its WHERE,
//! its GROUP BY with positions resolved, and the delta targets; printed back by
//! libpg_query's deparser.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::ast::{deparse, expr_text, json_strings, node, range_vars_mut, resolve, walk_json};
use super::columns::Out;
use super::fact::Fact;
use super::{no, DeltaFacts, NoDelta};

/// The delta SELECT's text: the definition over the consumed rows (`rows_cte`),
/// grouped like the view, with `delta_targets` as its target list.
pub(super) fn delta_select(
    f: &DeltaFacts<'_>,
    stmt: &pb::SelectStmt,
    targets: &[&pb::ResTarget],
    outs: &[Out],
    fact: &Fact<'_>,
    rows_cte: &str,
    delta_targets: &[String],
) -> Result<String, NoDelta> {
    let mut ds = stmt.clone();
    replace_fact(&mut ds.from_clause, f, fact, rows_cte)?;
    let group = group_by(&ds.group_clause, targets)?;
    check_grouping_values(&group, targets, outs, fact, f)?;
    ds.group_clause = group;
    ds.sort_clause.clear();
    ds.target_list = parse_targets(delta_targets)?;
    deparse(ds)
}

/// Replaces the fact table's one occurrence in the top-level FROM by the consumed
/// rows, under the fact table's alias.
fn replace_fact(
    from: &mut [pb::Node],
    f: &DeltaFacts<'_>,
    fact: &Fact<'_>,
    rows_cte: &str,
) -> Result<(), NoDelta> {
    let table = fact.table;
    let mut rvs = Vec::new();
    range_vars_mut(from, &mut rvs);
    let mut replaced = 0;
    for rv in rvs {
        if resolve(f.catalog, rv).as_deref() != Some(table.table.as_str()) {
            continue;
        }
        if !rv.inh {
            return Err(no(format!(
                "FROM ONLY {}: its partitions' changes are not part of the view",
                table.name
            )));
        }
        if rv.alias.as_ref().is_some_and(|a| !a.colnames.is_empty()) {
            return Err(no(format!("{} has column aliases", table.name)));
        }
        *rv = pb::RangeVar {
            relname: rows_cte.to_string(),
            inh: true,
            relpersistence: "p".into(),
            alias: Some(pb::Alias {
                aliasname: fact.alias.clone(),
                colnames: Vec::new(),
            }),
            location: -1,
            ..Default::default()
        };
        replaced += 1;
    }
    if replaced != 1 {
        return Err(no("the fact table is not once in the top-level FROM"));
    }
    Ok(())
}

/// The GROUP BY expressions, positions (`GROUP BY 1`) replaced by their targets'.
fn group_by(clause: &[pb::Node], targets: &[&pb::ResTarget]) -> Result<Vec<pb::Node>, NoDelta> {
    let mut group = Vec::new();
    for g in clause {
        match node(g) {
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(pb::a_const::Val::Ival(n)) if n.ival >= 1 => {
                    let t = targets
                        .get(n.ival as usize - 1)
                        .and_then(|t| t.val.as_deref())
                        .ok_or_else(|| no("GROUP BY position out of range"))?;
                    group.push(t.clone());
                }
                _ => return Err(no("GROUP BY a constant")),
            },
            Some(NodeEnum::GroupingSet(_)) => return Err(no("GROUPING SETS")),
            _ => group.push(g.clone()),
        }
    }
    Ok(group)
}

/// A grouping value PostgreSQL accepts through a primary key (GROUP BY t.id, SELECT
/// t.name) is no longer accepted when t is the consumed rows: refuse it up front
/// rather than fail at every refresh.
fn check_grouping_values(
    group: &[pb::Node],
    targets: &[&pb::ResTarget],
    outs: &[Out],
    fact: &Fact<'_>,
    f: &DeltaFacts<'_>,
) -> Result<(), NoDelta> {
    let grouped: Vec<String> = group.iter().map(expr_text).collect::<Result<_, _>>()?;
    // The grouped columns by their parts, never by splitting printed SQL on `.` (a
    // quoted name may hold one).
    let grouped_columns: Vec<Vec<String>> = group
        .iter()
        .filter(|g| matches!(node(g), Some(NodeEnum::ColumnRef(_))))
        .flat_map(column_refs)
        .collect();
    for (i, t) in targets.iter().enumerate() {
        if !matches!(outs[i], Out::Group(_)) {
            continue;
        }
        let Some(val) = t.val.as_deref() else {
            continue;
        };
        if grouped.contains(&expr_text(val)?) {
            continue;
        }
        for parts in column_refs(val) {
            let covered = grouped_columns.contains(&parts);
            let of_fact = match parts.as_slice() {
                [c] => fact.names.contains(c),
                [q, _] => *q == fact.alias,
                _ => true,
            };
            if !covered && of_fact {
                return Err(no(format!(
                    "column {} is not grouped by itself (PostgreSQL accepts it through {}'s primary key, which the consumed rows do not have)",
                    f.columns[i].0, fact.table.name
                )));
            }
        }
    }
    Ok(())
}

/// The parts of every column reference in an expression.
fn column_refs(val: &pb::Node) -> Vec<Vec<String>> {
    let v = serde_json::to_value(val).unwrap_or_default();
    let mut refs: Vec<Vec<String>> = Vec::new();
    walk_json(&v, &mut |k, x| {
        if k == "ColumnRef" {
            let parts = x.get("fields").map(json_strings).unwrap_or_default();
            refs.push(parts.into_iter().map(str::to_string).collect());
        }
    });
    refs
}

/// The delta targets' parse tree (parsed as `SELECT <targets>`).
fn parse_targets(delta_targets: &[String]) -> Result<Vec<pb::Node>, NoDelta> {
    let target_sql = format!("SELECT {}", delta_targets.join(", "));
    let tparsed = pg_query::parse(&target_sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| no(format!("internal: the delta targets do not parse: {e}")))?;
    match tparsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(node)
    {
        Some(NodeEnum::SelectStmt(t)) => Ok(t.target_list.clone()),
        _ => Err(no("internal: the delta targets are not a SELECT")),
    }
}
