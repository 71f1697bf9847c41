//! The control channel is not an open door (SPEC "Semantics"): only refreshd's own role,
//! its members and `control_roles` may force refreshes; floods of forces coalesce and
//! are logged a few times, not once each; and `/status` never shows row values.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::config::Config;
use support::{sample, wait_for, Daemon, TestDb, TestRoles};

const TOTALS: &str = "public.order_totals";
const QUIET: &str = "public.quiet_sum";
const SLOW: &str = "public.slow_forced";
const TICKS: &str = "public.tick_max";

/// `public.orders` (NOTIFY trigger on `orders_changed`) and `public.order_totals`;
/// `public.quiet` (no trigger) and `public.quiet_sum`; `public.slow_forced`, whose refresh
/// takes about 300 ms; `public.ticks` (NOTIFY trigger on `ticks_changed`) and
/// `public.tick_max`, its highest id.
fn schema() -> String {
    format!("{}{REST}", support::ORDERS_SCHEMA)
}

const REST: &str = r#"
    CREATE TABLE public.quiet (id int PRIMARY KEY, v int NOT NULL);
    INSERT INTO public.quiet VALUES (1, 1);
    CREATE MATERIALIZED VIEW public.quiet_sum AS SELECT id, v FROM public.quiet;
    CREATE UNIQUE INDEX ON public.quiet_sum (id);

    CREATE MATERIALIZED VIEW public.slow_forced AS
      WITH pause AS MATERIALIZED (SELECT pg_sleep(0.3))
      SELECT g AS k FROM generate_series(1, 10) g, pause;
    CREATE UNIQUE INDEX ON public.slow_forced (k);

    CREATE TABLE public.ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE FUNCTION public.notify_ticks() RETURNS trigger LANGUAGE plpgsql AS
      $$BEGIN PERFORM pg_notify('ticks_changed', ''); RETURN NULL; END$$;
    CREATE TRIGGER ticks_notify AFTER INSERT ON public.ticks
      FOR EACH STATEMENT EXECUTE FUNCTION public.notify_ticks();
    CREATE MATERIALIZED VIEW public.tick_max AS
      SELECT 1 AS k, coalesce(max(id), 0) AS id FROM public.ticks;
    CREATE UNIQUE INDEX ON public.tick_max (k);
"#;

/// Views that only a force refreshes (after the startup refresh).
const FORCED_ONLY: &str = "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"1h\"\nmax_delay = \"1h\"\n\
     [[view]]\nname = \"public.quiet_sum\"\nchannels = [\"quiet_never\"]\ndebounce = \"1h\"\nmax_delay = \"1h\"\n";

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {dsn}: {e}"));
    tokio::spawn(conn);
    client
}

/// `conns` sessions sending `NOTIFY refreshd_control, <payload>` (payloads taken in
/// turn; test constants, never input) as fast as they can for `length`. Returns how
/// many were sent and the sessions, still open, so that refreshd can look the senders up.
async fn flood(
    dsn: &str,
    conns: usize,
    length: Duration,
    payloads: &'static [&'static str],
) -> (u64, Vec<tokio_postgres::Client>) {
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let client = connect(dsn).await;
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + length;
            let mut i = c;
            while Instant::now() < end {
                let p = payloads[i % payloads.len()];
                i += 1;
                client
                    .batch_execute(&format!("NOTIFY refreshd_control, '{p}'"))
                    .await
                    .expect("NOTIFY");
                sent.fetch_add(1, Ordering::Relaxed);
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    (sent.load(Ordering::Relaxed), clients)
}

/// Log lines that mention the control channel.
fn control_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("control"))
        .collect()
}

/// Panics with `problems`, if there are any, after stopping the daemon and cutting its
/// log (a flood can make it millions of lines) to head and tail, so that the report of
/// the failure stays readable.
fn fail_if_any(d: &mut Daemon, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    let _ = d.child.kill();
    let _ = d.child.wait();
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() > 200 {
        let short = format!(
            "{}\n... {} lines cut ...\n{}",
            lines[..100].join("\n"),
            lines.len() - 200,
            lines[lines.len() - 100..].join("\n")
        );
        std::fs::write(&d.log, short).unwrap();
    }
    panic!("{}", problems.join("\n"));
}

