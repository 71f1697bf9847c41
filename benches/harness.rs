//! refreshd benchmark harness (issue 5): `cargo bench --bench harness [-- --quick]`.
//!
//! Starts its own throwaway PostgreSQL cluster, loads the synthetic attendance data,
//! and measures refreshd (the real release binary, as a child process) side by side
//! with what people use today: a naive refresh-per-notification listener, a trigger
//! that refreshes inside the writing transaction, and pg_cron. Progress goes to
//! stderr; the Markdown tables go to stdout (BENCHMARKS.md is made from them).
//!
//! Options (after `--`): `--quick` (or `REFRESHD_BENCH_QUICK=1`) for a ~3 minute smoke
//! run with fewer samples, shorter phases and scale 0.1; `--scale N` overrides the data
//! scale. `--keyed` runs only the keyed-refresh measurements of issue 11 instead (see
//! benches/keyed/mod.rs), on one cluster per scale: scales 1 and 10 (with `--quick`:
//! 0.1 and 1; `--keyed-scales A,B` overrides them). `--budget` runs only the load-budget
//! comparison of issue 19 instead: the attendance view under a steady 20 writes/s, without
//! and with `max_load = "25%"`, one daemon each (`--budget-secs N` per run, default 90;
//! 20 with `--quick`). `--capture` runs only the writer cost of refreshd's change capture
//! (issue 20, SPEC "Change capture"; benches/capture/mod.rs), `--capture-secs N` per
//! pgbench run (default 15; 3 with `--quick`), `--capture-rounds N` (default 5; 1 with
//! `--quick`). `--tpch` runs only the TPC-H comparison of issue 20 (benches/tpch/mod.rs):
//! Q1, Q3, Q5, Q10 at scale factor 0.1 (`--tpch-sf N` for another), full REFRESH
//! CONCURRENTLY against `init --keyed`'s incremental path after one new order, 0.1 % and
//! 1 % change. `--writers` runs only the writer cost of capture, plain and keyed (key
//! buffers, row buffers; benches/writers/mod.rs), `--writers-secs N` per pgbench run
//! (default 10; 3 with `--quick`), `--writers-rounds N` (default 3; 1 with `--quick`).
//! `--writers-instructions` counts instead, with valgrind's callgrind, the CPU
//! instructions one single-row INSERT transaction costs under each of those captures
//! (benches/writers/instructions.rs; needs valgrind; ~3 min, `--quick` ~1 min).
//! `--writers-path` measures the capture of a table reaching the key through a join path
//! (sales through products to category names) against no trigger, at 1 and 8 clients
//! (benches/writers/path.rs; `--writers-secs`, `--writers-rounds`, `--writers-durable`;
//! `--writers-path-against BIN` adds the capture another refreshd binary generates).
//! `--writers-guards` measures the writers of a dimension a foreign key guards
//! (benches/writers/guards.rs; the same flags, `--writers-partitioned` for 300 fact
//! partitions, `--writers-path-against BIN` for another binary's capture).
//! `--writers-partitioned`, with either: the same on w.sales partitioned by month (12
//! partitions), the kind of fact table issue 20 measured capture on.
//! `--writers-durable`, with `--writers`: commits as the server's defaults make them
//! (fsync, synchronous_commit and full_page_writes on; the bench clusters turn them off).
//! `--attendance-scale` runs only the attendance view's hand-written keyed table (005)
//! against the one `init --keyed` generates, commit → visible at scales 1 and 10
//! (benches/attendance/mod.rs; `--attendance-scales A,B` overrides, `--quick`: 0.1 and 1).
//! Cargo passes `--bench` itself; unknown arguments are ignored for that
//! reason.

mod attendance;
mod capture;
mod keyed;
mod support;
mod tpch;
mod writers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use refreshd::cli::cluster::{ClusterOptions, TempCluster};
use support::*;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The view the seeds ship and the channel its statement-level triggers notify.
const ATT_VIEW: &str = "public.attendance_statistics_summary";
const ATT_CHANNEL: &str = "refresh_attendance_stats";
/// How the harness sees whether a write reached the attendance view: every inserted
/// member_attendance row adds one to this sum (inserts go to sessions of known
/// categories and seasons, so each row is counted in exactly one view row).
const ATT_SUM: &str =
    "SELECT sum(total_attendance_records)::bigint FROM public.attendance_statistics_summary";

/// Sizes of every phase. `quick` trades statistical weight for time; the shape of the
/// run (and every table) stays the same.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    scale: f64,
    idle_secs: u64,
    small_samples: usize,
    att_samples: usize,
    storm_rate: u32,
    storm_secs: u64,
    storm_writers: usize,
    wp_rounds: usize,
    wp_secs: u64,
    wp_clients: Vec<u32>,
    cron_secs: u64,
    cron_rate: u32,
    /// `--keyed`: only the keyed-refresh section, at each of `keyed_scales`.
    keyed: bool,
    keyed_scales: Vec<f64>,
    /// Interleaved samples of the materialized view and its keyed twin (one daemon).
    keyed_pair_samples: usize,
    /// Samples of the keyed table alone (the materialized view's triggers off).
    keyed_alone_samples: usize,
    /// `--budget`: only the load-budget comparison.
    budget: bool,
    budget_secs: u64,
    budget_rate: u32,
    /// `--capture`: only the capture writer-cost section.
    capture: bool,
    capture_secs: u64,
    capture_rounds: usize,
    /// `--tpch`: only the TPC-H comparison (benches/tpch/mod.rs), at `tpch_sf`.
    tpch: bool,
    tpch_sf: String,
    /// `--tpch-foreign-keys`: TPC-H's foreign keys declared (tests/support/tpch_foreign_keys.sql).
    tpch_foreign_keys: bool,
    /// `--writers`: only the writer cost of plain and keyed capture (benches/writers/mod.rs).
    writers: bool,
    /// `--writers-instructions`: the same captures, in instructions per transaction
    /// (benches/writers/instructions.rs).
    writers_instructions: bool,
    /// `--writers-path`: the writer cost of the capture of a table reaching the key
    /// through a join path (benches/writers/path.rs).
    writers_path: bool,
    /// `--writers-path-against BIN`: also the capture another refreshd binary's `init`
    /// generates (an earlier version's, say), side by side.
    writers_path_against: Option<String>,
    /// `--writers-guards`: the writer cost of a dimension whose INSERTs a foreign key
    /// guards (benches/writers/guards.rs).
    writers_guards: bool,
    /// `--writers-partitioned`: w.sales partitioned by month (12 partitions), as the
    /// fact table issue 20 measured capture on (benches/writers/mod.rs).
    writers_partitioned: bool,
    /// `--writers-durable`: the server's durable defaults (fsync, synchronous_commit,
    /// full_page_writes on) instead of the test clusters' fsync=off (benches/writers/mod.rs).
    writers_durable: bool,
    writers_secs: u64,
    writers_rounds: usize,
    /// `--attendance-scale`: only the hand-written against generated attendance keyed
    /// view (benches/attendance/mod.rs), at each of `attendance_scales`.
    attendance: bool,
    attendance_scales: Vec<f64>,
}

impl Plan {
    fn from_args() -> Plan {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("REFRESHD_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        let mut plan = if quick { Plan::quick() } else { Plan::full() };
        plan.apply_args(&args);
        plan
    }

    /// `--quick`'s sizes: every section, smaller.
    fn quick() -> Plan {
        Plan {
            quick: true,
            scale: 0.1,
            idle_secs: 10,
            small_samples: 40,
            att_samples: 8,
            storm_rate: 500,
            storm_secs: 10,
            storm_writers: 4,
            wp_rounds: 1,
            wp_secs: 3,
            wp_clients: vec![1, 8],
            cron_secs: 65,
            cron_rate: 20,
            keyed: false,
            keyed_scales: vec![0.1, 1.0],
            keyed_pair_samples: 8,
            keyed_alone_samples: 20,
            budget: false,
            budget_secs: 20,
            budget_rate: 20,
            capture: false,
            capture_secs: 3,
            capture_rounds: 1,
            tpch: false,
            tpch_sf: "0.1".into(),
            tpch_foreign_keys: false,
            writers: false,
            writers_instructions: false,
            writers_path: false,
            writers_path_against: None,
            writers_guards: false,
            writers_partitioned: false,
            writers_durable: false,
            writers_secs: 3,
            writers_rounds: 1,
            attendance: false,
            attendance_scales: vec![0.1, 1.0],
        }
    }

    /// The full run's sizes.
    fn full() -> Plan {
        Plan {
            quick: false,
            scale: 1.0,
            idle_secs: 60,
            small_samples: 200,
            att_samples: 30,
            storm_rate: 500,
            storm_secs: 30,
            storm_writers: 4,
            wp_rounds: 5,
            wp_secs: 4,
            wp_clients: vec![1, 8],
            cron_secs: 300,
            cron_rate: 20,
            keyed: false,
            keyed_scales: vec![1.0, 10.0],
            keyed_pair_samples: 25,
            keyed_alone_samples: 100,
            budget: false,
            budget_secs: 90,
            budget_rate: 20,
            capture: false,
            capture_secs: 15,
            capture_rounds: 5,
            tpch: false,
            tpch_sf: "0.1".into(),
            tpch_foreign_keys: false,
            writers: false,
            writers_instructions: false,
            writers_path: false,
            writers_path_against: None,
            writers_guards: false,
            writers_partitioned: false,
            writers_durable: false,
            writers_secs: 10,
            writers_rounds: 3,
            attendance: false,
            attendance_scales: vec![1.0, 10.0],
        }
    }

    /// The mode flags and the options that override a size.
    fn apply_args(&mut self, args: &[String]) {
        let has = |flag: &str| args.iter().any(|a| a == flag);
        if let Some(s) = arg_value(args, "--scale") {
            self.scale = s;
        }
        self.keyed = has("--keyed");
        self.budget = has("--budget");
        if let Some(s) = arg_value(args, "--budget-secs") {
            self.budget_secs = s;
        }
        self.capture = has("--capture");
        self.tpch = has("--tpch");
        self.writers = has("--writers");
        self.writers_instructions = has("--writers-instructions");
        self.writers_path = has("--writers-path");
        self.writers_path_against = arg_value(args, "--writers-path-against");
        self.writers_guards = has("--writers-guards");
        self.writers_partitioned = has("--writers-partitioned");
        self.writers_durable = has("--writers-durable");
        self.attendance = has("--attendance-scale");
        if let Some(scales) = arg_scales(args, "--attendance-scales") {
            self.attendance = true;
            self.attendance_scales = scales;
        }
        if let Some(s) = arg_value(args, "--writers-secs") {
            self.writers_secs = s;
        }
        if let Some(s) = arg_value(args, "--writers-rounds") {
            self.writers_rounds = s;
        }
        if has("--tpch-foreign-keys") {
            self.tpch = true;
            self.tpch_foreign_keys = true;
        }
        if let Some(i) = args.iter().position(|a| a == "--tpch-sf") {
            if let Some(s) = args.get(i + 1) {
                self.tpch = true;
                self.tpch_sf = s.clone();
            }
        }
        if let Some(s) = arg_value(args, "--capture-secs") {
            self.capture_secs = s;
        }
        if let Some(s) = arg_value(args, "--capture-rounds") {
            self.capture_rounds = s;
        }
        if let Some(scales) = arg_scales(args, "--keyed-scales") {
            self.keyed_scales = scales;
        }
    }
}

/// The value after `flag`, parsed; None when absent or not parseable.
fn arg_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.parse().ok()
}

