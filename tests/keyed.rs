//! Keyed views (`kind = "keyed"`): a table refreshd keeps equal to a plain view, one
//! group at a time, against a real PostgreSQL: every kind of write, a randomized storm,
//! hostile payloads, a killed listener and a killed leader, `check` and startup errors.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{refreshd, sample, stdout, wait_for, write_config, Daemon, TestDb};

/// Sessions grouped by (cat uuid, season int); marks per session. The definition has a
/// LEFT JOIN (a group with sessions but no marks still has a row), quoted mixed-case
/// names, and the triggers send the distinct keys of old and new rows.
const SCHEMA: &str = r#"
    CREATE SCHEMA app;
    CREATE TABLE app.sessions (id int PRIMARY KEY, cat uuid NOT NULL, season int NOT NULL);
    CREATE INDEX ON app.sessions (cat, season);
    CREATE TABLE app.marks (id bigserial PRIMARY KEY,
        session_id int NOT NULL REFERENCES app.sessions ON DELETE CASCADE, v int NOT NULL);
    CREATE INDEX ON app.marks (session_id);
    CREATE VIEW app."Stats Def" AS
      SELECT s.cat, s.season, count(DISTINCT s.id) AS sessions,
             coalesce(sum(m.v), 0)::bigint AS total, count(m.id) AS marks
        FROM app.sessions s LEFT JOIN app.marks m ON m.session_id = s.id
       GROUP BY s.cat, s.season;
    CREATE TABLE app.stats_live AS SELECT * FROM app."Stats Def" WITH NO DATA;
    ALTER TABLE app.stats_live ADD PRIMARY KEY (cat, season);

    CREATE FUNCTION app.send_keys(keys json) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
      IF keys IS NULL THEN RETURN; END IF;
      IF octet_length(keys::text) > 7999 THEN
        PERFORM pg_notify('stats_keys', '*');
      ELSE
        PERFORM pg_notify('stats_keys', keys::text);
      END IF;
    END$$;
    CREATE FUNCTION app.marks_keys() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        PERFORM app.send_keys((SELECT json_agg(json_build_array(k.cat, k.season)) FROM
          (SELECT DISTINCT s.cat, s.season FROM new_rows n JOIN app.sessions s ON s.id = n.session_id) k));
      ELSIF TG_OP = 'DELETE' THEN
        PERFORM app.send_keys((SELECT json_agg(json_build_array(k.cat, k.season)) FROM
          (SELECT DISTINCT s.cat, s.season FROM old_rows o JOIN app.sessions s ON s.id = o.session_id) k));
      ELSE
        PERFORM app.send_keys((SELECT json_agg(json_build_array(k.cat, k.season)) FROM
          (SELECT s.cat, s.season FROM new_rows n JOIN app.sessions s ON s.id = n.session_id
           UNION SELECT s.cat, s.season FROM old_rows o JOIN app.sessions s ON s.id = o.session_id) k));
      END IF;
      RETURN NULL;
    END$$;
    CREATE FUNCTION app.sessions_keys() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'INSERT' THEN
        PERFORM app.send_keys((SELECT json_agg(json_build_array(k.cat, k.season)) FROM
          (SELECT DISTINCT cat, season FROM new_rows) k));
      ELSIF TG_OP = 'DELETE' THEN
        PERFORM app.send_keys((SELECT json_agg(json_build_array(k.cat, k.season)) FROM
          (SELECT DISTINCT cat, season FROM old_rows) k));
      ELSE
        PERFORM app.send_keys((SELECT json_agg(json_build_array(k.cat, k.season)) FROM
          (SELECT cat, season FROM new_rows UNION SELECT cat, season FROM old_rows) k));
      END IF;
      RETURN NULL;
    END$$;
    CREATE FUNCTION app.all_keys() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('stats_keys', '*'); RETURN NULL; END$$;
    CREATE TRIGGER m_ins AFTER INSERT ON app.marks REFERENCING NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION app.marks_keys();
    CREATE TRIGGER m_upd AFTER UPDATE ON app.marks REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
      FOR EACH STATEMENT EXECUTE FUNCTION app.marks_keys();
    CREATE TRIGGER m_del AFTER DELETE ON app.marks REFERENCING OLD TABLE AS old_rows
      FOR EACH STATEMENT EXECUTE FUNCTION app.marks_keys();
    CREATE TRIGGER m_trunc AFTER TRUNCATE ON app.marks FOR EACH STATEMENT EXECUTE FUNCTION app.all_keys();
    CREATE TRIGGER s_ins AFTER INSERT ON app.sessions REFERENCING NEW TABLE AS new_rows
      FOR EACH STATEMENT EXECUTE FUNCTION app.sessions_keys();
    CREATE TRIGGER s_upd AFTER UPDATE ON app.sessions REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
      FOR EACH STATEMENT EXECUTE FUNCTION app.sessions_keys();
    CREATE TRIGGER s_del AFTER DELETE ON app.sessions REFERENCING OLD TABLE AS old_rows
      FOR EACH STATEMENT EXECUTE FUNCTION app.sessions_keys();
    CREATE TRIGGER s_trunc AFTER TRUNCATE ON app.sessions FOR EACH STATEMENT EXECUTE FUNCTION app.all_keys();

    -- 40 groups: cat i % 10, season i % 4; 200 sessions; marks on most of them.
    INSERT INTO app.sessions
      SELECT g, ('00000000-0000-4000-8000-' || lpad((g % 10)::text, 12, '0'))::uuid, (g / 10) % 4
        FROM generate_series(1, 200) g;
    INSERT INTO app.marks (session_id, v) SELECT 1 + g % 180, g FROM generate_series(1, 2000) g;