fn view_status(d: &Daemon, view: &str) -> serde_json::Value {
    let (_, body) = d.get("/status");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["views"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["view"] == view).cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_a_role_that_may_not_control_forces_nothing_and_logs_little() {
    let db = TestDb::new();
    db.psql(&schema());
    let roles = TestRoles::create(&db, &["intruder"]);
    let intruder = roles.name("intruder");
    // Info level, as in production: a flood must not fill the disk there.
    let mut d = Daemon::start_with_env(
        &format!("[database]\nurl = \"{}\"\n{FORCED_ONLY}", db.dsn()),
        &[("RUST_LOG", "info")],
    );
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refreshes", || async {
        d.successes(TOTALS) >= 1.0 && d.successes(QUIET) >= 1.0
    })
    .await;

    let log_from = d.log_text().len();
    let started = Instant::now();
    let (sent, _sessions) = flood(
        &db.dsn_as(&intruder),
        2,
        Duration::from_secs(12),
        &["*", "public.order_totals"],
    )
    .await;
    let flooded = started.elapsed();

    // A force from refreshd's own role, after the whole flood: once it is carried out,
    // every notification of the flood has been handled (one session delivers them in
    // commit order).
    let own = db.client().await;
    own.batch_execute("NOTIFY refreshd_control, 'public.quiet_sum'")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(120),
        "the own role's force after the flood",
        || async { d.refreshes(QUIET, "force", "success") >= 1.0 },
    )
    .await;
    let forced_totals = d.forced(TOTALS);
    let forced_quiet = d.forced(QUIET);
    let rejected = d.counter("refreshd_control_rejected_total");
    let elapsed = started.elapsed();
    let log = d.log_since(log_from);
    let lines = control_lines(&log);
    println!(
        "intruder flood: {sent} NOTIFYs in {flooded:?}; forced refreshes: {forced_totals} of order_totals, \
         {forced_quiet} of quiet_sum; rejected {rejected}; {} log lines mention the control channel \
         ({} lines, {} bytes of log in all) over {elapsed:?}",
        lines.len(),
        log.lines().count(),
        log.len()
    );
    let problems = intruder_flood_problems(sent, forced_totals, forced_quiet, &lines, elapsed);
    fail_if_any(&mut d, &problems);
    wait_for(
        Duration::from_secs(30),
        "every NOTIFY of the flood to be counted as rejected",
        || async { d.counter("refreshd_control_rejected_total") >= sent as f64 },
    )
    .await;
    assert_eq!(
        d.counter("refreshd_control_rejected_total"),
        sent as f64,
        "the own role's force was not rejected"
    );
    // Still at work: an ordinary notification refreshes as configured.
    assert_eq!(d.get("/readyz").0, 200);
}

/// What went wrong in an intruder's flood of `sent` NOTIFYs: it forced nothing (only
/// the own role's one force of quiet_sum counts), and the log mentions the control
/// channel in few `lines` over `elapsed`.
fn intruder_flood_problems(
    sent: u64,
    forced_totals: f64,
    forced_quiet: f64,
    lines: &[&str],
    elapsed: Duration,
) -> Vec<String> {
    // At most once per 10 s per kind, with a count: a few kinds, a few windows.
    let windows = elapsed.as_secs().div_ceil(10) as usize;
    let allowed_lines = 4 * windows + 2;
    let mut problems = Vec::new();
    if sent <= 1000 {
        problems.push(format!("not a real flood: {sent} NOTIFYs"));
    }
    if forced_totals != 0.0 {
        problems.push(format!(
            "a role that may not control refreshd forced order_totals {forced_totals} times ({sent} NOTIFYs)"
        ));
    }
    if forced_quiet != 1.0 {
        problems.push(format!(
            "quiet_sum was forced {forced_quiet} times; only the own role's force may count"
        ));
    }
    if lines.len() > allowed_lines {
        problems.push(format!(
            "{} log lines mention the control channel in {elapsed:?} (at most {allowed_lines}); the first ones:\n{}",
            lines.len(),
            lines.iter().take(10).copied().collect::<Vec<_>>().join("\n")
        ));
    }
    problems
}

