//! Views built on views (refreshed in dependency order) and change detection without
//! triggers (`detect = "statistics"`), against a real PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use support::{refreshd, stdout, wait_for, write_config, Daemon, TestDb};

/// base table → a (matview) → plain view → b (matview) → c (matview). `b` is slow so
/// that starting `c` alongside it would be seen.
const CHAIN: &str = r#"
    CREATE TABLE public.t (id int PRIMARY KEY, v int NOT NULL);
    INSERT INTO public.t SELECT g, g FROM generate_series(1, 100) g;
    CREATE FUNCTION public.notify_t() RETURNS trigger LANGUAGE plpgsql AS
      $$BEGIN PERFORM pg_notify('t_changed', ''); RETURN NULL; END$$;
    CREATE TRIGGER t_notify AFTER INSERT OR UPDATE OR DELETE ON public.t
      FOR EACH STATEMENT EXECUTE FUNCTION public.notify_t();
    CREATE MATERIALIZED VIEW public.a AS SELECT id % 5 AS k, sum(v) AS s FROM public.t GROUP BY 1;
    CREATE UNIQUE INDEX ON public.a (k);
    CREATE VIEW public.a_plain AS SELECT k, s FROM public.a;
    CREATE MATERIALIZED VIEW public.b AS
      WITH pause AS MATERIALIZED (SELECT pg_sleep(0.3)) SELECT k, s * 2 AS s2 FROM public.a_plain, pause;
    CREATE UNIQUE INDEX ON public.b (k);
    CREATE MATERIALIZED VIEW public.c AS SELECT sum(s2) AS total, 1 AS one FROM public.b;
    CREATE UNIQUE INDEX ON public.c (one);
    CREATE MATERIALIZED VIEW public.unmanaged AS SELECT 1 AS one;
    CREATE MATERIALIZED VIEW public.d AS SELECT one FROM public.unmanaged;
    CREATE UNIQUE INDEX ON public.d (one);
"#;

/// Listed upper-first on purpose: the order must come from the catalog.
fn chain_views() -> &'static str {
    "[defaults]\ndebounce = \"0s\"\nchannels = [\"t_changed\"]\n\
     [[view]]\nname = \"public.c\"\n[[view]]\nname = \"public.b\"\n[[view]]\nname = \"public.a\"\n"
}

