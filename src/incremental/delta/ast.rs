//! The definition as PostgreSQL's parser (libpg_query) reads it: the one SELECT and the
//! shapes deltas cannot take, what its serialized tree must not hold (time, volatile
//! calls, schema-qualified columns), its top-level FROM, and expressions printed back.

use std::collections::BTreeSet;

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::{no, NoDelta};
use crate::incremental::{volatile, Catalog};

pub(super) fn node(n: &pb::Node) -> Option<&NodeEnum> {
    n.node.as_ref()
}

fn wrap(n: NodeEnum) -> pb::Node {
    pb::Node { node: Some(n) }
}

/// The values of the `String` nodes of a list (a name's parts, a column reference's).
pub(super) fn strings(list: &[pb::Node]) -> Vec<String> {
    list.iter()
        .filter_map(|f| match node(f) {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// The SQL text of one expression node (deparsed by libpg_query as `SELECT <expr>`).
pub(super) fn expr_text(e: &pb::Node) -> Result<String, NoDelta> {
    let target = wrap(NodeEnum::ResTarget(Box::new(pb::ResTarget {
        name: String::new(),
        indirection: Vec::new(),
        val: Some(Box::new(e.clone())),
        location: -1,
    })));
    let select = pb::SelectStmt {
        target_list: vec![target],
        op: pb::SetOperation::SetopNone as i32,
        limit_option: pb::LimitOption::Default as i32,
        ..Default::default()
    };
    let text = deparse(select)?;
    text.strip_prefix("SELECT ")
        .map(str::to_string)
        .ok_or_else(|| no(format!("unexpected deparse of an expression: {text}")))
}

pub(super) fn deparse(select: pb::SelectStmt) -> Result<String, NoDelta> {
    let result = pb::ParseResult {
        version: 0,
        stmts: vec![pb::RawStmt {
            stmt: Some(Box::new(wrap(NodeEnum::SelectStmt(Box::new(select))))),
            stmt_location: 0,
            stmt_len: 0,
        }],
    };
    pg_query::deparse(&result, pg_query::DeparseOptions::default())
        .map_err(|e| no(format!("the definition does not deparse: {e}")))
}

/// Calls `f` with every key and value of a serialized parse tree, depth first.
pub(super) fn walk_json<'v>(
    v: &'v serde_json::Value,
    f: &mut impl FnMut(&'v str, &'v serde_json::Value),
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                f(k, x);
                walk_json(x, f);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| walk_json(x, f)),
        _ => {}
    }
}

/// Every string value (`sval`) under a serialized node: a name's or a column
/// reference's parts, in order.
pub(super) fn json_strings(v: &serde_json::Value) -> Vec<&str> {
    let mut out = Vec::new();
    walk_json(v, &mut |k, x| {
        if let (true, Some(s)) = (k == "sval", x.as_str()) {
            out.push(s);
        }
    });
    out
}

/// The definition, parsed: its one SELECT and every relation name it uses (the
/// consumed rows' CTE must not take one).
pub(super) struct Definition {
    pub stmt: pb::SelectStmt,
    pub relnames: BTreeSet<String>,
}

impl Definition {
    /// Parses the definition and refuses the shapes deltas cannot take.
    pub fn read(definition: &str) -> Result<Self, NoDelta> {
        let parsed = pg_query::parse(definition, pg_query::ParserOptions::DEFAULT)
            .map_err(|e| no(format!("the definition does not parse: {e}")))?;
        let json = serde_json::to_value(&parsed.protobuf)
            .map_err(|e| no(format!("the parse tree does not serialize: {e}")))?;
        let stmt = match parsed
            .protobuf
            .stmts
            .first()
            .and_then(|s| s.stmt.as_deref())
        {
            Some(pb::Node {
                node: Some(NodeEnum::SelectStmt(s)),
            }) if parsed.protobuf.stmts.len() == 1 => (**s).clone(),
            _ => return Err(no("the definition is not one SELECT")),
        };
        check_shape(&stmt)?;
        let relnames = scan(&json)?;
        Ok(Definition { stmt, relnames })
    }

    /// The target list's entries, in order.
    pub fn targets(&self) -> Vec<&pb::ResTarget> {
        self.stmt
            .target_list
            .iter()
            .filter_map(|t| match node(t) {
                Some(NodeEnum::ResTarget(rt)) => Some(&**rt),
                _ => None,
            })
            .collect()
    }
}