/// The comma-separated scales after `flag`; None when absent or none parses.
fn arg_scales(args: &[String], flag: &str) -> Option<Vec<f64>> {
    let i = args.iter().position(|a| a == flag)?;
    let scales: Vec<f64> = args
        .get(i + 1)
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    (!scales.is_empty()).then_some(scales)
}

/// Everything the phases share: the cluster, connection strings, the insert that feeds
/// the attendance view, and the results collected for the final report.
struct Bench {
    plan: Plan,
    cluster: TempCluster,
    dsn: String,
    insert_sql: String,
    cron_version: Option<String>,
    report: Report,
}

impl Bench {
    /// A throwaway cluster allowing `max_connections`, with nothing measured yet (the
    /// capture and writers modes: their own schema, no attendance insert).
    async fn on_new_cluster(plan: &Plan, max_connections: u32) -> Result<Bench> {
        let cluster = tokio::task::spawn_blocking(move || {
            TempCluster::start(&ClusterOptions {
                settings: vec![("max_connections".into(), max_connections.to_string())],
                ..Default::default()
            })
        })
        .await??;
        let dsn = cluster.socket_dsn("postgres");
        Ok(Bench {
            plan: plan.clone(),
            cluster,
            dsn,
            insert_sql: String::new(),
            cron_version: None,
            report: Report::default(),
        })
    }
}

#[derive(Default)]
struct Report {
    setup: Vec<(String, String)>,
    freshness: Vec<FreshRow>,
    storm: Vec<StormRow>,
    write_path: Vec<WpRow>,
    wp_notes: Vec<String>,
    cron: Vec<CronRow>,
    cron_note: Option<String>,
    footprint: Vec<FootRow>,
}

fn main() -> Result<()> {
    let plan = Plan::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if plan.keyed {
        rt.block_on(keyed::run(plan))
    } else if plan.budget {
        rt.block_on(budget_run(plan))
    } else if plan.capture {
        rt.block_on(capture::run(plan))
    } else if plan.tpch {
        rt.block_on(tpch::run(plan))
    } else if plan.writers_path {
        rt.block_on(writers::path::run(plan))
    } else if plan.writers_guards {
        rt.block_on(writers::guards::run(plan))
    } else if plan.writers_instructions {
        rt.block_on(writers::instructions::run(plan))
    } else if plan.writers {
        rt.block_on(writers::run(plan))
    } else if plan.attendance {
        rt.block_on(attendance::run(plan))
    } else {
        rt.block_on(run(plan))
    }
}

async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let _bin = pin_binary()?;
    progress(&format!(
        "refreshd bench: {} mode, scale {}",
        if plan.quick { "quick" } else { "full" },
        plan.scale
    ));
    let mut bench = setup(plan).await?;

    // Footprint (idle) and freshness share one refreshd: debounce 0 on both views.
    let fresh_cfg = vec![
        ViewCfg::new("bench.small_mv", "bench_small", "0s", "5s"),
        ViewCfg::new(ATT_VIEW, ATT_CHANNEL, "0s", "5s"),
    ];
    let daemon = Daemon::start(&bench.dsn, &fresh_cfg, "fresh").await?;
    idle_footprint(&mut bench, &daemon).await?;
    freshness(&mut bench).await?;
    let hwm = daemon.vm_hwm_kib();
    bench.report.footprint.push(FootRow {
        phase: "idle + freshness run (whole process life)".into(),
        secs: daemon.started.elapsed().as_secs_f64(),
        cpu: daemon.cpu_secs(),
        hwm_kib: hwm,
    });
    daemon.stop().await;
    freshness_statistics(&mut bench).await?;

    storms(&mut bench).await?;
    write_path(&mut bench).await?;
    cron(&mut bench).await?;

    let total = t0.elapsed();
    bench.report.setup.push((
        "harness wall time".into(),
        format!("{:.1} min", total.as_secs_f64() / 60.0),
    ));
    print!("{}", render(&bench));
    progress(&format!("done in {:.1} min", total.as_secs_f64() / 60.0));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------

async fn setup(plan: Plan) -> Result<Bench> {
    // pg_cron must be preloaded at server start, so decide before starting the cluster.
    let cron_available = pkglibdir()
        .map(|d| d.join("pg_cron.so").exists())
        .unwrap_or(false);
    let cluster = start_cluster(cron_available).await?;
    let dsn = cluster.socket_dsn("postgres");
    let gen_secs = load_attendance(&cluster, plan.scale)?;

    let c = connect(&dsn).await?;
    c.batch_execute(BENCH_SCHEMA).await?;
    // sql/attendance/005's keyed triggers (issue 11) send keys on every write to
    // member_attendance. The phases of issue 5 measure the materialized view's path
    // as before, so they run with those triggers off; the keyed section turns them on
    // where it needs them. (A disabled trigger with a transition table still makes
    // PostgreSQL capture the changed rows, so a write is not exactly as cheap as with
    // no such trigger at all: the keyed write-path table measures that difference.)
    c.batch_execute(&toggle_keyed_triggers(false)).await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    let rows: i64 = c
        .query_one("SELECT count(*) FROM public.member_attendance", &[])
        .await?
        .get(0);
    let members: i64 = c
        .query_one("SELECT count(*) FROM bench.m", &[])
        .await?
        .get(0);
    let sessions: i64 = c
        .query_one("SELECT count(*) FROM bench.s", &[])
        .await?
        .get(0);
    let view_rows: i64 = c
        .query_one(
            "SELECT count(*) FROM public.attendance_statistics_summary",
            &[],
        )
        .await?
        .get(0);
    // A fresh (member, empty session) pair per insert, from a sequence: inserts never
    // collide with the generated rows or with each other, whoever sends them.
    let insert_sql = format!(
        "INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status) \
         SELECT m.id, s.id, 'present' FROM (SELECT nextval('bench.seq') AS n) v \
         JOIN bench.m m ON m.i = v.n % {members} JOIN bench.s s ON s.i = v.n / {members}"
    );
    let pg_version: String = c.query_one("SHOW server_version", &[]).await?.get(0);
    let cron_version = cron_version(&c, cron_available).await?;
    let r = &mut Report::default();
    r.setup.push(("PostgreSQL".into(), pg_version));
    r.setup.push((
        "data".into(),
        format!(
            "scale {}: {rows} member_attendance rows, {view_rows}-row attendance view; generated in {gen_secs:.1} s; insert pool {} pairs",
            plan.scale,
            members * sessions
        ),
    ));
    r.setup.push((
        "cluster".into(),
        "throwaway initdb, fsync=off, synchronous_commit=off, shared_buffers=128MB (refreshd's TempCluster)".into(),
    ));
    r.setup.push((
        "pg_cron".into(),
        cron_version
            .clone()
            .map(|v| format!("{v} (preloaded, background workers)"))
            .unwrap_or_else(|| "not installed".into()),
    ));
    let report = std::mem::take(r);
    Ok(Bench {
        plan,
        cluster,
        dsn,
        insert_sql,
        cron_version,
        report,
    })
}

