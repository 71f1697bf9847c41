//! What `init --keyed` and `capture = "managed"` read of the catalog to convert a
//! materialized view to a keyed view: the view's definition and key, the facts of each
//! base table, and the conversion [`crate::incremental`] derives and generates from
//! them (no I/O there). `init` reports and applies the result; the capture check
//! applies it again for a view whose capture a rename made stale.

use tokio_postgres::types::{ToSql, Type};

use crate::incremental::delta::{delta_plan, DeltaFacts, DeltaTable};
use crate::incremental::generate::{self, BaseTable, Facts, Generated, Grant};
use crate::incremental::{self, Catalog, Derivation};
use crate::pg::definitions::{read_relations, Relations};
use crate::pg::ident::QualifiedName;

/// One `--keyed` view and what the derivation made of it.
#[derive(Debug)]
pub struct Keyed {
    pub name: QualifiedName,
    pub oid: u32,
    /// The derivation, or why there is none (already on one line, unescaped).
    pub outcome: Result<Derivation, String>,
    /// The conversion's SQL and names, when derived.
    pub conversion: Option<Generated>,
    /// With a conversion: the fact table whose changes are applied as deltas, or why
    /// none is (on one line, unescaped).
    pub deltas: Option<Result<QualifiedName, String>>,
    /// The conversion is in place already, exactly as generated now
    /// ([`in_place_already`]): `--apply` applies nothing for it.
    pub current: bool,
}

/// The `--keyed` view itself: its kind, definition, and the key columns of the first
/// unique index REFRESH CONCURRENTLY can use (the one `init` reports; the same test as
/// [`crate::pg::catalog::usable_unique_indexes`]).
const KEYED_SQL: &str = "SELECT c.oid, c.relkind::text, \
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid, true) END, \
       (SELECT (SELECT array_agg(a.attname::text ORDER BY k.ord) \
                  FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE k.ord <= i.indnkeyatts) \
          FROM pg_catalog.pg_index i \
          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
          JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid \
           AND am.amname = 'btree' AND i.indpred IS NULL AND i.indexprs IS NULL \
           AND i.indnkeyatts > 0 AND 0 < ALL (i.indkey::int2[]) \
         ORDER BY ic.relname LIMIT 1), \
       CASE WHEN c.relkind IN ('r', 'p') THEN pg_catalog.obj_description(c.oid, 'pg_class') END, \
       pg_catalog.pg_get_userbyid(c.relowner)::text \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relname = $2";

fn relkind_name(relkind: &str) -> &'static str {
    match relkind {
        "r" => "a table",
        "p" => "a partitioned table",
        "v" => "a view",
        "f" => "a foreign table",
        "i" | "I" => "an index",
        "S" => "a sequence",
        "c" => "a composite type",
        "t" => "a TOAST table",
        _ => "not a relation refreshd knows",
    }
}

/// Reads the catalog facts and derives every `--keyed` view. An unknown name is an
/// error; a view that cannot be derived is an outcome.
///
/// The catalog is read in one read-only REPEATABLE READ transaction with
/// `search_path = pg_catalog`, so that every definition (`pg_get_viewdef`), index
/// (`pg_get_indexdef`) and type (`format_type`) is printed with every name outside
/// `pg_catalog` schema-qualified. The generated SQL then runs under
/// `search_path = pg_catalog, pg_temp` too: the consume function is SECURITY DEFINER,
/// and text resolved again under the user's search_path would let whoever can create
/// objects in one of its schemas shadow a table or function the definition names and
/// run it with the function owner's rights.
pub async fn derive_keyed(
    client: &tokio_postgres::Client,
    names: &[QualifiedName],
    in_place: bool,
) -> Result<Vec<Keyed>, String> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = pg_catalog",
        )
        .await
        .map_err(|e| {
            format!(
                "reading the catalog for --keyed: {}",
                crate::pg::connect::error_chain(&e)
            )
        })?;
    let derived = derive_keyed_in(client, names, in_place).await;
    // Read only: COMMIT and ROLLBACK end it alike.
    let end = client.batch_execute("ROLLBACK").await;
    let derived = derived?;
    end.map_err(|e| {
        format!(
            "reading the catalog for --keyed: {}",
            crate::pg::connect::error_chain(&e)
        )
    })?;
    Ok(derived)
}

/// A catalog read failed, for `--keyed`.
fn catalog_error(e: tokio_postgres::Error) -> String {
    format!(
        "reading the catalog for --keyed: {}",
        crate::pg::connect::error_chain(&e)
    )
}

