//! `refreshd init` on databases it has never seen: it changes nothing, its config and
//! SQL make `check` pass, and a daemon run on them carries a write to every view.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{wait_for, Daemon, TestDb};

/// Views on views, quoted mixed-case names, a partitioned base table, a plain view in
/// between, a view without a usable unique index, one the app role may not refresh,
/// and no triggers at all.
fn unseen_schema(db: &TestDb) {
    db.psql(
        r#"
        CREATE ROLE init_app LOGIN;
        CREATE SCHEMA "Sales" AUTHORIZATION init_app;
        SET ROLE init_app;
        CREATE TABLE "Sales"."Orders" (id int, region text NOT NULL, amount int NOT NULL, day date NOT NULL)
          PARTITION BY RANGE (day);
        CREATE TABLE "Sales"."Orders_2025" PARTITION OF "Sales"."Orders" FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        CREATE TABLE "Sales"."Orders_2026" PARTITION OF "Sales"."Orders" FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        INSERT INTO "Sales"."Orders" VALUES (1, 'north', 10, '2025-05-01'), (2, 'south', 20, '2026-02-01');
        CREATE TABLE "Sales".regions (region text PRIMARY KEY, label text);
        INSERT INTO "Sales".regions VALUES ('north', 'North'), ('south', 'South');
        CREATE VIEW "Sales".labelled AS
          SELECT o.region, r.label, o.amount FROM "Sales"."Orders" o JOIN "Sales".regions r USING (region);
        CREATE MATERIALIZED VIEW "Sales"."Daily Totals" AS
          SELECT region, label, sum(amount) AS total, count(*) AS n FROM "Sales".labelled GROUP BY region, label;
        CREATE UNIQUE INDEX ON "Sales"."Daily Totals" (region);
        CREATE MATERIALIZED VIEW "Sales".top_region AS
          SELECT 1 AS k, max(total) AS best FROM "Sales"."Daily Totals";
        CREATE UNIQUE INDEX ON "Sales".top_region (k);
        CREATE MATERIALIZED VIEW "Sales".no_key AS SELECT count(*) AS n FROM "Sales".regions;
        RESET ROLE;
        CREATE TABLE public.secret (v int);
        CREATE MATERIALIZED VIEW public.not_ours AS SELECT count(*) AS n FROM public.secret;
        GRANT CONNECT ON DATABASE "DB" TO init_app;
        "#
        .replace("\"DB\"", &format!("\"{}\"", db.name))
        .as_str(),
    );
}

