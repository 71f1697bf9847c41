//! What capture costs writers, plain and keyed (issue 20):
//! `cargo bench --bench harness -- --writers [--writers-secs N] [--writers-rounds N]`.
//!
//! One throwaway cluster, one fact table `w.sales` (200,000 rows, 100 products) and three
//! views over it, each with a unique index on `product`:
//!
//! - `w.by_product`: count and sums per product, a materialized view that
//!   `refreshd init --apply` captures with its statement trigger (`refreshd_notify`);
//! - `w.by_product_delta`: the same definition, converted by `init --keyed --in-place`:
//!   count and sum are applied as deltas, its capture appends the changed rows to its
//!   row buffer;
//! - `w.by_product_keys`: count and max per product, converted the same way: max is
//!   recomputed per group, its capture appends the changed keys to its key buffer.
//!
//! One `refreshd init --schema w --apply --in-place --keyed ... --keyed ...` (the release
//! binary) installs all the capture; the harness keeps the definitions of the triggers it
//! created on `w.sales` and, per variant, puts back only that variant's. pgbench sends
//! single-row INSERT transactions at 1 and 8 clients, the variants interleaved in each
//! round, medians, ratios to no trigger:
//!
//! - (a) no trigger;
//! - (b) a statement trigger doing `pg_notify` on every statement (what `init` wrote
//!   before its capture function; what issue 20 measured at 0.47×), a LISTEN connection
//!   reading;
//! - (c) init's capture for the plain materialized view, refreshd running on it;
//! - (d) init --keyed's key-buffer capture, refreshd running on the keyed view;
//! - (e) init --keyed's row-buffer (delta) capture, refreshd running on the keyed view;
//! - (f), (g) the capture of (d) and (e) alone: refreshd starts after the run and catches
//!   up from the buffer (what the triggers cost writers, without a refresh beside them);
//! - (h), (i) the capture of (d) and (e) with refreshd at its default debounce (2s).
//!
//! In (c)-(e) refreshd runs with debounce 0s (the view kept as fresh as it can be: the
//! cost of keeping it fresh is in the figure). After each daemon run the harness waits until the
//! view equals its definition, then deletes the rows the run inserted with the daemon
//! still running (so keyed tables stay exact) and waits again; then it stops the daemon
//! and vacuums.

use super::*;

pub mod guards;
pub mod instructions;
pub mod path;

const ROWS: i64 = 200_000;

/// w.sales, plain: one heap and its primary key.
const SALES_PLAIN: &str = r#"
CREATE SCHEMA w;
CREATE TABLE w.sales (id bigserial PRIMARY KEY, product int NOT NULL, qty int NOT NULL,
                      amount numeric(12, 2) NOT NULL);
INSERT INTO w.sales (product, qty, amount)
  SELECT g % 100, 1 + g % 7, (g % 1000) / 10.0 FROM generate_series(1, 200000) g;
"#;

/// w.sales partitioned by month (`--writers-partitioned`): every insert is routed to
/// one of 12 partitions, as into the fact table issue 20 measured capture on.
const SALES_PARTITIONED: &str = r#"
CREATE SCHEMA w;
CREATE TABLE w.sales (id bigserial, sold_on date NOT NULL, product int NOT NULL,
                      qty int NOT NULL, amount numeric(12, 2) NOT NULL,
                      PRIMARY KEY (id, sold_on)) PARTITION BY RANGE (sold_on);
DO $$BEGIN
  FOR m IN 0..11 LOOP
    EXECUTE format('CREATE TABLE w.sales_%s PARTITION OF w.sales FOR VALUES FROM (%L) TO (%L)',
                   lpad((m + 1)::text, 2, '0'),
                   date '2026-01-01' + make_interval(months => m),
                   date '2026-01-01' + make_interval(months => m + 1));
  END LOOP;
END$$;
INSERT INTO w.sales (sold_on, product, qty, amount)
  SELECT date '2026-01-01' + g % 365, g % 100, 1 + g % 7, (g % 1000) / 10.0
  FROM generate_series(1, 200000) g;
"#;

