//! What refreshd's change capture costs writers (SPEC "Change capture", issue 20):
//! `cargo bench --bench harness -- --capture [--capture-secs N] [--capture-rounds N]`.
//!
//! One throwaway cluster with a fact table of the kind dashboards are built on:
//! `shop.sales`, partitioned by month (12 partitions, 1M rows), and one materialized
//! view over it joined through two dimensions and grouped into 12 groups, with a unique
//! index. `refreshd init --schema shop --apply` (the release binary) installs the
//! capture and prints the config the daemon runs on. pgbench then sends single-row
//! INSERT transactions at 1 and 8 clients under each variant below, interleaved in
//! rounds (the same pgbench call as the write-path section, `pgbench()`), medians:
//!
//! - no trigger at all on the fact table (the baseline);
//! - an empty plpgsql statement trigger (diagnostic: the trigger call alone);
//! - a statement trigger doing a plain `pg_notify(channel, '')` on every statement:
//!   what `init` installed before (written here), with a LISTEN connection reading
//!   every notification, standing in for refreshd;
//! - refreshd's capture as `init --apply` installs it, with no refreshd running (the
//!   channel lock is never held: writers must never notify; a LISTEN connection
//!   counts what arrives);
//! - the same with a real refreshd on init's config, refreshing the view: refreshd is
//!   the only listener; its `/metrics` give the notifications it received and the
//!   refreshes it ran, and after each run the harness waits until the view equals its
//!   definition.
//!
//! Between runs the rows a run inserted are deleted and the table vacuumed, so every
//! run (and every refresh) sees the same table size.

use super::*;

const SCHEMA: &str = "shop";
const FACT: &str = "shop.sales";
const VIEW: &str = "shop.sales_by_category";
/// Rows of the fact table (a full REFRESH CONCURRENTLY of the view is timed at setup).
const FACT_ROWS: i64 = 1_000_000;