/// A throwaway cluster for the attendance sections (pg_cron preloaded when installed).
async fn start_cluster(cron_available: bool) -> Result<TempCluster> {
    let mut settings = vec![
        // One notification per writing transaction at storm rate stays far below the
        // queue's 8 GB, but the naive listener must be able to hold hundreds of conns.
        ("max_connections".to_string(), "200".to_string()),
    ];
    if cron_available {
        settings.extend([
            ("shared_preload_libraries".into(), "pg_cron".into()),
            ("cron.database_name".into(), "postgres".into()),
            // Background workers need no TCP login, so no auth setup for pg_cron.
            ("cron.use_background_workers".into(), "on".into()),
            ("max_worker_processes".into(), "16".into()),
        ]);
    }
    progress("starting throwaway cluster");
    let cluster = tokio::task::spawn_blocking(move || {
        TempCluster::start(&ClusterOptions {
            settings,
            ..Default::default()
        })
    })
    .await??;
    Ok(cluster)
}

/// sql/'s attendance, inventory and demo installed, and the attendance data generated
/// at `scale`; the seconds generation took.
fn load_attendance(cluster: &TempCluster, scale: f64) -> Result<f64> {
    let root = env!("CARGO_MANIFEST_DIR");
    for f in [
        "sql/attendance/install.sql",
        "sql/inventory/install.sql",
        "sql/demo/install.sql",
    ] {
        cluster.psql("postgres", &["-f", &format!("{root}/{f}")])?;
    }
    progress(&format!("generating attendance data at scale {scale}"));
    let t = Instant::now();
    cluster.psql(
        "postgres",
        &[
            "-c",
            &format!("SELECT refreshd_demo.generate_attendance({scale})"),
        ],
    )?;
    Ok(t.elapsed().as_secs_f64())
}

/// pg_cron's version once its extension is created, when the library is installed.
async fn cron_version(c: &Client, cron_available: bool) -> Result<Option<String>> {
    let mut cron_version = None;
    if cron_available {
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            .await?;
        let v: String = c
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'",
                &[],
            )
            .await?
            .get(0);
        cron_version = Some(v);
    }
    Ok(cron_version)
}

/// Objects the harness adds next to sql/: a small view, the insert pair pool, the
/// alternative triggers for the write-path runs (created disabled), and a copy of the
/// attendance view for pg_cron so pg_cron and refreshd can run under one write stream.
const BENCH_SCHEMA: &str = r#"
CREATE SCHEMA bench;

CREATE TABLE bench.small (id int PRIMARY KEY, v bigint NOT NULL DEFAULT 0);
INSERT INTO bench.small SELECT g, 0 FROM generate_series(1, 100) g;
CREATE MATERIALIZED VIEW bench.small_mv AS SELECT id, v FROM bench.small;
CREATE UNIQUE INDEX small_mv_id ON bench.small_mv (id);
CREATE FUNCTION bench.notify_small() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN PERFORM pg_notify('bench_small', ''); RETURN NULL; END$$;
CREATE TRIGGER small_notify AFTER INSERT OR UPDATE OR DELETE ON bench.small
    FOR EACH STATEMENT EXECUTE FUNCTION bench.notify_small();

CREATE TABLE bench.m AS SELECT (row_number() OVER (ORDER BY id)) - 1 AS i, id FROM public.members;
CREATE UNIQUE INDEX ON bench.m (i);
CREATE TABLE bench.s AS
    SELECT (row_number() OVER (ORDER BY ts.id)) - 1 AS i, ts.id FROM public.training_sessions ts
    WHERE NOT EXISTS (SELECT 1 FROM public.member_attendance ma WHERE ma.training_session_id = ts.id);
CREATE UNIQUE INDEX ON bench.s (i);
CREATE SEQUENCE bench.seq;

-- What a "notify every change" trigger looks like: per row, payload = the row id, so
-- PostgreSQL cannot fold duplicates.
CREATE FUNCTION bench.notify_row() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN PERFORM pg_notify('bench_rows', NEW.id::text); RETURN NULL; END$$;
CREATE TRIGGER bench_row_notify AFTER INSERT ON public.member_attendance
    FOR EACH ROW EXECUTE FUNCTION bench.notify_row();
ALTER TABLE public.member_attendance DISABLE TRIGGER bench_row_notify;

-- What "refresh in the trigger" looks like: the writer pays for the refresh.
CREATE FUNCTION bench.refresh_sync() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN REFRESH MATERIALIZED VIEW CONCURRENTLY public.attendance_statistics_summary; RETURN NULL; END$$;
CREATE TRIGGER bench_sync_refresh AFTER INSERT ON public.member_attendance
    FOR EACH STATEMENT EXECUTE FUNCTION bench.refresh_sync();
ALTER TABLE public.member_attendance DISABLE TRIGGER bench_sync_refresh;

DO $$BEGIN
  EXECUTE 'CREATE MATERIALIZED VIEW bench.att_cron AS '
       || pg_get_viewdef('public.attendance_statistics_summary'::regclass);
END$$;
CREATE UNIQUE INDEX att_cron_pk ON bench.att_cron (category_id, season_id);
"#;

/// Enables or disables sql/attendance/005's key-sending triggers (`attendance_keys_on_*`)
/// on both tables, whatever their number.
fn toggle_keyed_triggers(on: bool) -> String {
    format!(
        "DO $$DECLARE r record; BEGIN \
           FOR r IN SELECT t.tgrelid::regclass AS tbl, t.tgname FROM pg_catalog.pg_trigger t \
                    WHERE NOT t.tgisinternal AND t.tgname LIKE 'attendance\\_keys\\_on\\_%' LOOP \
             EXECUTE format('ALTER TABLE %s {} TRIGGER %I', r.tbl, r.tgname); \
           END LOOP; END$$",
        if on { "ENABLE" } else { "DISABLE" }
    )
}