#[tokio::test(flavor = "multi_thread")]
async fn own_role_its_members_and_control_roles_may_force_others_may_not() {
    let db = TestDb::new();
    let roles = TestRoles::create(&db, &["refresher", "deputy", "operator", "intruder"]);
    let refresher = roles.name("refresher");
    let deputy = roles.name("deputy");
    let operator = roles.name("operator");
    let intruder = roles.name("intruder");
    // refreshd runs as a role of its own that owns the views; `deputy` is a member of it.
    db.psql(&format!(
        "GRANT CREATE ON SCHEMA public TO {refresher}; GRANT {refresher} TO {deputy}; \
         SET ROLE {refresher}; {}",
        schema()
    ));
    let d = Daemon::start(&format!(
        "control_roles = [\"{operator}\"]\n[database]\nurl = \"{}\"\n{FORCED_ONLY}",
        db.dsn_as(&refresher)
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refreshes", || async {
        d.successes(TOTALS) >= 1.0 && d.successes(QUIET) >= 1.0
    })
    .await;

    let mut n = 0.0;
    for who in [&refresher, &deputy, &operator] {
        // A session that stays open while refreshd looks its pid up.
        let session = connect(&db.dsn_as(who)).await;
        session
            .batch_execute("NOTIFY refreshd_control, 'public.quiet_sum'")
            .await
            .unwrap();
        n += 1.0;
        let what = format!("the force sent by {who}");
        wait_for(Duration::from_secs(10), &what, || async {
            d.refreshes(QUIET, "force", "success") >= n
        })
        .await;
        assert_eq!(d.refreshes(QUIET, "force", "success"), n, "{who}");
    }
    assert_eq!(d.counter("refreshd_control_rejected_total"), 0.0);

    let session = connect(&db.dsn_as(&intruder)).await;
    session
        .batch_execute("NOTIFY refreshd_control, 'public.quiet_sum'; NOTIFY refreshd_control, '*'")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the intruder's NOTIFYs to be rejected",
        || async { d.counter("refreshd_control_rejected_total") >= 2.0 },
    )
    .await;
    wait_for(Duration::from_secs(10), "quiet_sum to be idle", || async {
        view_status(&d, QUIET)["state"] == "idle"
    })
    .await;
    assert_eq!(d.forced(QUIET), n, "the intruder forced quiet_sum");
    assert_eq!(d.forced(TOTALS), 0.0, "the intruder forced every view");
    assert_eq!(d.counter("refreshd_control_rejected_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_allowed_forces_coalesces_and_other_views_keep_their_max_delay() {
    let db = TestDb::new();
    db.psql(&schema());
    let config = Config::new(&db.dsn())
        .database("max_concurrent_refreshes", 2)
        .view(SLOW)
        .channels(&["slow_never"])
        .set("debounce", "1h")
        .set("max_delay", "1h")
        .view(TICKS)
        .channels(&["ticks_changed"])
        .set("debounce", "300ms")
        .set("max_delay", "1s");
    let mut d = Daemon::start_with_env(&config.text(), &[("RUST_LOG", "info")]);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refreshes", || async {
        d.successes(SLOW) >= 1.0 && d.successes(TICKS) >= 1.0
    })
    .await;
    let ticks_before = d.refreshes(TICKS, "notify", "success");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_tick_writer(&db, stop.clone()).await;
    let watcher = spawn_slow_forced_watcher(&db, stop.clone()).await;

    let started = Instant::now();
    let (sent, _sessions) = flood(
        &db.dsn(),
        2,
        Duration::from_secs(12),
        &["public.slow_forced"],
    )
    .await;
    let flooded = started.elapsed();
    // Let the last queued force run, watching all the while.
    wait_for(
        Duration::from_secs(60),
        "slow_forced to be idle after the flood",
        || async {
            let s = view_status(&d, SLOW);
            s["state"] == "idle" && s["pending_since"].is_null()
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let (most_at_once, stalest) = watcher.await.unwrap();
    let seen = AllowedFlood {
        sent,
        elapsed: started.elapsed(),
        forced: d.refreshes(SLOW, "force", "success"),
        coalesced: d.counter("refreshd_control_coalesced_total"),
        most_at_once,
        slow_failures: d.failures(SLOW),
        tick_refreshes: d.refreshes(TICKS, "notify", "success") - ticks_before,
        tick_failures: d.failures(TICKS),
        stalest,
    };
    println!(
        "allowed flood: {sent} forces of slow_forced in {flooded:?} -> {} forced refreshes, \
         {} coalesced, at most {most_at_once} at once; tick_max: {writes} writes, \
         {} refreshes, stalest {stalest:.2} s (max_delay 1 s) over {:?}",
        seen.forced, seen.coalesced, seen.tick_refreshes, seen.elapsed
    );
    fail_if_any(&mut d, &seen.problems());
}

/// A write every 100 ms on public.ticks until `stop`; the task returns how many.
async fn spawn_tick_writer(db: &TestDb, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    let client = db.client().await;
    tokio::spawn(async move {
        let mut writes = 0u32;
        while !stop.load(Ordering::Relaxed) {
            client
                .batch_execute("INSERT INTO public.ticks DEFAULT VALUES")
                .await
                .unwrap();
            writes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        writes
    })
}

/// Every 50 ms until `stop`: refreshes of slow_forced running on the server, and the
/// age of the oldest tick tick_max does not show yet. The task returns the most
/// refreshes at once and the greatest age (seconds).
async fn spawn_slow_forced_watcher(
    db: &TestDb,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(i64, f64)> {
    let client = db.client().await;
    tokio::spawn(async move {
        let (mut most_at_once, mut stalest) = (0i64, 0f64);
        while !stop.load(Ordering::Relaxed) {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                               AND state = 'active' AND query LIKE '%REFRESH MATERIALIZED VIEW%slow_forced%'), \
                            (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(t.at)), 0)::float8 \
                               FROM public.ticks t WHERE t.id > (SELECT id FROM public.tick_max))",
                    &[],
                )
                .await
                .unwrap();
            most_at_once = most_at_once.max(row.get(0));
            stalest = stalest.max(row.get(1));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (most_at_once, stalest)
    })
}

