//! `refreshd check` on keyed views converted by `init --keyed` (SPEC "check", "Keyed
//! refresh"): the consume function named by `buffer` is one a refresh can call (exists
//! without arguments, returns the key columns and the all-flag, VOLATILE, executable by
//! refreshd's role with its owner's privileges), and what only makes keyed refreshes
//! slower (a group's rows found by a sequential scan, nullable key columns) is a
//! warning, not a problem: a database converted from TPC-H passes with exit 0.

mod support;

use support::{refreshd, stderr, stdout, tpch, write_config, TestDb, TestRoles};

/// `init --apply --in-place` of `views` in schema `schema`: the config.
fn adopt(db: &TestDb, schema: &str, views: &[&str]) -> String {
    let dsn = db.dsn();
    let mut args = vec![
        "init",
        "--url",
        dsn.as_str(),
        "--schema",
        schema,
        "--apply",
        "--in-place",
    ];
    for v in views {
        args.extend(["--keyed", v]);
    }
    let out = refreshd(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

/// `check` on `config`: its exit code and what it printed.
fn check(config: &str) -> (Option<i32>, String) {
    let (_dir, path) = write_config(config);
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// `refresh --all` on `config`: whether every refresh succeeded, and what it printed.
fn refresh_all(config: &str) -> (bool, String) {
    let (_dir, path) = write_config(config);
    let out = refreshd(&["refresh", "-c", path.to_str().unwrap(), "--all"]);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// The line `check` printed about `view`.
fn line<'a>(text: &'a str, view: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.split_once(": ")
                .is_some_and(|(h, _)| h.ends_with(&format!(" {view}")))
        })
        .unwrap_or_else(|| panic!("no line about {view} in\n{text}"))
}

const CK: &str = "CREATE SCHEMA ck;
     CREATE TABLE ck.sales (id int PRIMARY KEY, product text NOT NULL, qty int NOT NULL);
     INSERT INTO ck.sales SELECT g, 'p' || (g % 5), g FROM generate_series(1, 50) g;
     CREATE MATERIALIZED VIEW ck.by_product AS
       SELECT product, count(*) AS n, max(qty) AS top FROM ck.sales GROUP BY product;
     CREATE UNIQUE INDEX ON ck.by_product (product);";

/// The config with `buffer` naming `function` instead of the generated one.
fn with_buffer(config: &str, function: &str) -> String {
    let generated = "buffer = \"refreshd.ck_by_product_consume\"";
    assert!(config.contains(generated), "{config}");
    config.replace(generated, &format!("buffer = {function}"))
}

#[test]
fn check_reports_a_buffer_function_a_refresh_could_not_call() {
    let db = TestDb::new();
    db.psql(CK);
    let config = adopt(&db, "ck", &["ck.by_product"]);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        line(&text, "ck.by_product")
            .contains("buffer consumed by refreshd.ck_by_product_consume()"),
        "{text}"
    );

    db.psql(
        "CREATE FUNCTION refreshd.takes_one(int) RETURNS TABLE (product text, all_ boolean)
           LANGUAGE sql AS 'SELECT NULL::text, false';
         CREATE FUNCTION refreshd.no_flag() RETURNS TABLE (product text)
           LANGUAGE sql AS 'SELECT NULL::text';
         CREATE FUNCTION refreshd.one_row(OUT product text, OUT all_ boolean)
           LANGUAGE sql AS 'SELECT NULL::text, false';
         CREATE FUNCTION refreshd.untyped() RETURNS SETOF record
           LANGUAGE sql AS 'SELECT NULL::text, false';
         CREATE FUNCTION refreshd.stable() RETURNS TABLE (product text, all_ boolean)
           LANGUAGE sql STABLE AS 'SELECT NULL::text, false';
         CREATE FUNCTION refreshd.int_key() RETURNS TABLE (product int, all_ boolean)
           LANGUAGE sql AS 'SELECT NULL::int, false';",
    );
    let problem = |function: &str| format!("PROBLEM buffer {function}() of ck.by_product: ");
    for (function, toml, why) in unusable_buffers() {
        let bad = with_buffer(&config, toml);
        let (code, text) = check(&bad);
        assert_eq!(code, Some(1), "{function}: {text}");
        let l = line(&text, "ck.by_product");
        assert!(l.starts_with("FAIL"), "{l}");
        assert!(
            l.contains(&format!("{}{why}", problem(function))),
            "{function}: {l}"
        );
    }
    // What a refresh would have run into.
    let (ok, out) = refresh_all(&with_buffer(&config, "\"refreshd.nope\""));
    assert!(!ok, "{out}");
    assert!(out.contains("refreshd.nope() does not exist"), "{out}");

    // A key column returned as another type is a warning: the refresh casts keys
    // through text, which works here.
    let bad = with_buffer(&config, "\"refreshd.int_key\"");
    let (code, text) = check(&bad);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        line(&text, "ck.by_product").contains(
            "warning: buffer refreshd.int_key() of ck.by_product: returns key column(s) \"product\" as integer where the table has text"
        ),
        "{text}"
    );
}

