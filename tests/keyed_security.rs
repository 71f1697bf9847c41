//! The consume function `init --keyed` generates is SECURITY DEFINER (its owner owns
//! the change buffers) and, with deltas, holds the view's definition as text, resolved
//! again at every call. If that text named tables as the user's search_path printed
//! them, a role allowed to create objects in a schema of that path could shadow a
//! table the definition names and have its own code run with the owner's rights in
//! every refresh. `init` reads definitions under `search_path = pg_catalog` (every
//! other name qualified) and pins the function's path to `pg_catalog, pg_temp`.
//!
//! The capture trigger functions are SECURITY DEFINER too (writers need no privilege
//! on the buffers) but run with the writer's search_path: a `SET search_path` clause
//! costs every writing statement (docs/keyed.md). Their bodies hold no name of the
//! definition, only schema-qualified tables, `pg_catalog.` functions and operators
//! written `OPERATOR(pg_catalog.x)`: a writer whose search_path puts a schema with its
//! own operators before `pg_catalog` never has them run with the owner's rights.

mod support;

use std::time::Duration;

use support::{Daemon, TestDb, TestRoles};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_shadowed_in_an_earlier_schema_of_the_search_path_is_never_read_by_the_consume_function(
) {
    let db = TestDb::new();
    let roles = TestRoles::create(&db, &["mallory"]);
    let mallory = roles.name("mallory");
    app_schema(&db, &mallory);
    let sql_dir = tempfile::tempdir().unwrap();
    let config = init_with_the_writable_schema_first(&db, &sql_dir);
    mallory_shadows_the_stores(&db, &mallory);

    // Writes, refreshed by the daemon through the consume function.
    let config = config.replace("debounce = \"2s\"", "debounce = \"50ms\"");
    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(30)).await;
    db.psql(
        "INSERT INTO app.sales SELECT g, 1 + g % 9, 2.25 FROM generate_series(501, 520) g;
         DELETE FROM app.sales WHERE id <= 5;",
    );
    // The writes are committed: the row buffer empties only when a refresh has called
    // the consume function.
    let client = db.client().await;
    support::wait_for(
        Duration::from_secs(60),
        "the consume function to empty the row buffer",
        || {
            let client = &client;
            async move {
                client
                    .query_one("SELECT count(*) FROM refreshd.app_by_region_delta", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) == 0)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM open.witness"),
        "0",
        "the shadowing view ran inside the consume function"
    );
    let diff = support::keyed_storm::difference_sql("app.by_region", "app.by_region_def", &[]);
    assert_eq!(db.psql(&diff), "0");
    assert_eq!(db.psql("SELECT sum(n) FROM app.by_region"), "515");
    assert_eq!(
        db.psql("SELECT count(*) FROM app.by_region WHERE region = 'stolen'"),
        "0"
    );
    drop(d);
    drop(roles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_search_path_puts_its_own_operators_first_never_has_them_run_by_the_capture()
{
    let db = TestDb::new();
    let roles = TestRoles::create(&db, &["mallory", "writer"]);
    let (mallory, writer) = (roles.name("mallory"), roles.name("writer"));
    app_schema(&db, &mallory);
    db.psql(&format!(
        "GRANT USAGE ON SCHEMA app TO {writer};
         GRANT SELECT, INSERT, UPDATE, DELETE ON app.sales, app.stores TO {writer};
         GRANT USAGE ON SCHEMA open TO {writer};"
    ));
    db.psql(
        "CREATE MATERIALIZED VIEW app.top_by_region AS
           SELECT st.region, max(s.amount) AS top
             FROM app.sales s JOIN app.stores st ON st.id = s.store_id
            GROUP BY st.region;
         CREATE UNIQUE INDEX top_by_region_key ON app.top_by_region (region);",
    );
    let config = init_both_views(&db);
    mallory_defines_operators(&db, &mallory);

    let d = Daemon::start(&config.replace("debounce = \"2s\"", "debounce = \"50ms\""));
    d.wait_ready(Duration::from_secs(30)).await;
    // Every kind of statement the triggers handle, from a session that resolves bare
    // operators in mallory's schema first: a store inserted (its INSERT guarded by the
    // sales' foreign key), sales inserted, updated and deleted (row buffer), a store
    // moved to another region (its old and new keys). The statements themselves
    // use no operator mallory shadows (`BETWEEN` on bigint, or on int: `>=`, `<=`).
    let writes = "SET search_path = open, pg_catalog;
         SET ROLE {writer};
         SELECT 'writer' = 'writer'::text;
         INSERT INTO app.stores VALUES (10, 'region 1');
         INSERT INTO app.sales SELECT g, 10, 3.5 FROM generate_series(501, 530) g;
         UPDATE app.sales SET amount = 7.25, store_id = 10 WHERE id BETWEEN 1 AND 40;
         DELETE FROM app.sales WHERE id BETWEEN 100 AND 150;
         UPDATE app.stores SET region = 'region 2' WHERE id BETWEEN 4 AND 4;";
    db.psql(&format!(
        "BEGIN; {} COMMIT;",
        writes.replace("{writer}", &writer)
    ));
    for view in ["app.by_region", "app.top_by_region"] {
        let diff = support::keyed_storm::difference_sql(view, &format!("{view}_def"), &[]);
        support::wait_for(
            Duration::from_secs(60),
            &format!("{view} to equal its definition"),
            || {
                let diff = diff.clone();
                let db = &db;
                async move { db.psql(&diff) == "0" }
            },
        )
        .await;
    }
    // refreshd.notify_changed() (the capture of `init --apply`, also on these tables)
    // is not SECURITY DEFINER: it may run the writer's operators, as the writer.
    let ran = db.psql(&format!(
        "SELECT count(*) || ': ' || coalesce(string_agg(DISTINCT what, ', '), '') \
           FROM open.witness WHERE what NOT LIKE '% as {writer}'"
    ));
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) > 0 FROM open.witness WHERE what = '= (text, text) as {writer}'"
        )),
        "t",
        "the writer's session resolves bare operators in mallory's schema"
    );
    assert_eq!(
        ran, "0:",
        "an operator of mallory's schema ran inside a capture trigger with its owner's rights"
    );
    drop(d);
    drop(roles);
}

