//! What the catalog says about a configured view: does it exist, can refreshd refresh
//! it, and what feeds it.

use std::collections::HashMap;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::config::{Detect, ViewConfig};
use crate::pg::ident::QualifiedName;

/// A relation a view reads, directly or through plain views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRelation {
    pub oid: u32,
    pub name: QualifiedName,
    /// `r` table, `p` partitioned table, `m` materialized view, `f` foreign table.
    pub relkind: char,
}

/// A trigger on a base table that can NOTIFY one of the view's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedingTrigger {
    pub table: QualifiedName,
    pub trigger: String,
    pub channel: String,
    pub statement_level: bool,
}

/// The catalog's facts about one materialized view.
#[derive(Debug, Clone)]
pub struct ViewFacts {
    pub oid: u32,
    pub relkind: char,
    pub populated: bool,
    pub owner: String,
    pub may_refresh: bool,
    /// Unique indexes REFRESH CONCURRENTLY can use, as `name (columns)`.
    pub usable_unique_indexes: Vec<String>,
    pub base: Vec<BaseRelation>,
    pub triggers: Vec<FeedingTrigger>,
    /// User-defined functions the query calls (for `detect = "statistics"`).
    pub functions: Vec<String>,
    /// `server_version_num`.
    pub server_version: i32,
    /// On PostgreSQL 17+, functions the query calls that have no `SET search_path` of
    /// their own: REFRESH runs them with `search_path = pg_catalog, pg_temp`.
    pub unpinned_functions: Vec<String>,
}

/// `None` when no relation of that name exists.
pub async fn inspect(
    client: &Client,
    view: &ViewConfig,
) -> Result<Option<ViewFacts>, tokio_postgres::Error> {
    Ok(inspect_many(client, &[view]).await?.pop().flatten())
}

/// [`inspect`] for many views in a fixed number of queries whatever their number (one
/// query per view made `check` take minutes at 10,000 views).
pub async fn inspect_many(
    client: &Client,
    views: &[&ViewConfig],
) -> Result<Vec<Option<ViewFacts>>, tokio_postgres::Error> {
    let version = server_version(client).await?;
    let mut out = relations(client, views, version).await?;
    let matviews: Vec<u32> = out
        .iter()
        .flatten()
        .filter(|f| f.relkind == 'm')
        .map(|f| f.oid)
        .collect();
    if matviews.is_empty() {
        return Ok(out);
    }
    let mut indexes = usable_unique_indexes_many(client, &matviews).await?;
    let mut base = relations_read_many(client, &matviews, "'v'").await?;
    // Through materialized views too, for the triggers that feed them eventually: only
    // views that read one differ from `base`.
    let layered: Vec<u32> = base
        .iter()
        .filter(|(_, b)| b.iter().any(|r| r.relkind == 'm'))
        .map(|(oid, _)| *oid)
        .collect();
    let mut tables = relations_read_many(client, &layered, "'v', 'm'").await?;
    for (oid, b) in &base {
        tables.entry(*oid).or_insert_with(|| b.clone());
    }
    let mut table_oids: Vec<u32> = tables.values().flatten().map(|b| b.oid).collect();
    table_oids.sort_unstable();
    table_oids.dedup();
    let triggers = triggers_of(client, &table_oids).await?;
    let statistics: Vec<u32> = views
        .iter()
        .zip(&out)
        .filter(|(v, f)| {
            v.detect == Detect::Statistics && f.as_ref().is_some_and(|f| f.relkind == 'm')
        })
        .filter_map(|(_, f)| f.as_ref().map(|f| f.oid))
        .collect();
    let mut functions = called_functions_many(client, &statistics, false).await?;
    let mut unpinned = if version >= 170000 {
        called_functions_many(client, &matviews, true).await?
    } else {
        HashMap::new()
    };
    for (v, f) in views.iter().zip(out.iter_mut()) {
        let Some(f) = f.as_mut().filter(|f| f.relkind == 'm') else {
            continue;
        };
        f.usable_unique_indexes = indexes.remove(&f.oid).unwrap_or_default();
        f.base = base.remove(&f.oid).unwrap_or_default();
        f.triggers = feeding_triggers(v, tables.get(&f.oid).map_or(&[], Vec::as_slice), &triggers);
        if v.detect == Detect::Statistics {
            f.functions = functions.remove(&f.oid).unwrap_or_default();
        }
        f.unpinned_functions = unpinned.remove(&f.oid).unwrap_or_default();
    }
    Ok(out)
}