/// [`derive_keyed`] inside its transaction.
async fn derive_keyed_in(
    client: &tokio_postgres::Client,
    names: &[QualifiedName],
    in_place: bool,
) -> Result<Vec<Keyed>, String> {
    let (catalog, relations) = read_relations(client).await.map_err(catalog_error)?;
    let mut out = Vec::new();
    for name in names {
        out.push(derive_one(client, name, &catalog, &relations, in_place).await?);
    }
    Ok(out)
}

/// Whether table `name`, which has no comment, was converted in place: its definition
/// view and its consume function are there (a database restored with `pg_restore
/// --no-comments` loses the comment that says so; refused as "not a materialized view"
/// before, so that neither `init --keyed` nor `managed` could convert it again).
async fn uncommented_conversion(
    client: &tokio_postgres::Client,
    name: &QualifiedName,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL \
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($2) AND c.relkind = 'v')",
            &[
                (&format!("{}()", generate::consume_function(name).quoted()), Type::TEXT),
                (&generate::definition_view(name).quoted(), Type::TEXT),
            ],
        )
        .await?;
    Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
}

/// One `--keyed` view: its derivation from the definition and key the catalog gives,
/// then its conversion.
async fn derive_one(
    client: &tokio_postgres::Client,
    name: &QualifiedName,
    catalog: &Catalog,
    relations: &Relations,
    in_place: bool,
) -> Result<Keyed, String> {
    let rows = client
        .query_typed(
            KEYED_SQL,
            &[(&name.schema, Type::TEXT), (&name.name, Type::TEXT)],
        )
        .await
        .map_err(catalog_error)?;
    let Some(r) = rows.first() else {
        return Err(format!(
            "--keyed {}: no such relation (name it as schema.view; quote mixed-case names)",
            name.shown()
        ));
    };
    let relkind: String = r.get(1);
    let mut definition: Option<String> = r.get(2);
    let key: Option<Vec<String>> = r.get(3);
    let oid: u32 = r.get(0);
    let owner: String = r.get(5);
    // A table this command converted in place before (its comment says so): converted
    // again from its definition view, e.g. to install a newer capture. The install is
    // idempotent (the table stays, its rows are recomputed in the same transaction),
    // and the rollback still restores the materialized view.
    // Without any comment (`pg_restore --no-comments`), a table beside its definition
    // view and with its consume function is one too.
    let comment = r.get::<_, Option<String>>(4);
    let ours = match &comment {
        Some(c) => c.starts_with(&generate::keyed_table_comment_prefix(name)),
        None => {
            relkind == "r"
                && uncommented_conversion(client, name)
                    .await
                    .map_err(catalog_error)?
        }
    };
    if ours && in_place {
        let def = generate::definition_view(name);
        definition = catalog
            .view_definition(&def.schema, &def.name)
            .map(str::to_string);
    }
    let derived = match derivation(name, &relkind, ours, in_place, definition, key, catalog) {
        Ok(d) => refused(client, name, oid, ours, in_place, &d.0, relations)
            .await
            .map_err(catalog_error)?
            .map_or(Ok(d), Err),
        Err(e) => Err(e),
    };
    let (outcome, conversion, deltas) = match derived {
        Err(e) => (Err(e), None, None),
        Ok((d, definition)) => {
            let facts = keyed_facts(
                client,
                (name, &owner),
                oid,
                definition,
                &d,
                relations,
                &catalog.search_path,
                in_place,
            )
            .await
            .map_err(catalog_error)?;
            convert(name, d, facts, catalog)
        }
    };
    Ok(Keyed {
        name: name.clone(),
        oid,
        outcome,
        conversion,
        deltas,
        current: false,
    })
}

/// Whether `g` is in place already, exactly as generated now ([`Generated::current`]):
/// then applying it again would only lock the base tables and recompute the view, and a
/// deployment that runs `init --keyed --apply` at each release would make writers wait
/// each time (or, with writers taking the tables in both orders, fail to get through).
pub async fn in_place_already(
    client: &tokio_postgres::Client,
    g: &Generated,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(&format!("SELECT coalesce(({}), false)", g.current), &[])
        .await?;
    Ok(row.get(0))
}

/// The columns of a table converted in place (`$1`) and of its definition view (`$2`.`$3`)
/// that are not in both: name, the table's type, the definition's (one of them NULL).
const COLUMNS_APART_SQL: &str = "WITH t AS ( \
    SELECT a.attname::text AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnum \
      FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped), \
  d AS ( \
    SELECT a.attname::text AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnum \
      FROM pg_catalog.pg_attribute a \
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $2 AND c.relname = $3 AND a.attnum > 0 AND NOT a.attisdropped) \
SELECT coalesce(t.name, d.name), t.type, d.type \
  FROM t FULL JOIN d ON d.name = t.name \
 WHERE t.name IS NULL OR d.name IS NULL OR t.type <> d.type \
 ORDER BY coalesce(t.attnum, 0), d.attnum";

