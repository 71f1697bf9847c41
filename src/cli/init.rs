//! `refreshd init --url DSN [--schema S]... [--sql DIR] [--apply] [--keyed VIEW]... [--in-place]`: adopt refreshd on an
//! existing database. Reads the catalog and prints a complete, commented configuration
//! for every materialized view; with `--sql DIR` it also writes refreshd's schema (SQL
//! control, capture function) and the statement-level NOTIFY triggers the base tables
//! and every partition need (install and rollback files); `--apply` applies the same SQL
//! in one transaction, idempotently. Without `--apply` nothing is changed.
//!
//! `--keyed VIEW` derives incremental maintenance for a materialized view from its own
//! SQL ([`crate::incremental`]), reports it in comments above the view's block and
//! converts it to a keyed view ([`crate::incremental::generate`]; SPEC "Keyed refresh"):
//! the install SQL creates `<view>_def` (a plain view holding the definition),
//! `<view>_live` (the table refreshd keeps, with a unique index on the key) and the
//! capture triggers sending channel `refreshd_keys_<schema>_<view>`; the config gets a
//! `kind = "keyed"` block for them next to the materialized view, which stays. With
//! `--in-place` the materialized view itself gives way to a table of the same name,
//! columns, types, indexes and grants, its definition kept as `<view>_def`, and the
//! view's block becomes the keyed one; the rollback restores the materialized view.
//! Names over 63 bytes are cut and end in a hash. Without `--sql DIR` or `--apply`
//! nothing is changed and the keyed block is printed commented out. A view that cannot
//! be derived is reported with the reason (exit 1) and left as it is.
//!
//! Channels: a base table that already has a trigger notifying a constant channel
//! (`pg_notify('chan', ...)` or `NOTIFY chan` in its function) keeps that channel, so a
//! schema like the seeds' is adopted as it is; every other base table gets a channel of
//! its own, `refreshd_<schema>_<table>`, and a trigger in the SQL. A partitioned table and
//! all its partitions share their root's channel (each with its own trigger: statement
//! triggers are not cloned to partitions). A view listens on
//! the channels of the tables it reads directly or through plain views; views it reads
//! are refreshed first by dependency, so their tables are not repeated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

use tokio_postgres::types::Type;

use crate::cli::{EXIT_OK, EXIT_PROBLEMS};
use crate::engine::startup::topological_order;
use crate::incremental::generate::Generated;
use crate::pg::capture;
use crate::pg::catalog::{base_relations, usable_unique_indexes, BaseRelation};
use crate::pg::conversion::{self, derive_keyed, Keyed, APPLY_ATTEMPTS};
use crate::pg::ident::{
    escape_display, escape_line, quote_ident, sql_comment, validate_channel, QualifiedName,
    MAX_IDENTIFIER_BYTES,
};

/// One materialized view as `init` sees it.
#[derive(Debug, Clone)]
struct Found {
    oid: u32,
    name: QualifiedName,
    owner: String,
    may_refresh: bool,
    populated: bool,
    unique_index: Option<String>,
    base: Vec<BaseRelation>,
}

/// A base table and the channel that announces its changes.
#[derive(Debug, Clone)]
struct Feed {
    table: QualifiedName,
    relkind: char,
    /// The root of its partition tree (itself when it is not a partition).
    root: QualifiedName,
    channel: String,
    /// An existing (hand-written) trigger already notifies `channel`.
    existing: bool,
    /// refreshd's capture trigger is already installed, enabled, with `channel`.
    installed: bool,
}

/// What `init` was asked to do.
pub struct Options<'a> {
    /// Only views in these schemas; every user schema when empty.
    pub schemas: &'a [String],
    /// Write the install and rollback SQL here.
    pub sql_dir: Option<&'a Path>,
    /// Apply that SQL.
    pub apply: bool,
    /// `--keyed`: derive incremental maintenance for these views (reported only).
    pub keyed: &'a [QualifiedName],
    /// `--in-place`: accepted with `--keyed`; nothing is converted yet.
    pub in_place: bool,
}

/// Runs the command; returns the exit code.
pub async fn run(url: &str, opts: &Options<'_>) -> u8 {
    match produce(url, opts).await {
        Ok(keyed) => report_keyed(&keyed, opts),
        Err(e) => {
            eprintln!("refreshd init: {}", escape_line(&e));
            EXIT_PROBLEMS
        }
    }
}

/// No materialized view in `schemas` (every user schema when empty): not an error (a
/// database may have none yet), but a misspelt `--schema` printed an empty
/// configuration without a word.
fn say_none_found(schemas: &[String]) {
    let shown: Vec<String> = schemas
        .iter()
        .map(|s| crate::pg::ident::shown_ident(s))
        .collect();
    let place = if shown.is_empty() {
        "any user schema".to_string()
    } else {
        format!("schema {}", shown.join(", "))
    };
    eprintln!("refreshd init: no materialized view in {place}");
}

