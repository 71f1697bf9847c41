//! `refreshd demo`: a throwaway PostgreSQL from the local server binaries, the seeds'
//! schemas and synthetic data, a gentle stream of writes, and the daemon keeping four
//! views fresh with `/metrics` live, until Ctrl-C (or SIGTERM, or SIGHUP: the terminal
//! closed). It leaves nothing behind: the cluster is stopped and its directory removed
//! on exit (and by its watchdog if the process is killed).
//!
//! The terminal gets a summary line every 15 s; the daemon's per-refresh lines only
//! with `RUST_LOG=info` (or debug).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::cluster::{ClusterOptions, TempCluster};
use crate::config::Config;

/// The log filter without `RUST_LOG`: the engine's per-refresh lines (info) stay out
/// of the terminal, its warnings and errors do not.
pub const LOG_FILTER: &str = "info,tokio_postgres=warn,refreshd::engine=warn";

/// A line on stderr. Never panics: after SIGHUP the terminal may be gone, and the demo
/// must still clean up.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "refreshd demo: {}", format_args!($($arg)*));
    }};
}

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

/// How often the summary line is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(15);

/// Every 15 s, one line: writes and refreshes since the last line, and the twins
/// compared (count, median lag from first change to commit, median refresh time),
/// from `/status`.
async fn summarize(base: String, writes: Arc<AtomicU64>, stop: CancellationToken) {
    let mut seen = [0.0f64; 2];
    let mut counted = Counted::default();
    let mut writes_seen = 0;
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
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
        let views = status["views"].as_array().cloned().unwrap_or_default();
        let since = counted.since_last(&views);
        let w = writes.load(Ordering::Relaxed);
        let new_writes = w - writes_seen;
        writes_seen = w;
        let parts: Vec<String> = TWINS
            .iter()
            .zip(&mut seen)
            .map(|(&(label, name), seen)| twin_summary(label, name, &views, seen, &since))
            .collect();
        say!(
            "last {} s: {}, {}{} across {} views | attendance statistics: {}",
            SUMMARY_EVERY.as_secs(),
            plural(new_writes, "write", "writes"),
            plural(since.refreshes, "refresh", "refreshes"),
            if since.failures > 0 {
                format!(", {} failed", since.failures)
            } else {
                String::new()
            },
            views.len(),
            parts.join(" | ")
        );
    }
}

/// Each view's refresh and failure counters as last seen in `/status`.
#[derive(Default)]
struct Counted(std::collections::HashMap<String, (u64, u64)>);

/// Refreshes and failures since the last summary.
struct Since {
    refreshes: u64,
    failures: u64,
    /// Per view.
    refreshes_of: std::collections::HashMap<String, u64>,
}

impl Counted {
    /// What the counters of `/status`'s views say happened since the last call.
    fn since_last(&mut self, views: &[serde_json::Value]) -> Since {
        let mut since = Since {
            refreshes: 0,
            failures: 0,
            refreshes_of: Default::default(),
        };
        for v in views {
            let now = (
                v["refreshes"].as_u64().unwrap_or(0),
                v["failures"].as_u64().unwrap_or(0),
            );
            let name = v["view"].as_str().unwrap_or_default();
            let before = self.0.insert(name.to_string(), now).unwrap_or((0, 0));
            since.refreshes += now.0.saturating_sub(before.0);
            since
                .refreshes_of
                .insert(name.to_string(), now.0.saturating_sub(before.0));
            since.failures += now.1.saturating_sub(before.1);
        }
        since
    }
}

/// One twin's part of the summary: its refreshes since the last line (from the
/// counters: `recent` keeps only the last 20), and the median lag and refresh time of
/// its recent refreshes that ended after `seen` (moved to the last of them).
fn twin_summary(
    label: &str,
    name: &str,
    views: &[serde_json::Value],
    seen: &mut f64,
    since: &Since,
) -> String {
    let recent: Vec<(f64, f64, f64)> = views
        .iter()
        .filter(|v| v["view"] == *name)
        .flat_map(|v| v["recent"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| {
            Some((
                t["end"].as_f64()?,
                t["lag_seconds"].as_f64()?,
                t["duration_seconds"].as_f64()?,
            ))
        })
        .filter(|t| t.0 > *seen)
        .collect();
    if let Some(last) = recent.iter().map(|t| t.0).reduce(f64::max) {
        *seen = last;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN) * 1000.0
    };
    format!(
        "{label} {} (median lag {:.0} ms, refresh {:.0} ms)",
        plural(
            since.refreshes_of.get(name).copied().unwrap_or(0),
            "refresh",
            "refreshes"
        ),
        median(recent.iter().map(|t| t.1).collect()),
        median(recent.iter().map(|t| t.2).collect())
    )
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Ends the demo on SIGHUP as on SIGINT: closing the terminal must not leave the
/// cluster and the writers running.
fn stop_on_hangup(shutdown: &CancellationToken, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Some(()) = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "stopping");
                shutdown.cancel();
            }
        }
    });
    Ok(())
}