fn psql_file(db: &TestDb, path: &std::path::Path) {
    let out = Command::new(refreshd::cli::cluster::client_program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(db.dsn())
        .arg("-f")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn triggers(db: &TestDb) -> String {
    db.psql("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")
}

#[tokio::test(flavor = "multi_thread")]
async fn init_adopts_a_database_it_has_never_seen() {
    let db = TestDb::new();
    unseen_schema(&db);
    assert_eq!(triggers(&db), "0");
    let sql = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn_as("init_app"),
        "--sql",
        sql.path().to_str().unwrap(),
    ]);
    let config = support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert_eq!(triggers(&db), "0", "init changes nothing by itself");

    // Dependency order, quoted names, concurrently = false where no index, and the view
    // the role may not refresh only as a comment with the fix.
    let daily = config
        .find(r#"name = '"Sales"."Daily Totals"'"#)
        .expect(&config);
    let top = config
        .find(r#"name = '"Sales".top_region'"#)
        .expect(&config);
    assert!(daily < top, "{config}");
    assert!(config.contains("concurrently = false"), "{config}");
    assert!(
        config.contains("# NOT SERVED: public.not_ours") && config.contains("OWNER TO"),
        "{config}"
    );
    assert!(
        !config.contains("\n[[view]]\nname = \"public.not_ours\""),
        "{config}"
    );
    assert!(!config.to_lowercase().contains("password="), "{config}");

    // Applied: check passes on the printed config, and a daemon carries writes to every
    // view (a partition written directly, a table behind a plain view).
    psql_file(&db, &sql.path().join(refreshd::cli::init::INSTALL));
    psql_file(&db, &sql.path().join(refreshd::cli::init::INSTALL)); // idempotent
    assert_ne!(triggers(&db), "0");
    let (_dir, path) = support::write_config(&config);
    let check = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", support::stdout(&check));

    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(20)).await;
    db.psql("INSERT INTO \"Sales\".\"Orders_2026\" VALUES (3, 'north', 1000, '2026-03-01')");
    wait_for(
        Duration::from_secs(10),
        "the partition write in both levels",
        || async { db.psql("SELECT best FROM \"Sales\".top_region") == "1010" },
    )
    .await;
    db.psql("INSERT INTO \"Sales\".regions VALUES ('east', 'East')");
    wait_for(
        Duration::from_secs(10),
        "the write behind the plain view",
        || async { db.psql("SELECT n FROM \"Sales\".no_key") == "3" },
    )
    .await;

    // The rollback removes every trigger init's SQL created.
    psql_file(&db, &sql.path().join(refreshd::cli::init::ROLLBACK));
    assert_eq!(triggers(&db), "0");
}

/// On the seeds' schemas, whose triggers already notify their channels, init keeps those
/// channels: the same views, in the same order, on the same channels as
/// config.example.toml, and no new trigger to install.
#[test]
fn init_on_the_seeds_reproduces_the_example_config() {
    let db = TestDb::new();
    for file in ["attendance/install.sql", "inventory/install.sql"] {
        psql_file(&db, &support::repo().join("sql").join(file));
    }
    let sql = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--sql",
        sql.path().to_str().unwrap(),
    ]);
    let config = support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let generated = refreshd::config::Config::parse(std::path::Path::new("init.toml"), &config)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    let example =
        refreshd::config::Config::load(&support::repo().join("config.example.toml")).unwrap();
    // Equivalent: the same views, the same `concurrently`, and the same channels reach
    // each view — its own, or those of the views it reads (init leaves a view that only
    // reads another one to be refreshed by dependency; the example also lists the
    // channel).
    let names = |c: &refreshd::config::Config| {
        let own = |n: &str| -> Vec<String> {
            c.views
                .iter()
                .find(|v| v.name.to_string() == n)
                .map(|v| v.channels.clone())
                .unwrap_or_default()
        };
        let mut v: Vec<(String, Vec<String>, bool)> = c
            .views
            .iter()
            .map(|v| {
                let mut ch = v.channels.clone();
                if v.name.to_string() == "core.mv_low_stock_alerts" {
                    ch.extend(own("core.mv_product_stock_summary"));
                }
                ch.sort();
                ch.dedup();
                (v.name.to_string(), ch, v.concurrently)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&generated), names(&example), "{config}");
    let pos = |n: &str| {
        generated
            .views
            .iter()
            .position(|v| v.name.to_string() == n)
            .unwrap()
    };
    assert!(pos("core.mv_product_stock_summary") < pos("core.mv_low_stock_alerts"));
    let install = std::fs::read_to_string(sql.path().join(refreshd::cli::init::INSTALL)).unwrap();
    assert!(
        !install.contains("CREATE TRIGGER"),
        "the seeds' own triggers are kept:\n{install}"
    );
}

/// A partitioned table (three partitions) joined to a plain table under one materialized
/// view, and a second view over the first.
fn partitioned_schema(db: &TestDb) {
    db.psql(
        r#"
        CREATE SCHEMA shop;
        CREATE TABLE shop.customers (id int PRIMARY KEY, region text NOT NULL);
        INSERT INTO shop.customers VALUES (1, 'north'), (2, 'south');
        CREATE TABLE shop.payments (id int, customer int NOT NULL, amount int NOT NULL, day date NOT NULL)
          PARTITION BY RANGE (day);
        CREATE TABLE shop.payments_2025_01 PARTITION OF shop.payments FOR VALUES FROM ('2025-01-01') TO ('2025-02-01');
        CREATE TABLE shop.payments_2025_02 PARTITION OF shop.payments FOR VALUES FROM ('2025-02-01') TO ('2025-03-01');
        CREATE TABLE shop.payments_2025_03 PARTITION OF shop.payments FOR VALUES FROM ('2025-03-01') TO ('2025-04-01');
        INSERT INTO shop.payments VALUES (1, 1, 10, '2025-01-05'), (2, 2, 20, '2025-02-05');
        CREATE MATERIALIZED VIEW shop.by_region AS
          SELECT c.region, sum(p.amount) AS total FROM shop.payments p JOIN shop.customers c ON c.id = p.customer
           GROUP BY c.region;
        CREATE UNIQUE INDEX ON shop.by_region (region);
        "#,
    );
}