/// Reads the catalog, derives the `--keyed` views, writes and applies the SQL as asked
/// and prints the configuration; `Err`: the one line saying why nothing (more) was done.
async fn produce(url: &str, opts: &Options<'_>) -> Result<Vec<Keyed>, String> {
    let (sql_dir, apply) = (opts.sql_dir, opts.apply);
    let (client, target, conn_dsn) = connect(url).await?;
    let mut attempt = 1;
    let mut forgotten: Vec<String>;
    let (keyed, config) = loop {
        let plan = read(&client, opts.schemas)
            .await
            .map_err(|e| format!("reading the catalog: {e}"))?;
        if attempt == 1 && plan.views.is_empty() && opts.keyed.is_empty() {
            say_none_found(opts.schemas);
        }
        let mut keyed = derive_keyed(&client, opts.keyed, opts.in_place).await?;
        let converting = sql_dir.is_some() || apply;
        let config = plan.config(&target, &conn_dsn, &keyed, converting);
        forgotten = plan
            .forgotten(&keyed)
            .iter()
            .map(|t| t.to_string())
            .collect();
        let (install, rollback) = plan.sql(&keyed);
        if apply {
            for k in &mut keyed {
                if let Some(g) = &k.conversion {
                    k.current = conversion::in_place_already(&client, g)
                        .await
                        .map_err(|e| {
                            format!(
                                "reading the catalog: {}",
                                crate::pg::connect::error_chain(&e)
                            )
                        })?;
                }
            }
        }
        if let Some(dir) = sql_dir {
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(dir.join(INSTALL), &install))
                .and_then(|()| std::fs::write(dir.join(ROLLBACK), &rollback))
                .and_then(|()| std::fs::write(dir.join(VALIDATE), plan.validate_sql(&keyed)))
                .map_err(|e| format!("writing {}: {e}", dir.display()))?;
        }
        if !apply {
            break (keyed, config);
        }
        // What is in place already as generated is not applied again (the file keeps
        // it: applied by hand, it converts again).
        let install = if keyed.iter().any(|k| k.current) {
            plan.sql_skipping(&keyed, true).0
        } else {
            install
        };
        // One transaction; each lock waited for at most LOCK_WAIT (see `apply`).
        match conversion::apply(&client, &install).await {
            Ok(()) => break (keyed, config),
            Err(e) => {
                let why = crate::pg::connect::error_chain(&e);
                if conversion::met_writers(&e) && attempt < APPLY_ATTEMPTS {
                    eprintln!(
                        "refreshd init: applying the SQL met concurrent writers (nothing was changed: {}); trying again ({} of {APPLY_ATTEMPTS})",
                        escape_line(&why),
                        attempt + 1
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                    attempt += 1;
                    continue;
                }
                return Err(format!("applying the SQL (nothing was changed): {why}"));
            }
        }
    };
    crate::cli::emit(&config);
    report_written(sql_dir, apply, &forgotten);
    Ok(keyed)
}

/// What `init` wrote and applied, and the keyed views an earlier run converted that the
/// printed configuration lacks ([`Plan::forgotten`]), on stderr.
fn report_written(sql_dir: Option<&Path>, apply: bool, forgotten: &[String]) {
    for t in forgotten {
        eprintln!(
            "refreshd init: keyed view {} (converted by an earlier init --keyed) is not in this configuration: keep its [[view]] block, or run init again with --keyed for it",
            escape_line(t)
        );
    }
    if let Some(dir) = sql_dir {
        eprintln!(
            "refreshd init: wrote {}, {} and {}{}",
            dir.join(INSTALL).display(),
            dir.join(ROLLBACK).display(),
            dir.join(VALIDATE).display(),
            if apply {
                " (applied)"
            } else {
                " (not applied: review, then psql -f, or run again with --apply)"
            }
        );
    } else if apply {
        eprintln!("refreshd init: applied the change capture and refreshd's schema");
    }
}

/// Prints what became of each `--keyed` view; the exit code (problems when one could
/// not be derived).
fn report_keyed(keyed: &[Keyed], opts: &Options<'_>) -> u8 {
    let mut derived = 0;
    let mut refused = 0;
    for k in keyed {
        match &k.outcome {
            Ok(_) => derived += 1,
            Err(reason) => {
                refused += 1;
                eprintln!(
                    "refreshd init: --keyed {}: cannot be derived: {}",
                    k.name.shown(),
                    escape_line(reason)
                );
            }
        }
    }
    for k in keyed.iter().filter(|k| k.outcome.is_ok()) {
        if let Some(g) = &k.conversion {
            report_conversion(k, g, opts);
        }
    }
    if opts.in_place && derived == 0 {
        eprintln!("refreshd init: --in-place: nothing converted");
    }
    if refused > 0 {
        return EXIT_PROBLEMS;
    }
    EXIT_OK
}

/// The lines for one derived `--keyed` view: its deltas, and whether it was converted.
fn report_conversion(k: &Keyed, g: &Generated, opts: &Options<'_>) {
    let what = format!(
        "--keyed {}: keyed view {} (definition {}, channel {})",
        k.name.shown(),
        g.table.shown(),
        g.definition.shown(),
        escape_line(&g.channel)
    );
    match &k.deltas {
        Some(Ok(fact)) => eprintln!(
            "refreshd init: --keyed {}: deltas: fact table {}",
            k.name.shown(),
            fact.shown()
        ),
        Some(Err(reason)) => eprintln!(
            "refreshd init: --keyed {}: no deltas: {}",
            k.name.shown(),
            escape_line(reason)
        ),
        None => {}
    }
    if opts.apply && k.current {
        eprintln!("refreshd init: {what}: {IN_PLACE_ALREADY}");
    } else if opts.apply {
        eprintln!("refreshd init: {what}: converted");
    } else if opts.sql_dir.is_some() {
        eprintln!("refreshd init: {what}: the install SQL converts it (not applied)");
    } else {
        eprintln!("refreshd init: {what}: {NOT_CONVERTED}");
    }
}

/// Printed for a `--keyed` view without `--sql DIR` or `--apply`: nothing is changed,
/// its keyed block is printed commented out.
pub const NOT_CONVERTED: &str =
    "not converted: nothing is changed without --sql DIR or --apply (the keyed block below is commented out)";

/// Printed with `--apply` for a `--keyed` view converted already exactly as it would
/// be now.
pub const IN_PLACE_ALREADY: &str =
    "converted already, exactly as now generated (its triggers, buffers and functions in place): nothing applied for it (nothing locked, nothing recomputed)";

/// Printed for a `--keyed` view whose conversion is written (`--sql DIR`) or applied.
pub const CONVERTED: &str =
    "converted by the install SQL (applied with --apply; undone by the rollback SQL)";

