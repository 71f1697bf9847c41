//! Two replicas against one database (SPEC "Several replicas"): a POST to the standby is
//! relayed to the leader, a stopping leader keeps its lock until its refreshes end, a
//! standby's liveness never depends on `retry_interval`, and a leader cut off without a
//! FIN or RST is replaced within about a minute.

mod support;

use std::time::{Duration, Instant};

use refreshd::cli::cluster::{ClusterOptions, TempCluster};
use support::config::Config;
use support::{wait_for, Daemon, FreezingProxy, TestDb};

const TOTALS: &str = "public.order_totals";
const QUIET: &str = "public.quiet_sum";
const SLEEPY: &str = "public.sleepy";

/// `public.orders` with a NOTIFY trigger feeding `public.order_totals`;
/// `public.quiet` with no trigger at all, so only a force refreshes `public.quiet_sum`;
/// `public.sleepy`, whose refresh sleeps `public.knob.secs` seconds.
fn schema() -> String {
    format!("{}{REST}", support::ORDERS_SCHEMA)
}

const REST: &str = r#"
    CREATE TABLE public.quiet (id int PRIMARY KEY, v int NOT NULL);
    INSERT INTO public.quiet VALUES (1, 1);
    CREATE MATERIALIZED VIEW public.quiet_sum AS SELECT id, v FROM public.quiet;
    CREATE UNIQUE INDEX ON public.quiet_sum (id);

    CREATE TABLE public.knob (secs float8 NOT NULL);
    INSERT INTO public.knob VALUES (0);
    CREATE TABLE public.items (k int PRIMARY KEY);
    INSERT INTO public.items SELECT generate_series(1, 10);
    CREATE MATERIALIZED VIEW public.sleepy AS
      WITH pause AS MATERIALIZED (SELECT pg_sleep(secs) FROM public.knob)
      SELECT i.k FROM public.items i, pause;
    CREATE UNIQUE INDEX ON public.sleepy (k);
"#;

const EXACT: &str = support::ORDERS_EXACT;

/// The views every test here configures; nothing but a force (or a takeover's catch-up)
/// refreshes `quiet_sum` and `sleepy`.
fn views(c: Config) -> Config {
    c.view("public.order_totals")
        .channels(&["orders_changed"])
        .set("debounce", "100ms")
        .set("max_delay", "1s")
        .view("public.quiet_sum")
        .channels(&["quiet_never"])
        .set("debounce", "1h")
        .set("max_delay", "1h")
        .view("public.sleepy")
        .channels(&["sleepy_never"])
        .set("debounce", "1h")
        .set("max_delay", "1h")
        .set("lock_timeout", "1s")
}

