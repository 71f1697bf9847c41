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
//!   `DELETE … RETURNING` (exactly the rows it read are removed), runs the view's own
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

use std::collections::BTreeSet;
use std::fmt::Write as _;

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::{lineage, parse, Catalog, ColumnClass, Derivation, How};
use crate::pg::ident::{quote_ident, QualifiedName, MAX_IDENTIFIER_BYTES};

/// The schema of refreshd's own change buffers.
pub const BUFFER_SCHEMA: &str = "refreshd";

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
}

fn no(reason: impl Into<String>) -> NoDelta {
    NoDelta {
        reason: reason.into(),
    }
}

/// Functions whose value changes with time or call: a delta computed now would not
/// match the rows already counted under an earlier value.
const VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "nextval",
    "currval",
    "lastval",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "txid_current",
    "pg_backend_pid",
    "age",
    "current_setting",
    "current_user",
    "session_user",
];

/// Output types a sum may have: exact arithmetic, so old + delta equals a recompute
/// (floating point drifts; money and interval are left out for want of tests).
const SUM_TYPES: &[&str] = &["bigint", "numeric"];

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

fn list(names: &[String], prefix: &str) -> String {
    names
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn node(n: &pb::Node) -> Option<&NodeEnum> {
    n.node.as_ref()
}

fn wrap(n: NodeEnum) -> pb::Node {
    pb::Node { node: Some(n) }
}

/// The SQL text of one expression node (deparsed by libpg_query as `SELECT <expr>`).
fn expr_text(e: &pb::Node) -> Result<String, NoDelta> {
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

fn deparse(select: pb::SelectStmt) -> Result<String, NoDelta> {
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

/// Every value of `key` in a serialized parse tree, and whether a node of `kinds` occurs.
fn walk_json<'v>(v: &'v serde_json::Value, f: &mut impl FnMut(&'v str, &'v serde_json::Value)) {
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

/// A delta-capable output column.
#[derive(Debug, Clone)]
struct AggCol {
    func: &'static str,
    /// The argument's SQL (`None` for `count(*)`).
    arg: Option<String>,
    arg_node: Option<pb::Node>,
    filter: Option<String>,
}

#[derive(Debug, Clone)]
enum Out {
    Group(String),
    Agg(Box<AggCol>),
}

/// The pieces the delta query computes, each a named aggregate over the buffer rows.
#[derive(Default)]
struct Pieces {
    list: Vec<(String, String)>,
}

impl Pieces {
    fn add(&mut self, sql: String) -> String {
        if let Some((name, _)) = self.list.iter().find(|(_, s)| *s == sql) {
            return name.clone();
        }
        let name = format!("p{}", self.list.len() + 1);
        self.list.push((name.clone(), sql));
        name
    }
}

/// The relation a FROM-clause RangeVar names, as `schema.name` (through the catalog's
/// search path for an unqualified name).
fn resolve(catalog: &Catalog, rv: &pb::RangeVar) -> Option<String> {
    let schema = (!rv.schemaname.is_empty()).then_some(rv.schemaname.as_str());
    catalog
        .lookup(schema, &rv.relname)
        .ok()
        .map(|r| format!("{}.{}", r.schema, r.name))
}

/// Top-level FROM RangeVars (through joins, not into subqueries), mutably.
fn range_vars_mut<'a>(items: &'a mut [pb::Node], out: &mut Vec<&'a mut pb::RangeVar>) {
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

/// Whether an expression cannot be NULL: arithmetic (+, -, *) and casts over constants
/// and NOT NULL columns of the fact table (`fact_cols`, by plain or fact-qualified name).
fn never_null(e: &pb::Node, fact_alias: &str, fact_cols: &[String], not_null: &[String]) -> bool {
    match node(e) {
        Some(NodeEnum::ColumnRef(c)) => {
            let parts: Vec<String> = c
                .fields
                .iter()
                .filter_map(|f| match node(f) {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect();
            let col = match parts.as_slice() {
                [col] => col,
                [alias, col] if alias == fact_alias => col,
                _ => return false,
            };
            fact_cols.contains(col) && not_null.contains(col)
        }
        Some(NodeEnum::AConst(c)) => c.val.is_some() && !c.isnull,
        Some(NodeEnum::TypeCast(t)) => t
            .arg
            .as_deref()
            .is_some_and(|a| never_null(a, fact_alias, fact_cols, not_null)),
        Some(NodeEnum::AExpr(a)) => {
            let op: Vec<String> = a
                .name
                .iter()
                .filter_map(|f| match node(f) {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect();
            a.kind == pb::AExprKind::AexprOp as i32
                && matches!(op.as_slice(), [o] if o == "+" || o == "-" || o == "*")
                && [&a.lexpr, &a.rexpr].iter().all(|x| {
                    x.as_deref()
                        .is_some_and(|x| never_null(x, fact_alias, fact_cols, not_null))
                })
        }
        _ => false,
    }
}

/// The fact column an expression is, when it is one plain column.
fn plain_fact_column(e: &pb::Node, fact_alias: &str, fact_cols: &[String]) -> Option<String> {
    let Some(NodeEnum::ColumnRef(c)) = node(e) else {
        return None;
    };
    let parts: Vec<String> = c
        .fields
        .iter()
        .filter_map(|f| match node(f) {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    let col = match parts.as_slice() {
        [col] => col,
        [alias, col] if alias == fact_alias => col,
        _ => return None,
    };
    fact_cols.contains(col).then(|| col.clone())
}

/// The decimal scale every value of a type has: 0 for integers, s for numeric(p,s).
fn fixed_scale(ty: &str) -> Option<u32> {
    match ty {
        "smallint" | "integer" | "bigint" => Some(0),
        _ => {
            let inner = ty.strip_prefix("numeric(")?.strip_suffix(')')?;
            match inner.split_once(',') {
                Some((_, s)) => s.trim().parse().ok().filter(|s| *s <= 12),
                None => inner.trim().parse::<u32>().ok().map(|_| 0),
            }
        }
    }
}

/// Derives the delta application of a view, or says why its changes are not applied as
/// deltas. `d` is [`super::derive`]'s result for the same definition and catalog.
pub fn delta_plan(d: &Derivation, f: &DeltaFacts<'_>) -> Result<DeltaPlan, NoDelta> {
    // 1. Every output column is a key, a grouping value or a delta aggregate.
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

    // 2. The definition's own shape, with PostgreSQL's parser.
    let parsed = pg_query::parse(f.definition, pg_query::ParserOptions::DEFAULT)
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
    let mut problem = None;
    let mut relnames = BTreeSet::new();
    walk_json(&json, &mut |k, v| {
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
                let mut names = Vec::new();
                if let Some(n) = v.get("funcname") {
                    walk_json(n, &mut |k, x| {
                        if let (true, Some(s)) = (k == "sval", x.as_str()) {
                            names.push(s);
                        }
                    });
                }
                let name = names.last().copied().unwrap_or_default();
                if VOLATILE.contains(&name) {
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
    if let Some(p) = problem {
        return Err(no(p));
    }

    // 3. Instances, to find the fact table.
    let select = parse::parse_view(f.definition).map_err(|e| no(e.reason))?;
    let (lin, _) = lineage::resolve(&select, f.catalog).map_err(|e| no(e.reason))?;
    let mut top: Vec<String> = Vec::new();
    {
        let mut from = stmt.from_clause.clone();
        let mut rvs = Vec::new();
        range_vars_mut(&mut from, &mut rvs);
        for rv in rvs {
            if let Some(t) = resolve(f.catalog, rv) {
                top.push(t);
            }
        }
    }
    let eligible = |t: &str| -> Result<&DeltaTable, String> {
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
        if top.iter().filter(|x| *x == t).count() != 1 {
            return Err(
                "it is read through a view or a subquery, not in the top-level FROM".into(),
            );
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
    };
    let fact = match f.fact {
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
    let fact_inst = lin
        .instances
        .iter()
        .find(|i| i.table == fact.table)
        .expect("eligible");
    let fact_alias = fact_inst.alias.clone();
    let reads = d
        .table(&fact.table)
        .map(|t| t.reads.clone())
        .unwrap_or_default();
    let columns: Vec<(String, String)> = fact
        .columns
        .iter()
        .filter(|(c, _)| reads.contains(c))
        .cloned()
        .collect();
    if columns.is_empty() {
        return Err(no(format!("the view reads no column of {}", fact.name)));
    }
    let col_names: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();

    // Names that cannot collide: the sign column with any column the query could see,
    // the buffer's CTE name with any relation name the definition uses.
    let taken: BTreeSet<&str> = f
        .catalog
        .relations
        .iter()
        .flat_map(|r| r.columns.iter().map(String::as_str))
        .chain(
            f.tables
                .iter()
                .flat_map(|t| t.columns.iter().map(|(c, _)| c.as_str())),
        )
        .collect();
    let unique = |base: &str, taken: &dyn Fn(&str) -> bool| {
        let mut name = base.to_string();
        let mut n = 1;
        while taken(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        name
    };
    let sign = unique("refreshd_sign", &|s| taken.contains(s));
    let rows_cte = unique("refreshd_delta_rows", &|s| relnames.contains(s));

    // 4. Output columns.
    let targets: Vec<&pb::ResTarget> = stmt
        .target_list
        .iter()
        .filter_map(|t| match node(t) {
            Some(NodeEnum::ResTarget(rt)) => Some(&**rt),
            _ => None,
        })
        .collect();
    if targets.len() != f.columns.len() {
        return Err(no("the target list does not match the view's columns"));
    }
    let mut outs = Vec::new();
    for (i, ((name, ty), t)) in f.columns.iter().zip(&targets).enumerate() {
        let val = t
            .val
            .as_deref()
            .ok_or_else(|| no(format!("column {name} has no expression")))?;
        match &d.columns[i].class {
            ColumnClass::Key | ColumnClass::Group => outs.push(Out::Group(expr_text(val)?)),
            _ => {
                let Some(NodeEnum::FuncCall(fc)) = node(val) else {
                    return Err(no(format!(
                        "column {name} is an expression over aggregates (deltas apply to plain count, sum and avg columns: the live table keeps no hidden parts)"
                    )));
                };
                let fname: Vec<String> = fc
                    .funcname
                    .iter()
                    .filter_map(|n| match node(n) {
                        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                        _ => None,
                    })
                    .collect();
                let func = match fname.as_slice() {
                    [n] | [_, n] if fname.len() == 1 || fname[0] == "pg_catalog" => {
                        match n.as_str() {
                            "count" => "count",
                            "sum" => "sum",
                            "avg" => "avg",
                            other => {
                                return Err(no(format!("column {name}: {other} has no delta rule")))
                            }
                        }
                    }
                    _ => return Err(no(format!("column {name}: a user-defined aggregate"))),
                };
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
                    "sum" => SUM_TYPES.contains(&ty.as_str()),
                    _ => ty == "numeric",
                };
                if !ty_ok {
                    return Err(no(format!(
                        "column {name}: {func} of type {ty} (deltas keep exact sums only: bigint or numeric; floating point would drift from a recompute)"
                    )));
                }
                outs.push(Out::Agg(Box::new(AggCol {
                    func,
                    arg,
                    arg_node,
                    filter,
                })));
            }
        }
    }

    // Companions: per sum/avg, the count of its non-NULL inputs; per avg, its sum.
    let not_null = &fact.not_null;
    let count_source = |a: &AggCol| -> Option<usize> {
        outs.iter().position(|o| match o {
            Out::Agg(c) if c.func == "count" && c.filter == a.filter => {
                c.arg == a.arg
                    || (c.arg.is_none()
                        && a.arg_node
                            .as_ref()
                            .is_some_and(|x| never_null(x, &fact_alias, &col_names, not_null)))
            }
            _ => false,
        })
    };
    let rows_col = outs.iter().position(
        |o| matches!(o, Out::Agg(c) if c.func == "count" && c.arg.is_none() && c.filter.is_none()),
    );

    // 5. The delta query: the definition over the consumed rows, grouped like the view.
    let s = format!("{}.{}", quote_ident(&fact_alias), quote_ident(&sign));
    let when = |positive: bool, filter: &Option<String>| {
        let cmp = if positive { "> 0" } else { "< 0" };
        match filter {
            Some(fl) => format!("FILTER (WHERE {s} {cmp} AND ({fl}))"),
            None => format!("FILTER (WHERE {s} {cmp})"),
        }
    };
    let mut pieces = Pieces::default();
    let n_rem = pieces.add(format!("count(*) {}", when(false, &None)));
    let mut d_targets = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        if let Out::Group(e) = o {
            d_targets.push(format!("{e} AS \"c{i}\""));
        }
    }
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

    // Per column: the new value (over `d` and the live row `l`), and the conditions
    // under which it is known.
    let old = |i: usize| format!("l.{}", quote_ident(&f.columns[i].0));
    let mut sure: Vec<String> = key_idx
        .iter()
        .map(|k| format!("d.\"c{k}\" IS NOT NULL"))
        .collect();
    let mut new_value: Vec<String> = vec![String::new(); outs.len()];
    let mut notes = Vec::new();
    // Counts first: sums and averages refer to their new values.
    for (i, o) in outs.iter().enumerate() {
        let name = &f.columns[i].0;
        match o {
            Out::Group(_) => {
                new_value[i] = format!("d.\"c{i}\"");
                notes.push(format!(
                    "{name}: {} (from the delta's group)",
                    if key_idx.contains(&i) {
                        "key"
                    } else {
                        "grouping value"
                    }
                ));
            }
            Out::Agg(a) if a.func == "count" => {
                let arg = a.arg.clone().unwrap_or_else(|| "*".into());
                let add = pieces.add(format!("count({arg}) {}", when(true, &a.filter)));
                let rem = pieces.add(format!("count({arg}) {}", when(false, &a.filter)));
                new_value[i] = format!("(COALESCE({}, 0) + (d.{add} - d.{rem}))", old(i));
                sure.push(format!("{} >= 0", new_value[i]));
                notes.push(format!("{name}: count, old + added - removed"));
            }
            Out::Agg(_) => {}
        }
    }
    let mut sum_value: Vec<Option<String>> = vec![None; outs.len()];
    for (i, o) in outs.iter().enumerate() {
        let name = &f.columns[i].0;
        let Out::Agg(a) = o else { continue };
        if a.func != "sum" {
            continue;
        }
        let arg = a.arg.clone().expect("sum has an argument");
        let plus = pieces.add(format!("sum({arg}) {}", when(true, &a.filter)));
        let minus = pieces.add(format!("sum({arg}) {}", when(false, &a.filter)));
        let v = match count_source(a) {
            Some(j) => {
                notes.push(format!(
                    "{name}: sum, old + added - removed, NULL when {} reaches 0",
                    f.columns[j].0
                ));
                format!(
                    "(CASE WHEN {} = 0 THEN NULL ELSE COALESCE({o}, 0) + COALESCE(d.{plus}, 0) - COALESCE(d.{minus}, 0) END)",
                    new_value[j],
                    o = old(i)
                )
            }
            None => {
                // Without a count of its non-NULL inputs, a removal could leave no
                // input: such groups are rechecked.
                let rem_nn = pieces.add(format!("count({arg}) {}", when(false, &a.filter)));
                sure.push(format!("d.{rem_nn} = 0"));
                notes.push(format!(
                    "{name}: sum, old + added; a group losing a non-NULL input is recomputed (no count of its inputs among the columns)"
                ));
                format!(
                    "(CASE WHEN d.{plus} IS NULL THEN {o} ELSE COALESCE({o}, 0) + d.{plus} END)",
                    o = old(i)
                )
            }
        };
        new_value[i] = v.clone();
        sum_value[i] = Some(v);
    }
    for (i, o) in outs.iter().enumerate() {
        let name = &f.columns[i].0;
        let Out::Agg(a) = o else { continue };
        if a.func != "avg" {
            continue;
        }
        let sum_col = outs.iter().position(
            |o| matches!(o, Out::Agg(c) if c.func == "sum" && c.arg == a.arg && c.filter == a.filter),
        );
        let Some(cc) = count_source(a) else {
            return Err(no(format!(
                "column {name}: avg needs the sum and the count of the same inputs (same FILTER) among the view's columns, and the live table keeps no hidden ones"
            )));
        };
        let sum = match sum_col {
            Some(sc) => {
                notes.push(format!(
                    "{name}: avg, {} / {}",
                    f.columns[sc].0, f.columns[cc].0
                ));
                sum_value[sc].clone().expect("sums computed above")
            }
            None => {
                // No sum column: for a plain fact column of a fixed scale, the old sum
                // is the old average times the old count, rounded to that scale. An
                // average carries at least 13 significant digits, so this is exact
                // while the sum stays below 10^(12 - scale); larger groups are
                // rechecked.
                let scale = a
                    .arg_node
                    .as_ref()
                    .and_then(|x| plain_fact_column(x, &fact_alias, &col_names))
                    .and_then(|c| fact.columns.iter().find(|(n, _)| *n == c))
                    .and_then(|(_, ty)| fixed_scale(ty));
                let Some(scale) = scale else {
                    return Err(no(format!(
                        "column {name}: avg without its sum among the view's columns needs a plain column of the fact table with a fixed scale (integer or numeric(p,s)) as its argument"
                    )));
                };
                let arg = a.arg.clone().expect("avg has an argument");
                let plus = pieces.add(format!("sum({arg}) {}", when(true, &a.filter)));
                let minus = pieces.add(format!("sum({arg}) {}", when(false, &a.filter)));
                let old_sum = format!(
                    "round(COALESCE({o}, 0) * COALESCE({oc}, 0), {scale})",
                    o = old(i),
                    oc = old(cc)
                );
                sure.push(format!("abs({old_sum}) < 1e{}", 12 - i64::from(scale)));
                notes.push(format!(
                    "{name}: avg, (old avg × old {c} + added - removed) / {c}",
                    c = f.columns[cc].0
                ));
                format!("({old_sum} + COALESCE(d.{plus}, 0) - COALESCE(d.{minus}, 0))")
            }
        };
        new_value[i] = format!(
            "(CASE WHEN {c} = 0 THEN NULL ELSE ({sum})::numeric / ({c})::numeric END)",
            c = new_value[cc]
        );
    }
    let gone = match rows_col {
        Some(j) => format!("({} = 0)", new_value[j]),
        None => {
            sure.push(format!("d.{n_rem} = 0"));
            notes.push(
                "groups losing rows are recomputed (no count(*) column tells that a group vanished)"
                    .into(),
            );
            "false".to_string()
        }
    };
    for (name, sql) in &pieces.list {
        d_targets.push(format!("{sql} AS {name}"));
    }

    // The delta SELECT: the definition's FROM (fact table → consumed rows), WHERE and
    // GROUP BY (positions resolved), with the targets above.
    let mut ds = stmt.clone();
    {
        let mut rvs = Vec::new();
        range_vars_mut(&mut ds.from_clause, &mut rvs);
        let mut replaced = 0;
        for rv in rvs {
            if resolve(f.catalog, rv).as_deref() == Some(fact.table.as_str()) {
                if !rv.inh {
                    return Err(no(format!(
                        "FROM ONLY {}: its partitions' changes are not part of the view",
                        fact.name
                    )));
                }
                if rv.alias.as_ref().is_some_and(|a| !a.colnames.is_empty()) {
                    return Err(no(format!("{} has column aliases", fact.name)));
                }
                *rv = pb::RangeVar {
                    relname: rows_cte.clone(),
                    inh: true,
                    relpersistence: "p".into(),
                    alias: Some(pb::Alias {
                        aliasname: fact_alias.clone(),
                        colnames: Vec::new(),
                    }),
                    location: -1,
                    ..Default::default()
                };
                replaced += 1;
            }
        }
        if replaced != 1 {
            return Err(no("the fact table is not once in the top-level FROM"));
        }
    }
    let mut group = Vec::new();
    for g in &ds.group_clause {
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
    // A grouping value PostgreSQL accepts through a primary key (GROUP BY t.id, SELECT
    // t.name) is no longer accepted when t is the consumed rows: refuse it up front
    // rather than fail at every refresh.
    let grouped: Vec<String> = group.iter().map(expr_text).collect::<Result<_, _>>()?;
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
        let v = serde_json::to_value(val).unwrap_or_default();
        let mut refs: Vec<Vec<String>> = Vec::new();
        walk_json(&v, &mut |k, x| {
            if k == "ColumnRef" {
                let mut parts = Vec::new();
                if let Some(fields) = x.get("fields") {
                    walk_json(fields, &mut |k2, y| {
                        if let (true, Some(s)) = (k2 == "sval", y.as_str()) {
                            parts.push(s.to_string());
                        }
                    });
                }
                refs.push(parts);
            }
        });
        for parts in refs {
            let text = parts
                .iter()
                .map(|p| quote_ident(p))
                .collect::<Vec<_>>()
                .join(".");
            let covered = grouped.iter().any(|g| {
                let bare: Vec<&str> = g.split('.').map(|x| x.trim_matches('"')).collect();
                bare == parts.iter().map(String::as_str).collect::<Vec<_>>() || *g == text
            });
            let of_fact = match parts.as_slice() {
                [c] => col_names.contains(c),
                [q, _] => *q == fact_alias,
                _ => true,
            };
            if !covered && of_fact {
                return Err(no(format!(
                    "column {} is not grouped by itself (PostgreSQL accepts it through {}'s primary key, which the consumed rows do not have)",
                    f.columns[i].0, fact.name
                )));
            }
        }
    }
    ds.group_clause = group;
    ds.sort_clause.clear();
    let target_sql = format!("SELECT {}", d_targets.join(", "));
    let tparsed = pg_query::parse(&target_sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| no(format!("internal: the delta targets do not parse: {e}")))?;
    ds.target_list = match tparsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(node)
    {
        Some(NodeEnum::SelectStmt(t)) => t.target_list.clone(),
        _ => return Err(no("internal: the delta targets are not a SELECT")),
    };
    let delta_select = deparse(ds)?;

    // 6. The statement.
    let buffer = QualifiedName::new(BUFFER_SCHEMA, buffer_name(f.view, "delta"));
    let recheck = QualifiedName::new(BUFFER_SCHEMA, buffer_name(f.view, "recheck"));
    let key_names: Vec<String> = d.key.clone();
    let all_cols: Vec<String> = f.columns.iter().map(|(c, _)| c.clone()).collect();
    let on = key_idx
        .iter()
        .map(|k| format!("l.{} = d.\"c{k}\"", quote_ident(&f.columns[*k].0)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let partition = key_idx
        .iter()
        .map(|k| format!("d.\"c{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let values = new_value
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{v} AS \"v{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ok = "c.\"refreshd_sure\" AND c.\"refreshd_groups\" = 1";
    let set = all_cols
        .iter()
        .filter(|c| !key_names.contains(c))
        .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut apply = String::new();
    let _ = write!(
        apply,
        "WITH {rows} AS (DELETE FROM {buf} RETURNING *),\n\
         \"refreshd_d\" AS ({delta_select}),\n\
         \"refreshd_c\" AS (SELECT {keys_d}, {values}, COALESCE({sure}, false) AS \"refreshd_sure\", COALESCE({gone}, false) AS \"refreshd_gone\", count(*) OVER (PARTITION BY {partition}) AS \"refreshd_groups\" FROM \"refreshd_d\" AS d LEFT JOIN {live} AS l ON {on}),\n\
         \"refreshd_up\" AS (INSERT INTO {live} ({cols}) SELECT {vs} FROM \"refreshd_c\" AS c WHERE {ok} AND NOT c.\"refreshd_gone\" ON CONFLICT ({keys}) DO UPDATE SET {set}),\n\
         \"refreshd_del\" AS (DELETE FROM {live} AS l USING \"refreshd_c\" AS c WHERE {ok} AND c.\"refreshd_gone\" AND {on_c})\n\
         INSERT INTO {rc} ({keys}) SELECT DISTINCT {keys_c} FROM \"refreshd_c\" AS c WHERE NOT ({ok})",
        rows = quote_ident(&rows_cte),
        buf = buffer.quoted(),
        keys_d = key_idx
            .iter()
            .map(|k| format!("d.\"c{k}\""))
            .collect::<Vec<_>>()
            .join(", "),
        sure = sure.join(" AND "),
        live = f.live.quoted(),
        cols = list(&all_cols, ""),
        vs = (0..outs.len())
            .map(|i| format!("c.\"v{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        keys = list(&key_names, ""),
        on_c = key_idx
            .iter()
            .map(|k| format!("l.{} = c.\"c{k}\"", quote_ident(&f.columns[*k].0)))
            .collect::<Vec<_>>()
            .join(" AND "),
        rc = recheck.quoted(),
        keys_c = key_idx
            .iter()
            .map(|k| format!("c.\"c{k}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );

    let col_types = |cols: &[(String, String)]| {
        cols.iter()
            .map(|(c, t)| format!("{} {t}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key_types: Vec<(String, String)> = key_idx.iter().map(|k| f.columns[*k].clone()).collect();
    let install = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(BUFFER_SCHEMA)),
        format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} ({} int2 NOT NULL, {})",
            buffer.quoted(),
            quote_ident(&sign),
            col_types(&columns)
        ),
        format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} ({})",
            recheck.quoted(),
            col_types(&key_types)
        ),
    ];
    let rollback = vec![
        format!("DROP TABLE IF EXISTS {}", buffer.quoted()),
        format!("DROP TABLE IF EXISTS {}", recheck.quoted()),
    ];
    let into = format!(
        "INSERT INTO {} ({}, {})",
        buffer.quoted(),
        quote_ident(&sign),
        list(&col_names, "")
    );
    let capture_insert = format!(
        "{into} SELECT 1, {} FROM new_rows n",
        list(&col_names, "n.")
    );
    let capture_delete = format!(
        "{into} SELECT -1, {} FROM old_rows o",
        list(&col_names, "o.")
    );
    let capture_update = if col_names.iter().any(|c| fact.incomparable.contains(c)) {
        format!(
            "{into} SELECT -1, {} FROM old_rows o UNION ALL SELECT 1, {} FROM new_rows n",
            list(&col_names, "o."),
            list(&col_names, "n.")
        )
    } else {
        // Only the rows whose read columns changed (a multiset difference: deltas are
        // linear, so pairing any equal old and new rows is exact).
        format!(
            "{into} SELECT -1, {m} FROM (SELECT {o} FROM old_rows o EXCEPT ALL SELECT {n} FROM new_rows n) AS m \
             UNION ALL SELECT 1, {p} FROM (SELECT {n} FROM new_rows n EXCEPT ALL SELECT {o} FROM old_rows o) AS p",
            m = list(&col_names, "m."),
            p = list(&col_names, "p."),
            o = list(&col_names, "o."),
            n = list(&col_names, "n."),
        )
    };
    let recheck_keys = format!(
        "DELETE FROM {} RETURNING {}",
        recheck.quoted(),
        list(&key_names, "")
    );
    let discard = vec![
        format!("DELETE FROM {}", buffer.quoted()),
        format!("DELETE FROM {}", recheck.quoted()),
    ];
    Ok(DeltaPlan {
        fact: fact.table.clone(),
        fact_name: fact.name.clone(),
        buffer,
        sign_column: sign,
        columns: col_names,
        recheck,
        install,
        rollback,
        capture_insert,
        capture_delete,
        capture_update,
        apply: vec![apply],
        recheck_keys,
        discard,
        search_path: f.catalog.search_path.clone(),
        notes,
    })
}