/// The comment lines reporting one `--keyed` view; `converting`: its SQL is written or
/// applied (`--sql DIR`, `--apply`).
fn keyed_comments(out: &mut String, k: &Keyed, converting: bool) {
    match &k.outcome {
        Ok(d) => {
            comment(
                out,
                &format!(
                    "--keyed {}: incremental maintenance derived from its definition",
                    k.name
                ),
            );
            comment(
                out,
                "(per base table: carries the key / join path / recompute everything; then per column)",
            );
            // One comment per entry (not per line of the Display: a name may hold a
            // line break, which `comment` escapes).
            comment(out, &format!("key ({})", d.key.join(", ")));
            // With deltas, the fact table's changes are applied as such whatever its
            // key derivation says; without, no column is a delta (as `check` says).
            let fact = match &k.deltas {
                Some(Ok(f)) => Some(format!("{}.{}", f.schema, f.name)),
                _ => None,
            };
            let no_deltas = matches!(&k.deltas, Some(Err(_)));
            for t in &d.tables {
                comment(out, &t.to_string());
                if fact.as_deref() == Some(t.table.as_str()) {
                    comment(
                        out,
                        &format!("  (with deltas: the changed rows of {} are applied to their groups as such; the line above is how its keys are found otherwise)", t.name),
                    );
                }
            }
            for c in &d.columns {
                if no_deltas && matches!(c.class, crate::incremental::ColumnClass::Delta { .. }) {
                    comment(
                        out,
                        &format!("  {}: recompute the group (no deltas: see below)", c.name),
                    );
                } else {
                    comment(out, &format!("  {c}"));
                }
            }
            if let Some(g) = &k.conversion {
                comment(
                    out,
                    &format!(
                        "keyed conversion: table {}, definition {}, channel {}",
                        g.table, g.definition, g.channel
                    ),
                );
                if g.table == k.name {
                    comment(out, "in place: the materialized view becomes a table of the same name, columns, types, indexes and grants; the rollback restores it");
                }
                for line in &g.capture {
                    comment(out, &format!("capture: {line}"));
                }
                match &k.deltas {
                    Some(Ok(fact)) => comment(out, &format!("deltas: fact table {fact}")),
                    Some(Err(reason)) => comment(out, &format!("no deltas: {reason}")),
                    None => {}
                }
            }
            if converting {
                comment(out, CONVERTED);
            } else {
                comment(out, NOT_CONVERTED);
            }
        }
        Err(reason) => {
            comment(
                out,
                &format!("--keyed {}: cannot be derived: {reason}", k.name),
            );
            comment(
                out,
                "it stays a materialized view refreshed whole, as before",
            );
        }
    }
}

/// Install and rollback file names under `--sql DIR`.
pub const INSTALL: &str = "001_refreshd_triggers.sql";
pub const ROLLBACK: &str = "001_refreshd_triggers.rollback.sql";
/// ... and the validation file (read-only; raises on the first check that fails).
pub const VALIDATE: &str = "001_refreshd_triggers.validate.sql";

async fn connect(url: &str) -> Result<(tokio_postgres::Client, String, String), String> {
    let cfg = tokio_postgres::Config::from_str(url).map_err(|_| {
        "--url: not a connection string (postgresql://user@host:port/db or key=value pairs)"
            .to_string()
    })?;
    // The configuration printed names the same server, never the password.
    let mut dsn = Vec::new();
    if let Some(h) = cfg.get_hosts().first() {
        match h {
            tokio_postgres::config::Host::Tcp(h) => dsn.push(format!("host={h}")),
            tokio_postgres::config::Host::Unix(p) => dsn.push(format!("host={}", p.display())),
        }
    }
    if let Some(p) = cfg.get_ports().first() {
        dsn.push(format!("port={p}"));
    }
    if let Some(u) = cfg.get_user() {
        dsn.push(format!("user={u}"));
    }
    if let Some(d) = cfg.get_dbname() {
        dsn.push(format!("dbname={d}"));
    }
    let db = crate::config::DatabaseConfig {
        url: crate::config::UrlSource::Inline(url.to_string()),
        password_file: None,
        listen_url: None,
        max_concurrent_refreshes: 1,
        connect_timeout: std::time::Duration::from_secs(10),
    };
    let info = crate::pg::connect::ConnectInfo::for_refresh(&db, Path::new("."))
        .map_err(|e| e.to_string())?;
    let client = info.connect().await.map_err(|e| e.to_string())?;
    Ok((client, info.target().to_string(), dsn.join(" ")))
}

/// Everything `init` prints and writes.
struct Plan {
    /// In dependency order.
    views: Vec<Found>,
    /// View index → the indexes of the found views it reads.
    reads: Vec<Vec<usize>>,
    feeds: BTreeMap<u32, Feed>,
    server_version: i32,
    /// The role init connected as: the one its configuration connects refreshd as.
    role: String,
    /// Keyed views an earlier `init --keyed` converted (their tables' comments say so),
    /// in the schemas read.
    earlier: Vec<QualifiedName>,
}

/// Tables an earlier `init --keyed` converted (see [`crate::incremental::generate::keyed_table_comment_prefix`]).
const EARLIER_SQL: &str = "SELECT n.nspname::text, c.relname::text \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE c.relkind IN ('r', 'p') \
   AND pg_catalog.obj_description(c.oid, 'pg_class') LIKE 'Kept equal to % by refreshd (kind = \"keyed\"%' \
   AND (cardinality($1::text[]) = 0 OR n.nspname = ANY ($1)) \
 ORDER BY 1, 2";

const MATVIEWS_SQL: &str = "SELECT c.oid, n.nspname::text, c.relname::text, \
       pg_catalog.pg_get_userbyid(c.relowner)::text, c.relispopulated, \
       pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
         OR (current_setting('server_version_num')::int >= 170000 \
             AND pg_catalog.has_table_privilege(c.oid, 'MAINTAIN')) \
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
   AND n.nspname NOT LIKE 'pg\\_%' \
   AND (cardinality($1::text[]) = 0 OR n.nspname = ANY ($1)) \
 ORDER BY n.nspname, c.relname";

/// Constant channels notified by the enabled user triggers of each table, and whether
/// the trigger has transition tables.
const EXISTING_SQL: &str = "SELECT t.tgrelid, p.prosrc, \
       t.tgoldtable IS NOT NULL OR t.tgnewtable IS NOT NULL \
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
 WHERE t.tgrelid = ANY ($1) AND NOT t.tgisinternal AND t.tgenabled <> 'D'";

