//! `refreshd demo`: a throwaway PostgreSQL from the local server binaries, the seeds'
//! schemas and synthetic data, a gentle stream of writes, and the daemon keeping four
//! views fresh with `/metrics` live, until Ctrl-C. It leaves nothing behind: the
//! cluster is stopped and its directory removed on exit (and by its watchdog if the
//! process is killed).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::cluster::{ClusterOptions, TempCluster};
use crate::config::Config;

/// The SQL the demo installs, in order: the numbered files of `sql/` (plain SQL; the
/// `install.sql` entry points are for psql).
const SQL: &[(&str, &str)] = &[
    (
        "attendance/001_base_tables.sql",
        include_str!("../../sql/attendance/001_base_tables.sql"),
    ),
    (
        "attendance/002_statistics_mv.sql",
        include_str!("../../sql/attendance/002_statistics_mv.sql"),
    ),
    (
        "attendance/003_functions.sql",
        include_str!("../../sql/attendance/003_functions.sql"),
    ),
    (
        "attendance/004_triggers.sql",
        include_str!("../../sql/attendance/004_triggers.sql"),
    ),
    (
        "attendance/005_keyed_statistics.sql",
        include_str!("../../sql/attendance/005_keyed_statistics.sql"),
    ),
    (
        "inventory/001_core_schema.sql",
        include_str!("../../sql/inventory/001_core_schema.sql"),
    ),
    (
        "inventory/002_materialized_views.sql",
        include_str!("../../sql/inventory/002_materialized_views.sql"),
    ),
    (
        "inventory/003_triggers.sql",
        include_str!("../../sql/inventory/003_triggers.sql"),
    ),
    (
        "demo/001_demo_functions.sql",
        include_str!("../../sql/demo/001_demo_functions.sql"),
    ),
];

/// Options of `refreshd demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    /// Data scale: 1 puts about a million attendance rows behind the attendance view.
    pub scale: f64,
    /// Pause between two small write transactions.
    pub write_every: Duration,
}

fn demo_config(cluster: &TempCluster, listen: SocketAddr) -> anyhow::Result<Config> {
    let text = format!(
        r#"shutdown_timeout = "10s"
[database]
url = "{url}"
max_concurrent_refreshes = 2
[http]
listen = "{listen}"
[defaults]
debounce = "1s"
max_delay = "5s"
[[view]]
name = "public.attendance_statistics_summary"
channels = ["refresh_attendance_stats"]
schedule = "0 */15 * * * *"
# The twins refresh at once on every write, so their lag is the cost of one refresh.
debounce = "0s"
[[view]]
name = "public.attendance_statistics_live"
kind = "keyed"
query = "public.attendance_statistics_def"
key = ["category_id", "season_id"]
channels = ["attendance_keys"]
debounce = "0s"
[[view]]
name = "core.mv_product_stock_summary"
channels = ["refresh_inventory_views"]
[[view]]
name = "core.mv_inventory_valuation"
channels = ["refresh_inventory_views"]
[[view]]
name = "core.mv_low_stock_alerts"
channels = ["refresh_inventory_views"]
"#,
        url = cluster.socket_dsn("postgres"),
    );
    Ok(Config::parse(Path::new("<refreshd demo>"), &text)?)
}

/// The attendance statistics twice: as the seed's materialized view (every refresh
/// recomputes all groups) and as its keyed twin (a write recomputes its groups).
const TWINS: [(&str, &str); 2] = [
    ("materialized view", "public.attendance_statistics_summary"),
    ("keyed twin", "public.attendance_statistics_live"),
];

/// Every 15 s, one line comparing the twins' refreshes since the last line: count,
/// median lag (first change → commit) and median refresh time, from `/status`.
async fn compare_twins(base: String, stop: CancellationToken) {
    let mut seen = [0.0f64; 2];
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(body) = crate::cli::status::fetch_status(&base).await else {
            continue;
        };
        let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let mut parts = Vec::new();
        for (i, (label, name)) in TWINS.iter().enumerate() {
            let recent: Vec<(f64, f64, f64)> = status["views"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["view"] == *name)
                .flat_map(|v| v["recent"].as_array().cloned().unwrap_or_default())
                .filter_map(|t| {
                    Some((
                        t["end"].as_f64()?,
                        t["lag_seconds"].as_f64()?,
                        t["duration_seconds"].as_f64()?,
                    ))
                })
                .filter(|t| t.0 > seen[i])
                .collect();
            if let Some(last) = recent.iter().map(|t| t.0).reduce(f64::max) {
                seen[i] = last;
            }
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN) * 1000.0
            };
            parts.push(format!(
                "{label}: {} refreshes, median lag {:.0} ms, refresh {:.0} ms",
                recent.len(),
                median(recent.iter().map(|t| t.1).collect()),
                median(recent.iter().map(|t| t.2).collect())
            ));
        }
        eprintln!(
            "refreshd demo: attendance statistics, last 15 s: {}",
            parts.join(" | ")
        );
    }
}

/// Runs the demo until `shutdown`.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    eprintln!(
        "refreshd demo: status page http://{}/ (live once the daemon runs, in a few seconds)",
        opts.listen
    );
    eprintln!("refreshd demo: starting a throwaway PostgreSQL cluster...");
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await?
        .context("starting a throwaway PostgreSQL (needs the server binaries, e.g. apt-get install postgresql-15)")?;
    eprintln!(
        "refreshd demo: cluster in {} on port {}",
        cluster.socket_dir().display(),
        cluster.port()
    );
    let (client, conn) =
        tokio_postgres::connect(&cluster.socket_dsn("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the demo cluster")?;
    tokio::spawn(conn);
    client
        .batch_execute("SET client_min_messages = warning")
        .await?;
    for (name, sql) in SQL {
        client
            .batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;"))
            .await
            .with_context(|| format!("installing sql/{name}"))?;
    }
    eprintln!(
        "refreshd demo: sql/ installed; generating data at scale {}...",
        opts.scale
    );
    let started = std::time::Instant::now();
    let row = client
        .query_one(
            "SELECT refreshd_demo.generate_attendance($1::float8::numeric), refreshd_demo.generate_inventory($1::float8::numeric)",
            &[&opts.scale],
        )
        .await
        .context("generating demo data")?;
    eprintln!(
        "refreshd demo: {} | {} ({:.1} s)",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        started.elapsed().as_secs_f64()
    );
    let config = demo_config(&cluster, opts.listen)?;
    eprintln!(
        "refreshd demo: the daemon serves http://{0}/ (status page), http://{0}/metrics and http://{0}/status; a stream of writes begins; Ctrl-C stops and removes everything.",
        opts.listen
    );

    let writer_stop = CancellationToken::new();
    let writer = {
        let stop = writer_stop.clone();
        let every = opts.write_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                n += 1;
                let sql = if n.is_multiple_of(2) {
                    "SELECT refreshd_demo.write_attendance(5)"
                } else {
                    "SELECT refreshd_demo.write_inventory(5)"
                };
                if let Err(e) = client.batch_execute(sql).await {
                    tracing::warn!(error = %crate::pg::connect::error_chain(&e), "demo write failed");
                }
            }
        })
    };
    let compare = tokio::spawn(compare_twins(
        format!("http://{}", opts.listen),
        writer_stop.clone(),
    ));
    let result = crate::engine::core::run(config, "<refreshd demo>".into(), shutdown).await;
    writer_stop.cancel();
    let _ = writer.await;
    let _ = compare.await;
    eprintln!("refreshd demo: stopping and removing the throwaway cluster...");
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    eprintln!("refreshd demo: done, nothing left behind.");
    result
}