/// (function, `buffer` as TOML, why `check` refuses it) for the functions
/// [`check_reports_a_buffer_function_a_refresh_could_not_call`] creates, and two that
/// do not exist.
fn unusable_buffers() -> [(&'static str, &'static str, &'static str); 7] {
    [
        (
            "refreshd.nope",
            "\"refreshd.nope\"",
            "no such function (run init --keyed again, which creates it, or correct buffer)",
        ),
        (
            "refreshd.takes_one",
            "\"refreshd.takes_one\"",
            "no such function without arguments, refreshd calls it without any (found refreshd.takes_one(integer))",
        ),
        (
            "refreshd.no_flag",
            "\"refreshd.no_flag\"",
            "returns (text), refreshd reads the 1 key column(s) and then a boolean all-flag: RETURNS TABLE (\"product\" text, all_ boolean)",
        ),
        (
            "refreshd.one_row",
            "\"refreshd.one_row\"",
            "returns one row, not a set of them",
        ),
        (
            "refreshd.untyped",
            "\"refreshd.untyped\"",
            "returns records without declared columns",
        ),
        (
            "refreshd.stable",
            "\"refreshd.stable\"",
            "declared STABLE, but it deletes what it returns from the buffer, which only a VOLATILE function may: ALTER FUNCTION \"refreshd\".\"stable\"() VOLATILE",
        ),
        // A name that would break a log line is shown escaped, on one line.
        (
            "refreshd.\"gone\\nfor good\"",
            r#""refreshd.\"gone\nfor good\"""#,
            "no such function",
        ),
    ]
}

/// refreshd's own role (not the superuser that ran init): EXECUTE on the consume
/// function and USAGE on its schema, and SECURITY DEFINER unless the role has the
/// owner's privileges. Each problem `check` reports is one a refresh runs into.
#[test]
fn check_reports_a_buffer_function_refreshds_role_may_not_call() {
    let db = TestDb::new();
    db.psql(CK);
    let config = adopt(&db, "ck", &["ck.by_product"]);
    let roles = TestRoles::create(&db, &["ck_refresher"]);
    let role = roles.name("ck_refresher");
    db.psql(&format!(
        "GRANT USAGE ON SCHEMA ck TO {role};
         GRANT SELECT, INSERT, DELETE ON ck.by_product TO {role};
         GRANT SELECT ON ck.by_product_def TO {role};"
    ));
    let url = config
        .lines()
        .find(|l| l.starts_with("url = "))
        .expect("init writes the url")
        .to_string();
    let config = config.replacen(&url, &format!("url = \"{}\"", db.dsn_as(&role)), 1);
    let what = "PROBLEM buffer refreshd.ck_by_product_consume() of ck.by_product: ";

    let (code, text) = check(&config);
    assert_eq!(code, Some(1), "{text}");
    let l = line(&text, "ck.by_product");
    assert!(
        l.contains(&format!(
            "{what}refreshd's role {role} may not use schema refreshd: GRANT USAGE ON SCHEMA \"refreshd\" TO \"{role}\""
        )),
        "{l}"
    );
    assert!(
        l.contains(&format!(
            "{what}refreshd's role {role} may not execute it: GRANT EXECUTE ON FUNCTION \"refreshd\".\"ck_by_product_consume\"() TO \"{role}\""
        )),
        "{l}"
    );
    let (ok, out) = refresh_all(&config);
    assert!(!ok, "{out}");

    db.psql(&format!(
        "GRANT USAGE ON SCHEMA refreshd TO {role};
         GRANT EXECUTE ON FUNCTION refreshd.ck_by_product_consume() TO {role};"
    ));
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    let (ok, out) = refresh_all(&config);
    assert!(ok, "{out}");

    // SECURITY INVOKER: the function would run as the role, which may not touch the
    // buffer (its owner's).
    db.psql("ALTER FUNCTION refreshd.ck_by_product_consume() SECURITY INVOKER");
    let owner = db.psql("SELECT current_user");
    let (code, text) = check(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        line(&text, "ck.by_product").contains(&format!(
            "{what}SECURITY INVOKER, so it runs with the privileges of refreshd's role {role}, which lack those of its owner {owner}: \
             ALTER FUNCTION \"refreshd\".\"ck_by_product_consume\"() SECURITY DEFINER"
        )),
        "{text}"
    );
    let (ok, out) = refresh_all(&config);
    assert!(!ok, "{out}");
    assert!(out.contains("permission denied"), "{out}");
}

/// What only makes keyed refreshes slower is a warning with what to do, and `check`
/// exits 0: one group's rows scanned for in a large table (an index helps when the
/// group is a small part of it, nothing does when it is a big one), nullable key
/// columns only when a NULL key is there.
#[test]
fn slow_keyed_refreshes_are_warnings_with_what_to_do() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA cs;
         CREATE TABLE cs.big (id int PRIMARY KEY, g int NOT NULL, flag int NOT NULL, tag text, v int NOT NULL);
         INSERT INTO cs.big SELECT i, i % 50, i % 4, CASE WHEN i % 7 = 0 THEN NULL ELSE 't' || (i % 3) END, i
           FROM generate_series(1, 20000) i;
         ANALYZE cs.big;
         CREATE MATERIALIZED VIEW cs.by_g AS SELECT g, count(*) AS n, sum(v) AS v FROM cs.big GROUP BY g;
         CREATE UNIQUE INDEX ON cs.by_g (g);
         CREATE MATERIALIZED VIEW cs.by_flag AS SELECT flag, count(*) AS n FROM cs.big GROUP BY flag;
         CREATE UNIQUE INDEX ON cs.by_flag (flag);
         CREATE MATERIALIZED VIEW cs.by_tag AS SELECT tag, count(*) AS n FROM cs.big GROUP BY tag;
         CREATE UNIQUE INDEX ON cs.by_tag (tag);",
    );
    let config = adopt(&db, "cs", &["cs.by_g", "cs.by_flag", "cs.by_tag"]);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    let by_g = line(&text, "cs.by_g");
    assert!(by_g.starts_with("WARN"), "{by_g}");
    assert!(
        by_g.contains("warning: the query restricted to one key scans \"cs\".\"big\" (~20000 rows) sequentially filtered by (big.g = "),
        "{by_g}"
    );
    assert!(
        by_g.contains("an index on the columns that filter (or the key's join) compares lets a keyed refresh read one group instead of the table"),
        "{by_g}"
    );
    // The in-place table's key column is nullable, like every materialized view's
    // column, but holds no NULL: no warning.
    assert!(!by_g.contains("NULL in key"), "{by_g}");
    assert!(
        by_g.contains("no NULL in the nullable key column(s) \"g\""),
        "{by_g}"
    );
    let by_flag = line(&text, "cs.by_flag");
    assert!(
        by_flag.contains("sequentially, one group being ~25% of it: no index would help"),
        "{by_flag}"
    );
    let by_tag = line(&text, "cs.by_tag");
    assert!(
        by_tag.contains(
            "warning: 1 row(s) have a NULL in key column(s) \"tag\": a NULL matches no key, so every change to such a group recomputes the whole view"
        ),
        "{by_tag}"
    );
    assert!(
        by_tag.contains("ALTER TABLE \"cs\".\"by_tag\" ALTER COLUMN \"tag\" SET NOT NULL"),
        "{by_tag}"
    );

    // The index the warning asks for: one group's rows are found without the scan.
    db.psql("CREATE INDEX ON cs.big (g); ANALYZE cs.big");
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    let by_g = line(&text, "cs.by_g");
    assert!(by_g.starts_with("OK"), "{by_g}");
    assert!(
        by_g.contains("one key's rows are found without scanning a large table"),
        "{by_g}"
    );
}

