//! What the incremental wing needs of the catalog to derive a view's maintenance
//! ([`crate::incremental::derive`]): every relation a definition can name, the foreign
//! keys, and the plain views' definitions. Read by `init --keyed` and by `check` (which
//! says, per base table of a keyed view, how its changes reach the keys: SPEC
//! "Incremental maintenance").

use std::collections::HashMap;

use tokio_postgres::types::Type;

use crate::incremental::{self, generate, Catalog, Relation, RelationKind};
use crate::pg::ident::QualifiedName;

/// Every relation a definition can name (user schemas): kind, columns, and a plain
/// view's definition.
const RELATIONS_SQL: &str = "SELECT n.nspname::text, c.relname::text, c.relkind::text, \
       CASE WHEN c.relkind = 'v' THEN pg_catalog.pg_get_viewdef(c.oid, true) END, \
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum), \
       ARRAY(SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'";

/// The foreign keys a guard may rely on (incremental::inserts): validated, not
/// deferrable, enforced (`conenforced`, PostgreSQL 18, read through `to_jsonb`), not
/// temporal (`conperiod`, PostgreSQL 18: a `PERIOD` key is satisfied by referenced rows
/// whose ranges together cover the referencing one, so a referencing row does not match
/// exactly one referenced row by equality, which the guards assume), not a partition's
/// clone of its parent's key, between tables without inheritance children other than
/// partitions; with their columns pairwise, in the key's order.
const FOREIGN_KEYS_SQL: &str = "SELECT c.oid::int8, c.conname::text, rn.nspname::text, r.relname::text, \
       fn.nspname::text, f.relname::text, \
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i) \
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), \
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i) \
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) \
  FROM pg_catalog.pg_constraint c \
  JOIN pg_catalog.pg_class r ON r.oid = c.conrelid JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace \
  JOIN pg_catalog.pg_class f ON f.oid = c.confrelid JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace \
 WHERE c.contype = 'f' AND c.convalidated AND NOT c.condeferrable AND c.conparentid = 0 \
   AND (pg_catalog.to_jsonb(c) ->> 'conenforced') IS DISTINCT FROM 'false' \
   AND (pg_catalog.to_jsonb(c) ->> 'conperiod') IS DISTINCT FROM 'true' \
   AND (r.relkind = 'p' OR NOT r.relhassubclass) AND (f.relkind = 'p' OR NOT f.relhassubclass)";

/// `schema.name` (as the derivation names tables) → the name and relkind.
pub type Relations = HashMap<String, (QualifiedName, char)>;

/// Every relation a definition can name, with the session's search_path.
pub async fn read_relations(
    client: &tokio_postgres::Client,
) -> Result<(Catalog, Relations), tokio_postgres::Error> {
    let mut catalog = Catalog::new();
    let mut relations = Relations::new();
    for r in client.query_typed(RELATIONS_SQL, &[]).await? {
        let relkind = r.get::<_, String>(2);
        relations.insert(
            format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                relkind.chars().next().unwrap_or('?'),
            ),
        );
        let kind = match relkind.as_str() {
            "v" => RelationKind::View {
                definition: r.get::<_, Option<String>>(3).unwrap_or_default(),
            },
            "m" => RelationKind::MaterializedView,
            _ => RelationKind::Table,
        };
        catalog.add(Relation {
            schema: r.get(0),
            name: r.get(1),
            kind,
            columns: r.get(4),
            types: r.get(5),
        });
    }
    for r in client.query_typed(FOREIGN_KEYS_SQL, &[]).await? {
        catalog.foreign_keys.push(incremental::ForeignKey {
            oid: u32::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            name: r.get(1),
            table: format!("{}.{}", r.get::<_, String>(2), r.get::<_, String>(3)),
            columns: r.get(6),
            references: format!("{}.{}", r.get::<_, String>(4), r.get::<_, String>(5)),
            ref_columns: r.get(7),
        });
    }
    if let Some(r) = client
        .query_typed("SELECT pg_catalog.current_schemas(false)::text[]", &[])
        .await?
        .first()
    {
        catalog.search_path = r.get(0);
    }
    Ok((catalog, relations))
}

/// How each keyed view's maintenance derives from its definition (`query`, a plain
/// view) and `key`: one line per base table (carries the key, join path, or recompute
/// everything, with why) and per column (`column ...`), as `init --keyed` prints them;
/// `Err` with the reason when it cannot be derived (its groups are then recomputed as
/// the keyed refresh always does). The catalog (definitions included) is read once for
/// all of them, in one
/// read-only transaction with `search_path = pg_catalog` so that each definition names
/// every other schema.
pub async fn derivation_lines(
    client: &tokio_postgres::Client,
    views: &[KeyedLines<'_>],
) -> Result<Vec<Result<Derived, String>>, tokio_postgres::Error> {
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = pg_catalog",
        )
        .await?;
    let read = read_relations(client).await;
    let mut deltas = Ok(Vec::new());
    if read.is_ok() {
        deltas = comments(client, views).await;
    }
    // Read only: COMMIT and ROLLBACK end it alike.
    let end = client.batch_execute("ROLLBACK").await;
    let (catalog, relations) = read?;
    let deltas = deltas?;
    end?;
    let mut out = Vec::new();
    for (v, deltas) in views.iter().zip(deltas) {
        let Some(definition) = catalog.view_definition(&v.query.schema, &v.query.name) else {
            out.push(Err(format!("{} is not a plain view", v.query)));
            continue;
        };
        let key: Vec<&str> = v.key.iter().map(String::as_str).collect();
        match incremental::derive(definition, &key, &catalog) {
            Ok(d) => out.push(Ok(Derived {
                lines: lines(&d, deltas),
                warnings: unindexed_lookups(client, &d, &relations).await?,
            })),
            Err(e) => out.push(Err(e.reason)),
        }
    }
    Ok(out)
}

