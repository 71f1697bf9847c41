//! `init --keyed VIEW` applies a fact table's changes as deltas (src/incremental/delta/
//! wired by src/incremental/generate.rs): the fact table's triggers buffer rows, the
//! consume function applies them to the live table in the refresh's snapshot, and the
//! result stays equal to its definition under four concurrent writers (rows moved
//! between groups and partitions, groups emptied, NULL values, dimension moves and key
//! renames recomputing their groups after the deltas).

mod support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::RngExt;
use support::keyed_storm::{difference_sql, storm_then_equal, wait_equal, Exact, Length};
use support::{Daemon, TestDb};

/// A fact table partitioned by year, two dimensions in a chain (store → region), and a
/// view grouped by the region's name: counts, sums, an avg, FILTERs, a nullable
/// numeric column.
fn schema(db: &TestDb) {
    db.psql(
        r#"
        CREATE SCHEMA kd;
        CREATE TABLE kd.regions (id int PRIMARY KEY, name text NOT NULL UNIQUE);
        CREATE TABLE kd.stores (id int PRIMARY KEY, region_id int NOT NULL REFERENCES kd.regions (id));
        CREATE TABLE kd.sales (id bigint NOT NULL, store_id int NOT NULL REFERENCES kd.stores (id),
                               qty int NOT NULL, price numeric(12,2), day date NOT NULL)
          PARTITION BY RANGE (day);
        CREATE TABLE kd.sales_2025 PARTITION OF kd.sales FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        CREATE TABLE kd.sales_2026 PARTITION OF kd.sales FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        CREATE INDEX ON kd.sales (id);
        CREATE INDEX ON kd.sales (store_id);
        INSERT INTO kd.regions SELECT g, 'region ' || g FROM generate_series(1, 6) g;
        INSERT INTO kd.stores SELECT g, 1 + g % 6 FROM generate_series(1, 24) g;
        INSERT INTO kd.sales
          SELECT g, 1 + g % 24, 1 + g % 17,
                 CASE WHEN g % 5 = 0 THEN NULL ELSE (g % 97) + 0.25 END,
                 date '2025-01-01' + (g % 700)
            FROM generate_series(1, 3000) g;
        CREATE MATERIALIZED VIEW kd.by_region AS
          SELECT r.name AS region,
                 count(*) AS n,
                 sum(s.qty) AS qty,
                 count(s.price) AS priced,
                 sum(s.price) AS revenue,
                 avg(s.price) AS avg_price,
                 count(*) FILTER (WHERE s.qty > 10) AS big,
                 sum(s.qty) FILTER (WHERE s.qty > 10) AS big_qty
            FROM kd.sales s JOIN kd.stores st ON st.id = s.store_id JOIN kd.regions r ON r.id = st.region_id
           GROUP BY r.name;
        CREATE UNIQUE INDEX by_region_key ON kd.by_region (region);
        -- Without count(*): a group that lost rows may have vanished, and is rechecked.
        CREATE MATERIALIZED VIEW kd.qty_by_region AS
          SELECT r.name AS region, sum(s.qty) AS qty, sum(CASE WHEN s.qty > 10 THEN 1 ELSE 0 END) AS big
            FROM kd.sales s JOIN kd.stores st ON st.id = s.store_id JOIN kd.regions r ON r.id = st.region_id
           WHERE s.day >= '2025-03-01'
           GROUP BY r.name;
        CREATE UNIQUE INDEX qty_by_region_key ON kd.qty_by_region (region);
        ANALYZE;
        "#,
    );
}

/// One random transaction: inserts (through the root and straight into a partition),
/// value changes (some to NULL), a row moved to another store (region) or another
/// year (partition), deletes, a region emptied, a store moved to another region, a
/// region renamed (its key).
fn kd_op(rng: &mut StdRng, writer: usize, round: usize) -> String {
    let choice = rng.random_range(0..12);
    kd_sql(choice, rng, writer, round)
}

/// Fact table writes only: every one of them is applied as a delta.
fn kd_fact_op(rng: &mut StdRng, writer: usize, round: usize) -> String {
    let choice = [0, 1, 2, 3, 4, 5, 6, 7, 8][rng.random_range(0..9)];
    kd_sql(choice, rng, writer, 1000 + round)
}