/// The members of the partition trees of the given relations (a relation that is not
/// partitioned is its own tree) and their inheritance children (`INHERITS`, at every
/// level: a write straight into one fires only its own triggers), with their root.
/// Ordered so that a table read both directly and as a child is last seen as the
/// child (its root's channel).
const TREE_SQL: &str = "WITH RECURSIVE roots AS ( \
    SELECT DISTINCT coalesce(pg_catalog.pg_partition_root(o)::oid, o) AS root FROM unnest($1::oid[]) AS o \
), m (root, relid) AS ( \
    SELECT roots.root, roots.root FROM roots \
    UNION SELECT m.root, i.inhrelid FROM m JOIN pg_catalog.pg_inherits i ON i.inhparent = m.relid \
) \
SELECT m.root, m.relid, n.nspname::text, c.relname::text, c.relkind::text \
  FROM m \
  JOIN pg_catalog.pg_class c ON c.oid = m.relid \
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
 ORDER BY m.root = m.relid DESC, m.root, m.relid";

/// refreshd's own enabled capture triggers (see [`crate::pg::capture`]) and their
/// arguments (the channel, NUL-terminated).
const INSTALLED_SQL: &str = "SELECT t.tgrelid, t.tgargs FROM pg_catalog.pg_trigger t \
 WHERE t.tgrelid = ANY ($1) AND t.tgname = 'refreshd_notify' AND t.tgenabled <> 'D' \
   AND t.tgtype = 60 AND t.tgfoid = pg_catalog.to_regprocedure('refreshd.notify_changed()')";

async fn read(client: &tokio_postgres::Client, schemas: &[String]) -> Result<Plan, String> {
    let err = |e: tokio_postgres::Error| crate::pg::connect::error_chain(&e);
    let found = found_views(client, schemas).await.map_err(err)?;
    let (views, reads) = dependency_order(found);
    let feeds = feeds(client, &views).await.map_err(err)?;
    let (server_version, role): (i32, String) = client
        .query_typed(
            "SELECT current_setting('server_version_num')::int, current_user::text",
            &[],
        )
        .await
        .map_err(err)?
        .first()
        .map_or((0, String::new()), |r| (r.get(0), r.get(1)));
    let earlier = client
        .query_typed(EARLIER_SQL, &[(&schemas, Type::TEXT_ARRAY)])
        .await
        .map_err(err)?
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(Plan {
        views,
        reads,
        feeds,
        server_version,
        role,
        earlier,
    })
}