/// Each view's relation (kind, owner, whether refreshd's role may refresh it), when one
/// of that name exists; the rest of the facts empty.
async fn relations(
    client: &Client,
    views: &[&ViewConfig],
    version: i32,
) -> Result<Vec<Option<ViewFacts>>, tokio_postgres::Error> {
    // PostgreSQL 17 lets non-owners refresh with the MAINTAIN privilege.
    let may_refresh = if version >= 170000 {
        "pg_has_role(current_user, c.relowner, 'USAGE') OR has_table_privilege(c.oid, 'MAINTAIN')"
    } else {
        "pg_has_role(current_user, c.relowner, 'USAGE')"
    };
    let sql = format!(
        "SELECT v.ord::int8, c.oid, c.relkind::text, c.relispopulated, pg_get_userbyid(c.relowner)::text, {may_refresh} \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(schema, name, ord) \
         JOIN pg_catalog.pg_namespace n ON n.nspname = v.schema \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = v.name"
    );
    let schemas: Vec<&str> = views.iter().map(|v| v.name.schema.as_str()).collect();
    let names: Vec<&str> = views.iter().map(|v| v.name.name.as_str()).collect();
    let rows = client
        .query_typed(
            &sql,
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    let mut out: Vec<Option<ViewFacts>> = vec![None; views.len()];
    for row in &rows {
        let Some(slot) = (row.get::<_, i64>(0) as usize)
            .checked_sub(1)
            .and_then(|i| out.get_mut(i))
        else {
            continue;
        };
        let relkind: String = row.get(2);
        *slot = Some(ViewFacts {
            oid: row.get(1),
            relkind: relkind.chars().next().unwrap_or('?'),
            populated: row.get(3),
            owner: row.get(4),
            may_refresh: row.get(5),
            usable_unique_indexes: Vec::new(),
            base: Vec::new(),
            triggers: Vec::new(),
            functions: Vec::new(),
            server_version: version,
            unpinned_functions: Vec::new(),
        });
    }
    Ok(out)
}

/// Enabled user triggers on the tables a view reads whose function body or arguments
/// name one of its channels, sorted. This reads code: a trigger *could* notify.
fn feeding_triggers(
    view: &ViewConfig,
    tables: &[BaseRelation],
    triggers: &HashMap<u32, Vec<(String, String, bool)>>,
) -> Vec<FeedingTrigger> {
    let mut out = Vec::new();
    for t in tables {
        for (trigger, text, statement_level) in triggers.get(&t.oid).into_iter().flatten() {
            for ch in view
                .channels
                .iter()
                .filter(|c| crate::pg::capture::names_channel(text, c))
            {
                out.push(FeedingTrigger {
                    table: t.name.clone(),
                    trigger: trigger.clone(),
                    channel: ch.clone(),
                    statement_level: *statement_level,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.table.schema, &a.table.name, &a.trigger, &a.channel).cmp(&(
            &b.table.schema,
            &b.table.name,
            &b.trigger,
            &b.channel,
        ))
    });
    out
}

/// Enabled user triggers of the tables: per table, (name, function source and
/// arguments, statement level).
async fn triggers_of(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, Vec<(String, String, bool)>>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT t.tgrelid, t.tgname::text, {} || ' ' || encode(t.tgargs, 'escape'), (t.tgtype & 1) = 0 \
                   FROM pg_catalog.pg_trigger t \
                   JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
                  WHERE t.tgrelid = ANY ($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D'",
                crate::pg::capture::TRIGGER_SOURCE_SQL
            ),
            &[(&oids, Type::OID_ARRAY)],
        )
        .await?;
    let mut out: HashMap<u32, Vec<(String, String, bool)>> = HashMap::new();
    for r in &rows {
        out.entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2), r.get(3)));
    }
    Ok(out)
}

/// [`usable_unique_indexes`] of many relations in one query.
async fn usable_unique_indexes_many(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT i.indrelid, ic.relname::text, \
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) \
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE k.ord <= i.indnkeyatts) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = ANY ($1) AND i.indisunique AND i.indimmediate AND i.indisvalid \
               AND am.amname = 'btree' AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND i.indnkeyatts > 0 AND 0 < ALL (i.indkey::int2[]) \
             ORDER BY i.indrelid, ic.relname",
            &[(&oids, Type::OID_ARRAY)],
        )
        .await?;
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().push(format!(
            "{} ({})",
            r.get::<_, String>(1),
            r.get::<_, Option<String>>(2).unwrap_or_default()
        ));
    }
    Ok(out)
}