fn kd_sql(choice: u32, rng: &mut StdRng, writer: usize, round: usize) -> String {
    let sale = rng.random_range(1..3400);
    let store = rng.random_range(1..=24);
    let region = rng.random_range(1..=6);
    let price = if rng.random_range(0..4) == 0 {
        "NULL".to_string()
    } else {
        format!(
            "{}.{:02}",
            rng.random_range(0..200),
            rng.random_range(0..100)
        )
    };
    let id = 100_000 + writer * 10_000 + round;
    match choice {
        0 => format!(
            "INSERT INTO kd.sales VALUES ({id}, {store}, {}, {price}, date '2025-01-01' + {})",
            rng.random_range(1..20),
            rng.random_range(0..720)
        ),
        1 => format!(
            "INSERT INTO kd.sales_2026 VALUES ({id}, {store}, {}, {price}, date '2026-02-01')",
            rng.random_range(1..20)
        ),
        2 => format!("UPDATE kd.sales SET qty = qty + 3 WHERE id = {sale}"),
        3 => format!("UPDATE kd.sales SET price = {price} WHERE id = {sale}"),
        4 => format!("UPDATE kd.sales SET store_id = {store} WHERE id = {sale}"),
        5 => format!(
            "UPDATE kd.sales SET day = CASE WHEN day < '2026-01-01' THEN day + 365 ELSE day - 365 END WHERE id = {sale}"
        ),
        6 => format!("DELETE FROM kd.sales WHERE id = {sale}"),
        7 => format!("DELETE FROM kd.sales_2025 WHERE id = {sale}"),
        // A region's sales all deleted: its group vanishes (until a sale comes back).
        8 => format!(
            "DELETE FROM kd.sales WHERE store_id IN (SELECT id FROM kd.stores WHERE region_id = {region})"
        ),
        9 => format!("UPDATE kd.stores SET region_id = {region} WHERE id = {store}"),
        10 => format!(
            "UPDATE kd.regions SET name = 'region {region} w{writer} r{round}' WHERE id = {region}"
        ),
        _ => format!("UPDATE kd.sales SET qty = qty + 1, price = NULL WHERE store_id = {store}"),
    }
}

fn init(db: &TestDb, args: &[&str]) -> (std::process::Output, String, String) {
    let dsn = db.dsn();
    let mut all = vec!["init", "--url", dsn.as_str()];
    all.extend_from_slice(args);
    let out = support::refreshd(&all);
    let (o, e) = (support::stdout(&out), support::stderr(&out));
    (out, o, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fact_tables_changes_are_applied_as_deltas_under_four_writers() {
    let db = TestDb::new();
    schema(&db);
    let sql_dir = tempfile::tempdir().unwrap();
    let config = init_kd_in_place(&db, &sql_dir);

    // Without the daemon: a fact row is buffered as a row (no key), and the consume
    // function applies it to the live table and returns no key to recompute.
    let client = db.client().await;
    the_consume_function_applies_rows(&db, &client).await;

    // The daemon, under four writers.
    let config = config.replace("debounce = \"2s\"", "debounce = \"50ms\"");
    let (_cfg_dir, path) = support::write_config(&config);
    let check = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}\n{}\n{config}",
        support::stdout(&check),
        support::stderr(&check)
    );
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(30)).await;
    let dsn = db.dsn();
    let exact = [
        Exact::definition("kd.by_region", "kd.by_region_def", &[]),
        Exact::definition("kd.qty_by_region", "kd.qty_by_region_def", &[]),
    ];
    let s = storm_then_equal(&dsn, 4, Length::Rounds(150), 7, kd_op, "", &exact).await;
    assert!(
        s.committed > 400,
        "committed {}, rolled back {}",
        s.committed,
        s.rolled_back
    );
    let s = storm_then_equal(&dsn, 4, Length::Rounds(80), 9, kd_fact_op, "", &exact).await;
    assert!(s.committed > 200);
    // Groups did vanish and come back; the row buffer was filled and consumed.
    assert_eq!(
        db.psql("SELECT count(*) FROM refreshd.kd_by_region_delta"),
        "0"
    );
    // The daemon stopped first: on PostgreSQL 13 and 14 an idle backend may keep its
    // table statistics unsent (at most one report per 500 ms, none while idle); a
    // backend that exits sends them.
    drop(d);
    the_row_buffer_was_used(&client).await;

    // The rollback restores the materialized view and drops the buffers.
    let rollback = sql_dir.path().join(refreshd::cli::init::ROLLBACK);
    let out = db.server.psql_file(&db.name, &rollback);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(
        db.psql("SELECT relkind FROM pg_class WHERE oid = 'kd.by_region'::regclass"),
        "m"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'refreshd' AND c.relname LIKE 'kd_by_region%'"),
        "0"
    );
}

