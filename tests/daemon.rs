//! `refreshd run` against a real PostgreSQL: LISTEN, coalesce, refresh, force,
//! metrics, health, signals, reload.

mod support;

use std::time::{Duration, Instant};

use support::{wait_for, Daemon, TestDb};

/// `public.orders` with a statement-level NOTIFY trigger on `orders_changed`, and
/// `public.order_totals` built on it. `public.slow` takes about `slow_secs` to refresh.
fn schema(db: &TestDb, slow_secs: f64) {
    db.psql(support::ORDERS_SCHEMA);
    db.psql(&format!(
        r#"
        CREATE MATERIALIZED VIEW public.slow AS
          WITH pause AS MATERIALIZED (SELECT pg_sleep({slow_secs}))
          SELECT o.bucket, count(*) AS n FROM public.orders o, pause GROUP BY o.bucket;
        CREATE UNIQUE INDEX ON public.slow (bucket);
        "#
    ));
}

fn base_config(db: &TestDb, views: &str) -> String {
    format!("[database]\nurl = \"{}\"\n{views}", db.dsn())
}

const TOTALS: &str = "public.order_totals";

/// The view equals a fresh computation of its query.
fn totals_exact(db: &TestDb) -> bool {
    db.psql(support::ORDERS_EXACT) == "0"
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_becomes_visible_within_debounce() {
    let db = TestDb::new();
    schema(&db, 0.0);
    let d = Daemon::start(&base_config(
        &db,
        "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"300ms\"\n",
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.refreshes(TOTALS, "startup", "success") == 1.0
    })
    .await;

    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (42, 7)");
    let t = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the insert to show in the view",
        || async { db.psql("SELECT count(*) FROM public.order_totals WHERE bucket = 42") == "1" },
    )
    .await;
    let took = t.elapsed();
    // debounce 300 ms + a refresh of a few ms + polling: well under a second and a half.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "refreshed before the debounce: {took:?}"
    );
    wait_for(
        Duration::from_secs(2),
        "the notify refresh to be counted",
        || async { d.refreshes(TOTALS, "notify", "success") == 1.0 },
    )
    .await;
    the_metrics_show_one_notified_refresh(&d.metrics());
    let (code, status) = d.get("/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["role"], "leader");
    assert_eq!(v["views"][0]["view"], TOTALS);
    assert_eq!(v["views"][0]["last_outcome"], "success");
    assert_eq!(v["views"][0]["state"], "idle");
    assert!(
        d.log_text().contains("refreshed"),
        "one log line per refresh"
    );
}