/// Why a table converted in place (`oid`, named `name`) cannot be converted again as it
/// is: its columns are no longer those its definition view produces (a column added to
/// the table by hand; a type the definition produces changed, after a base column's
/// type did). Converting it again would fill the table from the definition and fail on
/// the column the definition lacks, in an error that names neither, or succeed and
/// leave every refresh failing on the type (as `check` says: the types must be the
/// same); a keyed table holds exactly what its definition produces. `None` when they
/// match.
async fn columns_apart(
    client: &tokio_postgres::Client,
    oid: u32,
    name: &QualifiedName,
) -> Result<Option<String>, tokio_postgres::Error> {
    let def = generate::definition_view(name);
    let rows = client
        .query_typed(
            COLUMNS_APART_SQL,
            &[
                (&oid, Type::OID),
                (&def.schema, Type::TEXT),
                (&def.name, Type::TEXT),
            ],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let apart: Vec<String> = rows
        .iter()
        .map(|r| {
            let column = crate::pg::ident::shown_ident(&r.get::<_, String>(0));
            match (r.get::<_, Option<String>>(1), r.get::<_, Option<String>>(2)) {
                (Some(t), Some(d)) => format!(
                    "the table has {column} as {t}, the definition produces it as {d} (ALTER TABLE {} ALTER COLUMN {} TYPE {d})",
                    name.quoted(),
                    crate::pg::ident::quote_ident(&r.get::<_, String>(0)),
                ),
                (Some(t), None) => {
                    format!("the table has {column} ({t}), which the definition does not produce")
                }
                (None, d) => format!(
                    "the definition produces {column} ({}), which the table lacks",
                    d.unwrap_or_default()
                ),
            }
        })
        .collect();
    Ok(Some(format!(
        "converted in place before, but its columns no longer match its definition view {}: {}; a keyed table holds exactly the columns its definition produces, of its types: drop the column added to the table, or rename it back, or change its type, or roll the conversion back and convert again",
        def.shown(),
        apart.join("; ")
    )))
}

/// Why a derived view cannot be converted after all, from what the catalog says beyond
/// its definition (in order: a table converted in place whose columns changed, or a view
/// converted beside it before; a partition it reads directly; a function it calls that
/// is not IMMUTABLE), or `None`.
async fn refused(
    client: &tokio_postgres::Client,
    name: &QualifiedName,
    oid: u32,
    ours: bool,
    in_place: bool,
    d: &Derivation,
    relations: &Relations,
) -> Result<Option<String>, tokio_postgres::Error> {
    let converted = if ours {
        columns_apart(client, oid, name).await?
    } else {
        converted_beside(client, name, in_place).await?
    };
    if converted.is_some() {
        return Ok(converted);
    }
    if let Some(why) = partitions_read(client, d, relations).await? {
        return Ok(Some(why));
    }
    unseen_functions(client, name, ours).await
}

/// Why a materialized view converted beside it before (`<view>_live` and `<view>_def`,
/// the definition's comment says so) cannot also be converted in place: both would
/// share the definition view, the buffers, the channel and the triggers, and the two
/// tables would consume each other's changes. `None` otherwise, and when not `in_place`
/// (converting beside again is what a re-run does).
async fn converted_beside(
    client: &tokio_postgres::Client,
    name: &QualifiedName,
    in_place: bool,
) -> Result<Option<String>, tokio_postgres::Error> {
    if !in_place {
        return Ok(None);
    }
    let def = generate::definition_view(name);
    let row = client
        .query_one(
            "SELECT coalesce(pg_catalog.starts_with(pg_catalog.obj_description(pg_catalog.to_regclass($1), 'pg_class'), $2), false)",
            &[&def.quoted(), &generate::DEFINITION_COMMENT_PREFIX],
        )
        .await?;
    Ok(row.get::<_, bool>(0).then(|| {
        format!(
            "converted beside it already ({} kept from {}): roll that conversion back first (its rollback file), or convert it again without --in-place",
            generate::live_table(name).shown(),
            def.shown()
        )
    }))
}

/// Why a view reading a partition directly (not its root) cannot be kept by capture:
/// a write through the partitioned table fires that table's statement triggers, not the
/// partition's, and its transition tables hold the rows of every partition alike.
/// `None` when it reads none.
async fn partitions_read(
    client: &tokio_postgres::Client,
    d: &Derivation,
    relations: &Relations,
) -> Result<Option<String>, tokio_postgres::Error> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = d
        .tables
        .iter()
        .filter_map(|t| relations.get(&t.table))
        .map(|(n, _)| (n.schema.as_str(), n.name.as_str()))
        .unzip();
    let rows = client
        .query_typed(
            "SELECT x.s, x.n FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(s, n, o) \
               JOIN pg_catalog.pg_namespace ns ON ns.nspname = x.s \
               JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = x.n \
              WHERE c.relispartition ORDER BY x.o",
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    let read: Vec<String> = rows
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)).shown())
        .collect();
    Ok((!read.is_empty()).then(|| {
        format!(
            "the definition reads partition {} directly: a write through its partitioned table fires only that table's statement triggers, whose rows no capture can tell apart from its other partitions'; read the partitioned table (with a WHERE on its partition key) or keep it a materialized view",
            read.join(", ")
        )
    }))
}