/// `init --apply --in-place --keyed` of app.by_region (deltas from sales) and
/// app.top_by_region (max: its groups recomputed, sales reaching them through stores).
fn init_both_views(db: &TestDb) -> String {
    let sql_dir = tempfile::tempdir().unwrap();
    let config = init_in_place(&db.dsn(), &sql_dir, &["app.by_region", "app.top_by_region"]);
    for expected in [
        "INSERT not captured",
        "joined along its path at the refresh",
    ] {
        assert!(config.contains(expected), "{expected}: {config}");
    }
    config
}

/// In schema open, mallory's own `=`, `<>`, `>`, `+`, `%` and `->>` for every pair of
/// types the capture compares: each records that it ran, then answers as the built-in.
fn mallory_defines_operators(db: &TestDb, mallory: &str) {
    let mut sql = format!(
        "SET ROLE {mallory};
         CREATE TABLE open.witness (what text);
         GRANT INSERT ON open.witness TO PUBLIC;\n"
    );
    let ops = [
        ("eq_text", "=", "text", "text", "boolean"),
        ("ne_text", "<>", "text", "text", "boolean"),
        ("eq_int", "=", "int", "int", "boolean"),
        ("eq_char", "=", "\"char\"", "\"char\"", "boolean"),
        ("eq_oid", "=", "oid", "oid", "boolean"),
        ("gt_bigint_int", ">", "bigint", "int", "boolean"),
        ("plus_int", "+", "int", "int", "int"),
        ("mod_int", "%", "int", "int", "int"),
        ("field_jsonb", "->>", "jsonb", "text", "text"),
    ];
    for (f, op, l, r, ret) in ops {
        sql += &format!(
            "CREATE FUNCTION open.{f}(a {l}, b {r}) RETURNS {ret} LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO open.witness VALUES ('{op} ({l}, {r}) as ' || current_user);
               RETURN a OPERATOR(pg_catalog.{op}) b;
             END $$;
             CREATE OPERATOR open.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = open.{f});\n"
        );
    }
    sql += "RESET ROLE;
            SET search_path = open, pg_catalog;
            SELECT 'a' = 'a'::text;
            SELECT count(*) FROM open.witness;";
    // The operators do shadow the built-ins for such a session.
    let out = db.psql(&sql);
    assert_eq!(out.lines().last(), Some("1"), "{out}");
    db.psql("DELETE FROM open.witness");
}