/// The materialized views of these schemas, each with its owner, key and base
/// relations.
async fn found_views(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> Result<Vec<Found>, tokio_postgres::Error> {
    let rows = client
        .query_typed(MATVIEWS_SQL, &[(&schemas, Type::TEXT_ARRAY)])
        .await?;
    let mut found = Vec::new();
    for r in &rows {
        let oid: u32 = r.get(0);
        found.push(Found {
            oid,
            name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            owner: r.get(3),
            populated: r.get(4),
            may_refresh: r.get::<_, Option<bool>>(5).unwrap_or(false),
            unique_index: usable_unique_indexes(client, oid).await?.into_iter().next(),
            base: base_relations(client, oid).await?,
        });
    }
    Ok(found)
}

/// The views in dependency order, each with the positions of the views it reads.
fn dependency_order(found: Vec<Found>) -> (Vec<Found>, Vec<Vec<usize>>) {
    let by_oid: HashMap<u32, usize> = found.iter().enumerate().map(|(i, f)| (f.oid, i)).collect();
    let reads: Vec<Vec<usize>> = found
        .iter()
        .map(|f| {
            let mut r: Vec<usize> = f
                .base
                .iter()
                .filter_map(|b| by_oid.get(&b.oid).copied())
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect();
    let order = topological_order(&reads);
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let views: Vec<Found> = order.iter().map(|&i| found[i].clone()).collect();
    let reads = order
        .iter()
        .map(|&i| reads[i].iter().map(|l| position[l]).collect())
        .collect();
    (views, reads)
}

/// The channel each base table (and partition) feeds, and whether its trigger exists.
///
/// Base tables (not materialized views: those are refreshed by dependency), with every
/// member of their partition trees: a partitioned table and all its partitions share
/// the root's channel, and each needs its own trigger (statement triggers are not
/// cloned to partitions, and a write straight into a partition fires only its own).
async fn feeds(
    client: &tokio_postgres::Client,
    views: &[Found],
) -> Result<BTreeMap<u32, Feed>, tokio_postgres::Error> {
    let mut read_oids: BTreeSet<u32> = BTreeSet::new();
    for f in views {
        for b in f.base.iter().filter(|b| b.relkind != 'm') {
            read_oids.insert(b.oid);
        }
    }
    let read_oids: Vec<u32> = read_oids.into_iter().collect();
    // oid → (table, relkind, root oid)
    let mut tables: BTreeMap<u32, (QualifiedName, char, u32)> = BTreeMap::new();
    for r in client
        .query_typed(TREE_SQL, &[(&read_oids, Type::OID_ARRAY)])
        .await?
    {
        let name = QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3));
        let relkind = r.get::<_, String>(4).chars().next().unwrap_or('?');
        tables.insert(r.get(1), (name, relkind, r.get(0)));
    }
    let oids: Vec<u32> = tables.keys().copied().collect();
    let existing = existing_channels(client, &oids).await?;
    let installed = installed_channels(client, &oids).await?;
    let own = |oid: u32| existing.get(&oid).and_then(|c| c.iter().next().cloned());
    Ok(tables
        .iter()
        .map(|(&oid, (table, relkind, root))| {
            let (root_name, root_channel) = match tables.get(root) {
                Some((root_name, ..)) => (
                    root_name.clone(),
                    own(*root).unwrap_or_else(|| channel_for(root_name)),
                ),
                None => (table.clone(), channel_for(table)),
            };
            let found = own(oid);
            let channel = found.clone().unwrap_or(root_channel);
            let feed = Feed {
                installed: installed.get(&oid) == Some(&channel),
                channel,
                existing: found.is_some(),
                table: table.clone(),
                relkind: *relkind,
                root: root_name,
            };
            (oid, feed)
        })
        .collect())
}

/// The channels the tables' own triggers already notify (not those of triggers with
/// transition tables: those feed keyed views, their payloads name groups, and they
/// may skip changes their own definition does not read, which a materialized view on
/// the same table may read; such channels are not reused).
async fn existing_channels(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<HashMap<u32, BTreeSet<String>>, tokio_postgres::Error> {
    let mut existing: HashMap<u32, BTreeSet<String>> = HashMap::new();
    let mut keyed: HashMap<u32, BTreeSet<String>> = HashMap::new();
    for r in client
        .query_typed(EXISTING_SQL, &[(&oids, Type::OID_ARRAY)])
        .await?
    {
        let src: String = r.get(1);
        let target = if r.get::<_, bool>(2) {
            &mut keyed
        } else {
            &mut existing
        };
        target
            .entry(r.get(0))
            .or_default()
            .extend(notified_channels(&src));
    }
    for (oid, channels) in existing.iter_mut() {
        if let Some(k) = keyed.get(oid) {
            channels.retain(|c| !k.contains(c));
        }
    }
    Ok(existing)
}

/// The channel of the `refreshd_notify` trigger already installed on each table.
async fn installed_channels(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    let mut installed: HashMap<u32, String> = HashMap::new();
    for r in client
        .query_typed(INSTALLED_SQL, &[(&oids, Type::OID_ARRAY)])
        .await?
    {
        let args: Vec<u8> = r.get(1);
        let first = args.split(|b| *b == 0).next().unwrap_or_default();
        installed.insert(r.get(0), String::from_utf8_lossy(first).into_owned());
    }
    Ok(installed)
}

/// The channel of a base table: `refreshd_<schema>_<table>` when both are plain
/// lower-case names (the schema without `_`) and it fits in 63 bytes (PostgreSQL's identifier length). Otherwise
/// a readable prefix of it with every other character as `_`, then a hash of the full
/// qualified name: safe to write anywhere (only `[a-z0-9_]`), bounded, the same on every
/// run, and two tables never share one.
pub fn channel_for(table: &QualifiedName) -> String {
    let full = format!("{}{}_{}", capture::CHANNEL_PREFIX, table.schema, table.name);
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    // The schema without `_`: "a_b"."c" and "a"."b_c" must not meet.
    if full.len() <= MAX_IDENTIFIER_BYTES
        && plain(&table.schema)
        && !table.schema.contains('_')
        && plain(&table.name)
    {
        return full;
    }
    // FNV-1a (64 bits) of the schema and the name with a separator no name contains.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table
        .schema
        .bytes()
        .chain(std::iter::once(0))
        .chain(table.name.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let suffix = format!("_{:012x}", h & 0xffff_ffff_ffff);
    let readable: String = full
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(MAX_IDENTIFIER_BYTES - suffix.len())
        .collect();
    format!("{readable}{suffix}")
}

/// Channels a trigger function notifies with a constant name: `pg_notify('x', ...)` and
/// `NOTIFY x`. Dynamic names are not guessed.
pub fn notified_channels(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = src.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("pg_notify") {
        let start = from + i + "pg_notify".len();
        let rest = src[start..].trim_start();
        if let Some(rest) = rest.strip_prefix('(') {
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix('\'') {
                // A doubled quote means the name is not this simple constant.
                if let Some(end) = rest.find('\'') {
                    if !rest[end + 1..].starts_with('\'') {
                        out.push(rest[..end].to_string());
                    }
                }
            }
        }
        from = start;
    }
    let mut from = 0;
    while let Some(i) = lower[from..].find("notify ") {
        let start = from + i + "notify ".len();
        let before = lower[..from + i].chars().last();
        if before.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_') {
            let name: String = src[start..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name.to_ascii_lowercase());
            }
        }
        from = start;
    }
    out.retain(|c| validate_channel(c).is_ok());
    out.sort();
    out.dedup();
    out
}

/// A TOML comment line: `# ` and the text on one line.
fn comment(out: &mut String, text: &str) {
    let _ = writeln!(out, "# {}", escape_display(text));
}

/// The schedule `init` gives a view no trigger can feed: hourly, on the hour.
pub const UNFED_SCHEDULE: &str = "0 0 * * * *";

/// The keys of one `[[view]]`, written by the `toml` serializer.
#[derive(serde::Serialize, Default)]
struct ViewEntry {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrently: Option<bool>,
    /// For a view nothing else can feed (see [`UNFED_SCHEDULE`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    /// A keyed conversion's consume function (its change buffer).
    #[serde(skip_serializing_if = "Option::is_none")]
    buffer: Option<String>,
}

/// The `[[view]]` of a keyed conversion.
fn keyed_entry(g: &Generated) -> ViewEntry {
    ViewEntry {
        name: g.table.to_string(),
        kind: Some("keyed"),
        query: Some(g.definition.to_string()),
        key: Some(g.key.clone()),
        channels: Some(vec![g.channel.clone()]),
        buffer: Some(g.consume.to_string()),
        ..ViewEntry::default()
    }
}

/// A document of `[[view]]` tables.
#[derive(serde::Serialize)]
struct Views<'a> {
    view: &'a [ViewEntry],
}

#[derive(serde::Serialize)]
struct DatabaseEntry<'a> {
    url: &'a str,
}

#[derive(serde::Serialize)]
struct DatabaseDoc<'a> {
    database: DatabaseEntry<'a>,
}

/// `entry` as a `[[view]]` table; `commented` turns every line into a comment.
fn view_toml(out: &mut String, entry: ViewEntry, commented: bool) {
    let text = toml::to_string(&Views { view: &[entry] }).expect("plain strings serialize");
    if commented {
        for line in text.lines() {
            comment(out, line);
        }
    } else {
        out.push_str(&text);
    }
}

