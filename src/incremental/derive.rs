//! Per base table: how a change to its rows maps to the view's keys; per output column:
//! whether a change can be applied as a delta or its group must be recomputed.

use std::collections::VecDeque;
use std::fmt;

use super::lineage::{without_typmod, Agg, Classes, InstCol, Instance, Lineage, Output, RExpr};
use super::{volatile, Refused};

/// The whole derivation for one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub key: Vec<String>,
    /// One entry per base table (or materialized view) the view reads, in the order
    /// they first appear in the definition.
    pub tables: Vec<TableDerivation>,
    /// One entry per output column.
    pub columns: Vec<ColumnDerivation>,
}

impl Derivation {
    /// The table's derivation, by qualified (`schema.name`) or bare name.
    pub fn table(&self, name: &str) -> Option<&TableDerivation> {
        self.tables
            .iter()
            .find(|t| t.table == name || t.name == name)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDerivation> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDerivation {
    /// Qualified name (`schema.name`).
    pub table: String,
    /// The name printed (the bare relation name).
    pub name: String,
    pub how: How,
    /// The columns of the table the definition reads, in catalog order: a change to
    /// none of them changes nothing in the view.
    pub reads: Vec<String>,
    /// Its INSERTs cannot change the view while these foreign keys hold
    /// ([`super::inserts`]); `None`: they are captured.
    pub inserts: Option<super::InsertGuard>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// Every occurrence of the table carries the key: the keys of a change are
    /// computed from its old and new rows.
    Carries(Vec<Carry>),
    /// At least one occurrence reaches the key only by joining its changed rows to the
    /// tables that carry it; `carries` lists the occurrences that carry it directly.
    JoinPath {
        carries: Vec<Carry>,
        paths: Vec<Path>,
    },
    /// A change to it recomputes the whole view.
    Recompute { reason: String },
}

/// How one occurrence of a table gives the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carry {
    /// Per key column, the expression over this table's columns that gives it.
    pub key: Vec<String>,
    /// The equalities used, `this.col = other.col`, for key columns that come from
    /// another table (empty where the table gives the key column itself).
    pub via: Vec<Vec<String>>,
    /// Per key column, the table's column when the key column is exactly that column
    /// (no expression): what generated SQL can read without re-deriving an expression.
    pub columns: Vec<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub steps: Vec<JoinStep>,
    /// The qualified name (`schema.name`) of each table along the path: the changed
    /// table first, then the table each step reaches.
    pub tables: Vec<String>,
    /// How the last table carries the key.
    pub carry: Carry,
}

/// `from_table.from_column = to_table.to_column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinStep {
    pub from_table: String,
    pub from_column: String,
    pub to_table: String,
    pub to_column: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDerivation {
    pub name: String,
    pub class: ColumnClass,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnClass {
    /// A key column.
    Key,
    /// A grouping value other than the key (fixed per group).
    Group,
    /// A non-aggregate value of an ungrouped view, recomputed with its row.
    Row,
    /// Maintained from the change alone; the aggregates it is made of.
    Delta { aggregates: Vec<String> },
    /// The affected groups are recomputed.
    GroupRecompute { reason: String },
}

fn refuse(reason: impl Into<String>) -> Refused {
    Refused {
        reason: reason.into(),
    }
}

pub(super) fn derive(
    lineage: &Lineage,
    output: &Output,
    key: &[&str],
) -> Result<Derivation, Refused> {
    if key.is_empty() {
        return Err(refuse(
            "no key: the view has no unique index on plain columns and no `key` is configured",
        ));
    }
    let inst = &lineage.instances;
    let origins = key_origins(output, key, inst)?;
    let names = printed_names(inst);
    let classes = Classes::new(&lineage.equalities);
    let carries: Vec<Option<Carry>> = (0..inst.len())
        .map(|i| carry(i, inst, &origins, &classes, &names))
        .collect();
    // A key whose columns come from several tables, joined to none that has them all:
    // say so, rather than that nothing connects (every table recomputes everything).
    let mut key_sources: Vec<String> = origins
        .iter()
        .flat_map(|e| e.columns())
        .map(|c| format!("{}.{}", names[c.inst], c.col))
        .collect();
    key_sources.dedup();
    let router = Router {
        lineage,
        key_nullable: origins
            .iter()
            .flat_map(|e| e.columns())
            .any(|c| inst[c.inst].nullable),
        no_carrier: carries.iter().all(Option::is_none),
        adjacent: adjacency(inst, &classes),
        names,
        carries,
        key_sources,
    };
    let mut tables: Vec<TableDerivation> = Vec::new();
    for (i, occurrence) in inst.iter().enumerate() {
        if !tables.iter().any(|t| t.table == occurrence.table) {
            tables.push(router.table(i));
        }
    }
    let columns = output
        .columns
        .iter()
        .map(|(name, e)| ColumnDerivation {
            name: name.clone(),
            class: if key.contains(&name.as_str()) {
                ColumnClass::Key
            } else {
                classify(e, output.grouped)
            },
        })
        .collect();
    Ok(Derivation {
        key: key.iter().map(|k| k.to_string()).collect(),
        tables,
        columns,
    })
}

/// Each key column's expression over instance columns: not an aggregate, not volatile,
/// traceable to table columns, not a constant.
fn key_origins(output: &Output, key: &[&str], inst: &[Instance]) -> Result<Vec<RExpr>, Refused> {
    let mut origins = Vec::new();
    for k in key {
        let Some((_, e)) = output.columns.iter().find(|(n, _)| n == k) else {
            return Err(refuse(format!(
                "key column {k} is not a plain output column of the view"
            )));
        };
        if let Some(p) = key_problem(k, e, inst) {
            return Err(refuse(p));
        }
        if e.columns().is_empty() {
            return Err(refuse(format!("key column {k} is a constant")));
        }
        origins.push(e.clone());
    }
    Ok(origins)
}

/// Why key column `k` (expression `e`) cannot be computed from a row: the first
/// problem found walking `e`.
fn key_problem(k: &str, e: &RExpr, inst: &[Instance]) -> Option<String> {
    let mut problem = None;
    e.walk(&mut |x| {
        if problem.is_none() {
            problem = node_problem(k, x).or_else(|| time_zone_problem(k, x, inst));
        }
    });
    problem
}

/// A node a key expression must not contain: an aggregate, a volatile function, a
/// construct that cannot be traced to table columns.
fn node_problem(k: &str, x: &RExpr) -> Option<String> {
    match x {
        RExpr::Agg(a) => Some(format!("key column {k} is an aggregate ({})", a.name)),
        RExpr::Func { name, .. } if volatile::session_dependent(name) => Some(format!(
            "key column {k} is an expression over a function of the session ({name}): the capture would compute it in the writer's session, the refresh in its own"
        )),
        RExpr::Func { name, .. } if volatile::changes_under_key(name) => Some(format!(
            "key column {k} is an expression over a volatile function ({name})"
        )),
        RExpr::Opaque(kind, _) => Some(format!(
            "key column {k} is an expression that cannot be traced to table columns ({kind})"
        )),
        _ => None,
    }
}

/// `timestamptz` and `timestamp` as `format_type` names them.
const TZ: &str = "timestamp with time zone";
const LOCAL: &str = "timestamp without time zone";

/// A key node whose value depends on the session's `TimeZone`: a `date` or `timestamp`
/// cast to `timestamptz` (PostgreSQL prints `date_trunc('month', day)` over a date that
/// way), a `timestamptz` cast to a local type, a function PostgreSQL computes in local
/// time from a `timestamptz` (`date_trunc` without a zone, `date_part`/`extract` of a
/// field other than the epoch, `date`, `age`, `to_char`), or an interval added to a
/// `timestamptz` (a day is 23 or 25 hours across a daylight-saving change). The capture
/// computes the key in the writer's session, the refresh and the install in theirs: in
/// two zones, one group has two keys, and a change names the other. Types are known for
/// table columns and inferred through casts, `AT TIME ZONE`, `date_trunc` and
/// date/time arithmetic; an expression of unknown type is not judged.
fn time_zone_problem(k: &str, x: &RExpr, inst: &[Instance]) -> Option<String> {
    let ty = |e: &RExpr| type_of(e, inst);
    let local = |t: &str| matches!(t, "date" | LOCAL | "time without time zone");
    let has_tz = |args: &[RExpr]| args.iter().any(|a| ty(a).as_deref() == Some(TZ));
    let why = match x {
        RExpr::Cast(inner, to) => {
            let from = ty(inner)?;
            let to = cast_type(to);
            let to_local = local(&to)
                || matches!(
                    to.as_str(),
                    "time with time zone" | "text" | "varchar" | "bpchar" | "name"
                );
            if (to == TZ && local(&from)) || (from == TZ && to_local) {
                format!("a cast of {from} to {to}")
            } else {
                return None;
            }
        }
        // With the zone named (`date_trunc('month', at, 'UTC')`) it depends on none.
        RExpr::Func { name, args } if name == "date_trunc" && args.len() == 2 && has_tz(args) => {
            format!("{name} over a timestamp with time zone")
        }
        RExpr::Func { name, args }
            if matches!(name.as_str(), "date_part" | "extract")
                && has_tz(args)
                && !args.first().is_some_and(is_epoch) =>
        {
            format!("{name} over a timestamp with time zone")
        }
        RExpr::Func { name, args }
            if matches!(name.as_str(), "date" | "age" | "to_char") && has_tz(args) =>
        {
            format!("{name} over a timestamp with time zone")
        }
        RExpr::Op { op, args }
            if (op == "+" || op == "-")
                && has_tz(args)
                && args.iter().any(|a| ty(a).as_deref() == Some("interval")) =>
        {
            format!(
                "an interval {} a timestamp with time zone",
                if op == "+" {
                    "added to"
                } else {
                    "subtracted from"
                }
            )
        }
        _ => return None,
    };
    Some(format!(
        "key column {k} depends on the session's TimeZone ({why}): the capture would compute it in the writer's session, the refresh in its own, and one group would have a key per zone; name the zone in the view (`date_trunc('month', at, 'UTC')`, or `at AT TIME ZONE 'UTC'` for a timestamptz `at`), or cast a date to `timestamp` rather than `timestamptz`"
    ))
}

/// A cast's type as `format_type` names it (the parser gives the last part of its name).
fn cast_type(t: &str) -> String {
    match t {
        "timestamptz" => TZ,
        "timestamp" => LOCAL,
        "timetz" => "time with time zone",
        "time" => "time without time zone",
        other => other,
    }
    .to_string()
}

/// `'epoch'` (the field `extract` and `date_part` take), however it was printed.
fn is_epoch(e: &RExpr) -> bool {
    let mut e = e;
    while let RExpr::Cast(x, _) = e {
        e = x;
    }
    matches!(e, RExpr::Const(c) if c.trim_matches('\'').eq_ignore_ascii_case("epoch"))
}

/// The date/time type of `e` where it can be told: a column's, a cast's, `AT TIME ZONE`
/// (`timezone(zone, x)`: a `timestamptz` becomes a `timestamp` and back), `date_trunc`
/// (its argument's), and `+`/`-` (a date and a number: a date; with an interval: the
/// other side's; `*`/`/` with an interval: an interval).
fn type_of(e: &RExpr, inst: &[Instance]) -> Option<String> {
    match e {
        RExpr::Col(c) => inst
            .get(c.inst)
            .and_then(|i| i.type_of(&c.col))
            .map(without_typmod),
        RExpr::Cast(_, t) => Some(cast_type(t)),
        RExpr::Func { name, args } if name == "timezone" && args.len() == 2 => {
            match type_of(&args[1], inst)?.as_str() {
                TZ => Some(LOCAL.to_string()),
                LOCAL => Some(TZ.to_string()),
                _ => None,
            }
        }
        RExpr::Func { name, args } if name == "date_trunc" && args.len() >= 2 => {
            type_of(&args[1], inst)
        }
        RExpr::Op { op, args } if args.len() == 2 => {
            let (a, b) = (type_of(&args[0], inst), type_of(&args[1], inst));
            let interval = |t: &Option<String>| t.as_deref() == Some("interval");
            match op.as_str() {
                "*" | "/" if interval(&a) || interval(&b) => Some("interval".to_string()),
                "+" | "-" if interval(&b) => a,
                "+" if interval(&a) => b,
                "+" | "-" if a.as_deref() == Some("date") && b.as_deref() != Some("date") => a,
                _ => None,
            }
        }
        _ => None,
    }
}

/// Printed names: the relation name, or the alias for a table read under several.
fn printed_names(inst: &[Instance]) -> Vec<String> {
    inst.iter()
        .map(|i| {
            let mut aliases: Vec<&str> = inst
                .iter()
                .filter(|j| j.table == i.table)
                .map(|j| j.alias.as_str())
                .collect();
            aliases.sort();
            aliases.dedup();
            if aliases.len() > 1 {
                i.alias.clone()
            } else {
                i.relname.clone()
            }
        })
        .collect()
}

/// How occurrence `i` carries the key, if it does: every key column's columns are
/// equal to columns of `i` (`origins`: the key columns' expressions).
fn carry(
    i: usize,
    inst: &[Instance],
    origins: &[RExpr],
    classes: &Classes,
    names: &[String],
) -> Option<Carry> {
    if inst[i].opaque {
        return None;
    }
    let mut carry = Carry {
        key: Vec::new(),
        via: Vec::new(),
        columns: Vec::new(),
    };
    for e in origins {
        let mut via = Vec::new();
        let mut subst = Vec::new();
        for c in e.columns() {
            // Its own column of exactly the key column's type: a value of another type
            // (wider, another modifier, another time zone rule) would be cast into the
            // key's type when buffered, failing the writer or naming the wrong group.
            let mine = classes.class_of(&c).into_iter().find(|d| {
                d.inst == i
                    && (d.inst == c.inst
                        || match (inst[d.inst].type_of(&d.col), inst[c.inst].type_of(&c.col)) {
                            (Some(x), Some(y)) => x == y,
                            _ => true,
                        })
            })?;
            let same = inst[c.inst].table == inst[i].table && c.col == mine.col;
            if c.inst != i && !same {
                via.push(format!(
                    "{}.{} = {}.{}",
                    names[i], mine.col, names[c.inst], c.col
                ));
            }
            subst.push((c, mine));
        }
        let substituted = |c: &InstCol| {
            subst
                .iter()
                .find(|(from, _)| from == c)
                .map(|(_, to)| to.col.clone())
        };
        carry
            .key
            .push(e.text(&|c: &InstCol| substituted(c).unwrap_or_else(|| c.col.clone())));
        carry.via.push(via);
        carry.columns.push(match e {
            RExpr::Col(c) => substituted(c),
            _ => None,
        });
    }
    Some(carry)
}

/// Per occurrence, the occurrences sharing an equivalence class with it (with the
/// two columns), in instance order. Opaque occurrences join nothing.
fn adjacency(inst: &[Instance], classes: &Classes) -> Vec<Vec<(usize, String, String)>> {
    let mut adjacent: Vec<Vec<(usize, String, String)>> = vec![Vec::new(); inst.len()];
    for class in classes.all() {
        for a in &class {
            for b in &class {
                if a.inst != b.inst
                    && !inst[a.inst].opaque
                    && !inst[b.inst].opaque
                    && !adjacent[a.inst].iter().any(|(n, _, _)| *n == b.inst)
                {
                    adjacent[a.inst].push((b.inst, a.col.clone(), b.col.clone()));
                }
            }
        }
    }
    for a in &mut adjacent {
        a.sort_by_key(|(n, _, _)| *n);
    }
    adjacent
}

/// How one occurrence gives the key.
enum Route {
    Carries(Carry),
    Path(Path),
    Recompute(String),
}

/// What routing an occurrence to the key needs.
struct Router<'a> {
    lineage: &'a Lineage,
    names: Vec<String>,
    carries: Vec<Option<Carry>>,
    adjacent: Vec<Vec<(usize, String, String)>>,
    key_nullable: bool,
    no_carrier: bool,
    key_sources: Vec<String>,
}

impl Router<'_> {
    /// The derivation of the table of occurrence `i`, its first: every occurrence of
    /// the table must give the key, else a change to it recomputes everything.
    fn table(&self, i: usize) -> TableDerivation {
        let inst = &self.lineage.instances;
        let occurrence = &inst[i];
        let mut carried: Vec<Carry> = Vec::new();
        let mut paths = Vec::new();
        let mut recompute = None;
        for (j, other) in inst.iter().enumerate().skip(i) {
            if other.table != occurrence.table {
                continue;
            }
            match self.route(j) {
                Route::Carries(c) => {
                    if !carried.iter().any(|k| k.key == c.key) {
                        carried.push(c);
                    }
                }
                Route::Path(p) => paths.push(p),
                Route::Recompute(reason) => {
                    recompute.get_or_insert(reason);
                }
            }
        }
        let how = match recompute {
            Some(reason) => How::Recompute { reason },
            None if paths.is_empty() => How::Carries(carried),
            None => How::JoinPath {
                carries: carried,
                paths,
            },
        };
        let reads = occurrence
            .columns
            .iter()
            .filter(|col| {
                self.lineage
                    .read
                    .iter()
                    .any(|r| inst[r.inst].table == occurrence.table && &&r.col == col)
            })
            .cloned()
            .collect();
        TableDerivation {
            table: occurrence.table.clone(),
            name: occurrence.relname.clone(),
            how,
            reads,
            inserts: None,
        }
    }