/// The views over w.sales (either shape) and (b)'s trigger function.
const VIEWS: &str = r#"
CREATE MATERIALIZED VIEW w.by_product AS
  SELECT product, count(*) AS n, sum(qty) AS qty, sum(amount) AS amount FROM w.sales GROUP BY product;
CREATE UNIQUE INDEX ON w.by_product (product);
CREATE MATERIALIZED VIEW w.by_product_delta AS
  SELECT product, count(*) AS n, sum(qty) AS qty, sum(amount) AS amount FROM w.sales GROUP BY product;
CREATE UNIQUE INDEX ON w.by_product_delta (product);
CREATE MATERIALIZED VIEW w.by_product_keys AS
  SELECT product, count(*) AS n, max(qty) AS max_qty FROM w.sales GROUP BY product;
CREATE UNIQUE INDEX ON w.by_product_keys (product);
CREATE FUNCTION public.bench_plain_notify() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN PERFORM pg_catalog.pg_notify('bench_plain', ''); RETURN NULL; END$$;
"#;

/// The schema: w.sales in the shape asked for, and the views.
fn setup_sql(partitioned: bool) -> String {
    let sales = if partitioned {
        SALES_PARTITIONED
    } else {
        SALES_PLAIN
    };
    format!("{sales}{VIEWS}")
}

/// How the report names w.sales.
fn sales_shape(partitioned: bool) -> &'static str {
    if partitioned {
        "w.sales (partitioned by month, 12 partitions)"
    } else {
        "w.sales"
    }
}

/// The i-th single-row INSERT of a measured run (`postgres --single`).
fn insert_values(partitioned: bool, i: usize) -> String {
    if partitioned {
        format!(
            "INSERT INTO w.sales (sold_on, product, qty, amount) VALUES (date '2026-01-01' + {}, {}, {}, 9.99);\n",
            (i * 7) % 365,
            i % 100,
            1 + i % 7
        )
    } else {
        format!(
            "INSERT INTO w.sales (product, qty, amount) VALUES ({}, {}, 9.99);\n",
            i % 100,
            1 + i % 7
        )
    }
}

const DEF_SUMS: &str =
    "SELECT product, count(*) AS n, sum(qty) AS qty, sum(amount) AS amount FROM w.sales GROUP BY product";
const DEF_MAX: &str =
    "SELECT product, count(*) AS n, max(qty) AS max_qty FROM w.sales GROUP BY product";

const INSERT_SCRIPT: &str = "\\set p random(0, 99)\n\
INSERT INTO w.sales (product, qty, amount) VALUES (:p, 1 + :p % 7, 9.99);\n";

/// pgbench's script for the partitioned w.sales: a day of the year, as well.
const INSERT_SCRIPT_PARTITIONED: &str = "\\set p random(0, 99)\n\\set d random(0, 364)\n\
INSERT INTO w.sales (sold_on, product, qty, amount) VALUES (date '2026-01-01' + :d, :p, 1 + :p % 7, 9.99);\n";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Var {
    None,
    PlainNotify,
    InitPlain,
    KeyBuffer,
    RowBuffer,
    KeyBufferAlone,
    RowBufferAlone,
    KeyBufferDebounced,
    RowBufferDebounced,
}

