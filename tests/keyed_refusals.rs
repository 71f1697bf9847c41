//! `refreshd init --keyed` on a real cluster refuses a view whose key depends on the
//! session (SPEC "Incremental maintenance", issue 20): the capture triggers would compute
//! keys in the writer's session, the refresh in its own.

mod support;

use support::TestDb;

#[test]
fn init_keyed_refuses_a_key_computed_from_the_session() {
    let db = TestDb::new();
    db.psql(
        r#"
        CREATE SCHEMA kr;
        CREATE TABLE kr.sales (id int PRIMARY KEY, product int NOT NULL, qty int NOT NULL);
        INSERT INTO kr.sales VALUES (1, 1, 3), (2, 2, 4);
        CREATE MATERIALIZED VIEW kr.mine AS
          SELECT (CURRENT_USER || ':' || s.id) AS k, s.qty FROM kr.sales s;
        CREATE UNIQUE INDEX ON kr.mine (k);
        CREATE MATERIALIZED VIEW kr.sharded AS
          SELECT g.k, count(*) AS n
            FROM (SELECT (coalesce(current_setting('kr.shard', true), 'x') || s.product) AS k FROM kr.sales s) g
           GROUP BY g.k;
        CREATE UNIQUE INDEX ON kr.sharded (k);
        "#,
    );
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--keyed",
        "kr.mine",
        "--keyed",
        "kr.sharded",
    ]);
    let config = support::stdout(&out);
    let stderr = support::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{config}");
    for (view, why) in [
        (
            "kr.mine",
            "the definition calls CURRENT_USER, whose value is the role computing it",
        ),
        (
            "kr.sharded",
            "key column k is an expression over a function of the session (current_setting)",
        ),
    ] {
        let reason = format!("--keyed {view}: cannot be derived: {why}");
        assert!(stderr.contains(&reason), "{reason}\n{stderr}");
        assert!(
            config.contains(&format!("# {reason}")),
            "{reason}\n{config}"
        );
    }
    // Nothing converted: both stay materialized views, refreshed as before.
    assert!(!config.contains("kind = \"keyed\""), "{config}");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_matviews WHERE schemaname = 'kr'"),
        "2"
    );
}

/// Functions of the user's that are not IMMUTABLE (from a review, 2026-12-04): a STABLE
/// one reading a rates table in an aggregate took deltas, and the groups kept the old
/// rate's contributions after the rate changed (no capture sees that table); a key
/// computed with a VOLATILE one was derived. Both are refused now, naming the function;
/// an IMMUTABLE one, also through a plain view the definition reads, is not.
#[test]
fn init_keyed_refuses_functions_of_the_users_that_are_not_immutable() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA fx;
         CREATE TABLE fx.rates (currency text PRIMARY KEY, rate numeric NOT NULL);
         INSERT INTO fx.rates VALUES ('EUR', 1.10), ('USD', 1);
         CREATE FUNCTION fx.rate(c text) RETURNS numeric LANGUAGE sql STABLE AS $$ SELECT rate FROM fx.rates WHERE currency = c $$;
         CREATE FUNCTION fx.bucket(i int) RETURNS int LANGUAGE sql VOLATILE AS $$ SELECT i % 3 $$;
         CREATE FUNCTION fx.half(x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT x / 2 $$;
         CREATE TABLE fx.sales (id serial PRIMARY KEY, store int NOT NULL, currency text NOT NULL, amount numeric NOT NULL);
         INSERT INTO fx.sales (store, currency, amount) SELECT g % 3, CASE WHEN g % 2 = 0 THEN 'EUR' ELSE 'USD' END, g FROM generate_series(1, 60) g;
         CREATE VIEW fx.priced AS SELECT s.*, s.amount * fx.rate(s.currency) AS usd FROM fx.sales s;
         CREATE MATERIALIZED VIEW fx.by_store AS
           SELECT store, count(*) AS n, sum(amount * fx.rate(currency)) AS usd FROM fx.sales GROUP BY store;
         CREATE UNIQUE INDEX ON fx.by_store (store);
         CREATE MATERIALIZED VIEW fx.through_view AS SELECT store, sum(usd) AS usd FROM fx.priced GROUP BY store;
         CREATE UNIQUE INDEX ON fx.through_view (store);
         CREATE MATERIALIZED VIEW fx.by_bucket AS SELECT fx.bucket(id) AS bucket, count(*) AS n FROM fx.sales GROUP BY 1;
         CREATE UNIQUE INDEX ON fx.by_bucket (bucket);
         CREATE MATERIALIZED VIEW fx.halved AS SELECT store, sum(fx.half(amount)) AS half FROM fx.sales GROUP BY store;
         CREATE UNIQUE INDEX ON fx.halved (store);",
    );
    let dsn = db.dsn();
    for (view, function) in [
        ("fx.by_store", "fx.rate(text) (stable)"),
        ("fx.through_view", "fx.rate(text) (stable)"),
        ("fx.by_bucket", "fx.bucket(integer) (volatile)"),
    ] {
        let out = support::refreshd(&["init", "--url", &dsn, "--keyed", view]);
        let stderr = support::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{view}: {stderr}");
        let reason = format!("--keyed {view}: cannot be derived: the definition calls {function}");
        assert!(stderr.contains(&reason), "{reason}\n{stderr}");
    }
    let out = support::refreshd(&["init", "--url", &dsn, "--keyed", "fx.halved"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_matviews WHERE schemaname = 'fx'"),
        "4"
    );
}