    fn route(&self, i: usize) -> Route {
        let inst = &self.lineage.instances;
        if inst[i].opaque {
            // Read in FROM too: the subquery's reading is what sends everything.
            let also = inst.iter().any(|o| o.table == inst[i].table && !o.opaque);
            return Route::Recompute(if also {
                format!(
                    "read inside a subquery expression (EXISTS, IN or a scalar subquery) as {} too, where a change may change which rows of the view the subquery accepts",
                    inst[i].alias
                )
            } else {
                "read only inside a subquery expression (EXISTS, IN or a scalar subquery)".into()
            });
        }
        if self.key_nullable {
            return Route::Recompute(
                "the key comes from the nullable side of an outer join, where rows without a match have a NULL key"
                    .into(),
            );
        }
        if let Some(c) = &self.carries[i] {
            return Route::Carries(c.clone());
        }
        match self.shortest_path(i) {
            Some(p) => Route::Path(p),
            None => Route::Recompute(self.unreachable(i)),
        }
    }

    /// Breadth first: the shortest chain of equi-joins from occurrence `i` to an
    /// occurrence that carries the key.
    fn shortest_path(&self, i: usize) -> Option<Path> {
        let n = self.lineage.instances.len();
        let mut prev: Vec<Option<(usize, String, String)>> = vec![None; n];
        let mut seen = vec![false; n];
        seen[i] = true;
        let mut queue = VecDeque::from([i]);
        while let Some(x) = queue.pop_front() {
            for (y, cx, cy) in &self.adjacent[x] {
                if seen[*y] {
                    continue;
                }
                seen[*y] = true;
                prev[*y] = Some((x, cx.clone(), cy.clone()));
                if self.carries[*y].is_some() {
                    return Some(self.path_to(*y, &prev));
                }
                queue.push_back(*y);
            }
        }
        None
    }

