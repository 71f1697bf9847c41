//! How each column is kept (docs/incremental-deltas.md, the table "How each column is
//! kept"): per output column, its new value over the delta row `d` and the live row
//! `l`, the conditions under which the new values are known (else the key is
//! rechecked), and the aggregates over the consumed rows ("pieces") the delta query
//! computes for them.

use super::columns::{AggCol, Out};
use super::fact::Fact;
use super::{no, NoDelta};
use crate::pg::ident::quote_ident;

/// The pieces the delta query computes, each a named aggregate over the buffer rows.
struct Pieces {
    list: Vec<(String, String)>,
    /// The consumed rows' sign column, qualified by the fact table's alias.
    sign: String,
}

impl Pieces {
    /// The name of the piece `sql` (`p1`, `p2`...), added if new.
    fn add(&mut self, sql: String) -> String {
        if let Some((name, _)) = self.list.iter().find(|(_, s)| *s == sql) {
            return name.clone();
        }
        let name = format!("p{}", self.list.len() + 1);
        self.list.push((name.clone(), sql));
        name
    }

    /// The FILTER of a piece over the added (`positive`) or removed rows, within the
    /// column's own FILTER.
    fn when(&self, positive: bool, filter: &Option<String>) -> String {
        let cmp = if positive { "> 0" } else { "< 0" };
        match filter {
            Some(fl) => format!("FILTER (WHERE {} {cmp} AND ({fl}))", self.sign),
            None => format!("FILTER (WHERE {} {cmp})", self.sign),
        }
    }

    /// The pieces of `call` (`count(x)`, `sum(x)`) over the added and the removed rows.
    fn added_removed(&mut self, call: &str, filter: &Option<String>) -> (String, String) {
        let added = self.add(format!("{call} {}", self.when(true, filter)));
        let removed = self.add(format!("{call} {}", self.when(false, filter)));
        (added, removed)
    }
}

/// The apply's view of every column.
pub(super) struct Values {
    /// Per output column, its new value (over `d` and `l`).
    pub new_value: Vec<String>,
    /// Conditions under which every new value is known; otherwise the key is rechecked.
    pub sure: Vec<String>,
    /// Whether the group vanishes (its rows' count reaches 0).
    pub gone: String,
    /// One line per column: how it is kept.
    pub notes: Vec<String>,
    /// The delta query's target list: each grouping value as `c<i>`, then the pieces.
    pub targets: Vec<String>,
    /// Without a `count(*)` column, when nothing but a group's existence is unknown
    /// after it loses rows ([`Builder::probing`]): whether the delta group lost rows
    /// (over `d`). Its key is then *probed* (does the definition still have a row of
    /// it?) instead of recomputed.
    pub lost: Option<String>,
}

/// Computes every column's new value. `columns` are the view's, `outs` what each is,
/// `sign` the buffer's sign column.
pub(super) fn compute(
    columns: &[(String, String)],
    fact: &Fact<'_>,
    sign: &str,
    outs: &[Out],
    key_idx: &[usize],
) -> Result<Values, NoDelta> {
    let mut b = Builder {
        columns,
        fact,
        outs,
        pieces: Pieces {
            list: Vec::new(),
            sign: format!("{}.{}", quote_ident(&fact.alias), quote_ident(sign)),
        },
        sure: key_idx
            .iter()
            .map(|k| format!("d.\"c{k}\" IS NOT NULL"))
            .collect(),
        new_value: vec![String::new(); outs.len()],
        sum_value: vec![None; outs.len()],
        notes: Vec::new(),
        probe: false,
    };
    b.probe = b.probing();
    let n_rem = b
        .pieces
        .add(format!("count(*) {}", b.pieces.when(false, &None)));
    let mut targets: Vec<String> = outs
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Out::Group(e) => Some(format!("{e} AS \"c{i}\"")),
            Out::Agg(_) => None,
        })
        .collect();
    // Counts first: sums and averages refer to their new values.
    b.groups_and_counts(key_idx);
    b.sums();
    b.averages()?;
    let gone = b.gone(&n_rem);
    for (name, sql) in &b.pieces.list {
        targets.push(format!("{sql} AS {name}"));
    }
    Ok(Values {
        new_value: b.new_value,
        sure: b.sure,
        gone,
        notes: b.notes,
        targets,
        lost: b.probe.then(|| format!("d.{n_rem} > 0")),
    })
}

struct Builder<'a> {
    columns: &'a [(String, String)],
    fact: &'a Fact<'a>,
    outs: &'a [Out],
    pieces: Pieces,
    sure: Vec<String>,
    new_value: Vec<String>,
    /// Per sum column, its new value (an avg without a count of its own reuses it).
    sum_value: Vec<Option<String>>,
    notes: Vec<String>,
    /// Groups losing rows are probed, not recomputed ([`Builder::probing`]).
    probe: bool,
}

