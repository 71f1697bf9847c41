//! The SQL in `sql/` on a real database: install, validation, the attendance seed's own
//! test suite, idempotency, rollback, one notification per statement, refreshd's
//! `check`/`refresh` on the views it creates, and the keyed variants (issue 11): the
//! keys their triggers send, and that applying those keys keeps a live table equal to
//! its definition.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use support::{refreshd, repo, stderr, stdout, write_config, TestDb};

fn sql(rel: &str) -> PathBuf {
    repo().join("sql").join(rel)
}

/// Runs a psql script; it must exit 0. Returns stdout and stderr together (the seed's
/// suite reports tests 6 and 7 through NOTICEs, which go to stderr).
fn run(db: &TestDb, rel: &str) -> String {
    let out = db.server.psql_file(&db.name, &sql(rel));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{rel} failed ({}):\n{all}",
        out.status
    );
    all
}

fn install_all(db: &TestDb) {
    run(db, "attendance/install.sql");
    run(db, "inventory/install.sql");
    run(db, "demo/install.sql");
    db.psql(
        "SELECT refreshd_demo.generate_attendance(0.01), refreshd_demo.generate_inventory(0.01)",
    );
}

fn seed_suite_passes(db: &TestDb) {
    let out = run(db, "attendance/test.sql");
    assert!(
        !out.contains("FAIL"),
        "the seed's test suite failed:\n{out}"
    );
    for n in 1..=7 {
        assert!(
            out.lines().any(|l| l.contains("PASS")) && out.contains(&format!("Test {n}")),
            "test {n} did not run:\n{out}"
        );
    }
    let passes = out.matches("PASS").count();
    assert!(passes >= 7, "{passes} PASS lines:\n{out}");
}

#[test]
fn attendance_install_validate_seed_suite_rollback_reinstall() {
    let db = TestDb::new();
    install_all(&db);
    assert!(
        db.psql("SELECT count(*) FROM public.member_attendance")
            .parse::<i64>()
            .unwrap()
            > 5000
    );
    run(&db, "attendance/validate.sql");
    seed_suite_passes(&db);
    // The seed's suite writes (and undoes) attendance: the keyed table still matches.
    run(&db, "attendance/validate.sql");

    // Idempotent.
    run(&db, "attendance/install.sql");
    run(&db, "attendance/validate.sql");

    // validate.sql notices a keyed table that fell behind its definition (here: a write
    // with nobody applying its keys), and install.sql refills the table.
    db.psql("DELETE FROM public.training_sessions WHERE id = (SELECT min(training_session_id::text)::uuid FROM public.member_attendance)");
    let out = db
        .server
        .psql_file(&db.name, &sql("attendance/validate.sql"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a stale keyed table fails validation"
    );
    assert!(
        text.contains(
            "attendance_statistics_live differs from attendance_statistics_def in 1 group(s)"
        ),
        "{text}"
    );
    run(&db, "attendance/install.sql");
    run(&db, "attendance/validate.sql");

    // Rollback removes the seed's objects and keeps the data; install brings them back.
    let rows = db.psql("SELECT count(*) FROM public.member_attendance");
    run(&db, "attendance/rollback.sql");
    assert_eq!(
        db.psql(
            "SELECT count(*) FROM pg_matviews WHERE matviewname = 'attendance_statistics_summary'"
        ),
        "0"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%att_stats%'"),
        "0"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'attendance\\_keys\\_%'"),
        "0",
        "the keyed triggers are gone"
    );
    assert_eq!(
        db.psql(
            "SELECT coalesce(to_regclass('public.attendance_statistics_live')::text, '') \
             || coalesce(to_regclass('public.attendance_statistics_def')::text, '') \
             || (SELECT count(*) FROM pg_proc WHERE proname LIKE 'attendance\\_keys\\_%')"
        ),
        "0",
        "the keyed table, view and functions are gone"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM public.member_attendance"),
        rows
    );
    run(&db, "attendance/install.sql");
    run(&db, "attendance/validate.sql");
    seed_suite_passes(&db);
    assert_eq!(
        db.psql(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'attendance\\_keys\\_%' AND tgenabled <> 'D'"
        ),
        "9"
    );
    assert_eq!(attendance_drift_sync(&db), "0", "refilled by install");
}

#[test]
fn inventory_install_validate_rollback_reinstall() {
    let db = TestDb::new();
    install_all(&db);
    run(&db, "inventory/validate.sql");
    run(&db, "inventory/install.sql");
    run(&db, "inventory/validate.sql");
    run(&db, "inventory/rollback.sql");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_matviews WHERE schemaname = 'core'"),
        "0"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'inventory\\_keys\\_%'"),
        "0"
    );
    assert_eq!(
        db.psql(
            "SELECT coalesce(to_regclass('core.inventory_valuation_live')::text, '') \
             || coalesce(to_regclass('core.inventory_valuation_def')::text, '') \
             || (SELECT count(*) FROM pg_proc WHERE proname LIKE 'inventory\\_keys\\_%')"
        ),
        "0"
    );
    // Writes while the keyed variant is absent: the reinstall fills the table anew.
    db.psql("SELECT refreshd_demo.write_inventory(20)");
    run(&db, "inventory/install.sql");
    run(&db, "inventory/validate.sql");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_matviews WHERE schemaname = 'core' AND ispopulated"),
        "3"
    );
}