async fn connect(dsn: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .context("connect")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn bare_refresh(c: &Client, view: &str) -> Result<Duration> {
    let t = Instant::now();
    c.batch_execute(&format!("REFRESH MATERIALIZED VIEW CONCURRENTLY {view}"))
        .await?;
    Ok(t.elapsed())
}

async fn view_sum(c: &Client, view: &str) -> Result<i64> {
    let sql = ATT_SUM.replace(ATT_VIEW, view);
    Ok(c.query_one(&sql, &[])
        .await?
        .get::<_, Option<i64>>(0)
        .unwrap_or(0))
}

// ---------------------------------------------------------------------------------
// 5a. Footprint while idle
// ---------------------------------------------------------------------------------

async fn idle_footprint(bench: &mut Bench, daemon: &Daemon) -> Result<()> {
    let secs = bench.plan.idle_secs;
    progress(&format!("footprint: refreshd idle for {secs} s"));
    // Let startup refreshes and their log lines settle before the window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = daemon.cpu_secs();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = daemon.cpu_secs() - cpu0;
    bench.report.footprint.push(FootRow {
        phase: "idle, 2 views configured, no writes".to_string(),
        secs: secs as f64,
        cpu,
        hwm_kib: daemon.vm_hwm_kib(),
    });
    Ok(())
}

// ---------------------------------------------------------------------------------
// 1. Freshness: commit → visible, next to the bare REFRESH of the same view
// ---------------------------------------------------------------------------------

async fn freshness(bench: &mut Bench) -> Result<()> {
    let writer = connect(&bench.dsn).await?;
    let poller = connect(&bench.dsn).await?;
    let bare = connect(&bench.dsn).await?;
    let insert = writer.prepare(&bench.insert_sql).await?;

    let n = bench.plan.small_samples;
    progress(&format!("freshness: bench.small_mv, {n} samples"));
    let (lags, refreshes) = small_view_samples(&bench.dsn, n, Duration::from_secs(30)).await?;
    bench.report.freshness.push(FreshRow::new(
        "bench.small_mv (100 rows, 1 table)",
        lags,
        refreshes,
    ));
    bare.batch_execute("SET session_replication_role = replica")
        .await?;
    let bare_insert = bare.prepare(&bench.insert_sql).await?;

    // Attendance view: the marker is the row count the view reports.
    let n = bench.plan.att_samples;
    progress(&format!("freshness: {ATT_VIEW}, {n} samples"));
    let (mut lags, mut refreshes) = (Vec::new(), Vec::new());
    let probe = poller.prepare(ATT_SUM).await?;
    let mut expect = view_sum(&poller, ATT_VIEW).await?;
    for _ in 0..n {
        writer.execute(&insert, &[]).await?;
        let acked = Instant::now();
        expect += 1;
        let seen = poll_until(
            Duration::from_millis(1),
            Duration::from_secs(60),
            || async {
                Ok(poller
                    .query_one(&probe, &[])
                    .await?
                    .get::<_, Option<i64>>(0)
                    .unwrap_or(0)
                    >= expect)
            },
        )
        .await?;
        lags.push(seen - acked);
        tokio::time::sleep(Duration::from_millis(100)).await;
        bare.execute(&bare_insert, &[]).await?;
        expect += 1;
        refreshes.push(bare_refresh(&bare, ATT_VIEW).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bench.report.freshness.push(FreshRow::new(
        &format!("{ATT_VIEW} (scale {})", bench.plan.scale),
        lags,
        refreshes,
    ));
    Ok(())
}

/// Commit → visible samples on `bench.small_mv`, alternated with the bare REFRESH of
/// the same view (the difference is refreshd's overhead).
async fn small_view_samples(
    dsn: &str,
    n: usize,
    timeout: Duration,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let writer = connect(dsn).await?;
    let poller = connect(dsn).await?;
    let bare = connect(dsn).await?;
    let (mut lags, mut refreshes) = (Vec::new(), Vec::new());
    let probe = poller
        .prepare("SELECT v FROM bench.small_mv WHERE id = 1")
        .await?;
    let base: i64 = poller.query_one(&probe, &[]).await?.get(0);
    // The baseline refresh must apply a real change too (an unchanged view diffs less),
    // but without refreshd hearing about it: the `bare` session writes with
    // session_replication_role = replica, which skips the notify triggers. (In
    // statistics mode refreshd may still see the bare write's counters: that only
    // adds refreshes between samples, never to a sample.)
    bare.batch_execute("SET session_replication_role = replica")
        .await?;
    for i in 0..n {
        let marker = base + 2 * i as i64 + 1;
        writer
            .execute("UPDATE bench.small SET v = $1 WHERE id = 1", &[&marker])
            .await?;
        let acked = Instant::now();
        let seen = poll_until(Duration::from_micros(300), timeout, || async {
            Ok(poller.query_one(&probe, &[]).await?.get::<_, i64>(0) >= marker)
        })
        .await?;
        lags.push(seen - acked);
        // Let refreshd finish its bookkeeping so the bare refresh runs alone.
        tokio::time::sleep(Duration::from_millis(20)).await;
        bare.execute(
            "UPDATE bench.small SET v = $1 WHERE id = 1",
            &[&(marker + 1)],
        )
        .await?;
        refreshes.push(bare_refresh(&bare, "bench.small_mv").await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((lags, refreshes))
}

/// The statistics-mode row of the freshness table: the same small view, no trigger
/// involved, refreshd polling the table's counters every second (the default).
async fn freshness_statistics(bench: &mut Bench) -> Result<()> {
    let views = vec![ViewCfg::statistics("bench.small_mv", "1s", "0s", "5s")];
    let daemon = Daemon::start(&bench.dsn, &views, "statistics").await?;
    let n = (bench.plan.small_samples / 5).max(8);
    progress(&format!(
        "freshness: bench.small_mv in statistics mode, {n} samples"
    ));
    let (lags, refreshes) = small_view_samples(&bench.dsn, n, Duration::from_secs(30)).await?;
    bench.report.freshness.push(FreshRow::new(
        "bench.small_mv, detect = \"statistics\", poll_interval 1s (no trigger)",
        lags,
        refreshes,
    ));
    daemon.stop().await;
    Ok(())
}

/// Polls `check` until it returns true; returns the instant it did. The sleep between
/// polls is a blocking one: tokio's timer has 1 ms granularity, and the poll interval
/// is part of every lag sample. (The runtime has a second worker for everything else.)
async fn poll_until<F, Fut>(every: Duration, timeout: Duration, mut check: F) -> Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for the change to become visible");
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------
// 2. Storm: writes far above the refresh rate
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Refresher {
    Refreshd {
        debounce: &'static str,
        max_delay: &'static str,
    },
    Naive,
}

impl Refresher {
    fn label(self) -> String {
        match self {
            Refresher::Refreshd {
                debounce,
                max_delay,
            } => format!("refreshd (debounce {debounce}, max_delay {max_delay})"),
            Refresher::Naive => "naive listener (REFRESH per notification)".to_string(),
        }
    }
}

/// The storm's refresher, started: refreshd on the attendance view (its startup
/// refresh done), or the naive listener.
async fn start_refresher(
    bench: &Bench,
    refresher: Refresher,
) -> Result<(Option<Daemon>, Option<NaiveListener>)> {
    Ok(match refresher {
        Refresher::Refreshd {
            debounce,
            max_delay,
        } => {
            let cfg = vec![ViewCfg::new(ATT_VIEW, ATT_CHANNEL, debounce, max_delay)];
            (Some(Daemon::start(&bench.dsn, &cfg, "storm").await?), None)
        }
        Refresher::Naive => (
            None,
            Some(start_naive(&bench.dsn, ATT_VIEW, ATT_CHANNEL).await?),
        ),
    })
}

/// `writers` connections writing `rate` transactions/s in all for `secs`: when they
/// started, when the last one stopped, and every commit's acknowledgement, sorted.
async fn write_for(
    bench: &Bench,
    rate: u32,
    writers: usize,
    secs: u64,
) -> Result<(Instant, Instant, Vec<Instant>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let (acks, handles) = spawn_writers(bench, rate, writers, stop.clone());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in handles {
        w.await??;
    }
    let end = Instant::now();
    let mut acks = acks.lock().unwrap().clone();
    acks.sort();
    Ok((start, end, acks))
}

async fn storms(bench: &mut Bench) -> Result<()> {
    for r in [
        Refresher::Refreshd {
            debounce: "1s",
            max_delay: "5s",
        },
        Refresher::Refreshd {
            debounce: "0s",
            max_delay: "5s",
        },
        Refresher::Naive,
    ] {
        let row = storm(bench, r).await?;
        bench.report.storm.push(row);
    }
    Ok(())
}

/// Commit instants of every acknowledged write, from all writer connections.
type Acks = Arc<Mutex<Vec<Instant>>>;

/// Runs `writers` connections that together commit `rate` single-row inserts per second
/// until `stop` is set.
fn spawn_writers(
    bench: &Bench,
    rate: u32,
    writers: usize,
    stop: Arc<AtomicBool>,
) -> (Acks, Vec<tokio::task::JoinHandle<Result<()>>>) {
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let period = Duration::from_secs_f64(writers as f64 / rate as f64);
    let mut handles = Vec::new();
    for w in 0..writers {
        let (dsn, sql, acks, stop) = (
            bench.dsn.clone(),
            bench.insert_sql.clone(),
            acks.clone(),
            stop.clone(),
        );
        handles.push(tokio::spawn(async move {
            let c = connect(&dsn).await?;
            let st = c.prepare(&sql).await?;
            // Stagger the writers so their ticks interleave instead of bunching.
            tokio::time::sleep(period.mul_f64(w as f64 / writers as f64)).await;
            let mut tick = tokio::time::interval(period);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                c.execute(&st, &[]).await?;
                acks.lock().unwrap().push(Instant::now());
            }
            Ok(())
        }));
    }
    (acks, handles)
}

/// Samples the view's reported row sum; staleness is computed afterwards from these
/// samples and the writers' commit instants.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, i64)>>>,
    queue_max: Arc<Mutex<f64>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Result<()>>,
}

impl Sampler {
    async fn start(dsn: &str, view: &str, every: Duration) -> Result<Sampler> {
        let c = connect(dsn).await?;
        let sql = ATT_SUM.replace(ATT_VIEW, view);
        let st = c.prepare(&sql).await?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let queue_max = Arc::new(Mutex::new(0.0f64));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, q2, stop2) = (samples.clone(), queue_max.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                tick.tick().await;
                let v: i64 = c
                    .query_one(&st, &[])
                    .await?
                    .get::<_, Option<i64>>(0)
                    .unwrap_or(0);
                s2.lock().unwrap().push((Instant::now(), v));
                i += 1;
                if i.is_multiple_of(10) {
                    let q: f64 = c
                        .query_one("SELECT pg_notification_queue_usage()", &[])
                        .await?
                        .get(0);
                    let mut m = q2.lock().unwrap();
                    *m = m.max(q);
                }
            }
            Ok(())
        });
        Ok(Sampler {
            samples,
            queue_max,
            stop,
            handle,
        })
    }

    async fn finish(self) -> Result<(Vec<(Instant, i64)>, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await??;
        let s = self.samples.lock().unwrap().clone();
        let q = *self.queue_max.lock().unwrap();
        Ok((s, q))
    }
}

/// Staleness at each sample: the age of the oldest acknowledged write the view does
/// not show yet. The view shows `k` of the writes; commits are taken in ack order (the
/// writers' acks are within a millisecond of their commits, so the error is that).
fn staleness(
    samples: &[(Instant, i64)],
    base: i64,
    acks: &[Instant],
    from: Instant,
    to: Instant,
) -> Vec<Duration> {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|&(t, v)| {
            let k = (v - base).max(0) as usize;
            match acks.get(k) {
                Some(&a) if a < t => t - a,
                _ => Duration::ZERO,
            }
        })
        .collect()
}

struct NaiveListener {
    received: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    busy: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Result<()>>,
}

impl NaiveListener {
    /// Notifications received and not refreshed yet.
    fn backlog(&self) -> u64 {
        self.received.load(Ordering::Relaxed) - self.done.load(Ordering::Relaxed)
    }

    /// Refreshes done so far and the seconds they took.
    fn work(&self) -> (u64, f64) {
        let busy = self.busy.lock().unwrap();
        (
            self.done.load(Ordering::Relaxed),
            busy.iter().map(|d| d.as_secs_f64()).sum::<f64>(),
        )
    }
}

