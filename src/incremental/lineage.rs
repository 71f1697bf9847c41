//! Name resolution and key lineage: every base-relation occurrence in the view (through
//! CTEs, subqueries and plain views) becomes an instance; every output column becomes
//! an expression over instance columns; equi-join conditions become equalities between
//! instance columns, whose equivalence classes carry the key from table to table.

use std::collections::HashMap;

use super::parse::{self, conjuncts, Expr, FromItem, Join, JoinKind, Select};
use super::{Catalog, Refused, Relation, RelationKind};

fn refuse(reason: impl Into<String>) -> Refused {
    Refused {
        reason: reason.into(),
    }
}

/// One occurrence of a base table (or materialized view) in the expanded definition.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The catalog's qualified name (`schema.name`).
    pub table: String,
    /// The bare relation name.
    pub relname: String,
    /// Its alias in the query (the relation name if none).
    pub alias: String,
    /// On the nullable side of an outer join (at any depth).
    pub nullable: bool,
    /// Read only inside a subquery expression: its changes cannot be traced.
    pub opaque: bool,
    /// The relation's columns, in catalog order.
    pub columns: Vec<String>,
    /// Their types (`format_type`), in the same order; empty when unknown.
    pub types: Vec<String>,
}

impl Instance {
    /// The type of column `col`, when the catalog gave it.
    pub fn type_of(&self, col: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == col)?;
        self.types.get(i).map(String::as_str)
    }
}

/// A type without its modifier: `numeric(5,2)` → `numeric`, `timestamp(3) with time
/// zone` → `timestamp with time zone`.
pub(super) fn without_typmod(ty: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in ty.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `a = b` between columns of these two types compares the same way in every
/// session and for every value of either type, so that a key can travel across it:
/// one type (modifiers aside), or two of a family whose comparison converts without
/// loss or session state (integers and numeric, the two floats, the string types).
/// Anything else (`timestamp` against `timestamptz` or `date`, which convert through
/// the session's TimeZone; a domain against its base type; arrays of different types)
/// is treated like a non-equi join.
pub fn comparable_types(a: &str, b: &str) -> bool {
    let (a, b) = (without_typmod(a), without_typmod(b));
    if a == b {
        return true;
    }
    const FAMILIES: [&[&str]; 3] = [
        &["smallint", "integer", "bigint", "numeric"],
        &["real", "double precision"],
        &["text", "character varying", "character", "name"],
    ];
    FAMILIES
        .iter()
        .any(|f| f.contains(&a.as_str()) && f.contains(&b.as_str()))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstCol {
    pub inst: usize,
    pub col: String,
}

/// An aggregate call, resolved.
#[derive(Debug, Clone)]
pub struct Agg {
    pub name: String,
    pub star: bool,
    pub distinct: bool,
    pub filter: bool,
    pub ordered: bool,
    pub args: Vec<RExpr>,
    /// Its SELECT reads a grouped subquery or CTE (nested grouping).
    pub over_grouped: bool,
    /// Its SELECT has a HAVING clause.
    pub having: bool,
}

/// An expression over instance columns.
#[derive(Debug, Clone)]
pub enum RExpr {
    Col(InstCol),
    Const(String),
    Agg(Box<Agg>),
    Func {
        name: String,
        args: Vec<RExpr>,
    },
    Op {
        op: String,
        args: Vec<RExpr>,
    },
    Cast(Box<RExpr>, String),
    /// A subquery expression or a construct not analysed further.
    Opaque(String, Vec<RExpr>),
}

impl RExpr {
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a RExpr)) {
        f(self);
        match self {
            RExpr::Col(_) | RExpr::Const(_) => {}
            RExpr::Agg(a) => a.args.iter().for_each(|x| x.walk(f)),
            RExpr::Func { args, .. } | RExpr::Op { args, .. } | RExpr::Opaque(_, args) => {
                args.iter().for_each(|x| x.walk(f))
            }
            RExpr::Cast(x, _) => x.walk(f),
        }
    }

    pub fn columns(&self) -> Vec<InstCol> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let RExpr::Col(c) = e {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        });
        out
    }

    fn strip_casts(&self) -> &RExpr {
        match self {
            RExpr::Cast(x, _) => x.strip_casts(),
            other => other,
        }
    }

    /// SQL-ish text, with each column printed by `col`.
    pub fn text(&self, col: &dyn Fn(&InstCol) -> String) -> String {
        let list = |args: &[RExpr]| {
            args.iter()
                .map(|a| a.text(col))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            RExpr::Col(c) => col(c),
            RExpr::Const(s) => s.clone(),
            RExpr::Agg(a) => format!(
                "{}({}{})",
                a.name,
                if a.distinct { "DISTINCT " } else { "" },
                if a.star {
                    "*".to_string()
                } else {
                    list(&a.args)
                }
            ),
            RExpr::Func { name, args } => format!("{name}({})", list(args)),
            RExpr::Op { op, args } if args.len() == 2 => {
                format!("{} {op} {}", args[0].text(col), args[1].text(col))
            }
            RExpr::Op { op, args } => format!("{op}({})", list(args)),
            RExpr::Cast(x, ty) => format!("{}::{ty}", x.text(col)),
            RExpr::Opaque(kind, _) => kind.clone(),
        }
    }
}

