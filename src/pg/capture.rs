//! refreshd's own change capture: the SQL that installs it (shared by `init` and by
//! `capture = "managed"` in `run`), and the catalog query that checks it.

use crate::pg::ident::{quote_ident, sql_comment, QualifiedName};
use crate::pg::refresh::quote_literal;

/// The fixed name of refreshd's capture trigger on every table it captures.
pub const TRIGGER: &str = "refreshd_notify";

/// How every channel refreshd names begins (a base table's, `init`; a keyed view's,
/// `init --keyed`): no application notifies such a channel, so a view on one is fed by
/// refreshd's capture alone ([`crate::engine::capture::capture_owned`]).
pub const CHANNEL_PREFIX: &str = "refreshd_";

/// refreshd's schema for SQL control (`refreshd.force`), as shipped in `sql/refreshd/`.
pub const CONTROL_SQL: &str = include_str!("../../sql/refreshd/001_control.sql");
/// Its rollback.
pub const CONTROL_ROLLBACK_SQL: &str = include_str!("../../sql/refreshd/901_rollback_control.sql");

/// The setting a writing session turns on (`SET refreshd.two_phase = on`, or `ALTER
/// ROLE ... SET`) when its transactions may end in `PREPARE TRANSACTION`: PostgreSQL
/// refuses to prepare a transaction that notified, so refreshd's capture records its
/// wake-up as a row of [`WAKES_TABLE`] instead, which refreshd reads every
/// [`crate::engine::listener::WAKE_POLL`].
pub const TWO_PHASE_SETTING: &str = "refreshd.two_phase";

/// Where two-phase writers' wake-ups go (see [`TWO_PHASE_SETTING`]).
pub const WAKES_TABLE: &str = "refreshd.wakes";