/// What `check` says of a keyed view's derivation: its lines (facts) and its warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub lines: Vec<String>,
    pub warnings: Vec<String>,
}

/// Tables of more than this many rows (estimated) looked up with no index: a warning.
const LARGE_TABLE_ROWS: f64 = 10_000.0;

/// A table's estimated rows (its partitions' too) and whether a valid index of it, not
/// partial, leads with the column.
const LOOKUP_SQL: &str = "SELECT (SELECT pg_catalog.sum(CASE WHEN pc.reltuples > 0 THEN pc.reltuples \
                                   ELSE pg_catalog.pg_relation_size(pc.oid) / 100.0 END)::float8 \
          FROM pg_catalog.pg_class pc \
         WHERE pc.oid = c.oid OR pc.oid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t)), \
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                WHERE i.indrelid = c.oid AND a.attname = $3 AND i.indisvalid AND i.indpred IS NULL) \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relname = $2";

/// The lookups a refresh makes to turn a table's changed rows into keys along its join
/// paths (each step: the next table by its joined column) that no index serves, on
/// large tables: each changed row then scans the table (a review found a refresh 200
/// times slower than a REFRESH of the same query, TPC-H's `part` reaching its key
/// through `lineitem.l_partkey`, which TPC-H does not index). One warning per lookup,
/// with the index that serves it.
async fn unindexed_lookups(
    client: &tokio_postgres::Client,
    d: &incremental::Derivation,
    relations: &Relations,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut warnings = Vec::new();
    for t in &d.tables {
        let incremental::How::JoinPath { paths, .. } = &t.how else {
            continue;
        };
        // Each step's table by its qualified name (a step names it as printed).
        let steps = paths
            .iter()
            .flat_map(|p| p.steps.iter().zip(p.tables.iter().skip(1)));
        for (step, table) in steps {
            let lookup = (table.clone(), step.to_column.clone());
            if seen.contains(&lookup) {
                continue;
            }
            seen.push(lookup);
            let Some((name, _)) = relations.get(table) else {
                continue;
            };
            let rows = client
                .query_typed(
                    LOOKUP_SQL,
                    &[
                        (&name.schema, Type::TEXT),
                        (&name.name, Type::TEXT),
                        (&step.to_column, Type::TEXT),
                    ],
                )
                .await?;
            let Some(r) = rows.first() else { continue };
            let size = r.get::<_, Option<f64>>(0).unwrap_or(0.0);
            if size > LARGE_TABLE_ROWS && !r.get::<_, bool>(1) {
                let changed = relations
                    .get(&t.table)
                    .map_or(t.name.clone(), |(n, _)| n.shown());
                warnings.push(format!(
                    "a change to {changed} is joined to {} by {} at the refresh, and no index leads with that column: each changed row scans ~{size:.0} rows (CREATE INDEX ON {} ({}))",
                    name.shown(),
                    crate::pg::ident::shown_ident(&step.to_column),
                    name.quoted(),
                    crate::pg::ident::quote_ident(&step.to_column),
                ));
            }
        }
    }
    Ok(warnings)
}

/// A keyed view as `check` derives it: its definition view, key, table and consume
/// function (`buffer`, when its capture is generated).
pub struct KeyedLines<'a> {
    pub query: &'a QualifiedName,
    pub key: &'a [String],
    pub table: &'a QualifiedName,
    pub buffer: Option<&'a QualifiedName>,
}

/// What each view's consume function's comment says of deltas (see [`lines`]).
async fn comments(
    client: &tokio_postgres::Client,
    views: &[KeyedLines<'_>],
) -> Result<Vec<Option<Option<String>>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for v in views {
        out.push(match v.buffer {
            Some(b) => consume_comment(client, b)
                .await?
                .and_then(|c| generate::deltas_of_comment(&c, v.table)),
            None => None,
        });
    }
    Ok(out)
}

/// The comment of the consume function `buffer`, if it exists.
async fn consume_comment(
    client: &tokio_postgres::Client,
    buffer: &QualifiedName,
) -> Result<Option<String>, tokio_postgres::Error> {
    let signature = format!("{}()", buffer.quoted());
    let row = client
        .query_one(
            "SELECT pg_catalog.obj_description(pg_catalog.to_regprocedure($1::text), 'pg_proc')",
            &[&signature],
        )
        .await?;
    Ok(row.get(0))
}

/// The derivation's lines, with what the installed capture does about deltas
/// (`deltas`: from the consume function's comment; `None` when it does not say): the
/// fact table's changes are applied as deltas whatever its derivation, and without
/// deltas no column is one.
fn lines(d: &incremental::Derivation, deltas: Option<Option<String>>) -> Vec<String> {
    let fact = deltas.clone().flatten();
    let tables = d.tables.iter().map(|t| match &fact {
        Some(f) if *f == t.table => format!(
            "{}: its changed rows, applied to their groups as deltas",
            t.name
        ),
        _ => t.to_string(),
    });
    let columns = d.columns.iter().map(|c| match (&c.class, &deltas) {
        (incremental::ColumnClass::Delta { .. }, Some(None)) => format!(
            "column {}: recompute the group (the view takes no deltas: `init --keyed` says why)",
            c.name
        ),
        _ => format!("column {c}"),
    });
    tables.chain(columns).collect()
}