const SHOP_SQL: &str = r#"
CREATE SCHEMA shop;
CREATE TABLE shop.categories (id int PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE shop.products (
    id int PRIMARY KEY,
    category_id int NOT NULL REFERENCES shop.categories,
    name text NOT NULL
);
CREATE TABLE shop.stores (id int PRIMARY KEY, region text NOT NULL);
-- No foreign keys on the fact table: their per-row RI triggers would add to every
-- variant's cost alike and make the capture look relatively cheaper.
CREATE TABLE shop.sales (
    id bigserial,
    sold_on date NOT NULL,
    product_id int NOT NULL,
    store_id int NOT NULL,
    quantity int NOT NULL,
    amount numeric(12, 2) NOT NULL,
    PRIMARY KEY (id, sold_on)
) PARTITION BY RANGE (sold_on);
DO $$BEGIN
  FOR m IN 0..11 LOOP
    EXECUTE format('CREATE TABLE shop.sales_2026_%s PARTITION OF shop.sales FOR VALUES FROM (%L) TO (%L)',
                   lpad((m + 1)::text, 2, '0'),
                   date '2026-01-01' + make_interval(months => m),
                   date '2026-01-01' + make_interval(months => m + 1));
  END LOOP;
END$$;
INSERT INTO shop.categories SELECT g, 'category ' || lpad(g::text, 2, '0') FROM generate_series(1, 12) g;
INSERT INTO shop.products SELECT g, 1 + g % 12, 'product ' || g FROM generate_series(1, 1000) g;
INSERT INTO shop.stores SELECT g, 'region ' || g % 5 FROM generate_series(1, 50) g;
"#;

const VIEW_SQL: &str = r#"
CREATE MATERIALIZED VIEW shop.sales_by_category AS
    SELECT c.name AS category, count(*) AS sales, sum(s.quantity) AS quantity, sum(s.amount) AS revenue
    FROM shop.sales s
    JOIN shop.products p ON p.id = s.product_id
    JOIN shop.categories c ON c.id = p.category_id
    GROUP BY c.name;
CREATE UNIQUE INDEX sales_by_category_pk ON shop.sales_by_category (category);
-- The baseline: the statement NOTIFY trigger `init` wrote before refreshd's capture
-- function, and an empty statement trigger (diagnostic). Created per variant.
CREATE FUNCTION public.bench_plain_notify() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN PERFORM pg_catalog.pg_notify(TG_ARGV[0], ''); RETURN NULL; END$$;
CREATE FUNCTION public.bench_empty() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN RETURN NULL; END$$;
"#;

/// One single-row INSERT per transaction, into the root (rows land in all 12 months).
const INSERT_SCRIPT: &str =
    "\\set p random(1, 1000)\n\\set st random(1, 50)\n\\set d random(0, 364)\n\
INSERT INTO shop.sales (sold_on, product_id, store_id, quantity, amount) \
VALUES (date '2026-01-01' + :d, :p, :st, 1 + :p % 5, 9.99);\n";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Cap {
    None,
    Empty,
    PlainNotify,
    RefreshdCaptureAlone,
    RefreshdCaptureRunning,
    /// (c) with debounce and max_delay of an hour: armed, but no refresh in the run.
    RefreshdCaptureParked,
}

impl Cap {
    fn label(self) -> &'static str {
        match self {
            Cap::None => "(a) no trigger",
            Cap::Empty => "(e) diagnostic: empty plpgsql statement trigger",
            Cap::PlainNotify => {
                "(b) statement trigger, plain pg_notify on every statement (init's former capture), a LISTEN connection reading"
            }
            Cap::RefreshdCaptureAlone => {
                "(d) refreshd.notify_changed() as init --apply installs it, no refreshd running"
            }
            Cap::RefreshdCaptureRunning => {
                "(c) refreshd.notify_changed() as init --apply installs it, refreshd running on init's config"
            }
            Cap::RefreshdCaptureParked => {
                "(f) diagnostic: (c) with debounce = max_delay = 1h (refreshd listening and armed, no refresh during the run)"
            }
        }
    }
}

/// What one run of one variant measured.
#[derive(Default, Clone)]
struct Run {
    tps: f64,
    /// Notifications: refreshd's counter (variant c) or the LISTEN connection's.
    notifications: f64,
    refreshes: f64,
    refresh_secs: f64,
    daemon_cpu: f64,
    /// Seconds from pgbench's end until the view equalled its definition (c only);
    /// None when it did not within the deadline.
    to_exact: Option<f64>,
    load1: f64,
}

/// The variants, in the order of each round.
const VARIANTS: [Cap; 6] = [
    Cap::None,
    Cap::Empty,
    Cap::PlainNotify,
    Cap::RefreshdCaptureAlone,
    Cap::RefreshdCaptureRunning,
    Cap::RefreshdCaptureParked,
];

/// pgbench's client counts.
const CLIENTS: [u32; 2] = [1, 8];

/// The loaded shop: its cluster, a connection, and what loading measured.
struct Shop {
    bench: Bench,
    c: Client,
    base_id: i64,
    load_secs: f64,
    /// Bare REFRESH CONCURRENTLY of the view, 5 times.
    bare: Vec<f64>,
    /// The view's definition, to compare it with.
    definition: String,
    /// The cluster's settings, "name=value, ...".
    settings: String,
}

/// What `refreshd init --schema shop --apply` did: the view's entry (and the parked
/// variant's), a summary, refreshd's triggers on the fact table and their channel.
struct Init {
    view_cfg: ViewCfg,
    parked_cfg: ViewCfg,
    summary: String,
    ours: Vec<String>,
    fact_channel: String,
}

/// What the runs share.
struct Ctx {
    shop: Shop,
    init: Init,
    /// The LISTEN connection of the variants without refreshd, its LISTEN statement,
    /// and how many notifications it has read.
    drain: Client,
    listen: String,
    drained: Arc<AtomicU64>,
    script: std::path::PathBuf,
}

