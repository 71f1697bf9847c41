//! Keyed refresh (issue 11): `cargo bench --bench harness -- --keyed [--quick]`.
//!
//! Only these measurements, on one throwaway cluster per scale (1 and 10; `--quick`:
//! 0.1 and 1), one after the other, in one run:
//!
//! - K1, commit → visible for one INSERT into public.member_attendance: the
//!   materialized view public.attendance_statistics_summary (REFRESH ... CONCURRENTLY,
//!   today's path) and its keyed twin public.attendance_statistics_live, both
//!   configured in one refreshd (debounce 0), so every insert fires both channels and
//!   one poller sees when each shows the row; then the keyed table alone (the
//!   materialized view's triggers off); next to the bare REFRESH and the bare one-group
//!   recompute, timed by the harness.
//! - K2, write-path throughput (pgbench, 1 and 8 clients, interleaved rounds) with no
//!   trigger, sql/attendance/004's NOTIFY triggers, 005's keyed triggers, statistics
//!   mode, and diagnostics that take the keyed trigger apart. On the scale-1 cluster,
//!   after K1 there (its inserts would otherwise grow the table K1 measures).
//! - K3, the issue's targets, met or missed, with the ratios.

use super::*;
use tokio_postgres::types::Type;

pub const LIVE: &str = "public.attendance_statistics_live";
pub const DEF: &str = "public.attendance_statistics_def";
pub const KEYS_CHANNEL: &str = "attendance_keys";
const KEY: [&str; 2] = ["category_id", "season_id"];

/// Both views' sums in one statement: one poll sees both at the same instant.
const SUMS: &str = "SELECT (SELECT sum(total_attendance_records) FROM public.attendance_statistics_summary)::bigint, \
                           (SELECT sum(total_attendance_records) FROM public.attendance_statistics_live)::bigint";
const LIVE_SUM: &str =
    "SELECT sum(total_attendance_records)::bigint FROM public.attendance_statistics_live";
const GROUP_OF_SESSION: &str =
    "SELECT category_id::text, season_id::text FROM public.training_sessions WHERE id = $1::text::uuid";

/// The keyed view as the daemon is configured for it (sql/attendance/005's header).
pub fn live_view(debounce: &str) -> ViewCfg {
    ViewCfg::keyed(LIVE, DEF, &KEY, KEYS_CHANNEL, debounce, "5s")
}

/// The diagnostics of the write-path table, made from the installed
/// public.attendance_keys_from_member_attendance() itself (so they follow whatever
/// sql/attendance/005 does): the same function with its NOTIFY left out, and with its
/// NOTIFY replaced by appending the same payload to an unlogged table, which is what a
/// NOTIFY-free key buffer would cost writers. Triggers created disabled, for INSERT.
const KEYED_BENCH_SCHEMA: &str = r#"
-- Append-only (no index, no unique constraint: an ON CONFLICT on a hot key would make
-- concurrent writers wait for each other). A consumer would read and delete batches.
CREATE UNLOGGED TABLE bench.key_buffer (payload text);
DO $bench$
DECLARE
    src  text := pg_catalog.pg_get_functiondef('public.attendance_keys_from_member_attendance()'::regprocedure);
    call text := $re$PERFORM\s+pg_catalog\.pg_notify\(\s*'attendance_keys'\s*,\s*v_payload\s*\)\s*;$re$;
BEGIN
    IF src !~ call THEN
        RAISE EXCEPTION 'bench: no "PERFORM pg_catalog.pg_notify(''attendance_keys'', v_payload);" in attendance_keys_from_member_attendance()';
    END IF;
    src := replace(src, 'public.attendance_keys_from_member_attendance()', 'bench.keys_FLAVOUR()');
    EXECUTE replace(regexp_replace(src, call, 'NULL;', 'g'), 'FLAVOUR', 'no_notify');
    EXECUTE replace(regexp_replace(src, call,
        'INSERT INTO bench.key_buffer (payload) VALUES (v_payload);', 'g'), 'FLAVOUR', 'buffer');
    EXECUTE replace(regexp_replace(regexp_replace(src, call, 'NULL;', 'g'),
        '\n\s*(SECURITY DEFINER|SET search_path[^\n]*)', '', 'g'), 'FLAVOUR', 'no_notify_no_set');