/// What a flood of allowed forces of slow_forced left behind.
struct AllowedFlood {
    sent: u64,
    elapsed: Duration,
    forced: f64,
    coalesced: f64,
    most_at_once: i64,
    slow_failures: f64,
    tick_refreshes: f64,
    tick_failures: f64,
    stalest: f64,
}

impl AllowedFlood {
    /// What went wrong: the forces coalesced into few refreshes, one at a time, none
    /// failed, and tick_max kept refreshing within its max_delay.
    fn problems(&self) -> Vec<String> {
        let AllowedFlood {
            sent,
            elapsed,
            forced,
            coalesced,
            most_at_once,
            slow_failures,
            tick_refreshes,
            tick_failures,
            stalest,
        } = *self;
        let mut problems = Vec::new();
        if sent <= 1000 {
            problems.push(format!("not a real flood: {sent} NOTIFYs"));
        }
        if forced < 2.0 {
            problems.push(format!(
                "the forces were not honoured: {forced} forced refreshes"
            ));
        }
        if slow_failures != 0.0 {
            problems.push(format!("{slow_failures} refreshes of slow_forced failed"));
        }
        if most_at_once > 1 {
            problems.push(format!(
                "{most_at_once} refreshes of slow_forced ran at once"
            ));
        }
        // Each refresh takes >= 300 ms: one queued at a time allows no more than this.
        let most = elapsed.as_secs_f64() / 0.3 + 2.0;
        if forced > most || forced * 10.0 > sent as f64 {
            problems.push(format!(
                "{forced} forced refreshes for {sent} forces in {elapsed:?} (at most {most:.0})"
            ));
        }
        if coalesced < sent as f64 / 2.0 {
            problems.push(format!(
                "refreshd_control_coalesced_total is {coalesced} for {sent} forces and {forced} refreshes"
            ));
        }
        if tick_failures != 0.0 {
            problems.push(format!("{tick_failures} refreshes of tick_max failed"));
        }
        if tick_refreshes < 5.0 {
            problems.push(format!(
                "the other view stopped refreshing: {tick_refreshes} refreshes in {elapsed:?}"
            ));
        }
        if stalest > 3.0 {
            problems.push(format!(
                "tick_max was {stalest:.2} s stale (max_delay 1 s + refresh + 2 s margin)"
            ));
        }
        problems
    }
}