pub async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let bin_dir = pin_binary()?;
    let bin = bin_dir.path().join("refreshd");
    let secs = plan.capture_secs;
    let rounds = plan.capture_rounds;
    progress(&format!(
        "refreshd bench: capture cost, {rounds} round(s) of {secs} s per run"
    ));
    let shop = load_shop(&plan).await?;
    let init = Init::run(&bin, &shop).await?;
    // Somebody listens in the variants without refreshd, as refreshd would.
    let (drain, drained, drain_task) = counting_listener(&shop.bench.dsn).await?;
    let listen = format!(
        "LISTEN {}",
        refreshd::pg::ident::quote_ident(&init.fact_channel)
    );
    drain.batch_execute(&listen).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, INSERT_SCRIPT)?;
    let ctx = Ctx {
        shop,
        init,
        drain,
        listen,
        drained,
        script,
    };
    let runs = ctx.all_rounds(secs, rounds).await?;
    drain_task.abort();
    let pg: String = ctx
        .shop
        .c
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    let total = t0.elapsed();
    let mut o = run_table(&plan, &ctx, &pg, &runs, total);
    o += &results_table(secs, rounds, &ctx.init.fact_channel, &runs);
    print!("{o}");
    progress(&format!("done in {:.1} min", total.as_secs_f64() / 60.0));
    Ok(())
}

/// A throwaway cluster with the shop: the fact table loaded, the view created, its
/// bare refresh timed, its definition and the cluster's settings read.
async fn load_shop(plan: &Plan) -> Result<Shop> {
    progress("starting throwaway cluster");
    let bench = Bench::on_new_cluster(plan, 200).await?;
    let c = connect(&bench.dsn).await?;
    c.batch_execute(SHOP_SQL).await?;
    progress(&format!("loading {FACT_ROWS} rows into {FACT}"));
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO shop.sales (sold_on, product_id, store_id, quantity, amount) \
         SELECT date '2026-01-01' + (g % 365), 1 + (g::bigint * 7919) % 1000, 1 + g % 50, 1 + g % 5, (g % 10000) / 100.0 \
         FROM generate_series(1, {FACT_ROWS}) g"
    ))
    .await?;
    c.batch_execute(VIEW_SQL).await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    let load_secs = t.elapsed().as_secs_f64();
    let base_id: i64 = c
        .query_one("SELECT max(id) FROM shop.sales", &[])
        .await?
        .get(0);
    let mut bare = Vec::new();
    for _ in 0..5 {
        bare.push(ms(bare_refresh(&c, VIEW).await?));
    }
    let definition: String = c
        .query_one(
            "SELECT pg_catalog.pg_get_viewdef($1::text::regclass)",
            &[&VIEW],
        )
        .await?
        .get(0);
    let definition = definition.trim().trim_end_matches(';').to_string();
    let settings = settings(&c).await?;
    Ok(Shop {
        bench,
        c,
        base_id,
        load_secs,
        bare,
        definition,
        settings,
    })
}

/// The cluster's settings that matter here, "name=value, ...".
async fn settings(c: &Client) -> Result<String> {
    Ok(c.query(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE name IN \
         ('server_version', 'fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', \
          'wal_level', 'max_connections', 'autovacuum') ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1)))
    .collect::<Vec<_>>()
    .join(", "))
}

