//! PostgreSQL's own parser (libpg_query, through the `pg_query` crate) turned into a
//! small model of one SELECT: FROM items with aliases, joins with their kind and
//! condition, WHERE, GROUP BY, HAVING, the target list with output names, aggregates
//! (name, `*`, DISTINCT, FILTER), window calls, CTEs and subqueries. Nothing here
//! knows about tables or keys; `lineage` resolves names.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::Refused;

/// One SELECT (no set operation).
#[derive(Debug, Clone)]
pub struct Select {
    pub ctes: Vec<Cte>,
    pub recursive: bool,
    pub from: Vec<FromItem>,
    pub where_clause: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub having: Option<Expr>,
    pub targets: Vec<Target>,
    /// `SELECT DISTINCT` (or `DISTINCT ON`).
    pub distinct: bool,
}

#[derive(Debug, Clone)]
pub struct Cte {
    pub name: String,
    /// `WITH name (a, b) AS ...`: renamed output columns, empty if none.
    pub columns: Vec<String>,
    pub query: Select,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// The output column's name, as PostgreSQL names it.
    pub name: String,
    pub expr: Expr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

#[derive(Debug, Clone)]
pub enum FromItem {
    Relation {
        schema: Option<String>,
        name: String,
        alias: Option<String>,
    },
    Subquery {
        query: Box<Select>,
        alias: String,
        columns: Vec<String>,
    },
    Join(Join),
}

/// `left <kind> JOIN right ON on` (or `USING (using)`).
#[derive(Debug, Clone)]
pub struct Join {
    pub kind: JoinKind,
    pub left: Box<FromItem>,
    pub right: Box<FromItem>,
    pub on: Option<Expr>,
    pub using: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Expr {
    /// `a.b` or `b` (qualifier holds everything before the column name).
    Column {
        qualifier: Vec<String>,
        name: String,
    },
    Const(String),
    Func(Box<FuncCall>),
    /// An operator (`=`, `+`, `BETWEEN`, `IN`, ...) and its operands.
    Op {
        op: String,
        args: Vec<Expr>,
    },
    And(Vec<Expr>),
    Cast(Box<Expr>, String),
    /// A subquery used as an expression (EXISTS, IN, scalar).
    SubLink(Box<Select>),
    /// Any other construct: its kind and the expressions it contains.
    Other {
        kind: String,
        args: Vec<Expr>,
    },
}

#[derive(Debug, Clone)]
pub struct FuncCall {
    pub name: String,
    pub args: Vec<Expr>,
    pub star: bool,
    pub distinct: bool,
    pub filter: Option<Expr>,
    pub ordered: bool,
    pub window: bool,
}

fn refuse(reason: impl Into<String>) -> Refused {
    Refused {
        reason: reason.into(),
    }
}

/// Parses a view definition (as `pg_get_viewdef` prints it: a SELECT, maybe with a
/// trailing `;`).
pub fn parse_view(sql: &str) -> Result<Select, Refused> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| refuse(format!("the definition does not parse: {e}")))?;
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(refuse(format!(
            "the definition holds {} statements, not one SELECT",
            stmts.len()
        )));
    }
    if let Some(f) = serde_json::to_value(&parsed.protobuf)
        .ok()
        .and_then(|v| role_dependent(&v))
    {
        return Err(refuse(format!(
            "the definition calls {f}, whose value is the role computing it: REFRESH computes the view as its owner, refreshd as the role it connects as, so the rows could differ"
        )));
    }
    if let Some(f) = serde_json::to_value(&parsed.protobuf)
        .ok()
        .and_then(|v| time_filtered(&v))
    {
        return Err(refuse(format!(
            "the definition calls {f} beyond a column of its own (in a filter, a join, a grouping or an aggregate): its rows change with the clock, with no write for a capture to see; keep it a materialized view refreshed on a schedule"
        )));
    }
    match stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::SelectStmt(s)) => select(s),
        _ => Err(refuse("the definition is not a SELECT")),
    }
}