fn capture_triggers(db: &TestDb) -> String {
    db.psql(
        "SELECT coalesce(string_agg(tgrelid::regclass::text || '=' || encode(tgargs, 'escape') || '@' || oid, ',' ORDER BY tgrelid::regclass::text), '') \
           FROM pg_trigger WHERE tgname = 'refreshd_notify' AND tgenabled <> 'D'",
    )
}

fn init_apply(db: &TestDb, sql: &std::path::Path) -> String {
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--sql",
        sql.to_str().unwrap(),
        "--apply",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    support::stdout(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn init_apply_installs_capture_with_one_channel_per_root() {
    let db = TestDb::new();
    partitioned_schema(&db);
    without_apply_nothing_changes(&db);

    let sql = tempfile::tempdir().unwrap();
    let config = init_apply(&db, sql.path());
    let installed = one_channel_per_root_and_a_trigger_per_table(&db, &config);

    // Applying again is a no-op: the same triggers (same oids), the same config.
    let again = init_apply(&db, sql.path());
    assert_eq!(again, config);
    assert_eq!(capture_triggers(&db), installed, "applied twice");

    // A daemon on the printed config sees writes through the parent and straight into
    // a partition.
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(20)).await;
    db.psql("INSERT INTO shop.payments VALUES (3, 1, 100, '2025-03-05')");
    wait_for(
        Duration::from_secs(10),
        "a write through the parent",
        || async { db.psql("SELECT total FROM shop.by_region WHERE region = 'north'") == "110" },
    )
    .await;
    db.psql("INSERT INTO shop.payments_2025_02 VALUES (4, 1, 1000, '2025-02-10')");
    wait_for(
        Duration::from_secs(10),
        "a write straight into a partition",
        || async { db.psql("SELECT total FROM shop.by_region WHERE region = 'north'") == "1110" },
    )
    .await;
    db.psql("UPDATE shop.customers SET region = 'east' WHERE id = 2");
    wait_for(
        Duration::from_secs(10),
        "a write to the joined table",
        || async { db.psql("SELECT count(*) FROM shop.by_region WHERE region = 'east'") == "1" },
    )
    .await;
    drop(d);

    // The rollback removes everything refreshd installed; --apply then reinstalls.
    psql_file(&db, &sql.path().join(refreshd::cli::init::ROLLBACK));
    assert_eq!(capture_triggers(&db), "");
    assert_eq!(
        db.psql(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'refreshd') \
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'refreshd')"
        ),
        "0"
    );
    psql_file(&db, &sql.path().join(refreshd::cli::init::ROLLBACK)); // idempotent
    init_apply(&db, sql.path());
    assert_eq!(capture_triggers(&db).matches('@').count(), 5);
}

/// Without --apply nothing changes; the install file written has refreshd.force.
fn without_apply_nothing_changes(db: &TestDb) {
    let dry = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--sql",
        dry.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert_eq!(capture_triggers(db), "");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'refreshd'"),
        "0"
    );
    let install = std::fs::read_to_string(dry.path().join(refreshd::cli::init::INSTALL)).unwrap();
    assert!(
        install.contains("CREATE OR REPLACE FUNCTION refreshd.force(view text)"),
        "{install}"
    );
}