#[tokio::test]
async fn triggers_notify_once_per_statement_with_a_constant_payload() {
    let db = TestDb::new();
    install_all(&db);
    let (client, mut conn) = tokio_postgres::connect(&db.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = s.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute("LISTEN refresh_attendance_stats; LISTEN refresh_inventory_views")
        .await
        .unwrap();

    // 100 rows in one statement; then a transaction of several statements.
    db.psql("UPDATE public.member_attendance SET notes = 'x' WHERE id IN (SELECT id FROM public.member_attendance LIMIT 100)");
    db.psql(
        "BEGIN; DELETE FROM public.member_attendance WHERE id IN (SELECT id FROM public.member_attendance LIMIT 3); \
         UPDATE public.training_sessions SET status = status WHERE id IN (SELECT id FROM public.training_sessions LIMIT 5); COMMIT;",
    );
    db.psql("SELECT refreshd_demo.write_inventory(50)");
    // A marker notification: everything before it has been delivered when it arrives.
    db.psql("NOTIFY refresh_attendance_stats, 'marker'");
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if n.1 == "marker" {
            break;
        }
        got.push(n);
    }
    let att: Vec<_> = got
        .iter()
        .filter(|n| n.0 == "refresh_attendance_stats")
        .collect();
    let inv: Vec<_> = got
        .iter()
        .filter(|n| n.0 == "refresh_inventory_views")
        .collect();
    assert_eq!(att.len(), 2, "one per transaction: {got:?}");
    assert!(!inv.is_empty() && inv.len() <= 50, "{got:?}");
    assert!(
        got.iter().all(|n| n.1.is_empty()),
        "constant empty payload: {got:?}"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_trigger WHERE (tgname LIKE '%att_stats%' OR tgname LIKE '%inv_views%') AND tgtype & 1 = 1"),
        "0",
        "every notify trigger is FOR EACH STATEMENT"
    );
}

