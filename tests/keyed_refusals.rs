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