impl Builder<'_> {
    /// Whether a group that lost rows is decided by whether it still exists: there is
    /// no `count(*)` column (else its count says so), and every sum without a count of
    /// its inputs has an argument that is never NULL and no FILTER, so that a group
    /// that still has a row has a non-NULL input for each such sum (its value is then
    /// old + added - removed).
    fn probing(&self) -> bool {
        let rows_col = self.outs.iter().any(
            |o| matches!(o, Out::Agg(c) if c.func == "count" && c.arg.is_none() && c.filter.is_none()),
        );
        !rows_col
            && self.outs.iter().all(|o| match o.agg("sum") {
                Some(a) => {
                    self.count_source(a).is_some()
                        || (a.filter.is_none()
                            && a.arg_node.as_ref().is_some_and(|x| self.fact.never_null(x)))
                }
                None => true,
            })
    }

    /// The live row's value of column `i`.
    fn old(&self, i: usize) -> String {
        format!("l.{}", quote_ident(&self.columns[i].0))
    }

    /// The count column of the same inputs (same FILTER) as a sum or avg: `count(x)`,
    /// or `count(*)` when x cannot be NULL.
    fn count_source(&self, a: &AggCol) -> Option<usize> {
        self.outs.iter().position(|o| match o {
            Out::Agg(c) if c.func == "count" && c.filter == a.filter => {
                c.arg == a.arg
                    || (c.arg.is_none()
                        && a.arg_node.as_ref().is_some_and(|x| self.fact.never_null(x)))
            }
            _ => false,
        })
    }

    /// Grouping values come from the delta's group; a count is old + added - removed.
    fn groups_and_counts(&mut self, key_idx: &[usize]) {
        let (outs, columns) = (self.outs, self.columns);
        for (i, o) in outs.iter().enumerate() {
            let name = &columns[i].0;
            match o {
                Out::Group(_) => {
                    self.new_value[i] = format!("d.\"c{i}\"");
                    let what = if key_idx.contains(&i) {
                        "key"
                    } else {
                        "grouping value"
                    };
                    self.notes
                        .push(format!("{name}: {what} (from the delta's group)"));
                }
                Out::Agg(a) if a.func == "count" => {
                    let arg = a.arg.clone().unwrap_or_else(|| "*".into());
                    let (add, rem) = self
                        .pieces
                        .added_removed(&format!("count({arg})"), &a.filter);
                    self.new_value[i] =
                        format!("(COALESCE({}, 0) + (d.{add} - d.{rem}))", self.old(i));
                    self.sure.push(format!("{} >= 0", self.new_value[i]));
                    self.notes
                        .push(format!("{name}: count, old + added - removed"));
                }
                Out::Agg(_) => {}
            }
        }
    }

    /// A sum is old + added - removed, NULL when the count of its inputs reaches 0;
    /// without such a count, a group losing a non-NULL input is rechecked.
    fn sums(&mut self) {
        let (outs, columns) = (self.outs, self.columns);
        for (i, o) in outs.iter().enumerate() {
            let Some(a) = o.agg("sum") else { continue };
            let name = &columns[i].0;
            let arg = a.arg.clone().expect("sum has an argument");
            let (plus, minus) = self.pieces.added_removed(&format!("sum({arg})"), &a.filter);
            if columns[i].1.starts_with("numeric") {
                // NaN and ±Infinity do not cancel out (NaN − NaN is NaN): a group that
                // has or gets one is recomputed.
                for x in [self.old(i), format!("d.{plus}"), format!("d.{minus}")] {
                    self.sure.push(finite(&x));
                }
            }
            let v = match self.count_source(a) {
                Some(j) => {
                    self.notes.push(format!(
                        "{name}: sum, old + added - removed, NULL when {} reaches 0",
                        self.columns[j].0
                    ));
                    format!(
                        "(CASE WHEN {} = 0 THEN NULL ELSE COALESCE({o}, 0) + COALESCE(d.{plus}, 0) - COALESCE(d.{minus}, 0) END)",
                        self.new_value[j],
                        o = self.old(i)
                    )
                }
                None if self.probe => {
                    self.notes.push(format!(
                        "{name}: sum, old + added - removed (its input is never NULL: a group losing rows is probed)"
                    ));
                    format!(
                        "(COALESCE({o}, 0) + COALESCE(d.{plus}, 0) - COALESCE(d.{minus}, 0))",
                        o = self.old(i)
                    )
                }
                None => {
                    // Without a count of its non-NULL inputs, a removal could leave no
                    // input: such groups are rechecked.
                    let when = self.pieces.when(false, &a.filter);
                    let rem_nn = self.pieces.add(format!("count({arg}) {when}"));
                    self.sure.push(format!("d.{rem_nn} = 0"));
                    self.notes.push(format!(
                        "{name}: sum, old + added; a group losing a non-NULL input is recomputed (no count of its inputs among the columns)"
                    ));
                    format!(
                        "(CASE WHEN d.{plus} IS NULL THEN {o} ELSE COALESCE({o}, 0) + d.{plus} END)",
                        o = self.old(i)
                    )
                }
            };
            self.new_value[i] = v.clone();
            self.sum_value[i] = Some(v);
        }
    }

    /// An avg is the new sum over the new count of its inputs, both among the columns
    /// (the sum may be recovered from the old average, see [`Builder::recovered_sum`]).
    fn averages(&mut self) -> Result<(), NoDelta> {
        let (outs, columns) = (self.outs, self.columns);
        for (i, o) in outs.iter().enumerate() {
            let Some(a) = o.agg("avg") else { continue };
            let name = &columns[i].0;
            let sum_col = outs.iter().position(
                |o| matches!(o, Out::Agg(c) if c.func == "sum" && c.arg == a.arg && c.filter == a.filter),
            );
            let Some(cc) = self.count_source(a) else {
                return Err(no(format!(
                    "column {name}: avg needs the sum and the count of the same inputs (same FILTER) among the view's columns, and the live table keeps no hidden ones"
                )));
            };
            let sum = match sum_col {
                Some(sc) => {
                    self.notes.push(format!(
                        "{name}: avg, {} / {}",
                        self.columns[sc].0, self.columns[cc].0
                    ));
                    self.sum_value[sc].clone().expect("sums computed above")
                }
                None => self.recovered_sum(i, cc, a)?,
            };
            self.new_value[i] = format!(
                "(CASE WHEN {c} = 0 THEN NULL ELSE ({sum})::numeric / ({c})::numeric END)",
                c = self.new_value[cc]
            );
        }
        Ok(())
    }

    /// The new sum of avg column `i` without a sum column: for a plain fact column of a
    /// fixed scale, the old sum is the old average times the old count (column `cc`),
    /// rounded to that scale. An average carries at least 13 significant digits, so
    /// this is exact while the sum stays below 10^(12 - scale); larger groups are
    /// rechecked.
    fn recovered_sum(&mut self, i: usize, cc: usize, a: &AggCol) -> Result<String, NoDelta> {
        let name = &self.columns[i].0;
        let fact = self.fact;
        let scale = a
            .arg_node
            .as_ref()
            .and_then(|x| fact.column_of(x))
            .and_then(|c| fact.table.columns.iter().find(|(n, _)| *n == c))
            .and_then(|(_, ty)| fixed_scale(ty));
        let Some(scale) = scale else {
            return Err(no(format!(
                "column {name}: avg without its sum among the view's columns needs a plain column of the fact table with a fixed scale (integer or numeric(p,s)) as its argument"
            )));
        };
        let arg = a.arg.clone().expect("avg has an argument");
        let (plus, minus) = self.pieces.added_removed(&format!("sum({arg})"), &a.filter);
        for x in [self.old(i), format!("d.{plus}"), format!("d.{minus}")] {
            self.sure.push(finite(&x));
        }
        let old_sum = format!(
            "round(COALESCE({o}, 0) * COALESCE({oc}, 0), {scale})",
            o = self.old(i),
            oc = self.old(cc)
        );
        self.sure
            .push(format!("abs({old_sum}) < 1e{}", 12 - i64::from(scale)));
        self.notes.push(format!(
            "{name}: avg, (old avg × old {c} + added - removed) / {c}",
            c = self.columns[cc].0
        ));
        Ok(format!(
            "({old_sum} + COALESCE(d.{plus}, 0) - COALESCE(d.{minus}, 0))"
        ))
    }

    /// Whether a group vanishes: its unfiltered `count(*)` column reaches 0; without
    /// one, a group that lost rows (`n_rem`, the removed rows' piece) is rechecked.
    fn gone(&mut self, n_rem: &str) -> String {
        let rows_col = self.outs.iter().position(
            |o| matches!(o, Out::Agg(c) if c.func == "count" && c.arg.is_none() && c.filter.is_none()),
        );
        match rows_col {
            Some(j) => format!("({} = 0)", self.new_value[j]),
            None if self.probe => {
                self.notes.push(
                    "groups losing rows are probed: deleted when the definition has no row of them left (no count(*) column tells that a group vanished)"
                        .into(),
                );
                "false".to_string()
            }
            None => {
                self.sure.push(format!("d.{n_rem} = 0"));
                self.notes.push(
                    "groups losing rows are recomputed (no count(*) column tells that a group vanished)"
                        .into(),
                );
                "false".to_string()
            }
        }
    }
}

/// `x` (a numeric, or NULL) is neither NaN nor ±Infinity: `x − x` is 0 exactly for
/// finite values (NaN − NaN and Infinity − Infinity are NaN), on every version (the
/// literal `'Infinity'::numeric` exists only from PostgreSQL 14).
fn finite(x: &str) -> String {
    format!("COALESCE(({x}) - ({x}) = 0, true)")
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