#[test]
fn check_and_refresh_the_seed_views() {
    let db = TestDb::new();
    install_all(&db);
    let views = r#"
[[view]]
name = "public.attendance_statistics_summary"
channels = ["refresh_attendance_stats"]
[[view]]
name = "core.mv_product_stock_summary"
channels = ["refresh_inventory_views"]
[[view]]
name = "core.mv_inventory_valuation"
channels = ["refresh_inventory_views"]
[[view]]
name = "core.mv_low_stock_alerts"
channels = ["refresh_inventory_views"]
"#;
    let (_d, path) = write_config(&format!("[database]\nurl = \"{}\"\n{views}", db.dsn()));
    let p = path.to_str().unwrap();
    let out = refreshd(&["check", "-c", p]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("fed by refresh_attendance_stats via 6 trigger(s) on public.member_attendance, public.training_sessions"), "{text}");
    assert!(
        text.contains("unique index idx_att_stats_summary_pk (category_id, season_id)"),
        "{text}"
    );
    assert!(
        text.contains("reads materialized view(s) core.mv_product_stock_summary"),
        "{text}"
    );
    let out = refreshd(&["refresh", "-c", p, "--all"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out).matches("refreshed (concurrently)").count(),
        4,
        "{}",
        stdout(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Keyed variants (sql/attendance/005_keyed_statistics.sql, sql/inventory/004_keyed_valuation.sql)

const ATTENDANCE_KEYS: &str = "attendance_keys";
const INVENTORY_KEYS: &str = "inventory_keys";

/// Rows of `public.attendance_statistics_live` and `public.attendance_statistics_def`
/// that differ (`last_refreshed` aside: it is `now()` of the computing transaction).
const ATTENDANCE_DRIFT: &str = "SELECT count(*) FROM (\
       (SELECT to_jsonb(l) - 'last_refreshed' FROM public.attendance_statistics_live l \
        EXCEPT ALL SELECT to_jsonb(d) - 'last_refreshed' FROM public.attendance_statistics_def d) \
       UNION ALL \
       (SELECT to_jsonb(d) - 'last_refreshed' FROM public.attendance_statistics_def d \
        EXCEPT ALL SELECT to_jsonb(l) - 'last_refreshed' FROM public.attendance_statistics_live l)) x";

/// The same for the inventory pair, whose definition has no `now()`: whole rows.
const INVENTORY_DRIFT: &str = "SELECT count(*) FROM (\
       (TABLE core.inventory_valuation_live EXCEPT ALL TABLE core.inventory_valuation_def) \
       UNION ALL \
       (TABLE core.inventory_valuation_def EXCEPT ALL TABLE core.inventory_valuation_live)) x";

fn attendance_drift_sync(db: &TestDb) -> String {
    db.psql(ATTENDANCE_DRIFT)
}

/// Test ids: kind (8 hex digits) and number, like refreshd_demo's `demo_uuid`, with
/// kinds of their own (a0 category, a1 season, a2 member, a3 session, b0 warehouse,
/// b1 product).
fn id(kind: u32, n: u32) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}
fn cat(n: u32) -> String {
    id(0xa0, n)
}
fn season(n: u32) -> String {
    id(0xa1, n)
}
fn member(n: u32) -> String {
    id(0xa2, n)
}
fn session(n: u32) -> String {
    id(0xa3, n)
}
fn warehouse(n: u32) -> String {
    id(0xb0, n)
}
fn product(n: u32) -> String {
    id(0xb1, n)
}

/// What one notification on a keys channel names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keys {
    /// `*`: every key.
    All,
    /// The key tuples, each in key order.
    Some(BTreeSet<Vec<String>>),
}

/// Parses a payload as the daemon will (SPEC "Keyed refresh"), strictly: `*`, or a
/// JSON array of arrays of `arity` strings, sorted and without repeats, within the
/// NOTIFY limit.
fn parse_keys(payload: &str, arity: usize) -> Keys {
    assert!(payload.len() < 8000, "payload of {} bytes", payload.len());
    if payload == "*" {
        return Keys::All;
    }
    let v: serde_json::Value =
        serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"));
    let tuples: Vec<Vec<String>> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {payload}"))
        .iter()
        .map(|t| {
            let t = t
                .as_array()
                .unwrap_or_else(|| panic!("not a tuple: {payload}"));
            assert_eq!(t.len(), arity, "{payload}");
            t.iter()
                .map(|x| {
                    x.as_str()
                        .unwrap_or_else(|| panic!("not a string: {payload}"))
                        .to_string()
                })
                .collect()
        })
        .collect();
    assert!(!tuples.is_empty(), "an empty list is never sent: {payload}");
    assert!(
        tuples.windows(2).all(|w| w[0] < w[1]),
        "sorted, each key once: {payload}"
    );
    Keys::Some(tuples.into_iter().collect())
}

/// Key tuples from pairs of ids.
fn keys(tuples: &[&[String]]) -> Keys {
    Keys::Some(tuples.iter().map(|t| t.to_vec()).collect())
}

/// A session LISTENing on `channel`, and a writer connection.
struct KeysListener {
    channel: &'static str,
    arity: usize,
    writer: tokio_postgres::Client,
    _listener: tokio_postgres::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl KeysListener {
    async fn start(db: &TestDb, channel: &'static str, arity: usize) -> KeysListener {
        let (client, mut conn) = tokio_postgres::connect(&db.dsn(), tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut s = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = s.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    if n.channel() == channel {
                        let _ = tx.send(n.payload().to_string());
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .unwrap();
        KeysListener {
            channel,
            arity,
            writer: db.client().await,
            _listener: client,
            rx,
        }
    }

    /// Runs `sql` on the writer connection, then returns what was notified on the
    /// channel since the previous call, in commit order. A marker notification sent
    /// after `sql` committed bounds the wait: everything committed before it has
    /// arrived when it does.
    async fn after(&mut self, sql: &str) -> Vec<Keys> {
        self.writer
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        self.drain().await
    }

    async fn drain(&mut self) -> Vec<Keys> {
        self.writer
            .batch_execute(&format!("NOTIFY {}, 'marker'", self.channel))
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let p = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("the marker notification within 10 s")
                .expect("listener alive");
            if p == "marker" {
                return got;
            }
            got.push(parse_keys(&p, self.arity));
        }
    }
}

/// Applies one notification to the live table the way refreshd's keyed refresh does:
/// one transaction that deletes the table's rows of the keys and inserts the
/// definition's rows of the keys, keys bound as typed parameters; `*` recomputes all.
async fn apply_attendance(client: &mut tokio_postgres::Client, k: &Keys) {
    let tx = client.transaction().await.unwrap();
    match k {
        Keys::All => {
            tx.batch_execute(
                "DELETE FROM public.attendance_statistics_live; \
                 INSERT INTO public.attendance_statistics_live SELECT * FROM public.attendance_statistics_def",
            )
            .await
            .unwrap();
        }
        Keys::Some(set) => {
            let cats: Vec<String> = set.iter().map(|t| t[0].clone()).collect();
            let seasons: Vec<String> = set.iter().map(|t| t[1].clone()).collect();
            tx.execute(
                "DELETE FROM public.attendance_statistics_live l \
                 USING unnest($1::text[]::uuid[], $2::text[]::uuid[]) AS k(category_id, season_id) \
                 WHERE l.category_id = k.category_id AND l.season_id = k.season_id",
                &[&cats, &seasons],
            )
            .await
            .unwrap();
            tx.execute(
                "INSERT INTO public.attendance_statistics_live \
                 SELECT d.* FROM public.attendance_statistics_def d \
                 WHERE (d.category_id, d.season_id) IN \
                       (SELECT * FROM unnest($1::text[]::uuid[], $2::text[]::uuid[]))",
                &[&cats, &seasons],
            )
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
}

async fn apply_inventory(client: &mut tokio_postgres::Client, k: &Keys) {
    let tx = client.transaction().await.unwrap();
    match k {
        Keys::All => {
            tx.batch_execute(
                "DELETE FROM core.inventory_valuation_live; \
                 INSERT INTO core.inventory_valuation_live SELECT * FROM core.inventory_valuation_def",
            )
            .await
            .unwrap();
        }
        Keys::Some(set) => {
            let ids: Vec<String> = set.iter().map(|t| t[0].clone()).collect();
            tx.execute(
                "DELETE FROM core.inventory_valuation_live WHERE warehouse_id = ANY ($1::text[]::uuid[])",
                &[&ids],
            )
            .await
            .unwrap();
            tx.execute(
                "INSERT INTO core.inventory_valuation_live \
                 SELECT * FROM core.inventory_valuation_def WHERE warehouse_id = ANY ($1::text[]::uuid[])",
                &[&ids],
            )
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Categories 1..=`cats`, seasons 1..=2, members 1..=3 (of category 1).
fn attendance_fixture(db: &TestDb, cats: u32) {
    db.psql(&format!(
        "INSERT INTO public.categories (id, name) \
           SELECT ('{}'::text || lpad(to_hex(g), 12, '0'))::uuid, 'cat ' || g FROM generate_series(1, {cats}) g; \
         INSERT INTO public.seasons (id, name) VALUES ('{}', 's1'), ('{}', 's2'); \
         INSERT INTO public.members (id, category_id, first_name, last_name) \
           VALUES ('{}', '{c1}', 'a', 'one'), ('{}', '{c1}', 'b', 'two'), ('{}', '{c1}', 'c', 'three');",
        &cat(0)[..24],
        season(1),
        season(2),
        member(1),
        member(2),
        member(3),
        c1 = cat(1),
    ));
}

/// Each case sends exactly the groups it changed: old and new, distinct, once.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_attendance_triggers_send_exactly_the_changed_groups() {
    let db = TestDb::new();
    run(&db, "attendance/install.sql");
    attendance_fixture(&db, 3);
    let mut l = KeysListener::start(&db, ATTENDANCE_KEYS, 2).await;
    attendance_inserts_send_their_groups(&mut l).await;
    unread_columns_and_rolled_back_writes_send_nothing(&mut l).await;
    changes_and_moves_send_old_and_new_groups(&mut l).await;
    let (c1, s2) = (cat(1), season(2));
    let g = |c: &String, s: &String| vec![c.clone(), s.clone()];

    // Two statements of one transaction naming the same group: delivered once.
    let got = l
        .after(&format!(
            "BEGIN; \
             UPDATE public.member_attendance SET attendance_status = 'absent' WHERE training_session_id = '{t2}'; \
             UPDATE public.training_sessions SET status = 'cancelled' WHERE id = '{t2}'; \
             COMMIT",
            t2 = session(2)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c1, &s2)])]);

    // TRUNCATE: every group, "*", once per transaction.
    let got = l.after("TRUNCATE public.member_attendance").await;
    assert_eq!(got, vec![Keys::All]);
    let got = l
        .after("TRUNCATE public.member_attendance, public.training_sessions")
        .await;
    assert_eq!(got, vec![Keys::All]);
}

/// Sessions and attendance inserted: their groups, each once per statement.
async fn attendance_inserts_send_their_groups(l: &mut KeysListener) {
    let (c1, c2, s1, s2) = (cat(1), cat(2), season(1), season(2));
    let g = |c: &String, s: &String| vec![c.clone(), s.clone()];
    // Four sessions in one statement: their four groups, in one notification.
    let got = l
        .after(&format!(
            "INSERT INTO public.training_sessions (id, category_id, season_id, session_date, status) VALUES \
             ('{}', '{c1}', '{s1}', '2024-01-01', 'done'), ('{}', '{c1}', '{s2}', '2024-01-02', 'done'), \
             ('{}', '{c2}', '{s1}', '2024-01-03', 'planned'), ('{}', '{c2}', '{s2}', '2024-01-04', 'done')",
            session(1),
            session(2),
            session(3),
            session(4)
        ))
        .await;
    assert_eq!(
        got,
        vec![keys(&[
            &g(&c1, &s1),
            &g(&c1, &s2),
            &g(&c2, &s1),
            &g(&c2, &s2)
        ])]
    );

    // One member_attendance row: exactly its session's group.
    let got = l
        .after(&format!(
            "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
             VALUES ('{}', '{}', 'present')",
            member(1),
            session(1)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c1, &s1)])]);

    // Five rows over two groups in one statement: each group once.
    let got = l
        .after(&format!(
            "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) VALUES \
             ('{m1}', '{t2}', 'present'), ('{m2}', '{t2}', 'late'), ('{m3}', '{t2}', 'absent'), \
             ('{m1}', '{t3}', 'present'), ('{m2}', '{t3}', 'excused')",
            m1 = member(1),
            m2 = member(2),
            m3 = member(3),
            t2 = session(2),
            t3 = session(3)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c1, &s2), &g(&c2, &s1)])]);
}