END
$bench$;
CREATE FUNCTION bench.empty_transition() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN RETURN NULL; END$$;
CREATE TRIGGER bench_keys_no_notify_no_set AFTER INSERT ON public.member_attendance
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.keys_no_notify_no_set();
ALTER TABLE public.member_attendance DISABLE TRIGGER bench_keys_no_notify_no_set;
CREATE TRIGGER bench_empty_transition AFTER INSERT ON public.member_attendance
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.empty_transition();
ALTER TABLE public.member_attendance DISABLE TRIGGER bench_empty_transition;
CREATE TRIGGER bench_keys_no_notify AFTER INSERT ON public.member_attendance
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.keys_no_notify();
ALTER TABLE public.member_attendance DISABLE TRIGGER bench_keys_no_notify;
CREATE TRIGGER bench_keys_buffer AFTER INSERT ON public.member_attendance
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench.keys_buffer();
ALTER TABLE public.member_attendance DISABLE TRIGGER bench_keys_buffer;
"#;

/// What one scale measured.
struct ScaleResult {
    scale: f64,
    /// Set when the keyed table did not equal its definition after the samples.
    warning: Option<String>,
    /// member_attendance rows in the group the inserts went to.
    group_rows: i64,
    /// EXPLAIN ANALYZE of the definition for that group, and of the whole definition.
    explain_group: String,
    explain_all: String,
    bare_refresh: Vec<f64>,
    mv_lag: Vec<f64>,
    keyed_lag_pair: Vec<f64>,
    keyed_lag_alone: Vec<f64>,
    bare_keyed: Vec<f64>,
    def_select: Vec<f64>,
    /// refreshd's own log: keyed refresh durations and lags (both phases), the
    /// materialized view's refresh durations.
    rd_keyed_ms: Vec<f64>,
    rd_keyed_lag_ms: Vec<f64>,
    rd_mv_ms: Vec<f64>,
    /// refreshd_keyed_keys_total moved by this much over this many keyed_keys refreshes.
    keys_total: f64,
    keyed_refreshes: usize,
    /// Full recomputes after startup (there should be none).
    keyed_all_after_start: usize,
}

#[derive(Default)]
struct KReport {
    setup: Vec<(String, String)>,
    scales: Vec<ScaleResult>,
    write_path: Vec<WpRow>,
    wp_scale: f64,
    wp_note: String,
}

pub async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let _bin = pin_binary()?;
    progress(&format!(
        "refreshd bench: keyed section, {} mode, scales {:?}",
        if plan.quick { "quick" } else { "full" },
        plan.keyed_scales
    ));
    let mut rep = KReport::default();
    rep.setup.push(("refreshd".into(), build_line()));
    // The write path runs once, on the scale-1 cluster (else the first): its inserts
    // fit that cluster's pool of fresh (member, session) pairs at every mode.
    let wp_at = plan
        .keyed_scales
        .iter()
        .position(|&s| s == 1.0)
        .unwrap_or(0);
    for (i, &scale) in plan.keyed_scales.iter().enumerate() {
        let mut p = plan.clone();
        p.scale = scale;
        let bench = setup(p).await?;
        for (k, v) in &bench.report.setup {
            if i == 0 && (k == "PostgreSQL" || k == "cluster") {
                rep.setup.push((k.clone(), v.clone()));
            }
        }
        let data = bench
            .report
            .setup
            .iter()
            .find(|(k, _)| k == "data")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        rep.setup.push((format!("data, scale {scale}"), data));
        let c = connect(&bench.dsn).await?;
        c.batch_execute(KEYED_BENCH_SCHEMA).await?;
        let r = lag(&bench).await?;
        rep.scales.push(r);
        if i == wp_at {
            let variants = [
                Variant::None,
                Variant::NoneDropped,
                Variant::Statistics,
                Variant::Statement,
                Variant::Keyed,
                Variant::EmptyTransition,
                Variant::KeyedNoNotify,
                Variant::KeyedNoNotifyNoSet,
                Variant::KeyedBuffer,
                Variant::StatementRefreshd,
                Variant::KeyedRefreshd,
                Variant::KeyedRefreshdDebounced,
            ];
            progress(&format!("keyed write path at scale {scale}"));
            let (rows, note) = write_path_rounds(&bench, &variants).await?;
            rep.write_path = rows;
            rep.wp_note = note;
            rep.wp_scale = scale;
        }
        drop(c);
        drop(bench); // stops and removes this scale's cluster
    }
    let total = t0.elapsed();
    rep.setup.push((
        "harness wall time".into(),
        format!("{:.1} min", total.as_secs_f64() / 60.0),
    ));
    print!("{}", render(&plan, &rep));
    progress(&format!("done in {:.1} min", total.as_secs_f64() / 60.0));
    Ok(())
}

