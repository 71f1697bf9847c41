//! The SQL in `sql/` on a real database: install, validation, the attendance seed's own
//! test suite, idempotency, rollback, one notification per statement, and refreshd's
//! `check`/`refresh` on the views it creates.

mod support;

use std::path::PathBuf;

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

    // Idempotent.
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
        db.psql("SELECT count(*) FROM public.member_attendance"),
        rows
    );
    run(&db, "attendance/install.sql");
    run(&db, "attendance/validate.sql");
    seed_suite_passes(&db);
}

#[test]
fn inventory_install_validate_rollback_reinstall() {
    let db = TestDb::new();
    install_all(&db);
    run(&db, "inventory/validate.sql");
    run(&db, "inventory/install.sql");
    run(&db, "inventory/rollback.sql");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_matviews WHERE schemaname = 'core'"),
        "0"
    );
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