/// Functions of the user's (any schema but `pg_catalog`) that are not IMMUTABLE, called
/// by the definition or by a plain view it reads, from the rules' recorded
/// dependencies: `schema.name(args)` and its volatility.
const UNSEEN_FUNCTIONS_SQL: &str = "WITH RECURSIVE rel (oid) AS ( \
    SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2 \
    UNION \
    SELECT v.oid FROM rel JOIN pg_catalog.pg_rewrite r ON r.ev_class = rel.oid \
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
      JOIN pg_catalog.pg_class v ON v.oid = d.refobjid AND v.relkind = 'v' AND v.oid <> rel.oid) \
SELECT DISTINCT p.oid::pg_catalog.regprocedure::text, p.provolatile::text \
  FROM rel JOIN pg_catalog.pg_rewrite r ON r.ev_class = rel.oid \
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
  JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
 WHERE pn.nspname <> 'pg_catalog' AND p.provolatile <> 'i' \
 ORDER BY 1";

/// Why a view calling a function of the user's that is not IMMUTABLE cannot be kept by
/// capture: its value may change with no write to a table the view reads (a table the
/// function reads, a setting, the clock), which no trigger sees, and a VOLATILE one
/// changes from call to call (in a key, no group could be found again). `None` when
/// it calls none. PostgreSQL's own functions are judged by the derivation. `ours`: `name`
/// is a table this command converted in place.
async fn unseen_functions(
    client: &tokio_postgres::Client,
    name: &QualifiedName,
    ours: bool,
) -> Result<Option<String>, tokio_postgres::Error> {
    // Converted in place before: the definition is in its definition view.
    let read = if ours {
        generate::definition_view(name)
    } else {
        name.clone()
    };
    let rows = client
        .query_typed(
            UNSEEN_FUNCTIONS_SQL,
            &[(&read.schema, Type::TEXT), (&read.name, Type::TEXT)],
        )
        .await?;
    let named: Vec<String> = rows
        .iter()
        .map(|r| {
            let kind = match r.get::<_, String>(1).as_str() {
                "v" => "volatile",
                _ => "stable",
            };
            format!("{} ({kind})", r.get::<_, String>(0))
        })
        .collect();
    Ok((!named.is_empty()).then(|| {
        format!(
            "the definition calls {}: a function that is not IMMUTABLE may return another value with no write to a table the view reads, which no capture sees; keep it a materialized view (or declare the function IMMUTABLE if it is)",
            named.join(", ")
        )
    }))
}

/// A `--keyed` relation's derivation and definition, or why there is none: a
/// materialized view, or a table converted in place before (`ours`, converted again
/// only with `--in-place`).
fn derivation(
    name: &QualifiedName,
    relkind: &str,
    ours: bool,
    in_place: bool,
    definition: Option<String>,
    key: Option<Vec<String>>,
    catalog: &Catalog,
) -> Result<(Derivation, String), String> {
    let def_view = || generate::definition_view(name).shown();
    let (definition, key) = match (ours, in_place, definition, key) {
        (true, false, ..) => {
            return Err(format!(
                "already converted in place by `refreshd init --keyed --in-place` (a table kept equal to {}): add --in-place to convert it again",
                def_view()
            ))
        }
        (true, true, None, _) => {
            return Err(format!(
                "converted in place before, but its definition view {} is gone: restore it, or drop the table and create the materialized view again",
                def_view()
            ))
        }
        (true, true, _, None) => {
            return Err(
                "converted in place before, but the table has no unique index on its key"
                    .to_string(),
            )
        }
        (false, ..) if relkind != "m" => {
            return Err(format!(
                "not a materialized view (it is {})",
                relkind_name(relkind)
            ))
        }
        (false, _, _, None) => {
            return Err(
                "no unique index usable by REFRESH CONCURRENTLY: the view has no key to maintain it by"
                    .to_string(),
            )
        }
        (false, _, None, _) => return Err("its definition could not be read".to_string()),
        (_, _, Some(def), Some(key)) => (def, key),
    };
    let key: Vec<&str> = key.iter().map(String::as_str).collect();
    incremental::derive(&definition, &key, catalog)
        .map_err(|e| e.reason)
        .map(|d| (d, definition))
}

