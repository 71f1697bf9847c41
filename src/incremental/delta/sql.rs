//! The statements of a plan: the buffer and recheck tables (install, rollback,
//! discard), the capture statements the fact table's triggers run, the one-statement
//! apply and the recheck keys query.

use super::values::Values;
use crate::incremental::generate::pg_op;
use crate::pg::ident::{quote_ident, QualifiedName};

/// `a, b, c` with each name quoted and prefixed (`n.` for `n."a"`).
pub(super) fn list(names: &[String], prefix: &str) -> String {
    names
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"a" type, "b" type`: a table's column definitions.
fn column_defs(cols: &[(String, String)]) -> String {
    cols.iter()
        .map(|(c, t)| format!("{} {t}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The planner's row estimate for the consumed buffer rows (the take function's
/// `ROWS`): a change is a few rows between refreshes. Without it the planner sizes the
/// buffer, which is never analyzed, by its pages (hundreds of rows for one page) and
/// joins the rows to every dimension by hashing the whole dimension: an apply of one
/// row then reads each dimension in full and grows with the data (12 ms instead of
/// well under 1 on the attendance seed at scale 1, 4x that at scale 10). With a small
/// estimate it looks the rows up by index, whatever the dimensions' size.
const TAKE_ROWS: u32 = 10;

/// From this many buffered rows on, the apply reads the buffer directly and is planned
/// for its size (hash joins over the dimensions beat that many index lookups); below,
/// through the take function. Decided at each refresh by the consume function.
pub const BULK_FROM: u32 = 1000;

/// The same threshold for a view with tombstones ([`super::Tomb`]): its dimensions are
/// read through a UNION ALL, which has no statistics, and the apply planned for its size
/// misjudged the joins (TPC-H at SF 0.1, 6,000 to 36,000 changed lineitems: 40-135 ms
/// for Q3 and 90 ms to 5 s for Q10, whatever the planner settings tried), where the apply
/// planned for a few rows looks each up by index at about 2 µs a row (11-67 ms for Q3,
/// 11-33 ms for Q10). Linear in the change, so still the better plan well past a
/// hundred thousand rows, when a full recompute usually wins anyway.
pub const BULK_FROM_WITH_TOMBS: u32 = 100_000;

/// `$tag$body$tag$` with a tag the body does not contain.
fn dollar_quoted(body: &str) -> String {
    let mut tag = String::from("refreshd_take");
    while body.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${body}${tag}$")
}

/// The buffer (sign and the fact columns read), the take function that consumes it
/// (`DELETE … RETURNING`, with a row estimate: [`TAKE_ROWS`]; EXECUTE revoked from
/// PUBLIC: whoever calls it discards changes) and the recheck table (the key columns,
/// typed like the view's), in schema `refreshd`, created if missing.
fn install(
    buffer: &QualifiedName,
    take: &QualifiedName,
    sign: &str,
    columns: &[(String, String)],
    recheck: &QualifiedName,
    key_types: &[(String, String)],
) -> Vec<String> {
    let unlogged = |t: &QualifiedName, defs: String| {
        format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} ({defs})",
            t.quoted()
        )
    };
    vec![
        format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(super::BUFFER_SCHEMA)
        ),
        unlogged(
            buffer,
            format!(
                "{} int2 NOT NULL, {}",
                quote_ident(sign),
                column_defs(columns)
            ),
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {take}() RETURNS SETOF {buf} LANGUAGE sql VOLATILE ROWS {TAKE_ROWS} \
             SET search_path = pg_catalog, pg_temp AS {body}",
            take = take.quoted(),
            buf = buffer.quoted(),
            body = dollar_quoted(&format!("DELETE FROM {} RETURNING *", buffer.quoted()))
        ),
        format!("REVOKE ALL ON FUNCTION {}() FROM PUBLIC", take.quoted()),
        unlogged(recheck, column_defs(key_types)),
    ]
}

/// A plan's install, rollback and discard statements: the buffer, take function and
/// recheck table ([`install`]), then the probe table when `probed` and the tombstone
/// tables ([`extra_tables`]). `tables` are the buffer, take, recheck and probe names.
pub(super) fn statements(
    tables: [&QualifiedName; 4],
    sign: &str,
    columns: &[(String, String)],
    key_types: &[(String, String)],
    probed: bool,
    tombs: &[super::Tomb],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let [buffer, take, recheck, probe] = tables;
    let mut install = install(buffer, take, sign, columns, recheck, key_types);
    let mut rollback: Vec<String> =
        std::iter::once(format!("DROP FUNCTION IF EXISTS {}()", take.quoted()))
            .chain(each("DROP TABLE IF EXISTS", [buffer, recheck]))
            .collect();
    let mut discard = each("DELETE FROM", [buffer, recheck]);
    let probe = probed.then_some((probe, key_types));
    extra_tables(probe, tombs, &mut install, &mut rollback, &mut discard);
    (install, rollback, discard)
}

/// The tables a plan may add to the buffer and the recheck table: the probe table (the
/// key columns, typed like the view's) when its groups are probed, and each tombstone
/// table; their statements appended to the plan's install, rollback and discard.
fn extra_tables(
    probe: Option<(&QualifiedName, &[(String, String)])>,
    tombs: &[super::Tomb],
    install: &mut Vec<String>,
    rollback: &mut Vec<String>,
    discard: &mut Vec<String>,
) {
    let tables = probe
        .iter()
        .map(|(t, _)| *t)
        .chain(tombs.iter().map(|t| &t.buffer))
        .chain(
            tombs
                .iter()
                .filter_map(|t| t.near.as_ref().map(|n| &n.buffer)),
        );
    for t in tables {
        rollback.push(format!("DROP TABLE IF EXISTS {}", t.quoted()));
        discard.push(format!("DELETE FROM {}", t.quoted()));
    }
    if let Some((t, key_types)) = probe {
        install.push(format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} ({})",
            t.quoted(),
            column_defs(key_types)
        ));
    }
    for t in tombs {
        install.extend(tomb_install(t));
    }
}

/// A tombstone table (the dimension's columns read, typed alike) and its index on the
/// referenced columns, which the apply looks deleted rows up by; its near table, if any.
fn tomb_install(t: &super::Tomb) -> Vec<String> {
    std::iter::once(format!(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {} ({})",
        t.buffer.quoted(),
        column_defs(&t.columns)
    ))
    .chain(t.near.iter().map(|n| {
        format!(
            "CREATE UNLOGGED TABLE IF NOT EXISTS {} ({})",
            n.buffer.quoted(),
            column_defs(&n.columns)
        )
    }))
    .chain(
        t.matching
            .iter()
            .map(|m| format!("CREATE INDEX ON {} ({})", t.buffer.quoted(), list(m, ""))),
    )
    .collect()
}

/// One statement per table (`DROP TABLE IF EXISTS`, `DELETE FROM`...).
fn each(verb: &str, tables: [&QualifiedName; 2]) -> Vec<String> {
    tables
        .iter()
        .map(|t| format!("{verb} {}", t.quoted()))
        .collect()
}

/// The capture statements (INSERT, DELETE, UPDATE) of the fact table's statement
/// triggers, reading the transition tables `new_rows` and `old_rows`.
pub(super) struct Capture {
    pub insert: String,
    pub delete: String,
    pub update: String,
}

/// `SELECT <sign>, a.c1, a.c2 FROM <from>`: signed buffer rows from `from`, aliased `a`.
fn signed(sign: i8, cols: &[String], alias: &str, from: &str) -> String {
    format!(
        "SELECT {sign}, {} FROM {from}",
        list(cols, &format!("{alias}."))
    )
}

/// `SELECT a.c1, a.c2, ROW(...)::text FROM <table> a`: a transition table's columns
/// read, and their text image (an UPDATE to a value `=` calls equal but readers see
/// differently is a change: generate::image_column).
fn rows(cols: &[String], table: &str, alias: &str) -> String {
    format!(
        "SELECT {}, {} FROM {table} {alias}",
        list(cols, &format!("{alias}.")),
        crate::incremental::generate::image_column(cols, alias)
    )
}

impl Capture {
    /// `incomparable`: a column read has no equality, so an UPDATE buffers all its old
    /// and new rows rather than those whose read columns changed.
    pub fn new(buffer: &QualifiedName, sign: &str, cols: &[String], incomparable: bool) -> Self {
        let into = format!(
            "INSERT INTO {} ({}, {})",
            buffer.quoted(),
            quote_ident(sign),
            list(cols, "")
        );
        let update = if incomparable {
            format!(
                "{into} {} UNION ALL {}",
                signed(-1, cols, "o", "old_rows o"),
                signed(1, cols, "n", "new_rows n")
            )
        } else {
            // Only the rows whose read columns changed (a multiset difference: deltas are
            // linear, so pairing any equal old and new rows is exact).
            let (old, new) = (rows(cols, "old_rows", "o"), rows(cols, "new_rows", "n"));
            format!(
                "{into} {} UNION ALL {}",
                signed(-1, cols, "m", &format!("({old} EXCEPT ALL {new}) AS m")),
                signed(1, cols, "p", &format!("({new} EXCEPT ALL {old}) AS p"))
            )
        };
        Capture {
            insert: format!("{into} {}", signed(1, cols, "n", "new_rows n")),
            delete: format!("{into} {}", signed(-1, cols, "o", "old_rows o")),
            update,
        }
    }
}

/// How an apply statement reads the buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Through the take function (`DELETE … RETURNING`, planned for a few rows).
    Take,
    /// `DELETE … RETURNING` in the statement, planned with the buffer's size as its
    /// pages tell it, for a change of many rows ([`BULK_FROM`]).
    Delete,
    /// The table itself (a CTE PostgreSQL inlines), after an `ANALYZE` of it, and a
    /// `DELETE` after the statement in the same snapshot: the planner then knows the
    /// rows' values (a filter on a CTE's rows is estimated at 0.5%: TPC-H Q10's apply
    /// of 12,000 changed lineitems looped over them for each order, 5 s).
    Table,
}

/// What the apply statement writes to.
pub(super) struct Apply<'a> {
    pub rows_cte: &'a str,
    /// The take function ([`install`]): consumes the buffer.
    pub take: &'a QualifiedName,
    pub buffer: &'a QualifiedName,
    pub recheck: &'a QualifiedName,
    /// The keys of groups that lost rows, to probe ([`super::values::Values::lost`]).
    pub probe: &'a QualifiedName,
    pub live: &'a QualifiedName,
    /// The view's columns, and the positions of the key columns among them.
    pub columns: &'a [(String, String)],
    /// Equality operators outside pg_catalog, by column ([`super::DeltaFacts::equality`]).
    pub equality: &'a [(String, String)],
    pub key_idx: &'a [usize],
    pub key_names: &'a [String],
}

/// `<alias>."c<k>"` for each key position, comma-separated.
fn key_refs(key_idx: &[usize], alias: &str) -> String {
    key_idx
        .iter()
        .map(|k| format!("{alias}.\"c{k}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Apply<'_> {
    /// `l."key" = <alias>."c<k>"` for each key column, joined by AND; `=` is the key
    /// type's own (`OPERATOR(pg_catalog.=)` unless [`Apply::equality`] names another).
    fn key_match(&self, alias: &str) -> String {
        self.key_idx
            .iter()
            .map(|k| {
                let name = &self.columns[*k].0;
                let eq = self
                    .equality
                    .iter()
                    .find(|(c, _)| c == name)
                    .map_or_else(|| pg_op("="), |(_, op)| op.clone());
                format!("l.{} {eq} {alias}.\"c{k}\"", quote_ident(name))
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The one statement: consume the buffer, compute the delta per group, join the
    /// live rows, upsert the groups that stay, delete those that vanish, and put the
    /// keys it could not decide into the recheck table.
    /// The apply planned for a few rows, and the one for a change of many rows. With
    /// tombstones the apply reads dimensions through a UNION ALL, which has no
    /// statistics: the bulk apply then gives the planner the buffer's own
    /// ([`Source::Table`]).
    pub fn few_and_bulk(&self, v: &Values, delta_select: &str, tombs: bool) -> (String, String) {
        let bulk = if tombs {
            format!(
                "ANALYZE {b};\n{};\nDELETE FROM {b}",
                self.statement(v, delta_select, Source::Table),
                b = self.buffer.quoted()
            )
        } else {
            self.statement(v, delta_select, Source::Delete)
        };
        (self.statement(v, delta_select, Source::Take), bulk)
    }

    /// How the buffer is read: see [`Source`].
    fn statement(&self, v: &Values, delta_select: &str, read: Source) -> String {
        let source = match read {
            Source::Delete => format!("DELETE FROM {} RETURNING *", self.buffer.quoted()),
            Source::Take => format!("SELECT * FROM {}()", self.take.quoted()),
            Source::Table => format!("SELECT * FROM {}", self.buffer.quoted()),
        };
        let all_cols: Vec<String> = self.columns.iter().map(|(c, _)| c.clone()).collect();
        let values = v
            .new_value
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v} AS \"v{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let ok = "c.\"refreshd_sure\" AND c.\"refreshd_groups\" = 1";
        // Groups that lost rows, decided but for their existence: probed afterwards.
        let (lost, probe) = match &v.lost {
            Some(lost) => (
                format!(", COALESCE({lost}, false) AS \"refreshd_lost\""),
                format!(
                    "\"refreshd_pr\" AS (INSERT INTO {} ({}) SELECT DISTINCT {} FROM \"refreshd_c\" AS c WHERE {ok} AND c.\"refreshd_lost\"),\n",
                    self.probe.quoted(),
                    list(self.key_names, ""),
                    key_refs(self.key_idx, "c"),
                ),
            ),
            None => (String::new(), String::new()),
        };
        let set = all_cols
            .iter()
            .filter(|c| !self.key_names.contains(c))
            .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH {rows} AS ({source}),\n\
             \"refreshd_d\" AS ({delta_select}),\n\
             \"refreshd_c\" AS (SELECT {keys_d}, {values}, COALESCE({sure}, false) AS \"refreshd_sure\", COALESCE({gone}, false) AS \"refreshd_gone\"{lost}, count(*) OVER (PARTITION BY {keys_d}) AS \"refreshd_groups\" FROM \"refreshd_d\" AS d LEFT JOIN {live} AS l ON {on}),\n\
             \"refreshd_up\" AS (INSERT INTO {live} ({cols}) SELECT {vs} FROM \"refreshd_c\" AS c WHERE {ok} AND NOT c.\"refreshd_gone\" ON CONFLICT ({keys}) DO UPDATE SET {set}),\n\
             {probe}\"refreshd_del\" AS (DELETE FROM {live} AS l USING \"refreshd_c\" AS c WHERE {ok} AND c.\"refreshd_gone\" AND {on_c})\n\
             INSERT INTO {rc} ({keys}) SELECT DISTINCT {keys_c} FROM \"refreshd_c\" AS c WHERE NOT ({ok})",
            rows = quote_ident(self.rows_cte),
            keys_d = key_refs(self.key_idx, "d"),
            sure = v.sure.join(" AND "),
            gone = v.gone,
            live = self.live.quoted(),
            on = self.key_match("d"),
            cols = list(&all_cols, ""),
            vs = (0..v.new_value.len())
                .map(|i| format!("c.\"v{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
            keys = list(self.key_names, ""),
            on_c = self.key_match("c"),
            rc = self.recheck.quoted(),
            keys_c = key_refs(self.key_idx, "c"),
        )
    }
}