/// The first call of the clock (`now()`, `CURRENT_DATE`...) that decides which rows the
/// view holds or what they count, if any: anywhere but in a column of the top SELECT
/// that aggregates nothing and holds no subquery (`now() AS last_refreshed`, `due <
/// now() AS overdue`: a value of the row, as of when it was computed; a key computed
/// so is refused by the derivation, with its own reason).
fn time_filtered(v: &serde_json::Value) -> Option<String> {
    let top = v.pointer("/stmts/0/stmt/node/SelectStmt")?;
    let obj = top.as_object()?;
    obj.iter().find_map(|(k, x)| {
        if k != "target_list" && k != "targetList" {
            return clock_call(x);
        }
        x.as_array()?.iter().find_map(|t| {
            let found = clock_call(t)?;
            let plain = !contains_key(t, "SubLink")
                && !contains_call_with(t, |f| {
                    let set = |k: &str| {
                        f.get(k)
                            .is_some_and(|x| !x.is_null() && x.as_bool() != Some(false))
                    };
                    set("agg_star") || set("agg_filter") || set("over") || set("agg_distinct")
                });
            (!plain).then_some(found)
        })
    })
}

/// A call of the clock in the tree (its name as written), if any.
fn clock_call(v: &serde_json::Value) -> Option<String> {
    first_call(
        v,
        |op| {
            use pb::SqlValueFunctionOp as Op;
            matches!(
                op,
                Op::SvfopCurrentDate
                    | Op::SvfopCurrentTime
                    | Op::SvfopCurrentTimeN
                    | Op::SvfopCurrentTimestamp
                    | Op::SvfopCurrentTimestampN
                    | Op::SvfopLocaltime
                    | Op::SvfopLocaltimeN
                    | Op::SvfopLocaltimestamp
                    | Op::SvfopLocaltimestampN
            )
        },
        super::volatile::reads_the_clock,
    )
}

/// The first call in the tree that is a SQL value function `svf` accepts (`CURRENT_USER`
/// ...) or a function whose name `func` accepts, as written (`f()`).
fn first_call(
    v: &serde_json::Value,
    svf: fn(&pb::SqlValueFunctionOp) -> bool,
    func: fn(&str) -> bool,
) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            let found = match k.as_str() {
                "SQLValueFunction" | "SqlvalueFunction" => x
                    .get("op")
                    .and_then(|op| op.as_i64())
                    .and_then(|op| pb::SqlValueFunctionOp::try_from(op as i32).ok())
                    .filter(svf)
                    .map(|op| op.as_str_name().trim_start_matches("SVFOP_").to_string()),
                "FuncCall" => {
                    let name = func_name(x);
                    func(&name).then(|| format!("{name}()"))
                }
                _ => None,
            };
            found.or_else(|| first_call(x, svf, func))
        }),
        serde_json::Value::Array(a) => a.iter().find_map(|x| first_call(x, svf, func)),
        _ => None,
    }
}