/// The same test PostgreSQL makes before `REFRESH ... CONCURRENTLY`
/// (`is_usable_unique_index` in matview.c): a valid, immediate, unique btree index on
/// plain columns, with no predicate and no expression.
pub async fn usable_unique_indexes(
    client: &Client,
    oid: u32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT ic.relname::text, \
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) \
                       FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                      WHERE k.ord <= i.indnkeyatts) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indisvalid \
               AND am.amname = 'btree' AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND i.indnkeyatts > 0 AND 0 < ALL (i.indkey::int2[]) \
             ORDER BY ic.relname",
            &[(&oid, Type::OID)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "{} ({})",
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1).unwrap_or_default()
            )
        })
        .collect())
}

/// The relations a materialized view reads, found through its rewrite rule's
/// dependencies and followed through plain views. Partitioned tables bring their
/// partitions, and tables their inheritance children (`INHERITS`), at every level: their
/// own triggers and counters matter too.
pub async fn base_relations(
    client: &Client,
    oid: u32,
) -> Result<Vec<BaseRelation>, tokio_postgres::Error> {
    relations_read(client, oid, "'v'").await
}

/// Like [`base_relations`], but also through materialized views: the tables whose
/// changes reach this view eventually, for finding the triggers that feed it.
pub async fn transitive_tables(
    client: &Client,
    oid: u32,
) -> Result<Vec<BaseRelation>, tokio_postgres::Error> {
    relations_read(client, oid, "'v', 'm'").await
}

async fn relations_read(
    client: &Client,
    oid: u32,
    through: &str,
) -> Result<Vec<BaseRelation>, tokio_postgres::Error> {
    Ok(relations_read_many(client, &[oid], through)
        .await?
        .remove(&oid)
        .unwrap_or_default())
}

/// The relations each of `roots` reads (see [`base_relations`]), in one query.
async fn relations_read_many(
    client: &Client,
    roots: &[u32],
    through: &str,
) -> Result<HashMap<u32, Vec<BaseRelation>>, tokio_postgres::Error> {
    let sql = format!(
        "WITH RECURSIVE reads(root, relid) AS ( \
            SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r \
              JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
               AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
             WHERE r.ev_class = ANY ($1) AND d.refobjid <> r.ev_class \
            UNION \
            SELECT reads.root, d.refobjid FROM reads \
              JOIN pg_catalog.pg_class c ON c.oid = reads.relid AND c.relkind IN ({through}) \
              JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid \
              JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
               AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
             WHERE d.refobjid <> c.oid \
         ), leaves(root, oid) AS ( \
            SELECT reads.root, c.oid FROM reads JOIN pg_catalog.pg_class c ON c.oid = reads.relid \
             WHERE c.relkind IN ('r', 'p', 'm', 'f') AND c.oid <> reads.root \
            UNION \
            SELECT leaves.root, i.inhrelid FROM leaves JOIN pg_catalog.pg_inherits i ON i.inhparent = leaves.oid \
         ) \
         SELECT leaves.root, c.oid, n.nspname::text, c.relname::text, c.relkind::text \
           FROM leaves JOIN pg_catalog.pg_class c ON c.oid = leaves.oid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          ORDER BY leaves.root, n.nspname, c.relname"
    );
    let roots: Vec<u32> = roots.to_vec();
    let rows = client
        .query_typed(&sql, &[(&roots, Type::OID_ARRAY)])
        .await?;
    let mut out: HashMap<u32, Vec<BaseRelation>> = HashMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().push(BaseRelation {
            oid: r.get(1),
            name: QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            relkind: r.get::<_, String>(4).chars().next().unwrap_or('?'),
        });
    }
    Ok(out)
}

/// What `run` needs to know of a view at startup and on reload.
#[derive(Debug, Clone)]
pub struct StartupFacts {
    pub oid: u32,
    pub relkind: char,
    pub has_usable_unique_index: bool,
    /// Relations read directly or through plain views (see [`base_relations`]); for a
    /// keyed view, those its query reads.
    pub base: Vec<BaseRelation>,
    /// A keyed view (its table is refreshed like a materialized view).
    pub keyed: bool,
}