/// The capture function: a statement-level trigger function for the channel given as
/// its argument. It notifies (a constant payload: PostgreSQL folds repeats within a
/// transaction) only while refreshd holds the channel's lock; otherwise it takes that
/// lock shared until its commit, which refreshd waits for before its next refresh
/// (see `engine::arming`: one notification per refresh, not per writing transaction,
/// and none at all while no refreshd runs). A session with [`TWO_PHASE_SETTING`] on
/// records the wake-up in [`WAKES_TABLE`] instead of notifying. SECURITY DEFINER, so
/// writers need no privilege on that table (nor USAGE on schema refreshd); every
/// operator is schema-qualified, so a writer's search_path resolves nothing in it.
/// Idempotent; replaces older versions.
pub const FUNCTION_SQL: &str = "CREATE SCHEMA IF NOT EXISTS refreshd;
CREATE TABLE IF NOT EXISTS refreshd.wakes (
    channel text NOT NULL,
    at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
COMMENT ON TABLE refreshd.wakes IS 'refreshd: wake-ups of writers with refreshd.two_phase = on (a transaction that notified cannot PREPARE), written by refreshd''s capture functions; refreshd consumes them every second';
REVOKE ALL ON TABLE refreshd.wakes FROM PUBLIC;
CREATE OR REPLACE FUNCTION refreshd.notify_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    -- 1919316840 + 0..15: refreshd's channel locks, one slot per backend. Held by
    -- refreshd: a refresh is not due yet, so say so. Not held: one is due, and it
    -- waits for this transaction.
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1919316840 OPERATOR(pg_catalog.+) (pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.%) 16), pg_catalog.hashtext(TG_ARGV[0])) THEN
        -- A transaction that notified cannot PREPARE: two-phase writers leave a row.
        IF pg_catalog.current_setting('refreshd.two_phase', true) OPERATOR(pg_catalog.=) 'on' THEN
            INSERT INTO refreshd.wakes (channel) VALUES (TG_ARGV[0]);
        ELSE
            PERFORM pg_catalog.pg_notify(TG_ARGV[0], '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION refreshd.notify_changed() IS 'refreshd: change capture (statement-level; notifies the channel in TG_ARGV[0] while refreshd arms it, or records it in refreshd.wakes with refreshd.two_phase = on; see refreshd''s docs/semantics.md)';
";

/// The privileges `role` (refreshd's) needs in its schema: to take the wake-ups of
/// [`WAKES_TABLE`] and the requests of `refreshd.force_requests`, and to call
/// `refreshd.force` (SPEC: EXECUTE is granted to refreshd's role), with the grant option
/// for the schema and the function, so that the leader can grant them to `control_roles`
/// as it does when it owns them. Nothing for an empty
/// name. Needed when another role applies the SQL (`init --sql` as refreshd, then a
/// DBA runs it): the objects are that role's then, and refreshd could neither call
/// `force` nor read the requests it left (a conformance review, 2026-12-05).
pub fn wakes_grant_sql(role: &str) -> String {
    if role.is_empty() {
        return String::new();
    }
    format!(
        "GRANT USAGE ON SCHEMA refreshd TO {r} WITH GRANT OPTION;\nGRANT SELECT, DELETE ON {WAKES_TABLE} TO {r};\n\
         GRANT SELECT, DELETE ON refreshd.force_requests TO {r};\n\
         GRANT SELECT, INSERT, DELETE ON refreshd.managed_views TO {r};\n\
         GRANT EXECUTE ON FUNCTION refreshd.force(text) TO {r} WITH GRANT OPTION;\n",
        r = quote_ident(role)
    )
}

/// Drops the capture function (after every trigger that uses it).
/// Every `refreshd_notify` trigger still using it goes first, wherever it is (one that an
/// earlier run installed, on a table no view of this run reads any more: a view
/// converted in place since, a dropped view), or the DROP FUNCTION would fail.
pub const FUNCTION_ROLLBACK_SQL: &str = "DO $refreshd_rollback$\nDECLARE\n    t record;\nBEGIN\n    \
    FOR t IN SELECT tg.tgrelid::pg_catalog.regclass AS rel FROM pg_catalog.pg_trigger tg\n        \
    WHERE tg.tgname = 'refreshd_notify' AND tg.tgfoid = pg_catalog.to_regprocedure('refreshd.notify_changed()') LOOP\n        \
    EXECUTE pg_catalog.format('DROP TRIGGER refreshd_notify ON %s', t.rel);\n    END LOOP;\nEND;\n$refreshd_rollback$;\n\
DROP FUNCTION IF EXISTS refreshd.notify_changed();\n\
DROP TABLE IF EXISTS refreshd.wakes;\n";

/// The end of a rollback: refreshd's shared objects (the capture function with every
/// `refreshd_notify` trigger still using it, the two-phase wake-ups, `refreshd.force`
/// and its requests, the schema) dropped only when nothing uses them any more: no
/// `refreshd_notify` trigger on a table the rollback did not cover (a view of another
/// `--schema` run; one `managed` added to a partition of a table it covered is dropped
/// first) and no keyed conversion it did not undo (whose triggers write
/// `refreshd.wakes` for two-phase writers, which would fail). The rollback of one
/// `init --keyed` run left another run's conversions broken and `refreshd.force` gone
/// (found by two reviews, 2026-12-05).
pub fn shared_rollback_sql() -> String {
    let drops = format!("{FUNCTION_ROLLBACK_SQL}{CONTROL_ROLLBACK_SQL}");
    format!(
        r#"DO $refreshd_shared$
DECLARE
    t record;
BEGIN
    -- refreshd's triggers that `managed` put on partitions created since, whose root's
    -- trigger this rollback dropped: this run's, not another's.
    FOR t IN SELECT tg.tgrelid::pg_catalog.regclass AS rel FROM pg_catalog.pg_trigger tg
        JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
        WHERE tg.tgname = 'refreshd_notify' AND tg.tgfoid = pg_catalog.to_regprocedure('refreshd.notify_changed()')
          AND c.relispartition AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger r
              WHERE r.tgrelid = pg_catalog.pg_partition_root(c.oid) AND r.tgname = 'refreshd_notify') LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER refreshd_notify ON %s', t.rel);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.tgname = 'refreshd_notify'
               AND g.tgfoid = pg_catalog.to_regprocedure('refreshd.notify_changed()'))
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_description d
               WHERE d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
                 AND pg_catalog.starts_with(d.description, {prefix})) THEN
        RAISE NOTICE 'refreshd: schema refreshd kept (capture function, wake-ups, refreshd.force): other views still use it';
    ELSE
        EXECUTE {drops};
    END IF;
END
$refreshd_shared$;
"#,
        prefix = quote_literal(crate::incremental::generate::DEFINITION_COMMENT_PREFIX),
        drops = quote_literal(&drops),
    )
}

/// (Re)creates refreshd's capture trigger on `table`, notifying `channel`. Idempotent:
/// an earlier one (another channel, disabled, or no longer ALWAYS) is replaced. Enabled
/// ALWAYS, so that it fires with `session_replication_role = replica` too: a bulk load
/// or `pg_restore --disable-triggers` writes that way, and an origin-only trigger never
/// saw those changes (a logical replication subscription's apply worker fires no
/// statement trigger at all: docs/keyed.md).
pub fn trigger_sql(table: &QualifiedName, channel: &str) -> String {
    let t = table.quoted();
    format!(
        "DROP TRIGGER IF EXISTS {trg} ON {t};\n\
         CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}\n    \
         FOR EACH STATEMENT EXECUTE FUNCTION refreshd.notify_changed({ch});\n\
         ALTER TABLE {t} ENABLE ALWAYS TRIGGER {trg};\n\
         COMMENT ON TRIGGER {trg} ON {t} IS {comment};\n",
        trg = quote_ident(TRIGGER),
        ch = quote_literal(channel),
        comment = quote_literal(&format!(
            "refreshd: change capture -> channel {}",
            sql_comment(channel)
        )),
    )
}