    /// The path found ending at carrying occurrence `y`, read back along `prev`.
    fn path_to(&self, y: usize, prev: &[Option<(usize, String, String)>]) -> Path {
        let inst = &self.lineage.instances;
        let mut steps = Vec::new();
        let mut tables = vec![inst[y].table.clone()];
        let mut at = y;
        while let Some((from, cf, ct)) = &prev[at] {
            tables.push(inst[*from].table.clone());
            steps.push(JoinStep {
                from_table: self.names[*from].clone(),
                from_column: cf.clone(),
                to_table: self.names[at].clone(),
                to_column: ct.clone(),
            });
            at = *from;
        }
        steps.reverse();
        tables.reverse();
        let carry = self.carries[y].clone().expect("a carrying occurrence");
        Path {
            steps,
            tables,
            carry,
        }
    }

    /// Why no equi-join reaches the key from occurrence `i`.
    fn unreachable(&self, i: usize) -> String {
        match self.lineage.non_equi.iter().find(|(is, _)| is.contains(&i)) {
            Some((_, reason)) => reason.clone(),
            None if self.no_carrier => format!(
                "no one table carries the whole key: its columns come from {}",
                self.key_sources.join(", ")
            ),
            None => "no equi-join connects it to the key".to_string(),
        }
    }
}