/// After `init --apply`: shop.by_region has one channel per root table, partitions
/// folded in; the root, every partition and the plain table have a trigger each,
/// partitions sending the root's channel; refreshd.force exists. The triggers.
fn one_channel_per_root_and_a_trigger_per_table(db: &TestDb, config: &str) -> String {
    let parsed = refreshd::config::Config::parse(std::path::Path::new("init.toml"), config)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    let view = parsed
        .views
        .iter()
        .find(|v| v.name.to_string() == "shop.by_region")
        .expect(config);
    let mut channels = view.channels.clone();
    channels.sort();
    assert_eq!(
        channels,
        vec!["refreshd_shop_customers", "refreshd_shop_payments"],
        "one channel per root, partitions folded in:\n{config}"
    );
    // The root, every partition and the plain table: each its own trigger, partitions
    // sending the root's channel; refreshd's schema with refreshd.force.
    let installed = capture_triggers(db);
    for (table, channel) in [
        ("shop.customers", "refreshd_shop_customers"),
        ("shop.payments", "refreshd_shop_payments"),
        ("shop.payments_2025_01", "refreshd_shop_payments"),
        ("shop.payments_2025_02", "refreshd_shop_payments"),
        ("shop.payments_2025_03", "refreshd_shop_payments"),
    ] {
        assert!(
            installed.contains(&format!("{table}={channel}\\000@")),
            "{table}: {installed}"
        );
    }
    assert_eq!(installed.matches('@').count(), 5, "{installed}");
    assert_eq!(
        db.psql("SELECT to_regprocedure('refreshd.force(text)') IS NOT NULL"),
        "t"
    );
    installed
}

/// A partitioned fact table joined to two dimensions, grouped by a dimension's key, and
/// to a table of date ranges (a join on no equality); a view with a window function.
fn keyed_schema(db: &TestDb) {
    db.psql(
        r#"
        CREATE SCHEMA kv;
        CREATE TABLE kv.products (id int PRIMARY KEY, category text NOT NULL);
        CREATE TABLE kv.stores (id int PRIMARY KEY, region text NOT NULL);
        CREATE TABLE kv.sales (id int, product int NOT NULL, store int NOT NULL, qty int NOT NULL, day date NOT NULL)
          PARTITION BY RANGE (day);
        CREATE TABLE kv.sales_2025 PARTITION OF kv.sales FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        CREATE TABLE kv.sales_2026 PARTITION OF kv.sales FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        INSERT INTO kv.products VALUES (1, 'tools'), (2, 'toys');
        INSERT INTO kv.stores VALUES (1, 'north'), (2, 'closed');
        INSERT INTO kv.sales VALUES (1, 1, 1, 3, '2025-05-01'), (2, 2, 2, 4, '2026-02-01');
        CREATE TABLE kv.seasons (name text PRIMARY KEY, starts date NOT NULL, ends date NOT NULL);
        INSERT INTO kv.seasons VALUES ('all', '2000-01-01', '2100-01-01');
        CREATE MATERIALIZED VIEW kv.by_category AS
          SELECT p.category, count(*) AS n, sum(s.qty) AS qty
            FROM kv.sales s JOIN kv.products p ON p.id = s.product JOIN kv.stores st ON st.id = s.store
            JOIN kv.seasons se ON s.day >= se.starts AND s.day < se.ends
           WHERE st.region <> 'closed'
           GROUP BY p.category;
        CREATE UNIQUE INDEX ON kv.by_category (category);
        CREATE MATERIALIZED VIEW kv.ranked AS
          SELECT s.id, rank() OVER (ORDER BY s.qty) AS r FROM kv.sales s;
        CREATE UNIQUE INDEX ON kv.ranked (id);
        "#,
    );
}

/// The comment lines of `config` from the one starting with `first` up to the next
/// non-comment line, without their `# `.
fn comment_block(config: &str, first: &str) -> Vec<String> {
    let lines: Vec<&str> = config.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("# {first}")))
        .unwrap_or_else(|| panic!("no comment starting with {first:?}:\n{config}"));
    lines[start..]
        .iter()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches("# ").to_string())
        .collect()
}