/// [`StartupFacts`] of every view, in two queries whatever their number (`None` for a
/// name no relation has).
pub async fn startup_facts(
    client: &Client,
    views: &[ViewConfig],
) -> Result<Vec<Option<StartupFacts>>, tokio_postgres::Error> {
    // A keyed view's query is looked up too (after the views): its reads are the
    // keyed view's.
    let queries: Vec<(usize, &QualifiedName)> = views
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.keyed.as_ref().map(|k| (i, &k.query)))
        .collect();
    let all_names = views
        .iter()
        .map(|v| &v.name)
        .chain(queries.iter().map(|q| q.1));
    let schemas: Vec<&str> = all_names.clone().map(|n| n.schema.as_str()).collect();
    let names: Vec<&str> = all_names.map(|n| n.name.as_str()).collect();
    let rows = client
        .query_typed(
            "SELECT v.ord::int8, c.oid, c.relkind::text, EXISTS ( \
                 SELECT 1 FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                 JOIN pg_catalog.pg_am am ON am.oid = ic.relam \
                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid \
                   AND am.amname = 'btree' AND i.indpred IS NULL AND i.indexprs IS NULL \
                   AND i.indnkeyatts > 0 AND 0 < ALL (i.indkey::int2[])) \
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(schema, name, ord) \
               JOIN pg_catalog.pg_namespace n ON n.nspname = v.schema \
               JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = v.name",
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    let mut out: Vec<Option<StartupFacts>> = vec![None; views.len()];
    let mut query_oids: Vec<Option<u32>> = vec![None; queries.len()];
    let mut matviews = Vec::new();
    for r in &rows {
        let ord = r.get::<_, i64>(0) as usize - 1;
        let relkind = r.get::<_, String>(2).chars().next().unwrap_or('?');
        let oid: u32 = r.get(1);
        if relkind == 'm' || (ord >= views.len() && relkind == 'v') {
            matviews.push(oid);
        }
        if ord >= views.len() {
            query_oids[ord - views.len()] = Some(oid);
            continue;
        }
        if let Some(slot) = out.get_mut(ord) {
            *slot = Some(StartupFacts {
                oid,
                relkind,
                has_usable_unique_index: r.get(3),
                base: Vec::new(),
                keyed: false,
            });
        }
    }
    let mut bases = relations_read_many(client, &matviews, "'v'").await?;
    for ((i, _), q) in queries.iter().zip(&query_oids) {
        if let (Some(f), Some(q)) = (out[*i].as_mut(), q) {
            f.base = bases.get(q).cloned().unwrap_or_default();
            f.keyed = true;
        }
    }
    for f in out.iter_mut().flatten().filter(|f| !f.keyed) {
        f.base = bases.remove(&f.oid).unwrap_or_default();
    }
    Ok(out)
}

/// `server_version_num`.
pub async fn server_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let rows = client
        .query_typed("SELECT current_setting('server_version_num')::int", &[])
        .await?;
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

/// User-defined functions the view's query calls (directly or in plain views it
/// reads). Tables such a function reads are invisible to the catalog's dependencies,
/// so statistics detection cannot watch them. With `unpinned`, only those (in
/// languages other than C and internal) without a `SET search_path` clause.
pub async fn called_functions(
    client: &Client,
    oid: u32,
    unpinned: bool,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(called_functions_many(client, &[oid], unpinned)
        .await?
        .remove(&oid)
        .unwrap_or_default())
}

/// [`called_functions`] of many views in one query.
async fn called_functions_many(
    client: &Client,
    oids: &[u32],
    unpinned: bool,
) -> Result<HashMap<u32, Vec<String>>, tokio_postgres::Error> {
    if oids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query_typed(
            "WITH RECURSIVE rels(root, relid) AS ( \
                SELECT o, o FROM unnest($1::oid[]) AS o \
                UNION \
                SELECT rels.root, d.refobjid FROM rels \
                  JOIN pg_catalog.pg_rewrite r ON r.ev_class = rels.relid \
                  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
                   AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                  JOIN pg_catalog.pg_class c ON c.oid = d.refobjid AND c.relkind = 'v' \
             ) \
             SELECT DISTINCT rels.root, p.oid::regprocedure::text \
               FROM rels \
               JOIN pg_catalog.pg_rewrite r ON r.ev_class = rels.relid \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
                AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_proc'::regclass \
               JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                AND (NOT $2 OR (p.prolang NOT IN (SELECT l.oid FROM pg_catalog.pg_language l \
                                                  WHERE l.lanname IN ('internal', 'c')) \
                     AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}'::text[])) AS g(setting) \
                                     WHERE g.setting LIKE 'search_path=%'))) \
              ORDER BY 1, 2",
            &[(&oids, Type::OID_ARRAY), (&unpinned, Type::BOOL)],
        )
        .await?;
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(out)
}