impl Var {
    fn label(self) -> &'static str {
        match self {
            Var::None => "(a) no trigger",
            Var::PlainNotify => {
                "(b) statement trigger with pg_notify on every statement (init's former capture), a LISTEN connection reading"
            }
            Var::InitPlain => {
                "(c) `init --apply` capture of the plain materialized view w.by_product, refreshd refreshing it"
            }
            Var::KeyBuffer => {
                "(d) `init --keyed` key-buffer capture (w.by_product_keys: max, groups recomputed), refreshd running"
            }
            Var::RowBuffer => {
                "(e) `init --keyed` row-buffer capture (w.by_product_delta: count/sum as deltas), refreshd running"
            }
            Var::KeyBufferAlone => {
                "(f) the key-buffer capture of (d) alone: refreshd stopped during the run, catching up after it"
            }
            Var::RowBufferAlone => {
                "(g) the row-buffer capture of (e) alone: refreshd stopped during the run, catching up after it"
            }
            Var::KeyBufferDebounced => {
                "(h) the key-buffer capture of (d), refreshd running at the default debounce (2s)"
            }
            Var::RowBufferDebounced => {
                "(i) the row-buffer capture of (e), refreshd running at the default debounce (2s)"
            }
        }
    }

    /// Whose triggers this variant puts on w.sales.
    fn capture(self) -> Var {
        match self {
            Var::KeyBufferAlone | Var::KeyBufferDebounced => Var::KeyBuffer,
            Var::RowBufferAlone | Var::RowBufferDebounced => Var::RowBuffer,
            v => v,
        }
    }

    /// Whether refreshd runs during the pgbench run (else it starts after it).
    fn daemon_during(self) -> bool {
        !matches!(self, Var::KeyBufferAlone | Var::RowBufferAlone)
    }

    /// refreshd's debounce in this variant.
    fn debounce(self) -> &'static str {
        match self {
            Var::KeyBufferDebounced | Var::RowBufferDebounced => "2s",
            _ => "0s",
        }
    }

    /// The view refreshd keeps in this variant, and its definition.
    fn view(self) -> Option<(&'static str, &'static str)> {
        match self.capture() {
            Var::InitPlain => Some(("w.by_product", DEF_SUMS)),
            Var::KeyBuffer => Some(("w.by_product_keys", DEF_MAX)),
            Var::RowBuffer => Some(("w.by_product_delta", DEF_SUMS)),
            _ => None,
        }
    }
}

#[derive(Default, Clone)]
struct Run {
    tps: f64,
    refreshes: f64,
    notifications: f64,
    to_exact: Option<f64>,
    load1: f64,
}

/// The variants, in the order of each round.
const VARIANTS: [Var; 9] = [
    Var::None,
    Var::PlainNotify,
    Var::InitPlain,
    Var::KeyBuffer,
    Var::RowBuffer,
    Var::KeyBufferAlone,
    Var::RowBufferAlone,
    Var::KeyBufferDebounced,
    Var::RowBufferDebounced,
];

/// pgbench's client counts.
const CLIENTS: [u32; 2] = [1, 8];

/// What `refreshd init` did on w.sales: its config, what it said, and the definitions
/// of the triggers it created, by the variant that puts them back.
struct Init {
    said: Vec<String>,
    cfgs: Vec<(String, ViewCfg)>,
    init_toml: String,
    defs: Vec<(Var, Vec<String>)>,
    triggers_note: String,
}

/// What the runs share.
struct Ctx {
    bench: Bench,
    dsn: String,
    c: Client,
    base_id: i64,
    init: Init,
    /// The LISTEN connection of (b) and how many notifications it has read.
    drain: Client,
    drained: Arc<AtomicU64>,
    script: std::path::PathBuf,
    secs: u64,
    rounds: usize,
}

/// What the report needs beyond the runs.
struct Facts {
    quick: bool,
    partitioned: bool,
    durable: bool,
    /// The cluster's durability settings as the server reported them.
    settings: String,
    secs: u64,
    rounds: usize,
    pg: String,
    load_start: String,
    load_end: String,
    total: Duration,
}

pub async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let load_start = loadavg();
    let bin_dir = pin_binary()?;
    let bin = bin_dir.path().join("refreshd");
    let (secs, rounds, quick) = (plan.writers_secs, plan.writers_rounds, plan.quick);
    progress(&format!(
        "refreshd bench: writers, {rounds} round(s) of {secs} s per run"
    ));
    let bench = Bench::on_new_cluster(&plan, 100).await?;
    let dsn = bench.dsn.clone();
    let c = connect(&dsn).await?;
    if plan.writers_durable {
        durable(&c).await?;
    }
    let settings = durability(&c).await?;
    c.batch_execute(&setup_sql(plan.writers_partitioned))
        .await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    let base_id: i64 = c
        .query_one("SELECT max(id) FROM w.sales", &[])
        .await?
        .get(0);
    let init = Init::run(&bin, &dsn, &c).await?;
    let (drain, drained, drain_task) = listen(&dsn).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("insert.sql");
    let insert_script = if plan.writers_partitioned {
        INSERT_SCRIPT_PARTITIONED
    } else {
        INSERT_SCRIPT
    };
    std::fs::write(&script, insert_script)?;
    let ctx = Ctx {
        bench,
        dsn,
        c,
        base_id,
        init,
        drain,
        drained,
        script,
        secs,
        rounds,
    };
    let runs = ctx.all_rounds().await?;
    drain_task.abort();
    let pg: String = ctx.c.query_one("SHOW server_version", &[]).await?.get(0);
    let total = t0.elapsed();
    let f = Facts {
        quick,
        partitioned: plan.writers_partitioned,
        durable: plan.writers_durable,
        settings,
        secs,
        rounds,
        pg,
        load_start,
        load_end: loadavg(),
        total,
    };
    let loads: Vec<f64> = runs.iter().flatten().flatten().map(|r| r.load1).collect();
    let mut o = run_table(&f, &loads, &ctx.init);
    o += &results_table(&f, &runs);
    print!("{o}");
    progress(&format!("done in {:.1} min", f.total.as_secs_f64() / 60.0));
    Ok(())
}

