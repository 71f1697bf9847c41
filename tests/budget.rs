//! `max_load`, the load budget, under steady writes against a real server: a view whose
//! refresh takes ~200 ms, written to every 50 ms for ~8 s with `debounce = "0s"`. With
//! `max_load = "25%"` the view spends at most a quarter of the time refreshing (plus one
//! refresh), its staleness stays bounded and `/status` shows it held by its budget;
//! without a budget the same load keeps it refreshing most of the time.

mod support;

use std::time::{Duration, Instant};

use support::{sample, Daemon, TestDb};

const VIEW: &str = "public.slow_totals";

/// `public.orders` (NOTIFY on `orders_changed`) and a view on it whose refresh sleeps
/// 200 ms once (a MATERIALIZED CTE is evaluated once per refresh).
fn schema(db: &TestDb) {
    db.psql(support::ORDERS_SCHEMA);
    db.psql(
        r#"
        CREATE MATERIALIZED VIEW public.slow_totals AS
          WITH pause AS MATERIALIZED (SELECT pg_sleep(0.2))
          SELECT o.bucket, count(*) AS n FROM public.orders o, pause GROUP BY o.bucket;
        CREATE UNIQUE INDEX ON public.slow_totals (bucket);
        "#,
    );
}

fn config(db: &TestDb, max_load: &str) -> String {
    format!(
        "[database]\nurl = \"{}\"\n\
         [[view]]\nname = \"{VIEW}\"\nchannels = [\"orders_changed\"]\n\
         debounce = \"0s\"\nmax_delay = \"1s\"\nmax_load = \"{max_load}\"\n",
        db.dsn()
    )
}

/// `refreshd_refresh_duration_seconds` (sum, count) of the view.
fn durations(metrics: &str) -> (f64, f64) {
    let get = |part: &str| {
        sample(
            metrics,
            &format!("refreshd_refresh_duration_seconds_{part}{{view=\"{VIEW}\"}}"),
        )
        .unwrap_or(0.0)
    };
    (get("sum"), get("count"))
}

/// What one run under steady writes measured.
#[derive(Debug)]
struct Measured {
    /// Sum of refresh durations over the elapsed time.
    share: f64,
    /// Mean refresh duration in the window.
    mean: f64,
    refreshes: f64,
    elapsed: f64,
    /// The largest `refreshd_pending_since_seconds` seen.
    max_pending: f64,
    /// `/status` showed the view in state "budget" with a `held_until`.
    seen_held: bool,
}

/// Starts the daemon with `max_load`, writes every 50 ms for 8 s, and measures.
async fn run(max_load: &str) -> Measured {
    let db = TestDb::new();
    schema(&db);
    let d = Daemon::start(&config(&db, max_load));
    d.wait_ready(Duration::from_secs(30)).await;
    // The startup refresh first, so the window holds only refreshes the writes caused.
    support::wait_for(Duration::from_secs(20), "the startup refresh", || async {
        durations(&d.metrics()).1 >= 1.0
    })
    .await;
    let client = db.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                client
                    .execute(
                        "INSERT INTO public.orders (bucket, amount) VALUES (1, 1)",
                        &[],
                    )
                    .await
                    .expect("insert");
                writes += 1;
            }
            writes
        })
    };
    let (sum0, count0) = durations(&d.metrics());
    let t0 = Instant::now();
    let mut max_pending: f64 = 0.0;
    let mut seen_held = false;
    while t0.elapsed() < Duration::from_secs(8) {
        let m = tokio::task::block_in_place(|| d.metrics());
        if let Some(p) = sample(
            &m,
            &format!("refreshd_pending_since_seconds{{view=\"{VIEW}\"}}"),
        ) {
            max_pending = max_pending.max(p);
        }
        let (_, body) = tokio::task::block_in_place(|| d.get("/status"));
        let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        let v = &status["views"][0];
        if v["state"] == "budget" {
            assert!(v["held_until"].is_string(), "held without held_until: {v}");
            seen_held = true;
        } else {
            assert!(v["held_until"].is_null(), "held_until outside budget: {v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sum1, count1) = durations(&tokio::task::block_in_place(|| d.metrics()));
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes >= 100, "the writer kept up: {writes} writes");
    let refreshes = count1 - count0;
    assert!(refreshes >= 3.0, "{max_load}: only {refreshes} refreshes");
    Measured {
        share: (sum1 - sum0) / elapsed,
        mean: (sum1 - sum0) / refreshes,
        refreshes,
        elapsed,
        max_pending,
        seen_held,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_bounds_the_share_of_time_refreshing_under_steady_writes() {
    let budget = run("25%").await;
    eprintln!("max_load 25%: {budget:?}");
    // At most 25% of the time, plus the one refresh that may straddle the window's
    // start (the daemon measures d from start to finish: never less than the metric).
    let allowed = 0.25 + budget.mean / budget.elapsed + 0.01;
    assert!(
        budget.share <= allowed,
        "with max_load 25% the view refreshed {:.1}% of the time (allowed {:.1}%): {budget:?}",
        budget.share * 100.0,
        allowed * 100.0
    );
    // Still refreshed steadily: a cycle is d + 3d, so about elapsed / 4d refreshes.
    let expected = budget.elapsed / (4.0 * budget.mean);
    assert!(
        budget.refreshes >= expected * 0.5,
        "too few refreshes under the budget: {budget:?} (about {expected:.0} expected)"
    );
    // Staleness bounded: a change waits at most for the refresh in progress, the
    // budget's pause (3d) and its own refresh, plus scheduling slack.
    let stale_bound = 5.0 * budget.mean + 1.0;
    assert!(
        budget.max_pending <= stale_bound,
        "pending for {:.2}s, above {stale_bound:.2}s: {budget:?}",
        budget.max_pending
    );
    assert!(
        budget.seen_held,
        "/status never showed the view held by its budget"
    );

    // The same load without a budget: the view refreshes back to back.
    let free = run("100%").await;
    eprintln!("max_load 100%: {free:?}");
    assert!(
        free.share >= 0.5,
        "without a budget the share was expected well above 25%: {free:?}"
    );
    assert!(!free.seen_held, "no budget, never held: {free:?}");
}
