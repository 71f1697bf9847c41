//! Keeping a conversion's foreign-key guards (incremental::inserts) off the writers'
//! path: whether the keys still hold is decided by refreshd at its capture checks, not
//! by each writing statement.
//!
//! A guard lets a dimension's INSERTs (and a tombstoned table's DELETEs) go
//! uncaptured while the foreign keys it rests on are in force. Checking that in the
//! trigger cost every such statement a catalog query (keys, their triggers on every
//! partition, rules): single-row dimension INSERTs ran at 0.17-0.30x of no capture,
//! 0.02-0.03x with 300 fact partitions (a review, 2026-12-05). Now the trigger reads
//! one row of the conversion's *guard table* (`holds`), and refreshd's leader calls the
//! conversion's *keeper function* at every capture check (on DDL within seconds, and
//! every `capture_check_interval`). The keeper:
//!
//! - **held**: `holds` and the keys are in force, and no catalog row they depend on
//!   (the keys, every trigger and rule on the referencing and referenced tables and
//!   their partitions) was *modified* since it last looked. A row modified and changed
//!   back between two checks (a bulk load's `DISABLE TRIGGER ALL` then `ENABLE TRIGGER
//!   ALL`) still has a new `xmin`, so that window is seen. Rows *added* (a partition
//!   attached, with whatever rows it held), or rows inserted into those catalogs
//!   anywhere since the last look by the statistics collector's counts (a trigger or
//!   rule created, used and dropped between two checks: a cascade it cancelled leaves
//!   rows referencing a deleted row), make it look for orphans first: found, the guard
//!   is broken (a review, 2026-12-05).
//! - **broken**: it was holding, and one of those is no longer true. It turns `holds`
//!   off and records that a full recompute is *owed*: writers that read `holds` before
//!   that commit skipped their capture. refreshd waits, without blocking anyone
//!   (`pg_locks`), until every transaction then holding a write lock on the view's
//!   tables, and every session of the database then holding a snapshot (a REPEATABLE
//!   READ writer reads `holds` with a snapshot taken before the flip, and may write
//!   later), has ended; then it *settles* (clears `owed`, fenced by `epoch`) and
//!   recomputes the view fully. A leader that dies before settling leaves `owed` set:
//!   the next leader finds the view broken again and does the same; one that dies after
//!   settling is followed by a leader whose first refresh recomputes everything anyway
//!   (its start).
//! - **restored**: not holding, the keys are in force, and no row of a referencing
//!   table references nothing (a key whose triggers were disabled let such rows in,
//!   and enabling them again checks nothing): `holds` on again. The scan is paid once
//!   per break, not per statement.
//! - **orphans**: the keys are in force but such rows exist: left off (captured).
//! - **off**: the keys are not in force.
//!
//! A writer in the replica role (a subscription's apply worker, a restore) is not
//! checked against any key: every capture trigger of a table on either side of a
//! guard's keys marks its transaction in the *marks table* in that role (one row per
//! transaction: an INSERT, so that replica-role transactions never wait for each other
//! there). A mark turns the guard off for every writer from its commit on; the keeper
//! takes the marks, turns `holds` off, owes a recompute if it was on (a writer may have
//! skipped its capture beside that transaction) and leaves the guard off for an hour
//! (**replica**), so that a subscription writing steadily does not break it at every
//! check. Its own writes are captured in full.
//!
//! Without a refreshd checking capture (`capture = "off"`, none running since the
//! install) `holds` stays as it was last set: off after an install, so a guard is only
//! relied on once a keeper found it sound.

use std::fmt::Write as _;

use super::generate::{beside, dollar, literal, pg_op};
use super::inserts::{ForeignKey, InsertGuard};
use crate::pg::ident::{quote_ident, QualifiedName};

/// The table holding the guard state of the conversion whose consume function is
/// `consume`: named beside it (`<consume>_guard`), so that refreshd finds a keyed view's
/// guard from the consume function its configuration names (`buffer`).
pub fn guard_table(consume: &QualifiedName) -> QualifiedName {
    beside(consume, "guard")
}