/// A resolved SELECT's output.
#[derive(Debug, Clone)]
pub struct Output {
    pub columns: Vec<(String, RExpr)>,
    /// It groups (GROUP BY, aggregates, HAVING or DISTINCT).
    pub grouped: bool,
}

/// What the whole view resolved to.
#[derive(Debug, Default)]
pub struct Lineage {
    pub instances: Vec<Instance>,
    /// Equalities between instance columns that hold for every row the view is made of.
    pub equalities: Vec<(InstCol, InstCol)>,
    /// Join or WHERE conditions over several instances that are not column equalities.
    /// (the instances, the reason with the condition's text)
    pub non_equi: Vec<(Vec<usize>, String)>,
    /// Every instance column the definition refers to, anywhere (a superset of what
    /// its result depends on).
    pub read: Vec<InstCol>,
}

#[derive(Clone)]
struct Entry {
    alias: String,
    columns: Vec<(String, RExpr)>,
    grouped: bool,
    /// The merged columns of a `JOIN ... USING`: what an unqualified name of one of
    /// them means (the sides' columns stay reachable qualified).
    merged: bool,
}

const SET_RETURNING: &[&str] = &[
    "generate_series",
    "generate_subscripts",
    "unnest",
    "json_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "json_each",
    "json_each_text",
    "jsonb_each",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "jsonb_path_query",
    "regexp_matches",
    "regexp_split_to_table",
    "string_to_table",
];

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "string_agg",
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "range_agg",
    "xmlagg",
];

struct Analyzer<'c> {
    catalog: &'c Catalog,
    lineage: Lineage,
    depth: usize,
    /// Aggregate calls resolved so far (to tell a SELECT's own aggregates from those
    /// of the subqueries it reads).
    aggregates: usize,
    /// The scopes of the queries enclosing the subquery expression being resolved,
    /// innermost last: a correlated subquery (`EXISTS (... WHERE l_orderkey =
    /// o_orderkey)`) names their columns.
    enclosing: Vec<Vec<Entry>>,
}

/// Resolves a parsed view against the catalog.
pub fn resolve(select: &Select, catalog: &Catalog) -> Result<(Lineage, Output), Refused> {
    let mut a = Analyzer {
        catalog,
        lineage: Lineage::default(),
        depth: 0,
        aggregates: 0,
        enclosing: Vec::new(),
    };
    let out = a.select(select, &[], false, false)?;
    Ok((a.lineage, out))
}

type Ctes<'s> = [(&'s str, &'s parse::Cte)];