/// The baseline people write by hand: LISTEN, and for every notification run
/// REFRESH ... CONCURRENTLY on the same connection, one after the other.
async fn start_naive(dsn: &str, view: &str, channel: &str) -> Result<NaiveListener> {
    let (client, mut conn) = tokio_postgres::connect(dsn, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    tokio::spawn(async move {
        let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = msgs.next().await {
            if let AsyncMessage::Notification(_) = m {
                r2.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(());
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    let done = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (d2, b2, s2, view) = (done.clone(), busy.clone(), stop.clone(), view.to_string());
    let handle = tokio::spawn(async move {
        while !s2.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(Some(())) => {
                    let d = bare_refresh(&client, &view).await?;
                    b2.lock().unwrap().push(d);
                    d2.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        Ok(())
    });
    Ok(NaiveListener {
        received,
        done,
        busy,
        stop,
        handle,
    })
}

async fn storm(bench: &mut Bench, refresher: Refresher) -> Result<StormRow> {
    let plan = bench.plan.clone();
    let label = refresher.label();
    progress(&format!(
        "storm: {label}, {} tx/s for {} s",
        plan.storm_rate, plan.storm_secs
    ));
    let c = connect(&bench.dsn).await?;
    // Start from an exact view so that staleness only counts storm writes.
    bare_refresh(&c, ATT_VIEW).await?;
    let base = view_sum(&c, ATT_VIEW).await?;

    let (mut daemon, mut naive) = start_refresher(bench, refresher).await?;
    // refreshd's startup refresh has finished (Daemon::start waits for it).
    let m0 = match &daemon {
        Some(d) => Some(d.metrics().await?),
        None => None,
    };
    let cpu0 = daemon.as_ref().map(|d| d.cpu_secs()).unwrap_or(0.0);

    let sampler = Sampler::start(&bench.dsn, ATT_VIEW, Duration::from_millis(50)).await?;
    let (start, storm_end, acks) =
        write_for(bench, plan.storm_rate, plan.storm_writers, plan.storm_secs).await?;
    let total = acks.len() as i64;
    let last_ack = *acks.last().context("no writes committed")?;
    let cpu_storm = daemon.as_ref().map(|d| d.cpu_secs() - cpu0).unwrap_or(0.0);
    let naive_backlog_at_end = naive.as_ref().map(NaiveListener::backlog);

    // After the storm: how long until the view shows every write?
    let exact_at = poll_until(
        Duration::from_millis(5),
        Duration::from_secs(300),
        || async { Ok(view_sum(&c, ATT_VIEW).await? >= base + total) },
    )
    .await?;
    // The naive listener's work up to the same point as refreshd's metrics are read.
    let naive_at_exact = naive.as_ref().map(NaiveListener::work);
    let (samples, queue_max) = sampler.finish().await?;
    let st = staleness(&samples, base, &acks, start, exact_at);
    let st_ms: Vec<f64> = st.iter().map(|d| ms(*d)).collect();

    let o = match refresher {
        Refresher::Refreshd { max_delay, .. } => {
            let d = daemon.take().unwrap();
            let (o, hwm) = refreshd_outcome(d, &m0.unwrap(), max_delay, &st_ms).await?;
            bench.report.footprint.push(FootRow {
                phase: format!(
                    "storm, {label}: {} tx/s for {} s",
                    plan.storm_rate, plan.storm_secs
                ),
                secs: (storm_end - start).as_secs_f64(),
                cpu: cpu_storm,
                hwm_kib: hwm,
            });
            o
        }
        Refresher::Naive => {
            let n = naive.take().unwrap();
            naive_outcome(
                n,
                naive_at_exact.unwrap(),
                naive_backlog_at_end.unwrap_or(0),
                exact_at,
            )
            .await
        }
    };
    // Leave the table as it was for the next run (the inserts stay; the view is exact).
    Ok(StormRow {
        label,
        achieved: total as f64 / (last_ack - start).as_secs_f64(),
        refreshes: o.refreshes,
        db_secs: o.db_secs,
        max_refresh_ms: o.max_refresh * 1000.0,
        st_med: percentile(&st_ms, 50.0),
        st_p99: percentile(&st_ms, 99.0),
        st_max: max_of(&st_ms),
        queue_max,
        to_exact_ms: ms(exact_at.saturating_duration_since(last_ack)),
        note: o.note,
    })
}

/// What a storm's refresher did up to the view being exact.
struct Outcome {
    refreshes: u64,
    db_secs: f64,
    /// The longest refresh, in seconds.
    max_refresh: f64,
    note: String,
}

/// refreshd's storm: its refreshes and DB time from its metrics (since `m0`), the
/// longest refresh from its log, the staleness bound max_delay + one refresh against
/// the worst staleness seen; and its peak RSS. Stops the daemon.
async fn refreshd_outcome(
    d: Daemon,
    m0: &str,
    max_delay: &str,
    st_ms: &[f64],
) -> Result<(Outcome, u64)> {
    let m1 = d.metrics().await?;
    let count = metric(&m1, "refreshd_refresh_duration_seconds_count", ATT_VIEW)
        - metric(m0, "refreshd_refresh_duration_seconds_count", ATT_VIEW);
    let sum = metric(&m1, "refreshd_refresh_duration_seconds_sum", ATT_VIEW)
        - metric(m0, "refreshd_refresh_duration_seconds_sum", ATT_VIEW);
    // The histogram has no maximum; refreshd's per-refresh log line has it.
    let durs = d.refresh_durations_ms("notify");
    let max_refresh = durs
        .iter()
        .map(|ms| ms / 1000.0)
        .fold(sum / count.max(1.0), f64::max);
    let bound = humantime::parse_duration(max_delay)?.as_secs_f64() * 1000.0 + max_refresh * 1000.0;
    let worst = max_of(st_ms);
    let note = format!(
        "bound max_delay + one refresh ≈ {:.0} ms: {}",
        bound,
        if worst <= bound + 500.0 {
            "within (±0.5 s sampling/notify slack)"
        } else {
            "EXCEEDED"
        }
    );
    let hwm = d.vm_hwm_kib();
    d.stop().await;
    let o = Outcome {
        refreshes: count as u64,
        db_secs: sum,
        max_refresh,
        note,
    };
    Ok((o, hwm))
}

/// The naive listener's storm: its refreshes and busy time when the view was exact
/// (`at_exact`), then its backlog watched 5 s longer before it is stopped.
async fn naive_outcome(
    n: NaiveListener,
    at_exact: (u64, f64),
    backlog_at_end: u64,
    exact_at: Instant,
) -> Outcome {
    // Watch the backlog a little longer: it keeps refreshing long after the view
    // is exact, one refresh per notification it already received.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received = n.received.load(Ordering::Relaxed);
    let done = n.done.load(Ordering::Relaxed);
    n.stop.store(true, Ordering::Relaxed);
    let _ = n.handle.await;
    let busy = n.busy.lock().unwrap().clone();
    let mean = busy.iter().map(|d| d.as_secs_f64()).sum::<f64>() / busy.len().max(1) as f64;
    let (refreshes, db_secs) = at_exact;
    let max_refresh = busy.iter().map(|d| d.as_secs_f64()).fold(0.0, f64::max);
    let left = received - done;
    let note = format!(
        "{} notifications received, {} refreshes pending at storm end, still {} pending {:.0} s after the view was exact (~{:.0} s more of back-to-back refreshes; stopped by the harness)",
        received,
        backlog_at_end,
        left,
        (Instant::now() - exact_at).as_secs_f64(),
        left as f64 * mean
    );
    Outcome {
        refreshes,
        db_secs,
        max_refresh,
        note,
    }
}

// ---------------------------------------------------------------------------------
// Load budget (issue 19): the attendance view under steady writes, with and without
// `max_load`
// ---------------------------------------------------------------------------------

struct BudgetRow {
    max_load: &'static str,
    achieved: f64,
    secs: f64,
    refreshes: u64,
    db_secs: f64,
    mean_refresh_ms: f64,
    st_med: f64,
    st_p99: f64,
    st_max: f64,
    pending_max: f64,
    held_samples: usize,
    status_samples: usize,
}

async fn budget_run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let _bin = pin_binary()?;
    progress(&format!(
        "refreshd bench: load budget, scale {}, {} writes/s, {} s per run",
        plan.scale, plan.budget_rate, plan.budget_secs
    ));
    let mut bench = setup(plan).await?;
    let mut rows = Vec::new();
    for max_load in ["100%", "25%"] {
        rows.push(budget_one(&bench, max_load).await?);
    }
    let total = t0.elapsed();
    bench.report.setup.push((
        "harness wall time".into(),
        format!("{:.1} min", total.as_secs_f64() / 60.0),
    ));
    print!("{}", render_budget(&bench, &rows));
    progress(&format!("done in {:.1} min", total.as_secs_f64() / 60.0));
    Ok(())
}

/// One daemon on the attendance view (debounce 0s, max_delay 5s, `max_load`), a steady
/// write stream for `budget_secs`: the database time its refreshes took (refreshd's
/// duration histogram) and the view's staleness (sampled every 50 ms) over the window.
async fn budget_one(bench: &Bench, max_load: &'static str) -> Result<BudgetRow> {
    let plan = &bench.plan;
    progress(&format!(
        "budget: max_load {max_load}, {} writes/s for {} s",
        plan.budget_rate, plan.budget_secs
    ));
    let c = connect(&bench.dsn).await?;
    bare_refresh(&c, ATT_VIEW).await?;
    let base = view_sum(&c, ATT_VIEW).await?;
    let cfg = vec![ViewCfg::new(ATT_VIEW, ATT_CHANNEL, "0s", "5s")
        .with_extra(&format!("max_load = \"{max_load}\"\n"))];
    let d = Daemon::start(&bench.dsn, &cfg, "budget").await?;
    let m0 = d.metrics().await?;
    let sampler = Sampler::start(&bench.dsn, ATT_VIEW, Duration::from_millis(50)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let (acks, writers) = spawn_writers(bench, plan.budget_rate, 2, stop.clone());
    // refreshd's own view of the window: pending age and whether the budget holds it.
    let (mut pending_max, mut held, mut polled) = (0.0f64, 0usize, 0usize);
    while start.elapsed() < Duration::from_secs(plan.budget_secs) {
        let m = d.metrics().await?;
        pending_max = pending_max.max(metric(&m, "refreshd_pending_since_seconds", ATT_VIEW));
        let s = d.get("/status").await?;
        polled += 1;
        if s.contains("\"state\":\"budget\"") {
            held += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m1 = d.metrics().await?;
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let mut acks = acks.lock().unwrap().clone();
    acks.sort();
    let total = acks.len() as i64;
    // Drain: the view catches up with every write (so the next row starts exact).
    poll_until(
        Duration::from_millis(5),
        Duration::from_secs(120),
        || async { Ok(view_sum(&c, ATT_VIEW).await? >= base + total) },
    )
    .await?;
    let (samples, _) = sampler.finish().await?;
    let st_ms: Vec<f64> = staleness(&samples, base, &acks, start, end)
        .iter()
        .map(|d| ms(*d))
        .collect();
    let count = metric(&m1, "refreshd_refresh_duration_seconds_count", ATT_VIEW)
        - metric(&m0, "refreshd_refresh_duration_seconds_count", ATT_VIEW);
    let sum = metric(&m1, "refreshd_refresh_duration_seconds_sum", ATT_VIEW)
        - metric(&m0, "refreshd_refresh_duration_seconds_sum", ATT_VIEW);
    d.stop().await;
    let secs = (end - start).as_secs_f64();
    Ok(BudgetRow {
        max_load,
        achieved: acks.iter().filter(|a| **a <= end).count() as f64 / secs,
        secs,
        refreshes: count as u64,
        db_secs: sum,
        mean_refresh_ms: sum / count.max(1.0) * 1000.0,
        st_med: percentile(&st_ms, 50.0),
        st_p99: percentile(&st_ms, 99.0),
        st_max: st_ms.iter().cloned().fold(0.0, f64::max),
        pending_max,
        held_samples: held,
        status_samples: polled,
    })
}

fn render_budget(b: &Bench, rows: &[BudgetRow]) -> String {
    let p = &b.plan;
    let mut o = format!(
        "## Run\n\n| | |\n|---|---|\n| mode | `--budget`{} |\n",
        if p.quick { " `--quick`" } else { "" }
    );
    for (k, v) in &b.report.setup {
        o += &format!("| {k} | {v} |\n");
    }
    o += &format!(
        "\n## Load budget: {ATT_VIEW} under {} single-row inserts/s for {} s (debounce 0s, max_delay 5s)\n\n",
        p.budget_rate, p.budget_secs
    );
    o += "| max_load | achieved writes/s | refreshes | DB time refreshing s | share of wall time | mean refresh ms | staleness ms median / p99 / max | refreshd pending_since max s | /status samples in state budget |\n|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        o += &format!(
            "| {} | {:.1} | {} | {:.1} | {:.1}% | {:.0} | {:.0} / {:.0} / {:.0} | {:.2} | {} of {} |\n",
            r.max_load,
            r.achieved,
            r.refreshes,
            r.db_secs,
            r.db_secs / r.secs * 100.0,
            r.mean_refresh_ms,
            r.st_med,
            r.st_p99,
            r.st_max,
            r.pending_max,
            r.held_samples,
            r.status_samples
        );
    }
    o += "\nDB time refreshing: the sum of refreshd_refresh_duration_seconds over the window (from the first write to the last; a refresh still running at the end is not counted), share = that over the window. Staleness: the age of the oldest committed write the view does not show, sampled every 50 ms over the same window. One daemon per row, 2 writer connections, the view exact before each row starts.\n";
    o
}

// ---------------------------------------------------------------------------------
// 3. Write-path cost: pgbench inserts under each trigger setup, interleaved
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    None,
    /// No trigger; refreshd watches the table's statistics instead.
    Statistics,
    Statement,
    Row,
    Sync,
    /// No trigger, and sql/attendance/005's triggers dropped rather than disabled.
    NoneDropped,
    /// sql/attendance/005's key-sending triggers (issue 11).
    Keyed,
    /// The same, with refreshd applying the keys (a keyed view, debounce 0) next to the
    /// draining LISTEN connection: what writers get with everything running.
    KeyedRefreshd,
    /// The same with debounce 1s (max_delay 5s).
    KeyedRefreshdDebounced,
    /// sql/attendance/004's triggers with refreshd refreshing the materialized view
    /// (debounce 0): today's path with everything running.
    StatementRefreshd,
    /// 005's trigger function without its NOTIFY (a bench copy, diagnostic).
    KeyedNoNotify,
    /// 005's trigger function appending its payload to an unlogged table instead.
    KeyedBuffer,
    /// 005's trigger function without its NOTIFY, SECURITY DEFINER and SET search_path.
    KeyedNoNotifyNoSet,
    /// An empty statement trigger with a transition table: capture and call alone.
    EmptyTransition,
}

const KEYED_TRIGGERS_ON: &str =
    "ALTER TABLE public.member_attendance ENABLE TRIGGER attendance_keys_on_attendance_insert, \
     ENABLE TRIGGER attendance_keys_on_attendance_update, ENABLE TRIGGER attendance_keys_on_attendance_delete, \
     ENABLE TRIGGER attendance_keys_on_attendance_truncate;";

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::None => "no trigger",
            Variant::Statistics => "no trigger; refreshd detect = \"statistics\" polling every 1s",
            Variant::Statement => "sql/ statement-level NOTIFY triggers (refreshd)",
            Variant::Row => "row-level NOTIFY, per-row payload",
            Variant::Sync => "statement trigger running REFRESH CONCURRENTLY",
            Variant::NoneDropped => "no trigger, 005's keyed triggers dropped (not just disabled)",
            Variant::Keyed => "sql/attendance/005 keyed triggers (NOTIFY attendance_keys, transition table, session lookup)",
            Variant::KeyedRefreshd => "005 keyed triggers, refreshd applying the keys (keyed view, debounce 0)",
            Variant::KeyedRefreshdDebounced => {
                "005 keyed triggers, refreshd applying the keys (keyed view, debounce 1s, max_delay 5s)"
            }
            Variant::StatementRefreshd => {
                "004 NOTIFY triggers, refreshd refreshing the materialized view (debounce 0)"
            }
            Variant::KeyedNoNotify => "diagnostic: 005's trigger function with its NOTIFY removed",
            Variant::KeyedNoNotifyNoSet => {
                "diagnostic: 005's trigger function without NOTIFY, SECURITY DEFINER and SET search_path"
            }
            Variant::EmptyTransition => {
                "diagnostic: an empty plpgsql statement trigger with the same transition table"
            }
            Variant::KeyedBuffer => {
                "prototype key buffer: 005's trigger function appending its payload to an unlogged table instead of NOTIFY"
            }
        }
    }
    fn enable_sql(self) -> &'static str {
        match self {
            Variant::None | Variant::Statistics | Variant::NoneDropped => "",
            Variant::KeyedNoNotifyNoSet => {
                "ALTER TABLE public.member_attendance ENABLE TRIGGER bench_keys_no_notify_no_set;"
            }
            Variant::EmptyTransition => {
                "ALTER TABLE public.member_attendance ENABLE TRIGGER bench_empty_transition;"
            }
            Variant::Statement | Variant::StatementRefreshd => {
                "ALTER TABLE public.member_attendance ENABLE TRIGGER refresh_att_stats_on_attendance_insert, \
                 ENABLE TRIGGER refresh_att_stats_on_attendance_update, ENABLE TRIGGER refresh_att_stats_on_attendance_delete;"
            }
            Variant::Row => "ALTER TABLE public.member_attendance ENABLE TRIGGER bench_row_notify;",
            Variant::Sync => "ALTER TABLE public.member_attendance ENABLE TRIGGER bench_sync_refresh;",
            Variant::Keyed | Variant::KeyedRefreshd | Variant::KeyedRefreshdDebounced => {
                KEYED_TRIGGERS_ON
            }
            Variant::KeyedNoNotify => {
                "ALTER TABLE public.member_attendance ENABLE TRIGGER bench_keys_no_notify;"
            }
            Variant::KeyedBuffer => "ALTER TABLE public.member_attendance ENABLE TRIGGER bench_keys_buffer;",
        }
    }
    /// The refreshd that runs during this variant's pgbench runs, if any.
    fn daemon(self) -> Option<(Vec<ViewCfg>, &'static str)> {
        match self {
            // A long debounce keeps its refreshes out of the measurement, as the
            // drained LISTEN connection stands in for refreshd in the NOTIFY rows.
            Variant::Statistics => Some((
                vec![ViewCfg::statistics(ATT_VIEW, "1s", "1h", "1h")],
                "write path, statistics",
            )),
            Variant::KeyedRefreshd => Some((vec![keyed::live_view("0s")], "write path, keyed")),
            Variant::KeyedRefreshdDebounced => Some((
                vec![keyed::live_view("1s")],
                "write path, keyed, debounce 1s",
            )),
            Variant::StatementRefreshd => Some((
                vec![ViewCfg::new(ATT_VIEW, ATT_CHANNEL, "0s", "5s")],
                "write path, materialized view",
            )),
            _ => None,
        }
    }
}

async fn set_variant(c: &Client, v: Variant) -> Result<()> {
    c.batch_execute(&format!(
        "ALTER TABLE public.member_attendance DISABLE TRIGGER USER; {}",
        v.enable_sql()
    ))
    .await?;
    Ok(())
}

async fn write_path(bench: &mut Bench) -> Result<()> {
    let variants = [
        Variant::None,
        Variant::Statistics,
        Variant::Statement,
        Variant::Row,
        Variant::Sync,
    ];
    let (rows, note) = write_path_rounds(bench, &variants).await?;
    bench.report.write_path.extend(rows);
    bench.report.wp_notes.push(note);
    Ok(())
}

/// pgbench runs of the one-row insert under each variant: `wp_rounds` rounds, each
/// running every variant in the order given at every client count (slow drift, such as
/// table growth and autovacuum, hits all alike). Rows per client count in variant
/// order, ratios to the first variant; and the note that describes the runs.
/// What the write-path runs share: the harness's connection, the listener (and its
/// LISTEN statement), 005's trigger definitions, the pgbench script.
struct WpCtx {
    c: Client,
    drain: Client,
    listen: String,
    /// To drop 005's triggers for a run and put them back afterwards.
    keyed_defs: Vec<(String, String)>,
    script: std::path::PathBuf,
}

async fn write_path_rounds(bench: &Bench, variants: &[Variant]) -> Result<(Vec<WpRow>, String)> {
    let plan = bench.plan.clone();
    let c = connect(&bench.dsn).await?;
    // Somebody listens, as refreshd would: notifications are read and dropped.
    let (drain, drained, drain_task) = counting_listener(&bench.dsn).await?;
    let listen = format!(
        "LISTEN {ATT_CHANNEL}; LISTEN bench_rows; LISTEN {}",
        keyed::KEYS_CHANNEL
    );
    drain.batch_execute(&listen).await?;
    let keyed_defs = keyed_trigger_defs(&c).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, format!("{};\n", bench.insert_sql))?;
    let w = WpCtx {
        c,
        drain,
        listen,
        keyed_defs,
        script,
    };
    let mut tps: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); variants.len()]; plan.wp_clients.len()];
    // One unrecorded warm-up run: the first pgbench run after the storms pays for
    // cold caches and autovacuum catching up.
    set_variant(&w.c, Variant::None).await?;
    pgbench(bench, &w.script, 2, plan.wp_secs).await?;
    for round in 0..plan.wp_rounds {
        for (ci, &clients) in plan.wp_clients.iter().enumerate() {
            for (vi, &v) in variants.iter().enumerate() {
                let t = w.one_run(bench, v, clients).await?;
                progress(&format!(
                    "write path: round {}/{} clients {clients} {}: {t:.0} tps",
                    round + 1,
                    plan.wp_rounds,
                    v.label()
                ));
                tps[ci][vi].push(t);
            }
        }
    }
    set_variant(&w.c, Variant::Statement).await?;
    drain_task.abort();
    let rows = wp_rows(&plan, variants, &tps);
    let note = format!(
        "pgbench -n -f insert.sql -c C -j 2 -T {} (one INSERT ... SELECT of one row per transaction); {} round(s), variants interleaved in the order shown, medians; a LISTEN connection read every notification ({} in all; in rows naming refreshd, refreshd was the only listener)",
        plan.wp_secs,
        plan.wp_rounds,
        drained.load(Ordering::Relaxed)
    );
    Ok((rows, note))
}