/// Where transactions in the replica role mark the guard of the conversion whose
/// consume function is `consume`.
pub fn guard_marks(consume: &QualifiedName) -> QualifiedName {
    beside(consume, "guard_replica")
}

/// The keeper function (one `bigint` argument) of the conversion whose consume
/// function is `consume`.
pub fn guard_function(consume: &QualifiedName) -> QualifiedName {
    beside(consume, "keep_guard")
}

/// How long after a write in the replica role the guard stays off.
pub const REPLICA_BACKOFF: &str = "1 hour";

/// How a keeper function's comment begins.
pub const KEEPER_COMMENT_PREFIX: &str = "refreshd: keeps the foreign-key guard in ";

/// What the keeper returns, as refreshd reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    Held,
    /// A full recompute is owed once the writers of that moment have ended; settle
    /// with this epoch.
    Broken(i64),
    Restored,
    Orphans,
    Off,
    /// A settle that found the epoch moved (a replica-role writer since): still owed.
    Moved,
    /// The keys are in force, but a write in the replica role came less than
    /// [`REPLICA_BACKOFF`] ago: left off (a subscription writing steadily would break it
    /// again at once, each time owing a recompute).
    Replica,
    Settled,
}

impl Kept {
    /// Parses the keeper's answer.
    pub fn parse(s: &str) -> Option<Kept> {
        Some(match s {
            "held" => Kept::Held,
            "restored" => Kept::Restored,
            "orphans" => Kept::Orphans,
            "off" => Kept::Off,
            "moved" => Kept::Moved,
            "replica" => Kept::Replica,
            "settled" => Kept::Settled,
            _ => Kept::Broken(s.strip_prefix("broken ")?.parse().ok()?),
        })
    }
}

/// One foreign key a guard rests on, its tables resolved to catalog names.
#[derive(Debug, Clone)]
struct Key {
    oid: u32,
    referencing: QualifiedName,
    columns: Vec<String>,
    referenced: QualifiedName,
    ref_columns: Vec<String>,
}

/// A conversion's guards, and the SQL that keeps them.
#[derive(Debug, Clone)]
pub struct Keeper {
    pub table: QualifiedName,
    /// Where writers in the replica role mark their transactions (module doc).
    pub marks: QualifiedName,
    pub function: QualifiedName,
    /// The keys are in force (every guard's [`InsertGuard::keys_hold_sql`]).
    in_force: String,
    keys: Vec<Key>,
}

impl Keeper {
    /// The keeper of the `guards` of the conversion whose consume function is
    /// `consume` (tables resolved by `resolve`, from the derivation's `schema.name`);
    /// `None` without a guard.
    pub fn new(
        consume: &QualifiedName,
        guards: &[&InsertGuard],
        resolve: impl Fn(&str) -> Option<QualifiedName>,
    ) -> Result<Option<Keeper>, String> {
        if guards.is_empty() {
            return Ok(None);
        }
        let mut parts: Vec<String> = Vec::new();
        let mut keys: Vec<Key> = Vec::new();
        for g in guards {
            let p = g.keys_hold_sql();
            if !parts.contains(&p) {
                parts.push(p);
            }
            for k in g.occurrences.iter().flatten() {
                if keys.iter().any(|x| x.oid == k.oid) {
                    continue;
                }
                keys.push(Self::key(k, &resolve)?);
            }
        }
        Ok(Some(Keeper {
            table: guard_table(consume),
            marks: guard_marks(consume),
            function: guard_function(consume),
            in_force: parts.join(" AND "),
            keys,
        }))
    }

    fn key(
        k: &ForeignKey,
        resolve: &impl Fn(&str) -> Option<QualifiedName>,
    ) -> Result<Key, String> {
        let find = |t: &str| {
            resolve(t)
                .ok_or_else(|| format!("foreign key {}: table {t} not among the view's", k.name))
        };
        Ok(Key {
            oid: k.oid,
            referencing: find(&k.table)?,
            columns: k.columns.clone(),
            referenced: find(&k.references)?,
            ref_columns: k.ref_columns.clone(),
        })
    }