/// Drops refreshd's capture trigger on `table` (idempotent).
pub fn drop_trigger_sql(table: &QualifiedName) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {};\n",
        quote_ident(TRIGGER),
        table.quoted()
    )
}

/// How `capture = "managed"` closes a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heal {
    /// refreshd's own capture trigger, notifying this channel.
    Capture(String),
    /// A keyed view's partition (attached after `init --keyed` generated its capture):
    /// the statement triggers of its root that reach the view, the same on the
    /// partition (a write straight into a partition fires only the partition's own).
    CloneRoot {
        root: QualifiedName,
        triggers: Vec<String>,
    },
    /// A keyed view's generated triggers on a table the view no longer reads (a
    /// partition detached since): dropped, or their writes would still reach the
    /// view's buffers (and, as deltas, the view).
    Drop(Vec<String>),
    /// A keyed view whose capture a rename made stale (the gap's table is its definition
    /// view): converted again from its definition as it reads now, `table` being the
    /// keyed table ([`crate::pg::conversion::convert_again`], a transaction of its own;
    /// [`install`] skips it).
    ConvertAgain { table: QualifiedName },
}

impl Heal {
    /// The channel of a [`Heal::Capture`].
    pub fn channel(&self) -> Option<&str> {
        match self {
            Heal::Capture(c) => Some(c),
            Heal::CloneRoot { .. } | Heal::Drop(_) | Heal::ConvertAgain { .. } => None,
        }
    }
}

/// Whether `text` (a trigger function's source and its arguments) names `channel` as a
/// whole word: `'orders'`, `NOTIFY orders;`, `"orders"` or an argument `orders\000`,
/// but not `orders_v2` or `refreshd_keys_q10` for `refreshd_keys_q1`.
pub fn names_channel(text: &str, channel: &str) -> bool {
    if channel.is_empty() {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    text.match_indices(channel).any(|(at, _)| {
        !word(text[..at].chars().next_back()) && !word(text[at + channel.len()..].chars().next())
    })
}

/// A trigger's function source as [`names_channel`] reads it, in SQL over `pg_trigger t`
/// and `pg_proc p`: empty for refreshd's own `refreshd.notify_changed()`, whose channel
/// is its argument alone. Its source's comments and variables are words too, and a
/// view listening on `refresh` or `channel` counted as fed by every table carrying
/// refreshd's trigger for other channels (a conformance review, 2026-12-05).
/// Read from the catalog, not through `to_regprocedure`, which needs USAGE on schema
/// `refreshd` (a role without it could not run `check`).
pub const TRIGGER_SOURCE_SQL: &str = "CASE WHEN p.proname = 'notify_changed' AND p.pronargs = 0 \
    AND p.pronamespace = (SELECT ns.oid FROM pg_catalog.pg_namespace ns WHERE ns.nspname = 'refreshd') \
    THEN '' ELSE p.prosrc END";

/// The same test in SQL: a regular expression matching the channel in column `ch` as a
/// whole word (every character of it that is no letter or digit escaped), for `~`.
pub const CHANNEL_WORD_RE_SQL: &str = "('(^|[^[:alnum:]_$])' || pg_catalog.regexp_replace(ch, '([^[:alnum:]_])', '\\\\\\1', 'g') || '($|[^[:alnum:]_$])')";

/// One trigger on a captured table, as the check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFacts {
    pub name: String,
    /// `tgenabled <> 'D'`.
    pub enabled: bool,
    /// `tgtype`'s event bits: INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32.
    pub events: i32,
    /// `tgenabled = 'A'`: it fires for writes in the replica role too (as `init
    /// --keyed` makes its triggers; `ENABLE TRIGGER` after a `DISABLE TRIGGER ALL`
    /// leaves them firing for ordinary writes only).
    pub always: bool,
    /// refreshd's own capture trigger.
    pub ours: bool,
    /// Its function's source and its arguments: a channel named here may be notified.
    pub text: String,
}

/// A base table (or partition) a view reads, with its triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    pub oid: u32,
    pub name: QualifiedName,
    /// The root of its partition tree, or the table the view reads for an inheritance
    /// child (`INHERITS`); its own oid when it is neither.
    pub root: u32,
    pub triggers: Vec<TriggerFacts>,
}

