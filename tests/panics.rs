//! A panic in one of refreshd's tasks, made real by the test-only fault hook
//! (`REFRESHD_TEST_PANIC`, read once at start, see docs/testing.md): it is logged at
//! error level with its message, counted in `refreshd_task_panics_total{reason}`, and
//! then the task starts again (listener, detector) or the request gets a 500 and the
//! server goes on (an HTTP handler), or the daemon exits 1 (the HTTP accept loop) —
//! as docs/operations.md says.

mod support;

use std::time::Duration;

use support::{wait_for, Daemon, TestDb};

const TOTALS: &str = "public.order_totals";

fn config(db: &TestDb, view: &str) -> String {
    format!(
        "[database]\nurl = \"{}\"\n[ha]\nretry_interval = \"1s\"\n{view}",
        db.dsn()
    )
}

const NOTIFIED: &str =
    "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"100ms\"\n";

fn panics(d: &Daemon, task: &str) -> f64 {
    support::sample(
        &d.metrics(),
        &format!("refreshd_task_panics_total{{reason=\"{task}\"}}"),
    )
    .unwrap_or(-1.0)
}

/// The log line refreshd wrote for the panic (not the runtime's own panic message).
fn panic_line(d: &Daemon, task: &str) -> Option<String> {
    d.log_text()
        .lines()
        .find(|l| l.contains("a refreshd task panicked") && l.contains(&format!("\"{task}\"")))
        .map(str::to_string)
}

fn assert_logged(d: &Daemon, task: &str, message: &str) {
    let line = panic_line(d, task).unwrap_or_else(|| panic!("no panic line for {task}"));
    assert!(line.contains("ERROR"), "not at error level: {line}");
    assert!(line.contains(message), "no panic message: {line}");
}

/// A row in bucket `b` is in the view.
fn shows(db: &TestDb, b: i32) -> bool {
    db.psql(&format!(
        "SELECT count(*) FROM public.order_totals WHERE bucket = {b}"
    )) == "1"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_panic_is_counted_and_the_listener_starts_again() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let d = Daemon::start_with_env(
        &config(&db, NOTIFIED),
        &[("REFRESHD_TEST_PANIC", "listener")],
    );
    d.wait_ready(Duration::from_secs(20)).await;
    // The hook fires at the first periodic probe of the leading session (5 s in).
    wait_for(Duration::from_secs(20), "the listener's panic", || async {
        panics(&d, "listener") == 1.0
    })
    .await;
    assert_logged(&d, "listener", "REFRESHD_TEST_PANIC=listener");
    // The core was told the session was lost, and caught up when it led again.
    wait_for(
        Duration::from_secs(20),
        "leading again, with a resync",
        || async { d.leader() == 1.0 && d.refreshes(TOTALS, "resync", "success") >= 1.0 },
    )
    .await;
    let restarted = d
        .log_text()
        .lines()
        .any(|l| l.contains("restarting the task") && l.contains("\"listener\""));
    assert!(restarted, "no restart logged:\n{}", d.log_text());

    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (7, 1)");
    wait_for(Duration::from_secs(10), "the write in the view", || async {
        shows(&db, 7)
    })
    .await;
    wait_for(
        Duration::from_secs(5),
        "the notify refresh counted",
        || async { d.refreshes(TOTALS, "notify", "success") >= 1.0 },
    )
    .await;
    assert_eq!(panics(&d, "listener"), 1.0, "the hook fires once");
    assert_eq!(d.get("/healthz").0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_of_the_listen_connections_driver_ends_only_that_session() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let d = Daemon::start_with_env(
        &config(&db, NOTIFIED),
        &[("REFRESHD_TEST_PANIC", "listener_driver")],
    );
    // The first connection's driver panics (before its proof): that session fails, the
    // listener connects again and leads.
    d.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(panics(&d, "listener"), 1.0);
    assert_logged(&d, "listener", "REFRESHD_TEST_PANIC=listener_driver");
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("LISTEN connection failed") && l.contains("connection closed")),
        "{log}"
    );
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (6, 1)");
    wait_for(Duration::from_secs(10), "the write in the view", || async {
        shows(&db, 6)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detector_panic_is_counted_and_detection_starts_again() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let view = "[[view]]\nname = \"public.order_totals\"\ndetect = \"statistics\"\npoll_interval = \"200ms\"\ndebounce = \"0s\"\n";
    let d = Daemon::start_with_env(&config(&db, view), &[("REFRESHD_TEST_PANIC", "detector")]);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(20), "the detector's panic", || async {
        panics(&d, "detector") == 1.0
    })
    .await;
    assert_logged(&d, "detector", "REFRESHD_TEST_PANIC=detector");

    // Detection works again: a write is seen in the statistics and refreshed.
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (8, 1)");
    wait_for(
        Duration::from_secs(20),
        "the write in the view, through detection",
        || async { shows(&db, 8) },
    )
    .await;
    wait_for(
        Duration::from_secs(5),
        "a detected refresh counted",
        || async { d.refreshes(TOTALS, "detected", "success") >= 1.0 },
    )
    .await;
    assert_eq!(panics(&d, "detector"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_handler_panic_answers_500_and_the_server_goes_on() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let d = Daemon::start_with_env(&config(&db, NOTIFIED), &[("REFRESHD_TEST_PANIC", "http")]);
    d.wait_ready(Duration::from_secs(20)).await;
    // The hook is in the `/status` handler.
    let (code, body) = d.get("/status");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("internal error"), "{body}");
    assert_logged(&d, "http", "REFRESHD_TEST_PANIC=http");
    let (code, body) = d.get("/status");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(TOTALS), "{body}");
    assert_eq!(d.get("/healthz").0, 200);
    assert_eq!(panics(&d, "http"), 1.0);
    // And the daemon still refreshes.
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (9, 1)");
    wait_for(Duration::from_secs(10), "the write in the view", || async {
        shows(&db, 9)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_accept_loop_panic_stops_the_daemon_with_exit_1() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let mut d = Daemon::start_with_env(
        &config(&db, NOTIFIED),
        &[("REFRESHD_TEST_PANIC", "http_accept")],
    );
    // Leading first (no HTTP request may be made before: the first connection panics).
    wait_for(Duration::from_secs(20), "leading", || async {
        d.log_text().contains("leading: LISTEN established")
    })
    .await;
    let _ = d.get("/healthz");
    let status = d
        .wait_exit(Duration::from_secs(20))
        .expect("the daemon exits");
    assert_eq!(status.code(), Some(1), "{}", d.log_text());
    assert_logged(&d, "http", "REFRESHD_TEST_PANIC=http_accept");
    let log = d.log_text();
    assert!(log.contains("the HTTP server panicked"), "{log}");
    // It stopped as at SIGTERM: the lock was let go on the way out.
    assert!(log.contains("refreshd stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_fault_name_is_refused() {
    let db = TestDb::new();
    let mut d = Daemon::start_with_env(
        &config(&db, NOTIFIED),
        &[("REFRESHD_TEST_PANIC", "listner")],
    );
    let status = d.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let log = d.log_text();
    assert!(
        log.contains(
            "REFRESHD_TEST_PANIC=listner: not one of listener, listener_driver, detector, http, http_accept"
        ),
        "{log}"
    );
}