    /// The tables on either side of a key, by the derivation's names' resolution:
    /// their capture triggers turn the guard off in the replica role.
    pub fn touches(&self, table: &QualifiedName) -> bool {
        self.keys
            .iter()
            .any(|k| &k.referencing == table || &k.referenced == table)
    }

    /// What a trigger checks, once per statement: the guard holds, no transaction in
    /// the replica role has marked it since the keeper last looked, and the writer is
    /// not in the replica role. A missing row reads as off.
    pub fn holds_sql(&self) -> String {
        format!(
            "{} AND EXISTS (SELECT 1 FROM {} WHERE holds AND NOT EXISTS (SELECT 1 FROM {}))",
            InsertGuard::not_replica_sql(),
            self.table.quoted(),
            self.marks.quoted()
        )
    }

    /// A statement for every capture trigger of a table [`Keeper::touches`]: in the
    /// replica role, the transaction marks the guard (once), which turns it off for
    /// every writer from its commit on, and for the keeper (module doc). An INSERT,
    /// not an UPDATE of the guard's row: replica-role transactions must not wait for
    /// each other there (they deadlocked so: a review, 2026-12-05).
    pub fn replica_sql(&self) -> String {
        format!(
            "    IF pg_catalog.current_setting('session_replication_role') {eq} 'replica' THEN\n        INSERT INTO {m} (x) SELECT pg_catalog.txid_current() WHERE NOT EXISTS (SELECT 1 FROM {m} WHERE x {eq} pg_catalog.txid_current());\n    END IF;\n",
            m = self.marks.quoted(),
            eq = pg_op("="),
        )
    }

    /// The catalog rows the keys' force depends on, as `kind oid:xmin` texts, sorted:
    /// the keys and every foreign key of the referencing tables, the triggers of both
    /// sides and the rules of the referencing side, partitions included.
    fn seen_sql(&self) -> String {
        let oids = self.oids();
        format!(
            "ARRAY(WITH k AS (SELECT c.conrelid, c.confrelid FROM pg_constraint c WHERE c.oid = ANY ({oids})), \
             rel AS (SELECT x.relid, true AS referencing FROM k, LATERAL pg_partition_tree(k.conrelid) x \
                     UNION SELECT x.relid, false FROM k, LATERAL pg_partition_tree(k.confrelid) x) \
             SELECT 'c' || c.oid || ':' || c.xmin FROM pg_constraint c \
              WHERE c.oid = ANY ({oids}) OR (c.contype = 'f' AND c.conrelid IN (SELECT relid FROM rel WHERE referencing)) \
             UNION SELECT 't' || t.oid || ':' || t.xmin FROM pg_trigger t WHERE t.tgrelid IN (SELECT relid FROM rel) \
             UNION SELECT 'w' || w.oid || ':' || w.xmin FROM pg_rewrite w WHERE w.ev_class IN (SELECT relid FROM rel WHERE referencing) \
             ORDER BY 1)"
        )
    }