impl Init {
    /// refreshd init, as a user would run it: the config it prints, the capture applied.
    async fn run(bin: &std::path::Path, shop: &Shop) -> Result<Init> {
        let c = &shop.c;
        let (init_toml, _) = run_refreshd(
            bin,
            &[
                "init",
                "--url",
                &shop.bench.dsn,
                "--schema",
                SCHEMA,
                "--apply",
            ],
        )
        .await?;
        let (view_cfg, parked_cfg, summary) = view_from_init(&init_toml)?;
        progress(&format!("init: {summary}"));
        // refreshd's triggers on the fact table (root and partitions), to drop and restore.
        let ours: Vec<String> = c
            .query(
                "SELECT pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t \
                 WHERE t.tgname = 'refreshd_notify' AND (t.tgrelid = 'shop.sales'::regclass \
                   OR t.tgrelid IN (SELECT inhrelid FROM pg_catalog.pg_inherits WHERE inhparent = 'shop.sales'::regclass)) \
                 ORDER BY t.tgrelid",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ours.len() != 13 {
            bail!(
                "expected refreshd_notify on shop.sales and its 12 partitions, found {}",
                ours.len()
            );
        }
        let fact_channel: String = c
            .query_one(
                "SELECT pg_catalog.split_part(pg_catalog.encode(tgargs, 'escape'), '\\000', 1) FROM pg_catalog.pg_trigger \
                 WHERE tgname = 'refreshd_notify' AND tgrelid = 'shop.sales'::regclass",
                &[],
            )
            .await?
            .get(0);
        Ok(Init {
            view_cfg,
            parked_cfg,
            summary,
            ours,
            fact_channel,
        })
    }
}

impl Ctx {
    /// One unrecorded warm-up run, then every round: per client count, every variant
    /// in turn. Indexed [client][variant][round].
    async fn all_rounds(&self, secs: u64, rounds: usize) -> Result<Vec<Vec<Vec<Run>>>> {
        let (c, base_id) = (&self.shop.c, self.shop.base_id);
        let (ours, channel) = (&self.init.ours, &self.init.fact_channel);
        let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); VARIANTS.len()]; CLIENTS.len()];
        set_capture(c, Cap::None, ours, channel).await?;
        pgbench(&self.shop.bench, &self.script, 8, secs.min(5)).await?;
        reset(c, base_id).await?;
        for round in 0..rounds {
            for (ci, &n) in CLIENTS.iter().enumerate() {
                for (vi, &v) in VARIANTS.iter().enumerate() {
                    set_capture(c, v, ours, channel).await?;
                    let r = self.one_run(v, n).await?;
                    progress(&format!(
                        "capture: round {}/{rounds} clients {n} {}: {:.0} tps, {} notifications, {} refreshes{}",
                        round + 1,
                        v.label(),
                        r.tps,
                        r.notifications,
                        r.refreshes,
                        match (v, r.to_exact) {
                            (Cap::RefreshdCaptureRunning, Some(s)) => format!(", view exact {s:.1} s after"),
                            (Cap::RefreshdCaptureRunning, None) => ", VIEW NOT EXACT".into(),
                            _ => String::new(),
                        }
                    ));
                    runs[ci][vi].push(r);
                    reset(c, base_id).await?;
                }
            }
        }
        Ok(runs)
    }
}

/// The report's "Run" table.
fn run_table(plan: &Plan, ctx: &Ctx, pg: &str, runs: &[Vec<Vec<Run>>], total: Duration) -> String {
    let (secs, rounds) = (plan.capture_secs, plan.capture_rounds);
    let shop = &ctx.shop;
    let mut o = run_table_head(
        "Run",
        &format!(
            "`--capture --capture-secs {secs} --capture-rounds {rounds}`{}",
            quick_flag(plan.quick)
        ),
    );
    o += &run_row("refreshd", &build_line());
    o += &run_row("PostgreSQL", pg);
    o += &format!(
        "| cluster | throwaway initdb (refreshd's TempCluster): {} |\n",
        shop.settings
    );
    let loads: Vec<f64> = runs.iter().flatten().flatten().map(|r| r.load1).collect();
    o += &format!(
        "| host | {} cores; load average (1 min) during runs: median {:.1}, max {:.1} |\n",
        cores(),
        median(&loads),
        max_of(&loads)
    );
    o += &format!(
        "| data | {FACT} partitioned by month (12 partitions), {FACT_ROWS} rows, loaded in {:.1} s; {VIEW}: 12 groups, unique index; bare REFRESH CONCURRENTLY {:.0} ms median of 5 |\n",
        shop.load_secs,
        median(&shop.bare)
    );
    o += &format!("| refreshd config | from `refreshd init --schema shop --apply`: {} (plus an [http] listen port and shutdown_timeout from the harness) |\n", ctx.init.summary);
    o += &wall_time_row(total);
    o
}