/// Text parameters for `query_typed`.
fn text<'a>(v: &'a [&'a str]) -> Vec<(&'a (dyn tokio_postgres::types::ToSql + Sync), Type)> {
    v.iter()
        .map(|s| (s as &(dyn tokio_postgres::types::ToSql + Sync), Type::TEXT))
        .collect()
}

/// The group (category_id, season_id) of a training session, as text.
async fn group_of(c: &Client, session: &str) -> Result<(String, String)> {
    let r = c.query_typed(GROUP_OF_SESSION, &text(&[session])).await?;
    let r = r.first().context("no such session")?;
    Ok((r.get(0), r.get(1)))
}

/// The harness's own one-group recompute, the statements refreshd runs for one key
/// (unnamed statements, key values bound as text and cast): BEGIN; DELETE the group's
/// row; INSERT the definition's row of that group; COMMIT. refreshd reads the table's
/// columns from the catalog first, one more round trip.
async fn bare_keyed(c: &Client, group: &(String, String)) -> Result<Duration> {
    let k = [group.0.as_str(), group.1.as_str()];
    let t = Instant::now();
    c.batch_execute("BEGIN").await?;
    c.query_typed(
        "DELETE FROM public.attendance_statistics_live AS t \
         WHERE t.category_id = $1::text::uuid AND t.season_id = $2::text::uuid",
        &text(&k),
    )
    .await?;
    c.query_typed(
        "INSERT INTO public.attendance_statistics_live SELECT * FROM public.attendance_statistics_def AS d \
         WHERE d.category_id = $1::text::uuid AND d.season_id = $2::text::uuid",
        &text(&k),
    )
    .await?;
    c.batch_execute("COMMIT").await?;
    Ok(t.elapsed())
}

/// What PostgreSQL does for `sql` (EXPLAIN ANALYZE, BUFFERS): execution time, parallel
/// workers launched, and per base table the rows its scans returned and how.
async fn explain(c: &Client, sql: &str) -> Result<String> {
    let row = c
        .query_one(
            &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"),
            &[],
        )
        .await?;
    let v: serde_json::Value = row.get(0);
    let top = &v[0];
    let mut scans: Vec<(String, String, f64)> = Vec::new();
    let mut workers = 0i64;
    fn walk(n: &serde_json::Value, scans: &mut Vec<(String, String, f64)>, workers: &mut i64) {
        *workers += n["Workers Launched"].as_i64().unwrap_or(0);
        if let Some(rel) = n["Relation Name"].as_str() {
            // Rows per loop times loops; parallel workers are counted in the loops.
            let rows = n["Actual Rows"].as_f64().unwrap_or(0.0)
                * n["Actual Loops"].as_f64().unwrap_or(1.0);
            let how = match n["Index Name"].as_str() {
                Some(i) => format!("{} {i}", n["Node Type"].as_str().unwrap_or("?")),
                None => n["Node Type"].as_str().unwrap_or("?").to_string(),
            };
            scans.push((rel.to_string(), how, rows));
        }
        if let Some(children) = n["Plans"].as_array() {
            for ch in children {
                walk(ch, scans, workers);
            }
        }
    }
    walk(&top["Plan"], &mut scans, &mut workers);
    let mut by_table: Vec<String> = Vec::new();
    for (rel, how, rows) in &scans {
        by_table.push(format!("{rel} {rows:.0} rows ({how})"));
    }
    Ok(format!(
        "{:.1} ms, {} parallel worker(s); {}",
        top["Execution Time"].as_f64().unwrap_or(f64::NAN),
        workers,
        by_table.join(", ")
    ))
}

/// The definition restricted to one group, read only (what the INSERT above computes).
async fn def_select(c: &Client, group: &(String, String)) -> Result<Duration> {
    let k = [group.0.as_str(), group.1.as_str()];
    let t = Instant::now();
    c.query_typed(
        "SELECT * FROM public.attendance_statistics_def AS d \
         WHERE d.category_id = $1::text::uuid AND d.season_id = $2::text::uuid",
        &text(&k),
    )
    .await?;
    Ok(t.elapsed())
}