/// The definitions of 005's keyed triggers on member_attendance, by name.
async fn keyed_trigger_defs(c: &Client) -> Result<Vec<(String, String)>> {
    Ok(c.query(
        "SELECT tgname::text, pg_catalog.pg_get_triggerdef(oid) FROM pg_catalog.pg_trigger \
         WHERE tgrelid = 'public.member_attendance'::regclass AND NOT tgisinternal \
           AND tgname LIKE 'attendance\\_keys\\_on\\_%' ORDER BY tgname",
        &[],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

impl WpCtx {
    /// One pgbench run of variant `v` at `clients`: its TPS.
    async fn one_run(&self, bench: &Bench, v: Variant, clients: u32) -> Result<f64> {
        let c = &self.c;
        set_variant(c, v).await?;
        if v == Variant::NoneDropped {
            for (name, _) in &self.keyed_defs {
                c.batch_execute(&format!(
                    "DROP TRIGGER {} ON public.member_attendance",
                    refreshd::pg::ident::quote_ident(name)
                ))
                .await?;
            }
        }
        // With refreshd running, it is the only listener, as in production:
        // PostgreSQL signals every listening session of the database at each
        // notifying commit, so a second one would cost writers more.
        let daemon = match v.daemon() {
            Some((views, tag)) => {
                self.drain.batch_execute("UNLISTEN *").await?;
                Some(Daemon::start(&bench.dsn, &views, tag).await?)
            }
            None => None,
        };
        let t = pgbench(bench, &self.script, clients, bench.plan.wp_secs).await;
        if let Some(d) = daemon {
            d.stop().await;
            self.drain.batch_execute(&self.listen).await?;
        }
        if v == Variant::NoneDropped {
            for (_, def) in &self.keyed_defs {
                c.batch_execute(def).await?;
            }
        }
        t
    }
}

/// The write-path table's rows: per client count and variant, the TPS median, min,
/// max, and the ratio to the first variant.
fn wp_rows(plan: &Plan, variants: &[Variant], tps: &[Vec<Vec<f64>>]) -> Vec<WpRow> {
    let mut rows = Vec::new();
    for (ci, &clients) in plan.wp_clients.iter().enumerate() {
        let base = median(&tps[ci][0]);
        for (vi, &v) in variants.iter().enumerate() {
            let m = median(&tps[ci][vi]);
            rows.push(WpRow {
                label: v.label().into(),
                clients,
                runs: tps[ci][vi].len(),
                tps_med: m,
                tps_min: min_of(&tps[ci][vi]),
                tps_max: max_of(&tps[ci][vi]),
                ratio: m / base,
            });
        }
    }
    rows
}

async fn pgbench(bench: &Bench, script: &std::path::Path, clients: u32, secs: u64) -> Result<f64> {
    let bin = refreshd::cli::cluster::client_program("pgbench");
    let out = tokio::process::Command::new(bin)
        .args(["-n", "-f"])
        .arg(script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &secs.to_string(),
        ])
        .arg("-h")
        .arg(bench.cluster.socket_dir())
        .args([
            "-p",
            &bench.cluster.port().to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l[6..].split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("no tps in pgbench output")
}

// ---------------------------------------------------------------------------------
// 4. pg_cron next to refreshd under one write stream
// ---------------------------------------------------------------------------------

/// One pg_cron run next to refreshd: what the samplers saw and what each refreshed.
struct CronWindow {
    /// The attendance view's samples (refreshd) and bench.att_cron's (pg_cron).
    att: Vec<(Instant, i64)>,
    cron: Vec<(Instant, i64)>,
    acks: Vec<Instant>,
    start: Instant,
    end: Instant,
    /// refreshd's refreshes of the view during the run, and their seconds.
    rd_count: f64,
    rd_sum: f64,
}

/// pg_cron's finest schedule for `version` (extversion, e.g. "1.4-1" or "1.6"), and
/// whether it has seconds: seconds-granularity schedules arrived in pg_cron 1.5.
fn cron_schedule(version: &str) -> (bool, &'static str) {
    let mut p = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let second_capable = (p.next().unwrap_or(0), p.next().unwrap_or(0)) >= (1, 5);
    let schedule = if second_capable {
        "1 seconds"
    } else {
        "* * * * *"
    };
    (second_capable, schedule)
}

async fn cron(bench: &mut Bench) -> Result<()> {
    let Some(version) = bench.cron_version.clone() else {
        bench.report.cron_note = Some(
            "pg_cron is not installed (`apt-get install -y postgresql-15-cron`); table skipped."
                .into(),
        );
        return Ok(());
    };
    let plan = bench.plan.clone();
    let (second_capable, schedule) = cron_schedule(&version);
    progress(&format!(
        "pg_cron {version} ('{schedule}') on bench.att_cron next to refreshd on {ATT_VIEW}, {} tx/s for {} s",
        plan.cron_rate, plan.cron_secs
    ));
    let c = connect(&bench.dsn).await?;
    bare_refresh(&c, ATT_VIEW).await?;
    bare_refresh(&c, "bench.att_cron").await?;
    let base_att = view_sum(&c, ATT_VIEW).await?;
    let base_cron = view_sum(&c, "bench.att_cron").await?;
    let (debounce, max_delay) = ("1s", "5s");
    let w = cron_window(bench, &c, schedule, debounce, max_delay).await?;
    let runs = c
        .query_one(
            "SELECT count(*), coalesce(sum(extract(epoch FROM end_time - start_time)), 0)::float8 \
             FROM cron.job_run_details WHERE command LIKE '%bench.att_cron%' AND status = 'succeeded'",
            &[],
        )
        .await?;
    let (cron_runs, cron_secs): (i64, f64) = (runs.get(0), runs.get(1));
    for (label, samples, base, refreshes, db) in [
        (
            format!("pg_cron {version}, schedule '{schedule}'"),
            &w.cron,
            base_cron,
            cron_runs as u64,
            cron_secs,
        ),
        (
            format!("refreshd (debounce {debounce}, max_delay {max_delay})"),
            &w.att,
            base_att,
            w.rd_count as u64,
            w.rd_sum,
        ),
    ] {
        let st: Vec<f64> = staleness(samples, base, &w.acks, w.start, w.end)
            .iter()
            .map(|d| ms(*d))
            .collect();
        bench.report.cron.push(CronRow {
            label,
            refreshes,
            db_secs: db,
            med: percentile(&st, 50.0),
            p90: percentile(&st, 90.0),
            max: max_of(&st),
            samples: st.len(),
        });
    }
    bench.report.cron_note = Some(format!(
        "{} tx/s for {} s ({} commits); both views have the same definition over the same tables; staleness sampled every 100 ms{}",
        plan.cron_rate,
        plan.cron_secs,
        w.acks.len(),
        if second_capable { "" } else { ". The installed pg_cron is older than 1.5, so its finest schedule is one minute ('* * * * *'); '1 seconds' needs pg_cron >= 1.5" }
    ));
    Ok(())
}

/// refreshd on the attendance view and pg_cron on bench.att_cron (`schedule`), under
/// the same writes for `cron_secs`, both sampled every 100 ms.
async fn cron_window(
    bench: &Bench,
    c: &Client,
    schedule: &str,
    debounce: &str,
    max_delay: &str,
) -> Result<CronWindow> {
    let plan = &bench.plan;
    let daemon = Daemon::start(
        &bench.dsn,
        &[ViewCfg::new(ATT_VIEW, ATT_CHANNEL, debounce, max_delay)],
        "cron",
    )
    .await?;
    let m0 = daemon.metrics().await?;
    c.execute(
        "SELECT cron.schedule('bench_att_cron', $1, 'REFRESH MATERIALIZED VIEW CONCURRENTLY bench.att_cron')",
        &[&schedule],
    )
    .await?;
    let s_att = Sampler::start(&bench.dsn, ATT_VIEW, Duration::from_millis(100)).await?;
    let s_cron = Sampler::start(&bench.dsn, "bench.att_cron", Duration::from_millis(100)).await?;
    let (start, end, acks) = write_for(bench, plan.cron_rate, 2, plan.cron_secs).await?;
    c.batch_execute("SELECT cron.unschedule('bench_att_cron')")
        .await?;
    let m1 = daemon.metrics().await?;
    daemon.stop().await;
    let (att, _) = s_att.finish().await?;
    let (cron, _) = s_cron.finish().await?;
    Ok(CronWindow {
        att,
        cron,
        acks,
        start,
        end,
        rd_count: metric(&m1, "refreshd_refresh_duration_seconds_count", ATT_VIEW)
            - metric(&m0, "refreshd_refresh_duration_seconds_count", ATT_VIEW),
        rd_sum: metric(&m1, "refreshd_refresh_duration_seconds_sum", ATT_VIEW)
            - metric(&m0, "refreshd_refresh_duration_seconds_sum", ATT_VIEW),
    })
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

struct FreshRow {
    label: String,
    lag: Vec<f64>,
    refresh: Vec<f64>,
}

impl FreshRow {
    fn new(label: &str, lag: Vec<Duration>, refresh: Vec<Duration>) -> FreshRow {
        FreshRow {
            label: label.into(),
            lag: lag.into_iter().map(ms).collect(),
            refresh: refresh.into_iter().map(ms).collect(),
        }
    }
}

struct StormRow {
    label: String,

    achieved: f64,
    refreshes: u64,
    db_secs: f64,
    max_refresh_ms: f64,
    st_med: f64,
    st_p99: f64,
    st_max: f64,
    queue_max: f64,
    to_exact_ms: f64,
    note: String,
}

struct WpRow {
    label: String,
    clients: u32,
    runs: usize,
    tps_med: f64,
    tps_min: f64,
    tps_max: f64,
    ratio: f64,
}

struct CronRow {
    label: String,
    refreshes: u64,
    db_secs: f64,
    med: f64,
    p90: f64,
    max: f64,
    samples: usize,
}

struct FootRow {
    phase: String,
    secs: f64,
    cpu: f64,
    hwm_kib: u64,
}

fn render(b: &Bench) -> String {
    let r = &b.report;
    let mut o = String::new();
    let p = &b.plan;
    o += &run_table_head("Run", if p.quick { "quick (`--quick`)" } else { "full" });
    for (k, v) in &r.setup {
        o += &run_row(k, v);
    }

    o += "\n## 1. Freshness: commit → visible (debounce = 0s)\n\n";
    o += "| view | samples | bare REFRESH CONCURRENTLY ms (median / p90 / p99) | commit → visible ms (median / p90 / p99) | overhead ms (median lag − median refresh) |\n|---|---|---|---|---|\n";
    for f in &r.freshness {
        o += &format!(
            "| {} | {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:.2} |\n",
            f.label,
            f.lag.len(),
            percentile(&f.refresh, 50.0),
            percentile(&f.refresh, 90.0),
            percentile(&f.refresh, 99.0),
            percentile(&f.lag, 50.0),
            percentile(&f.lag, 90.0),
            percentile(&f.lag, 99.0),
            percentile(&f.lag, 50.0) - percentile(&f.refresh, 50.0)
        );
    }
    o += "\nLag is measured by the harness: from the writer's COMMIT acknowledgement until a poller (every 0.3 ms on the small view, 1 ms on the attendance view) sees the change in the view. The bare REFRESH is the harness's own round trip for the same statement, alternated with the lag samples.\n";
    o += &render_storm(p, r);
    o += &render_write_path(r);
    o += &render_cron(r);
    o += &render_footprint(r);
    o
}

/// Section 2: the storm table and its notes.
fn render_storm(p: &Plan, r: &Report) -> String {
    let mut o = String::new();
    o += &format!(
        "\n## 2. Storm: {} single-row insert transactions/s for {} s on {ATT_VIEW}\n\n",
        p.storm_rate, p.storm_secs
    );
    o += "| refresher | achieved tx/s | refreshes run | DB time refreshing s | longest refresh ms | staleness ms median / p99 / max | notification queue max | view exact after last commit ms |\n|---|---|---|---|---|---|---|---|\n";
    for s in &r.storm {
        o += &format!(
            "| {} | {:.0} | {} | {:.1} | {:.0} | {:.0} / {:.0} / {:.0} | {:.6} | {:.0} |\n",
            s.label,
            s.achieved,
            s.refreshes,
            s.db_secs,
            s.max_refresh_ms,
            s.st_med,
            s.st_p99,
            s.st_max,
            s.queue_max,
            s.to_exact_ms
        );
    }
    o += "\n";
    for s in &r.storm {
        o += &format!("- {}: {}\n", s.label, s.note);
    }
    o += &format!("\n{} writer connections; staleness = age of the oldest committed write the view does not show, sampled every 50 ms from the storm's start until the view is exact; refreshes and DB time count from the storm's start until the view is exact (refreshd: its own metrics; naive: the harness's timings). Offered rate {} tx/s.\n", p.storm_writers, p.storm_rate);
    o
}

/// Section 3: the write-path table and its notes.
fn render_write_path(r: &Report) -> String {
    let mut o = String::new();
    o += "\n## 3. Write-path cost: pgbench inserts into member_attendance\n\n";
    o += "| trigger on member_attendance | clients | runs | TPS median (min–max) | ratio to no trigger |\n|---|---|---|---|---|\n";
    for w in &r.write_path {
        o += &format!(
            "| {} | {} | {} | {:.0} ({:.0}–{:.0}) | {:.3} |\n",
            w.label, w.clients, w.runs, w.tps_med, w.tps_min, w.tps_max, w.ratio
        );
    }
    for n in &r.wp_notes {
        o += &format!("\n{n}.\n");
    }
    o
}

/// Section 4: pg_cron's table, or why it was skipped.
fn render_cron(r: &Report) -> String {
    let mut o = String::new();
    o += "\n## 4. pg_cron next to refreshd under one write stream\n\n";
    if r.cron.is_empty() {
        o += &format!("{}\n", r.cron_note.clone().unwrap_or_default());
    } else {
        o += "| refresher | refreshes | DB time refreshing s | staleness ms median / p90 / max | samples |\n|---|---|---|---|---|\n";
        for c in &r.cron {
            o += &format!(
                "| {} | {} | {:.1} | {:.0} / {:.0} / {:.0} | {} |\n",
                c.label, c.refreshes, c.db_secs, c.med, c.p90, c.max, c.samples
            );
        }
        if let Some(n) = &r.cron_note {
            o += &format!("\n{n}.\n");
        }
    }
    o
}

/// Section 5: the refreshd process's footprint.
fn render_footprint(r: &Report) -> String {
    let mut o = String::new();
    o += "\n## 5. Footprint of the refreshd process (target/release/refreshd)\n\n";
    o += "| phase | wall s | CPU s (utime+stime) | CPU % of one core | peak RSS (VmHWM) MiB |\n|---|---|---|---|---|\n";
    for f in &r.footprint {
        o += &format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} |\n",
            f.phase,
            f.secs,
            f.cpu,
            100.0 * f.cpu / f.secs.max(1e-9),
            f.hwm_kib as f64 / 1024.0
        );
    }
    o
}