#[test]
fn init_keyed_reports_the_derivation_per_base_table() {
    let db = TestDb::new();
    keyed_schema(&db);
    let sql = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--sql",
        sql.path().to_str().unwrap(),
        "--apply",
        "--keyed",
        "kv.by_category",
    ]);
    let config = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{config}");
    let block = comment_block(&config, "--keyed kv.by_category");
    // Each base table with its case: the partitioned fact table and the store dimension
    // reach the key along join paths, the product dimension carries it, the date ranges
    // (no equality) recompute everything; then each column's class.
    assert_eq!(
        block[..11],
        [
            "--keyed kv.by_category: incremental maintenance derived from its definition",
            "(per base table: carries the key / join path / recompute everything; then per column)",
            "key (category)",
            "sales: join path sales.product = products.id → key",
            "products: carries the key (category)",
            "stores: join path stores.id = sales.store → sales.product = products.id → key",
            // Its changes take deltas (below), its keys found that way for the rest.
            "  (with deltas: the changed rows of stores are applied to their groups as such; the line above is how its keys are found otherwise)",
            "seasons: recompute everything (a non-equi join (s.day >= se.starts))",
            "  category: key",
            "  n: delta (count(*))",
            "  qty: delta (sum)",
        ],
        "{config}"
    );
    // Then the conversion (--apply): its names, what each table's triggers send.
    assert_eq!(
        block[11..18],
        [
            "keyed conversion: table kv.by_category_live, definition kv.by_category_def, channel refreshd_keys_kv_by_category",
            "capture: kv.sales: the values its changed rows reach the key by (product), buffered in refreshd.kv_by_category_reach_sales_0db04b5529ce and joined along its path at the refresh",
            "capture: kv.products: the keys of its old and new rows",
            // kv.sales is reached through by stores: the largest table that can take
            // deltas is stores.
            "capture: kv.stores: its changed rows, buffered in refreshd.kv_by_category_delta and applied as deltas (TRUNCATE: everything)",
            "capture: kv.seasons: every change buffers \"everything\" (a non-equi join (s.day >= se.starts))",
            "deltas: fact table kv.stores",
            refreshd::cli::init::CONVERTED,
        ],
        "{config}"
    );
    assert_eq!(stderr.matches("): converted").count(), 1, "{stderr}");
    // The block sits right above the view's own entry, which is unchanged.
    let at = config.find("# --keyed kv.by_category").unwrap();
    let entry = config.find("name = \"kv.by_category\"").expect(&config);
    assert!(at < entry, "{config}");
    refreshd::config::Config::parse(std::path::Path::new("init.toml"), &config)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    let (_dir, path) = support::write_config(&config);
    let check = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", support::stdout(&check));
}

#[test]
fn init_keyed_refuses_a_window_function_and_still_prints_the_config() {
    let db = TestDb::new();
    keyed_schema(&db);
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--keyed",
        "kv.ranked",
        "--keyed",
        "kv.by_category",
    ]);
    let config = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{config}");
    assert!(
        stderr.contains("--keyed kv.ranked: cannot be derived: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot be derived: a window function (rank)"),
        "{stderr}"
    );
    assert!(
        config.contains("# --keyed kv.ranked: cannot be derived: "),
        "{config}"
    );
    // The full config still: both views, the derivable one reported.
    let parsed = refreshd::config::Config::parse(std::path::Path::new("init.toml"), &config)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    let mut names: Vec<String> = parsed.views.iter().map(|v| v.name.to_string()).collect();
    names.sort();
    assert_eq!(names, vec!["kv.by_category", "kv.ranked"], "{config}");
    assert!(
        config.contains("# --keyed kv.by_category: incremental maintenance derived"),
        "{config}"
    );
}