async fn set_triggers(c: &Client, mv: bool, keyed: bool) -> Result<()> {
    c.batch_execute(&format!(
        "ALTER TABLE public.member_attendance DISABLE TRIGGER USER; {} {}",
        if mv {
            Variant::Statement.enable_sql()
        } else {
            ""
        },
        if keyed { KEYED_TRIGGERS_ON } else { "" }
    ))
    .await?;
    Ok(())
}

/// The connections and prepared statements of the K1 samples.
struct Lag {
    writer: Client,
    poller: Client,
    /// The harness's own connection: its writes (before each bare refresh) reach
    /// neither channel.
    bare: Client,
    insert: tokio_postgres::Statement,
    bare_insert: tokio_postgres::Statement,
    sums: tokio_postgres::Statement,
    live_sum: tokio_postgres::Statement,
    /// The training session of the last insert.
    last_session: String,
}

/// K1a's samples: commit → visible in the view and in the keyed table, and the bare
/// REFRESH of the view between samples.
struct PairSamples {
    mv_lag: Vec<f64>,
    keyed_lag_pair: Vec<f64>,
    bare_refresh_ms: Vec<f64>,
}

/// K1b's samples: commit → visible in the keyed table alone, the harness's one-group
/// recompute and the definition's one-group SELECT.
struct AloneSamples {
    keyed_lag_alone: Vec<f64>,
    bare_keyed_ms: Vec<f64>,
    def_ms: Vec<f64>,
}

/// The written group seen by PostgreSQL: its plans and size.
struct GroupFacts {
    explain_group: String,
    explain_all: String,
    group_rows: i64,
}

async fn lag(bench: &Bench) -> Result<ScaleResult> {
    let plan = &bench.plan;
    let c = connect(&bench.dsn).await?;
    set_triggers(&c, true, true).await?;
    let views = vec![
        ViewCfg::new(ATT_VIEW, ATT_CHANNEL, "0s", "5s"),
        live_view("0s"),
    ];
    let daemon = Daemon::start(&bench.dsn, &views, "keyed side by side").await?;
    let m0 = daemon.metrics().await?;
    let log0 = daemon.refresh_log().len();
    let mut l = Lag::open(bench).await?;

    // K1a: both views in one refreshd, the same writes, interleaved with the bare
    // REFRESH of the materialized view.
    let n = plan.keyed_pair_samples;
    progress(&format!(
        "keyed, scale {}: {n} inserts, {ATT_VIEW} and {LIVE} side by side",
        plan.scale
    ));
    let pair = l.pair_samples(&daemon, n).await?;
    let log_pair = daemon.refresh_log();

    // K1b: the keyed table alone: the materialized view's triggers off, so its channel
    // is silent and only the keyed refresh runs; interleaved with the harness's own
    // one-group recompute and the definition's one-group SELECT.
    set_triggers(&c, false, true).await?;
    let n = plan.keyed_alone_samples;
    progress(&format!(
        "keyed, scale {}: {n} inserts, {LIVE} alone",
        plan.scale
    ));
    let alone = l.alone_samples(n).await?;
    let m1 = daemon.metrics().await?;
    let log = daemon.refresh_log();
    daemon.stop().await;

    let facts = group_facts(&c, &l.last_session).await?;
    let diff = keyed_diff(&c).await?;
    set_triggers(&c, true, false).await?;

    let is_live = |r: &&LogRefresh| r.view.contains("attendance_statistics_live");
    let keyed_runs: Vec<&LogRefresh> = log[log0..]
        .iter()
        .filter(is_live)
        .filter(|r| r.kind == "keyed_keys" && r.reason == "notify")
        .collect();
    let keyed_all_after_start = log[log0..]
        .iter()
        .filter(is_live)
        .filter(|r| r.kind == "keyed_all")
        .count();
    let rd_mv_ms = log_pair[log0..]
        .iter()
        .filter(|r| r.view.contains("attendance_statistics_summary"))
        .map(|r| r.duration_ms)
        .collect();
    let metric_name = "refreshd_keyed_keys_total";
    Ok(ScaleResult {
        scale: plan.scale,
        warning: (diff != 0).then(|| {
            format!("WARNING: the keyed table differed from its definition in {diff} row(s) after the samples")
        }),
        group_rows: facts.group_rows,
        explain_group: facts.explain_group,
        explain_all: facts.explain_all,
        bare_refresh: pair.bare_refresh_ms,
        mv_lag: pair.mv_lag,
        keyed_lag_pair: pair.keyed_lag_pair,
        keyed_lag_alone: alone.keyed_lag_alone,
        bare_keyed: alone.bare_keyed_ms,
        def_select: alone.def_ms,
        rd_keyed_ms: keyed_runs.iter().map(|r| r.duration_ms).collect(),
        rd_keyed_lag_ms: keyed_runs.iter().map(|r| r.lag_ms).collect(),
        rd_mv_ms,
        keys_total: metric(&m1, metric_name, "attendance_statistics_live")
            - metric(&m0, metric_name, "attendance_statistics_live"),
        keyed_refreshes: keyed_runs.len(),
        keyed_all_after_start,
    })
}