/// What [`Keyed`] holds of a derivation: the outcome, the conversion, the deltas.
type Converted = (
    Result<Derivation, String>,
    Option<Generated>,
    Option<Result<QualifiedName, String>>,
);

/// The conversion of a derived view, with deltas when a fact table takes them.
fn convert(
    name: &QualifiedName,
    mut d: Derivation,
    facts: Result<(Facts, Vec<DeltaTable>), String>,
    catalog: &Catalog,
) -> Converted {
    // Row-level security: which rows the view's owner sees depends on columns the
    // definition may not read (a policy on a status column). An UPDATE of any column
    // can move a row in or out of the view, so every column counts as read.
    if let Ok((_, tables)) = &facts {
        for t in &mut d.tables {
            if let Some(dt) = tables.iter().find(|x| x.table == t.table && x.row_security) {
                t.reads = dt.columns.iter().map(|(c, _)| c.clone()).collect();
            }
        }
    }
    let (mut f, delta_tables, g) =
        match facts.and_then(|(f, dt)| generate::generate(&d, &f).map(|g| (f, dt, g))) {
            Err(e) => return (Err(e), None, None),
            Ok(x) => x,
        };
    let plan = delta_plan(
        &d,
        &DeltaFacts {
            view: name,
            live: &g.table,
            definition: &f.definition,
            columns: &f.columns,
            equality: &f.equality,
            catalog,
            tables: &delta_tables,
            fact: None,
        },
    );
    match plan {
        Err(no) => (Ok(d), Some(g), Some(Err(no.reason))),
        Ok(p) => {
            let fact = p.fact_name.clone();
            f.delta = Some(p);
            match generate::generate(&d, &f) {
                Ok(with) => (Ok(d), Some(with), Some(Ok(fact))),
                Err(e) => (
                    Ok(d),
                    Some(g),
                    Some(Err(format!("the delta plan does not fit: {e}"))),
                ),
            }
        }
    }
}

/// The materialized view's columns with their types, their collations where not
/// their type's (schema-qualified and quoted; NULL otherwise), and the equality operator
/// of their type's default btree operator class (a domain's: its base type's) when it
/// is not in `pg_catalog`, as `OPERATOR(schema.name)` (NULL otherwise); for a domain,
/// its base type (through domains over domains; NULL otherwise).
const COLUMNS_SQL: &str =
    "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation \
            THEN pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END, \
       (SELECT 'OPERATOR(' || pg_catalog.quote_ident(opn.nspname) || '.' || o.oprname || ')' \
          FROM pg_catalog.pg_opclass oc \
          JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod AND am.amname = 'btree' \
          JOIN pg_catalog.pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amopmethod = am.oid \
           AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype AND ao.amopstrategy = 3 \
          JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr \
          JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace \
         WHERE oc.opcdefault AND opn.nspname <> 'pg_catalog' \
           AND oc.opcintype = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END \
         LIMIT 1), \
       CASE WHEN ty.typtype = 'd' THEN \
         (WITH RECURSIVE b(t, m) AS (SELECT ty.typbasetype, ty.typtypmod \
            UNION ALL SELECT bt.typbasetype, bt.typtypmod FROM b JOIN pg_catalog.pg_type bt ON bt.oid = b.t \
             WHERE bt.typtype = 'd') \
          SELECT pg_catalog.format_type(b.t, b.m) FROM b JOIN pg_catalog.pg_type x ON x.oid = b.t \
           WHERE x.typtype <> 'd') END \
  FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
  LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
  LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
 ORDER BY a.attnum";

/// Its indexes, as `CREATE INDEX` statements.
const INDEXES_SQL: &str = "SELECT pg_catalog.pg_get_indexdef(i.indexrelid) \
  FROM pg_catalog.pg_index i WHERE i.indrelid = $1 ORDER BY i.indexrelid";

/// Its ACL, one privilege a row (grantee NULL for PUBLIC).
const GRANTS_SQL: &str = "SELECT a.privilege_type::text, \
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, \
       a.is_grantable \
  FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a WHERE c.oid = $1 \
 ORDER BY 2 NULLS FIRST, 1";

/// The partitions of a partitioned table, at every level below it (not one a `DETACH
/// ... CONCURRENTLY` left pending: no query reads it any more), and the inheritance
/// children of a plain table (`INHERITS`): the view reads their rows through it, but a
/// write straight into one fires only its own triggers, so it is captured like a
/// partition.
const PARTITIONS_SQL: &str = "WITH RECURSIVE tree (relid, level) AS ( \
    SELECT i.inhrelid, 1 FROM pg_catalog.pg_inherits i \
      JOIN pg_catalog.pg_class c ON c.oid = i.inhparent \
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2 \
       AND NOT coalesce((pg_catalog.to_jsonb(i) ->> 'inhdetachpending')::boolean, false) \
    UNION \
    SELECT i.inhrelid, t.level + 1 FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.relid \
     WHERE NOT coalesce((pg_catalog.to_jsonb(i) ->> 'inhdetachpending')::boolean, false)) \
SELECT pn.nspname::text, pc.relname::text \
  FROM (SELECT relid, min(level) AS level FROM tree GROUP BY relid) t \
  JOIN pg_catalog.pg_class pc ON pc.oid = t.relid \
  JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
 ORDER BY t.level, pn.nspname, pc.relname";