/// The report's TPS table and its note.
fn results_table(secs: u64, rounds: usize, fact_channel: &str, runs: &[Vec<Vec<Run>>]) -> String {
    let mut o = format!(
        "\n## Capture: single-row INSERT transactions into {FACT}, pgbench -c C -j min(C,2) -T {secs}, {rounds} interleaved round(s), medians\n\n"
    );
    o += "| capture on shop.sales | clients | runs | TPS median (min–max) | ratio to (a) | notifications per run, median (total) | refreshes per run, median (total) | refreshd: DB time refreshing / CPU per run, median s | view exact after run |\n|---|---|---|---|---|---|---|---|---|\n";
    for (ci, &n) in CLIENTS.iter().enumerate() {
        let base = median(&runs[ci][0].iter().map(|r| r.tps).collect::<Vec<_>>());
        for (vi, &v) in VARIANTS.iter().enumerate() {
            o += &variant_row(v, n, &runs[ci][vi], base);
        }
    }
    o += &format!(
        "\nNotifications: for (c) and (f) refreshd_notifications_total{{channel=\"{fact_channel}\"}} moved by this much during the run (refreshd was the only listener); otherwise what a LISTEN connection on that channel received. Refreshes: refreshd_refreshes_total for {VIEW} (all outcomes; the startup refresh is before the run; a refresh still running at the end of the run is not counted). After each (c) run the harness polls until the view equals its definition (EXCEPT ALL both ways). After every run the rows it inserted are deleted and the table vacuumed.\n"
    );
    o
}

/// One (variant, clients) row of the TPS table; `base` is (a)'s median TPS.
fn variant_row(v: Cap, n: u32, rs: &[Run], base: f64) -> String {
    let tps: Vec<f64> = rs.iter().map(|r| r.tps).collect();
    let col = |f: fn(&Run) -> f64| -> (f64, f64) {
        let xs: Vec<f64> = rs.iter().map(f).collect();
        (median(&xs), xs.iter().sum())
    };
    let (nm, nt) = col(|r| r.notifications);
    let (rm, rt) = col(|r| r.refreshes);
    let daemon = matches!(v, Cap::RefreshdCaptureRunning | Cap::RefreshdCaptureParked);
    let checked = v == Cap::RefreshdCaptureRunning;
    let exact: Vec<f64> = rs.iter().filter_map(|r| r.to_exact).collect();
    format!(
        "| {} | {n} | {} | {:.0} ({:.0}–{:.0}) | {:.3} | {:.0} ({:.0}) | {} | {} | {} |\n",
        v.label(),
        rs.len(),
        median(&tps),
        min_of(&tps),
        max_of(&tps),
        median(&tps) / base,
        nm,
        nt,
        if daemon {
            format!("{rm:.0} ({rt:.0})")
        } else {
            "–".into()
        },
        if daemon {
            format!(
                "{:.2} / {:.2}",
                col(|r| r.refresh_secs).0,
                col(|r| r.daemon_cpu).0
            )
        } else {
            "–".into()
        },
        if checked {
            format!(
                "{} of {} (median {:.1} s after the last write)",
                exact.len(),
                rs.len(),
                median(&exact)
            )
        } else {
            "–".into()
        }
    )
}