/// (the view's sum, the keyed table's sum) from one row of [`SUMS`].
fn read_sums(row: tokio_postgres::Row) -> (i64, i64) {
    (
        row.get::<_, Option<i64>>(0).unwrap_or(0),
        row.get::<_, Option<i64>>(1).unwrap_or(0),
    )
}

impl Lag {
    async fn open(bench: &Bench) -> Result<Lag> {
        let writer = connect(&bench.dsn).await?;
        let poller = connect(&bench.dsn).await?;
        let bare = connect(&bench.dsn).await?;
        // The harness's own writes (before each bare refresh) reach neither channel.
        bare.batch_execute("SET session_replication_role = replica")
            .await?;
        let returning = format!("{} RETURNING training_session_id::text", bench.insert_sql);
        let insert = writer.prepare(&returning).await?;
        let bare_insert = bare.prepare(&returning).await?;
        let sums = poller.prepare(SUMS).await?;
        let live_sum = poller.prepare(LIVE_SUM).await?;
        Ok(Lag {
            writer,
            poller,
            bare,
            insert,
            bare_insert,
            sums,
            live_sum,
            last_session: String::new(),
        })
    }

    /// K1a: `n` inserts, each timed until both the view and the keyed table show it,
    /// then one bare insert and the bare REFRESH.
    async fn pair_samples(&mut self, daemon: &Daemon, n: usize) -> Result<PairSamples> {
        let (mut mv_lag, mut keyed_lag_pair, mut bare_refresh_ms) =
            (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let (b_mv, b_live) = read_sums(self.poller.query_one(&self.sums, &[]).await?);
            self.last_session = self.writer.query_one(&self.insert, &[]).await?.get(0);
            let acked = Instant::now();
            let (mut t_mv, mut t_live) = (None, None);
            let deadline = acked + Duration::from_secs(120);
            while t_mv.is_none() || t_live.is_none() {
                let (mv, live) = read_sums(self.poller.query_one(&self.sums, &[]).await?);
                let now = Instant::now();
                if t_mv.is_none() && mv > b_mv {
                    t_mv = Some(now);
                }
                if t_live.is_none() && live > b_live {
                    t_live = Some(now);
                }
                if now > deadline {
                    bail!(
                        "sample {i}: the insert did not become visible within 120 s (view {}, keyed {}); refreshd log:\n{}",
                        t_mv.is_some(),
                        t_live.is_some(),
                        daemon.log()
                    );
                }
                // A blocking sleep, as in poll_until: tokio's timer has 1 ms granularity.
                std::thread::sleep(Duration::from_millis(1));
            }
            mv_lag.push(ms(t_mv.unwrap() - acked));
            keyed_lag_pair.push(ms(t_live.unwrap() - acked));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s: String = self.bare.query_one(&self.bare_insert, &[]).await?.get(0);
            bare_refresh_ms.push(ms(bare_refresh(&self.bare, ATT_VIEW).await?));
            // Keep the keyed table exact too (the bare insert notified nobody).
            bare_keyed(&self.bare, &group_of(&self.bare, &s).await?).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(PairSamples {
            mv_lag,
            keyed_lag_pair,
            bare_refresh_ms,
        })
    }

    /// K1b: `n` inserts, each timed until the keyed table shows it, then one bare insert,
    /// its one-group recompute and the definition's one-group SELECT.
    async fn alone_samples(&mut self, n: usize) -> Result<AloneSamples> {
        let (mut keyed_lag_alone, mut bare_keyed_ms, mut def_ms) =
            (Vec::new(), Vec::new(), Vec::new());
        let (poller, live_sum) = (&self.poller, &self.live_sum);
        for _ in 0..n {
            let base: i64 = poller
                .query_one(live_sum, &[])
                .await?
                .get::<_, Option<i64>>(0)
                .unwrap_or(0);
            self.last_session = self.writer.query_one(&self.insert, &[]).await?.get(0);
            let acked = Instant::now();
            let seen = poll_until(
                Duration::from_millis(1),
                Duration::from_secs(60),
                || async {
                    Ok(poller
                        .query_one(live_sum, &[])
                        .await?
                        .get::<_, Option<i64>>(0)
                        .unwrap_or(0)
                        > base)
                },
            )
            .await?;
            keyed_lag_alone.push(ms(seen - acked));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s: String = self.bare.query_one(&self.bare_insert, &[]).await?.get(0);
            let g = group_of(&self.bare, &s).await?;
            bare_keyed_ms.push(ms(bare_keyed(&self.bare, &g).await?));
            def_ms.push(ms(def_select(&self.bare, &g).await?));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(AloneSamples {
            keyed_lag_alone,
            bare_keyed_ms,
            def_ms,
        })
    }
}

/// The group of the last insert's session: EXPLAIN ANALYZE of the definition for it
/// and of the whole definition, and its member_attendance rows.
async fn group_facts(c: &Client, last_session: &str) -> Result<GroupFacts> {
    let g = group_of(c, last_session).await?;
    // The uuids come from the database itself; as literals they make the plans the
    // same as with refreshd's bound constants.
    let explain_group = explain(
        c,
        &format!(
            "SELECT * FROM {DEF} AS d WHERE d.category_id = '{}'::uuid AND d.season_id = '{}'::uuid",
            g.0, g.1
        ),
    )
    .await?;
    let explain_all = explain(c, &format!("SELECT * FROM {DEF}")).await?;
    let group_rows: i64 = c
        .query_typed(
            "SELECT count(*) FROM public.member_attendance ma \
             JOIN public.training_sessions ts ON ts.id = ma.training_session_id \
             WHERE ts.category_id = $1::text::uuid AND ts.season_id = $2::text::uuid",
            &text(&[g.0.as_str(), g.1.as_str()]),
        )
        .await?
        .first()
        .context("count")?
        .get(0);
    Ok(GroupFacts {
        explain_group,
        explain_all,
        group_rows,
    })
}

/// Exactness check: rows in which the keyed table differs from its definition (bar
/// last_refreshed), with a warning when there are any.
async fn keyed_diff(c: &Client) -> Result<i64> {
    let diff: i64 = c.query_one(
        "SELECT count(*) FROM ( \
           (SELECT to_jsonb(l) - 'last_refreshed' FROM public.attendance_statistics_live l \
            EXCEPT ALL SELECT to_jsonb(d) - 'last_refreshed' FROM public.attendance_statistics_def d) \
           UNION ALL \
           (SELECT to_jsonb(d) - 'last_refreshed' FROM public.attendance_statistics_def d \
            EXCEPT ALL SELECT to_jsonb(l) - 'last_refreshed' FROM public.attendance_statistics_live l)) x",
        &[],
    )
    .await?
    .get(0);
    if diff != 0 {
        progress(&format!(
            "WARNING: {LIVE} differs from {DEF} in {diff} row(s) after the samples"
        ));
    }
    Ok(diff)
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

fn cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    format!(
        "{:.1} / {:.1} / {:.1} ({})",
        median(v),
        percentile(v, 90.0),
        max,
        v.len()
    )
}

fn render(plan: &Plan, r: &KReport) -> String {
    let mut o = String::new();
    o += "## Keyed refresh (issue 11)\n\n### Run\n\n| | |\n|---|---|\n";
    o += &run_row(
        "mode",
        if plan.quick {
            "keyed, quick (`-- --keyed --quick`)"
        } else {
            "keyed, full (`-- --keyed`)"
        },
    );
    for (k, v) in &r.setup {
        o += &run_row(k, v);
    }
    o += &render_k1(&r.scales);
    o += &render_k2(r);
    o += &render_k3(plan, r);
    o
}

/// K1's table head: a column per scale, and their ratio when there are two or more.
fn k1_head(sc: &[ScaleResult]) -> String {
    let mut o = String::from("| measurement | ");
    o += &sc
        .iter()
        .map(|s| format!("scale {}: ms median / p90 / max (samples)", s.scale))
        .collect::<Vec<_>>()
        .join(" | ");
    let growth = sc.len() >= 2;
    if growth {
        o += &format!(
            " | scale {} / scale {} (medians)",
            sc[sc.len() - 1].scale,
            sc[0].scale
        );
    }
    o += " |\n|---|";
    o += &"---|".repeat(sc.len() + growth as usize);
    o += "\n";
    o
}

/// K1's rows of timings, one per measurement.
fn k1_rows(sc: &[ScaleResult]) -> String {
    let growth = sc.len() >= 2;
    type Pick = fn(&ScaleResult) -> &Vec<f64>;
    let rows: [(&str, Pick); 9] = [
        (
            "bare `REFRESH MATERIALIZED VIEW CONCURRENTLY` of the summary view (harness, alternated with the samples)",
            |s| &s.bare_refresh,
        ),
        (
            "**refreshd, materialized view** `attendance_statistics_summary` (channel refresh_attendance_stats): commit → visible",
            |s| &s.mv_lag,
        ),
        (
            "**refreshd, keyed table** `attendance_statistics_live` (channel attendance_keys), same writes, same daemon: commit → visible",
            |s| &s.keyed_lag_pair,
        ),
        (
            "**refreshd, keyed table alone** (004's triggers off, no REFRESH running beside it): commit → visible",
            |s| &s.keyed_lag_alone,
        ),
        (
            "bare one-group recompute (harness: BEGIN; DELETE the group; INSERT … FROM the definition WHERE key; COMMIT)",
            |s| &s.bare_keyed,
        ),
        (
            "the definition restricted to one group, SELECT only (harness)",
            |s| &s.def_select,
        ),
        (
            "refreshd's keyed refreshes (its log: duration_ms, kind keyed_keys, both phases)",
            |s| &s.rd_keyed_ms,
        ),
        (
            "refreshd's keyed refreshes (its log: lag_ms, notification received → committed)",
            |s| &s.rd_keyed_lag_ms,
        ),
        (
            "refreshd's REFRESH of the summary view (its log: duration_ms)",
            |s| &s.rd_mv_ms,
        ),
    ];
    let mut o = String::new();
    for (label, pick) in rows {
        o += &format!("| {label} |");
        for s in sc {
            o += &format!(" {} |", cell(pick(s)));
        }
        if growth {
            let (a, b) = (pick(&sc[0]), pick(&sc[sc.len() - 1]));
            o += &format!(" {:.2}× |", median(b) / median(a));
        }
        o += "\n";
    }
    o
}

/// K1: commit → visible per scale, the written group's size, the notes per scale.
fn render_k1(sc: &[ScaleResult]) -> String {
    let mut o = String::from(
        "\n### K1. Commit → visible for one INSERT into member_attendance (debounce = 0s)\n\n",
    );
    o += &k1_head(sc);
    o += &k1_rows(sc);
    o += "| member_attendance rows in the group the inserts went to |";
    for s in sc {
        o += &format!(" {} |", s.group_rows);
    }
    if sc.len() >= 2 {
        o += &format!(
            " {:.2}× |",
            sc[sc.len() - 1].group_rows as f64 / sc[0].group_rows.max(1) as f64
        );
    }
    o += "\n\n";
    for s in sc {
        o += &format!(
            "- scale {}: {} keyed refreshes of kind keyed_keys recomputed {} key(s) in all (`refreshd_keyed_keys_total`), {:.2} per refresh; {} full recompute(s) (keyed_all) after startup.\n",
            s.scale,
            s.keyed_refreshes,
            s.keys_total,
            s.keys_total / s.keyed_refreshes.max(1) as f64,
            s.keyed_all_after_start
        );
        o += &format!(
            "- scale {}: EXPLAIN ANALYZE of the definition for the written group: {}. Of the whole definition (what REFRESH computes): {}.\n",
            s.scale, s.explain_group, s.explain_all
        );
        if let Some(w) = &s.warning {
            o += &format!("- scale {}: {w}\n", s.scale);
        }
    }
    o += "\nLag: from the writer's COMMIT acknowledgement until a poller sees the view's or the table's sum(total_attendance_records) grow (every 1 ms; side by side, one statement reads both). Side by side, refreshd runs both refreshes at once (max_concurrent_refreshes = 2): the keyed one shares the 2 cores with the REFRESH. Between samples the harness inserts one row with session_replication_role = replica (no trigger fires) and applies it itself, timing the bare REFRESH (side by side) or the bare one-group recompute (alone).\n";
    o
}

/// K2: the write path's throughput per trigger variant.
fn render_k2(r: &KReport) -> String {
    let mut o = format!(
        "\n### K2. Write-path cost with the keyed triggers: pgbench inserts into member_attendance (scale {})\n\n",
        r.wp_scale
    );
    o += "| trigger on member_attendance | clients | runs | TPS median (min–max) | ratio to no trigger |\n|---|---|---|---|---|\n";
    for w in &r.write_path {
        o += &format!(
            "| {} | {} | {} | {:.0} ({:.0}–{:.0}) | {:.3} |\n",
            w.label, w.clients, w.runs, w.tps_med, w.tps_min, w.tps_max, w.ratio
        );
    }
    o += &format!("\n{}. \"no trigger\" has 005's triggers disabled, as every other row has them unless it names them. Rows naming refreshd start it before each pgbench run (its startup refresh done) and stop it after.\n", r.wp_note);
    o
}

/// K3: the issue's targets.
fn render_k3(plan: &Plan, r: &KReport) -> String {
    let sc = &r.scales;
    let mut o = String::from(
        "\n### K3. Targets (issue 11)\n\n| target | result | verdict |\n|---|---|---|\n",
    );
    // The issue's scale 1 when this run has it (a quick run starts at 0.1).
    if let Some(s1) = sc.iter().find(|s| s.scale == 1.0).or(sc.first()) {
        let bare = median(&s1.bare_refresh);
        let pair = median(&s1.keyed_lag_pair);
        let alone = median(&s1.keyed_lag_alone);
        o += &format!(
            "| keyed median lag ≤ 1/20 of the bare REFRESH at scale {} | bare REFRESH {bare:.1} ms; keyed lag side by side {pair:.1} ms = 1/{:.1}, alone {alone:.1} ms = 1/{:.1} | {} |\n",
            s1.scale,
            bare / pair,
            bare / alone,
            verdict(pair * 20.0 <= bare, alone * 20.0 <= bare)
        );
    }
    if sc.len() >= 2 {
        let (a, b) = (&sc[0], &sc[sc.len() - 1]);
        let gp = median(&b.keyed_lag_pair) / median(&a.keyed_lag_pair);
        let ga = median(&b.keyed_lag_alone) / median(&a.keyed_lag_alone);
        o += &format!(
            "| keyed lag grows ≤ 2× from scale {} to {} | side by side {:.1} → {:.1} ms = {gp:.2}×; alone {:.1} → {:.1} ms = {ga:.2}× | {} |\n",
            a.scale,
            b.scale,
            median(&a.keyed_lag_pair),
            median(&b.keyed_lag_pair),
            median(&a.keyed_lag_alone),
            median(&b.keyed_lag_alone),
            verdict(gp <= 2.0, ga <= 2.0)
        );
    }
    let tps = |v: Variant, c: u32| {
        r.write_path
            .iter()
            .find(|w| w.label == v.label() && w.clients == c)
            .map(|w| w.tps_med)
    };
    let max_clients = plan.wp_clients.iter().copied().max().unwrap_or(8);
    if let (Some(k), Some(s)) = (
        tps(Variant::Keyed, max_clients),
        tps(Variant::Statement, max_clients),
    ) {
        let ratio = k / s;
        o += &format!(
            "| keyed triggers ≥ 0.9× the statement NOTIFY triggers' throughput, {max_clients} clients | {k:.0} vs {s:.0} tps = {ratio:.3}× | {} |\n",
            if ratio >= 0.9 { "met" } else { "**missed**" }
        );
    }
    if plan.quick {
        o += "\n(Quick run: smaller scales and fewer samples than the targets ask for; the verdicts are indicative only.)\n";
    }
    o
}

fn verdict(pair: bool, alone: bool) -> &'static str {
    match (pair, alone) {
        (true, true) => "met",
        (false, true) => "met alone, **missed** side by side",
        (true, false) => "met side by side, **missed** alone",
        (false, false) => "**missed**",
    }
}