/// A FuncCall's name (its last part), lower case.
fn func_name(x: &serde_json::Value) -> String {
    x.get("funcname")
        .and_then(|n| n.as_array())
        .and_then(|a| a.last())
        .and_then(|n| n.pointer("/node/String/sval").or(n.pointer("/String/sval")))
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// True when a node of kind `key` is in the tree.
fn contains_key(v: &serde_json::Value, key: &str) -> bool {
    match v {
        serde_json::Value::Object(m) => m.iter().any(|(k, x)| k == key || contains_key(x, key)),
        serde_json::Value::Array(a) => a.iter().any(|x| contains_key(x, key)),
        _ => false,
    }
}

/// True when a FuncCall in the tree satisfies `pred`, or is a known aggregate.
fn contains_call_with(v: &serde_json::Value, pred: fn(&serde_json::Value) -> bool) -> bool {
    match v {
        serde_json::Value::Object(m) => m.iter().any(|(k, x)| {
            (k == "FuncCall" && (pred(x) || super::volatile::aggregate(&func_name(x))))
                || contains_call_with(x, pred)
        }),
        serde_json::Value::Array(a) => a.iter().any(|x| contains_call_with(x, pred)),
        _ => false,
    }
}

/// The first call in the tree whose value depends on the role that evaluates it
/// (`CURRENT_USER` and its kin, the privilege inquiry functions), if any.
fn role_dependent(v: &serde_json::Value) -> Option<String> {
    first_call(
        v,
        |op| {
            use pb::SqlValueFunctionOp as Op;
            matches!(
                op,
                Op::SvfopCurrentUser | Op::SvfopCurrentRole | Op::SvfopUser | Op::SvfopSessionUser
            )
        },
        super::volatile::role_dependent,
    )
}

fn node(n: &pb::Node) -> Option<&NodeEnum> {
    n.node.as_ref()
}

fn string_of(n: &pb::Node) -> Option<String> {
    match node(n) {
        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

fn names(list: &[pb::Node]) -> Vec<String> {
    list.iter().filter_map(string_of).collect()
}

fn select(s: &pb::SelectStmt) -> Result<Select, Refused> {
    check_supported(s)?;
    let (ctes, recursive) = match &s.with_clause {
        Some(w) => with_clause(w)?,
        None => (Vec::new(), false),
    };
    let from = s
        .from_clause
        .iter()
        .map(from_item)
        .collect::<Result<Vec<_>, _>>()?;
    let where_clause = s.where_clause.as_deref().map(expr).transpose()?;
    let group_by = s
        .group_clause
        .iter()
        .map(|g| match node(g) {
            Some(NodeEnum::GroupingSet(_)) => Err(refuse("GROUPING SETS, ROLLUP or CUBE")),
            _ => expr(g),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let having = s.having_clause.as_deref().map(expr).transpose()?;
    let targets = targets(&s.target_list)?;
    Ok(Select {
        ctes,
        recursive,
        from,
        where_clause,
        group_by,
        having,
        targets,
        distinct: !s.distinct_clause.is_empty(),
    })
}

/// Refuses the SELECT forms the model has no place for.
fn check_supported(s: &pb::SelectStmt) -> Result<(), Refused> {
    if s.op != pb::SetOperation::SetopNone as i32 {
        return Err(refuse("a set operation (UNION, INTERSECT or EXCEPT)"));
    }
    if !s.values_lists.is_empty() {
        return Err(refuse("a VALUES list"));
    }
    if s.limit_count.is_some() || s.limit_offset.is_some() {
        return Err(refuse("LIMIT or OFFSET"));
    }
    if !s.window_clause.is_empty() {
        return Err(refuse("a window function (WINDOW clause)"));
    }
    Ok(())
}

/// The CTEs of a WITH clause (not recursive), and whether it is recursive.
fn with_clause(w: &pb::WithClause) -> Result<(Vec<Cte>, bool), Refused> {
    if w.recursive {
        return Err(refuse("a recursive CTE"));
    }
    let mut ctes = Vec::new();
    for c in &w.ctes {
        let Some(NodeEnum::CommonTableExpr(c)) = node(c) else {
            continue;
        };
        let query = match c.ctequery.as_deref().and_then(node) {
            Some(NodeEnum::SelectStmt(q)) => select(q)?,
            _ => return Err(refuse(format!("CTE {} is not a SELECT", c.ctename))),
        };
        ctes.push(Cte {
            name: c.ctename.clone(),
            columns: names(&c.aliascolnames),
            query,
        });
    }
    Ok((ctes, w.recursive))
}

/// The target list with output names (`SELECT *` refused: a view's definition never
/// holds one).
fn targets(list: &[pb::Node]) -> Result<Vec<Target>, Refused> {
    let mut targets = Vec::new();
    for t in list {
        let Some(NodeEnum::ResTarget(rt)) = node(t) else {
            continue;
        };
        let val = rt.val.as_deref().ok_or_else(|| refuse("an empty target"))?;
        let e = expr(val)?;
        if let Expr::Column { name, .. } = &e {
            if name == "*" {
                return Err(refuse(
                    "SELECT * (PostgreSQL expands it in a view's definition)",
                ));
            }
        }
        let name = if rt.name.is_empty() {
            figure_name(&e)
        } else {
            rt.name.clone()
        };
        targets.push(Target { name, expr: e });
    }
    Ok(targets)
}

/// PostgreSQL's name for an unnamed target (FigureColname, the common cases).
fn figure_name(e: &Expr) -> String {
    match e {
        Expr::Column { name, .. } => name.clone(),
        Expr::Cast(inner, _) => figure_name(inner),
        Expr::Func(f) => f.name.clone(),
        _ => "?column?".to_string(),
    }
}

fn alias_name(a: &Option<pb::Alias>) -> Option<String> {
    a.as_ref().map(|a| a.aliasname.clone())
}

fn from_item(n: &pb::Node) -> Result<FromItem, Refused> {
    match node(n) {
        Some(NodeEnum::RangeVar(r)) => Ok(FromItem::Relation {
            schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
            name: r.relname.clone(),
            alias: alias_name(&r.alias),
        }),
        Some(NodeEnum::RangeSubselect(r)) => {
            if r.lateral {
                return Err(refuse("a LATERAL subquery"));
            }
            let query = match r.subquery.as_deref().and_then(node) {
                Some(NodeEnum::SelectStmt(q)) => select(q)?,
                _ => return Err(refuse("a subquery in FROM that is not a SELECT")),
            };
            Ok(FromItem::Subquery {
                query: Box::new(query),
                alias: alias_name(&r.alias).unwrap_or_default(),
                columns: r
                    .alias
                    .as_ref()
                    .map(|a| names(&a.colnames))
                    .unwrap_or_default(),
            })
        }
        Some(NodeEnum::JoinExpr(j)) => {
            if j.is_natural {
                return Err(refuse("a NATURAL join"));
            }
            if j.alias.is_some() {
                return Err(refuse("an aliased join"));
            }
            let kind = match pb::JoinType::try_from(j.jointype) {
                Ok(pb::JoinType::JoinInner) => JoinKind::Inner,
                Ok(pb::JoinType::JoinLeft) => JoinKind::Left,
                Ok(pb::JoinType::JoinRight) => JoinKind::Right,
                Ok(pb::JoinType::JoinFull) => JoinKind::Full,
                _ => return Err(refuse("an unsupported join kind")),
            };
            let side = |s: &Option<Box<pb::Node>>| {
                s.as_deref()
                    .ok_or_else(|| refuse("a join without a side"))
                    .and_then(from_item)
            };
            Ok(FromItem::Join(Join {
                kind,
                left: Box::new(side(&j.larg)?),
                right: Box::new(side(&j.rarg)?),
                on: j.quals.as_deref().map(expr).transpose()?,
                using: names(&j.using_clause),
            }))
        }
        Some(NodeEnum::RangeFunction(_)) => Err(refuse("a function in FROM")),
        _ => Err(refuse("an unsupported FROM item")),
    }
}

fn exprs(list: &[pb::Node]) -> Result<Vec<Expr>, Refused> {
    list.iter().map(expr).collect()
}

fn opt(e: &Option<Box<pb::Node>>) -> Result<Vec<Expr>, Refused> {
    Ok(match e.as_deref() {
        Some(n) => vec![expr(n)?],
        None => Vec::new(),
    })
}

fn expr(n: &pb::Node) -> Result<Expr, Refused> {
    let Some(n) = node(n) else {
        return Ok(opaque("an empty expression", Vec::new()));
    };
    Ok(match n {
        NodeEnum::ColumnRef(c) => column_ref(c),
        NodeEnum::AConst(c) => Expr::Const(constant(c)),
        NodeEnum::TypeCast(t) => type_cast(t)?,
        NodeEnum::FuncCall(f) => func_call(f)?,
        NodeEnum::AExpr(a) => a_expr(a)?,
        NodeEnum::BoolExpr(b) => {
            let args = exprs(&b.args)?;
            match pb::BoolExprType::try_from(b.boolop) {
                Ok(pb::BoolExprType::AndExpr) => Expr::And(args),
                Ok(pb::BoolExprType::OrExpr) => opaque("OR", args),
                _ => opaque("NOT", args),
            }
        }
        NodeEnum::NullTest(t) => opaque("IS NULL", opt(&t.arg)?),
        NodeEnum::BooleanTest(t) => opaque("IS TRUE", opt(&t.arg)?),
        NodeEnum::CoalesceExpr(c) => plain_call("coalesce".into(), exprs(&c.args)?),
        NodeEnum::MinMaxExpr(m) => opaque("GREATEST/LEAST", exprs(&m.args)?),
        NodeEnum::CaseExpr(c) => case_expr(c)?,
        NodeEnum::SqlvalueFunction(v) => plain_call(sql_value_function(v), Vec::new()),
        NodeEnum::SubLink(s) => match s.subselect.as_deref().and_then(node) {
            Some(NodeEnum::SelectStmt(q)) => Expr::SubLink(Box::new(select(q)?)),
            _ => return Err(refuse("a subquery expression that is not a SELECT")),
        },
        NodeEnum::List(l) => opaque("list", exprs(&l.items)?),
        NodeEnum::RowExpr(r) => opaque("ROW", exprs(&r.args)?),
        NodeEnum::AArrayExpr(a) => opaque("ARRAY", exprs(&a.elements)?),
        NodeEnum::CollateClause(c) => opaque("COLLATE", opt(&c.arg)?),
        NodeEnum::AIndirection(i) => opaque("a subscript or field selection", opt(&i.arg)?),
        NodeEnum::ParamRef(_) => return Err(refuse("a parameter")),
        other => unmodelled(other)?,
    })
}

/// A construct kept only as its kind and the expressions it contains.
fn opaque(kind: &str, args: Vec<Expr>) -> Expr {
    Expr::Other {
        kind: kind.into(),
        args,
    }
}

/// A plain function call (no aggregate or window decoration).
fn plain_call(name: String, args: Vec<Expr>) -> Expr {
    Expr::Func(Box::new(FuncCall {
        name,
        args,
        star: false,
        distinct: false,
        filter: None,
        ordered: false,
        window: false,
    }))
}

/// `a.b` or `b`; `*` for a star.
fn column_ref(c: &pb::ColumnRef) -> Expr {
    let mut parts: Vec<String> = c
        .fields
        .iter()
        .map(|f| match node(f) {
            Some(NodeEnum::AStar(_)) => "*".to_string(),
            _ => string_of(f).unwrap_or_default(),
        })
        .collect();
    let name = parts.pop().unwrap_or_default();
    Expr::Column {
        qualifier: parts,
        name,
    }
}

/// A constant's SQL text.
fn constant(c: &pb::AConst) -> String {
    match &c.val {
        None => "NULL".to_string(),
        Some(pb::a_const::Val::Ival(i)) => i.ival.to_string(),
        Some(pb::a_const::Val::Fval(f)) => f.fval.clone(),
        Some(pb::a_const::Val::Boolval(b)) => b.boolval.to_string(),
        Some(pb::a_const::Val::Sval(s)) => format!("'{}'", s.sval.replace('\'', "''")),
        Some(pb::a_const::Val::Bsval(s)) => s.bsval.clone(),
    }
}

/// A cast, with the last part of its type's name.
fn type_cast(t: &pb::TypeCast) -> Result<Expr, Refused> {
    let inner = t
        .arg
        .as_deref()
        .ok_or_else(|| refuse("a cast of nothing"))?;
    let ty = t
        .type_name
        .as_ref()
        .map(|t| {
            let n = names(&t.names);
            n.last().cloned().unwrap_or_default()
        })
        .unwrap_or_default();
    Ok(Expr::Cast(Box::new(expr(inner)?), ty))
}

/// A function call with its aggregate and window decorations.
fn func_call(f: &pb::FuncCall) -> Result<Expr, Refused> {
    let name = names(&f.funcname).last().cloned().unwrap_or_default();
    Ok(Expr::Func(Box::new(FuncCall {
        name,
        args: exprs(&f.args)?,
        star: f.agg_star,
        distinct: f.agg_distinct,
        filter: f.agg_filter.as_deref().map(expr).transpose()?,
        ordered: !f.agg_order.is_empty() || f.agg_within_group,
        window: f.over.is_some(),
    })))
}

/// An operator (`=`, `+`...) or another A_Expr kind (`IN`, `BETWEEN`...) with its
/// operands, a list on the right flattened.
fn a_expr(a: &pb::AExpr) -> Result<Expr, Refused> {
    let kind = pb::AExprKind::try_from(a.kind).unwrap_or(pb::AExprKind::Undefined);
    let op = match kind {
        pb::AExprKind::AexprOp => names(&a.name).join(" "),
        other => other.as_str_name().trim_start_matches("AEXPR_").to_string(),
    };
    let mut args = opt(&a.lexpr)?;
    match a.rexpr.as_deref().and_then(node) {
        Some(NodeEnum::List(l)) => args.extend(exprs(&l.items)?),
        Some(_) => args.extend(opt(&a.rexpr)?),
        None => {}
    }
    Ok(Expr::Op { op, args })
}

/// CASE: its operand, each WHEN's condition and result, and the ELSE.
fn case_expr(c: &pb::CaseExpr) -> Result<Expr, Refused> {
    let mut args = opt(&c.arg)?;
    for w in &c.args {
        if let Some(NodeEnum::CaseWhen(w)) = node(w) {
            args.extend(opt(&w.expr)?);
            args.extend(opt(&w.result)?);
        }
    }
    args.extend(opt(&c.defresult)?);
    Ok(opaque("CASE", args))
}

/// `CURRENT_DATE` and the like as a function name (`current_date`).
fn sql_value_function(v: &pb::SqlValueFunction) -> String {
    pb::SqlValueFunctionOp::try_from(v.op)
        .map(|o| {
            o.as_str_name()
                .trim_start_matches("SVFOP_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "current_timestamp".into())
}

/// A node not modelled: harmless only if it holds no column, function call or
/// subquery (those would hide a table, an aggregate or a window function).
fn unmodelled(other: &NodeEnum) -> Result<Expr, Refused> {
    let hides = serde_json::to_value(other)
        .map(|v| holds_any(&v, &["ColumnRef", "FuncCall", "SubLink", "SelectStmt"]))
        .unwrap_or(true);
    let kind = format!("{other:?}");
    let kind = kind
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("?")
        .to_string();
    if hides {
        return Err(refuse(format!(
            "an expression refreshd does not analyse yet ({kind})"
        )));
    }
    Ok(Expr::Other {
        kind,
        args: Vec::new(),
    })
}

/// The conjuncts of a condition (`a AND b AND c` → `[a, b, c]`).
pub fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::And(args) => args.iter().flat_map(conjuncts).collect(),
        other => vec![other],
    }
}

/// Whether a serialized parse tree holds a node of one of these kinds (the walk covers
/// every field, which pg_query's own walker does not for every node type).
fn holds_any(v: &serde_json::Value, kinds: &[&str]) -> bool {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .any(|(k, x)| kinds.contains(&k.as_str()) || holds_any(x, kinds)),
        serde_json::Value::Array(a) => a.iter().any(|x| holds_any(x, kinds)),
        _ => false,
    }
}
