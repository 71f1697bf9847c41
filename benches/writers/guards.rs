//! What the capture costs writers of a dimension whose INSERTs a foreign key guards
//! (src/incremental/guard.rs): `cargo bench --bench harness -- --writers-guards
//! [--writers-secs N] [--writers-rounds N] [--writers-partitioned]
//! [--writers-path-against BIN]`.
//!
//! One throwaway cluster, copies of one schema: `n` (no trigger) and `g`, whose view
//! `g.by_category` (count and sum of the sales per category name, through products and
//! categories: deltas from the sales) is converted by `refreshd init --schema g --apply
//! --in-place --keyed g.by_category` (the pinned release binary), its guard then kept
//! (the keeper called, as refreshd's first capture check does: "restored"). `o`: the
//! same conversion with the guard left off (every product INSERT captured: what a
//! broken guard costs). Each has `sales` (200,000 rows; 100 products, 10 categories;
//! foreign keys sales -> products -> categories); with `--writers-partitioned`, `sales`
//! is partitioned into 300 daily partitions (what made the per-statement guard of
//! earlier builds cost most). pgbench sends single-row INSERTs of new products into
//! each copy's `products`, then of sales into its `sales` (whose capture now tests the
//! writer's role at each statement), at 1 and 8 clients, interleaved in every round; no
//! refreshd runs. Medians, ratio to no trigger. `--writers-path-against BIN` adds a copy `q`
//! converted by another refreshd binary (one whose triggers check the keys at every
//! statement), in the same rounds.

use super::*;