fn times(status: &serde_json::Value, view: &str) -> (String, String) {
    let v = status["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["view"] == view)
        .unwrap();
    (
        v["last_start"].as_str().unwrap().to_string(),
        v["last_end"].as_str().unwrap().to_string(),
    )
}

fn assert_in_order(d: &Daemon) {
    let status: serde_json::Value = serde_json::from_str(&d.get("/status").1).unwrap();
    let (a_start, a_end) = times(&status, "public.a");
    let (b_start, b_end) = times(&status, "public.b");
    let (c_start, _) = times(&status, "public.c");
    // RFC 3339 with fixed-width fields compares as text.
    assert!(
        a_start <= a_end && a_end <= b_start,
        "b started {b_start} before a ended {a_end}"
    );
    assert!(
        b_end <= c_start,
        "c started {c_start} before b ended {b_end}"
    );
}

/// Views fed only through the views they read (`channels = []`, as `init` writes for
/// them): at startup they were refreshed first, while the view they read waited for
/// the first capture check to read its tables (found by a review, 2026-12-05). They wait
/// with it now.
#[tokio::test(flavor = "multi_thread")]
async fn views_without_channels_wait_at_startup_for_the_views_they_read() {
    let db = TestDb::new();
    db.psql(CHAIN);
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n[defaults]\ndebounce = \"0s\"\n\
         [[view]]\nname = \"public.c\"\nchannels = []\n\
         [[view]]\nname = \"public.b\"\nchannels = []\n\
         [[view]]\nname = \"public.a\"\nchannels = [\"t_changed\"]\n",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    let dr = &d;
    wait_for(
        Duration::from_secs(10),
        "startup refreshes",
        || async move {
            ["public.a", "public.b", "public.c"]
                .iter()
                .all(|v| dr.successes(v) >= 1.0)
        },
    )
    .await;
    // The first refresh of each, in the order they ended: a, then b, then c (an upper
    // one refreshed first is refreshed again after, which the last times would hide).
    let log = d.log_text();
    let first = |v: &str| {
        log.lines()
            .position(|l| l.contains(&format!("view={v} ")) && l.contains("refreshed kind="))
            .unwrap_or_else(|| panic!("no refresh of {v}:\n{log}"))
    };
    assert!(
        first("public.a") < first("public.b") && first("public.b") < first("public.c"),
        "{log}"
    );
    assert_in_order(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_level_chain_is_refreshed_in_order_once_each() {
    let db = TestDb::new();
    db.psql(CHAIN);
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n{}",
        db.dsn(),
        chain_views()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    let dr = &d;
    let all_ok = |n: f64| {
        move || async move {
            ["public.a", "public.b", "public.c"]
                .iter()
                .all(|v| dr.successes(v) == n)
        }
    };
    wait_for(Duration::from_secs(10), "startup refreshes", all_ok(1.0)).await;
    assert_in_order(&d);

    // One notification dirties all three: a, then b, then c, once each.
    db.psql("UPDATE public.t SET v = v + 1 WHERE id = 1");
    wait_for(
        Duration::from_secs(10),
        "the chain to be refreshed",
        all_ok(2.0),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for v in ["public.a", "public.b", "public.c"] {
        assert_eq!(
            d.successes(v),
            2.0,
            "{v} refreshed once for one notification"
        );
    }
    assert_in_order(&d);
    assert_eq!(
        db.psql("SELECT total FROM public.c"),
        db.psql("SELECT sum(v) * 2 FROM public.t")
    );

    // Forced (SIGUSR1): same order, once each.
    d.signal("USR1");
    wait_for(Duration::from_secs(10), "the forced chain", all_ok(3.0)).await;
    assert_in_order(&d);
    assert_eq!(d.refreshes("public.c", "force", "success"), 1.0);

    // A change that reaches only the lowest view still flows up (reason=dependency).
    db.psql("NOTIFY refreshd_control, 'public.a'; COMMIT; SELECT pg_sleep(0.3)");
    wait_for(Duration::from_secs(10), "dependency refreshes", all_ok(4.0)).await;
    assert_eq!(d.refreshes("public.b", "dependency", "success"), 1.0);
    assert_eq!(d.refreshes("public.c", "dependency", "success"), 1.0);
}

#[test]
fn refresh_all_follows_the_graph_and_check_shows_it() {
    let db = TestDb::new();
    db.psql(CHAIN);
    let cfg = format!(
        "[database]\nurl = \"{}\"\n{}[[view]]\nname = \"public.d\"\nschedule = \"0 0 * * *\"\n",
        db.dsn(),
        chain_views()
    );
    let (_dir, path) = write_config(&cfg);
    let out = refreshd(&["refresh", "-c", path.to_str().unwrap(), "--all"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let pos = |v: &str| {
        text.find(&format!("{v}: refreshed"))
            .unwrap_or_else(|| panic!("{v} in {text}"))
    };
    assert!(
        pos("public.a") < pos("public.b") && pos("public.b") < pos("public.c"),
        "{text}"
    );

    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("graph public.b is refreshed after public.a"),
        "{text}"
    );
    assert!(
        text.contains("graph public.c is refreshed after public.b"),
        "{text}"
    );
    assert!(
        text.contains("public.unmanaged that refreshd does not manage"),
        "{text}"
    );
}

/// No trigger anywhere: a table and a partitioned table with two partitions.
const NO_TRIGGERS: &str = r#"
    CREATE TABLE public.plain (id int, v int);
    CREATE TABLE public.parted (id int, v int) PARTITION BY RANGE (id);
    CREATE TABLE public.parted_low PARTITION OF public.parted FOR VALUES FROM (0) TO (1000);
    CREATE TABLE public.parted_high PARTITION OF public.parted FOR VALUES FROM (1000) TO (2000);
    CREATE MATERIALIZED VIEW public.sums AS
      SELECT 1 AS one,
             (SELECT coalesce(sum(v), 0) FROM public.plain) AS plain_sum,
             (SELECT count(*) FROM public.plain) AS plain_rows,
             (SELECT coalesce(sum(v), 0) FROM public.parted) AS parted_sum;
    CREATE UNIQUE INDEX ON public.sums (one);
"#;

const STATS_VIEW: &str = "[[view]]\nname = \"public.sums\"\ndetect = \"statistics\"\npoll_interval = \"200ms\"\ndebounce = \"0s\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn statistics_mode_sees_every_kind_of_write_without_triggers() {
    let db = TestDb::new();
    db.psql(NO_TRIGGERS);
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"),
        "0"
    );
    let d = Daemon::start(&format!("[database]\nurl = \"{}\"\n{STATS_VIEW}", db.dsn()));
    d.wait_ready(Duration::from_secs(20)).await;
    // The startup refresh. The detector's first reading counts as a change too, but
    // it may arrive while the startup refresh is still pending and be coalesced into it
    // (correctly), so no separate `detected` refresh is waited for: every step below
    // checks the view's contents, which hold whichever refresh applied the write.
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.refreshes("public.sums", "startup", "success") == 1.0
            && d.get("/status").1.contains("\"state\":\"idle\"")
    })
    .await;
    assert!(
        d.log_text().contains("watching table statistics"),
        "{}",
        d.log_text()
    );

    // Each write from its own psql session, which flushes its statistics as it exits.
    let steps: [(&str, &str, &str); 5] = [
        (
            "INSERT INTO public.plain VALUES (1, 10), (2, 20)",
            "plain_sum",
            "30",
        ),
        ("UPDATE public.plain SET v = v + 1", "plain_sum", "32"),
        ("DELETE FROM public.plain WHERE id = 1", "plain_sum", "21"),
        ("TRUNCATE public.plain", "plain_rows", "0"),
        (
            "INSERT INTO public.parted_high VALUES (1500, 7)",
            "parted_sum",
            "7",
        ),
    ];
    for (sql, col, want) in steps.iter() {
        let before = d.refreshes("public.sums", "detected", "success");
        db.psql(sql);
        let q = format!("SELECT {col} FROM public.sums");
        wait_for(
            Duration::from_secs(5),
            &format!("{sql:?} to be detected"),
            || async { db.psql(&q) == *want },
        )
        .await;
        wait_for(
            Duration::from_secs(2),
            "the detected refresh to be counted",
            || async { d.refreshes("public.sums", "detected", "success") > before },
        )
        .await;
    }
    // check reports the mode and the watched tables, partitions included.
    let (_dir, path) = write_config(&format!("[database]\nurl = \"{}\"\n{STATS_VIEW}", db.dsn()));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("detect statistics every 200ms on"), "{text}");
    assert!(
        text.contains("public.parted_high")
            && text.contains("public.parted_low")
            && text.contains("public.plain"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statistics_mode_bound_for_an_idle_session() {
    let db = TestDb::new();
    db.psql(NO_TRIGGERS);
    let d = Daemon::start(&format!("[database]\nurl = \"{}\"\n{STATS_VIEW}", db.dsn()));
    d.wait_ready(Duration::from_secs(20)).await;
    // The startup refresh. The detector's first reading counts as a change too, but
    // it may arrive while the startup refresh is still pending and be coalesced into it
    // (correctly), so no separate `detected` refresh is waited for: every step below
    // checks the view's contents, which hold whichever refresh applied the write.
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.refreshes("public.sums", "startup", "success") == 1.0
            && d.get("/status").1.contains("\"state\":\"idle\"")
    })
    .await;

    // The worst case PostgreSQL allows: a session writes twice within a second and then
    // sits idle, holding the second write's counters until its next flush.
    let client = db.client().await;
    client
        .batch_execute("INSERT INTO public.plain VALUES (1, 1)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO public.plain VALUES (2, 2)")
        .await
        .unwrap();
    let committed = Instant::now();
    let version: i32 = db.psql("SHOW server_version_num").parse().unwrap();
    if version < 150000 {
        // PostgreSQL 13/14: a backend reports to the statistics collector at most every
        // 500 ms, at a transaction's end, and has no idle flush: the second write's
        // counters stay in the idle session until it runs another transaction or exits
        // (README, "Supported PostgreSQL versions"). Its exit flushes them.
        drop(client);
        wait_for(
            Duration::from_secs(10),
            "the write to be detected once its session ended",
            || async { db.psql("SELECT plain_sum FROM public.sums") == "3" },
        )
        .await;
        return;
    }
    wait_for(
        Duration::from_secs(15),
        "the idle session's write to be detected",
        || async { db.psql("SELECT plain_sum FROM public.sums") == "3" },
    )
    .await;
    let lag = committed.elapsed();
    eprintln!("statistics mode, idle writer: visible after {lag:?}");
    // PGSTAT_IDLE_INTERVAL (10 s) + poll_interval + refresh.
    assert!(lag < Duration::from_millis(11_500), "{lag:?}");
    drop(client);
}