/// TPC-H at SF 0.01 with Q1, Q3, Q4 and Q12 converted in place (as `tests/tpch.rs`
/// does): `check` exits 0. Before, the views of a few big groups (Q1, Q4, Q12) were
/// problems (exit 1), and every view warned of nullable key columns that held no NULL.
#[test]
fn check_passes_a_tpch_database_converted_in_place() {
    const SF: &str = "0.01";
    let db = TestDb::new();
    tpch::load(&db, SF);
    for (name, n, key) in [
        ("q1", 1, "l_returnflag, l_linestatus"),
        ("q3", 3, "l_orderkey"),
        ("q4", 4, "o_orderpriority"),
        ("q12", 12, "l_shipmode"),
    ] {
        db.psql(&format!(
            "SET search_path = tpch, public; \
             CREATE MATERIALIZED VIEW tpch.{name} AS {}; \
             CREATE UNIQUE INDEX ON tpch.{name} ({key})",
            tpch::grouping(SF, n)
        ));
    }
    let config = adopt(&db, "tpch", &["tpch.q1", "tpch.q3", "tpch.q4", "tpch.q12"]);
    let (code, text) = check(&config);
    eprintln!("{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("PROBLEM"), "{text}");
    assert!(!text.contains("NULL in key"), "{text}");
    assert!(line(&text, "tpch.q3").starts_with("OK"), "{text}");
    assert!(
        line(&text, "tpch.q1")
            .contains("warning: the query restricted to one key scans \"tpch\".\"lineitem\" (~"),
        "{text}"
    );
    for v in ["tpch.q1", "tpch.q3", "tpch.q4", "tpch.q12"] {
        assert!(
            line(&text, v).contains("buffer consumed by refreshd."),
            "{text}"
        );
    }
}

/// SPEC "Incremental maintenance": `check` says, per base table of a keyed view, how
/// its changes reach the keys (carries the key, join path, or recompute everything) and
/// why, as `init --keyed` does, with the foreign keys that spare a table's INSERTs their
/// capture. Before, only `init` said it.
#[test]
fn check_says_per_base_table_how_changes_reach_the_keys() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA ck2;
         CREATE TABLE ck2.stores (id int PRIMARY KEY, region text NOT NULL);
         CREATE TABLE ck2.bands (lo int NOT NULL, hi int NOT NULL, label text NOT NULL);
         CREATE TABLE ck2.sales (id int PRIMARY KEY, store_id int NOT NULL REFERENCES ck2.stores, amt int NOT NULL);
         INSERT INTO ck2.stores SELECT g, 'r' || (g % 3) FROM generate_series(1, 9) g;
         INSERT INTO ck2.bands VALUES (0, 100, 'small'), (101, 1000000, 'big');
         INSERT INTO ck2.sales SELECT g, 1 + g % 9, g FROM generate_series(1, 300) g;
         CREATE MATERIALIZED VIEW ck2.by_region AS
           SELECT st.region, count(*) AS n, sum(s.amt) AS amt, max(b.label) AS band
             FROM ck2.sales s JOIN ck2.stores st ON st.id = s.store_id
             JOIN ck2.bands b ON s.amt BETWEEN b.lo AND b.hi
            GROUP BY st.region;
         CREATE UNIQUE INDEX ON ck2.by_region (region);",
    );
    let config = adopt(&db, "ck2", &["ck2.by_region"]);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    let l = line(&text, "ck2.by_region");
    for part in [
        "derived: stores: carries the key (region)",
        "derived: sales: join path sales.store_id = stores.id → key",
        "derived: bands: recompute everything (a non-equi join",
        // max(b.label) keeps the view from deltas (init says so): no column is one.
        "derived: column n: recompute the group (the view takes no deltas",
        // The foreign key that spares stores' INSERTs their capture.
        "INSERT not captured: a row of the view reading it also reads a row of ck2.sales",
    ] {
        assert!(l.contains(part), "{part:?} not in {l}");
    }
}