impl Analyzer<'_> {
    fn select(
        &mut self,
        s: &Select,
        outer_ctes: &Ctes<'_>,
        nullable: bool,
        opaque: bool,
    ) -> Result<Output, Refused> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(refuse("views nested more than 64 deep"));
        }
        if s.recursive {
            return Err(refuse("a recursive CTE"));
        }
        let mut ctes: Vec<(&str, &parse::Cte)> = outer_ctes.to_vec();
        // A CTE sees the ones before it; resolve each at every reference.
        for c in &s.ctes {
            ctes.push((c.name.as_str(), c));
        }
        let mut scope: Vec<Entry> = Vec::new();
        for item in &s.from {
            self.range_item(item, &ctes, nullable, opaque, &mut scope)?;
        }
        if let Some(w) = &s.where_clause {
            for c in conjuncts(w) {
                let r = self.expr(c, &scope, &ctes, false, false)?;
                // Inside a subquery expression (opaque) a condition holds for no row of
                // the view (think NOT EXISTS): it joins nothing, even when it names the
                // outer query's columns.
                if !opaque {
                    self.condition(&r, None);
                }
            }
        }
        let grouped_from = scope.iter().any(|e| e.grouped);
        let mut columns = Vec::new();
        let aggregates_before = self.aggregates;
        for t in &s.targets {
            if let Expr::Func(f) = &t.expr {
                if SET_RETURNING.contains(&f.name.as_str()) {
                    return Err(refuse(format!(
                        "a set-returning function in the target list ({})",
                        f.name
                    )));
                }
            }
            let mut r = self.expr(&t.expr, &scope, &ctes, true, grouped_from)?;
            if s.having.is_some() {
                mark_having(&mut r);
            }
            columns.push((t.name.clone(), r));
        }
        for g in &s.group_by {
            // Resolve for its errors (unknown columns); its value is in the targets.
            if !matches!(g, Expr::Const(_)) {
                self.expr(g, &scope, &ctes, false, false)?;
            }
        }
        if let Some(h) = &s.having {
            self.expr(h, &scope, &ctes, true, grouped_from)?;
        }
        let has_agg = self.aggregates > aggregates_before;
        self.depth -= 1;
        Ok(Output {
            columns,
            grouped: has_agg || !s.group_by.is_empty() || s.having.is_some() || s.distinct,
        })
    }

    /// Records a conjunct of a WHERE or ON condition. `outer` is the range of instances
    /// on the nullable side(s) of the outer join whose ON this is: a conjunct that
    /// touches none of them only decides which rows match, not which rows the view
    /// has, so it neither carries the key nor hides a table.
    fn condition(&mut self, r: &RExpr, outer: Option<&std::ops::Range<usize>>) {
        if let Some(range) = outer {
            if !r.columns().iter().any(|c| range.contains(&c.inst)) {
                return;
            }
        }
        let mut kind = "a non-equi join";
        if let RExpr::Op { op, args } = r {
            if op == "=" && args.len() == 2 {
                match (&args[0], &args[1]) {
                    (RExpr::Col(a), RExpr::Col(b)) => {
                        let inst = &self.lineage.instances;
                        match (inst[a.inst].type_of(&a.col), inst[b.inst].type_of(&b.col)) {
                            (Some(x), Some(y)) if !comparable_types(x, y) => {
                                kind = "a join between columns of different types";
                                let text = format!(
                                    "{}.{} {x}, {}.{} {y}",
                                    inst[a.inst].alias, a.col, inst[b.inst].alias, b.col
                                );
                                let mut insts = vec![a.inst, b.inst];
                                insts.sort();
                                insts.dedup();
                                if insts.len() > 1 {
                                    self.lineage
                                        .non_equi
                                        .push((insts, format!("{kind} ({text})")));
                                }
                                return;
                            }
                            _ => {
                                self.lineage.equalities.push((a.clone(), b.clone()));
                                return;
                            }
                        }
                    }
                    // Equal after a conversion (a timestamp cast to a date, a number
                    // to text...) is not equal before it: the key cannot travel.
                    (x, y)
                        if matches!(x.strip_casts(), RExpr::Col(_))
                            && matches!(y.strip_casts(), RExpr::Col(_)) =>
                    {
                        kind = "a join on converted columns";
                    }
                    _ => {}
                }
            }
        }
        let mut insts: Vec<usize> = r.columns().iter().map(|c| c.inst).collect();
        insts.sort();
        insts.dedup();
        if insts.len() > 1 {
            let text = r.text(&|c| format!("{}.{}", self.lineage.instances[c.inst].alias, c.col));
            self.lineage
                .non_equi
                .push((insts, format!("{kind} ({text})")));
        }
    }

    fn note_read(&mut self, r: &RExpr) {
        for c in r.columns() {
            if !self.lineage.read.contains(&c) {
                self.lineage.read.push(c);
            }
        }
    }

    fn range_item(
        &mut self,
        item: &FromItem,
        ctes: &Ctes<'_>,
        nullable: bool,
        opaque: bool,
        scope: &mut Vec<Entry>,
    ) -> Result<(), Refused> {
        match item {
            FromItem::Relation {
                schema,
                name,
                alias,
            } => {
                let alias = alias.clone().unwrap_or_else(|| name.clone());
                let entry =
                    self.relation(schema.as_deref(), name, alias, ctes, nullable, opaque)?;
                scope.push(entry);
            }
            FromItem::Subquery {
                query,
                alias,
                columns,
            } => {
                let out = self.select(query, ctes, nullable, opaque)?;
                scope.push(renamed(alias.clone(), out, columns));
            }
            FromItem::Join(j) => self.join(j, ctes, nullable, opaque, scope)?,
        }
        Ok(())
    }

    /// A named relation in FROM: a CTE (unqualified, the innermost of that name), a
    /// plain view (its definition resolved in place) or a table, a new instance.
    fn relation(
        &mut self,
        schema: Option<&str>,
        name: &str,
        alias: String,
        ctes: &Ctes<'_>,
        nullable: bool,
        opaque: bool,
    ) -> Result<Entry, Refused> {
        if schema.is_none() {
            if let Some((_, cte)) = ctes.iter().rev().find(|(n, _)| *n == name) {
                let visible: Vec<_> = ctes
                    .iter()
                    .take_while(|(n, _)| *n != name)
                    .copied()
                    .collect();
                let out = self.select(&cte.query, &visible, nullable, opaque)?;
                return Ok(renamed(alias, out, &cte.columns));
            }
        }
        let rel = self.catalog.lookup(schema, name)?;
        match &rel.kind {
            RelationKind::View { definition } => {
                let q = parse::parse_view(definition).map_err(|e| {
                    refuse(format!("view {}.{}: {}", rel.schema, rel.name, e.reason))
                })?;
                // A view's definition stands alone: no enclosing query's columns.
                let enclosing = std::mem::take(&mut self.enclosing);
                let out = self.select(&q, &[], nullable, opaque);
                self.enclosing = enclosing;
                Ok(renamed(alias, out?, &[]))
            }
            RelationKind::Table | RelationKind::MaterializedView => {
                Ok(self.instance(rel, alias, nullable, opaque))
            }
        }
    }

    /// A new instance of a base table (or materialized view): its columns in scope.
    fn instance(&mut self, rel: &Relation, alias: String, nullable: bool, opaque: bool) -> Entry {
        let inst = self.lineage.instances.len();
        self.lineage.instances.push(Instance {
            table: format!("{}.{}", rel.schema, rel.name),
            relname: rel.name.clone(),
            alias: alias.clone(),
            nullable,
            opaque,
            columns: rel.columns.clone(),
            types: rel.types.clone(),
        });
        let columns = rel
            .columns
            .iter()
            .map(|c| {
                let col = RExpr::Col(InstCol {
                    inst,
                    col: c.clone(),
                });
                (c.clone(), col)
            })
            .collect();
        Entry {
            alias,
            columns,
            grouped: false,
            merged: false,
        }
    }

    /// A join: both sides (nullable as the join kind makes them), then its USING and
    /// ON conditions, each conjunct recorded against the outer join's nullable side(s).
    fn join(
        &mut self,
        j: &Join,
        ctes: &Ctes<'_>,
        nullable: bool,
        opaque: bool,
        scope: &mut Vec<Entry>,
    ) -> Result<(), Refused> {
        let left_null = nullable || matches!(j.kind, JoinKind::Right | JoinKind::Full);
        let right_null = nullable || matches!(j.kind, JoinKind::Left | JoinKind::Full);
        let start = self.lineage.instances.len();
        let mut l = Vec::new();
        self.range_item(&j.left, ctes, left_null, opaque, &mut l)?;
        let middle = self.lineage.instances.len();
        let mut r = Vec::new();
        self.range_item(&j.right, ctes, right_null, opaque, &mut r)?;
        let end = self.lineage.instances.len();
        let outer = match j.kind {
            JoinKind::Inner => None,
            JoinKind::Left => Some(middle..end),
            JoinKind::Right => Some(start..middle),
            JoinKind::Full => Some(start..end),
        };
        // An unqualified USING column is the join's merged column: the left side's
        // (inner and left joins), the right side's (right), or COALESCE of both (full),
        // as PostgreSQL defines it. Both sides in scope made it "ambiguous" (a review,
        // 2026-12-05: `a FULL JOIN b USING (k) GROUP BY k` was refused so).
        let mut merged = Vec::new();
        for u in &j.using {
            let a = lookup(&l, &[], u)?;
            let b = lookup(&r, &[], u)?;
            self.note_read(&a);
            self.note_read(&b);
            let column = match j.kind {
                JoinKind::Inner | JoinKind::Left => a.clone(),
                JoinKind::Right => b.clone(),
                JoinKind::Full => RExpr::Func {
                    name: "coalesce".into(),
                    args: vec![a.clone(), b.clone()],
                },
            };
            merged.push((u.clone(), column));
            if opaque {
                continue;
            }
            let equal = RExpr::Op {
                op: "=".into(),
                args: vec![a, b],
            };
            self.condition(&equal, outer.as_ref());
        }
        scope.extend(l);
        scope.extend(r);
        if !merged.is_empty() {
            scope.push(Entry {
                alias: String::new(),
                columns: merged,
                grouped: false,
                merged: true,
            });
        }
        if let Some(on) = &j.on {
            for c in conjuncts(on) {
                let rc = self.expr(c, scope, ctes, false, false)?;
                if !opaque {
                    self.condition(&rc, outer.as_ref());
                }
            }
        }
        Ok(())
    }

    /// Resolves each expression of a list (see [`Analyzer::expr`]).
    fn exprs(
        &mut self,
        args: &[Expr],
        scope: &[Entry],
        ctes: &Ctes<'_>,
        aggregates_allowed: bool,
        over_grouped: bool,
    ) -> Result<Vec<RExpr>, Refused> {
        args.iter()
            .map(|a| self.expr(a, scope, ctes, aggregates_allowed, over_grouped))
            .collect()
    }

    fn expr(
        &mut self,
        e: &Expr,
        scope: &[Entry],
        ctes: &Ctes<'_>,
        aggregates_allowed: bool,
        over_grouped: bool,
    ) -> Result<RExpr, Refused> {
        Ok(match e {
            Expr::Column { qualifier, name } => self.column(scope, qualifier, name)?,
            Expr::Const(c) => RExpr::Const(c.clone()),
            Expr::Cast(x, ty) => RExpr::Cast(
                Box::new(self.expr(x, scope, ctes, aggregates_allowed, over_grouped)?),
                ty.clone(),
            ),
            Expr::Op { op, args } => RExpr::Op {
                op: op.clone(),
                args: self.exprs(args, scope, ctes, aggregates_allowed, over_grouped)?,
            },
            Expr::And(args) => RExpr::Op {
                op: "AND".into(),
                args: self.exprs(args, scope, ctes, aggregates_allowed, over_grouped)?,
            },
            Expr::Other { kind, args } => RExpr::Opaque(
                kind.clone(),
                self.exprs(args, scope, ctes, aggregates_allowed, over_grouped)?,
            ),
            Expr::SubLink(q) => self.sub_link(q, scope, ctes)?,
            Expr::Func(f) => self.func(f, scope, ctes, aggregates_allowed, over_grouped)?,
        })
    }

    /// A column: in its own FROM first, then the enclosing queries', innermost first
    /// (a correlated subquery expression).
    fn column(
        &mut self,
        scope: &[Entry],
        qualifier: &[String],
        name: &str,
    ) -> Result<RExpr, Refused> {
        let r = match lookup(scope, qualifier, name) {
            Err(e) if e.reason.ends_with("is not found in its FROM clause") => self
                .enclosing
                .iter()
                .rev()
                .find_map(|outer| lookup(outer, qualifier, name).ok())
                .ok_or(e)?,
            other => other?,
        };
        self.note_read(&r);
        Ok(r)
    }

    /// A subquery expression: resolved for its errors and reads; the tables read only
    /// there are opaque (their changes map to no key), its value too.
    fn sub_link(&mut self, q: &Select, scope: &[Entry], ctes: &Ctes<'_>) -> Result<RExpr, Refused> {
        let aggregates = self.aggregates;
        self.enclosing.push(scope.to_vec());
        let resolved = self.select(q, ctes, true, true);
        self.enclosing.pop();
        resolved.map_err(|e| {
            refuse(format!(
                "a subquery expression that cannot be analysed ({})",
                e.reason
            ))
        })?;
        self.aggregates = aggregates;
        Ok(RExpr::Opaque("a subquery expression".into(), Vec::new()))
    }

    /// A function call, or an aggregate (a known one, or any call with `*`, DISTINCT,
    /// FILTER or ORDER BY): allowed only in a target list. Window calls are refused.
    fn func(
        &mut self,
        f: &parse::FuncCall,
        scope: &[Entry],
        ctes: &Ctes<'_>,
        aggregates_allowed: bool,
        over_grouped: bool,
    ) -> Result<RExpr, Refused> {
        if f.window {
            return Err(refuse(format!("a window function ({})", f.name)));
        }
        let is_agg = AGGREGATES.contains(&f.name.as_str())
            || f.star
            || f.distinct
            || f.filter.is_some()
            || f.ordered;
        let args = self.exprs(&f.args, scope, ctes, aggregates_allowed, over_grouped)?;
        if !is_agg {
            return Ok(RExpr::Func {
                name: f.name.clone(),
                args,
            });
        }
        if !aggregates_allowed {
            return Err(refuse(format!(
                "an aggregate ({}) outside the target list",
                f.name
            )));
        }
        if let Some(filter) = &f.filter {
            self.expr(filter, scope, ctes, false, false)?;
        }
        self.aggregates += 1;
        Ok(RExpr::Agg(Box::new(Agg {
            name: f.name.clone(),
            star: f.star,
            distinct: f.distinct,
            filter: f.filter.is_some(),
            ordered: f.ordered,
            args,
            over_grouped,
            having: false,
        })))
    }
}