/// The view's `[[view]]` entry from init's config, with init's `[defaults]` timings,
/// and a one-line summary of what init chose.
fn view_from_init(toml_text: &str) -> Result<(ViewCfg, ViewCfg, String)> {
    let doc: toml::Value = toml::from_str(toml_text).context("init's config is not TOML")?;
    let defaults = doc
        .get("defaults")
        .context("no [defaults] in init's config")?;
    let get = |k: &str| -> Result<String> {
        Ok(defaults
            .get(k)
            .and_then(|v| v.as_str())
            .with_context(|| format!("no {k} in init's [defaults]"))?
            .to_string())
    };
    let (debounce, max_delay) = (get("debounce")?, get("max_delay")?);
    let views = doc
        .get("view")
        .and_then(|v| v.as_array())
        .context("no [[view]] in init's config")?;
    if views.len() != 1 {
        bail!(
            "init printed {} views, expected 1:\n{toml_text}",
            views.len()
        );
    }
    let v = views[0].as_table().context("[[view]] is not a table")?;
    let name = v
        .get("name")
        .and_then(|x| x.as_str())
        .context("view name")?;
    if name != VIEW {
        bail!("init printed view {name}, expected {VIEW}");
    }
    let channels: Vec<String> = v
        .get("channels")
        .and_then(|x| x.as_array())
        .context("view channels")?
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    if channels.is_empty()
        || channels
            .iter()
            .any(|c| !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
    {
        bail!("unexpected channels from init: {channels:?}");
    }
    let mut extra = String::new();
    for (k, x) in v {
        if k != "name" && k != "channels" {
            extra += &format!("{k} = {x}\n");
        }
    }
    // ViewCfg writes `channels = ["<channel>"]`; several plain channel names (checked
    // above) are joined so that the line lists each of them.
    let joined = channels.join("\", \"");
    let summary = format!(
        "channels {channels:?}, debounce {debounce}, max_delay {max_delay}{}",
        if extra.is_empty() {
            String::new()
        } else {
            format!(", {}", extra.trim().replace('\n', ", "))
        }
    );
    Ok((
        ViewCfg::new(name, &joined, &debounce, &max_delay).with_extra(&extra),
        ViewCfg::new(name, &joined, "1h", "1h").with_extra(&extra),
        summary,
    ))
}

/// Puts exactly this variant's trigger on the fact table: the others are dropped (not
/// disabled), refreshd's restored from init's definitions.
async fn set_capture(c: &Client, v: Cap, ours: &[String], channel: &str) -> Result<()> {
    let mut sql = String::from(
        "DROP TRIGGER IF EXISTS bench_plain_notify ON shop.sales; \
         DROP TRIGGER IF EXISTS bench_empty ON shop.sales;\n",
    );
    let parts: Vec<String> = c
        .query(
            "SELECT 'shop.sales'::regclass::text UNION ALL \
             SELECT inhrelid::regclass::text FROM pg_catalog.pg_inherits WHERE inhparent = 'shop.sales'::regclass",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for p in &parts {
        // Already quoted by regclass's output.
        sql += &format!("DROP TRIGGER IF EXISTS refreshd_notify ON {p};\n");
    }
    match v {
        Cap::None => {}
        Cap::Empty => sql += "CREATE TRIGGER bench_empty AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON shop.sales \
                              FOR EACH STATEMENT EXECUTE FUNCTION public.bench_empty();\n",
        Cap::PlainNotify => {
            sql += &format!(
                "CREATE TRIGGER bench_plain_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON shop.sales \
                 FOR EACH STATEMENT EXECUTE FUNCTION public.bench_plain_notify({});\n",
                refreshd::pg::refresh::quote_literal(channel)
            )
        }
        Cap::RefreshdCaptureAlone | Cap::RefreshdCaptureRunning | Cap::RefreshdCaptureParked => {
            for def in ours {
                sql += def;
                sql += ";\n";
            }
        }
    }
    c.batch_execute(&format!("BEGIN; {sql} COMMIT;")).await?;
    Ok(())
}

/// Deletes what the runs inserted and vacuums, so that every run starts from the
/// same table.
async fn reset(c: &Client, base_id: i64) -> Result<()> {
    c.execute("DELETE FROM shop.sales WHERE id > $1", &[&base_id])
        .await?;
    c.batch_execute("VACUUM shop.sales").await?;
    Ok(())
}

impl Ctx {
    /// One pgbench run of variant `v` at `clients`: without refreshd, the listener
    /// counts notifications; with it, its metrics and CPU, and for (c) until the view
    /// is exact.
    async fn one_run(&self, v: Cap, clients: u32) -> Result<Run> {
        let (bench, c, drain) = (&self.shop.bench, &self.shop.c, &self.drain);
        let (listen, drained, script) = (&self.listen, &self.drained, &self.script);
        let definition = &self.shop.definition;
        let view_cfg = if v == Cap::RefreshdCaptureParked {
            &self.init.parked_cfg
        } else {
            &self.init.view_cfg
        };
        let secs = bench.plan.capture_secs;
        let mut r = Run::default();
        let daemon = matches!(v, Cap::RefreshdCaptureRunning | Cap::RefreshdCaptureParked);
        if !daemon {
            let before = drained.load(Ordering::Relaxed);
            r.tps = pgbench(bench, script, clients, secs).await?;
            r.load1 = load1();
            // Notifications reach the listener after the commit: a round trip makes sure
            // the ones sent are read.
            drain.batch_execute("SELECT 1").await?;
            r.notifications = (drained.load(Ordering::Relaxed) - before) as f64;
            return Ok(r);
        }
        // refreshd is the only listener, as in production.
        drain.batch_execute("UNLISTEN *").await?;
        let d = Daemon::start(&bench.dsn, std::slice::from_ref(view_cfg), "capture").await?;
        let m0 = d.metrics().await?;
        let cpu0 = d.cpu_secs();
        let t = pgbench(bench, script, clients, secs).await;
        let end = Instant::now();
        r.load1 = load1();
        let m1 = d.metrics().await;
        let cpu1 = d.cpu_secs();
        if v == Cap::RefreshdCaptureParked {
            d.stop().await;
            drain.batch_execute(listen).await?;
            return finish(r, t, m0, m1, cpu0, cpu1);
        }
        // The view must end exact: refreshd's next refresh has to include every write,
        // including those that skipped their notification.
        let exact = poll_until(
            Duration::from_millis(50),
            Duration::from_secs(90),
            || async {
                let n: i64 = c
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM ((TABLE {VIEW} EXCEPT ALL ({definition})) \
                         UNION ALL (({definition}) EXCEPT ALL TABLE {VIEW})) x"
                        ),
                        &[],
                    )
                    .await?
                    .get(0);
                Ok(n == 0)
            },
        )
        .await;
        if let Ok(at) = exact {
            r.to_exact = Some(at.saturating_duration_since(end).as_secs_f64());
        } else {
            progress(&format!(
                "capture: view not exact 90 s after the run; refreshd log tail:\n{}",
                d.log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        d.stop().await;
        drain.batch_execute(listen).await?;
        finish(r, t, m0, m1, cpu0, cpu1)
    }
}

fn finish(
    mut r: Run,
    t: Result<f64>,
    m0: String,
    m1: Result<String>,
    cpu0: f64,
    cpu1: f64,
) -> Result<Run> {
    r.tps = t?;
    let m1 = m1?;
    r.notifications = metric(&m1, "refreshd_notifications_total", "")
        - metric(&m0, "refreshd_notifications_total", "");
    r.refreshes = metric(&m1, "refreshd_refreshes_total", VIEW)
        - metric(&m0, "refreshd_refreshes_total", VIEW);
    r.refresh_secs = metric(&m1, "refreshd_refresh_duration_seconds_sum", VIEW)
        - metric(&m0, "refreshd_refresh_duration_seconds_sum", VIEW);
    r.daemon_cpu = cpu1 - cpu0;
    Ok(r)
}