const SCHEMA: &str = r#"
CREATE SCHEMA {s};
CREATE TABLE {s}.categories (id int PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE {s}.products (id int PRIMARY KEY, category_id int NOT NULL REFERENCES {s}.categories);
CREATE SEQUENCE {s}.product_ids START 1000;
CREATE TABLE {s}.sales (id bigint NOT NULL, product_id int NOT NULL REFERENCES {s}.products,
                        qty int NOT NULL, day date NOT NULL){partitioned};
{partitions}
CREATE INDEX ON {s}.sales (product_id);
INSERT INTO {s}.categories SELECT g, 'category ' || g FROM generate_series(1, 10) g;
INSERT INTO {s}.products SELECT g, 1 + g % 10 FROM generate_series(1, 100) g;
INSERT INTO {s}.sales SELECT g, 1 + g % 100, 1 + g % 7, date '2025-01-01' + (g % 300) FROM generate_series(1, 200000) g;
CREATE MATERIALIZED VIEW {s}.by_category AS
  SELECT c.name, count(*) AS n, sum(s.qty) AS qty
    FROM {s}.sales s JOIN {s}.products p ON p.id = s.product_id
    JOIN {s}.categories c ON c.id = p.category_id
   GROUP BY c.name;
CREATE UNIQUE INDEX ON {s}.by_category (name);
"#;

/// The tables written: the guarded dimension (a new product), and the fact table (a
/// sale), whose capture tests for the replica role at each statement.
const TABLES: [&str; 2] = ["products", "sales"];

fn schema_sql(s: &str, partitioned: bool) -> String {
    let (head, parts) = if partitioned {
        (
            " PARTITION BY RANGE (day)".to_string(),
            (0..300)
                .map(|d| {
                    format!(
                        "CREATE TABLE {s}.sales_{d} PARTITION OF {s}.sales FOR VALUES FROM (date '2025-01-01' + {d}) TO (date '2025-01-01' + {});",
                        d + 1
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )
    } else {
        (String::new(), String::new())
    };
    SCHEMA
        .replace("{partitioned}", &head)
        .replace("{partitions}", &parts)
        .replace("{s}", s)
}

pub async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let load_start = loadavg();
    let bin_dir = pin_binary()?;
    let bin = bin_dir.path().join("refreshd");
    let (secs, rounds) = (plan.writers_secs, plan.writers_rounds);
    progress(&format!(
        "refreshd bench: writers of a guarded dimension, {rounds} round(s) of {secs} s per run"
    ));
    let bench = Bench::on_new_cluster(&plan, 100).await?;
    let c = connect(&bench.dsn).await?;
    if plan.writers_durable {
        durable(&c).await?;
    }
    let settings = durability(&c).await?;
    // (schema, the binary converting its view, whether its guard is kept).
    let mut variants: Vec<(&str, Option<std::path::PathBuf>, bool)> = vec![
        ("n", None, false),
        ("g", Some(bin.clone()), true),
        ("o", Some(bin.clone()), false),
    ];
    if let Some(other) = &plan.writers_path_against {
        variants.push(("q", Some(other.into()), false));
    }
    for (s, _, _) in &variants {
        c.batch_execute(&schema_sql(s, plan.writers_partitioned))
            .await?;
    }
    c.batch_execute("VACUUM ANALYZE").await?;
    let mut capture = Vec::new();
    for (s, b, keep) in &variants {
        let Some(b) = b else { continue };
        let line = super::path::convert(b, &bench.dsn, s, "products").await?;
        let guard = if *b != bin {
            format!("converted by `{}`", b.display())
        } else if *keep {
            let kept: String = c
                .query_one(
                    &format!("SELECT refreshd.{s}_by_category_consume_keep_guard(NULL)"),
                    &[],
                )
                .await?
                .get(0);
            format!("guard kept: {kept}")
        } else {
            "guard left off".to_string()
        };
        capture.push(format!("{s} ({guard}): {line}"));
    }
    let dir = tempfile::tempdir()?;
    let script = |s: &str, t: &str| dir.path().join(format!("{s}.{t}.sql"));
    for (s, _, _) in &variants {
        std::fs::write(
            script(s, "products"),
            format!(
                "\\set c random(1, 10)\nINSERT INTO {s}.products VALUES (nextval('{s}.product_ids'), :c);\n"
            ),
        )?;
        std::fs::write(
            script(s, "sales"),
            format!(
                "\\set p random(1, 100)\n\\set d random(0, 299)\nINSERT INTO {s}.sales VALUES (nextval('{s}.product_ids'), :p, 3, date '2025-01-01' + :d);\n"
            ),
        )?;
    }
    let clients = [1u32, 8];
    // [table][clients][variant] -> TPS per round.
    let mut tps = vec![vec![vec![Vec::new(); variants.len()]; clients.len()]; TABLES.len()];
    let mut loads = Vec::new();
    for round in 1..=rounds {
        for (ti, table) in TABLES.iter().enumerate() {
            for (ci, &n) in clients.iter().enumerate() {
                for (si, (s, _, _)) in variants.iter().enumerate() {
                    let t = pgbench(&bench, &script(s, table), n, secs).await?;
                    progress(&format!(
                        "round {round}, {n} client(s), {s}.{table}: {t:.0} tps"
                    ));
                    tps[ti][ci][si].push(t);
                    loads.push(load1());
                }
            }
        }
    }
    let pg: String = c.query_one("SHOW server_version", &[]).await?.get(0);
    let flags = if plan.writers_partitioned {
        "`--writers-guards --writers-partitioned`"
    } else {
        "`--writers-guards`"
    };
    let mut o = run_table_head("Writers of a guarded dimension: run", flags);
    o += &run_row("PostgreSQL", &format!("{pg}; {settings}"));
    o += &run_row(
        "runs",
        &format!("{rounds} round(s); per round, table and client count, each copy in turn, {secs} s each (pgbench, single-row INSERT of a new product, or of a sale of a random product on a random day)"),
    );
    o += &run_row(
        "sales",
        if plan.writers_partitioned {
            "200,000 rows in 300 daily partitions"
        } else {
            "200,000 rows, one table"
        },
    );
    o += &run_row("capture", &capture.join("; "));
    o += &host_row(&load_start, &loadavg(), "run", &loads);
    o += &wall_time_row(t0.elapsed());
    o += "\n| INSERT into | clients | schema (capture) | TPS per round | median | ratio to no trigger |\n|---|---|---|---|---|---|\n";
    for ((ti, table), (ci, n)) in TABLES
        .iter()
        .enumerate()
        .flat_map(|t| clients.iter().enumerate().map(move |c| (t, c)))
    {
        let tps = &tps[ti];
        let base = median(&tps[ci][0]);
        for (si, (s, b, keep)) in variants.iter().enumerate() {
            let each: Vec<String> = tps[ci][si].iter().map(|t| format!("{t:.0}")).collect();
            let m = median(&tps[ci][si]);
            let what = match (b, keep) {
                (None, _) => "no trigger".to_string(),
                (Some(b), true) if *b == bin => "this build, guard kept".to_string(),
                (Some(b), false) if *b == bin => "this build, guard off".to_string(),
                (Some(b), _) => format!("`{}`", b.display()),
            };
            o += &format!(
                "| {table} | {n} | {s} ({what}) | {} | {m:.0} | {:.2} |\n",
                each.join(" / "),
                m / base
            );
        }
    }
    print!("{o}");
    Ok(())
}