/// `check` says what the installed capture does about deltas, as `init` did (from a
/// review, 2026-12-04): sales joined through varchar columns (printed with `::text`
/// casts) were "recompute everything (no equi-join connects it to the key)" in `check`
/// and the fact table taking deltas in `init`; a view taking no deltas (a
/// `count(DISTINCT)` column) had its sums listed as "delta".
#[test]
fn check_says_which_table_takes_deltas_as_init_does() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA vc;
         CREATE TABLE vc.regions (code varchar(8) PRIMARY KEY, name varchar(40) NOT NULL);
         CREATE TABLE vc.stores (id int PRIMARY KEY, region_code varchar(8) NOT NULL REFERENCES vc.regions);
         CREATE TABLE vc.sales (id bigserial PRIMARY KEY, store_id bigint NOT NULL, customer int NOT NULL, qty int NOT NULL);
         INSERT INTO vc.regions VALUES ('N', 'north'), ('S', 'south');
         INSERT INTO vc.stores SELECT g, CASE WHEN g % 2 = 0 THEN 'N' ELSE 'S' END FROM generate_series(1, 10) g;
         INSERT INTO vc.sales (store_id, customer, qty) SELECT 1 + g % 10, g % 7, g FROM generate_series(1, 100) g;
         CREATE MATERIALIZED VIEW vc.by_region AS
           SELECT r.name, count(*) AS n, sum(s.qty) AS qty
             FROM vc.sales s JOIN vc.stores st ON st.id = s.store_id JOIN vc.regions r ON r.code = st.region_code GROUP BY r.name;
         CREATE UNIQUE INDEX ON vc.by_region (name);
         CREATE MATERIALIZED VIEW vc.customers AS
           SELECT s.store_id, count(*) AS n, sum(s.qty) AS qty, count(DISTINCT s.customer) AS customers
             FROM vc.sales s GROUP BY s.store_id;
         CREATE UNIQUE INDEX ON vc.customers (store_id);",
    );
    let config = adopt(&db, "vc", &["vc.by_region", "vc.customers"]);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    let by_region = line(&text, "vc.by_region");
    assert!(
        by_region.contains("derived: sales: its changed rows, applied to their groups as deltas"),
        "{by_region}"
    );
    assert!(
        !by_region.contains("sales: recompute everything"),
        "{by_region}"
    );
    let customers = line(&text, "vc.customers");
    assert!(!customers.contains(": delta ("), "{customers}");
    assert!(
        customers.contains("column qty: recompute the group (the view takes no deltas"),
        "{customers}"
    );
}