/// Writes of columns the definition does not read, of no row, or rolled back: nothing.
async fn unread_columns_and_rolled_back_writes_send_nothing(l: &mut KeysListener) {
    // Columns the definition does not read: nothing. Statements matching no row: nothing.
    let got = l
        .after(
            "UPDATE public.member_attendance SET notes = 'n'; \
             UPDATE public.training_sessions SET title = 't', updated_at = now(); \
             DELETE FROM public.member_attendance WHERE false; \
             UPDATE public.training_sessions SET status = 'done' WHERE false",
        )
        .await;
    assert_eq!(got, vec![]);

    // A rolled-back write: nothing.
    let got = l
        .after(&format!(
            "BEGIN; DELETE FROM public.member_attendance WHERE training_session_id = '{}'; ROLLBACK",
            session(2)
        ))
        .await;
    assert_eq!(got, vec![]);
}

/// A status change sends its group; a row or session moved sends the old and the new
/// group; a deleted session sends its group.
async fn changes_and_moves_send_old_and_new_groups(l: &mut KeysListener) {
    let (c1, c2, c3, s1, s2) = (cat(1), cat(2), cat(3), season(1), season(2));
    let g = |c: &String, s: &String| vec![c.clone(), s.clone()];
    // A status change: its group.
    let got = l
        .after(&format!(
            "UPDATE public.member_attendance SET attendance_status = 'late' \
             WHERE member_id = '{}' AND training_session_id = '{}'",
            member(1),
            session(1)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c1, &s1)])]);

    // A row moved to a session of another group: both groups.
    let got = l
        .after(&format!(
            "UPDATE public.member_attendance SET training_session_id = '{}' \
             WHERE member_id = '{}' AND training_session_id = '{}'",
            session(4),
            member(3),
            session(2)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c1, &s2), &g(&c2, &s2)])]);

    // A session moved to another category: the old and the new group.
    let got = l
        .after(&format!(
            "UPDATE public.training_sessions SET category_id = '{c3}' WHERE id = '{}'",
            session(1)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c1, &s1), &g(&c3, &s1)])]);

    // Its attendance now belongs to the new group.
    let got = l
        .after(&format!(
            "DELETE FROM public.member_attendance WHERE training_session_id = '{}'",
            session(1)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c3, &s1)])]);

    // Deleting a session cascades to its attendance: its group, from the session's
    // trigger (the cascaded rows no longer find their session).
    let got = l
        .after(&format!(
            "DELETE FROM public.training_sessions WHERE id = '{}'",
            session(3)
        ))
        .await;
    assert_eq!(got, vec![keys(&[&g(&c2, &s1)])]);
}