/// `detect = "statistics"`: what is watched; true when something is.
fn judge_statistics(view: &ViewConfig, f: &ViewFacts, r: &mut ViewReport) -> bool {
    let mut fed = false;
    let tables: Vec<String> = f
        .base
        .iter()
        .filter(|b| matches!(b.relkind, 'r' | 'p' | 'm'))
        .map(|b| b.name.to_string())
        .collect();
    if tables.is_empty() {
        r.problems.push(
            "detect = \"statistics\" but the view reads no table whose statistics could be watched"
                .into(),
        );
    } else {
        fed = true;
        r.facts.push(format!(
            "detect statistics every {} on {}",
            humantime::format_duration(view.poll_interval),
            tables.join(", ")
        ));
        if !f.functions.is_empty() {
            r.warnings.push(format!(
                "calls function(s) {}: tables they read are invisible to statistics detection",
                f.functions.join(", ")
            ));
        }
        if f.server_version < 150000 {
            r.warnings.push(
                "PostgreSQL 13/14 send table statistics through the statistics collector (UDP, flushed at most every 500 ms, dropped under load): a change may be seen late, or only with the next change; prefer NOTIFY triggers on this version".into(),
            );
        }
    }
    fed
}

/// `detect = "notify"`: which triggers feed the channels; true when one does.
fn judge_notify(view: &ViewConfig, f: &ViewFacts, r: &mut ViewReport) -> bool {
    let mut fed = false;
    for ch in &view.channels {
        let trigs: Vec<&FeedingTrigger> = f.triggers.iter().filter(|t| &t.channel == ch).collect();
        if trigs.is_empty() {
            r.warnings.push(format!(
                "channel {ch}: no trigger on the view's base tables mentions it (notifications can still come from the application)"
            ));
        } else {
            fed = true;
            let mut tables: Vec<String> = trigs.iter().map(|t| t.table.to_string()).collect();
            tables.dedup();
            r.facts.push(format!(
                "fed by {ch} via {} trigger(s) on {}",
                trigs.len(),
                tables.join(", ")
            ));
            let row_level: Vec<&str> = trigs
                .iter()
                .filter(|t| !t.statement_level)
                .map(|t| t.trigger.as_str())
                .collect();
            if !row_level.is_empty() {
                r.warnings.push(format!(
                    "row-level NOTIFY trigger(s) {}: FOR EACH STATEMENT is enough and cheaper",
                    row_level.join(", ")
                ));
            }
        }
    }
    fed
}

/// The verdict on one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// `check`'s findings on one view.
#[derive(Debug, Clone)]
pub struct ViewReport {
    pub verdict: Verdict,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub facts: Vec<String>,
}