/// /metrics after the startup refresh and one notified refresh of order_totals.
fn the_metrics_show_one_notified_refresh(m: &str) {
    assert_eq!(
        support::sample(
            m,
            "refreshd_notifications_total{channel=\"orders_changed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(support::sample(m, "refreshd_listener_connected"), Some(1.0));
    assert_eq!(support::sample(m, "refreshd_leader"), Some(1.0));
    assert!(
        support::sample(
            m,
            "refreshd_last_success_timestamp_seconds{view=\"public.order_totals\"}"
        )
        .unwrap()
            > 1.7e9
    );
    assert!(
        m.contains(
            "refreshd_refresh_duration_seconds_bucket{view=\"public.order_totals\",le=\"0.1\"}"
        ),
        "{m}"
    );
    assert!(
        m.contains("refreshd_refresh_lag_seconds_count{view=\"public.order_totals\"} 2"),
        "{m}"
    );
    assert!(m.contains(&format!(
        "refreshd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_during_a_refresh_cause_exactly_one_more() {
    let db = TestDb::new();
    schema(&db, 3.0);
    let d = Daemon::start(&base_config(
        &db,
        "[[view]]\nname = \"public.slow\"\nchannels = [\"orders_changed\"]\ndebounce = \"0s\"\n",
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(15), "the startup refresh", || async {
        d.refreshes("public.slow", "startup", "success") == 1.0
    })
    .await;

    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (1, 1)");
    wait_for(
        Duration::from_secs(3),
        "the refresh to be running",
        || async { d.get("/status").1.contains("\"state\":\"running\"") },
    )
    .await;
    // Twenty transactions (twenty notifications) from one open connection, so they all
    // commit well within the 3 s refresh even on a loaded machine (a psql process per
    // insert did not, under load: the test then saw more than one follow-up).
    let client = db.client().await;
    for i in 0..20 {
        client
            .batch_execute(&format!(
                "INSERT INTO public.orders (bucket, amount) VALUES (2, {i})"
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        d.refreshes("public.slow", "notify", "success"),
        0.0,
        "precondition: the twenty commits landed during the first refresh"
    );
    wait_for(Duration::from_secs(15), "two notify refreshes", || async {
        d.refreshes("public.slow", "notify", "success") >= 2.0
    })
    .await;
    wait_for(Duration::from_secs(8), "the view to be idle", || async {
        d.get("/status").1.contains("\"state\":\"idle\"")
    })
    .await;
    assert_eq!(
        d.refreshes("public.slow", "notify", "success"),
        2.0,
        "exactly one follow-up for 20 notifications"
    );
    assert_eq!(db.psql("SELECT n FROM public.slow WHERE bucket = 2"), "120");
}

/// Commits the NOTIFY, then keeps the session open a moment.
const LINGER: &str = "; COMMIT; SELECT pg_sleep(0.3)";

#[tokio::test(flavor = "multi_thread")]
async fn force_by_signal_control_channel_and_http() {
    let db = TestDb::new();
    schema(&db, 0.0);
    let d = Daemon::start(&base_config(
        &db,
        "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"1h\"\nmax_delay = \"1h\"\n",
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "startup refresh", || async {
        d.refreshes(TOTALS, "startup", "success") == 1.0
    })
    .await;
    let d = &d;
    let forced = |n: f64| move || async move { d.refreshes(TOTALS, "force", "success") == n };

    // A notification alone waits an hour; SIGUSR1 refreshes now.
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (77, 1)");
    d.signal("USR1");
    wait_for(Duration::from_secs(5), "SIGUSR1 force", forced(1.0)).await;
    assert_eq!(
        db.psql("SELECT count(*) FROM public.order_totals WHERE bucket = 77"),
        "1"
    );

    // The sender's role is checked by its pid, so it stays connected until refreshd
    // has looked it up (a session that exits at once is refused: see README).
    db.psql(&format!(
        "NOTIFY refreshd_control, 'public.order_totals'{LINGER}"
    ));
    wait_for(Duration::from_secs(5), "control channel force", forced(2.0)).await;
    db.psql(&format!("NOTIFY refreshd_control, '*'{LINGER}"));
    wait_for(
        Duration::from_secs(5),
        "control channel '*' force",
        forced(3.0),
    )
    .await;

    let (code, body) = d.post("/refresh/public.order_totals", &[]);
    assert_eq!(code, 202, "{body}");
    wait_for(Duration::from_secs(5), "POST force", forced(4.0)).await;
    let (code, _) = d.post("/refresh", &[]);
    assert_eq!(code, 202);
    wait_for(Duration::from_secs(5), "POST all force", forced(5.0)).await;
    let (code, _) = d.post("/refresh/public.nope", &[]);
    assert_eq!(code, 404);
    let (code, _) = d.post(
        "/refresh/public.order_totals%3B%20DROP%20TABLE%20public.orders",
        &[],
    );
    assert_eq!(code, 404);
    let (code, _) = d.get("/refresh/public.order_totals");
    assert_eq!(code, 405);

    // Hostile payloads: logged, counted, ignored.
    db.psql(&format!(
        "NOTIFY refreshd_control, 'public.order_totals; DROP TABLE public.orders'{LINGER}"
    ));
    let big = "x".repeat(5000);
    db.psql(&format!("NOTIFY refreshd_control, '{big}'{LINGER}"));
    db.psql(&format!(
        "NOTIFY refreshd_control, '\"public\".\"order_totals'{LINGER}"
    ));
    wait_for(Duration::from_secs(5), "rejections counted", || async {
        support::sample(&d.metrics(), "refreshd_control_rejected_total") == Some(3.0)
    })
    .await;
    assert_eq!(db.psql("SELECT count(*) > 0 FROM public.orders"), "t");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        d.refreshes(TOTALS, "force", "success"),
        5.0,
        "nothing forced by hostile payloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_a_view_and_keeps_old_config_when_broken() {
    let db = TestDb::new();
    schema(&db, 0.0);
    db.psql(
        "CREATE TABLE public.events (id int); \
         CREATE MATERIALIZED VIEW public.event_count AS SELECT count(*) AS n, 1 AS k FROM public.events; \
         CREATE UNIQUE INDEX ON public.event_count (k);",
    );
    let one = "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"0s\"\n";
    let mut d = Daemon::start(&base_config(&db, one));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "startup refresh", || async {
        d.refreshes(TOTALS, "startup", "success") == 1.0
    })
    .await;

    let two = format!("{one}[[view]]\nname = \"public.event_count\"\nchannels = [\"events_changed\"]\ndebounce = \"0s\"\n");
    d.rewrite_config(&base_config(&db, &two));
    d.signal("HUP");
    wait_for(
        Duration::from_secs(10),
        "the new view's first refresh",
        || async { d.successes("public.event_count") >= 1.0 },
    )
    .await;
    db.psql("INSERT INTO public.events VALUES (1), (2)");
    db.psql("NOTIFY events_changed");
    wait_for(
        Duration::from_secs(5),
        "the new channel to work",
        || async { db.psql("SELECT n FROM public.event_count") == "2" },
    )
    .await;

    // A broken file: logged, old config kept, daemon still serving both views.
    d.rewrite_config("[database]\nurl = 5\n");
    d.signal("HUP");
    wait_for(
        Duration::from_secs(5),
        "the reload error in the log",
        || async { d.log_text().contains("keeping the old one") },
    )
    .await;
    db.psql("INSERT INTO public.events VALUES (3)");
    db.psql("NOTIFY events_changed");
    wait_for(
        Duration::from_secs(5),
        "the old config to still work",
        || async { db.psql("SELECT n FROM public.event_count") == "3" },
    )
    .await;
    assert!(d.child.try_wait().unwrap().is_none(), "still running");

    let t = Instant::now();
    d.signal("TERM");
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "prompt: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_waits_for_listen_and_sigterm_exits_zero() {
    use refreshd::cli::cluster::{ClusterOptions, TempCluster};
    let mut cluster = TempCluster::start(&ClusterOptions::default()).unwrap();
    cluster
        .psql("postgres", &["-c", "CREATE MATERIALIZED VIEW public.one AS SELECT 1 AS k; CREATE UNIQUE INDEX ON public.one (k);"])
        .unwrap();
    cluster.stop().unwrap();
    let mut d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nconnect_timeout = \"1s\"\n[[view]]\nname = \"public.one\"\nschedule = \"0 0 * * *\"\n",
        cluster.url("postgres", "postgres")
    ));
    wait_for(Duration::from_secs(10), "/healthz", || async {
        d.get("/healthz").0 == 200
    })
    .await;
    assert_eq!(d.get("/readyz").0, 503, "not ready without a database");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.get("/readyz").0, 503);
    assert_eq!(
        d.get("/healthz").0,
        200,
        "liveness never depends on the database"
    );
    cluster.pg_ctl(&["start"]).unwrap();
    d.wait_ready(Duration::from_secs(40)).await;
    wait_for(Duration::from_secs(10), "startup refresh", || async {
        d.successes("public.one") >= 1.0
    })
    .await;

    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn write_storm_is_coalesced_and_ends_exact() {
    let db = TestDb::new();
    schema(&db, 0.0);
    let d = Daemon::start(&base_config(
        &db,
        "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"200ms\"\nmax_delay = \"1s\"\n",
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "startup refresh", || async {
        d.refreshes(TOTALS, "startup", "success") == 1.0
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("storm.sql");
    std::fs::write(&script, "INSERT INTO public.orders (bucket, amount) VALUES ((random() * 20)::int, (random() * 100)::int);\n").unwrap();
    let secs = 6;
    let storm = std::process::Command::new(refreshd::cli::cluster::client_program("pgbench"))
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-R",
            "400",
            "-T",
            &secs.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg("-d")
        .arg(db.dsn())
        .output()
        .unwrap();
    assert!(
        storm.status.success(),
        "{}",
        String::from_utf8_lossy(&storm.stderr)
    );
    let out = String::from_utf8_lossy(&storm.stdout);
    let tx: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("pgbench transaction count");
    assert!(tx > 1000.0, "a real storm: {tx} transactions");

    wait_for(Duration::from_secs(10), "the view to be exact", || async {
        totals_exact(&db)
    })
    .await;
    wait_for(Duration::from_secs(5), "idle", || async {
        d.get("/status").1.contains("\"state\":\"idle\"")
    })
    .await;
    let refreshes = d.refreshes(TOTALS, "notify", "success");
    // About one refresh per max_delay while the storm lasts, plus the tail.
    assert!(refreshes >= 2.0, "{refreshes}");
    assert!(
        refreshes <= secs as f64 / 1.0 + 3.0,
        "{refreshes} refreshes for a {secs}s storm of {tx} commits"
    );
    let notes = support::sample(
        &d.metrics(),
        "refreshd_notifications_total{channel=\"orders_changed\"}",
    )
    .unwrap();
    assert!(notes >= tx * 0.99, "every commit notified: {notes} of {tx}");
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_notify_ready_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let db = TestDb::new();
    schema(&db, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::start_with_env(
        &base_config(
            &db,
            "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n",
        ),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = String::new();
    let recv_until = |what: &str, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 512];
        while !seen.contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what} from refreshd; got {seen:?}"
            );
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    recv_until("READY=1", &mut seen);
    assert_eq!(d.get("/readyz").0, 200, "READY=1 only once /readyz says so");
    seen.clear();
    recv_until("WATCHDOG=1", &mut seen);
    seen.clear();
    recv_until("WATCHDOG=1", &mut seen);
    d.signal("TERM");
    recv_until("STOPPING=1", &mut seen);
    assert!(d.wait_exit(Duration::from_secs(5)).unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn post_refresh_needs_the_token_when_one_is_configured() {
    let db = TestDb::new();
    schema(&db, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-t0ken\n").unwrap();
    let d = Daemon::start_full(
        &base_config(
            &db,
            "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n",
        ),
        &format!("admin_token_file = \"{}\"", token_file.display()),
        &[],
    );
    d.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(d.post("/refresh/public.order_totals", &[]).0, 401);
    assert_eq!(
        d.post("/refresh", &[("Authorization", "Bearer wrong")]).0,
        401
    );
    assert_eq!(
        d.post("/refresh", &[("Authorization", "s3cret-t0ken")]).0,
        401,
        "scheme required"
    );
    // Unknown views are only revealed to callers with the token.
    assert_eq!(d.post("/refresh/public.nope", &[]).0, 401);
    assert_eq!(
        d.post(
            "/refresh/public.nope",
            &[("Authorization", "Bearer s3cret-t0ken")]
        )
        .0,
        404
    );
    let (code, body) = d.post(
        "/refresh/public.order_totals",
        &[("Authorization", "Bearer s3cret-t0ken")],
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        d.post(
            "/refresh/public.nope",
            &[("Authorization", "bearer s3cret-t0ken")]
        )
        .0,
        404,
        "the scheme is case-insensitive"
    );
    wait_for(Duration::from_secs(5), "the authorised force", || async {
        d.refreshes(TOTALS, "force", "success") == 1.0
    })
    .await;
    // Reading routes stay open: Prometheus and probes carry no token.
    assert_eq!(d.get("/metrics").0, 200);
    assert_eq!(d.get("/status").0, 200);
    assert!(
        !d.get("/status").1.contains("s3cret"),
        "the token is not shown"
    );
}

/// A schedule fires (every second here), as its own reason, without any notification.
#[tokio::test(flavor = "multi_thread")]
async fn schedules_fire_on_time() {
    let db = TestDb::new();
    schema(&db, 0.0);
    let d = Daemon::start(&base_config(
        &db,
        "[[view]]\nname = \"public.order_totals\"\nschedule = \"* * * * * *\"\n",
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    // Counted from here: under load /readyz can answer after the schedule has already
    // fired a few times. Of five refreshes ending after `t`, at most two fired before it
    // (one running, one pending), so three fired at second boundaries from `t` on: the
    // third of those is at least 2 s after `t`.
    let t = Instant::now();
    let before = d.refreshes(TOTALS, "schedule", "success");
    wait_for(
        Duration::from_secs(15),
        "five more scheduled refreshes",
        || async { d.refreshes(TOTALS, "schedule", "success") >= before + 5.0 },
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "not faster than the schedule"
    );
}