"#;

/// Enough marks that recomputing every group costs clearly more than a few groups (a
/// keyed refresh probes the planner first and recomputes everything when that is
/// cheaper, as it is for the 2,000 marks of SCHEMA alone).
const BULK: &str = "INSERT INTO app.marks (session_id, v) \
    SELECT 1 + g % 180, g % 97 FROM generate_series(1, 150000) g; ANALYZE app.marks;";

const VIEW: &str = "[[view]]\nname = \"app.stats_live\"\nkind = \"keyed\"\n\
    query = 'app.\"Stats Def\"'\nkey = [\"cat\", \"season\"]\nchannels = [\"stats_keys\"]\n\
    debounce = \"50ms\"\nmax_delay = \"1s\"\nmax_keys = 100\n";

const LABEL: &str = "app.stats_live";

fn config(db: &TestDb) -> String {
    format!("[database]\nurl = \"{}\"\n{VIEW}", db.dsn())
}

/// Rows that differ between the table and its definition (0 = exact).
const DIFF: &str = r#"SELECT count(*) FROM (
    (TABLE app.stats_live EXCEPT ALL TABLE app."Stats Def")
    UNION ALL (TABLE app."Stats Def" EXCEPT ALL TABLE app.stats_live)) d"#;

async fn wait_exact(db: &TestDb, what: &str) {
    wait_for(Duration::from_secs(20), what, || async {
        db.psql(DIFF) == "0"
    })
    .await;
}

fn keys_total(d: &Daemon) -> f64 {
    sample(
        &d.metrics(),
        &format!("refreshd_keyed_keys_total{{view=\"{LABEL}\"}}"),
    )
    .unwrap_or(0.0)
}

fn malformed(d: &Daemon) -> f64 {
    sample(
        &d.metrics(),
        &format!("refreshd_keyed_malformed_payloads_total{{view=\"{LABEL}\"}}"),
    )
    .unwrap_or(0.0)
}

