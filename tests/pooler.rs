//! refreshd behind a transaction-mode pooler: a real PgBouncer (pool shared with
//! other clients) on the refresh connections, PostgreSQL directly on the LISTEN one.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{wait_for, Daemon, PgBouncer, TestDb};

fn schema(db: &TestDb) {
    db.psql(support::ORDERS_SCHEMA);
}

/// Other applications' short transactions through the same pool, until `stop`.
fn other_clients(dsn: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                c.simple_query("SELECT count(*) FROM public.orders")
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    })
}

/// Every refresh through the pooler succeeds, each insert becomes visible, and no
/// refreshd setting is left on the pool's server connections for other clients.
#[tokio::test(flavor = "multi_thread")]
async fn refreshes_through_a_transaction_pooler_succeed_and_leave_no_settings() {
    let db = TestDb::new();
    schema(&db);
    let bouncer = PgBouncer::start(&db, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..2)
        .map(|_| other_clients(bouncer.dsn(&db), stop.clone()))
        .collect();
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nlisten_url = \"{}\"\n\
         [[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n\
         debounce = \"50ms\"\nlock_timeout = \"1s\"\nstatement_timeout = \"20s\"\n",
        bouncer.dsn(&db),
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    for i in 0..15 {
        let bucket = 1000 + i;
        db.psql(&format!(
            "INSERT INTO public.orders (bucket, amount) VALUES ({bucket}, 1)"
        ));
        wait_for(
            Duration::from_secs(5),
            "the insert to be visible",
            || async {
                db.psql(&format!(
                    "SELECT count(*) FROM public.order_totals WHERE bucket = {bucket}"
                )) == "1"
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let ran: u64 = others.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(ran > 0, "the other clients shared the pool");
    assert_eq!(
        d.refreshes("public.order_totals", "notify", "failure"),
        0.0,
        "{}",
        d.log_text()
    );
    assert!(
        !d.log_text().contains("26000"),
        "no prepared-statement errors"
    );
    // Every server connection of the pool, as another client sees it: the defaults.
    let (c, conn) = tokio_postgres::connect(&bouncer.dsn(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..12 {
        for (setting, default) in [("lock_timeout", "0"), ("statement_timeout", "0")] {
            let value = support::show(&c, setting).await;
            assert_eq!(value, default, "{setting} leaked into the pool");
        }
    }
}

/// `lock_timeout` applies to a refresh through the pooler: with the view's lock held
/// elsewhere it fails with 55P03 and is retried once the lock is gone.
#[tokio::test(flavor = "multi_thread")]
async fn lock_timeout_applies_through_the_pooler() {
    let db = TestDb::new();
    schema(&db);
    let bouncer = PgBouncer::start(&db, 3);
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nlisten_url = \"{}\"\n\
         [[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n\
         debounce = \"0s\"\nlock_timeout = \"300ms\"\n",
        bouncer.dsn(&db),
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.successes("public.order_totals") >= 1.0
    })
    .await;
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("REFRESH MATERIALIZED VIEW public.order_totals")
        .await
        .unwrap();
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (77, 1)");
    let d = &d;
    wait_for(
        Duration::from_secs(5),
        "a lock_timeout failure",
        || async move { d.refreshes("public.order_totals", "notify", "failure") >= 1.0 },
    )
    .await;
    let (_, status) = d.get("/status");
    assert!(status.contains("55P03"), "{status}");
    tx.commit().await.unwrap();
    wait_for(
        Duration::from_secs(10),
        "the retry to succeed",
        || async move { d.refreshes("public.order_totals", "notify", "success") >= 1.0 },
    )
    .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM public.order_totals WHERE bucket = 77"),
        "1"
    );
}

/// Everything through the pooler, LISTEN included: refused loudly (log names the pooler
/// and listen_url), `/readyz` 503, `refreshd_listener_connected 0`, no advisory lock
/// left anywhere; a replica with a direct listen_url then leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_listen_session_through_the_pooler_is_refused_and_leaves_no_lock() {
    let db = TestDb::new();
    schema(&db);
    let bouncer = PgBouncer::start(&db, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let others = other_clients(bouncer.dsn(&db), stop.clone());
    let view = "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"50ms\"\n";
    let pooled = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nconnect_timeout = \"2s\"\n[ha]\nretry_interval = \"1s\"\n{view}",
        bouncer.dsn(&db)
    ));
    let pooled = &pooled;
    // Refused within the proof's deadline (connect_timeout), not after minutes.
    wait_for(
        Duration::from_secs(10),
        "the refusal in the log",
        || async move { pooled.log_text().contains("refusing the LISTEN connection") },
    )
    .await;
    let log = pooled.log_text();
    assert!(
        log.contains("pooler") && log.contains("listen_url"),
        "{log}"
    );
    for _ in 0..5 {
        assert_eq!(pooled.get("/readyz").0, 503);
        assert_eq!(
            support::sample(&pooled.metrics(), "refreshd_listener_connected"),
            Some(0.0)
        );
        assert_eq!(
            db.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            "0",
            "no advisory lock left on any server connection"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(pooled.get("/healthz").0, 200, "alive, just not ready");

    let direct = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nlisten_url = \"{}\"\n[ha]\nretry_interval = \"1s\"\n{view}",
        bouncer.dsn(&db),
        db.dsn()
    ));
    direct.wait_ready(Duration::from_secs(20)).await;
    let direct = &direct;
    wait_for(
        Duration::from_secs(10),
        "the direct replica to lead",
        || async move { support::sample(&direct.metrics(), "refreshd_leader") == Some(1.0) },
    )
    .await;
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (4242, 1)");
    wait_for(
        Duration::from_secs(10),
        "the insert through the leader",
        || async { db.psql("SELECT count(*) FROM public.order_totals WHERE bucket = 4242") == "1" },
    )
    .await;
    assert!(
        support::sample(&direct.metrics(), "refreshd_listener_roundtrip_seconds").unwrap() > 0.0
    );
    stop.store(true, Ordering::Relaxed);
    others.join().unwrap();
}