/// 99 uuid pairs fit in a NOTIFY payload (80 bytes each), 100 do not: those become "*".
#[tokio::test(flavor = "multi_thread")]
async fn keyed_attendance_payload_over_the_notify_limit_becomes_all() {
    let db = TestDb::new();
    run(&db, "attendance/install.sql");
    attendance_fixture(&db, 100);
    let mut l = KeysListener::start(&db, ATTENDANCE_KEYS, 2).await;
    let sessions = |season_n: u32, cats: u32| {
        format!(
            "INSERT INTO public.training_sessions (id, category_id, season_id, session_date) \
             SELECT ('{}'::text || lpad(to_hex({season_n} * 1000 + g), 12, '0'))::uuid, \
                    ('{}'::text || lpad(to_hex(g), 12, '0'))::uuid, '{}', '2024-01-01' \
             FROM generate_series(1, {cats}) g",
            &session(0)[..24],
            &cat(0)[..24],
            season(season_n)
        )
    };

    let got = l.after(&sessions(1, 99)).await;
    let Keys::Some(set) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(got.len(), 1);
    assert_eq!(set.len(), 99);
    assert!(set.iter().all(|t| t[1] == season(1)));

    assert_eq!(l.after(&sessions(2, 100)).await, vec![Keys::All]);

    // The same through member_attendance (keys found through the sessions).
    let attend = |season_n: u32| {
        format!(
            "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
             SELECT '{}', id, 'present' FROM public.training_sessions WHERE season_id = '{}'",
            member(1),
            season(season_n)
        )
    };
    let got = l.after(&attend(1)).await;
    assert!(
        matches!(&got[..], [Keys::Some(set)] if set.len() == 99),
        "{got:?}"
    );
    assert_eq!(l.after(&attend(2)).await, vec![Keys::All]);
    // And a move of all 100 sessions of season 2 (old and new groups: 200 keys).
    assert_eq!(
        l.after(&format!(
            "UPDATE public.training_sessions SET season_id = '{}' WHERE season_id = '{}'",
            season(1),
            season(2)
        ))
        .await,
        vec![Keys::All]
    );
}

/// Applying each notification as refreshd will (delete the keys' rows, insert the
/// definition's rows of the keys, one transaction) leaves the table equal to the
/// definition: after an insert, a move between groups, a delete that empties a group,
/// a new group, bulk and random writes, and a TRUNCATE.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_attendance_applying_the_keys_makes_the_table_equal_to_its_definition() {
    let db = TestDb::new();
    install_all(&db);
    let mut applier = db.client().await;
    assert_eq!(
        count(&applier, ATTENDANCE_DRIFT).await,
        0,
        "filled at install"
    );
    let groups = count(
        &applier,
        "SELECT count(*) FROM public.attendance_statistics_def",
    )
    .await;
    assert!(groups >= 20, "{groups} groups");
    let mut l = KeysListener::start(&db, ATTENDANCE_KEYS, 2).await;

    let steps = attendance_steps();
    for (what, sql) in steps {
        let got = l.after(&sql).await;
        assert!(!got.is_empty(), "{what}: no keys sent");
        assert!(
            count(&applier, ATTENDANCE_DRIFT).await > 0,
            "{what}: the write changed the definition (else this step proves nothing)"
        );
        for k in &got {
            apply_attendance(&mut applier, k).await;
        }
        assert_eq!(
            count(&applier, ATTENDANCE_DRIFT).await,
            0,
            "{what}: after applying {got:?}"
        );
    }

    // One insert: the table differs from the definition in exactly that group, and
    // recomputing that one key repairs it.
    let got = l
        .after(&format!(
            "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
             SELECT m.id, '{}', 'absent' FROM public.members m WHERE m.id <> '{}' ORDER BY m.id LIMIT 1",
            session(1),
            member(1)
        ))
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    let Keys::Some(set) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(set.len(), 1);
    assert_eq!(
        count(&applier, ATTENDANCE_DRIFT).await,
        2,
        "one row out, one in"
    );
    apply_attendance(&mut applier, &got[0]).await;
    assert_eq!(count(&applier, ATTENDANCE_DRIFT).await, 0);
    run(&db, "attendance/validate.sql");
}

