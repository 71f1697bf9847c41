//! Faults inflicted for real: killed backends, a restarted server, held locks, a
//! refresh outliving shutdown_timeout, a killed leader, and passwords kept secret.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use refreshd::cli::cluster::{ClusterOptions, TempCluster};
use support::config::Config;
use support::{sample, wait_for, Daemon, TestDb};

const TOTALS: &str = "public.order_totals";

const SCHEMA: &str = support::ORDERS_SCHEMA;
const EXACT: &str = support::ORDERS_EXACT;

/// `url`'s database with `public.order_totals` on `orders_changed` (debounce 100 ms,
/// max_delay 1 s).
fn config(url: &str) -> Config {
    Config::new(url)
        .view(TOTALS)
        .channels(&["orders_changed"])
        .set("debounce", "100ms")
        .set("max_delay", "1s")
}

/// Inserts rows from a thread until stopped, surviving connection losses.
fn writer(dsn: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                }
                i += 1;
                let c = client.as_ref().unwrap();
                if c.execute(
                    "INSERT INTO public.orders (bucket, amount) VALUES ($1 % 13, $1)",
                    &[&i],
                )
                .await
                .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_backend_terminated_five_times_loses_nothing() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let d = Daemon::start(&config(&db.dsn()).text());
    d.wait_ready(Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = writer(db.dsn(), stop.clone(), done.clone());

    for round in 1..=5u32 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The listener is the session holding refreshd's advisory lock.
        let killed = db.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        );
        assert_eq!(killed, "1", "round {round}: one listener to kill");
        wait_for(
            Duration::from_secs(10),
            "the reconnect to be counted",
            || async {
                sample(&d.metrics(), "refreshd_listener_reconnects_total") == Some(f64::from(round))
            },
        )
        .await;
        d.wait_ready(Duration::from_secs(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(
        done.load(Ordering::Relaxed) > 100,
        "writes happened throughout"
    );
    wait_for(
        Duration::from_secs(10),
        "the view to reflect every write",
        || async { db.psql(EXACT) == "0" },
    )
    .await;
    let m = d.metrics();
    assert_eq!(sample(&m, "refreshd_listener_connected"), Some(1.0));
    let resyncs = sample(
        &m,
        &format!(
            "refreshd_refreshes_total{{outcome=\"success\",reason=\"resync\",view=\"{TOTALS}\"}}"
        ),
    )
    .unwrap_or(0.0);
    assert!(
        resyncs >= 1.0,
        "catch-up refreshes after reconnects: {resyncs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_restart_during_a_write_storm() {
    let cluster = TempCluster::start(&ClusterOptions::default()).unwrap();
    cluster.psql("postgres", &["-c", SCHEMA]).unwrap();
    let dsn = cluster.socket_dsn("postgres");
    let mut d = Daemon::start(&config(&dsn).database("connect_timeout", "1s").text());
    d.wait_ready(Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = writer(dsn.clone(), stop.clone(), done.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pg_ctl(&["restart", "-m", "fast"]).unwrap();
    let before = done.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(20), "writes to resume", || async {
        done.load(Ordering::Relaxed) > before + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the view to be exact after the restart",
        || async {
            cluster
                .psql("postgres", &["-Atc", EXACT])
                .map(|s| s.trim() == "0")
                .unwrap_or(false)
        },
    )
    .await;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon stayed up"
    );
    let m = d.metrics();
    assert_eq!(sample(&m, "refreshd_listener_connected"), Some(1.0));
    assert!(sample(&m, "refreshd_listener_reconnects_total").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_timeout_fails_then_retry_succeeds() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let d = Daemon::start(
        &config(&db.dsn())
            .set("lock_timeout", "300ms")
            .set("debounce", "0s")
            .text(),
    );
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "startup refresh", || async {
        d.successes(TOTALS) >= 1.0
    })
    .await;

    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("REFRESH MATERIALIZED VIEW public.order_totals")
        .await
        .unwrap();
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (99, 1)");
    wait_for(Duration::from_secs(5), "a lock_timeout failure", || async {
        d.refreshes(TOTALS, "notify", "failure") >= 1.0
    })
    .await;
    let (_, status) = d.get("/status");
    // SPEC: class, SQLSTATE and refreshd's hint; never the server's own text.
    assert!(
        status.contains("55P03")
            && status.contains("transient")
            && status.contains("lock_timeout expired"),
        "{status}"
    );
    tx.commit().await.unwrap();
    wait_for(Duration::from_secs(10), "the retry to succeed", || async {
        d.refreshes(TOTALS, "notify", "success") >= 1.0
    })
    .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM public.order_totals WHERE bucket = 99"),
        "1"
    );
    assert!(
        d.log_text().contains("retry_in_ms"),
        "the failure is logged with its retry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_timeout_cancels_a_long_refresh_on_the_server() {
    let db = TestDb::new();
    db.psql(
        "CREATE MATERIALIZED VIEW public.sleepy AS \
           WITH pause AS MATERIALIZED (SELECT pg_sleep(60)) SELECT 1 AS k FROM pause WITH NO DATA; \
         CREATE UNIQUE INDEX ON public.sleepy (k);",
    );
    let mut d = Daemon::start(
        &Config::new(&db.dsn())
            .top("shutdown_timeout", "2s")
            .view("public.sleepy")
            .set("schedule", "0 0 1 1 *")
            .text(),
    );
    d.wait_ready(Duration::from_secs(20)).await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%REFRESH MATERIALIZED VIEW%sleepy%' AND state = 'active' AND pid <> pg_backend_pid()";
    wait_for(
        Duration::from_secs(10),
        "the startup refresh to be running on the server",
        || async { db.psql(running) == "1" },
    )
    .await;
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(6)).expect("exits");
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(
        took >= Duration::from_secs(2),
        "waited for shutdown_timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "exited within shutdown_timeout + 1 s: {took:?}"
    );
    wait_for(
        Duration::from_secs(2),
        "no backend still refreshing",
        || async { db.psql(running) == "0" },
    )
    .await;
    assert!(d
        .log_text()
        .contains("cancelled running refreshes on the server"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_one_leader_and_takeover_after_kill_9() {
    let db = TestDb::new();
    db.psql(SCHEMA);
    let cfg = config(&db.dsn()).ha("retry_interval", "1s").text();
    let a = Daemon::start(&cfg);
    let b = Daemon::start(&cfg);
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;
    let leader = |d: &Daemon| sample(&d.metrics(), "refreshd_leader").unwrap_or(-1.0);
    wait_for(Duration::from_secs(10), "exactly one leader", || async {
        leader(&a) + leader(&b) == 1.0
    })
    .await;
    // Stay that way.
    for _ in 0..10 {
        assert_eq!(leader(&a) + leader(&b), 1.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut dead, alive) = if leader(&a) == 1.0 { (a, b) } else { (b, a) };
    let standby_status = alive.get("/status").1;
    assert!(
        standby_status.contains("\"role\":\"standby\""),
        "{standby_status}"
    );
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (500, 1)");
    wait_for(Duration::from_secs(5), "the leader to apply it", || async {
        db.psql(EXACT) == "0"
    })
    .await;
    assert_eq!(
        alive.successes(TOTALS),
        0.0,
        "the standby refreshes nothing"
    );

    dead.child.kill().unwrap(); // SIGKILL
    dead.child.wait().unwrap();
    let t = Instant::now();
    wait_for(
        Duration::from_secs(6),
        "the standby to take over",
        || async { leader(&alive) == 1.0 },
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "within retry_interval + a few seconds: {:?}",
        t.elapsed()
    );
    wait_for(
        Duration::from_secs(5),
        "the new leader's catch-up refresh",
        || async { alive.successes(TOTALS) >= 1.0 },
    )
    .await;
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (501, 1)");
    wait_for(
        Duration::from_secs(5),
        "the new leader to apply writes",
        || async { db.psql(EXACT) == "0" },
    )
    .await;
    drop(dead);
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_appear_nowhere() {
    const PW: &str = "Sup3r-s3cret-Pa55";
    let cluster = TempCluster::start(&ClusterOptions {
        password: Some(PW.into()),
        ..Default::default()
    })
    .unwrap();
    cluster.psql("postgres", &["-c", SCHEMA]).unwrap();
    let port = cluster.port();
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, format!("{PW}\n")).unwrap();

    let mut everything = String::new();
    // Password in the URL.
    let in_url = config(&format!(
        "postgresql://postgres:{PW}@127.0.0.1:{port}/postgres"
    ))
    .text();
    // Password from a file, URL without it.
    let in_file = config(&format!("postgresql://postgres@127.0.0.1:{port}/postgres"))
        .database("password_file", pwfile.display().to_string())
        .text();
    // A wrong password, in the URL: the error must not echo it.
    let wrong = config(&format!(
        "postgresql://postgres:{PW}-wrong@127.0.0.1:{port}/postgres"
    ))
    .text();
    for cfg in [&in_url, &in_file] {
        everything.push_str(&output_of_a_working_config(cfg).await);
    }
    let (_d, path) = support::write_config(&wrong);
    let out = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = format!("{}{}", support::stdout(&out), support::stderr(&out));
    assert!(said.contains("password authentication failed"), "{said}");
    everything.push_str(&said);
    let d = Daemon::start(&wrong);
    wait_for(
        Duration::from_secs(10),
        "the failed connection to be logged",
        || async { d.log_text().contains("password authentication failed") },
    )
    .await;
    everything.push_str(&d.log_text());
    everything.push_str(&d.get("/status").1);
    drop(d);

    assert!(everything.len() > 1000, "the test looked at real output");
    assert!(
        !everything.contains(PW),
        "the password leaked:\n{everything}"
    );
    assert!(
        !everything.contains("s3cret"),
        "part of the password leaked"
    );
}

/// Everything a daemon and the CLI say on `cfg` (whose password works): /status,
/// /metrics, /healthz, `check`, `refresh --all` (both exit 0) and the log to its exit.
async fn output_of_a_working_config(cfg: &str) -> String {
    let mut everything = String::new();
    let mut d = Daemon::start(cfg);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "a refresh", || async {
        d.successes(TOTALS) >= 1.0
    })
    .await;
    everything.push_str(&d.get("/status").1);
    everything.push_str(&d.metrics());
    everything.push_str(&d.get("/healthz").1);
    let (_d, path) = support::write_config(cfg);
    for args in [vec!["check", "-c"], vec!["refresh", "--all", "-c"]] {
        let mut a = args.clone();
        a.push(path.to_str().unwrap());
        let out = support::refreshd(&a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            support::stdout(&out),
            support::stderr(&out)
        );
        everything.push_str(&support::stdout(&out));
        everything.push_str(&support::stderr(&out));
    }
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(5)).unwrap();
    everything.push_str(&d.log_text());
    everything
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_open_listener_is_detected_and_replaced() {
    let cluster = TempCluster::start(&ClusterOptions::default()).unwrap();
    cluster.psql("postgres", &["-c", SCHEMA]).unwrap();
    let proxy = support::FreezingProxy::start(cluster.port()).await;
    let d = Daemon::start(
        &config(&format!(
            "postgresql://postgres@127.0.0.1:{}/postgres",
            proxy.port
        ))
        .database("connect_timeout", "2s")
        .text(),
    );
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "startup refresh", || async {
        d.successes(TOTALS) >= 1.0
    })
    .await;

    proxy.freeze();
    let frozen_at = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "the dead listener to be noticed",
        || async { sample(&d.metrics(), "refreshd_listener_connected") == Some(0.0) },
    )
    .await;
    // The probe runs every 5 s with a 5 s deadline.
    let noticed = frozen_at.elapsed();
    assert!(noticed <= Duration::from_secs(11), "{noticed:?}");
    assert_eq!(
        d.get("/readyz").0,
        503,
        "not ready without a working listener"
    );
    assert_eq!(d.get("/healthz").0, 200);

    // A write while refreshd is deaf; after the network heals it catches up.
    cluster
        .psql(
            "postgres",
            &[
                "-c",
                "INSERT INTO public.orders (bucket, amount) VALUES (777, 1)",
            ],
        )
        .unwrap();
    proxy.thaw();
    d.wait_ready(Duration::from_secs(40)).await;
    wait_for(Duration::from_secs(20), "the catch-up refresh", || async {
        cluster
            .psql("postgres", &["-Atc", EXACT])
            .map(|s| s.trim() == "0")
            .unwrap_or(false)
    })
    .await;
    assert!(sample(&d.metrics(), "refreshd_listener_reconnects_total").unwrap() >= 1.0);
}