/// Runs the demo until `shutdown`.
///
/// Every task it starts is in `tasks` (the SIGHUP watch, the writers' connection), ended
/// and awaited before the cluster goes, whether the demo ends normally or on an error.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let result = demo(opts, shutdown, &mut tasks).await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    result
}

async fn demo(
    opts: DemoOptions,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    stop_on_hangup(&shutdown, tasks)?;
    // The HTTP port first: a busy one must fail before minutes of cluster and data.
    // (Bound by the daemon again below, with the same options.)
    drop(crate::serve::http::bind(opts.listen).with_context(|| {
        format!(
            "--listen {}: cannot listen there (another process uses the port? pick another with --listen 127.0.0.1:PORT); nothing was started",
            opts.listen
        )
    })?);
    say!(
        "status page http://{}/ (live once the daemon runs, in a few seconds)",
        opts.listen
    );
    let cluster = start_cluster().await?;
    let client = fill(&cluster, opts.scale, tasks).await?;
    let config = demo_config(&cluster, opts.listen)?;
    say_where_to_look(&cluster, opts.listen);

    let writer_stop = CancellationToken::new();
    let writes = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write(
        client,
        opts.write_every,
        writes.clone(),
        writer_stop.clone(),
    ));
    let compare = tokio::spawn(summarize(
        format!("http://{}", opts.listen),
        writes,
        writer_stop.clone(),
    ));
    let result = crate::engine::core::run(config, None, shutdown)
        .await
        .map_err(anyhow::Error::from);
    writer_stop.cancel();
    let _ = writer.await;
    let _ = compare.await;
    say!("stopping and removing the throwaway cluster...");
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    say!("done, nothing left behind.");
    result
}

/// A throwaway cluster from the local server binaries.
async fn start_cluster() -> anyhow::Result<TempCluster> {
    say!("starting a throwaway PostgreSQL cluster...");
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await?
        .context("starting a throwaway PostgreSQL (needs the server binaries, e.g. apt-get install postgresql-15)")?;
    say!(
        "cluster in {} on port {}",
        cluster.socket_dir().display(),
        cluster.port()
    );
    Ok(cluster)
}

/// Installs `sql/` and generates the data at `scale`; the connection, for the writes.
async fn fill(
    cluster: &TempCluster,
    scale: f64,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(&cluster.socket_dsn("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the demo cluster")?;
    tasks.spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute("SET client_min_messages = warning")
        .await?;
    for (name, sql) in SQL {
        client
            .batch_execute(&format!("BEGIN;\n{sql}\nCOMMIT;"))
            .await
            .with_context(|| format!("installing sql/{name}"))?;
    }
    say!("sql/ installed; generating data at scale {}...", scale);
    let started = std::time::Instant::now();
    let row = client
        .query_one(
            "SELECT refreshd_demo.generate_attendance($1::float8::numeric), refreshd_demo.generate_inventory($1::float8::numeric)",
            &[&scale],
        )
        .await
        .context("generating demo data")?;
    say!(
        "{} | {} ({:.1} s)",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        started.elapsed().as_secs_f64()
    );
    Ok(client)
}

/// What the daemon serves, and a psql line to watch the data.
fn say_where_to_look(cluster: &TempCluster, listen: SocketAddr) {
    say!(
        "the daemon serves http://{0}/ (status page), http://{0}/metrics and http://{0}/status; a stream of writes begins; a summary every {1} s (per-refresh lines: RUST_LOG=info); Ctrl-C stops and removes everything.",
        listen,
        SUMMARY_EVERY.as_secs()
    );
    let psql = cluster.bin_dir().join("psql");
    let psql = if psql.exists() {
        psql.display().to_string()
    } else {
        "psql".to_string()
    };
    say!(
        "watch the data: {psql} '{}' -c 'SELECT * FROM core.mv_low_stock_alerts LIMIT 10'  (\\dm lists the views)",
        cluster.url("postgres", "postgres")
    );
}

/// The stream of writes until `stop`: one small transaction every `every`, attendance
/// and inventory in turn, each counted in `writes` when it commits.
async fn write(
    client: tokio_postgres::Client,
    every: Duration,
    writes: Arc<AtomicU64>,
    stop: CancellationToken,
) {
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
        match client.batch_execute(sql).await {
            Ok(()) => {
                writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %crate::pg::connect::error_chain(&e), "demo write failed")
            }
        }
    }
}