/// What one capture check read from the catalog.
#[derive(Debug, Clone, Default)]
pub struct CaptureFacts {
    /// Per view asked about, in order: `None` when no materialized view has the name.
    pub views: Vec<Option<Vec<TableFacts>>>,
    /// `refreshd.notify_changed()` exists.
    pub function_installed: bool,
    /// ... in this version (one that notifies only while refreshd arms the channel, and
    /// records a two-phase writer's wake-up instead; older ones notify on every writing
    /// transaction, correct but costly, or make two-phase writers fail at PREPARE).
    pub function_current: bool,
    /// Per view asked about: a keyed view's definition whose capture was generated for
    /// other names than it reads now (a table, schema or column renamed since, or the
    /// definition replaced): the trigger functions name what is gone, and every write
    /// to the table fails until `init --keyed` generates them again.
    pub stale: Vec<bool>,
    /// Per view asked about: a keyed view whose definition view `init --keyed` made
    /// (its comment says so): its capture is a trigger for each event on every table.
    pub generated: Vec<bool>,
}

/// Every base table and partition each view reads (through plain views; partition trees
/// whole but for a partition a `DETACH ... CONCURRENTLY` left pending, which no query
/// reads any more while its triggers stay: a stray then; present partitions, and inheritance children at every level, whose root is
/// the table the view reads), with every user trigger on each, in ONE query whatever
/// the number of views.
/// Why a keyed view whose capture is stale ([`CaptureFacts::stale`]) is a gap.
pub const STALE_CAPTURE: &str =
    "its capture was generated for names it no longer reads (a table, schema or \
     column renamed, row security turned on or off, a column's NOT NULL or generation expression changed, \
     or the definition view changed by CREATE OR REPLACE): writes to its tables fail, or their changes go \
     unseen or are applied wrongly, until `refreshd init --keyed` runs again for this view (with capture = \"managed\", \
     refreshd runs it)";

/// Why a keyed view `init --keyed` generated (its configuration names a buffer
/// function) whose definition view no longer carries the record the install wrote in
/// its comment is a gap: nothing tells whether its capture still fits what it reads.
/// A migration that changes a column's type must drop the views reading it, so the
/// definition view comes back without its comment, and every buffer keeps the old type
/// (a scale rounded, a range that no longer fits).
pub const RECORD_LOST: &str =
    "its definition view no longer carries the record `init --keyed` wrote in its comment \
     (dropped and created again, as a column's type change needs, or restored without comments), so \
     nothing tells whether its capture still fits what it reads (a type, a name or a NOT NULL changed with it); \
     `refreshd init --keyed` must run again for this view (with capture = \"managed\", refreshd runs it)";

/// [`CHECK_SQL`] with its `$stale` filled in, built once.
static CHECK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CHECK_SQL
        .replace("$source", TRIGGER_SOURCE_SQL)
        .replace(
            "$stale",
            &crate::incremental::generate::stale_capture_sql("c.oid"),
        )
        .replace(
            "$generated",
            &crate::pg::refresh::quote_literal(
                crate::incremental::generate::DEFINITION_COMMENT_PREFIX,
            ),
        )
});