/// A measurement for README, not a contract: a sender that disconnects right after its
/// NOTIFY (`psql -c`) may be gone from `pg_stat_activity` before refreshd looks its pid
/// up. Asserts only that each NOTIFY is either honoured or counted as rejected.
#[tokio::test(flavor = "multi_thread")]
async fn forces_from_short_lived_psql_sessions_of_the_own_role() {
    let db = TestDb::new();
    db.psql(&schema());
    let d = Daemon::start_with_env(
        &format!("[database]\nurl = \"{}\"\n{FORCED_ONLY}", db.dsn()),
        &[("RUST_LOG", "info")],
    );
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refreshes", || async {
        d.successes(QUIET) >= 1.0
    })
    .await;
    let (mut honoured, mut rejected, mut lost) = (0, 0, 0);
    for _ in 0..20 {
        let f0 = d.forced(QUIET);
        let r0 = d.counter("refreshd_control_rejected_total");
        db.psql("NOTIFY refreshd_control, 'public.quiet_sum'");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if d.forced(QUIET) > f0 {
                honoured += 1;
                break;
            }
            if d.counter("refreshd_control_rejected_total") > r0 {
                rejected += 1;
                break;
            }
            if Instant::now() > deadline {
                lost += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "psql -c NOTIFY from refreshd's own role, 20 times: {honoured} honoured, {rejected} rejected, {lost} neither within 5 s"
    );
    assert_eq!(
        lost, 0,
        "every control notification is either honoured or counted as rejected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_after_a_duplicate_row_failure_shows_the_sqlstate_and_no_row_values() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE public.people (email text NOT NULL, ssn text NOT NULL); \
         INSERT INTO public.people VALUES ('alice@example.com', '555-11-2222'), ('bob@example.com', '555-44-3333'); \
         CREATE MATERIALIZED VIEW public.contacts AS SELECT email, ssn FROM public.people; \
         CREATE UNIQUE INDEX ON public.contacts (email);",
    );
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.contacts\"\nchannels = [\"contacts_never\"]\ndebounce = \"1h\"\nmax_delay = \"1h\"\n",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.successes("public.contacts") >= 1.0
    })
    .await;
    // A whole duplicate row: REFRESH ... CONCURRENTLY fails with SQLSTATE 21000 and
    // DETAIL `Row: (bob@example.com,555-44-3333)`.
    db.psql("INSERT INTO public.people VALUES ('bob@example.com', '555-44-3333')");
    let (code, body) = d.post("/refresh/public.contacts", &[]);
    assert_eq!(code, 202, "{body}");
    wait_for(Duration::from_secs(10), "the refresh to fail", || async {
        d.failures("public.contacts") >= 1.0
    })
    .await;
    assert!(
        d.log_text().contains("21000"),
        "the failure was the duplicate-row one:\n{}",
        d.log_text()
    );
    let (code, status) = d.get("/status");
    assert_eq!(code, 200);
    println!("/status: {status}");
    let v: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let view = v["views"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["view"] == "public.contacts"))
        .expect("the view in /status")
        .to_string();
    assert!(view.contains("21000"), "the SQLSTATE is shown: {view}");
    assert!(
        view.contains("permanent"),
        "the error class is shown: {view}"
    );
    for secret in ["bob@example.com", "555-44-3333", "Row:", "DETAIL"] {
        assert!(
            !status.contains(secret),
            "/status shows {secret:?}: {status}"
        );
    }
    // The metrics never carried it either.
    let m = d.metrics();
    assert!(!m.contains("bob@example.com"));
    assert_eq!(
        sample(
            &m,
            "refreshd_refreshes_total{outcome=\"failure\",reason=\"force\",view=\"public.contacts\"}"
        ),
        Some(1.0)
    );
}

/// `psql -c SQL` as `role`: a session that ends right after its commit.
fn psql_once(db: &TestDb, role: &str, sql: &str) -> std::process::Output {
    std::process::Command::new(db.server.psql_bin())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(db.dsn_as(role))
        .args(["-c", sql])
        .output()
        .unwrap()
}