impl Plan {
    fn channels_of(&self, v: &Found) -> Vec<&Feed> {
        let mut seen = BTreeSet::new();
        v.base
            .iter()
            .filter_map(|b| self.feeds.get(&b.oid))
            .filter(|f| seen.insert(f.channel.clone()))
            .collect()
    }

    /// Why refreshd cannot serve the view, with the fix; `None` when it can.
    fn unservable(&self, v: &Found) -> Option<String> {
        if !v.may_refresh {
            let maintain = if self.server_version >= 170000 {
                format!(
                    ", or GRANT MAINTAIN ON {} TO the role (or grant it pg_maintain)",
                    v.name.quoted()
                )
            } else {
                String::new()
            };
            return Some(format!(
                "the connecting role may not refresh it (owner {}). Fix: ALTER MATERIALIZED VIEW {} OWNER TO a role refreshd connects as (or make refreshd's role a member of {}){maintain}",
                v.owner,
                v.name.quoted(),
                quote_ident(&v.owner)
            ));
        }
        None
    }

    /// The configuration, commented. Keys and values go through the `toml` serializer;
    /// names in comments are escaped onto one line, so no name can add a key.
    fn config(&self, target: &str, dsn: &str, keyed: &[Keyed], converting: bool) -> String {
        let mut out = String::new();
        comment(
            &mut out,
            &format!("refreshd configuration written by `refreshd init` from {target}."),
        );
        comment(
            &mut out,
            "Review it (the capture SQL is applied by --apply, written by --sql DIR), then run",
        );
        comment(
            &mut out,
            "`refreshd check -c FILE`. Every key is documented in config.example.toml.",
        );
        out.push('\n');
        comment(
            &mut out,
            "The password is not written here: use password_file, url_env, or ~/.pgpass.",
        );
        comment(
            &mut out,
            "If url goes through a transaction-mode pooler, set listen_url straight to PostgreSQL.",
        );
        out.push_str(
            &toml::to_string(&DatabaseDoc {
                database: DatabaseEntry { url: dsn },
            })
            .expect("plain strings serialize"),
        );
        let _ = writeln!(out, "\n[defaults]\ndebounce = \"2s\"\nmax_delay = \"30s\"");
        out.push('\n');
        comment(
            &mut out,
            "Views in dependency order: a view is refreshed after the views it reads.",
        );
        for i in 0..self.views.len() {
            out.push('\n');
            self.view_block(&mut out, i, keyed, converting);
        }
        let forgotten = self.forgotten(keyed);
        if !forgotten.is_empty() {
            out.push('\n');
            for t in forgotten {
                comment(
                    &mut out,
                    &format!(
                        "NOT IN THIS CONFIGURATION: keyed view {t}, converted by an earlier `init --keyed`: keep its [[view]] block from the configuration printed then, or run init again with --keyed for it (and --in-place if it was). Without one nothing refreshes it, and its change buffers grow."
                    ),
                );
            }
        }
        let elsewhere: Vec<&Keyed> = keyed
            .iter()
            .filter(|k| !self.views.iter().any(|v| v.oid == k.oid))
            .collect();
        if !elsewhere.is_empty() {
            out.push('\n');
            comment(&mut out, "--keyed views not in this configuration:");
            for k in elsewhere {
                keyed_comments(&mut out, k, converting);
                if let Some(g) = &k.conversion {
                    view_toml(&mut out, keyed_entry(g), !converting);
                }
            }
        }
        out
    }

    /// The keyed views an earlier `init --keyed` converted that this run does not
    /// convert (again): a configuration replaced by this one would lose them.
    fn forgotten(&self, keyed: &[Keyed]) -> Vec<&QualifiedName> {
        self.earlier
            .iter()
            .filter(|t| {
                !keyed
                    .iter()
                    .filter_map(|k| k.conversion.as_ref())
                    .any(|g| &g.table == *t)
            })
            .collect()
    }

    /// The comments above a served view's entry (what it reads, what it is refreshed
    /// after, what to know); its `concurrently` value (`Some(false)` without a usable
    /// unique index).
    fn served_comments(&self, out: &mut String, i: usize, feeds: &[&Feed]) -> Option<bool> {
        let v = &self.views[i];
        let tables: Vec<String> = feeds.iter().map(|f| f.root.to_string()).collect();
        if !tables.is_empty() {
            comment(out, &format!("reads {}", tables.join(", ")));
        }
        let lower: Vec<String> = self.reads[i]
            .iter()
            .map(|&l| self.views[l].name.to_string())
            .collect();
        if !lower.is_empty() {
            comment(
                out,
                &format!("refreshed after {} (views it reads)", lower.join(", ")),
            );
        }
        if !v.populated {
            comment(
                out,
                "not populated yet: the first refresh is a plain REFRESH",
            );
        }
        for f in feeds.iter().filter(|f| f.relkind == 'f') {
            comment(out, &format!("{} is a foreign table: writes on the remote server fire no trigger here; consider a schedule", f.table));
        }
        match &v.unique_index {
            Some(ix) => {
                comment(out, &format!("REFRESH CONCURRENTLY uses unique index {ix}"));
                None
            }
            None => {
                comment(out, "No unique index usable by REFRESH CONCURRENTLY: a plain REFRESH locks readers out");
                comment(out, "while it runs. Create one on the view's key columns, then remove `concurrently = false`.");
                Some(false)
            }
        }
    }