#[test]
fn init_keyed_on_a_hostile_name_writes_only_the_intended_keys() {
    let db = TestDb::new();
    let view = "k\n[[view]]\nname = 'x' DROP TABLE kh.canary; --";
    let column = "g\n[defaults]\nx = 1";
    db.psql(&format!(
        r#"
        CREATE SCHEMA kh;
        CREATE TABLE kh.canary (v int);
        CREATE TABLE kh.t ({c} text NOT NULL, v int NOT NULL);
        CREATE MATERIALIZED VIEW kh.{v} AS SELECT {c}, sum(v) AS total FROM kh.t GROUP BY {c};
        CREATE UNIQUE INDEX ON kh.{v} ({c});
        "#,
        v = refreshd::pg::ident::quote_ident(view),
        c = refreshd::pg::ident::quote_ident(column),
    ));
    let arg = format!("kh.{}", refreshd::pg::ident::quote_ident(view));
    let out = support::refreshd(&["init", "--url", &db.dsn(), "--keyed", &arg]);
    let config = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{config}");
    // Every entry of the report on one comment line, the line breaks in names escaped.
    let block = comment_block(&config, "--keyed kh.");
    assert_eq!(
        block[..7],
        [
            "--keyed kh.\"k\\n[[view]]\\nname = 'x' DROP TABLE kh.canary; --\": incremental maintenance derived from its definition",
            "(per base table: carries the key / join path / recompute everything; then per column)",
            "key (g\\n[defaults]\\nx = 1)",
            "t: carries the key (g\\n[defaults]\\nx = 1)",
            "  (with deltas: the changed rows of t are applied to their groups as such; the line above is how its keys are found otherwise)",
            "  g\\n[defaults]\\nx = 1: key",
            "  total: delta (sum)",
        ],
        "{config}"
    );
    assert!(
        block[7].starts_with("keyed conversion: table kh.\"k\\n[[view]]"),
        "{config}"
    );
    assert!(
        block[8]
            .starts_with("capture: kh.t: its changed rows, buffered in refreshd.\"kh_k\\n[[view]]"),
        "{config}"
    );
    assert_eq!(block[9], "deltas: fact table kh.t");
    // Nothing written or applied: the keyed block is printed commented out.
    assert_eq!(block[10], refreshd::cli::init::NOT_CONVERTED, "{config}");
    assert!(!stderr.contains("\nDROP"), "{stderr}");
    let doc: toml::Value = toml::from_str(&config).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let keys = |v: &toml::Value| -> Vec<String> { v.as_table().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&doc), vec!["database", "defaults", "view"], "{config}");
    assert_eq!(
        keys(&doc["defaults"]),
        vec!["debounce", "max_delay"],
        "{config}"
    );
    let views = doc["view"].as_array().unwrap();
    assert_eq!(views.len(), 1, "{config}");
    assert_eq!(keys(&views[0]), vec!["channels", "name"], "{config}");
    assert_eq!(
        views[0]["name"].as_str(),
        Some(format!("kh.{}", refreshd::pg::ident::quote_ident(view)).as_str())
    );
    assert_eq!(db.psql("SELECT count(*) FROM kh.canary"), "0");
}

#[test]
fn init_keyed_flags_are_checked() {
    let db = TestDb::new();
    keyed_schema(&db);
    let out = support::refreshd(&["init", "--url", &db.dsn(), "--in-place"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::stderr(&out));
    assert!(
        support::stderr(&out).contains("--keyed"),
        "{}",
        support::stderr(&out)
    );

    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--keyed",
        "kv.by_category",
        "--in-place",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert!(support::stdout(&out).contains(refreshd::cli::init::NOT_CONVERTED));

    let out = support::refreshd(&["init", "--url", &db.dsn(), "--keyed", "kv.\"no\nsuch\""]);
    let stderr = support::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--keyed kv.\"no\\nsuch\": no such relation"),
        "{stderr}"
    );
    assert_eq!(
        support::stdout(&out),
        "",
        "nothing printed for an unknown name"
    );

    // Not a materialized view, or one without a key: not derivable, reported, exit 1.
    db.psql(
        "CREATE VIEW kv.plain AS SELECT * FROM kv.products; \
         CREATE MATERIALIZED VIEW kv.keyless AS SELECT category, count(*) AS n FROM kv.products GROUP BY category",
    );
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--keyed",
        "kv.plain",
        "--keyed",
        "kv.keyless",
    ]);
    let (config, stderr) = (support::stdout(&out), support::stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "--keyed kv.plain: cannot be derived: not a materialized view (it is a view)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "--keyed kv.keyless: cannot be derived: no unique index usable by REFRESH CONCURRENTLY"
        ),
        "{stderr}"
    );
    let elsewhere = config
        .find("# --keyed views not in this configuration:\n# --keyed kv.plain: cannot be derived")
        .expect(&config);
    let keyless = config
        .find("# --keyed kv.keyless: cannot be derived")
        .expect(&config);
    assert!(keyless < elsewhere, "{config}");

    let out = support::refreshd(&["init", "--url", &db.dsn(), "--keyed", "unqualified"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::stderr(&out));
}