/// [`psql_once`], which must succeed.
fn psql_once_ok(db: &TestDb, role: &str, sql: &str) {
    let out = psql_once(db, role, sql);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn install_sql_control(db: &TestDb) {
    let out = db
        .server
        .psql_file(&db.name, &support::repo().join("sql/refreshd/install.sql"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SQL control (SPEC "SQL control"): `select refreshd.force('schema.view')` from a
/// session that ends at once forces a refresh; PostgreSQL refuses a role without
/// EXECUTE; unknown names are refused by the function; a request made while no
/// refreshd runs is carried out when one starts.
#[tokio::test(flavor = "multi_thread")]
async fn refreshd_force_from_sql_is_durable_and_privileged() {
    let db = TestDb::new();
    db.psql(&schema());
    install_sql_control(&db);
    // Installing twice changes nothing (idempotent).
    install_sql_control(&db);
    let roles = TestRoles::create(&db, &["forcer", "nobody"]);
    let (forcer, nobody) = (roles.name("forcer"), roles.name("nobody"));
    db.psql(&format!(
        "GRANT USAGE ON SCHEMA refreshd TO {forcer}, {nobody};
         GRANT EXECUTE ON FUNCTION refreshd.force(text) TO {forcer};"
    ));
    let config = format!("[database]\nurl = \"{}\"\n{FORCED_ONLY}", db.dsn());
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(20), "the startup refreshes", || async {
        d.successes(QUIET) >= 1.0
    })
    .await;

    // A change no trigger reports, then a one-line force from a session that ends.
    db.psql("UPDATE public.quiet SET v = 2");
    psql_once_ok(&db, &forcer, "select refreshd.force('public.quiet_sum')");
    wait_for(Duration::from_secs(10), "the forced refresh", || async {
        db.psql("SELECT v FROM public.quiet_sum") == "2"
    })
    .await;
    // Counted once the daemon has seen its COMMIT return, which can be after the view
    // shows it.
    wait_for(
        Duration::from_secs(10),
        "the forced refresh counted",
        || async { d.refreshes(QUIET, "force", "success") == 1.0 },
    )
    .await;
    assert_eq!(db.psql("SELECT count(*) FROM refreshd.force_requests"), "0");

    sql_forces_without_execute_or_of_unknown_views_are_refused(&db, &forcer, &nobody);
    assert_eq!(d.refreshes(QUIET, "force", "success"), 1.0);
    // Once a leader recorded the views it manages, a relation it does not manage is
    // refused too (it was accepted and then ignored: a conformance review, 2026-12-05).
    wait_for(
        Duration::from_secs(10),
        "the managed views recorded",
        || async { db.psql("SELECT count(*) FROM refreshd.managed_views") == "2" },
    )
    .await;
    for other in ["public.tick_max", "public.quiet", "pg_catalog.pg_class"] {
        let out = psql_once(&db, &forcer, &format!("select refreshd.force('{other}')"));
        assert!(!out.status.success(), "{other}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a view refreshd manages"),
            "{other}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // refreshd stopped: the request waits in its table, and the next one carries it out.
    drop(d);
    db.psql("UPDATE public.quiet SET v = 3");
    psql_once_ok(&db, &forcer, "select refreshd.force('public.quiet_sum')");
    assert_eq!(db.psql("SELECT count(*) FROM refreshd.force_requests"), "1");
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(
        Duration::from_secs(10),
        "the waiting request to be taken",
        || async { db.psql("SELECT count(*) FROM refreshd.force_requests") == "0" },
    )
    .await;
    wait_for(Duration::from_secs(10), "the view to show it", || async {
        db.psql("SELECT v FROM public.quiet_sum") == "3"
    })
    .await;
    wait_for(Duration::from_secs(10), "the forced refresh", || async {
        d.log_text().lines().any(|l| {
            l.contains("forced refresh") && l.contains("source=\"sql\"") && l.contains(QUIET)
        })
    })
    .await;
    // '*' forces every view.
    let before = d.refreshes(TOTALS, "force", "success");
    psql_once_ok(&db, &forcer, "select refreshd.force('*')");
    wait_for(Duration::from_secs(10), "every view forced", || async {
        d.refreshes(TOTALS, "force", "success") > before
    })
    .await;
}

/// `nobody` (no EXECUTE) may neither call refreshd.force (PostgreSQL says no, nothing
/// is recorded) nor write the requests itself; `forcer` may not name an unknown view.
fn sql_forces_without_execute_or_of_unknown_views_are_refused(
    db: &TestDb,
    forcer: &str,
    nobody: &str,
) {
    let out = psql_once(db, nobody, "select refreshd.force('public.quiet_sum')");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied for function force"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor can it write the requests itself.
    let out = psql_once(
        db,
        nobody,
        "insert into refreshd.force_requests (view_name) values ('public.quiet_sum')",
    );
    assert!(!out.status.success());
    // Unknown names are refused by the function.
    let out = psql_once(db, forcer, "select refreshd.force('public.no_such_view')");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a materialized view or table"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SPEC "SQL control": EXECUTE on refreshd.force is granted to refreshd's role and to
/// `control_roles`. It was left to the operator (a role listed there got "permission
/// denied for schema refreshd"; found by a review, 2026-12-05): the leader grants it
/// when it starts leading and after a reload, and a role not listed gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn control_roles_are_granted_refreshd_force() {
    let db = TestDb::new();
    db.psql(&schema());
    install_sql_control(&db);
    let roles = TestRoles::create(&db, &["ops", "other"]);
    let (ops, other) = (roles.name("ops"), roles.name("other"));
    let may = |role: &str| {
        db.psql(&format!(
            "SELECT has_function_privilege('{role}', 'refreshd.force(text)', 'EXECUTE') \
                AND has_schema_privilege('{role}', 'refreshd', 'USAGE')"
        ))
    };
    assert_eq!(may(&ops), "f");
    let d = Daemon::start(&format!(
        "control_roles = [\"{ops}\", \"no_such_role\"]\n[database]\nurl = \"{}\"\n{FORCED_ONLY}",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the grant", || async {
        may(&ops) == "t"
    })
    .await;
    assert_eq!(may(&other), "f");
    db.psql("UPDATE public.quiet SET v = 5");
    psql_once_ok(&db, &ops, "select refreshd.force('public.quiet_sum')");
    wait_for(Duration::from_secs(10), "the forced refresh", || async {
        db.psql("SELECT v FROM public.quiet_sum") == "5"
    })
    .await;
    assert!(
        d.log_text().contains("granted EXECUTE on refreshd.force"),
        "{}",
        d.log_text()
    );
}

/// `init --sql DIR` run as refreshd's role, the files applied by another (a DBA, as
/// docs/adopting.md suggests): the objects are the DBA's, and refreshd's role could
/// neither call `refreshd.force` nor take the requests others left (they waited for
/// good), nor grant `control_roles` (a conformance review, 2026-12-05). The install
/// grants them to the role `init` connected as.
#[tokio::test(flavor = "multi_thread")]
async fn capture_sql_applied_by_another_role_still_serves_refreshds_role() {
    let db = TestDb::new();
    db.psql(&schema());
    let roles = TestRoles::create(&db, &["refresher", "ops"]);
    let (refresher, ops) = (roles.name("refresher"), roles.name("ops"));
    db.psql(&format!(
        "GRANT SELECT ON public.quiet TO {refresher}; \
         ALTER MATERIALIZED VIEW public.quiet_sum OWNER TO {refresher}"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn_as(&refresher),
        "--schema",
        "public",
        "--sql",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.code().is_some(), "{}", support::stderr(&out));
    let applied = db
        .server
        .psql_file(&db.name, &dir.path().join("001_refreshd_triggers.sql"));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // A request left by the DBA while no refreshd runs, and one by refreshd's role.
    db.psql("UPDATE public.quiet SET v = 5; SELECT refreshd.force('public.quiet_sum')");
    psql_once_ok(&db, &refresher, "select refreshd.force('public.quiet_sum')");
    let config = format!(
        "control_roles = [\"{ops}\"]\n[database]\nurl = \"{}\"\n\
         [[view]]\nname = \"public.quiet_sum\"\nchannels = [\"quiet_never\"]\ndebounce = \"1h\"\nmax_delay = \"1h\"\n",
        db.dsn_as(&refresher)
    );
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(
        Duration::from_secs(10),
        "the waiting requests taken",
        || async { db.psql("SELECT count(*) FROM refreshd.force_requests") == "0" },
    )
    .await;
    wait_for(Duration::from_secs(10), "the view to show it", || async {
        db.psql("SELECT v FROM public.quiet_sum") == "5"
    })
    .await;
    // The leader could grant `control_roles` what it holds with the grant option.
    wait_for(
        Duration::from_secs(10),
        "ops granted refreshd.force",
        || async {
            db.psql(&format!(
                "SELECT has_function_privilege('{ops}', 'refreshd.force(text)', 'EXECUTE')"
            )) == "t"
        },
    )
    .await;
    db.psql("UPDATE public.quiet SET v = 6");
    psql_once_ok(&db, &ops, "select refreshd.force('public.quiet_sum')");
    wait_for(
        Duration::from_secs(10),
        "ops's force carried out",
        || async { db.psql("SELECT v FROM public.quiet_sum") == "6" },
    )
    .await;
}
