//! What the capture of a table reaching the key through a join path costs writers:
//! `cargo bench --bench harness -- --writers-path [--writers-secs N] [--writers-rounds N]
//! [--writers-durable]`.
//!
//! One throwaway cluster, two copies of one schema: `n` (no trigger) and `p`, whose view
//! `p.by_category` (count and max of the sales per category name, through products and
//! categories: no deltas, so sales buffer what their groups are recomputed from) is
//! converted by `refreshd init --schema p --apply --in-place --keyed p.by_category` (the
//! pinned release binary). Each has `sales` (200,000 rows, 100 products, 10 categories;
//! foreign keys sales -> products -> categories). pgbench sends single-row INSERTs into
//! `n.sales` and `p.sales` at 1 and 8 clients, interleaved in every round; no refreshd
//! runs (the buffers grow), so the figure is what the triggers cost. Medians, ratio to
//! no trigger. `--writers-path-against BIN` adds a third copy, `q`, converted by another
//! refreshd binary (an earlier version), in the same rounds.

use super::*;

const SCHEMA: &str = r#"
CREATE SCHEMA {s};
CREATE TABLE {s}.categories (id int PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE {s}.products (id int PRIMARY KEY, category_id int NOT NULL REFERENCES {s}.categories);
CREATE TABLE {s}.sales (id bigserial PRIMARY KEY,
                        product_id int NOT NULL REFERENCES {s}.products, qty int NOT NULL);
CREATE INDEX ON {s}.sales (product_id);
INSERT INTO {s}.categories SELECT g, 'category ' || g FROM generate_series(1, 10) g;
INSERT INTO {s}.products SELECT g, 1 + g % 10 FROM generate_series(1, 100) g;
INSERT INTO {s}.sales (product_id, qty) SELECT 1 + g % 100, 1 + g % 7 FROM generate_series(1, 200000) g;
CREATE MATERIALIZED VIEW {s}.by_category AS
  SELECT c.name, count(*) AS n, max(s.qty) AS max_qty
    FROM {s}.sales s JOIN {s}.products p ON p.id = s.product_id
    JOIN {s}.categories c ON c.id = p.category_id
   GROUP BY c.name;
CREATE UNIQUE INDEX ON {s}.by_category (name);
"#;

pub async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let load_start = loadavg();
    let bin_dir = pin_binary()?;
    let bin = bin_dir.path().join("refreshd");
    let (secs, rounds) = (plan.writers_secs, plan.writers_rounds);
    progress(&format!(
        "refreshd bench: writers through a join path, {rounds} round(s) of {secs} s per run"
    ));
    let bench = Bench::on_new_cluster(&plan, 100).await?;
    let c = connect(&bench.dsn).await?;
    if plan.writers_durable {
        durable(&c).await?;
    }
    let settings = durability(&c).await?;
    // (schema, the binary converting its view: none for no trigger).
    let mut variants: Vec<(&str, Option<std::path::PathBuf>)> =
        vec![("n", None), ("p", Some(bin.clone()))];
    if let Some(other) = &plan.writers_path_against {
        variants.push(("q", Some(other.into())));
    }
    for (s, _) in &variants {
        c.batch_execute(&SCHEMA.replace("{s}", s)).await?;
    }
    c.batch_execute("VACUUM ANALYZE").await?;
    let mut capture = Vec::new();
    for (s, b) in &variants {
        let Some(b) = b else { continue };
        let label = if *b == bin {
            "this build".to_string()
        } else {
            format!("`{}`", b.display())
        };
        capture.push(format!(
            "{s} by {label}: {}",
            convert(b, &bench.dsn, s, "sales").await?
        ));
    }
    let dir = tempfile::tempdir()?;
    let script = |s: &str| dir.path().join(format!("{s}.sql"));
    for (s, _) in &variants {
        std::fs::write(
            script(s),
            format!(
                "\\set p random(1, 100)\nINSERT INTO {s}.sales (product_id, qty) VALUES (:p, 3);\n"
            ),
        )?;
    }
    // [clients][variant] -> TPS per round.
    let clients = [1u32, 8];
    let mut tps = vec![vec![Vec::new(); variants.len()]; clients.len()];
    let mut loads = Vec::new();
    for round in 1..=rounds {
        for (ci, &n) in clients.iter().enumerate() {
            for (si, (s, _)) in variants.iter().enumerate() {
                let t = pgbench(&bench, &script(s), n, secs).await?;
                progress(&format!(
                    "round {round}, {n} client(s), {s}.sales: {t:.0} tps"
                ));
                tps[ci][si].push(t);
                loads.push(load1());
            }
        }
    }
    let pg: String = c.query_one("SHOW server_version", &[]).await?.get(0);
    let mut o = run_table_head("Writers through a join path: run", "`--writers-path`");
    o += &run_row("PostgreSQL", &format!("{pg}; {settings}"));
    o += &run_row(
        "runs",
        &format!("{rounds} round(s); per round and client count, no trigger then each capture, {secs} s each (pgbench, single-row INSERT, random product)"),
    );
    o += &run_row("capture", &capture.join("; "));
    o += &host_row(&load_start, &loadavg(), "run", &loads);
    o += &wall_time_row(t0.elapsed());
    o += "\n| clients | schema (capture) | TPS per round | median | ratio to no trigger |\n|---|---|---|---|---|\n";
    for (ci, n) in clients.iter().enumerate() {
        let base = median(&tps[ci][0]);
        for (si, (s, b)) in variants.iter().enumerate() {
            let each: Vec<String> = tps[ci][si].iter().map(|t| format!("{t:.0}")).collect();
            let m = median(&tps[ci][si]);
            let what = match b {
                None => "no trigger".to_string(),
                Some(b) if *b == bin => "this build's capture".to_string(),
                Some(b) => format!("`{}`'s capture", b.display()),
            };
            o += &format!(
                "| {n} | {s} ({what}) | {} | {m:.0} | {:.2} |\n",
                each.join(" / "),
                m / base
            );
        }
    }
    print!("{o}");
    Ok(())
}

/// `init --schema S --apply --in-place --keyed S.by_category` by binary `bin`; returns
/// the line it prints for the capture of `S.<table>`.
pub(super) async fn convert(
    bin: &std::path::Path,
    dsn: &str,
    s: &str,
    table: &str,
) -> Result<String> {
    let view = format!("{s}.by_category");
    let args = [
        "init",
        "--url",
        dsn,
        "--schema",
        s,
        "--apply",
        "--in-place",
        "--keyed",
        &view,
    ];
    let (toml, _) = run_refreshd(bin, &args).await?;
    Ok(toml
        .lines()
        .find(|l| l.starts_with(&format!("# capture: {s}.{table}")))
        .map(|l| l.trim_start_matches("# ").to_string())
        .unwrap_or_default())
}