    /// Rows ever inserted into the catalogs a transient change to the keys' force
    /// writes (a trigger or rule created and dropped between two checks: rows `seen`
    /// cannot show), by the statistics collector: when it moved, the keeper looks for
    /// orphans even while the guard holds. Not `pg_constraint` (every temporary table
    /// with a primary key writes one) nor `pg_inherits` (an attached partition adds
    /// rows to `seen`; a child by inheritance turns the keys off).
    fn catalog_inserts_sql() -> &'static str {
        "(pg_stat_get_tuples_inserted('pg_catalog.pg_trigger'::regclass) \
          + pg_stat_get_tuples_inserted('pg_catalog.pg_rewrite'::regclass))"
    }

    fn oids(&self) -> String {
        let list: Vec<String> = self.keys.iter().map(|k| k.oid.to_string()).collect();
        format!("ARRAY[{}]::oid[]", list.join(", "))
    }

    /// A row of a referencing table whose key columns are all set references no row
    /// (MATCH SIMPLE: a NULL member checks nothing).
    fn orphans_sql(&self) -> String {
        let each: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                let set: Vec<String> = k
                    .columns
                    .iter()
                    .map(|c| format!("r.{} IS NOT NULL", quote_ident(c)))
                    .collect();
                let on: Vec<String> = k
                    .columns
                    .iter()
                    .zip(&k.ref_columns)
                    .map(|(a, b)| format!("d.{} = r.{}", quote_ident(b), quote_ident(a)))
                    .collect();
                format!(
                    "EXISTS (SELECT 1 FROM {} AS r WHERE {} AND NOT EXISTS (SELECT 1 FROM {} AS d WHERE {}))",
                    k.referencing.quoted(),
                    set.join(" AND "),
                    k.referenced.quoted(),
                    on.join(" AND ")
                )
            })
            .collect();
        each.join(" OR ")
    }

    /// The keeper's body (module doc): `settle` clears the debt of that epoch; else the
    /// marks are taken, then the guard is found held, broken, restored, off, or left off
    /// for orphans or a recent replica-role write.
    fn keeper_body(&self) -> String {
        let t = self.table.quoted();
        let m = self.marks.quoted();
        format!(
            "DECLARE\n    s record;\n    seen_now text[];\n    inserts_now bigint;\n    marked bigint;\n    broken boolean;\nBEGIN\n\
             IF settle IS NOT NULL THEN\n\
             \x20   UPDATE {t} SET owed = false WHERE owed AND epoch = settle;\n\
             \x20   IF FOUND THEN RETURN 'settled'; END IF;\n\
             \x20   RETURN 'moved';\n\
             END IF;\n\
             SELECT holds, owed, epoch, seen, catalog_inserts, replica_at INTO s FROM {t};\n\
             IF NOT FOUND THEN\n\
             \x20   INSERT INTO {t} VALUES (false, false, 0, NULL, NULL, NULL);\n\
             \x20   RETURN 'off';\n\
             END IF;\n\
             -- Replica-role transactions committed since the last look: off, owing a\n\
             -- recompute if it was on (a writer may have skipped its capture beside them).\n\
             WITH taken AS (DELETE FROM {m} RETURNING 1) SELECT count(*) INTO marked FROM taken;\n\
             IF marked > 0 THEN\n\
             \x20   UPDATE {t} SET owed = owed OR holds, holds = false, epoch = epoch + 1, seen = NULL, replica_at = now()\n\
             \x20    RETURNING holds, owed, epoch, seen, catalog_inserts, replica_at INTO s;\n\
             END IF;\n\
             IF s.owed THEN RETURN 'broken ' || s.epoch; END IF;\n\
             seen_now := {seen};\n\
             inserts_now := {inserts};\n\
             IF s.holds THEN\n\
             \x20   broken := NOT ({in_force}) OR EXISTS (SELECT 1 FROM unnest(s.seen) AS o(e) JOIN unnest(seen_now) AS n(e) \
             ON split_part(o.e, ':', 1) = split_part(n.e, ':', 1) AND o.e <> n.e);\n\
             \x20   -- Rows added (a partition attached, with its rows), or catalog rows inserted\n\
             \x20   -- anywhere since (a trigger or rule created and dropped again): orphans?\n\
             \x20   IF NOT broken AND (EXISTS (SELECT 1 FROM unnest(seen_now) AS n(e) WHERE n.e <> ALL (s.seen)) \
             OR inserts_now IS DISTINCT FROM s.catalog_inserts) THEN\n\
             \x20       broken := {orphans};\n\
             \x20   END IF;\n\
             \x20   IF NOT broken THEN\n\
             \x20       IF seen_now IS DISTINCT FROM s.seen OR inserts_now IS DISTINCT FROM s.catalog_inserts THEN\n\
             \x20           UPDATE {t} SET seen = seen_now, catalog_inserts = inserts_now WHERE holds AND epoch = s.epoch;\n\
             \x20       END IF;\n\
             \x20       RETURN 'held';\n\
             \x20   END IF;\n\
             \x20   UPDATE {t} SET holds = false, owed = true, epoch = epoch + 1, seen = NULL RETURNING epoch INTO s.epoch;\n\
             \x20   RETURN 'broken ' || s.epoch;\n\
             END IF;\n\
             IF NOT ({in_force}) THEN RETURN 'off'; END IF;\n\
             IF s.replica_at > now() - interval '{REPLICA_BACKOFF}' THEN RETURN 'replica'; END IF;\n\
             IF {orphans} THEN RETURN 'orphans'; END IF;\n\
             UPDATE {t} SET holds = true, seen = seen_now, catalog_inserts = inserts_now WHERE NOT holds AND NOT owed AND epoch = s.epoch;\n\
             IF FOUND THEN RETURN 'restored'; END IF;\n\
             RETURN 'off';\n\
             END;\n",
            seen = self.seen_sql(),
            inserts = Self::catalog_inserts_sql(),
            in_force = self.in_force,
            orphans = self.orphans_sql(),
        )
    }

    /// The guard table (one row: off) and the keeper function, each made anew (an
    /// install recomputes the view under locks no writer passes), and their rollback.
    /// `owner`: the role that may call the keeper besides its owner (in place, the
    /// view's).
    pub fn install_sql(&self, owner: Option<&str>, w: &mut String, rollback: &mut String) {
        let t = self.table.quoted();
        let m = self.marks.quoted();
        let f = self.function.quoted();
        let _ = writeln!(w, "DROP TABLE IF EXISTS {t};\nDROP TABLE IF EXISTS {m};");
        let _ = writeln!(
            w,
            "CREATE TABLE {t} (holds boolean NOT NULL, owed boolean NOT NULL, epoch bigint NOT NULL, seen text[], \
             catalog_inserts bigint, replica_at timestamptz);\nINSERT INTO {t} VALUES (false, false, 0, NULL, NULL, NULL);\nREVOKE ALL ON TABLE {t} FROM PUBLIC;\n\
             CREATE TABLE {m} (x bigint NOT NULL);\nREVOKE ALL ON TABLE {m} FROM PUBLIC;"
        );
        let _ = writeln!(
            w,
            "COMMENT ON TABLE {t} IS {};\nCOMMENT ON TABLE {m} IS {};",
            literal(&format!(
                "refreshd: whether the foreign keys guarding the capture hold (read by its triggers at each statement; kept by {}(), which refreshd calls at each capture check)",
                self.function
            )),
            literal(&format!(
                "refreshd: transactions in the replica role that wrote a table on either side of the keys guarding the capture (the guard is off while a row is here; {}() takes them)",
                self.function
            ))
        );
        let body = self.keeper_body();
        let _ = writeln!(
            w,
            "CREATE OR REPLACE FUNCTION {f}(settle bigint)\nRETURNS text\nLANGUAGE plpgsql\nVOLATILE\nSECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\nAS {};\nREVOKE ALL ON FUNCTION {f}(bigint) FROM PUBLIC;",
            dollar(&body)
        );
        let _ = writeln!(
            w,
            "COMMENT ON FUNCTION {f}(bigint) IS {};",
            literal(&format!(
                "{KEEPER_COMMENT_PREFIX}{} (whether the foreign keys its capture relies on hold); refreshd calls it at each capture check",
                self.table
            ))
        );
        if let Some(o) = owner {
            let _ = writeln!(
                w,
                "GRANT EXECUTE ON FUNCTION {f}(bigint) TO {};",
                quote_ident(o)
            );
        }
        let _ = writeln!(
            rollback,
            "DROP FUNCTION IF EXISTS {f}(bigint);\nDROP TABLE IF EXISTS {t};\nDROP TABLE IF EXISTS {m};"
        );
    }
}