fn groups(db: &TestDb) -> i64 {
    db.psql(r#"SELECT count(*) FROM app.stats_live"#)
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn inserts_moves_deletes_and_truncate_leave_the_table_exact() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    // Without the bulk, recomputing all 40 groups takes ~5 ms: under load, planning the
    // one key's branch took longer, so the first insert recomputed everything and was
    // not counted as a key (failed on PostgreSQL 17 beside a CPU hog, 1 run in 6).
    db.psql(BULK);
    let d = Daemon::start(&config(&db));
    d.wait_ready(Duration::from_secs(20)).await;
    // Startup recomputes everything.
    wait_exact(&db, "the startup recompute").await;
    assert_eq!(groups(&db), 40);
    wait_for(
        Duration::from_secs(10),
        "the startup refresh to be counted",
        || async { d.successes(LABEL) >= 1.0 },
    )
    .await;

    // One insert: exactly its group is recomputed.
    let before = keys_total(&d);
    db.psql(r#"INSERT INTO app.marks (session_id, v) VALUES (7, 1000)"#);
    wait_exact(&db, "the insert").await;
    wait_for(Duration::from_secs(10), "the key to be counted", || async {
        keys_total(&d) >= before + 1.0
    })
    .await;
    assert_eq!(keys_total(&d), before + 1.0, "one insert, one group");

    // A session that moves to a group of its own: both groups change. (Recomputed by
    // key, or all at once when refreshd measured that cheaper on this small table.)
    db.psql(
        r#"UPDATE app.sessions SET cat = '00000000-0000-4000-8000-0000000000aa', season = 9 WHERE id = 7"#,
    );
    wait_exact(&db, "the move").await;
    assert_eq!(groups(&db), 41, "a new group appeared");

    // A delete that empties that group: its row goes.
    db.psql(r#"DELETE FROM app.sessions WHERE id = 7"#);
    wait_exact(&db, "the delete").await;
    assert_eq!(groups(&db), 40, "the emptied group is gone");

    // TRUNCATE: every group.
    db.psql(r#"TRUNCATE app.marks"#);
    wait_exact(&db, "the truncate").await;
    assert_eq!(db.psql(r#"SELECT sum(marks) FROM app.stats_live"#), "0");
    assert_eq!(d.refreshes(LABEL, "notify", "failure"), 0.0);
}

/// A recompute of every group writes only the rows that changed: the others keep their
/// place (`ctid`), as with REFRESH MATERIALIZED VIEW CONCURRENTLY. Failed before: the
/// table's every row was deleted and inserted again (40 rows moved for one change).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_recompute_rewrites_only_the_rows_that_changed() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let d = Daemon::start(&config(&db));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_exact(&db, "the startup recompute").await;
    let places =
        || db.psql("SELECT string_agg(ctid::text, ' ' ORDER BY cat, season) FROM app.stats_live");
    let before = places();
    let all_before = d.refreshes(LABEL, "notify", "success");
    // One group changes; '*' asks for every group.
    db.psql(
        "BEGIN; UPDATE app.marks SET v = v + 1 WHERE id = 1; SELECT pg_notify('stats_keys', '*'); COMMIT;",
    );
    wait_exact(&db, "the recompute").await;
    wait_for(Duration::from_secs(10), "the recompute counted", || async {
        d.refreshes(LABEL, "notify", "success") > all_before
    })
    .await;
    let after = places();
    let moved = before
        .split(' ')
        .zip(after.split(' '))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(moved, 1, "one row rewritten: {before} → {after}");
    // A group that appears and one that vanishes, by a full recompute too.
    db.psql(
        "BEGIN; INSERT INTO app.sessions VALUES (500, '00000000-0000-4000-8000-0000000000bb', 7); \
         DELETE FROM app.sessions WHERE cat = '00000000-0000-4000-8000-000000000003' AND season = 1; \
         SELECT pg_notify('stats_keys', '*'); COMMIT;",
    );
    wait_exact(&db, "the second recompute").await;
    assert_eq!(groups(&db), 40);
    assert_eq!(d.refreshes(LABEL, "notify", "failure"), 0.0);
}

/// Random writes from several clients: inserts, updates (also moving sessions between
/// groups), deletes, over many groups.
fn storm(
    dsn: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        while !stop.load(Ordering::Relaxed) {
            let session = 1 + next(200) as i32;
            let sql = match next(6) {
                0 | 1 => format!(
                    r#"INSERT INTO app.marks (session_id, v) VALUES ({session}, {})"#,
                    next(100)
                ),
                2 => format!(
                    r#"UPDATE app.marks SET v = v + 1 WHERE id IN (SELECT id FROM app.marks WHERE session_id = {session} LIMIT 3)"#
                ),
                3 => format!(
                    r#"DELETE FROM app.marks WHERE id IN (SELECT id FROM app.marks WHERE session_id = {session} LIMIT 2)"#
                ),
                4 => format!(
                    r#"UPDATE app.sessions SET cat = ('00000000-0000-4000-8000-' || lpad('{}', 12, '0'))::uuid, season = {} WHERE id = {session}"#,
                    next(12),
                    next(5)
                ),
                _ => format!(
                    r#"UPDATE app.marks SET session_id = {} WHERE id IN (SELECT id FROM app.marks WHERE session_id = {session} LIMIT 1)"#,
                    1 + next(200)
                ),
            };
            // Concurrent writers may deadlock on each other; that is their business.
            if client.batch_execute(&sql).await.is_ok() {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// One write after start, as in production: the first keyed refresh (one group)
/// probes the planner, finds one group cheaper than everything, and measures the time
/// per key that later decisions use. (A storm's first refresh names every group, and
/// the probe rightly recomputes everything for it.)
async fn first_write_measures_a_key(db: &TestDb, d: &Daemon) {
    db.psql("INSERT INTO app.marks (session_id, v) VALUES (1, 1)");
    wait_for(
        Duration::from_secs(20),
        "one group refreshed on its own",
        || async { keys_total(d) > 0.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_randomized_storm_ends_with_the_table_exact() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    db.psql(BULK);
    let d = Daemon::start(&config(&db));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_exact(&db, "the startup recompute").await;
    first_write_measures_a_key(&db, &d).await;
    let measured = keys_total(&d);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|i| storm(db.dsn(), 17 + i, stop.clone(), done.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let writes = done.load(Ordering::Relaxed);
    assert!(writes > 200, "only {writes} writes");
    wait_exact(&db, "the storm to be applied").await;
    // This storm dirties nearly every group between two refreshes, so the cost rule
    // recomputes everything for it; the one-group refresh before it ran key by key.
    assert!(measured > 0.0);
    assert_eq!(d.refreshes(LABEL, "notify", "failure"), 0.0);
    eprintln!(
        "storm: {writes} writes, {} keys recomputed, {} refreshes",
        keys_total(&d),
        d.successes(LABEL)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_payloads_change_nothing_and_lose_no_key() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let d = Daemon::start(&config(&db));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_exact(&db, "the startup recompute").await;
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.successes(LABEL) >= 1.0
    })
    .await;
    // Close to PostgreSQL's 8,000-byte limit: one long value that is no uuid.
    let big = format!("[[\"{}\", 1]]", "a".repeat(7900));
    let hostile = [
        "not json at all",
        "{\"cat\": 1}",
        "[[\"00000000-0000-4000-8000-000000000001\"]]",
        "[[\"00000000-0000-4000-8000-000000000001\", 1, 2]]",
        "[[null, 1]]",
        "[[\"'); DROP TABLE app.marks; --\", 1]]",
        "[[\"not-a-uuid\", \"x'); DELETE FROM app.sessions; --\"]]",
        &big,
    ];
    for (n, p) in hostile.iter().enumerate() {
        // Each payload stands next to a change the triggers did not report: if the
        // payload were dropped, the change would be lost.
        db.psql(&format!(
            r#"ALTER TABLE app.marks DISABLE TRIGGER USER;
               INSERT INTO app.marks (session_id, v) VALUES ({}, 5);
               ALTER TABLE app.marks ENABLE TRIGGER USER;
               SELECT pg_notify('stats_keys', {});"#,
            1 + n * 11,
            refreshd::pg::refresh::quote_literal(p)
        ));
        wait_exact(&db, &format!("payload {n} taken as every group")).await;
        wait_for(
            Duration::from_secs(10),
            "the payload to be counted",
            || async { malformed(&d) >= (n + 1) as f64 },
        )
        .await;
    }
    assert_eq!(malformed(&d), hostile.len() as f64);
    assert_eq!(
        db.psql(r#"SELECT count(*) > 0 FROM app.marks"#),
        "t",
        "the table is still there"
    );
    assert_eq!(db.psql(r#"SELECT count(*) FROM app.sessions"#), "200");
    assert!(d.get("/healthz").0 == 200, "the daemon is alive");
    let log = d.log_text();
    assert!(!log.contains("DROP TABLE"), "payloads are not logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_and_leader_killed_during_writes_end_exact() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let a = Daemon::start(&config(&db));
    a.wait_ready(Duration::from_secs(20)).await;
    let b = Daemon::start(&config(&db));
    wait_exact(&db, "the startup recompute").await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|i| storm(db.dsn(), 91 + i, stop.clone(), done.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The listener's session dies: it reconnects and recomputes everything (a key
    // committed while nobody listened would otherwise be lost).
    let killed = db.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    assert_eq!(killed, "1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Now the leader dies outright; the other replica takes over.
    let (leader, standby) = if a.leader() == 1.0 { (a, b) } else { (b, a) };
    drop(leader);
    wait_for(Duration::from_secs(30), "the standby to lead", || async {
        standby.leader() == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 50);
    wait_exact(&db, "the writes to be applied by the new leader").await;
}

#[test]
fn check_verifies_columns_key_plan_and_triggers() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    db.psql(r#"INSERT INTO app.stats_live SELECT * FROM app."Stats Def""#);
    let (_dir, path) = write_config(&config(&db));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("keys sent by"), "{text}");
    assert!(text.contains("without scanning a large table"), "{text}");

    // A big table scanned whole for one key, no unique key, no trigger: three problems.
    db.psql(
        r#"CREATE TABLE app.big (g int NOT NULL, v int NOT NULL);
           INSERT INTO app.big SELECT g % 50, g FROM generate_series(1, 20000) g;
           ANALYZE app.big;
           CREATE VIEW app.big_def AS SELECT g, sum(v)::bigint AS s FROM app.big GROUP BY g;
           CREATE TABLE app.big_live AS SELECT * FROM app.big_def;"#,
    );
    let (_dir2, path2) = write_config(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = 'app.big_live'\nkind = \"keyed\"\nquery = 'app.big_def'\nkey = [\"g\"]\nchannels = [\"big_keys\"]\n",
        db.dsn()
    ));
    let out = refreshd(&["check", "-c", path2.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("is not unique"), "{text}");
    assert!(text.contains("scans \"app\".\"big\""), "{text}");
    assert!(text.contains("no trigger"), "{text}");
}

#[test]
fn a_table_that_does_not_fit_its_query_is_refused_at_start() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    db.psql(r#"ALTER TABLE app.stats_live ADD COLUMN extra int"#);
    let (_dir, path) = write_config(&format!(
        "{}[http]\nlisten = \"127.0.0.1:{}\"\n",
        config(&db),
        support::free_port()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refreshd"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("refreshd.toml:3: view[0].query: column \"extra\" of table"),
        "{err}"
    );
}

/// Columns of the attendance statistics but `last_refreshed` (`now()` of whoever
/// computed the row).
const ATT_COLS: &str =
    "category_id, season_id, total_sessions, completed_sessions, planned_sessions, \
    cancelled_sessions, completion_rate, total_attendance_records, present_count, absent_count, \
    late_count, excused_count, attendance_rate, unique_members, last_session_date";

fn att_diff() -> String {
    format!(
        "SELECT count(*) FROM ((SELECT {ATT_COLS} FROM public.attendance_statistics_live \
           EXCEPT ALL SELECT {ATT_COLS} FROM public.attendance_statistics_def) \
         UNION ALL (SELECT {ATT_COLS} FROM public.attendance_statistics_def \
           EXCEPT ALL SELECT {ATT_COLS} FROM public.attendance_statistics_live)) d"
    )
}

/// The keyed block of config.example.toml, uncommented.
fn example_keyed_block() -> String {
    let text = std::fs::read_to_string(support::repo().join("config.example.toml")).unwrap();
    let start = text.rfind("# [[view]]").expect("a commented keyed example");
    text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// sql/attendance's keyed variant with the example configuration: `check` passes, and
/// every kind of write (through the seed's own tables) ends with the table exact.
/// Scale 0.2: at 0.02 a full recompute took 20–60 ms, about what planning two keys'
/// branches takes on a loaded machine, so the cost probe rightly chose the full
/// recompute every time and the per-key assertion failed in CI.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_attendance_twin_follows_every_kind_of_write() {
    let (db, cfg) = attendance_scale("0.2");
    let (_dir, path) = write_config(&cfg);
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("keys sent by"), "{}", stdout(&out));

    let d = Daemon::start(&cfg);
    d.wait_ready(Duration::from_secs(20)).await;
    let diff = att_diff();
    let exact = |what: &'static str| {
        let db = &db;
        let diff = diff.clone();
        async move {
            wait_for(Duration::from_secs(20), what, || async {
                db.psql(&diff) == "0"
            })
            .await
        }
    };
    exact("the startup recompute").await;
    let label = "public.attendance_statistics_live";
    let keys = || {
        sample(
            &d.metrics(),
            &format!("refreshd_keyed_keys_total{{view=\"{label}\"}}"),
        )
        .unwrap_or(0.0)
    };
    db.psql("SELECT refreshd_demo.write_attendance(5)");
    exact("demo writes").await;
    // A session moves to another category: both groups.
    db.psql(
        "UPDATE public.training_sessions SET category_id = (SELECT id FROM public.categories ORDER BY id DESC LIMIT 1) \
         WHERE id = (SELECT training_session_id FROM public.member_attendance ORDER BY id LIMIT 1)",
    );
    exact("a session moved between groups").await;
    db.psql("DELETE FROM public.member_attendance WHERE id IN (SELECT id FROM public.member_attendance ORDER BY id LIMIT 50)");
    exact("a delete").await;
    db.psql("TRUNCATE public.member_attendance");
    exact("a truncate").await;
    assert!(keys() > 0.0, "groups were recomputed one by one");
    assert_eq!(d.failures(label), 0.0);
}

/// Keyed refreshes through a transaction-mode pooler shared with other clients: every
/// refresh succeeds (unnamed statements only, nothing prepared), the table ends exact,
/// and no setting of refreshd's is left on the pool's server connections.
#[tokio::test(flavor = "multi_thread")]
async fn keyed_refreshes_work_through_a_transaction_pooler() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    db.psql(BULK);
    let bouncer = support::PgBouncer::start(&db, 2);
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nlisten_url = \"{}\"\n{VIEW}lock_timeout = \"1s\"\nstatement_timeout = \"20s\"\n",
        bouncer.dsn(&db),
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_exact(&db, "the startup recompute").await;
    first_write_measures_a_key(&db, &d).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Other applications share the pool; the writers go straight to PostgreSQL.
    let others: Vec<_> = (0..2)
        .map(|i| storm(bouncer.dsn(&db), 300 + i, stop.clone(), done.clone()))
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|i| storm(db.dsn(), 400 + i, stop.clone(), done.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for w in others.into_iter().chain(writers) {
        w.await.unwrap();
    }
    wait_exact(&db, "the writes, through the pooler").await;
    assert!(keys_total(&d) > 0.0, "keyed refreshes ran");
    assert_eq!(d.failures(LABEL), 0.0, "{}", d.log_text());
    assert!(
        !d.log_text().contains("26000"),
        "no prepared-statement errors"
    );
    let (c, conn) = tokio_postgres::connect(&bouncer.dsn(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..6 {
        for setting in ["lock_timeout", "statement_timeout"] {
            let value = support::show(&c, setting).await;
            assert_eq!(value, "0", "{setting} leaked into the pool");
        }
        assert_eq!(
            support::show(&c, "jit").await,
            "on",
            "jit leaked into the pool"
        );
    }
}

/// The keyed recompute of another session still running on the server (what a killed
/// refreshd, a replica or a removed-and-re-added view leaves behind): the next refresh
/// waits for it and sees its rows, instead of colliding with them (23505). Fails
/// without `LOCK TABLE ... IN EXCLUSIVE MODE` first in the keyed transactions: the
/// second DELETE waits for the first's row locks, cannot see its new rows, and the
/// INSERT meets them.
#[tokio::test(flavor = "multi_thread")]
async fn a_recompute_still_running_elsewhere_is_waited_for_not_collided_with() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    db.psql(r#"INSERT INTO app.stats_live SELECT * FROM app."Stats Def""#);
    // The other refresher, as an earlier refreshd sent it: not yet committed.
    let other = db.client().await;
    other
        .batch_execute(
            r#"BEGIN; DELETE FROM app.stats_live;
               INSERT INTO app.stats_live SELECT * FROM app."Stats Def""#,
        )
        .await
        .unwrap();
    let other_pid = db.psql(
        "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' \
         AND query LIKE '%INSERT INTO app.stats_live%'",
    );
    assert!(!other_pid.is_empty());
    let d = Daemon::start(&format!("{}lock_timeout = \"60s\"\n", config(&db)));
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND pid <> {other_pid} AND query LIKE '%stats_live%'"
    );
    wait_for(
        Duration::from_secs(20),
        "refreshd's startup recompute to wait for the other one",
        || async { db.psql(&waiting) == "1" },
    )
    .await;
    // A write the other session cannot have seen, committed before the other ends.
    db.psql("INSERT INTO app.marks (session_id, v) VALUES (7, 1000)");
    other.batch_execute("COMMIT").await.unwrap();
    wait_for(
        Duration::from_secs(20),
        "the startup recompute to commit",
        || async { d.refreshes(LABEL, "startup", "success") == 1.0 },
    )
    .await;
    assert_eq!(
        d.refreshes(LABEL, "startup", "failure"),
        0.0,
        "{}",
        d.log_text()
    );
    assert_eq!(db.psql(DIFF), "0", "the write made while it waited is in");
}

/// The attendance seed (and the inventory and demo SQL) with its keyed twin (005) at
/// `scale`, analyzed, and the example configuration's keyed block (debounce 50 ms).
fn attendance_scale(scale: &str) -> (TestDb, String) {
    let db = TestDb::new();
    for f in [
        "attendance/install.sql",
        "inventory/install.sql",
        "demo/install.sql",
    ] {
        let out = db
            .server
            .psql_file(&db.name, &support::repo().join("sql").join(f));
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    db.psql(&format!(
        "SELECT refreshd_demo.generate_attendance({scale})"
    ));
    db.psql("ANALYZE");
    let cfg = format!(
        "[database]\nurl = \"{}\"\n{}\ndebounce = \"50ms\"\n",
        db.dsn(),
        example_keyed_block()
    );
    (db, cfg)
}

const ATT: &str = "public.attendance_statistics_live";

/// Waits for a full keyed recompute of the attendance twin to be running on the server
/// (asking for one with `'*'` until it is seen), then kills that refreshd with SIGKILL:
/// its statement is left behind on the server.
async fn kill_during_a_full_recompute(db: &TestDb, d: Daemon) {
    // (The statement's start: pg_stat_activity keeps the first 1,024 bytes.)
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%LOCK TABLE \"public\".\"attendance_statistics_live\"%\"refreshd_new\"%' \
         AND query NOT LIKE '%pg_stat_activity%'";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut d = d;
    loop {
        db.psql("NOTIFY attendance_keys, '*'");
        let seen = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < seen {
            if db.psql(running) == "1" {
                d.child.kill().unwrap();
                d.child.wait().unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw a full recompute running"
        );
    }
}

fn no_permanent_failure(d: &Daemon) {
    let log = d.log_text();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refresh failed") && l.contains("permanent"))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// `kill -9` of refreshd during a keyed full recompute at attendance scale 1, then a
/// write, then a restart: exact within 10 s, no permanent failure. Then the same with a
/// replica taking over from a killed leader.
#[tokio::test(flavor = "multi_thread")]
async fn killed_during_a_full_recompute_then_restarted_or_replaced_ends_exact() {
    let (db, cfg) = attendance_scale("1");
    let diff = att_diff();
    let exact_within = |secs: u64, what: &'static str| {
        let db = &db;
        let diff = diff.clone();
        async move {
            wait_for(Duration::from_secs(secs), what, || async {
                db.psql(&diff) == "0"
            })
            .await
        }
    };
    let a = Daemon::start(&cfg);
    a.wait_ready(Duration::from_secs(30)).await;
    exact_within(60, "the startup recompute").await;

    kill_during_a_full_recompute(&db, a).await;
    db.psql("SELECT refreshd_demo.write_attendance(5)");
    let b = Daemon::start(&cfg);
    exact_within(10, "the restarted refreshd to apply the write").await;
    no_permanent_failure(&b);

    // A second replica; the leader is killed in a recompute and the standby takes over.
    let c = Daemon::start(&format!("{cfg}\n[ha]\nretry_interval = \"500ms\"\n"));
    c.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(b.leader(), 1.0);
    kill_during_a_full_recompute(&db, b).await;
    db.psql("SELECT refreshd_demo.write_attendance(5)");
    wait_for(Duration::from_secs(10), "the standby to lead", || async {
        c.leader() == 1.0
    })
    .await;
    exact_within(10, "the new leader to apply the write").await;
    no_permanent_failure(&c);
}

/// A refresher killed mid-statement: on PostgreSQL 14+ the server notices within
/// seconds (`client_connection_check_interval`, set by every refresh transaction) and
/// ends the statement, releasing its locks. On 13 the setting does not exist; the
/// statement runs on (to its end or `statement_timeout`) and the next refresher waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_refreshers_statement_ends_on_the_server() {
    let db = TestDb::new();
    // The refresh sleeps 60 s on the server.
    db.psql(
        "CREATE FUNCTION public.nap() RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(60)';
         CREATE MATERIALIZED VIEW public.slow AS SELECT 1 AS id, public.nap()::text AS s WITH NO DATA;
         CREATE UNIQUE INDEX ON public.slow (id);",
    );
    let mut d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.slow\"\nchannels = [\"slow\"]\n",
        db.dsn()
    ));
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                   AND query LIKE '%REFRESH MATERIALIZED VIEW%slow%' \
                   AND query NOT LIKE '%pg_stat_activity%'";
    wait_for(Duration::from_secs(20), "the refresh to run", || async {
        db.psql(running) == "1"
    })
    .await;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let killed = std::time::Instant::now();
    let version: i32 = db.psql("SHOW server_version_num").parse().unwrap();
    if version >= 140000 {
        wait_for(
            Duration::from_secs(5),
            "the server to end the killed refresher's statement",
            || async { db.psql(running) == "0" },
        )
        .await;
        eprintln!("statement ended {:?} after the kill", killed.elapsed());
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(db.psql(running), "1", "13 has no client check");
        db.psql(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%REFRESH MATERIALIZED VIEW%slow%' AND pid <> pg_backend_pid()",
        );
    }
}

/// PostgreSQL's default `jit = on`: a keyed refresh of 100 real groups at attendance
/// scale 1 (all ~80 there are) takes no longer than recomputing everything (it once took 30x longer: one
/// `UNION ALL` branch per key passes `jit_above_cost`). The first keyed refresh after
/// start, with no time per key measured yet, is costed by the planner.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_keys_are_no_slower_than_everything_with_jit_on() {
    let (db, cfg) = attendance_scale("1");
    assert_eq!(db.psql("SHOW jit"), "on");
    let d = Daemon::start(&cfg);
    d.wait_ready(Duration::from_secs(30)).await;
    let total = |d: &Daemon| {
        sample(
            &d.metrics(),
            &format!("refreshd_refresh_duration_seconds_sum{{view=\"{ATT}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let count = |d: &Daemon| {
        sample(
            &d.metrics(),
            &format!("refreshd_refresh_duration_seconds_count{{view=\"{ATT}\"}}"),
        )
        .unwrap_or(0.0)
    };
    wait_for(Duration::from_secs(60), "the startup recompute", || async {
        count(&d) == 1.0
    })
    .await;
    // Two more full recomputes: the median of three is "everything".
    let mut full = vec![total(&d)];
    for i in 2..=3 {
        db.psql("NOTIFY attendance_keys, '*'");
        wait_for(Duration::from_secs(60), "a full recompute", || async {
            count(&d) == i as f64
        })
        .await;
        full.push(total(&d) - full.iter().sum::<f64>());
    }
    full.sort_by(f64::total_cmp);
    let groups: i64 = db
        .psql("SELECT count(*) FROM public.attendance_statistics_live")
        .parse()
        .unwrap();
    // Scale 1 has ~80 groups: "100 real keys" is every group there is.
    assert!(groups >= 60, "{groups} groups");
    let before = total(&d);
    db.psql(
        "SELECT pg_notify('attendance_keys', json_agg(json_build_array(category_id, season_id))::text) \
         FROM (SELECT category_id, season_id FROM public.attendance_statistics_live \
               ORDER BY category_id, season_id LIMIT 100) k",
    );
    wait_for(Duration::from_secs(60), "the keyed refresh", || async {
        count(&d) == 4.0
    })
    .await;
    let keyed = total(&d) - before;
    eprintln!(
        "{} keys: {keyed:.3} s; everything: {:.3} s median, {:.3} s slowest of 3",
        groups.min(100),
        full[1],
        full[2]
    );
    // "No slower", with room for a busy machine's noise: under a CPU hog per core one
    // refresh varies up to 2x, and since `.ci/run` runs this suite beside another
    // major's, the one keyed sample may land in a busier second than the three full
    // ones (it failed once at 1.5x + 50 ms). The bound is the slowest full recompute
    // × 3 + 100 ms: JIT made the keys 30x slower, which this still catches.
    assert!(
        keyed <= full[2] * 3.0 + 0.1,
        "100 keys took {keyed:.3} s, everything {:.3} s at most",
        full[2]
    );
    assert_eq!(d.failures(ATT), 0.0);
}

/// A reload that removes the keyed view while its full recompute runs, then re-adds it:
/// the re-added view's first recompute overlaps the orphaned one on the server, waits
/// for it, and the table ends exact with a write made meanwhile; nothing fails for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_removes_and_re_adds_the_view_mid_recompute_ends_exact() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    // Each execution of the definition takes 1.5 s (an init plan runs once per query).
    db.psql(
        r#"CREATE OR REPLACE VIEW app."Stats Def" AS
      SELECT s.cat, s.season, count(DISTINCT s.id) AS sessions,
             coalesce(sum(m.v), 0)::bigint AS total, count(m.id) AS marks
        FROM app.sessions s LEFT JOIN app.marks m ON m.session_id = s.id
       WHERE (SELECT pg_sleep(1.5)::text) IS NOT NULL
       GROUP BY s.cat, s.season"#,
    );
    db.psql(
        "CREATE MATERIALIZED VIEW app.other AS SELECT 1 AS k; CREATE UNIQUE INDEX ON app.other (k);",
    );
    let other = "[[view]]\nname = \"app.other\"\nchannels = [\"other\"]\n";
    let with = format!("{}lock_timeout = \"30s\"\n{other}", config(&db));
    let without = format!("[database]\nurl = \"{}\"\n{other}", db.dsn());
    let d = Daemon::start(&with);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_exact(&db, "the startup recompute").await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%INSERT INTO \"app\".\"stats_live\"%' AND query NOT LIKE '%pg_stat_activity%'";
    db.psql("NOTIFY stats_keys, '*'");
    wait_for(
        Duration::from_secs(10),
        "a full recompute to run",
        || async { db.psql(running) == "1" },
    )
    .await;
    let reloads = |n: usize| {
        let d = &d;
        async move {
            wait_for(Duration::from_secs(10), "the reload", || async {
                d.log_text().matches("configuration reloaded").count() >= n
            })
            .await
        }
    };
    d.rewrite_config(&without);
    d.signal("HUP");
    reloads(1).await;
    db.psql("INSERT INTO app.marks (session_id, v) VALUES (3, 777)");
    d.rewrite_config(&with);
    d.signal("HUP");
    reloads(2).await;
    wait_for(
        Duration::from_secs(15),
        "the re-added view's recompute to run beside the orphaned one or after it",
        || async { d.refreshes(LABEL, "startup", "success") >= 1.0 },
    )
    .await;
    wait_exact(&db, "the write, after the reload").await;
    let log = d.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("refresh failed") && l.contains("permanent")),
        "{log}"
    );
}