/// A listener for (b), as refreshd would be: the connection, its count of
/// notifications, the task reading them.
async fn listen(dsn: &str) -> Result<(Client, Arc<AtomicU64>, tokio::task::JoinHandle<()>)> {
    let (drain, drained, drain_task) = counting_listener(dsn).await?;
    drain.batch_execute("LISTEN bench_plain").await?;
    Ok((drain, drained, drain_task))
}

impl Init {
    /// One `refreshd init --schema w --apply --in-place --keyed ... --keyed ...`, then the
    /// triggers it created on w.sales.
    async fn run(bin: &std::path::Path, dsn: &str, c: &Client) -> Result<Init> {
        let (init_toml, init_err) = run_refreshd(
            bin,
            &[
                "init",
                "--url",
                dsn,
                "--schema",
                "w",
                "--apply",
                "--in-place",
                "--keyed",
                "w.by_product_delta",
                "--keyed",
                "w.by_product_keys",
            ],
        )
        .await?;
        let said: Vec<String> = init_err
            .lines()
            .filter(|l| l.contains("--keyed w."))
            .map(|l| l.trim().to_string())
            .collect();
        for l in &said {
            progress(&format!("init: {l}"));
        }
        let cfgs = views_from_init(&init_toml)?;
        let (defs, triggers_note) = triggers_by_variant(c).await?;
        Ok(Init {
            said,
            cfgs,
            init_toml,
            defs,
            triggers_note,
        })
    }

    fn cfg_of(&self, name: &str) -> Result<ViewCfg> {
        self.cfgs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .with_context(|| format!("no [[view]] {name} in init's config:\n{}", self.init_toml))
    }
}

/// The triggers init created on w.sales, by the view they serve: their definitions per
/// variant, and a note naming them with their functions.
async fn triggers_by_variant(c: &Client) -> Result<(Vec<(Var, Vec<String>)>, String)> {
    let trig: Vec<(String, String, String)> = c
        .query(
            "SELECT t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid), p.proname::text \
             FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
             WHERE t.tgrelid = 'w.sales'::regclass AND NOT t.tgisinternal ORDER BY t.tgname",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let of = |v: Var| -> Vec<String> {
        trig.iter()
            .filter(|(name, _, func)| match v {
                Var::InitPlain => name == "refreshd_notify",
                Var::KeyBuffer => {
                    func.contains("by_product_keys") || name.contains("by_product_keys")
                }
                Var::RowBuffer => {
                    func.contains("by_product_delta") || name.contains("by_product_delta")
                }
                _ => false,
            })
            .map(|(_, def, _)| def.clone())
            .collect()
    };
    let defs: Vec<(Var, Vec<String>)> = [Var::InitPlain, Var::KeyBuffer, Var::RowBuffer]
        .into_iter()
        .map(|v| (v, of(v)))
        .collect();
    let triggers_note = trig
        .iter()
        .map(|(n, _, f)| format!("{n} → {f}()"))
        .collect::<Vec<_>>()
        .join(", ");
    for (v, d) in &defs {
        if d.is_empty() {
            bail!("no trigger on w.sales for {v:?}; init created: {triggers_note}");
        }
    }
    progress(&format!("triggers on w.sales: {triggers_note}"));
    Ok((defs, triggers_note))
}