/// Judges the facts against the view's configuration.
/// `managed` are the names of every configured view: reading one of them means being
/// refreshed after it.
pub fn judge(
    view: &ViewConfig,
    facts: Option<&ViewFacts>,
    managed: &std::collections::HashSet<QualifiedName>,
) -> ViewReport {
    let mut r = ViewReport {
        verdict: Verdict::Ok,
        problems: Vec::new(),
        warnings: Vec::new(),
        facts: Vec::new(),
    };
    match facts {
        Some(f) if f.relkind == 'm' => {
            judge_refreshable(view, f, &mut r);
            judge_feeds(view, f, managed, &mut r);
        }
        other => r.problems.push(not_a_matview(other)),
    }
    r.verdict = if !r.problems.is_empty() {
        Verdict::Fail
    } else if !r.warnings.is_empty() {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    r
}

/// The problem with a relation that is not a materialized view (or is missing).
fn not_a_matview(facts: Option<&ViewFacts>) -> String {
    let Some(f) = facts else {
        return "does not exist (or refreshd's role cannot see it)".into();
    };
    let what = match f.relkind {
        'r' => "a table",
        'v' => "a plain view",
        'p' => "a partitioned table",
        'f' => "a foreign table",
        _ => "some other relation",
    };
    format!("is {what}, not a materialized view")
}

/// Whether refreshd can refresh the view as configured: populated, a unique index for
/// REFRESH CONCURRENTLY, a role that may, functions that survive PostgreSQL 17's
/// search_path.
fn judge_refreshable(view: &ViewConfig, f: &ViewFacts, r: &mut ViewReport) {
    if f.populated {
        r.facts.push("populated".into());
    } else {
        r.warnings.push(
            "not populated: the first refresh is a plain REFRESH, which locks out readers while it runs".into(),
        );
    }
    match (f.usable_unique_indexes.first(), view.concurrently) {
        (Some(ix), true) => r.facts.push(format!("unique index {ix}")),
        (Some(_), false) => r.facts.push("concurrently = false: plain REFRESH (blocks readers)".into()),
        (None, true) => r.problems.push(
            "no unique index usable by REFRESH CONCURRENTLY (needs a unique index on plain columns, without WHERE or expressions); create one or set concurrently = false".into(),
        ),
        (None, false) => r.facts.push("no unique index; concurrently = false: plain REFRESH (blocks readers)".into()),
    }
    if f.may_refresh {
        r.facts.push(format!("owner {}", f.owner));
    } else {
        r.problems.push(format!(
            "the connected role may not refresh it: it is owned by {} and REFRESH needs the owner or a member of the owning role",
            f.owner
        ));
    }
}

/// Whether something makes the view stale-then-fresh: its detection, a schedule, the
/// materialized views it reads. Nothing at all is a problem without channels, a warning
/// with them (the application may NOTIFY them itself, SPEC `check`).
fn judge_feeds(
    view: &ViewConfig,
    f: &ViewFacts,
    managed: &std::collections::HashSet<QualifiedName>,
    r: &mut ViewReport,
) {
    let mut fed = match view.detect {
        Detect::Statistics => judge_statistics(view, f, r),
        Detect::Notify => judge_notify(view, f, r),
    };
    if !f.unpinned_functions.is_empty() {
        r.warnings.push(format!(
            "calls function(s) without SET search_path: {}. PostgreSQL 17+ runs REFRESH with search_path = pg_catalog, pg_temp, so they must schema-qualify what they use (or ALTER FUNCTION ... SET search_path = ...)",
            f.unpinned_functions.join(", ")
        ));
    }
    if let Some(s) = &view.schedule {
        fed = true;
        r.facts.push(format!("schedule \"{}\"", s.expr));
    }
    fed |= judge_layers(f, managed, r);
    if !fed {
        if view.channels.is_empty() {
            r.problems.push(
                "nothing feeds it: no channels, no schedule (only forced refreshes would run)"
                    .to_string(),
            );
        } else {
            // The application may NOTIFY the channels itself (SPEC, `check`): a warning,
            // already given per channel above, and a summary of what that means.
            r.warnings.push(
                "no trigger on its base tables notifies its channels and it has no schedule: it is refreshed only when the application NOTIFYs them itself".to_string(),
            );
        }
    }
}

/// The materialized views the view reads: refreshd's (refreshed first, so they feed
/// it) and others (a warning). Whether one of refreshd's is read.
fn judge_layers(
    f: &ViewFacts,
    managed: &std::collections::HashSet<QualifiedName>,
    r: &mut ViewReport,
) -> bool {
    // A configured view read as a table: a keyed view's table (a materialized view
    // converted in place), refreshed by refreshd like a materialized view.
    let (lower, unmanaged): (Vec<&BaseRelation>, Vec<&BaseRelation>) = f
        .base
        .iter()
        .filter(|b| b.relkind == 'm' || managed.contains(&b.name))
        .partition(|b| managed.contains(&b.name));
    if !lower.is_empty() {
        let names: Vec<String> = lower.iter().map(|b| b.name.to_string()).collect();
        r.facts.push(format!(
            "reads materialized view(s) {}: refreshed after them",
            names.join(", ")
        ));
    }
    if !unmanaged.is_empty() {
        let names: Vec<String> = unmanaged.iter().map(|b| b.name.to_string()).collect();
        r.warnings.push(format!(
            "reads materialized view(s) {} that refreshd does not manage: their staleness passes into this view",
            names.join(", ")
        ));
    }
    !lower.is_empty()
}
