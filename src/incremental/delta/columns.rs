//! The view's output columns as the apply sees them: a grouping value (the key among
//! them) or a plain `count`, `sum` or `avg` of an exact type; anything else is refused.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::ast::{expr_text, node, strings};
use super::{no, DeltaFacts, NoDelta};
use crate::incremental::{ColumnClass, Derivation};

/// Output types a sum may have: exact arithmetic, so old + delta equals a recompute
/// (floating point drifts; money and interval are left out for want of tests).
const SUM_TYPES: &[&str] = &["bigint", "numeric"];

/// A delta-capable output column.
#[derive(Debug, Clone)]
pub(super) struct AggCol {
    pub func: &'static str,
    /// The argument's SQL (`None` for `count(*)`).
    pub arg: Option<String>,
    pub arg_node: Option<pb::Node>,
    pub filter: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) enum Out {
    /// A key column or a grouping value: its expression's SQL.
    Group(String),
    Agg(Box<AggCol>),
}

impl Out {
    /// The aggregate `func` of this column, if it is one.
    pub fn agg(&self, func: &str) -> Option<&AggCol> {
        match self {
            Out::Agg(a) if a.func == func => Some(a),
            _ => None,
        }
    }
}

/// Per output column (the target list, in order), what it is.
pub(super) fn outputs(
    d: &Derivation,
    f: &DeltaFacts<'_>,
    targets: &[&pb::ResTarget],
) -> Result<Vec<Out>, NoDelta> {
    if targets.len() != f.columns.len() {
        return Err(no("the target list does not match the view's columns"));
    }
    let mut outs = Vec::new();
    for (i, ((name, ty), t)) in f.columns.iter().zip(targets).enumerate() {
        let val = t
            .val
            .as_deref()
            .ok_or_else(|| no(format!("column {name} has no expression")))?;
        outs.push(match &d.columns[i].class {
            ColumnClass::Key | ColumnClass::Group => Out::Group(expr_text(val)?),
            _ => Out::Agg(Box::new(aggregate(name, ty, val)?)),
        });
    }
    Ok(outs)
}

/// An aggregate column: a plain `count`, `sum` or `avg` call (FILTER allowed) whose
/// type keeps exact sums.
fn aggregate(name: &str, ty: &str, val: &pb::Node) -> Result<AggCol, NoDelta> {
    let Some(NodeEnum::FuncCall(fc)) = node(val) else {
        return Err(no(format!(
            "column {name} is an expression over aggregates (deltas apply to plain count, sum and avg columns: the live table keeps no hidden parts)"
        )));
    };
    let func = function(name, fc)?;
    if fc.agg_distinct
        || !fc.agg_order.is_empty()
        || fc.agg_within_group
        || fc.over.is_some()
        || fc.func_variadic
    {
        return Err(no(format!(
            "column {name}: {func} with DISTINCT, ORDER BY or OVER"
        )));
    }
    let (arg, arg_node) = match (fc.agg_star, fc.args.as_slice()) {
        (true, []) if func == "count" => (None, None),
        (false, [a]) => (Some(expr_text(a)?), Some(a.clone())),
        _ => return Err(no(format!("column {name}: {func} of an unusual shape"))),
    };
    let filter = fc.agg_filter.as_deref().map(expr_text).transpose()?;
    let ty_ok = match func {
        "count" => ty == "bigint",
        "sum" => SUM_TYPES.contains(&ty),
        _ => ty == "numeric",
    };
    if !ty_ok {
        return Err(no(match func {
            // Only in a table converted in place whose column's type was changed.
            "count" => format!(
                "column {name}: count kept as {ty} (deltas add to a count kept as bigint, the type count returns)"
            ),
            "avg" => format!(
                "column {name}: avg of type {ty} (deltas keep an average exactly only as numeric)"
            ),
            _ => format!(
                "column {name}: {func} of type {ty} (deltas keep exact sums only: bigint or numeric; floating point would drift from a recompute)"
            ),
        }));
    }
    Ok(AggCol {
        func,
        arg,
        arg_node,
        filter,
    })
}

/// The aggregate a call names: `count`, `sum` or `avg`, bare or in `pg_catalog`.
fn function(name: &str, fc: &pb::FuncCall) -> Result<&'static str, NoDelta> {
    let fname = strings(&fc.funcname);
    match fname.as_slice() {
        [n] | [_, n] if fname.len() == 1 || fname[0] == "pg_catalog" => match n.as_str() {
            "count" => Ok("count"),
            "sum" => Ok("sum"),
            "avg" => Ok("avg"),
            other => Err(no(format!("column {name}: {other} has no delta rule"))),
        },
        _ => Err(no(format!("column {name}: a user-defined aggregate"))),
    }
}

/// The positions of the key columns among the view's, each a grouping value.
pub(super) fn key_positions(
    d: &Derivation,
    f: &DeltaFacts<'_>,
    outs: &[Out],
) -> Result<Vec<usize>, NoDelta> {
    let key_idx: Vec<usize> = d
        .key
        .iter()
        .map(|k| f.columns.iter().position(|(c, _)| c == k))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| no("a key column is not a column of the view"))?;
    for k in &key_idx {
        if !matches!(outs[*k], Out::Group(_)) {
            return Err(no("a key column is an aggregate"));
        }
    }
    Ok(key_idx)
}