    /// The block of the `i`th view: its `--keyed` reports, then its `[[view]]` entry (the
    /// keyed one in place; commented out when refreshd cannot serve it), then the keyed
    /// entries of views converted beside it.
    fn view_block(&self, out: &mut String, i: usize, keyed: &[Keyed], converting: bool) {
        let v = &self.views[i];
        for k in keyed.iter().filter(|k| k.oid == v.oid) {
            keyed_comments(out, k, converting);
        }
        // In place, the view's own block becomes the keyed one.
        if let Some(g) = keyed
            .iter()
            .filter(|k| k.oid == v.oid)
            .find_map(|k| k.conversion.as_ref())
            .filter(|g| converting && g.table == v.name)
        {
            view_toml(out, keyed_entry(g), false);
            return;
        }
        if let Some(why) = self.unservable(v) {
            comment(out, &format!("NOT SERVED: {} — {why}", v.name));
            let entry = ViewEntry {
                name: v.name.to_string(),
                channels: None,
                concurrently: None,
                ..ViewEntry::default()
            };
            view_toml(out, entry, true);
            return;
        }
        let feeds = self.channels_of(v);
        let concurrently = self.served_comments(out, i, &feeds);
        // Reading no table and no configured view (system catalogs, functions,
        // constants), nothing notifies it and `check` would refuse the config init
        // printed (a conformance review, 2026-12-05): a schedule feeds it.
        let schedule = (feeds.is_empty() && self.reads[i].is_empty()).then(|| {
            comment(out, "reads no table a trigger can capture (system catalogs, functions or constants only): refreshed on a schedule, hourly; adjust it to how its data changes");
            UNFED_SCHEDULE.to_string()
        });
        let entry = ViewEntry {
            name: v.name.to_string(),
            channels: Some(feeds.iter().map(|f| f.channel.clone()).collect()),
            concurrently,
            schedule,
            ..ViewEntry::default()
        };
        view_toml(out, entry, false);
        for k in keyed.iter().filter(|k| k.oid == v.oid) {
            if let Some(g) = &k.conversion {
                out.push('\n');
                view_toml(out, keyed_entry(g), !converting);
            }
        }
    }

    /// The base tables and partitions refreshd's NOTIFY trigger goes on: those no
    /// trigger of the user's feeds, read by a view not converted in place. A view
    /// converted in place is fed by its keyed capture alone: its base tables get the
    /// trigger only if another view reads them (writers would pay it for nothing).
    fn captured(&self, keyed: &[Keyed]) -> Vec<&Feed> {
        let in_place: BTreeSet<u32> = keyed
            .iter()
            .filter(|k| {
                k.conversion.as_ref().is_some_and(|g| {
                    self.views
                        .iter()
                        .any(|v| v.oid == k.oid && g.table == v.name)
                })
            })
            .map(|k| k.oid)
            .collect();
        let read = |f: &Feed| {
            self.views
                .iter()
                .filter(|v| !in_place.contains(&v.oid))
                .any(|v| {
                    v.base
                        .iter()
                        .any(|b| self.feeds.get(&b.oid).is_some_and(|g| g.root == f.root))
                })
        };
        self.feeds
            .values()
            .filter(|f| !f.existing && matches!(f.relkind, 'r' | 'p') && read(f))
            .collect()
    }

    /// The validation file for [`Plan::sql`]'s install, in `sql/`'s style: read-only,
    /// and each check that fails raises, naming what is missing (psql with
    /// `ON_ERROR_STOP` exits 3). It checks refreshd's schema (`refreshd.force`, the
    /// capture function), refreshd's trigger on each table the install covers (enabled
    /// ALWAYS, statement-level AFTER INSERT, UPDATE, DELETE and TRUNCATE, notifying its
    /// channel), and each keyed conversion as installed (its record and objects
    /// unchanged).
    fn validate_sql(&self, keyed: &[Keyed]) -> String {
        let mut checks = String::new();
        let mut check = |cond: String, failure: String| {
            let _ = writeln!(
                checks,
                "    IF NOT coalesce(({cond}), false) THEN\n        RAISE EXCEPTION '%', {};\n    END IF;",
                crate::pg::outcome::quote_literal(&failure)
            );
        };
        check(
            "pg_catalog.to_regprocedure('refreshd.force(text)') IS NOT NULL".into(),
            "refreshd.force(text) is missing: apply the install file".into(),
        );
        check(
            "pg_catalog.to_regprocedure('refreshd.notify_changed()') IS NOT NULL".into(),
            "refreshd.notify_changed() is missing: apply the install file".into(),
        );
        for f in self.captured(keyed) {
            check(
                format!(
                    "EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                      WHERE t.tgrelid = pg_catalog.to_regclass({table}) AND t.tgname = 'refreshd_notify' \
                        AND t.tgenabled = 'A' AND (t.tgtype::int4 & 127) = 60 \
                        AND t.tgfoid = pg_catalog.to_regprocedure('refreshd.notify_changed()') \
                        AND t.tgargs = pg_catalog.convert_to({channel}, 'UTF8') OPERATOR(pg_catalog.||) pg_catalog.decode('00', 'hex'))",
                    table = crate::pg::outcome::quote_literal(&f.table.quoted()),
                    channel = crate::pg::outcome::quote_literal(&f.channel),
                ),
                format!(
                    "{}: no refreshd_notify trigger enabled ALWAYS, AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE FOR EACH STATEMENT, notifying {}",
                    f.table, f.channel
                ),
            );
        }
        for g in keyed.iter().filter_map(|k| k.conversion.as_ref()) {
            check(
                g.current.clone(),
                format!(
                    "{}: the keyed conversion is not as the install made it (not applied, or changed since: run refreshd init --keyed again)",
                    g.table
                ),
            );
        }
        // A dollar-quote tag no name in the checks contains.
        let mut tag = "refreshd_validate".to_string();
        while checks.contains(&format!("${tag}$")) {
            tag.push('_');
        }
        format!(
            "-- Validates what {INSTALL} installed. Read-only: run it with\n\
             --   psql -v ON_ERROR_STOP=1 -f {VALIDATE}\n\
             -- Each check that fails raises, naming what is missing; the last line is\n\
             -- printed only when everything passed.\n\
             BEGIN READ ONLY;\n\
             DO ${tag}$\nBEGIN\n{checks}END\n${tag}$;\n\
             SELECT 'refreshd: capture validated' AS result;\n\
             COMMIT;\n"
        )
    }