/// A table reaching the key through a large fact table has its changed rows looked up
/// there at the refresh, by the joined column: without an index leading with it, each
/// changed row scans the fact table (a review found a refresh 200 times slower than a
/// REFRESH of the same query: TPC-H's `part` through `lineitem.l_partkey`). `check` says
/// so, with the index that serves it, and says nothing once it exists.
#[test]
fn check_warns_of_a_reach_lookup_no_index_serves() {
    let db = TestDb::new();
    db.psql(&support::keyed_storm::reach_through_facts_sql("rl", 30000));
    let config = adopt(&db, "rl", &["rl.by_region"]);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    let warned = "a change to rl.products is joined to rl.sales by product_id at the refresh, and no index leads with that column";
    assert!(line(&text, "rl.by_region").starts_with("WARN"), "{text}");
    assert!(line(&text, "rl.by_region").contains(warned), "{text}");
    assert!(
        text.contains("(CREATE INDEX ON \"rl\".\"sales\" (\"product_id\"))"),
        "{text}"
    );
    // The lookups into the small tables, and of stores' rows in sales (indexed), are no
    // warning.
    assert!(!text.contains("by store_id"), "{text}");
    assert!(!text.contains("joined to rl.regions"), "{text}");
    db.psql("CREATE INDEX ON rl.sales (product_id)");
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(warned), "{text}");
}

/// `check` says what the foreign-key guard is (incremental::guard): off after `init`,
/// held once refreshd's keeper turned it on; and a guard held that nothing keeps
/// (`capture = "off"`: no capture check, no keeper call) is a problem, since a key
/// dropped later would go unseen; left off, only a warning.
#[test]
fn check_reports_the_foreign_key_guard_and_a_held_guard_nothing_keeps() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA gk;
         CREATE TABLE gk.stores (id int PRIMARY KEY, region text NOT NULL);
         CREATE TABLE gk.sales (id int PRIMARY KEY,
             store_id int NOT NULL REFERENCES gk.stores (id), qty int NOT NULL);
         INSERT INTO gk.stores SELECT g, 'r' || (g % 3) FROM generate_series(1, 10) g;
         INSERT INTO gk.sales SELECT g, 1 + g % 10, g FROM generate_series(1, 100) g;
         CREATE MATERIALIZED VIEW gk.by_region AS
           SELECT st.region, count(*) AS n, sum(s.qty) AS qty
             FROM gk.sales s JOIN gk.stores st ON st.id = s.store_id GROUP BY st.region;
         CREATE UNIQUE INDEX ON gk.by_region (region);",
    );
    let config = adopt(&db, "gk", &["gk.by_region"]);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("foreign-key guard: off (the INSERTs it would guard are captured"),
        "{text}"
    );
    db.psql(support::keyed_storm::KEEP_GUARDS_SQL);
    let (code, text) = check(&config);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("foreign-key guard: held"), "{text}");
    let off = config.replace("kind = \"keyed\"", "kind = \"keyed\"\ncapture = \"off\"");
    assert_ne!(off, config);
    let (code, text) = check(&off);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("nothing keeps the guard; it is held"),
        "{text}"
    );
    db.psql("UPDATE refreshd.gk_by_region_consume_guard SET holds = false");
    let (code, text) = check(&off);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("nothing keeps the guard; it stays off"),
        "{text}"
    );
}