/// [`CHECK`]'s text, `$stale` standing for whether a keyed view's capture was
/// generated for names its definition no longer reads (a rename since).
const CHECK_SQL: &str = "WITH RECURSIVE v AS ( \
    SELECT x.ord, c.oid, CASE WHEN c.relkind = 'v' THEN $stale ELSE false END AS stale, \
           c.relkind = 'v' AND coalesce(pg_catalog.starts_with(pg_catalog.obj_description(c.oid, 'pg_class'), $generated), false) AS generated \
      FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(s, n, ord) \
      JOIN pg_catalog.pg_namespace ns ON ns.nspname = x.s \
      JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = x.n AND c.relkind IN ('m', 'v') \
), reads(ord, relid) AS ( \
    SELECT v.ord, d.refobjid FROM v \
      JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid \
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
       AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
     WHERE d.refobjid <> v.oid \
    UNION \
    SELECT reads.ord, d.refobjid FROM reads \
      JOIN pg_catalog.pg_class c ON c.oid = reads.relid AND c.relkind = 'v' \
      JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid \
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
       AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
     WHERE d.refobjid <> c.oid \
), tabs AS ( \
    SELECT reads.ord, reads.relid FROM reads \
      JOIN pg_catalog.pg_class c ON c.oid = reads.relid AND c.relkind IN ('r', 'p') \
), family(ord, relid, root) AS ( \
    SELECT tabs.ord, tabs.relid, tabs.relid FROM tabs \
    UNION SELECT f.ord, i.inhrelid, f.root FROM family f JOIN pg_catalog.pg_inherits i ON i.inhparent = f.relid \
       AND NOT coalesce((pg_catalog.to_jsonb(i) ->> 'inhdetachpending')::boolean, false) \
), tree AS ( \
    SELECT DISTINCT ON (ord, relid) ord, relid, root FROM family ORDER BY ord, relid, root = relid, root \
), fn AS ( \
    SELECT pg_catalog.to_regprocedure('refreshd.notify_changed()')::oid AS oid \
), trg AS ( \
    SELECT t.tgrelid, \
           array_agg(t.tgname::text ORDER BY t.tgname) AS names, \
           array_agg(t.tgenabled <> 'D' ORDER BY t.tgname) AS enabled, \
           array_agg(t.tgfoid IS NOT DISTINCT FROM (SELECT fn.oid FROM fn) AND t.tgname = 'refreshd_notify' ORDER BY t.tgname) AS ours, \
           array_agg($source || ' ' || encode(t.tgargs, 'escape') ORDER BY t.tgname) AS texts, \
           array_agg(t.tgtype::int4 & 60 ORDER BY t.tgname) AS events, \
           array_agg(t.tgenabled = 'A' ORDER BY t.tgname) AS always \
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
     WHERE t.tgrelid IN (SELECT DISTINCT relid FROM tree) AND NOT t.tgisinternal \
     GROUP BY t.tgrelid \
) \
SELECT v.ord::int8, c.oid, n.nspname::text, c.relname::text, \
       CASE WHEN c.relispartition THEN pg_catalog.pg_partition_root(c.oid)::oid ELSE coalesce(tree.root, c.oid) END, \
       trg.names, trg.enabled, trg.ours, trg.texts, (SELECT fn.oid IS NOT NULL FROM fn), \
       (SELECT p.prosrc LIKE '%refreshd.two_phase%' AND p.prosecdef FROM fn JOIN pg_catalog.pg_proc p ON p.oid = fn.oid), \
       v.stale, v.generated, trg.events, trg.always \
  FROM v \
  LEFT JOIN tree ON tree.ord = v.ord \
  LEFT JOIN pg_catalog.pg_class c ON c.oid = tree.relid AND c.relkind IN ('r', 'p') \
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  LEFT JOIN trg ON trg.tgrelid = c.oid \
 ORDER BY 1, 3, 4";

/// Runs `query` (a future: it starts when awaited) in a transaction of its own under
/// [`crate::incremental::generate::PINNED_SETTINGS`] (`search_path = pg_catalog`, the
/// time zone and styles constants print with): a keyed view's definition and columns
/// are compared as its install recorded them, printed under those settings
/// ([`crate::incremental::generate::definition_md5_sql`]). One transaction, so a
/// transaction pooler keeps the settings to it; rolled back if the query fails.
pub async fn with_catalog_path<T>(
    client: &tokio_postgres::Client,
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; {}",
            crate::incremental::generate::pinned_set_local_sql()
        ))
        .await?;
    match query.await {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Reads what [`CHECK_SQL`] finds for `views` (schema-qualified names of materialized
/// views, or of keyed views' definitions).
pub async fn inspect(
    client: &tokio_postgres::Client,
    views: &[QualifiedName],
) -> Result<CaptureFacts, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let schemas: Vec<&str> = views.iter().map(|n| n.schema.as_str()).collect();
    let names: Vec<&str> = views.iter().map(|n| n.name.as_str()).collect();
    let rows = with_catalog_path(
        client,
        client.query_typed(
            CHECK.as_str(),
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        ),
    )
    .await?;
    let mut facts = CaptureFacts {
        views: vec![None; views.len()],
        function_installed: false,
        function_current: false,
        stale: vec![false; views.len()],
        generated: vec![false; views.len()],
    };
    for r in &rows {
        facts.function_installed = r.get::<_, Option<bool>>(9).unwrap_or(false);
        facts.function_current = r.get::<_, Option<bool>>(10).unwrap_or(false);
        let Some(i) = (r.get::<_, i64>(0) as usize).checked_sub(1) else {
            continue;
        };
        if let Some(stale) = facts.stale.get_mut(i) {
            *stale |= r.get::<_, Option<bool>>(11).unwrap_or(false);
        }
        if let Some(generated) = facts.generated.get_mut(i) {
            *generated |= r.get::<_, Option<bool>>(12).unwrap_or(false);
        }
        let Some(slot) = facts.views.get_mut(i) else {
            continue;
        };
        let tables = slot.get_or_insert_with(Vec::new);
        let Some(oid) = r.get::<_, Option<u32>>(1) else {
            continue;
        };
        let names: Vec<String> = r.get::<_, Option<Vec<String>>>(5).unwrap_or_default();
        let enabled: Vec<bool> = r.get::<_, Option<Vec<bool>>>(6).unwrap_or_default();
        let ours: Vec<bool> = r.get::<_, Option<Vec<bool>>>(7).unwrap_or_default();
        let texts: Vec<Option<String>> = r
            .get::<_, Option<Vec<Option<String>>>>(8)
            .unwrap_or_default();
        let events: Vec<i32> = r.get::<_, Option<Vec<i32>>>(13).unwrap_or_default();
        let always: Vec<bool> = r.get::<_, Option<Vec<bool>>>(14).unwrap_or_default();
        let triggers = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| TriggerFacts {
                name,
                enabled: enabled.get(i).copied().unwrap_or(false),
                events: events.get(i).copied().unwrap_or(0),
                always: always.get(i).copied().unwrap_or(false),
                ours: ours.get(i).copied().unwrap_or(false),
                text: texts.get(i).cloned().flatten().unwrap_or_default(),
            })
            .collect();
        tables.push(TableFacts {
            oid,
            name: QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            root: r.get(4),
            triggers,
        });
    }
    Ok(facts)
}