/// One grouped SELECT, without a set operation, WITH, DISTINCT, HAVING, LIMIT or window.
fn check_shape(stmt: &pb::SelectStmt) -> Result<(), NoDelta> {
    if stmt.op != pb::SetOperation::SetopNone as i32 {
        return Err(no("a set operation"));
    }
    if stmt.with_clause.is_some() {
        return Err(no(
            "a WITH clause (CTEs are not handled by delta application yet)",
        ));
    }
    if !stmt.distinct_clause.is_empty() {
        return Err(no("SELECT DISTINCT"));
    }
    if stmt.having_clause.is_some() {
        return Err(no("HAVING decides which groups exist"));
    }
    if stmt.group_clause.is_empty() {
        return Err(no("no GROUP BY"));
    }
    if stmt.limit_count.is_some() || stmt.limit_offset.is_some() || !stmt.window_clause.is_empty() {
        return Err(no("LIMIT, OFFSET or a window"));
    }
    Ok(())
}

/// Walks the whole serialized tree (subqueries included): refuses time and volatile
/// functions and schema-qualified columns (the first found, in tree order), and
/// collects every relation name.
fn scan(json: &serde_json::Value) -> Result<BTreeSet<String>, NoDelta> {
    let mut problem = None;
    let mut relnames = BTreeSet::new();
    walk_json(json, &mut |k, v| {
        if problem.is_some() {
            return;
        }
        match k {
            "SQLValueFunction" | "SqlvalueFunction" => {
                problem = Some(
                    "the definition depends on the time or the session (CURRENT_DATE, ...): a delta computed now would not match the rows counted before"
                        .to_string(),
                )
            }
            "FuncCall" => {
                let names = v.get("funcname").map(json_strings).unwrap_or_default();
                let name = names.last().copied().unwrap_or_default();
                if volatile::changes_under_delta(name) {
                    problem = Some(format!(
                        "the definition calls {name}(), whose value changes: a delta computed now would not match the rows counted before"
                    ));
                }
            }
            "relname" => {
                if let Some(s) = v.as_str() {
                    relnames.insert(s.to_string());
                }
            }
            "ColumnRef" => {
                let n = v
                    .get("fields")
                    .and_then(|x| x.as_array())
                    .map(|a| a.len())
                    .unwrap_or(0);
                if n > 2 {
                    problem = Some(
                        "a column qualified by its schema (schema.table.column)".to_string(),
                    );
                }
            }
            _ => {}
        }
    });
    match problem {
        Some(p) => Err(no(p)),
        None => Ok(relnames),
    }
}

/// The relation a FROM-clause RangeVar names, as `schema.name` (through the catalog's
/// search path for an unqualified name).
pub(super) fn resolve(catalog: &Catalog, rv: &pb::RangeVar) -> Option<String> {
    let schema = (!rv.schemaname.is_empty()).then_some(rv.schemaname.as_str());
    catalog
        .lookup(schema, &rv.relname)
        .ok()
        .map(|r| format!("{}.{}", r.schema, r.name))
}

/// The tables of the top-level FROM (through joins, not into subqueries), as
/// `schema.name`, once per occurrence.
pub(super) fn top_level_tables(catalog: &Catalog, stmt: &pb::SelectStmt) -> Vec<String> {
    let mut from = stmt.from_clause.clone();
    let mut rvs = Vec::new();
    range_vars_mut(&mut from, &mut rvs);
    rvs.into_iter()
        .filter_map(|rv| resolve(catalog, rv))
        .collect()
}

/// Top-level FROM RangeVars (through joins, not into subqueries), mutably.
pub(super) fn range_vars_mut<'a>(items: &'a mut [pb::Node], out: &mut Vec<&'a mut pb::RangeVar>) {
    for item in items {
        range_var_mut(item, out);
    }
}

fn range_var_mut<'a>(item: &'a mut pb::Node, out: &mut Vec<&'a mut pb::RangeVar>) {
    match item.node.as_mut() {
        Some(NodeEnum::RangeVar(rv)) => out.push(rv),
        Some(NodeEnum::JoinExpr(j)) => {
            if let Some(l) = j.larg.as_deref_mut() {
                range_var_mut(l, out);
            }
            if let Some(r) = j.rarg.as_deref_mut() {
                range_var_mut(r, out);
            }
        }
        _ => {}
    }
}