/// A misspelt `--schema` printed an empty configuration and exited 0 without a word
/// (found by a review, 2026-12-05): it still exits 0 (a database may have no view yet),
/// and says so.
#[test]
fn init_says_when_it_finds_no_materialized_view() {
    let db = TestDb::new();
    let out = support::refreshd(&["init", "--url", &db.dsn(), "--schema", "nosuch"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        support::stderr(&out).contains("refreshd init: no materialized view in schema nosuch"),
        "{}",
        support::stderr(&out)
    );
}

/// A view reading no table (a system catalog, a constant) gets a schedule: with
/// `channels = []` and nothing else, `check` refused the config `init` printed (a
/// conformance review, 2026-12-05).
#[tokio::test(flavor = "multi_thread")]
async fn a_view_no_trigger_can_feed_gets_a_schedule_and_check_passes() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA sys; \
         CREATE MATERIALIZED VIEW sys.settings AS SELECT name, setting FROM pg_catalog.pg_settings; \
         CREATE UNIQUE INDEX ON sys.settings (name); \
         CREATE MATERIALIZED VIEW sys.one AS SELECT 1 AS k; \
         CREATE UNIQUE INDEX ON sys.one (k);",
    );
    let out = support::refreshd(&["init", "--url", &db.dsn(), "--schema", "sys", "--apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let config = support::stdout(&out);
    assert_eq!(
        config.matches("schedule = \"0 0 * * * *\"").count(),
        2,
        "{config}"
    );
    let (_dir, path) = support::write_config(&config);
    let check = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        support::stdout(&check),
        support::stderr(&check)
    );
}

/// `--sql DIR` writes a validation file beside the install and rollback, in `sql/`'s
/// style: read-only, it passes after the install and names what is missing otherwise
/// (a refreshd trigger dropped, a keyed conversion changed).
#[tokio::test(flavor = "multi_thread")]
async fn init_sql_writes_a_validation_file_that_names_what_is_missing() {
    let db = TestDb::new();
    db.psql(
        r#"CREATE SCHEMA "V$refreshd_validate$";
           CREATE TABLE "V$refreshd_validate$".facts (id int PRIMARY KEY, g int NOT NULL, v int NOT NULL);
           INSERT INTO "V$refreshd_validate$".facts VALUES (1, 1, 10);
           CREATE MATERIALIZED VIEW "V$refreshd_validate$".sums AS
             SELECT g, count(*) AS n, sum(v) AS total FROM "V$refreshd_validate$".facts GROUP BY g;
           CREATE UNIQUE INDEX ON "V$refreshd_validate$".sums (g);
           CREATE MATERIALIZED VIEW "V$refreshd_validate$".maxes AS
             SELECT g, max(v) AS top FROM "V$refreshd_validate$".facts GROUP BY g;
           CREATE UNIQUE INDEX ON "V$refreshd_validate$".maxes (g);"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--sql",
        dir.path().to_str().unwrap(),
        "--apply",
        "--keyed",
        "\"V$refreshd_validate$\".sums",
        "--in-place",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let validate = dir.path().join("001_refreshd_triggers.validate.sql");
    let run = || db.server.psql_file(&db.name, &validate);
    let ok = run();
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("capture validated"),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    db.psql(r#"DROP TRIGGER refreshd_notify ON "V$refreshd_validate$".facts"#);
    let failed = run();
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("facts: no refreshd_notify trigger"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}