/// A user trigger whose function or arguments name one of the channels asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTrigger {
    pub table_oid: u32,
    pub table: QualifiedName,
    pub name: String,
    /// The function's source and the trigger's arguments ([`names_channel`]'s input).
    pub text: String,
}

/// Every user trigger, on any table, whose function's source or arguments name one of
/// `channels` as a whole word (one query).
pub async fn channel_triggers(
    client: &tokio_postgres::Client,
    channels: &[String],
) -> Result<Vec<ChannelTrigger>, tokio_postgres::Error> {
    if channels.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT t.tgrelid, n.nspname::text, c.relname::text, t.tgname::text, \
                {src} || ' ' || encode(t.tgargs, 'escape') \
           FROM pg_catalog.pg_trigger t \
           JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          CROSS JOIN unnest($1::text[]) AS ch \
          WHERE NOT t.tgisinternal \
            AND ({src} ~ {re} OR encode(t.tgargs, 'escape') ~ {re})",
        re = CHANNEL_WORD_RE_SQL,
        src = TRIGGER_SOURCE_SQL
    );
    let rows = client
        .query_typed(
            &sql,
            &[(&channels, tokio_postgres::types::Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ChannelTrigger {
            table_oid: r.get(0),
            table: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            name: r.get(3),
            text: r.get(4),
        })
        .collect())
}

/// Per table not in `read` (oids), the triggers of `triggers` naming one of `channels`:
/// a keyed view's capture left on a table it no longer reads (a detached partition).
pub fn strays(
    channels: &[String],
    read: &std::collections::BTreeSet<u32>,
    triggers: &[ChannelTrigger],
) -> Vec<(QualifiedName, Vec<String>)> {
    let mut per_table: std::collections::BTreeMap<(u32, QualifiedName), Vec<String>> =
        std::collections::BTreeMap::new();
    for t in triggers {
        if read.contains(&t.table_oid) || !channels.iter().any(|c| names_channel(&t.text, c)) {
            continue;
        }
        let names = per_table.entry((t.table_oid, t.table.clone())).or_default();
        if !names.contains(&t.name) {
            names.push(t.name.clone());
        }
    }
    per_table
        .into_iter()
        .map(|((_, table), names)| (table, names))
        .collect()
}

/// Why a table with stray triggers ([`strays`]) is a gap.
pub fn stray_why(names: &[String]) -> String {
    format!(
        "the view no longer reads it (a partition detached?), yet trigger {} still buffers \
         its changes for the view (with deltas, they are applied to it)",
        names.join(", ")
    )
}

/// Closes each gap of `heals` in one transaction: refreshd's capture trigger (and the
/// capture function first when `with_function`: the same SQL as `init --apply`), or
/// copies of a root's statement triggers on its partition.
pub async fn install(
    client: &tokio_postgres::Client,
    heals: &[(QualifiedName, Heal)],
    with_function: bool,
) -> Result<(), tokio_postgres::Error> {
    // Each lock waited for at most LOCK_WAIT: where the install and a writer wait for
    // each other, the install gives up first and is tried again (see the engine's
    // retry), instead of a writer's transaction failing.
    let mut sql = format!(
        "BEGIN;\nSET LOCAL lock_timeout = '{}';\n",
        crate::pg::conversion::LOCK_WAIT
    );
    if with_function {
        sql.push_str(FUNCTION_SQL);
    }
    for (table, heal) in heals {
        match heal {
            Heal::Capture(channel) => sql.push_str(&trigger_sql(table, channel)),
            Heal::CloneRoot { root, triggers } => {
                let defs = root_triggers(client, root, triggers).await?;
                for d in &defs {
                    sql.push_str(&d.sql_on(table));
                }
            }
            Heal::Drop(triggers) => {
                for t in triggers {
                    sql.push_str(&format!(
                        "DROP TRIGGER IF EXISTS {} ON {};\n",
                        quote_ident(t),
                        table.quoted()
                    ));
                }
            }
            // Derived and applied on its own (see the variant).
            Heal::ConvertAgain { .. } => {}
        }
    }
    sql.push_str("COMMIT;\n");
    let done = client.batch_execute(&sql).await;
    if done.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done
}