/// A sliding window (`WHERE at > now() - '1 hour'`): rows leave it with no write, so no
/// capture keeps it; it was converted ("no deltas") and went stale for good (from a
/// review, 2026-12-04). Refused now; `now()` as a column of its own is kept.
#[test]
fn init_keyed_refuses_a_view_the_clock_filters() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA sw;
         CREATE TABLE sw.hits (id serial PRIMARY KEY, store int NOT NULL, at timestamptz NOT NULL);
         INSERT INTO sw.hits (store, at) SELECT g % 3, now() - g * interval '1 minute' FROM generate_series(1, 120) g;
         CREATE MATERIALIZED VIEW sw.last_hour AS
           SELECT store, count(*) AS n FROM sw.hits WHERE at > now() - interval '1 hour' GROUP BY store;
         CREATE UNIQUE INDEX ON sw.last_hour (store);
         CREATE MATERIALIZED VIEW sw.stamped AS SELECT store, count(*) AS n, now() AS computed_at FROM sw.hits GROUP BY store;
         CREATE UNIQUE INDEX ON sw.stamped (store);",
    );
    let dsn = db.dsn();
    let out = support::refreshd(&["init", "--url", &dsn, "--keyed", "sw.last_hour"]);
    let stderr = support::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let reason = "--keyed sw.last_hour: cannot be derived: the definition calls now() beyond a column of its own";
    assert!(stderr.contains(reason), "{reason}\n{stderr}");
    let out = support::refreshd(&["init", "--url", &dsn, "--keyed", "sw.stamped"]);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
}

/// Found by two reviews (2026-12-05): a view reading a partition directly took deltas
/// from that partition's triggers, which a write through the partitioned table never
/// fires (its rows stayed out of the view for good); a view converted beside, then in
/// place, had two tables consuming one set of buffers. Both are refused with the reason.
#[test]
fn init_keyed_refuses_a_partition_read_directly_and_a_second_conversion_in_place() {
    let db = TestDb::new();
    db.psql(
        "CREATE SCHEMA kp; \
         CREATE TABLE kp.sales (id int NOT NULL, yr int NOT NULL, v int NOT NULL) PARTITION BY LIST (yr); \
         CREATE TABLE kp.sales_2025 PARTITION OF kp.sales FOR VALUES IN (2025); \
         CREATE TABLE kp.sales_old PARTITION OF kp.sales DEFAULT; \
         INSERT INTO kp.sales SELECT g, 2024 + g % 2, g FROM generate_series(1, 20) g; \
         CREATE MATERIALIZED VIEW kp.cur AS SELECT v % 3 AS k, count(*) AS n FROM kp.sales_2025 GROUP BY 1; \
         CREATE UNIQUE INDEX ON kp.cur (k); \
         CREATE MATERIALIZED VIEW kp.all_years AS SELECT yr, count(*) AS n FROM kp.sales GROUP BY yr; \
         CREATE UNIQUE INDEX ON kp.all_years (yr);",
    );
    let dsn = db.dsn();
    let init = |args: &[&str]| {
        let mut all = vec!["init", "--url", &dsn, "--schema", "kp", "--apply"];
        all.extend_from_slice(args);
        let out = support::refreshd(&all);
        (out.status.code(), support::stderr(&out))
    };
    let (code, said) = init(&["--keyed", "kp.cur"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("--keyed kp.cur: cannot be derived: the definition reads partition kp.sales_2025 directly"),
        "{said}"
    );
    let (code, said) = init(&["--keyed", "kp.all_years"]);
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = init(&["--keyed", "kp.all_years", "--in-place"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("--keyed kp.all_years: cannot be derived: converted beside it already (kp.all_years_live kept from kp.all_years_def)"),
        "{said}"
    );
    assert_eq!(
        db.psql("SELECT relkind FROM pg_class WHERE oid = 'kp.all_years'::regclass"),
        "m"
    );
}

/// In place, the views over the view are dropped and created again as their owners: a
/// role that is not a member of such an owner failed with a bare "must be able to SET
/// ROLE" that named neither the view nor the way out (found by a review, 2026-12-05).
#[test]
fn in_place_names_a_dependent_view_whose_owner_init_cannot_act_as() {
    let db = TestDb::new();
    let roles = support::TestRoles::create(&db, &["shopo"]);
    let shop = roles.name("shopo");
    db.psql(&format!(
        "GRANT CREATE ON DATABASE {d} TO {shop}; CREATE SCHEMA ko AUTHORIZATION {shop}; \
         SET ROLE {shop}; \
         CREATE TABLE ko.t (id int PRIMARY KEY, g int NOT NULL, v int NOT NULL); \
         INSERT INTO ko.t SELECT i, i % 3, i FROM generate_series(1, 30) i; \
         CREATE MATERIALIZED VIEW ko.mv AS SELECT g, count(*) AS n, sum(v) AS sv FROM ko.t GROUP BY g; \
         CREATE UNIQUE INDEX ON ko.mv (g); \
         RESET ROLE; \
         CREATE VIEW ko.top AS SELECT * FROM ko.mv WHERE n > 1;",
        d = db.name
    ));
    let dsn = db.dsn_as(&shop);
    let out = support::refreshd(&[
        "init",
        "--url",
        &dsn,
        "--schema",
        "ko",
        "--keyed",
        "ko.mv",
        "--in-place",
        "--apply",
    ]);
    let said = support::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("ko.top reads ko.mv, and postgres owns it: converting in place drops and creates it again as its owner"),
        "{said}"
    );
    assert!(said.contains("without --in-place"), "{said}");
    // Nothing changed.
    assert_eq!(
        db.psql("SELECT relkind FROM pg_class WHERE oid = 'ko.mv'::regclass"),
        "m"
    );
}