/// The writes `keyed_attendance_applying_the_keys_...` applies the keys of, each as
/// (what it does, the SQL).
fn attendance_steps() -> Vec<(&'static str, String)> {
    vec![
        (
            "insert one attendance row",
            "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
             SELECT m.id, ts.id, 'present' FROM public.training_sessions ts \
             JOIN public.members m ON m.category_id = ts.category_id \
             WHERE NOT EXISTS (SELECT 1 FROM public.member_attendance ma \
                               WHERE ma.member_id = m.id AND ma.training_session_id = ts.id) \
             ORDER BY ts.id, m.id LIMIT 1"
                .into(),
        ),
        (
            "move a session with attendance to another season",
            "UPDATE public.training_sessions SET season_id = \
               (SELECT id FROM public.seasons WHERE id <> training_sessions.season_id ORDER BY id LIMIT 1) \
             WHERE id = (SELECT training_session_id FROM public.member_attendance ORDER BY id LIMIT 1)"
                .into(),
        ),
        (
            "move attendance rows between sessions of different groups",
            "UPDATE public.member_attendance ma SET training_session_id = \
               (SELECT ts.id FROM public.training_sessions ts ORDER BY ts.id DESC LIMIT 1) \
             WHERE ma.id IN (SELECT DISTINCT ON (member_id) id FROM public.member_attendance \
                             ORDER BY member_id, id LIMIT 3) \
               AND NOT EXISTS (SELECT 1 FROM public.member_attendance x \
                               WHERE x.member_id = ma.member_id \
                                 AND x.training_session_id = (SELECT ts.id FROM public.training_sessions ts ORDER BY ts.id DESC LIMIT 1))"
                .into(),
        ),
        (
            "delete every session of one group (cascading to its attendance)",
            "DELETE FROM public.training_sessions \
             WHERE (category_id, season_id) = \
                   (SELECT category_id, season_id FROM public.attendance_statistics_def ORDER BY 1, 2 LIMIT 1)"
                .into(),
        ),
        (
            "a new group",
            format!(
                "INSERT INTO public.categories (id, name) VALUES ('{c}', 'new'); \
                 INSERT INTO public.members (id, category_id, first_name, last_name) VALUES ('{m}', '{c}', 'n', 'n'); \
                 INSERT INTO public.training_sessions (id, category_id, season_id, session_date, status) \
                   SELECT '{t}', '{c}', id, '2024-05-05', 'done' FROM public.seasons ORDER BY id LIMIT 1; \
                 INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
                   VALUES ('{m}', '{t}', 'late')",
                c = cat(1),
                m = member(1),
                t = session(1)
            ),
        ),
        (
            "statuses of 200 rows in many groups, in one transaction with a session's date",
            "BEGIN; \
             UPDATE public.member_attendance SET attendance_status = 'excused' \
               WHERE id IN (SELECT id FROM public.member_attendance ORDER BY id DESC LIMIT 200); \
             UPDATE public.training_sessions SET session_date = session_date + 1, status = 'done' \
               WHERE id IN (SELECT id FROM public.training_sessions ORDER BY id LIMIT 5); \
             COMMIT"
                .into(),
        ),
        ("random demo writes", "SELECT refreshd_demo.write_attendance(30)".into()),
        (
            "truncate (then one group again)",
            format!(
                "TRUNCATE public.member_attendance; \
                 INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
                   VALUES ('{}', '{}', 'present')",
                member(1),
                session(1)
            ),
        ),
    ]
}

/// A session moved to another group waits for the transactions writing its attendance
/// (their key share lock), so the move's notification comes after theirs and its
/// recompute sees their rows in the new group. A status change does not wait.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_attendance_session_move_waits_for_attendance_writers() {
    let db = TestDb::new();
    run(&db, "attendance/install.sql");
    attendance_fixture(&db, 2);
    db.psql(&format!(
        "INSERT INTO public.training_sessions (id, category_id, season_id, session_date) \
         VALUES ('{}', '{}', '{}', '2024-01-01')",
        session(1),
        cat(1),
        season(1)
    ));
    let mut applier = db.client().await;
    apply_attendance(&mut applier, &Keys::All).await;
    let mut l = KeysListener::start(&db, ATTENDANCE_KEYS, 2).await;
    for (write, to_cat, status, (from, to)) in session_move_rounds() {
        let writer = db.client().await;
        writer.batch_execute("BEGIN").await.unwrap();
        writer.batch_execute(&write).await.unwrap();

        // A status change of the session does not wait for the open writer.
        let other = db.client().await;
        tokio::time::timeout(
            Duration::from_secs(10),
            other.batch_execute(&format!(
                "UPDATE public.training_sessions SET status = '{status}' WHERE id = '{}'",
                session(1)
            )),
        )
        .await
        .expect("a status update is not blocked by attendance writers")
        .unwrap();

        // The move waits.
        let moved = move_session_waiting_on_a_lock(&db, &to_cat).await;

        writer.batch_execute("COMMIT").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), moved)
            .await
            .expect("the move proceeds once the writer committed")
            .unwrap()
            .unwrap();

        // Status change, then the writer, then the move: in that order.
        let got = l.drain().await;
        assert_eq!(
            got,
            vec![
                keys(&[&from]),
                keys(&[&from]),
                Keys::Some([from.clone(), to.clone()].into_iter().collect())
            ]
        );
        for k in &got {
            apply_attendance(&mut applier, k).await;
        }
        assert_eq!(count(&applier, ATTENDANCE_DRIFT).await, 0);
    }
}