/// `refreshd check` runs the same proof: through the pooler it fails and names the fix.
#[test]
fn check_refuses_a_listen_session_through_the_pooler() {
    let db = TestDb::new();
    schema(&db);
    let bouncer = PgBouncer::start(&db, 3);
    let view = "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n";
    let (_d, path) = support::write_config(&format!(
        "[database]\nurl = \"{}\"\nconnect_timeout = \"2s\"\n{view}",
        bouncer.dsn(&db)
    ));
    let out = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = support::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  listen session") && text.contains("listen_url"),
        "{text}"
    );
    let (_d2, path) = support::write_config(&format!(
        "[database]\nurl = \"{}\"\nlisten_url = \"{}\"\n{view}",
        bouncer.dsn(&db),
        db.dsn()
    ));
    let out = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = support::stdout(&out);
    assert!(text.contains("OK    listen session"), "{text}");
}

async fn pooled_client(b: &PgBouncer, db: &TestDb) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&b.dsn(db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// The refresh statement itself, through the pooler: `SET LOCAL statement_timeout`
/// inside the one multi-statement query bounds the REFRESH even when the database has
/// another default, `lock_timeout` applies, and the connection comes back clean.
#[tokio::test(flavor = "multi_thread")]
async fn set_local_timeouts_bound_the_refresh_in_one_round_trip() {
    let db = TestDb::new();
    schema(&db);
    let bouncer = PgBouncer::start(&db, 3);
    db.psql(&format!(
        r#"
        ALTER DATABASE {} SET statement_timeout = '1min';
        CREATE FUNCTION public.slow_one() RETURNS int LANGUAGE plpgsql AS
          $$BEGIN PERFORM pg_sleep(3); RETURN 1; END$$;
        CREATE MATERIALIZED VIEW public.slow AS SELECT public.slow_one() AS k;
        CREATE UNIQUE INDEX ON public.slow (k);
        "#,
        db.name
    ));
    let (_dir, path) = support::write_config(&format!(
        "[database]\nurl = \"{}\"\n\
         [[view]]\nname = \"public.slow\"\nchannels = [\"x\"]\nstatement_timeout = \"300ms\"\n\
         [[view]]\nname = \"public.order_totals\"\nchannels = [\"x\"]\nlock_timeout = \"400ms\"\n",
        bouncer.dsn(&db)
    ));
    let config = refreshd::config::Config::load(&path).unwrap();
    let client = pooled_client(&bouncer, &db).await;
    use refreshd::pg::refresh::refresh_view;

    let started = std::time::Instant::now();
    let e = refresh_view(&client, &config.views[0], true)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("57014"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!e.connection_broken, "{e}");
    // Rolled back: the connection works, and the SET LOCAL went with the transaction.
    assert_eq!(support::show(&client, "statement_timeout").await, "1min");
    assert_eq!(support::show(&client, "lock_timeout").await, "0");

    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("REFRESH MATERIALIZED VIEW public.order_totals")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = refresh_view(&client, &config.views[1], true)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("55P03"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    tx.rollback().await.unwrap();
    assert_eq!(support::show(&client, "lock_timeout").await, "0");
    let r = refresh_view(&client, &config.views[1], true).await.unwrap();
    assert_eq!(r.kind.as_str(), "concurrently");
}