/// Schema app (stores, sales, the materialized view app.by_region), and schema open,
/// where `mallory` may create objects.
fn app_schema(db: &TestDb, mallory: &str) {
    db.psql(&format!(
        r#"
        CREATE SCHEMA app;
        CREATE SCHEMA open;
        GRANT USAGE, CREATE ON SCHEMA open TO {mallory};
        CREATE TABLE app.stores (id int PRIMARY KEY, region text NOT NULL);
        CREATE TABLE app.sales (id bigint PRIMARY KEY, store_id int NOT NULL REFERENCES app.stores (id),
                                amount numeric(12,2) NOT NULL);
        INSERT INTO app.stores SELECT g, 'region ' || (g % 3) FROM generate_series(1, 9) g;
        INSERT INTO app.sales SELECT g, 1 + g % 9, g % 50 + 0.5 FROM generate_series(1, 500) g;
        CREATE MATERIALIZED VIEW app.by_region AS
          SELECT st.region, count(*) AS n, sum(s.amount) AS total
            FROM app.sales s JOIN app.stores st ON st.id = s.store_id
           GROUP BY st.region;
        CREATE UNIQUE INDEX by_region_key ON app.by_region (region);
        ANALYZE;
        "#
    ));
}

/// `init --apply --in-place --keyed app.by_region` on a session whose search_path puts
/// the writable schema first (the definition as that path prints it names `sales` and
/// `stores` unqualified): the generated SQL pins the function's path. Its config.
fn init_with_the_writable_schema_first(db: &TestDb, sql_dir: &tempfile::TempDir) -> String {
    let dsn = format!("{} options='-c search_path=open,app'", db.dsn());
    let config = init_in_place(&dsn, sql_dir, &["app.by_region"]);
    let install =
        std::fs::read_to_string(sql_dir.path().join("001_refreshd_triggers.sql")).unwrap();
    assert!(
        install.contains("SET search_path = pg_catalog, pg_temp"),
        "{install}"
    );
    config
}

/// `mallory` shadows the dimension table in schema open, with a view calling its own
/// function: run by the consume function, it would record who it ran as.
fn mallory_shadows_the_stores(db: &TestDb, mallory: &str) {
    let witness = db.psql(&format!(
        r#"
        SET ROLE {mallory};
        CREATE TABLE open.witness (who text);
        GRANT INSERT ON open.witness TO PUBLIC;
        CREATE FUNCTION open.record() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
          INSERT INTO open.witness VALUES (current_user::text);
          RETURN true;
        END $$;
        GRANT EXECUTE ON FUNCTION open.record() TO PUBLIC;
        CREATE VIEW open.stores AS
          SELECT g AS id, 'stolen'::text AS region FROM generate_series(1, 9) g WHERE open.record();
        GRANT SELECT ON open.stores TO PUBLIC;
        RESET ROLE;
        SELECT count(*) FROM open.witness;
        "#
    ));
    assert_eq!(witness.lines().last(), Some("0"), "{witness}");
}

/// `init --apply --in-place` of schema app's `views` (`--keyed` each), its SQL in
/// `sql_dir`: it succeeds and app.by_region takes deltas from app.sales. The config.
fn init_in_place(dsn: &str, sql_dir: &tempfile::TempDir, views: &[&str]) -> String {
    let dir = sql_dir.path().to_str().unwrap();
    let mut args = vec![
        "init",
        "--url",
        dsn,
        "--schema",
        "app",
        "--sql",
        dir,
        "--apply",
        "--in-place",
    ];
    for v in views {
        args.extend(["--keyed", v]);
    }
    let out = support::refreshd(&args);
    let (config, stderr) = (support::stdout(&out), support::stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{config}");
    assert!(
        stderr.contains("--keyed app.by_region: deltas: fact table app.sales"),
        "{stderr}"
    );
    config
}
