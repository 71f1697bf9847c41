//! Views on views under continuous writes, in the inventory seed's own shape:
//! `core.mv_low_stock_alerts` reads `core.mv_product_stock_summary`, and one channel
//! (`refresh_inventory_views`) feeds both. The upper view must keep being refreshed.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use support::config::Config;
use support::{wait_for, Daemon, TestDb};

fn install(db: &TestDb) {
    for file in [
        "attendance/install.sql",
        "inventory/install.sql",
        "demo/install.sql",
    ] {
        let out = Command::new(refreshd::cli::cluster::client_program("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(db.dsn())
            .arg("-f")
            .arg(support::repo().join("sql").join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    db.psql("SELECT refreshd_demo.generate_inventory(0.05)");
}

fn unix(s: &str) -> f64 {
    humantime::parse_rfc3339(s)
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upper_inventory_view_keeps_its_max_delay_under_continuous_writes() {
    let db = TestDb::new();
    install(&db);
    let max_delay = 3.0;
    let mut config = Config::new(&db.dsn())
        .defaults("debounce", "1s")
        .defaults("max_delay", "3s");
    for view in [
        "core.mv_product_stock_summary",
        "core.mv_inventory_valuation",
        "core.mv_low_stock_alerts",
    ] {
        config = config.view(view).channels(&["refresh_inventory_views"]);
    }
    let d = Daemon::start(&config.text());
    d.wait_ready(Duration::from_secs(20)).await;
    // The seeds' hand-written triggers are capture too: `capture = "verify"` (the
    // default) finds no gap in them.
    for view in [
        "core.mv_product_stock_summary",
        "core.mv_inventory_valuation",
        "core.mv_low_stock_alerts",
    ] {
        let series = format!("refreshd_capture_gaps{{view=\"{view}\"}}");
        let d = &d;
        wait_for(Duration::from_secs(20), &series.clone(), || {
            let series = series.clone();
            async move { support::sample(&d.metrics(), &series) == Some(0.0) }
        })
        .await;
    }

    // ≥ 20 writes/s from two writers, each a separate transaction (one NOTIFY each).
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| spawn_inventory_writer(db.dsn(), stop.clone(), writes.clone()))
        .collect();

    let run_for = Duration::from_secs(16);
    let seen = watch_status(&d, run_for).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let rate = writes.load(Ordering::Relaxed) as f64 / run_for.as_secs_f64();
    assert!(rate >= 20.0, "the writers managed only {rate:.1} writes/s");
    let Watched {
        upper_starts,
        worst_lower,
        worst_pending,
    } = seen;
    // The upper view is dirty all the time, so the gap between two of its starts is
    // bounded by max_delay, plus waiting for the lower view's refresh in progress,
    // plus its own refresh, plus one sample interval and a scheduling margin on a
    // loaded machine.
    let upper_duration = 0.5;
    let bound = max_delay + worst_lower + upper_duration + 0.1 + 1.0;
    assert!(
        upper_starts.len() >= 3,
        "upper view refreshed {} times in 16 s of writes: {}",
        upper_starts.len(),
        d.log_text()
    );
    let worst_gap = upper_starts
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    eprintln!(
        "writes/s {rate:.1}, upper refreshes {}, worst gap {worst_gap:.2}s, worst pending {worst_pending:.2}s, lower refresh ≤ {worst_lower:.3}s, bound {bound:.2}s",
        upper_starts.len()
    );
    assert!(worst_gap <= bound, "gap {worst_gap:.2}s > {bound:.2}s");
    assert!(
        worst_pending <= bound,
        "pending {worst_pending:.2}s > {bound:.2}s"
    );
}

/// A writer on a thread of its own: `refreshd_demo.write_inventory(1)` every 40 ms, each
/// counted in `writes`, until `stop`.
fn spawn_inventory_writer(
    dsn: String,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
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
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute("SELECT refreshd_demo.write_inventory(1)")
                    .await
                    .unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    })
}

/// What [`watch_status`] saw.
struct Watched {
    /// Every refresh start of the upper view (Unix seconds).
    upper_starts: Vec<f64>,
    /// The lower view's longest refresh (seconds).
    worst_lower: f64,
    /// The upper view's longest pending time (seconds).
    worst_pending: f64,
}

/// Samples /status every 100 ms for `run_for`: every refresh start of the upper view,
/// its pending time, and the lower view's refresh durations.
async fn watch_status(d: &Daemon, run_for: Duration) -> Watched {
    let began = Instant::now();
    let mut upper_starts: Vec<f64> = Vec::new();
    let mut worst_lower = 0.0f64;
    let mut worst_pending = 0.0f64;
    while began.elapsed() < run_for {
        let (_, body) = d.get("/status");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        for v in s["views"].as_array().unwrap() {
            match v["view"].as_str().unwrap() {
                "core.mv_low_stock_alerts" => {
                    if let Some(t) = v["last_start"].as_str() {
                        let t = unix(t);
                        if upper_starts.last() != Some(&t) {
                            upper_starts.push(t);
                        }
                    }
                    worst_pending = worst_pending.max(v["pending_since_seconds"].as_f64().unwrap());
                }
                "core.mv_product_stock_summary" => {
                    worst_lower =
                        worst_lower.max(v["last_duration_seconds"].as_f64().unwrap_or(0.0));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Watched {
        upper_starts,
        worst_lower,
        worst_pending,
    }
}