fn mark_having(r: &mut RExpr) {
    match r {
        RExpr::Agg(a) => a.having = true,
        RExpr::Func { args, .. } | RExpr::Op { args, .. } | RExpr::Opaque(_, args) => {
            args.iter_mut().for_each(mark_having)
        }
        RExpr::Cast(x, _) => mark_having(x),
        RExpr::Col(_) | RExpr::Const(_) => {}
    }
}

fn renamed(alias: String, out: Output, names: &[String]) -> Entry {
    let columns = out
        .columns
        .into_iter()
        .enumerate()
        .map(|(i, (n, e))| (names.get(i).cloned().unwrap_or(n), e))
        .collect();
    Entry {
        alias,
        columns,
        grouped: out.grouped,
        merged: false,
    }
}

/// PostgreSQL's system columns: no catalog column list names them, and no transition
/// table carries their values as the base table has them (`tableoid` of a partition,
/// `ctid` after the row moves).
const SYSTEM_COLUMNS: &[&str] = &["tableoid", "ctid", "xmin", "xmax", "cmin", "cmax"];

fn lookup(scope: &[Entry], qualifier: &[String], name: &str) -> Result<RExpr, Refused> {
    if name == "*" {
        return Err(refuse("a * column reference"));
    }
    let shown = if qualifier.is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", qualifier.join("."))
    };
    let found: Vec<(bool, &RExpr)> = scope
        .iter()
        .filter(|e| match qualifier.last() {
            None => true,
            Some(q) => !e.merged && *q == e.alias,
        })
        .flat_map(|e| {
            e.columns
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, x)| (e.merged, x))
        })
        .collect();
    // Unqualified, a USING join's merged column (the outermost: the last in scope)
    // hides the columns it merges: PostgreSQL accepted the view, so the name is no
    // other table's.
    if qualifier.is_empty() {
        if let Some((_, x)) = found.iter().rev().find(|(m, _)| *m) {
            return Ok((*x).clone());
        }
    }
    let found: Vec<&RExpr> = found.into_iter().map(|(_, x)| x).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] if SYSTEM_COLUMNS.contains(&name) => Err(refuse(format!(
            "column {shown} is a system column, which the change capture does not carry"
        ))),
        [] => Err(refuse(format!(
            "column {shown} is not found in its FROM clause"
        ))),
        _ => Err(refuse(format!("column reference {shown} is ambiguous"))),
    }
}