fn top_aggregates<'a>(e: &'a RExpr, out: &mut Vec<&'a Agg>) {
    match e {
        RExpr::Agg(a) => out.push(a),
        RExpr::Func { args, .. } | RExpr::Op { args, .. } | RExpr::Opaque(_, args) => {
            args.iter().for_each(|x| top_aggregates(x, out))
        }
        RExpr::Cast(x, _) => top_aggregates(x, out),
        RExpr::Col(_) | RExpr::Const(_) => {}
    }
}

fn classify(e: &RExpr, grouped: bool) -> ColumnClass {
    let mut aggs = Vec::new();
    top_aggregates(e, &mut aggs);
    if aggs.is_empty() {
        return if grouped {
            ColumnClass::Group
        } else {
            ColumnClass::Row
        };
    }
    let mut labels = Vec::new();
    for a in aggs {
        let mut inner = Vec::new();
        a.args.iter().for_each(|x| top_aggregates(x, &mut inner));
        let reason = if a.over_grouped || !inner.is_empty() {
            Some(format!(
                "nested grouping ({} over a grouped subquery)",
                a.name
            ))
        } else if a.distinct {
            Some(format!("{}(DISTINCT ...)", a.name))
        } else if a.having {
            Some("HAVING decides which groups exist".to_string())
        } else if a.ordered {
            Some(format!("an ordered aggregate ({})", a.name))
        } else {
            match a.name.as_str() {
                "count" | "sum" | "avg" => None,
                "min" | "max" => Some(format!(
                    "{} (a delete cannot be undone from the change)",
                    a.name
                )),
                other => Some(format!("{other} (no delta rule)")),
            }
        };
        if let Some(reason) = reason {
            return ColumnClass::GroupRecompute { reason };
        }
        let base = match (a.name.as_str(), a.star) {
            ("count", true) => "count(*)".to_string(),
            ("avg", _) => "avg (as sum and count)".to_string(),
            (n, _) => n.to_string(),
        };
        let label = if a.filter {
            format!("{base} FILTER")
        } else {
            base
        };
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    ColumnClass::Delta { aggregates: labels }
}

impl fmt::Display for Carry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all_via = self.via.iter().all(|v| !v.is_empty());
        if all_via {
            let v: Vec<String> = self.via.iter().flatten().cloned().collect();
            return write!(f, "carries the key via {}", v.join(", "));
        }
        let parts: Vec<String> = self
            .key
            .iter()
            .zip(&self.via)
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    v.join(", ")
                }
            })
            .collect();
        write!(f, "carries the key ({})", parts.join(", "))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "join path ")?;
        for s in &self.steps {
            write!(
                f,
                "{}.{} = {}.{} → ",
                s.from_table, s.from_column, s.to_table, s.to_column
            )?;
        }
        write!(f, "key")
    }
}