    /// The install and rollback SQL: refreshd's schema (SQL control and the capture
    /// function) and a capture trigger on every base table and partition no trigger
    /// feeds yet. Idempotent; a trigger already installed with its channel is left
    /// alone, so applying it again changes nothing.
    fn sql(&self, keyed: &[Keyed]) -> (String, String) {
        self.sql_skipping(keyed, false)
    }

    /// [`Plan::sql`], without the conversions in place already when `skip_current`.
    fn sql_skipping(&self, keyed: &[Keyed], skip_current: bool) -> (String, String) {
        let ours = self.captured(keyed);
        let mut install = String::new();
        let _ = writeln!(
            install,
            "-- Written by `refreshd init`: refreshd's schema (SQL control, capture function) and"
        );
        let _ = writeln!(
            install,
            "-- statement-level NOTIFY triggers for the base tables (and every partition) of the"
        );
        let _ = writeln!(
            install,
            "-- materialized views refreshd keeps fresh. One transaction; idempotent; rollback:"
        );
        let _ = writeln!(install, "-- {ROLLBACK}. The payload is constant, so PostgreSQL folds repeats within a transaction.");
        let _ = writeln!(
            install,
            "-- A partitioned table and its partitions notify the root's channel."
        );
        let _ = writeln!(install, "BEGIN;\n");
        install.push_str(capture::CONTROL_SQL);
        install.push('\n');
        install.push_str(capture::FUNCTION_SQL);
        // Whoever applies this (a DBA, say), refreshd connects as this role.
        install.push_str(&capture::wakes_grant_sql(&self.role));
        let mut rollback = String::new();
        let _ = writeln!(
            rollback,
            "-- Removes what {INSTALL} created. One transaction; idempotent."
        );
        let _ = writeln!(rollback, "BEGIN;\n");
        // The keyed conversions first: their triggers go before the tables they read.
        for g in keyed.iter().filter_map(|k| k.conversion.as_ref()) {
            rollback.push_str(&g.rollback);
        }
        for f in &ours {
            rollback.push_str(&capture::drop_trigger_sql(&f.table));
            if f.installed {
                continue;
            }
            let readers: Vec<String> = self
                .views
                .iter()
                .filter(|v| {
                    v.base
                        .iter()
                        .any(|b| self.feeds.get(&b.oid).is_some_and(|g| g.root == f.root))
                })
                .map(|v| v.name.to_string())
                .collect();
            let partition = if f.root == f.table {
                String::new()
            } else {
                format!(" (partition of {})", f.root)
            };
            let _ = writeln!(
                install,
                "\n-- {}",
                sql_comment(&format!(
                    "{}{partition} -> channel {} (read by {})",
                    f.table,
                    f.channel,
                    readers.join(", ")
                ))
            );
            install.push_str(&capture::trigger_sql(&f.table, &f.channel));
        }
        // Last: they set search_path (for the definitions) until COMMIT.
        let applied = keyed.iter().filter(|k| !(skip_current && k.current));
        for g in applied.filter_map(|k| k.conversion.as_ref()) {
            install.push_str(&g.install);
        }
        let _ = writeln!(install, "\nCOMMIT;");
        rollback.push_str(&capture::shared_rollback_sql());
        let _ = writeln!(rollback, "\nCOMMIT;");
        (install, rollback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_channels_are_found_in_trigger_functions() {
        assert_eq!(
            notified_channels(
                "BEGIN PERFORM pg_notify('refresh_attendance_stats', ''); RETURN NULL; END"
            ),
            vec!["refresh_attendance_stats"]
        );
        assert_eq!(
            notified_channels("begin notify Orders_Changed; end"),
            vec!["orders_changed"]
        );
        assert!(notified_channels("PERFORM pg_notify(TG_ARGV[0], '')").is_empty());
        assert!(notified_channels("-- nothing here; unnotify_x := 1").is_empty());
    }

    #[test]
    fn channel_names_fit_postgres_identifiers() {
        assert_eq!(
            channel_for(&QualifiedName::new("public", "orders")),
            "refreshd_public_orders"
        );
        let long = channel_for(&QualifiedName::new("s".repeat(40), "t".repeat(40)));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            channel_for(&QualifiedName::new("s".repeat(40), "t".repeat(41)))
        );
    }

    #[test]
    fn hostile_table_names_get_safe_channels() {
        let hostile = QualifiedName::new("inj", "t\nDROP TABLE inj.canary; --");
        let c = channel_for(&hostile);
        assert!(c.len() <= 63, "{c}");
        assert!(
            c.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{c}"
        );
        assert!(c.starts_with("refreshd_inj_t_drop_table"), "{c}");
        assert_eq!(c, channel_for(&hostile), "deterministic");
        // Sanitizing must not merge two names.
        assert_ne!(
            channel_for(&QualifiedName::new("public", "Orders")),
            channel_for(&QualifiedName::new("public", "orders"))
        );
        assert_ne!(
            channel_for(&QualifiedName::new("a_b", "c")),
            channel_for(&QualifiedName::new("a", "b_c"))
        );
        let long = channel_for(&QualifiedName::new("é".repeat(31), "ü".repeat(31)));
        assert!(long.len() <= 63 && long.is_ascii(), "{long}");
    }

    #[test]
    fn names_cannot_add_config_keys() {
        let mut out = String::new();
        comment(&mut out, "uses unique index i\nconcurrently = false\n");
        view_toml(
            &mut out,
            ViewEntry {
                name: "public.\"v\nstatement_timeout = \"\"0s\"".into(),
                channels: Some(vec!["c\n]".into()]),
                concurrently: None,
                ..ViewEntry::default()
            },
            false,
        );
        let v: toml::Value = toml::from_str(&out).unwrap();
        let view = &v["view"][0];
        assert_eq!(view.as_table().unwrap().len(), 2, "{out}");
        assert_eq!(
            view["name"].as_str(),
            Some("public.\"v\nstatement_timeout = \"\"0s\"")
        );
        assert_eq!(v.as_table().unwrap().len(), 1, "{out}");
    }
}