/// A table's columns whose type has no default btree or hash operator class (no
/// equality an `EXCEPT` can use), as PostgreSQL finds one: for the type (a domain's
/// base type), for a type it is binary-coercible to (`varchar` has none of its own and
/// uses `text`'s; `cidr`, `inet`'s), or a generic class (an enum, a range; an array of
/// a type that has one). Before, varchar, enum, range and array columns all counted as
/// without equality, so that an UPDATE of any column of a table the view reads one of
/// them from buffered its rows (found by a review: nearly every TPC-H text column is
/// varchar).
static INCOMPARABLE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // A default btree or hash operator class for type `t` (a SQL expression giving its
    // oid) or for a type it is implicitly binary-coercible to.
    let has = |t: &str| {
        format!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod \
              WHERE oc.opcdefault AND am.amname IN ('btree', 'hash') \
                AND (oc.opcintype = {t} OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast k \
                      WHERE k.castsource = {t} AND k.casttarget = oc.opcintype \
                        AND k.castmethod = 'b' AND k.castcontext = 'i')))"
        )
    };
    format!(
        "SELECT a.attname::text \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
           JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
           JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END \
          WHERE n.nspname = $1 AND c.relname = $2 \
            AND NOT ({} \
                 OR (bt.typtype = 'e' AND {}) \
                 OR (bt.typtype = 'r' AND {}) \
                 OR (bt.typcategory = 'A' AND bt.typelem <> 0 AND {} \
                     AND (SELECT {} OR et.typtype = 'e' FROM pg_catalog.pg_type et WHERE et.oid = bt.typelem)))",
        has("bt.oid"),
        has("'pg_catalog.anyenum'::pg_catalog.regtype"),
        has("'pg_catalog.anyrange'::pg_catalog.regtype"),
        has("'pg_catalog.anyarray'::pg_catalog.regtype"),
        has("et.oid"),
    )
});

/// A table's generated columns whose value its statement triggers' transition tables
/// may not hold ([`BaseTable::generated`]): VIRTUAL ones (`attgenerated` 'v', PostgreSQL
/// 18), STORED ones of a partitioned table or a partition.
const GENERATED_SQL: &str = "SELECT a.attname::text \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
 WHERE n.nspname = $1 AND c.relname = $2 \
   AND (a.attgenerated = 'v' OR (a.attgenerated = 's' AND (c.relkind = 'p' OR c.relispartition)))";

/// A table's row-level security as it applies to the role running init: enabled,
/// bypassed by that role, and whether a policy reads the role evaluating it.
const ROW_SECURITY_SQL: &str = "SELECT c.relrowsecurity, \
       (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER) \
         OR (pg_catalog.pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity), \
       c.relrowsecurity AND EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid \
         AND concat_ws(' ', pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)) \
             OPERATOR(pg_catalog.~*) '(\\m(current_user|current_role|session_user|system_user|user)\\M|has_[a-z_]*_privilege|pg_has_role|row_security_active)') \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relname = $2";

/// A base table's columns for the delta plan: name, type (with a `COLLATE` clause when
/// the column's collation is not its type's), NOT NULL (validated: PostgreSQL 18 sets
/// `attnotnull` for a `NOT VALID` constraint too), and the estimated rows of the
/// table with all its partitions (`pg_partition_tree` gives no row for a table outside
/// a partition tree, so the table itself is counted by its oid; a table never analyzed
/// counts a row per 100 bytes of its size).
const DELTA_COLUMNS_SQL: &str = "SELECT a.attname::text, \
       pg_catalog.format_type(a.atttypid, a.atttypmod) || \
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation \
            THEN ' COLLATE ' || pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) \
            ELSE '' END, \
       a.attnotnull AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k \
         WHERE k.conrelid = a.attrelid AND k.contype = 'n' AND k.conkey[1] = a.attnum AND NOT k.convalidated), \
       (SELECT pg_catalog.sum(CASE WHEN pc.reltuples > 0 THEN pc.reltuples \
                                   ELSE pg_catalog.pg_relation_size(pc.oid) / 100.0 END)::float8 \
          FROM pg_catalog.pg_class pc \
         WHERE pc.oid = c.oid \
            OR pc.oid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree(c.oid) t)) \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
  JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid \
  LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
  LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
 WHERE n.nspname = $1 AND c.relname = $2 \
 ORDER BY a.attnum";