impl fmt::Display for TableDerivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        match &self.how {
            How::Carries(c) => {
                let parts: Vec<String> = c.iter().map(|c| c.to_string()).collect();
                write!(f, "{}", parts.join("; and "))?
            }
            How::JoinPath { carries, paths } => {
                let parts: Vec<String> = carries
                    .iter()
                    .map(|c| c.to_string())
                    .chain(paths.iter().map(|p| p.to_string()))
                    .collect();
                write!(f, "{}", parts.join("; and "))?
            }
            How::Recompute { reason } => write!(f, "recompute everything ({reason})")?,
        }
        if let Some(g) = &self.inserts {
            write!(f, "; INSERT {}", g.describe())?;
        }
        Ok(())
    }
}

impl fmt::Display for ColumnDerivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        match &self.class {
            ColumnClass::Key => write!(f, "key"),
            ColumnClass::Group => write!(f, "grouping value"),
            ColumnClass::Row => write!(f, "row value"),
            ColumnClass::Delta { aggregates } => write!(f, "delta ({})", aggregates.join(", ")),
            ColumnClass::GroupRecompute { reason } => write!(f, "recompute the group ({reason})"),
        }
    }
}

impl fmt::Display for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key ({})", self.key.join(", "))?;
        for t in &self.tables {
            writeln!(f, "{t}")?;
        }
        for c in &self.columns {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}