/// The other order: a session being moved (uncommitted) when an attendance write of it
/// runs. The move's notification is applied before the write commits, so a write
/// naming only the old group leaves the new one without it. It did while the move
/// locked the session after updating it (its AFTER trigger): the write's key-share lock
/// on the row's old version then waited for the move and returned that old version.
/// The move now locks the session before updating it, and the write, finding it
/// locked, does not wait (a wait is what deadlocks beside a cascading delete, below):
/// it names every group.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_attendance_write_beside_a_session_move_names_every_group() {
    let db = TestDb::new();
    run(&db, "attendance/install.sql");
    attendance_fixture(&db, 2);
    db.psql(&format!(
        "INSERT INTO public.training_sessions (id, category_id, season_id, session_date) \
         VALUES ('{s}', '{}', '{}', '2024-01-01'); \
         INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
         VALUES ('{}', '{s}', 'present')",
        cat(1),
        season(1),
        member(1),
        s = session(1)
    ));
    let mut applier = db.client().await;
    apply_attendance(&mut applier, &Keys::All).await;
    let mut l = KeysListener::start(&db, ATTENDANCE_KEYS, 2).await;
    let (g1, g2) = (vec![cat(1), season(1)], vec![cat(2), season(1)]);

    let mover = db.client().await;
    mover
        .batch_execute(&format!(
            "BEGIN; UPDATE public.training_sessions SET category_id = '{}' WHERE id = '{}'",
            cat(2),
            session(1)
        ))
        .await
        .unwrap();
    let writer = db.client().await;
    writer.batch_execute("BEGIN").await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        writer.batch_execute(&format!(
            "UPDATE public.member_attendance SET attendance_status = 'late' WHERE member_id = '{}'",
            member(1)
        )),
    )
    .await
    .expect("the write does not wait for the move")
    .unwrap();
    mover.batch_execute("COMMIT").await.unwrap();
    // The move's groups are recomputed before the write commits.
    let moved = l.drain().await;
    assert_eq!(
        moved,
        vec![Keys::Some([g1.clone(), g2.clone()].into_iter().collect())]
    );
    apply_attendance(&mut applier, &moved[0]).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let got = l.drain().await;
    assert_eq!(got, vec![Keys::All], "the write names every group");
    apply_attendance(&mut applier, &got[0]).await;
    assert_eq!(count(&applier, ATTENDANCE_DRIFT).await, 0);
}

/// A transaction holding its attendance row's lock (`SELECT ... FOR UPDATE`, as ORMs
/// do) beside a DELETE of the row's session, whose cascade to that row waits for it:
/// the attendance write that follows must not wait for the session. It did while the
/// trigger locked the session `FOR KEY SHARE` unconditionally (the DELETE holds its
/// row): a deadlock, one of the two aborted, where the same statements without the
/// trigger both commit. A session the trigger cannot lock is skipped, and the write
/// names every group (`*`) instead. Once with an UPDATE, once with a DELETE.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_attendance_write_beside_a_cascading_session_delete_does_not_deadlock() {
    let db = TestDb::new();
    run(&db, "attendance/install.sql");
    attendance_fixture(&db, 1);
    let mut applier = db.client().await;
    let mut l = KeysListener::start(&db, ATTENDANCE_KEYS, 2).await;
    let g1 = vec![cat(1), season(1)];
    let writes = [
        "UPDATE public.member_attendance SET attendance_status = 'late' WHERE training_session_id = '{s}'",
        "DELETE FROM public.member_attendance WHERE training_session_id = '{s}'",
    ];
    for (n, write) in (1..).zip(writes) {
        let s = session(n);
        db.psql(&format!(
            "INSERT INTO public.training_sessions (id, category_id, season_id, session_date) \
             VALUES ('{s}', '{}', '{}', '2024-01-01'); \
             INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
             VALUES ('{}', '{s}', 'present')",
            cat(1),
            season(1),
            member(1),
        ));
        apply_attendance(&mut applier, &Keys::All).await;
        l.drain().await;

        let writer = db.client().await;
        writer
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM public.member_attendance WHERE training_session_id = '{s}' FOR UPDATE"
            ))
            .await
            .unwrap();
        let deleter = db.client().await;
        let dpid = support::backend_pid(&deleter).await;
        let delete = format!("DELETE FROM public.training_sessions WHERE id = '{s}'");
        let deleted = tokio::spawn(async move { deleter.batch_execute(&delete).await });
        support::waits_on_a_lock(&db, dpid, "the cascading delete to wait for the row").await;

        let write = write.replace("{s}", &s);
        tokio::time::timeout(Duration::from_secs(10), writer.batch_execute(&write))
            .await
            .expect("the write does not wait for the session")
            .unwrap_or_else(|e| panic!("{write}: {e:?}"));
        writer.batch_execute("COMMIT").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), deleted)
            .await
            .expect("the delete proceeds once the writer committed")
            .unwrap()
            .unwrap_or_else(|e| panic!("the cascading delete: {e:?}"));

        // The write could not lock the session: every group. Then the delete's group.
        let got = l.drain().await;
        assert_eq!(got, vec![Keys::All, keys(&[&g1])], "round {n}");
        for k in &got {
            apply_attendance(&mut applier, k).await;
        }
        assert_eq!(count(&applier, ATTENDANCE_DRIFT).await, 0, "round {n}");
    }
}