fn role(d: &Daemon) -> String {
    let (_, body) = d.get("/status");
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["role"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Starts the first replica, waits until it leads, then the second and waits until it
/// stands by: which one leads is decided, not left to a race.
async fn leader_then_standby(first: &str, second: &str) -> (Daemon, Daemon) {
    let a = Daemon::start(first);
    a.wait_ready(Duration::from_secs(20)).await;
    wait_for(
        Duration::from_secs(10),
        "the first replica to lead",
        || async { a.leader() == 1.0 },
    )
    .await;
    let b = Daemon::start(second);
    b.wait_ready(Duration::from_secs(20)).await;
    wait_for(
        Duration::from_secs(10),
        "the second replica to stand by",
        || async { role(&b) == "standby" },
    )
    .await;
    assert_eq!(a.leader(), 1.0, "the first replica still leads");
    assert_eq!(b.leader(), 0.0);
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_posted_to_the_standby_is_carried_out_by_the_leader() {
    let db = TestDb::new();
    db.psql(&schema());
    let cfg = views(Config::new(&db.dsn()).ha("retry_interval", "1s")).text();
    let (leader, standby) = leader_then_standby(&cfg, &cfg).await;
    wait_for(
        Duration::from_secs(10),
        "the leader's startup refresh of quiet_sum",
        || async { leader.successes(QUIET) >= 1.0 },
    )
    .await;

    // No trigger on public.quiet: only a force can bring this row into the view.
    db.psql("INSERT INTO public.quiet VALUES (42, 7)");
    let (code, body) = standby.post("/refresh/public.quiet_sum", &[]);
    assert_eq!(code, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(
        answer["relayed"], true,
        "the standby says it relayed: {body}"
    );
    wait_for(
        Duration::from_secs(10),
        "the leader to carry out the relayed force",
        || async { leader.refreshes(QUIET, "force", "success") >= 1.0 },
    )
    .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM public.quiet_sum WHERE id = 42"),
        "1",
        "the forced refresh ran after the insert"
    );

    // `POST /refresh` (every view) is relayed too.
    db.psql("INSERT INTO public.quiet VALUES (43, 8)");
    let (code, body) = standby.post("/refresh", &[]);
    assert_eq!(code, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(answer["relayed"], true, "{body}");
    wait_for(
        Duration::from_secs(10),
        "the leader to force every view",
        || async {
            leader.refreshes(QUIET, "force", "success") >= 2.0
                && leader.refreshes(TOTALS, "force", "success") >= 1.0
        },
    )
    .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM public.quiet_sum WHERE id = 43"),
        "1"
    );
    for v in [TOTALS, QUIET, SLEEPY] {
        assert_eq!(standby.successes(v), 0.0, "the standby refreshed {v}");
        assert_eq!(standby.failures(v), 0.0, "the standby tried to refresh {v}");
    }
    assert_eq!(leader.leader(), 1.0);
    assert_eq!(standby.leader(), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_the_leader_during_a_long_refresh_causes_no_failure_on_the_next() {
    let db = TestDb::new();
    db.psql(&schema());
    let cfg = views(
        Config::new(&db.dsn())
            .top("shutdown_timeout", "30s")
            .ha("retry_interval", "1s"),
    )
    .text();
    let (mut old, new) = leader_then_standby(&cfg, &cfg).await;
    wait_for(
        Duration::from_secs(10),
        "the leader's startup refresh of sleepy",
        || async { old.successes(SLEEPY) >= 1.0 },
    )
    .await;

    let old_still_running = a_long_forced_refresh_of_sleepy(&db, &old).await;
    // That refresh has read its pause already; the next leader's catch-up is quick.
    db.psql("UPDATE public.knob SET secs = 0");
    let log_before_term = old.log_text().len();
    let t = Instant::now();
    old.signal("TERM");

    // The next leader must not start while the old leader's refresh still runs.
    let still_running_at_takeover = loop {
        if new.leader() == 1.0 {
            break db.psql(&old_still_running);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the standby did not take over within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let took_over = t.elapsed();
    let status = old
        .wait_exit(Duration::from_secs(30))
        .expect("the old leader exits");
    assert_eq!(status.code(), Some(0), "{}", old.log_text());
    let old_log = old.log_since(log_before_term);
    wait_for(
        Duration::from_secs(20),
        "the new leader's catch-up refresh of sleepy",
        || async { new.successes(SLEEPY) >= 1.0 },
    )
    .await;
    let failures = new.failures(SLEEPY);
    println!(
        "takeover {took_over:?} after SIGTERM; new leader: failures of sleepy {failures}, \
         old leader's refresh still running at takeover: {still_running_at_takeover}"
    );
    assert_eq!(
        failures,
        0.0,
        "the new leader's refresh of sleepy collided with the old leader's (SIGTERM after {took_over:?})\n--- new leader's log ---\n{}",
        new.log_text()
    );
    assert_eq!(
        still_running_at_takeover, "0",
        "the standby took over while the old leader's refresh was still running"
    );
    the_old_leader_finished_its_refresh(&old_log);
    assert!(
        took_over >= Duration::from_secs(2),
        "the old leader held its lock until its refresh ended: took over after {took_over:?}"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM public.sleepy WHERE k = 11"),
        "1"
    );
    for v in [TOTALS, QUIET] {
        assert_eq!(new.failures(v), 0.0, "{v}");
    }
}

/// Makes the next refresh of sleepy take 4 s (and bring k = 11 in), forces it on
/// `leader` and waits until it runs on the server. Returns a query counting (0 or 1)
/// whether that refresh's session is still active.
async fn a_long_forced_refresh_of_sleepy(db: &TestDb, leader: &Daemon) -> String {
    db.psql("UPDATE public.knob SET secs = 4; INSERT INTO public.items VALUES (11)");
    let (code, body) = leader.post("/refresh/public.sleepy", &[]);
    assert_eq!(code, 202, "{body}");
    let running = "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                   AND state = 'active' AND query LIKE '%REFRESH MATERIALIZED VIEW%sleepy%'";
    wait_for(
        Duration::from_secs(10),
        "the forced refresh to be running on the server",
        || async { db.psql(running) == "1" },
    )
    .await;
    let old_refresh = db.psql(&running.replace("count(*)", "pid"));
    format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {old_refresh} AND state = 'active'")
}

/// The old leader's log after SIGTERM: its forced refresh of sleepy completed, none
/// was cancelled.
fn the_old_leader_finished_its_refresh(old_log: &str) {
    assert!(
        old_log.lines().any(|l| l.contains("refreshed")
            && l.contains(SLEEPY)
            && l.contains("force")
            && l.contains("success")),
        "the old leader's forced refresh completed before it exited:\n{old_log}"
    );
    assert!(
        !old_log.contains("cancelled running refreshes"),
        "{old_log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_with_a_long_retry_interval_stays_alive() {
    let db = TestDb::new();
    db.psql(&schema());
    let base = views(Config::new(&db.dsn()));
    let (leader, standby) = leader_then_standby(
        &base.clone().ha("retry_interval", "1s").text(),
        &base.ha("retry_interval", "90s").text(),
    )
    .await;

    // A liveness probe every 500 ms for 75 s, longer than any internal stall limit
    // shorter than retry_interval.
    let start = Instant::now();
    let mut probes = 0u32;
    let mut failed: Vec<(Duration, u16)> = Vec::new();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(75) {
        let (code, _) = standby.get("/healthz");
        probes += 1;
        if code != 200 {
            failed.push((start.elapsed(), code));
        }
        next += Duration::from_millis(500);
        tokio::time::sleep_until(next.into()).await;
    }
    println!(
        "{probes} probes of the standby's /healthz, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {probes} /healthz probes failed, the first at {:?} (code {}):\n{failed:?}",
        failed.len(),
        failed[0].0,
        failed[0].1
    );
    assert!(probes >= 140, "{probes} probes");
    // The test watched a standby, not a replica that took over.
    assert_eq!(role(&standby), "standby");
    assert_eq!(standby.leader(), 0.0);
    assert_eq!(leader.leader(), 1.0);
    assert_eq!(standby.get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silently_partitioned_leader_is_replaced_within_75_seconds() {
    let cluster = TempCluster::start(&ClusterOptions::default()).unwrap();
    cluster.psql("postgres", &["-c", &schema()]).unwrap();
    let dsn = cluster.socket_dsn("postgres");
    let proxy = FreezingProxy::start(cluster.port()).await;
    let base = views(Config::new(&dsn))
        .ha("retry_interval", "1s")
        .database("connect_timeout", "2s");
    // The leader LISTENs (and holds the lock) through the proxy; it refreshes directly.
    let leader_cfg = base
        .clone()
        .database(
            "listen_url",
            format!("postgresql://postgres@127.0.0.1:{}/postgres", proxy.port),
        )
        .text();
    let standby_cfg = base.text();
    let (old, new) = leader_then_standby(&leader_cfg, &standby_cfg).await;
    let exact = || {
        cluster
            .psql("postgres", &["-Atc", EXACT])
            .map(|s| s.trim() == "0")
            .unwrap_or(false)
    };
    wait_for(
        Duration::from_secs(10),
        "the leader's startup refresh",
        || async { old.successes(TOTALS) >= 1.0 },
    )
    .await;

    proxy.freeze();
    let frozen_at = Instant::now();
    // A change made while the leader is cut off: only the next leader can apply it.
    insert_order(&cluster, 900);
    let (stepped_down, took_over) = wait_for_the_takeover(&cluster, &old, &new, frozen_at).await;
    wait_for(
        Duration::from_secs(15),
        "the new leader's refreshes to bring the view up to date",
        || async { new.successes(TOTALS) >= 1.0 && exact() },
    )
    .await;
    let fresh = frozen_at.elapsed();
    println!(
        "silent partition: the cut-off leader stepped down after {stepped_down:?}; \
         the standby led after {took_over:?}; the view was up to date after {fresh:?}"
    );
    assert!(
        took_over <= Duration::from_secs(75),
        "takeover took {took_over:?}"
    );
    assert_eq!(new.failures(TOTALS), 0.0);

    // The network heals: the cut-off replica comes back as a standby and never wins
    // the lock while the new leader lives.
    proxy.thaw();
    the_cut_off_replica_comes_back_as_a_standby(&cluster, &old, &new).await;
    insert_order(&cluster, 901);
    wait_for(
        Duration::from_secs(10),
        "the new leader to apply writes after the thaw",
        || async { exact() },
    )
    .await;
    assert_eq!(old.leader(), 0.0);
}

/// One order in `bucket`, through psql on `cluster`.
fn insert_order(cluster: &TempCluster, bucket: u32) {
    cluster
        .psql(
            "postgres",
            &[
                "-c",
                &format!("INSERT INTO public.orders (bucket, amount) VALUES ({bucket}, 1)"),
            ],
        )
        .unwrap();
}

/// Granted advisory locks of the leader's kind on `cluster` ("" when psql fails).
fn leader_locks(cluster: &TempCluster) -> String {
    cluster
        .psql(
            "postgres",
            &[
                "-Atc",
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted",
            ],
        )
        .unwrap_or_default()
}

/// Waits up to 90 s after `frozen_at` for `new` to lead, noting when `old` stepped
/// down: (stepped down after, took over after).
async fn wait_for_the_takeover(
    cluster: &TempCluster,
    old: &Daemon,
    new: &Daemon,
    frozen_at: Instant,
) -> (Option<Duration>, Duration) {
    let mut stepped_down = None;
    let mut took_over = None;
    while frozen_at.elapsed() < Duration::from_secs(90) {
        if stepped_down.is_none() && old.leader() == 0.0 {
            stepped_down = Some(frozen_at.elapsed());
        }
        if new.leader() == 1.0 {
            took_over = Some(frozen_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(took_over) = took_over else {
        panic!(
            "no takeover within 90 s of the freeze (the cut-off leader stepped down after {stepped_down:?}); \
             advisory locks held: {:?}",
            cluster.psql("postgres", &["-Atc", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"])
        );
    };
    (stepped_down, took_over)
}

/// After the thaw: `new` keeps the lead and the only lock, `old` never wins it back,
/// and within 45 s `old` is a standby again (watched 5 s more).
async fn the_cut_off_replica_comes_back_as_a_standby(
    cluster: &TempCluster,
    old: &Daemon,
    new: &Daemon,
) {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut calm_since: Option<Instant> = None;
    loop {
        let (old_leads, new_leads) = (old.leader(), new.leader());
        assert_eq!(
            new_leads, 1.0,
            "the new leader lost the lead after the thaw"
        );
        assert_ne!(old_leads, 1.0, "the cut-off leader won the lock back");
        assert_eq!(
            leader_locks(cluster).trim(),
            "1",
            "exactly one replica holds the lock"
        );
        if role(old) == "standby" {
            // Watch a few retry intervals once it competes again.
            let since = *calm_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(5) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off replica did not come back as a standby within 45 s of the thaw (role {:?})",
            role(old)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Read-your-writes through the standby: relayed to the leader, answered when the
/// leader's refresh event for the view arrives, and the write is visible then.
#[tokio::test(flavor = "multi_thread")]
async fn read_your_writes_through_the_standby_ignore_other_databases() {
    let db = TestDb::new();
    db.psql(&schema());
    // Another database of the same cluster, with a view of the same name whose
    // REFRESH (written as refreshd writes it) runs for 30 s: the standby must not count it as a refresh of its own
    // view already running (it did: it skipped the leader's event and answered 504).
    let other = TestDb::new();
    other.psql(
        "CREATE TABLE public.quiet (id int PRIMARY KEY); \
         CREATE MATERIALIZED VIEW public.quiet_sum AS SELECT id FROM public.quiet, pg_sleep(0) AS s; \
         INSERT INTO public.quiet VALUES (1); \
         CREATE OR REPLACE FUNCTION public.slow() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(30)';",
    );
    let cfg = views(Config::new(&db.dsn()).ha("retry_interval", "1s")).text();
    let (leader, standby) = leader_then_standby(&cfg, &cfg).await;
    wait_for(
        Duration::from_secs(10),
        "the leader's startup refreshes",
        || async { leader.successes(QUIET) >= 1.0 },
    )
    .await;
    let slow = other.client().await;
    slow.batch_execute(
        "DROP MATERIALIZED VIEW public.quiet_sum; \
         CREATE MATERIALIZED VIEW public.quiet_sum AS SELECT id FROM public.quiet WHERE public.slow() = 1 WITH NO DATA",
    )
    .await
    .unwrap();
    let running = tokio::spawn(async move {
        let _ = slow
            .batch_execute(r#"REFRESH MATERIALIZED VIEW "public"."quiet_sum""#)
            .await;
    });
    let watch = other.client().await;
    wait_for(
        Duration::from_secs(10),
        "the other database's REFRESH running",
        || async {
            watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                      AND query LIKE 'REFRESH MATERIALIZED VIEW \"public\".\"quiet_sum\"%'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
        },
    )
    .await;
    db.psql("INSERT INTO public.quiet VALUES (100, 1)");
    let (code, body) = standby.post("/refresh/public.quiet_sum?wait=10s", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        db.psql("SELECT count(*) FROM public.quiet_sum WHERE id = 100"),
        "1"
    );
    running.abort();
    let _ = watch
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
              WHERE query LIKE 'REFRESH MATERIALIZED VIEW \"public\".\"quiet_sum\"%' AND pid <> pg_backend_pid()",
            &[],
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_your_writes_through_the_standby() {
    let db = TestDb::new();
    db.psql(&schema());
    let cfg = views(Config::new(&db.dsn()).ha("retry_interval", "1s")).text();
    let (leader, standby) = leader_then_standby(&cfg, &cfg).await;
    wait_for(
        Duration::from_secs(10),
        "the leader's startup refreshes",
        || async { leader.successes(QUIET) >= 1.0 },
    )
    .await;
    for i in 0..5 {
        let id = 100 + i;
        // No trigger on public.quiet: only the relayed force can bring the row in.
        db.psql(&format!("INSERT INTO public.quiet VALUES ({id}, 1)"));
        let (code, body) = standby.post("/refresh/public.quiet_sum?wait=10s", &[]);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["relayed"], true, "{body}");
        assert_eq!(
            db.psql(&format!(
                "SELECT count(*) FROM public.quiet_sum WHERE id = {id}"
            )),
            "1",
            "write {i} visible right after the standby's answer"
        );
    }
    assert_eq!(
        standby.successes(QUIET),
        0.0,
        "the standby refreshed nothing itself"
    );
}

/// A standby's schedules (and statistics detections) marked its views pending, so its
/// `/status`, page and `refreshd_pending_since_seconds` showed them stale for ever
/// while the leader kept them fresh (found by a review, 2026-12-05). A standby marks
/// nothing: it catches every view up when it leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_shows_no_view_pending_for_its_schedules() {
    let db = TestDb::new();
    db.psql(&schema());
    let cfg = views(Config::new(&db.dsn()).ha("retry_interval", "1s"))
        .view("public.order_totals_copy")
        .set("schedule", "* * * * * *")
        .text();
    db.psql(
        "CREATE MATERIALIZED VIEW public.order_totals_copy AS SELECT * FROM public.order_totals; \
         CREATE UNIQUE INDEX ON public.order_totals_copy (bucket);",
    );
    let (leader, standby) = leader_then_standby(&cfg, &cfg).await;
    wait_for(
        Duration::from_secs(10),
        "scheduled refreshes on the leader",
        || async { leader.refreshes("public.order_totals_copy", "schedule", "success") >= 2.0 },
    )
    .await;
    let (_, body) = standby.get("/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    for v in status["views"].as_array().unwrap() {
        assert_eq!(
            v["pending_since_seconds"].as_f64().unwrap_or(0.0),
            0.0,
            "{body}"
        );
    }
    assert_eq!(standby.successes("public.order_totals_copy"), 0.0);
}