/// The catalog facts of a `--keyed` view's conversion ([`generate::generate`]'s input,
/// and each base table's for [`delta_plan`]); `Ok(Err)` when a base table is not in the
/// catalog read.
#[allow(clippy::too_many_arguments)]
async fn keyed_facts(
    client: &tokio_postgres::Client,
    (view, owner): (&QualifiedName, &str),
    oid: u32,
    definition: String,
    d: &Derivation,
    relations: &Relations,
    search_path: &[String],
    in_place: bool,
) -> Result<Result<(Facts, Vec<DeltaTable>), String>, tokio_postgres::Error> {
    let rows = client
        .query_typed(COLUMNS_SQL, &[(&oid, Type::OID)])
        .await?;
    let columns = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let collations = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(2).map(|c| (r.get(0), c)))
        .collect();
    let equality = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(3).map(|op| (r.get(0), op)))
        .collect();
    let domains = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(4).map(|base| (r.get(0), base)))
        .collect();
    let indexes = client
        .query_typed(INDEXES_SQL, &[(&oid, Type::OID)])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let grants = client
        .query_typed(GRANTS_SQL, &[(&oid, Type::OID)])
        .await?
        .iter()
        .map(|r| Grant {
            privilege: r.get(0),
            grantee: r.get(1),
            grantable: r.get(2),
        })
        .collect();
    let mut tables = Vec::new();
    let mut delta_tables = Vec::new();
    for t in &d.tables {
        let Some((name, relkind)) = relations.get(&t.table) else {
            return Ok(Err(format!("base table {} is not in the catalog", t.table)));
        };
        let (base, delta) = table_facts(client, &t.table, name, *relkind).await?;
        tables.push(base);
        delta_tables.push(delta);
    }
    Ok(Ok((
        Facts {
            view: view.clone(),
            definition,
            columns,
            collations,
            equality,
            domains,
            search_path: search_path.to_vec(),
            tables,
            indexes,
            grants,
            owner: Some(owner.to_string()),
            in_place,
            delta: None,
        },
        delta_tables,
    )))
}

/// One base table's catalog facts: for the capture ([`BaseTable`]) and for the delta
/// plan ([`DeltaTable`]).
async fn table_facts(
    client: &tokio_postgres::Client,
    table: &str,
    name: &QualifiedName,
    relkind: char,
) -> Result<(BaseTable, DeltaTable), tokio_postgres::Error> {
    let by_name: &[(&(dyn ToSql + Sync), Type)] =
        &[(&name.schema, Type::TEXT), (&name.name, Type::TEXT)];
    let mut partitions = Vec::new();
    if relkind == 'p' || relkind == 'r' {
        for r in client.query_typed(PARTITIONS_SQL, by_name).await? {
            partitions.push(QualifiedName::new(
                r.get::<_, String>(0),
                r.get::<_, String>(1),
            ));
        }
    }
    let incomparable: Vec<String> = client
        .query_typed(INCOMPARABLE.as_str(), by_name)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let generated: Vec<String> = client
        .query_typed(GENERATED_SQL, by_name)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let facts = client.query_typed(ROW_SECURITY_SQL, by_name).await?;
    let row_security = facts.first().is_some_and(|r| r.get::<_, bool>(0));
    let row_security_bypassed = facts
        .first()
        .is_some_and(|r| r.get::<_, Option<bool>>(1).unwrap_or(false));
    let policy_reads_role = facts
        .first()
        .is_some_and(|r| r.get::<_, Option<bool>>(2).unwrap_or(false));
    let rows = client.query_typed(DELTA_COLUMNS_SQL, by_name).await?;
    let delta = DeltaTable {
        table: table.to_string(),
        name: name.clone(),
        columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        not_null: rows
            .iter()
            .filter(|r| r.get::<_, bool>(2))
            .map(|r| r.get(0))
            .collect(),
        incomparable: incomparable.clone(),
        generated: generated.clone(),
        row_security,
        estimated_rows: rows
            .first()
            .and_then(|r| r.get::<_, Option<f64>>(3))
            .unwrap_or(0.0),
    };
    let base = BaseTable {
        table: table.to_string(),
        name: name.clone(),
        relkind,
        partitions,
        incomparable,
        generated,
        row_security: row_security && !row_security_bypassed,
        policy_reads_role,
    };
    Ok((base, delta))
}

/// How long an applied conversion waits for each lock: less than the server's
/// `deadlock_timeout` (1 s by default), so that where it and a writer wait for each
/// other it gives up first (and tries again) instead of a writer's transaction failing.
pub const LOCK_WAIT: &str = "500ms";