/// `init --apply --in-place` keying kd.by_region and kd.qty_by_region, SQL into
/// `sql_dir`: kd.by_region takes kd.sales's changes as deltas. Its config.
fn init_kd_in_place(db: &TestDb, sql_dir: &tempfile::TempDir) -> String {
    let (out, config, stderr) = init(
        db,
        &[
            "--schema",
            "kd",
            "--sql",
            sql_dir.path().to_str().unwrap(),
            "--apply",
            "--in-place",
            "--keyed",
            "kd.by_region",
            "--keyed",
            "kd.qty_by_region",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{config}");
    assert!(
        stderr.contains("--keyed kd.by_region: deltas: fact table kd.sales"),
        "{stderr}"
    );
    assert!(
        config.contains("# deltas: fact table kd.sales\n"),
        "{config}"
    );
    assert_eq!(
        db.psql("SELECT relkind FROM pg_class WHERE oid = 'kd.by_region'::regclass"),
        "r"
    );
    config
}

/// An inserted fact row is buffered as a row, no key; consuming applies it to
/// kd.by_region (no key returned), and a deleted one takes it back out.
async fn the_consume_function_applies_rows(db: &TestDb, client: &tokio_postgres::Client) {
    let before = db.psql("SELECT n || '/' || qty FROM kd.by_region WHERE region = 'region 2'");
    db.psql("INSERT INTO kd.sales VALUES (99999, 1, 5, 1.50, '2025-06-01')");
    assert_eq!(
        db.psql("SELECT count(*) FROM refreshd.kd_by_region_delta"),
        "1"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM refreshd.kd_by_region_keys"),
        "0"
    );
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let keys = client
        .query("SELECT * FROM refreshd.kd_by_region_consume()", &[])
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let after = db.psql("SELECT n || '/' || qty FROM kd.by_region WHERE region = 'region 2'");
    assert_ne!(before, after);
    assert_eq!(
        db.psql("SELECT count(*) FROM refreshd.kd_by_region_delta"),
        "0"
    );
    let diff = difference_sql("kd.by_region", "kd.by_region_def", &[]);
    assert_eq!(db.psql(&diff), "0");
    // A row deleted: its group's count and sums go down by it.
    db.psql("DELETE FROM kd.sales WHERE id = 99999");
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM refreshd.kd_by_region_consume(); COMMIT")
        .await
        .unwrap();
    assert_eq!(
        db.psql("SELECT n || '/' || qty FROM kd.by_region WHERE region = 'region 2'"),
        before
    );
    assert_eq!(db.psql(&diff), "0");
}

/// pg_stat_user_tables counts many inserts into and deletes from kd.by_region's row
/// buffer (waited for: the statistics arrive late).
async fn the_row_buffer_was_used(client: &tokio_postgres::Client) {
    support::wait_for(
        Duration::from_secs(30),
        "the row buffer's inserts and deletes in pg_stat_user_tables",
        || async move {
            let _ = client
                .batch_execute("SELECT pg_stat_clear_snapshot()")
                .await;
            client
                .query_one(
                    "SELECT n_tup_ins > 500 AND n_tup_del > 500 FROM pg_stat_user_tables \
                     WHERE schemaname = 'refreshd' AND relname = 'kd_by_region_delta'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        },
    )
    .await;
}

/// Benchmark (ignored; run alone, see BENCHMARKS.md "Deltas: TPC-H Q1"): commit →
/// visible for one INSERT into lineitem at TPC-H SF 0.1, Q1 kept by refreshd with
/// deltas against a plain `REFRESH MATERIALIZED VIEW CONCURRENTLY` of the same view.
/// `REFRESHD_BENCH_SF` changes the scale factor; 11 runs each, medians printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_tpch_q1_commit_to_visible_deltas_against_refresh_concurrently() {
    use std::time::Instant;
    use support::tpch;
    let sf = std::env::var("REFRESHD_BENCH_SF").unwrap_or_else(|_| "0.1".into());
    let db = TestDb::new();
    tpch::load(&db, &sf);
    let q1 = tpch::query(&sf, 1);
    let cut = q1.rfind("ORDER BY").expect("ORDER BY");
    db.psql(&format!(
        "SET search_path = tpch, public; CREATE MATERIALIZED VIEW tpch.q1 AS {}; \
         CREATE UNIQUE INDEX q1_key ON tpch.q1 (l_returnflag, l_linestatus); ANALYZE",
        &q1[..cut]
    ));
    let client = db.client().await;
    let runs = 11;
    let mut plain = Vec::new();
    for i in 0..runs {
        client.batch_execute(&bench_insert(i)).await.unwrap();
        let t = Instant::now();
        client
            .batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY tpch.q1")
            .await
            .unwrap();
        plain.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let config = init_q1_in_place(&db);
    let config = config.replace("debounce = \"2s\"", "debounce = \"0s\"");
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(60)).await;
    let q1_exact = || [Exact::definition("tpch.q1", "tpch.q1_def", &[])];
    wait_equal(&db.dsn(), "", &q1_exact()).await;
    let count = "SELECT count_order FROM tpch.q1 WHERE l_returnflag = 'N' AND l_linestatus = 'O'";
    let mut keyed = Vec::new();
    for i in runs..2 * runs {
        let before: i64 = client.query_one(count, &[]).await.unwrap().get(0);
        let t = Instant::now();
        client.batch_execute(&bench_insert(i)).await.unwrap();
        loop {
            let now: i64 = client.query_one(count, &[]).await.unwrap().get(0);
            if now > before {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "never visible");
        }
        keyed.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_equal(&db.dsn(), "", &q1_exact()).await;
    eprintln!(
        "TPC-H SF {sf} Q1, one INSERT into lineitem, {runs} runs: REFRESH MATERIALIZED VIEW CONCURRENTLY median {:.1} ms (runs {:?}); keyed with deltas, commit -> visible median {:.1} ms (runs {:?})",
        median(plain.clone()),
        plain.iter().map(|x| x.round()).collect::<Vec<_>>(),
        median(keyed.clone()),
        keyed.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
    );
    drop(d);
}

/// The benchmark's `i`th INSERT: one lineitem row into Q1's ('N', 'O') group.
fn bench_insert(i: usize) -> String {
    format!(
        "INSERT INTO tpch.lineitem SELECT l_orderkey, l_partkey, l_suppkey, {}, l_quantity, \
         l_extendedprice, l_discount, l_tax, 'N', 'O', date '1995-07-01', l_commitdate, \
         l_receiptdate, l_shipinstruct, l_shipmode, 'bench' FROM tpch.lineitem \
         WHERE l_linenumber = 1 ORDER BY l_orderkey LIMIT 1",
        1000 + i
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `init --apply --in-place --keyed tpch.q1`, which takes lineitem's deltas: its config.
fn init_q1_in_place(db: &TestDb) -> String {
    let (out, config, stderr) = init(
        db,
        &[
            "--schema",
            "tpch",
            "--apply",
            "--in-place",
            "--keyed",
            "tpch.q1",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("--keyed tpch.q1: deltas: fact table tpch.lineitem"),
        "{stderr}"
    );
    config
}

/// The fact table is the eligible table with the most rows, also before ANALYZE and
/// outside a partition tree (the estimate read such tables as 0 rows, and the first
/// table in FROM won: here the small one).
#[test]
fn the_biggest_eligible_table_is_the_fact_table_before_analyze() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA kf;
         CREATE TABLE kf.small (k int PRIMARY KEY, label text NOT NULL);
         CREATE TABLE kf.big (id bigint PRIMARY KEY, k int NOT NULL, x int NOT NULL);
         INSERT INTO kf.small SELECT g, 'k' || g FROM generate_series(1, 10) g;
         INSERT INTO kf.big SELECT g, 1 + g % 10, g % 7 FROM generate_series(1, 20000) g;
         CREATE MATERIALIZED VIEW kf.by_k AS
           SELECT b.k, count(*) AS n, sum(a.x) AS x
             FROM kf.small b JOIN kf.big a ON a.k = b.k
            GROUP BY b.k;
         CREATE UNIQUE INDEX by_k_key ON kf.by_k (k);",
    );
    let (out, config, stderr) = init(&db, &["--schema", "kf", "--keyed", "kf.by_k"]);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{config}");
    assert!(
        stderr.contains("--keyed kf.by_k: deltas: fact table kf.big"),
        "{stderr}"
    );
}