/// A statement trigger as `pg_trigger` keeps it, enough to create the same one on
/// another table (a partition of its table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementTrigger {
    pub name: String,
    /// `pg_trigger.tgtype`'s event bits: INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32.
    pub events: i32,
    pub old_table: Option<String>,
    pub new_table: Option<String>,
    pub function: QualifiedName,
    pub args: Vec<String>,
}

impl StatementTrigger {
    /// Drops a trigger of that name on `table` (a disabled copy) and creates this one.
    pub fn sql_on(&self, table: &QualifiedName) -> String {
        let events: Vec<&str> = [
            (4, "INSERT"),
            (16, "UPDATE"),
            (8, "DELETE"),
            (32, "TRUNCATE"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.events & bit != 0)
        .map(|(_, e)| e)
        .collect();
        let mut referencing = String::new();
        if let Some(o) = &self.old_table {
            referencing.push_str(&format!(" OLD TABLE AS {}", quote_ident(o)));
        }
        if let Some(n) = &self.new_table {
            referencing.push_str(&format!(" NEW TABLE AS {}", quote_ident(n)));
        }
        if !referencing.is_empty() {
            referencing = format!(" REFERENCING{referencing}");
        }
        let args: Vec<String> = self.args.iter().map(|a| quote_literal(a)).collect();
        let name = quote_ident(&self.name);
        let t = table.quoted();
        format!(
            "DROP TRIGGER IF EXISTS {name} ON {t};\n\
             CREATE TRIGGER {name} AFTER {} ON {t}{referencing} FOR EACH STATEMENT EXECUTE FUNCTION {}({});\n\
             ALTER TABLE {t} ENABLE ALWAYS TRIGGER {name};\n",
            events.join(" OR "),
            self.function.quoted(),
            args.join(", ")
        )
    }
}

/// `root`'s triggers named `names` that can be copied as they are: AFTER, FOR EACH
/// STATEMENT, no WHEN, no column list (a row trigger PostgreSQL copies to partitions
/// itself).
const ROOT_TRIGGERS_SQL: &str =
    "SELECT t.tgname::text, t.tgtype::int4, t.tgoldtable::text, t.tgnewtable::text, \
       n.nspname::text, p.proname::text, t.tgargs \
  FROM pg_catalog.pg_trigger t \
  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
 WHERE t.tgrelid = $1::text::regclass AND t.tgname::text = ANY($2::text[]) AND NOT t.tgisinternal \
   AND t.tgtype::int4 & (1 | 2 | 64) = 0 AND t.tgqual IS NULL \
   AND pg_catalog.cardinality(t.tgattr::int2[]) = 0 \
 ORDER BY 1";

/// Reads [`ROOT_TRIGGERS_SQL`]. Arguments that are not UTF-8 leave the trigger out
/// (the gap stays, reported).
pub async fn root_triggers(
    client: &tokio_postgres::Client,
    root: &QualifiedName,
    names: &[String],
) -> Result<Vec<StatementTrigger>, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let rows = client
        .query_typed(
            ROOT_TRIGGERS_SQL,
            &[(&root.quoted(), Type::TEXT), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let raw: Vec<u8> = r.get(6);
            // tgargs: each argument ends with a NUL byte (so an empty one is one NUL).
            let mut pieces: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            pieces.pop();
            let args: Option<Vec<String>> = pieces
                .into_iter()
                .map(|a| String::from_utf8(a.to_vec()).ok())
                .collect();
            Some(StatementTrigger {
                name: r.get(0),
                events: r.get(1),
                old_table: r.get(2),
                new_table: r.get(3),
                function: QualifiedName::new(r.get::<_, String>(4), r.get::<_, String>(5)),
                args: args?,
            })
        })
        .collect())
}

/// A fingerprint of the catalog's parts that capture depends on: relations (a new
/// partition), inheritance (an attached or detached partition), triggers (dropped,
/// disabled, replaced) and rewrite rules (`CREATE OR REPLACE VIEW`). Any DDL there
/// changes it, so polling it every few seconds observes DDL for the cost of a few
/// catalog scans (no event trigger, which would need a superuser).
///
/// Relations count by their oids only, never by their rows' `xmin`: every `REFRESH
/// MATERIALIZED VIEW` updates the view's own `pg_class` row, so with `xmin` each
/// refresh looked like DDL and a busy daemon checked capture every two seconds.
/// Temporary relations (a concurrent refresh creates two) are left out too.
pub const FINGERPRINT_SQL: &str = "SELECT \
    (SELECT count(*)::text || ':' || coalesce(sum(oid::int8), 0)::text \
       FROM pg_catalog.pg_class WHERE relkind IN ('r', 'p', 'v', 'm') AND relpersistence <> 't') || '|' || \
    (SELECT count(*)::text || ':' || coalesce(sum(xmin::text::int8), 0)::text FROM pg_catalog.pg_inherits) || '|' || \
    (SELECT count(*)::text || ':' || coalesce(sum(xmin::text::int8), 0)::text FROM pg_catalog.pg_trigger) || '|' || \
    (SELECT count(*)::text || ':' || coalesce(sum(xmin::text::int8), 0)::text FROM pg_catalog.pg_rewrite) || '|' || \
    $stale";