impl Ctx {
    /// A warm-up, then every round: per client count, every variant in turn. Indexed
    /// [client][variant][round].
    async fn all_rounds(&self) -> Result<Vec<Vec<Vec<Run>>>> {
        let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); VARIANTS.len()]; CLIENTS.len()];
        set_triggers(&self.c, Var::None, &self.init.defs).await?;
        pgbench(&self.bench, &self.script, 8, self.secs.min(5)).await?;
        reset(&self.c, self.base_id).await?;
        for round in 0..self.rounds {
            for (ci, &n) in CLIENTS.iter().enumerate() {
                for (vi, &v) in VARIANTS.iter().enumerate() {
                    set_triggers(&self.c, v.capture(), &self.init.defs).await?;
                    let r = match v.view() {
                        None => self.listener_run(n).await?,
                        Some((view, def)) => self.daemon_run(v, view, def, n).await?,
                    };
                    progress(&format!(
                        "writers: round {}/{} clients {n} {}: {:.0} tps, {} refreshes, {} notifications{}",
                        round + 1,
                        self.rounds,
                        v.label(),
                        r.tps,
                        r.refreshes,
                        r.notifications,
                        r.to_exact
                            .map(|s| format!(", exact {s:.1} s after"))
                            .unwrap_or_default()
                    ));
                    runs[ci][vi].push(r);
                }
            }
        }
        Ok(runs)
    }

    /// A run of (a) or (b): no refreshd; the LISTEN connection counts notifications.
    async fn listener_run(&self, n: u32) -> Result<Run> {
        let mut r = Run::default();
        let before = self.drained.load(Ordering::Relaxed);
        r.tps = pgbench(&self.bench, &self.script, n, self.secs).await?;
        r.load1 = load1();
        self.drain.batch_execute("SELECT 1").await?;
        r.notifications = (self.drained.load(Ordering::Relaxed) - before) as f64;
        reset(&self.c, self.base_id).await?;
        Ok(r)
    }

    /// A run with refreshd on `view` (during the run, or started after it), then until
    /// the view is exact, the run's rows deleted with the daemon running, vacuum.
    async fn daemon_run(&self, v: Var, view: &str, def: &str, n: u32) -> Result<Run> {
        let mut r = Run::default();
        let cfg = self.init.cfg_of(view)?.with_debounce(v.debounce());
        let (d, end) = if v.daemon_during() {
            let d = Daemon::start(&self.dsn, &[cfg], "writers").await?;
            let m0 = d.metrics().await?;
            let t = pgbench(&self.bench, &self.script, n, self.secs).await;
            let end = Instant::now();
            r.load1 = load1();
            let m1 = d.metrics().await?;
            r.tps = t?;
            r.refreshes = metric(&m1, "refreshd_refreshes_total", view)
                - metric(&m0, "refreshd_refreshes_total", view);
            r.notifications = metric(&m1, "refreshd_notifications_total", "")
                - metric(&m0, "refreshd_notifications_total", "");
            (d, end)
        } else {
            r.tps = pgbench(&self.bench, &self.script, n, self.secs).await?;
            let end = Instant::now();
            r.load1 = load1();
            (r.refreshes, r.notifications) = (f64::NAN, f64::NAN);
            (Daemon::start(&self.dsn, &[cfg], "writers").await?, end)
        };
        if let Ok(at) = exact(&self.c, view, def).await {
            r.to_exact = Some(at.saturating_duration_since(end).as_secs_f64());
        } else {
            progress(&format!(
                "writers: {view} not exact 120 s after the run; log tail:\n{}",
                d.log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        // The inserted rows go with the daemon still running, so keyed
        // tables follow.
        self.c
            .execute("DELETE FROM w.sales WHERE id > $1", &[&self.base_id])
            .await?;
        if view != "w.by_product" {
            exact(&self.c, view, def).await?;
        }
        d.stop().await;
        self.c.batch_execute("VACUUM w.sales").await?;
        Ok(r)
    }
}

/// `--writers-durable`: commits as a production server makes them, the settings the
/// bench clusters turn off put back to PostgreSQL's defaults (all three reload on SIGHUP).
async fn durable(c: &tokio_postgres::Client) -> Result<()> {
    // One statement each: ALTER SYSTEM refuses a transaction block, which several
    // statements in one simple query are.
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        c.batch_execute(&format!("ALTER SYSTEM SET {setting} = on"))
            .await?;
    }
    c.batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !durability(c)
        .await?
        .starts_with("fsync=on, synchronous_commit=on, full_page_writes=on")
    {
        if Instant::now() > deadline {
            bail!(
                "the server did not reload fsync = on: {}",
                durability(c).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The settings that decide what a commit costs, as the server reports them.
async fn durability(c: &tokio_postgres::Client) -> Result<String> {
    let mut parts = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "shared_buffers",
    ] {
        let v: String = c
            .query_one("SELECT pg_catalog.current_setting($1)", &[&name])
            .await?
            .get(0);
        parts.push(format!("{name}={v}"));
    }
    Ok(parts.join(", "))
}

/// The report's "Writers: run" table and what init said.
fn run_table(f: &Facts, loads: &[f64], init: &Init) -> String {
    let mut o = run_table_head(
        "Writers: run",
        &format!(
            "`--writers --writers-secs {} --writers-rounds {}{}`{}",
            f.secs,
            f.rounds,
            match (f.partitioned, f.durable) {
                (false, false) => "",
                (true, false) => " --writers-partitioned",
                (false, true) => " --writers-durable",
                (true, true) => " --writers-partitioned --writers-durable",
            },
            quick_flag(f.quick)
        ),
    );
    o += &run_row("refreshd", &build_line());
    o += &run_row("PostgreSQL", &f.pg);
    o += &run_row(
        "cluster",
        &format!("throwaway initdb (refreshd's TempCluster): {}", f.settings),
    );
    o += &host_row(&f.load_start, &f.load_end, "run", loads);
    o += &format!(
        "| data | {} {ROWS} rows, 100 products; three 100-row views (see below) |\n",
        sales_shape(f.partitioned)
    );
    o += &run_row("triggers init created on w.sales", &init.triggers_note);
    o += &wall_time_row(f.total);
    o += &init_said(&init.said);
    o
}

/// The report's TPS table, its note and the 8-client targets.
fn results_table(f: &Facts, runs: &[Vec<Vec<Run>>]) -> String {
    let mut o = format!(
        "\n## Writers: single-row INSERT transactions into {}, pgbench -c C -j min(C,2) -T {}, {} interleaved round(s), medians\n\n",
        sales_shape(f.partitioned),
        f.secs,
        f.rounds
    );
    o += "| capture on w.sales | clients | runs | TPS median (min–max) | ratio to (a) | refreshes per run, median | notifications per run, median | view exact after the run (median s after the last write) |\n|---|---|---|---|---|---|---|---|\n";
    let mut at8 = Vec::new();
    for (ci, &n) in CLIENTS.iter().enumerate() {
        let base = median(&runs[ci][0].iter().map(|r| r.tps).collect::<Vec<_>>());
        for (vi, &v) in VARIANTS.iter().enumerate() {
            let rs = &runs[ci][vi];
            let m = median(&rs.iter().map(|r| r.tps).collect::<Vec<_>>());
            if n == 8 {
                at8.push((v, m / base));
            }
            o += &variant_row(v, n, rs, base);
        }
    }
    o += "| pg_ivm 1.15 (quoted from issue 20, measured elsewhere on an unpartitioned copy of another schema; not installable here) | 8 | – | 843 against 21,000 | 0.03–0.04 | – | – | immediate |\n";
    o += "\nrefreshd runs on the one view of the variant (init's config otherwise) with debounce 0s in (c)–(e) and 2s, the default, in (h)–(i), started before and stopped after each run; it is the only listener then. In (f)–(g) it starts when the run has ended and catches up from the buffer (the column \"exact after\" includes its start-up). Notifications: refreshd_notifications_total (all channels) for (c)–(e) and (h)–(i), the LISTEN connection's count for (b). Refreshes: refreshd_refreshes_total of the view during the run. After each daemon run the harness polls until the view equals its definition (EXCEPT ALL both ways), then deletes the run's rows with the daemon running and waits for the view again, then vacuums.\n";
    o += "\n| target | result | verdict |\n|---|---|---|\n";
    for (v, r) in at8
        .iter()
        .filter(|(v, _)| v.view().is_some() && *v != Var::InitPlain)
    {
        o += &format!(
            "| writers ≥ 0.8× of no capture at 8 clients: {} | {r:.3}× | {} |\n",
            v.label(),
            if *r >= 0.8 { "met" } else { "**missed**" }
        );
    }
    o
}

/// One (variant, clients) row of the TPS table; `base` is (a)'s median TPS.
fn variant_row(v: Var, n: u32, rs: &[Run], base: f64) -> String {
    let tps: Vec<f64> = rs.iter().map(|r| r.tps).collect();
    let m = median(&tps);
    let exact: Vec<f64> = rs.iter().filter_map(|r| r.to_exact).collect();
    format!(
        "| {} | {n} | {} | {:.0} ({:.0}–{:.0}) | {:.3} | {} | {} | {} |\n",
        v.label(),
        rs.len(),
        m,
        min_of(&tps),
        max_of(&tps),
        m / base,
        if v.view().is_some() && v.daemon_during() {
            format!(
                "{:.0}",
                median(&rs.iter().map(|r| r.refreshes).collect::<Vec<_>>())
            )
        } else if v.view().is_some() {
            "– (stopped)".into()
        } else {
            "–".into()
        },
        if v.daemon_during() {
            format!(
                "{:.0}",
                median(&rs.iter().map(|r| r.notifications).collect::<Vec<_>>())
            )
        } else {
            "– (no listener)".into()
        },
        if v.view().is_some() {
            format!("{} of {} ({:.1})", exact.len(), rs.len(), median(&exact))
        } else {
            "–".into()
        }
    )
}

/// Puts exactly this variant's triggers on w.sales (the others dropped, not disabled).
async fn set_triggers(c: &Client, v: Var, defs: &[(Var, Vec<String>)]) -> Result<()> {
    let names: Vec<String> = c
        .query(
            "SELECT tgname::text FROM pg_catalog.pg_trigger \
             WHERE tgrelid = 'w.sales'::regclass AND NOT tgisinternal",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sql = String::from("BEGIN;\n");
    for n in names {
        sql += &format!(
            "DROP TRIGGER {} ON w.sales;\n",
            refreshd::pg::ident::quote_ident(&n)
        );
    }
    if v == Var::PlainNotify {
        sql += "CREATE TRIGGER bench_plain_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON w.sales \
                FOR EACH STATEMENT EXECUTE FUNCTION public.bench_plain_notify();\n";
    }
    for (dv, ds) in defs {
        if *dv == v {
            for d in ds {
                sql += d;
                sql += ";\n";
            }
        }
    }
    sql += "COMMIT;";
    c.batch_execute(&sql).await?;
    Ok(())
}

async fn reset(c: &Client, base_id: i64) -> Result<()> {
    c.execute("DELETE FROM w.sales WHERE id > $1", &[&base_id])
        .await?;
    c.batch_execute("VACUUM w.sales").await?;
    Ok(())
}

/// Polls until `view` equals `def` (EXCEPT ALL both ways), for up to 120 s.
async fn exact(c: &Client, view: &str, def: &str) -> Result<Instant> {
    let sql = format!(
        "SELECT count(*) FROM ((TABLE {view} EXCEPT ALL ({def})) UNION ALL (({def}) EXCEPT ALL TABLE {view})) x"
    );
    poll_until(
        Duration::from_millis(20),
        Duration::from_secs(120),
        || async { Ok(c.query_one(&sql, &[]).await?.get::<_, i64>(0) == 0) },
    )
    .await
}

/// Every `[[view]]` of init's config, with debounce 0s and init's max_delay.
pub fn views_from_init(toml_text: &str) -> Result<Vec<(String, ViewCfg)>> {
    super::tpch::keyed_views_from_init(toml_text)
}