/// How many times a conversion is tried when it meets concurrent writers.
pub const APPLY_ATTEMPTS: u64 = 10;

/// Runs `install` (one transaction, `BEGIN;\n` ... `COMMIT;`, sent as one simple query:
/// on an error the server skips the rest) with each lock waited for at most
/// [`LOCK_WAIT`]; on an error the transaction is rolled back and nothing was changed.
pub async fn apply(
    client: &tokio_postgres::Client,
    install: &str,
) -> Result<(), tokio_postgres::Error> {
    let applied = install.replacen(
        "BEGIN;\n",
        &format!("BEGIN;\nSET LOCAL lock_timeout = '{LOCK_WAIT}';\n"),
        1,
    );
    let done = client.batch_execute(&applied).await;
    if done.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done
}

/// Whether [`apply`] failed for concurrent writers only (a deadlock, a serialization
/// failure, a lock waited for longer than [`LOCK_WAIT`]): writers holding locks on the
/// tables the install takes one by one. Nothing was changed, and another attempt, from
/// a fresh read of the catalog, usually gets through.
pub fn met_writers(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("40P01" | "40001" | "55P03")
    )
}

/// The materialized views of a schema, for [`converted_from`].
const MATVIEWS_OF_SQL: &str = "SELECT c.relname::text FROM pg_catalog.pg_class c \
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE n.nspname = $1 AND c.relkind = 'm' ORDER BY 1";

/// What keyed view `table`, whose definition view is `query`, was converted from: the
/// materialized view's name and whether in place. In place, `table` is that name (its
/// definition view is `<table>_def`); otherwise the materialized view is still there,
/// beside `table` (`<view>_live`) and `query` (`<view>_def`). `None`: neither (a keyed
/// view written by hand, or its materialized view dropped since).
async fn converted_from(
    client: &tokio_postgres::Client,
    table: &QualifiedName,
    query: &QualifiedName,
) -> Result<Option<(QualifiedName, bool)>, tokio_postgres::Error> {
    if generate::definition_view(table) == *query {
        return Ok(Some((table.clone(), true)));
    }
    let rows = client
        .query_typed(MATVIEWS_OF_SQL, &[(&query.schema, Type::TEXT)])
        .await?;
    Ok(rows.iter().find_map(|r| {
        let m = QualifiedName::new(query.schema.clone(), r.get::<_, String>(0));
        (generate::definition_view(&m) == *query && generate::live_table(&m) == *table)
            .then_some((m, false))
    }))
}

/// Converts keyed view `table` (definition view `query`) again, as `refreshd init
/// --keyed VIEW [--in-place] --apply` does, from its definition as it reads now: its
/// capture generated for the names it reads now, its rows recomputed, in one
/// transaction (tried [`APPLY_ATTEMPTS`] times against concurrent writers), each
/// statement of which may take `statement_timeout` (the view's: 0 for none). What
/// `capture = "managed"` does when a rename made the capture stale (every write to the
/// renamed table failed). `Err`: why not, on one line.
pub async fn convert_again(
    client: &tokio_postgres::Client,
    table: &QualifiedName,
    query: &QualifiedName,
    statement_timeout: std::time::Duration,
) -> Result<(), String> {
    let chain = |e: tokio_postgres::Error| crate::pg::connect::error_chain(&e);
    let Some((view, in_place)) = converted_from(client, table, query).await.map_err(chain)? else {
        return Err(format!(
            "the materialized view it was converted from (beside {query}) is gone, and converting again starts from it: create it again (its definition is {query}'s) and run `refreshd init --keyed VIEW --apply`, or drop {table} and its configuration block"
        ));
    };
    let mut attempt = 1;
    loop {
        let mut keyed = derive_keyed(client, std::slice::from_ref(&view), in_place).await?;
        let k = keyed.pop().expect("one view asked, one derived");
        let g = match (k.outcome, k.conversion) {
            (Ok(_), Some(g)) => g,
            (Err(why), _) => return Err(format!("{view} cannot be derived now: {why}")),
            (Ok(_), None) => {
                let why = match k.deltas {
                    Some(Err(why)) => why,
                    _ => "no conversion was generated".to_string(),
                };
                return Err(format!("{view} cannot be converted now: {why}"));
            }
        };
        if in_place_already(client, &g).await.map_err(chain)? {
            // Its names read again as generated (a rename undone, say).
            return Ok(());
        }
        let install = format!(
            "BEGIN;\nSET LOCAL statement_timeout = {};\n{}\nCOMMIT;\n",
            statement_timeout.as_millis(),
            g.install
        );
        match apply(client, &install).await {
            Ok(()) => return Ok(()),
            Err(e) if met_writers(&e) && attempt < APPLY_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(format!("converting {view} again: {}", chain(e))),
        }
    }
}