/// [`FINGERPRINT_SQL`] with `$stale` filled in, built once: each keyed view whose
/// capture was generated for names its definition no longer reads (a table, schema or
/// column renamed; [`crate::incremental::generate::stale_capture_sql`]), found by the
/// comment on its definition view, with the md5 of the names it reads now: a rename
/// changes no row the rest reads, and a second rename under a view still stale changes
/// this.
static FINGERPRINT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use crate::incremental::generate::{
        read_md5s_sql, recorded_columns_md5_sql, recorded_md5_sql, DEFINITION_COMMENT_PREFIX,
    };
    FINGERPRINT_SQL.replace(
        "$stale",
        &format!(
            "(SELECT coalesce(pg_catalog.string_agg(x.o::text || ':' || coalesce(x.now, '') || '/' || coalesce(x.cols, ''), ',' ORDER BY x.o), '') \
                FROM (SELECT d.objoid AS o, {} AS recorded, h.names AS now, {} AS recorded_cols, h.columns AS cols \
                        FROM pg_catalog.pg_description d CROSS JOIN LATERAL {} AS h \
                       WHERE d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0 \
                         AND pg_catalog.starts_with(d.description, {})) AS x \
               WHERE x.recorded IS NOT NULL AND (x.recorded IS DISTINCT FROM x.now \
                  OR (x.recorded_cols IS NOT NULL AND x.recorded_cols IS DISTINCT FROM x.cols)))",
            recorded_md5_sql("d.description"),
            recorded_columns_md5_sql("d.description"),
            read_md5s_sql("d.objoid"),
            crate::pg::refresh::quote_literal(DEFINITION_COMMENT_PREFIX),
        ),
    )
});

/// Reads the catalog fingerprint (one message, one round trip, one transaction:
/// poolable), under the settings the columns hash is printed with
/// ([`crate::incremental::generate::PINNED_SETTINGS`]). A failure ends the poller's
/// connection, and with it the transaction.
pub async fn fingerprint(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    static PINNED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "BEGIN; {}; {}; COMMIT",
            crate::incremental::generate::pinned_set_local_sql(),
            FINGERPRINT.as_str()
        )
    });
    let rows = client.simple_query(&PINNED).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_named_only_as_a_whole_word() {
        for (text, yes) in [
            ("PERFORM pg_notify('refreshd_keys_q1', p)", true),
            ("PERFORM pg_notify('refreshd_keys_q10', p)", false),
            ("NOTIFY refreshd_keys_q1;", true),
            ("begin ... end refreshd_keys_q1\\000", true),
            ("x refreshd_keys_q1x", false),
            ("$refreshd_keys_q1", false),
        ] {
            assert_eq!(names_channel(text, "refreshd_keys_q1"), yes, "{text}");
        }
        assert!(names_channel("pg_notify('Ölçü.ch', '')", "Ölçü.ch"));
        assert!(!names_channel("anything", ""));
    }

    #[test]
    fn a_copied_trigger_quotes_every_name_and_argument() {
        let t = StatementTrigger {
            name: "tg \"x\"".into(),
            events: 4 | 16 | 8,
            old_table: Some("old rows".into()),
            new_table: Some("new_rows".into()),
            function: QualifiedName::new("my schema", "f\"n"),
            args: vec!["a'b".into(), String::new()],
        };
        let sql = t.sql_on(&QualifiedName::new("s", "Part 1"));
        assert_eq!(
            sql,
            "DROP TRIGGER IF EXISTS \"tg \"\"x\"\"\" ON \"s\".\"Part 1\";\n\
             CREATE TRIGGER \"tg \"\"x\"\"\" AFTER INSERT OR UPDATE OR DELETE ON \"s\".\"Part 1\" \
             REFERENCING OLD TABLE AS \"old rows\" NEW TABLE AS \"new_rows\" FOR EACH STATEMENT \
             EXECUTE FUNCTION \"my schema\".\"f\"\"n\"('a''b', '');\n\
             ALTER TABLE \"s\".\"Part 1\" ENABLE ALWAYS TRIGGER \"tg \"\"x\"\"\";\n"
        );
    }
}