/// (the attendance write left open, the move's new category, a new session status,
/// (old group, new group)) for an INSERT (lock from the foreign key check) and an
/// UPDATE (lock from the trigger itself).
#[allow(clippy::type_complexity)]
fn session_move_rounds() -> [(String, String, &'static str, (Vec<String>, Vec<String>)); 2] {
    let g1 = vec![cat(1), season(1)];
    let g2 = vec![cat(2), season(1)];
    [
        (
            format!(
                "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
                 VALUES ('{}', '{}', 'present')",
                member(1),
                session(1)
            ),
            cat(2),
            "done",
            (g1.clone(), g2.clone()),
        ),
        (
            format!(
                "UPDATE public.member_attendance SET attendance_status = 'late' WHERE member_id = '{}'",
                member(1)
            ),
            cat(1),
            "cancelled",
            (g2, g1),
        ),
    ]
}

/// Moves session 1 to category `to_cat` on a session of its own, in a task, and
/// returns the task once the move waits on a lock.
async fn move_session_waiting_on_a_lock(
    db: &TestDb,
    to_cat: &str,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let mover = db.client().await;
    let pid = support::backend_pid(&mover).await;
    let sql = format!(
        "UPDATE public.training_sessions SET category_id = '{to_cat}' WHERE id = '{}'",
        session(1)
    );
    let moved = tokio::spawn(async move { mover.batch_execute(&sql).await });
    support::waits_on_a_lock(db, pid, "the move to wait on a lock").await;
    assert!(!moved.is_finished());
    moved
}

/// The inventory pair: keys from stock_on_hand (directly, also through stock
/// movements) and warehouses; applying them keeps the table equal to the definition.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_inventory_triggers_send_the_changed_warehouses() {
    let db = TestDb::new();
    run(&db, "inventory/install.sql");
    db.psql(&format!(
        "INSERT INTO core.products (id, sku, name) VALUES ('{}', 'P1', 'p1'), ('{}', 'P2', 'p2')",
        product(1),
        product(2)
    ));
    let mut applier = db.client().await;
    let mut l = KeysListener::start(&db, INVENTORY_KEYS, 1).await;
    let w = |n: u32| vec![warehouse(n)];
    check_inventory(
        &mut l,
        &mut applier,
        &format!(
            "INSERT INTO core.warehouses (id, code, name) VALUES ('{}', 'W1', 'one'), ('{}', 'W2', 'two')",
            warehouse(1),
            warehouse(2)
        ),
        vec![keys(&[&w(1), &w(2)])],
    )
    .await;
    stock_writes_send_their_warehouses(&mut l, &mut applier).await;
    // A new warehouse with stock, then deleted (cascading to its stock): one key, as
    // both triggers send the same payload in one transaction.
    check_inventory(
        &mut l,
        &mut applier,
        &format!(
            "INSERT INTO core.warehouses (id, code, name) VALUES ('{w3}', 'W3', 'three'); \
             INSERT INTO core.stock_on_hand (product_id, warehouse_id, quantity, cost_price) VALUES ('{}', '{w3}', 5, 2)",
            product(1),
            w3 = warehouse(3)
        ),
        vec![keys(&[&w(3)])],
    )
    .await;
    check_inventory(
        &mut l,
        &mut applier,
        &format!("DELETE FROM core.warehouses WHERE id = '{}'", warehouse(3)),
        vec![keys(&[&w(3)])],
    )
    .await;
    check_inventory(
        &mut l,
        &mut applier,
        "TRUNCATE core.stock_on_hand",
        vec![Keys::All],
    )
    .await;

    // 195 warehouses fit in one payload (41 bytes each), 196 do not.
    let many = |from: u32, n: u32| {
        format!(
            "INSERT INTO core.warehouses (id, code, name) \
             SELECT ('{}'::text || lpad(to_hex(g), 12, '0'))::uuid, 'M' || g, 'many' \
             FROM generate_series({from}, {}) g",
            &warehouse(0)[..24],
            from + n - 1
        )
    };
    let got = l.after(&many(100, 195)).await;
    assert!(
        matches!(&got[..], [Keys::Some(set)] if set.len() == 195),
        "{got:?}"
    );
    assert_eq!(l.after(&many(1000, 196)).await, vec![Keys::All]);
    apply_inventory(&mut applier, &Keys::All).await;
    run(&db, "inventory/validate.sql");
}

/// Runs `sql`, which must send `want` on the inventory channel; applying it leaves the
/// inventory table equal to its definition.
async fn check_inventory(
    l: &mut KeysListener,
    applier: &mut tokio_postgres::Client,
    sql: &str,
    want: Vec<Keys>,
) {
    let got = l.after(sql).await;
    assert_eq!(got, want, "{sql}");
    for k in &got {
        apply_inventory(applier, k).await;
    }
    assert_eq!(count(applier, INVENTORY_DRIFT).await, 0, "{sql}");
}

/// Stock movements (through the row-level cost trigger's upsert into stock_on_hand),
/// a stock row moved and a warehouse renamed send their warehouses; columns the
/// definition does not read send nothing.
async fn stock_writes_send_their_warehouses(
    l: &mut KeysListener,
    applier: &mut tokio_postgres::Client,
) {
    let w = |n: u32| vec![warehouse(n)];
    // Through the row-level cost trigger's upsert into stock_on_hand.
    let movement = |p: u32, wh: u32, kind: &str, qty: u32, cost: &str| {
        format!(
            "INSERT INTO core.stock_movement (movement_type, product_id, warehouse_id, quantity, cost_price) \
             VALUES ('{kind}', '{}', '{}', {qty}, {cost})",
            product(p),
            warehouse(wh)
        )
    };
    for (p, qty, cost) in [(1, 10, "50"), (1, 10, "70"), (2, 4, "NULL")] {
        let sql = movement(p, 1, "RECEIPT", qty, cost);
        check_inventory(l, applier, &sql, vec![keys(&[&w(1)])]).await;
    }
    // Columns the definition does not read: nothing.
    check_inventory(
        l,
        applier,
        "UPDATE core.stock_on_hand SET updated_at = now(); UPDATE core.warehouses SET created_at = now()",
        vec![],
    )
    .await;
    // A stock row moved to another warehouse: both.
    check_inventory(
        l,
        applier,
        &format!(
            "UPDATE core.stock_on_hand SET warehouse_id = '{}' WHERE product_id = '{}'",
            warehouse(2),
            product(2)
        ),
        vec![keys(&[&w(1), &w(2)])],
    )
    .await;
    check_inventory(
        l,
        applier,
        &format!(
            "UPDATE core.warehouses SET name = 'Two' WHERE id = '{}'",
            warehouse(2)
        ),
        vec![keys(&[&w(2)])],
    )
    .await;
}