/// Union-find over instance columns: the equi-join equivalence classes.
#[derive(Default)]
pub struct Classes {
    index: HashMap<InstCol, usize>,
    parent: Vec<usize>,
    cols: Vec<InstCol>,
}

impl Classes {
    pub fn new(equalities: &[(InstCol, InstCol)]) -> Self {
        let mut c = Classes::default();
        for (a, b) in equalities {
            let (x, y) = (c.id(a), c.id(b));
            let (rx, ry) = (c.root(x), c.root(y));
            if rx != ry {
                c.parent[rx] = ry;
            }
        }
        c
    }

    fn id(&mut self, col: &InstCol) -> usize {
        if let Some(i) = self.index.get(col) {
            return *i;
        }
        let i = self.cols.len();
        self.cols.push(col.clone());
        self.parent.push(i);
        self.index.insert(col.clone(), i);
        i
    }

    fn root(&self, mut i: usize) -> usize {
        while self.parent[i] != i {
            i = self.parent[i];
        }
        i
    }

    /// The columns equal to `col` (itself first), in the order they were seen.
    pub fn class_of(&self, col: &InstCol) -> Vec<InstCol> {
        let mut out = vec![col.clone()];
        if let Some(&i) = self.index.get(col) {
            let r = self.root(i);
            for (j, c) in self.cols.iter().enumerate() {
                if j != i && self.root(j) == r {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    /// Every class with more than one column.
    pub fn all(&self) -> Vec<Vec<InstCol>> {
        let mut by_root: Vec<(usize, Vec<InstCol>)> = Vec::new();
        for (j, c) in self.cols.iter().enumerate() {
            let r = self.root(j);
            match by_root.iter_mut().find(|(x, _)| *x == r) {
                Some((_, v)) => v.push(c.clone()),
                None => by_root.push((r, vec![c.clone()])),
            }
        }
        by_root.into_iter().map(|(_, v)| v).collect()
    }
}
