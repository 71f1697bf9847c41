//! Delta application (src/incremental/delta.rs) on a real cluster: the generated row
//! buffer, capture statements and apply, installed here by hand (their wiring into
//! `init` and the daemon is not part of this test), keep a live table equal to its
//! definition through randomized inserts, deletes and updates (rows moving between
//! groups, groups vanishing and coming back, NULLs, a dimension renamed), applied in a
//! REPEATABLE READ transaction after each batch; a failed apply gives its rows back;
//! rows committed after the apply's snapshot are applied the next time, exactly once.

mod support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use refreshd::incremental::{self, Catalog, DeltaFacts, DeltaPlan, DeltaTable};
use refreshd::pg::ident::{quote_ident, QualifiedName};
use support::TestDb;

const SCHEMA: &str = r#"
    CREATE SCHEMA dt;
    CREATE TABLE dt.cats (id int PRIMARY KEY, name text NOT NULL UNIQUE);
    CREATE TABLE dt.facts (id bigint PRIMARY KEY, cat_id int NOT NULL REFERENCES dt.cats (id),
                           grp int NOT NULL, qty int NOT NULL, price numeric, flag boolean NOT NULL,
                           note text, disc numeric(6,2) NOT NULL DEFAULT 0.05);
    INSERT INTO dt.cats VALUES (1, 'alpha'), (2, 'beta'), (3, 'gamma');
    INSERT INTO dt.facts SELECT g, 1 + g % 3, g % 4, g % 7, CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.25 END,
                                g % 2 = 0, 'n' FROM generate_series(1, 40) g;
    -- Counts for every sum: sums go NULL and groups vanish from the live table alone;
    -- a filtered sum without its own count is rechecked when it loses an input.
    CREATE VIEW dt.full_def AS
      SELECT c.name, f.grp, count(*) AS n, count(f.price) AS np, sum(f.price) AS sp,
             avg(f.price) AS ap, sum(f.qty) AS sq, avg(f.qty) AS aq,
             count(*) FILTER (WHERE f.flag) AS nf, sum(f.price) FILTER (WHERE f.flag) AS spf,
             avg(f.disc) AS ad
        FROM dt.facts f JOIN dt.cats c ON c.id = f.cat_id
       WHERE f.qty <> 3
       GROUP BY c.name, f.grp;
    -- No count(*): every group losing rows is rechecked.
    CREATE VIEW dt.bare_def AS
      SELECT f.grp, sum(f.qty) AS sq FROM dt.facts f GROUP BY f.grp;
"#;

struct View {
    def: QualifiedName,
    live: QualifiedName,
    key: Vec<String>,
    plan: DeltaPlan,
}

async fn catalog_of(client: &tokio_postgres::Client, table: &str) -> DeltaTable {
    let rows = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull \
               FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::text::regclass \
                AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&table],
        )
        .await
        .unwrap();
    let (s, n) = table.split_once('.').unwrap();
    DeltaTable {
        table: table.to_string(),
        name: QualifiedName::new(s, n),
        columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        not_null: rows
            .iter()
            .filter(|r| r.get::<_, bool>(2))
            .map(|r| r.get(0))
            .collect(),
        incomparable: Vec::new(),
        generated: Vec::new(),
        row_security: false,
        estimated_rows: if n == "facts" { 1e6 } else { 3.0 },
    }
}

/// Derives and installs one view: its live table (filled from the definition, unique
/// index on the key), the plan's buffers, and triggers on dt.facts running the plan's
/// capture statements.
async fn install(client: &tokio_postgres::Client, name: &str, key: &[&str]) -> View {
    install_in(client, "dt", name, key, &["dt.facts"]).await
}

/// [`install`] in `schema` (tables `facts` and `cats`), with the capture triggers on
/// `capture_on` (the fact table and its partitions).
async fn install_in(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
    key: &[&str],
    capture_on: &[&str],
) -> View {
    let def = QualifiedName::new(schema, format!("{name}_def"));
    let live = QualifiedName::new(schema, format!("{name}_live"));
    let tables = [
        catalog_of(client, &format!("{schema}.facts")).await,
        catalog_of(client, &format!("{schema}.cats")).await,
    ];
    let mut catalog = Catalog::new();
    for t in &tables {
        let cols: Vec<&str> = t.columns.iter().map(|(c, _)| c.as_str()).collect();
        catalog = catalog.table(&t.table, &cols);
    }
    catalog.search_path = vec!["public".into()];
    let (definition, columns) = definition_of(client, &def).await;
    let d = incremental::derive(&definition, key, &catalog).expect("derives");
    let plan = incremental::delta_plan(
        &d,
        &DeltaFacts {
            view: &def,
            live: &live,
            definition: &definition,
            columns: &columns,
            equality: &[],
            catalog: &catalog,
            tables: &tables,
            fact: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.fact, format!("{schema}.facts"));
    let view = View {
        def,
        live,
        key: key.iter().map(|k| k.to_string()).collect(),
        plan,
    };
    let sql = install_sql(&view, schema, name, capture_on);
    client.batch_execute(&sql).await.unwrap();
    view
}

/// The view `def`'s definition (as PostgreSQL prints it) and its (column, type)s.
async fn definition_of(
    client: &tokio_postgres::Client,
    def: &QualifiedName,
) -> (String, Vec<(String, String)>) {
    let definition: String = client
        .query_one(
            "SELECT pg_catalog.pg_get_viewdef($1::text::regclass)",
            &[&def.quoted()],
        )
        .await
        .unwrap()
        .get(0);
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
               FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::text::regclass \
                AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&def.quoted()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (definition, columns)
}

/// What installs `v`: its live table filled from the definition with a unique index on
/// the key, the plan's buffers, and a function `<name>_capture` in `schema` running the
/// plan's capture statements from statement triggers on each table of `capture_on`.
fn install_sql(v: &View, schema: &str, name: &str, capture_on: &[&str]) -> String {
    let plan = &v.plan;
    let keys = v
        .key
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "CREATE TABLE {l} AS SELECT * FROM {d};\nCREATE UNIQUE INDEX ON {l} ({keys});\n",
        l = v.live.quoted(),
        d = v.def.quoted()
    );
    for s in &plan.install {
        sql.push_str(s);
        sql.push_str(";\n");
    }
    let func = format!(
        "{}.{}",
        quote_ident(schema),
        quote_ident(&format!("{name}_capture"))
    );
    sql.push_str(&format!(
        "CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $f$\nBEGIN\n  IF TG_OP = 'INSERT' THEN {};\n  ELSIF TG_OP = 'DELETE' THEN {};\n  ELSE {};\n  END IF;\n  RETURN NULL;\nEND;\n$f$;\n",
        plan.capture_insert, plan.capture_delete, plan.capture_update
    ));
    for table in capture_on {
        for (op, referencing) in [
            ("INSERT", "REFERENCING NEW TABLE AS new_rows"),
            ("DELETE", "REFERENCING OLD TABLE AS old_rows"),
            (
                "UPDATE",
                "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
            ),
        ] {
            sql.push_str(&format!(
                "CREATE TRIGGER {} AFTER {op} ON {table} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {func}();\n",
                quote_ident(&format!("{name}_{op}"))
            ));
        }
    }
    sql
}

/// One keyed refresh as the consume function will run it: REPEATABLE READ, the live
/// table locked before the snapshot, the deltas, then the recheck keys (and `extra`,
/// a predicate on the definition's rows standing for the dimension's key capture)
/// recomputed from the definition. Returns how many groups were rechecked.
async fn consume(client: &tokio_postgres::Client, v: &View, extra: Option<&str>) -> i64 {
    let on = v
        .key
        .iter()
        .map(|k| format!("x.{q} = k.{q}", q = quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let null = v
        .key
        .iter()
        .map(|k| format!("k.{} IS NULL", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let extra = extra.unwrap_or("false");
    let mut sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ;\nLOCK TABLE {live} IN EXCLUSIVE MODE;\nSET LOCAL search_path TO {sp};\n",
        live = v.live.quoted(),
        sp = v
            .plan
            .search_path
            .iter()
            .map(|s| quote_ident(s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in &v.plan.apply {
        sql.push_str(s);
        sql.push_str(";\n");
    }
    if let Some(p) = &v.plan.probe {
        sql.push_str(&format!("DO $probe$ {p}; $probe$;\n"));
    }
    sql.push_str(&format!(
        "CREATE TEMP TABLE rk ON COMMIT DROP AS SELECT * FROM {rc} LIMIT 0;\n\
         WITH x AS ({rk}) INSERT INTO rk SELECT * FROM x;\n\
         CREATE TEMP TABLE rk_count ON COMMIT DROP AS SELECT count(*) AS n FROM rk;\n\
         DELETE FROM {live} x WHERE EXISTS (SELECT 1 FROM rk k WHERE ({on}) OR {null}) OR ({extra});\n\
         INSERT INTO {live} SELECT * FROM {def} x WHERE EXISTS (SELECT 1 FROM rk k WHERE ({on}) OR {null}) OR ({extra});\n",
        rc = v.plan.recheck.quoted(),
        rk = v.plan.recheck_keys,
        live = v.live.quoted(),
        def = v.def.quoted(),
    ));
    client.batch_execute(&sql).await.unwrap();
    let n: i64 = client
        .query_one("SELECT n FROM rk_count", &[])
        .await
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").await.unwrap();
    n
}

async fn differences(client: &tokio_postgres::Client, v: &View) -> i64 {
    client
        .query_one(
            &support::differences_sql(
                &format!("SELECT * FROM {}", v.live.quoted()),
                &format!("SELECT * FROM {}", v.def.quoted()),
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn buffered(client: &tokio_postgres::Client, v: &View) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {}", v.plan.buffer.quoted()),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn price(rng: &mut StdRng) -> String {
    if rng.random_range(0..4) == 0 {
        "NULL".into()
    } else {
        format!("{}.{}", rng.random_range(0..100), rng.random_range(0..100))
    }
}

/// One random statement on the fact table: inserts, deletes, updates moving rows
/// between groups (category and grp), prices to and from NULL, the filter flipped, a
/// column no view reads, groups emptied whole.
fn statement(rng: &mut StdRng, next_id: &mut i64) -> String {
    match rng.random_range(0..9) {
        0 | 1 => {
            let n = rng.random_range(1..4);
            let rows: Vec<String> = (0..n)
                .map(|_| {
                    *next_id += 1;
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}.{:02})",
                        next_id,
                        rng.random_range(1..=3),
                        rng.random_range(0..4),
                        rng.random_range(0..7),
                        price(rng),
                        rng.random_range(0..2) == 0,
                        rng.random_range(0..3),
                        rng.random_range(0..100)
                    )
                })
                .collect();
            format!(
                "INSERT INTO dt.facts (id, cat_id, grp, qty, price, flag, disc) VALUES {}",
                rows.join(", ")
            )
        }
        2 => format!(
            "DELETE FROM dt.facts WHERE id % 7 = {}",
            rng.random_range(0..7)
        ),
        3 => format!(
            "DELETE FROM dt.facts WHERE cat_id = {} AND grp = {}",
            rng.random_range(1..=3),
            rng.random_range(0..4)
        ),
        4 => format!(
            "UPDATE dt.facts SET grp = (grp + 1) % 4 WHERE id % 5 = {}",
            rng.random_range(0..5)
        ),
        5 => format!(
            "UPDATE dt.facts SET cat_id = {}, price = {} WHERE id % 6 = {}",
            rng.random_range(1..=3),
            price(rng),
            rng.random_range(0..6)
        ),
        6 => format!(
            "UPDATE dt.facts SET flag = NOT flag, qty = qty + 1, disc = {}.{:02} WHERE id % 4 = {}",
            rng.random_range(0..3),
            rng.random_range(0..100),
            rng.random_range(0..4)
        ),
        7 => format!(
            "UPDATE dt.facts SET note = 'x{}' WHERE id % 3 = 0",
            rng.random_range(0..100)
        ),
        _ => format!(
            "UPDATE dt.facts SET price = NULL WHERE grp = {}",
            rng.random_range(0..4)
        ),
    }
}

async fn connect(db: &TestDb) -> tokio_postgres::Client {
    db.client().await
}

/// Randomized batches, each followed by one keyed refresh per view; both views equal
/// their definitions after every refresh; a renamed category is recomputed as its key
/// capture would ask (the old and the new name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_keep_the_live_table_equal_to_its_definition() {
    let db = TestDb::new();
    let client = connect(&db).await;
    client.batch_execute(SCHEMA).await.unwrap();
    let full = install(&client, "full", &["name", "grp"]).await;
    let bare = install(&client, "bare", &["grp"]).await;
    assert_eq!(
        full.plan.columns,
        ["cat_id", "grp", "qty", "price", "flag", "disc"]
    );
    assert!(full
        .plan
        .notes
        .contains(&"ad: avg, (old avg × old n + added - removed) / n".to_string()));
    let mut rng = StdRng::seed_from_u64(20);
    let mut next_id = 1000;
    let (mut rechecked_full, mut rechecked_bare) = (0, 0);
    let mut vanished = false;
    for batch in 0..80 {
        let mut sql = String::from("BEGIN;\n");
        for _ in 0..rng.random_range(1..4) {
            sql.push_str(&statement(&mut rng, &mut next_id));
            sql.push_str(";\n");
        }
        let rename = batch % 17 == 16;
        if rename {
            sql.push_str("UPDATE dt.cats SET name = name || '+' WHERE id = 2;\n");
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.unwrap();
        let groups_before: i64 = client
            .query_one("SELECT count(*) FROM dt.full_live", &[])
            .await
            .unwrap()
            .get(0);
        let extra = rename.then_some("x.name LIKE 'beta%'");
        rechecked_full += consume(&client, &full, extra).await;
        rechecked_bare += consume(&client, &bare, None).await;
        assert_eq!(differences(&client, &full).await, 0, "full, batch {batch}");
        assert_eq!(differences(&client, &bare).await, 0, "bare, batch {batch}");
        assert_eq!(buffered(&client, &full).await, 0);
        let groups_after: i64 = client
            .query_one("SELECT count(*) FROM dt.full_live", &[])
            .await
            .unwrap()
            .get(0);
        vanished |= groups_after < groups_before;
    }
    // The storm did what it claims: groups vanished, sums went NULL, and the view
    // whose filtered sum has no count of its own rechecked groups; the view without a
    // count(*) but whose sum's input is never NULL probed them instead (a lookup in
    // the definition, not a recompute), and rechecked none.
    assert!(vanished, "no group vanished");
    assert!(rechecked_full > 0);
    assert!(bare.plan.probe.is_some() && full.plan.probe.is_none());
    assert_eq!(rechecked_bare, 0);
    // A group of the bare view losing every row: deleted by the probe; another losing
    // some: kept with its new sum.
    client
        .batch_execute(
            "DELETE FROM dt.facts WHERE grp = 1; DELETE FROM dt.facts WHERE grp = 2 AND id % 2 = 0",
        )
        .await
        .unwrap();
    assert_eq!(consume(&client, &bare, None).await, 0);
    assert_eq!(differences(&client, &bare).await, 0);
    let left: i64 = client
        .query_one("SELECT count(*) FROM dt.bare_live WHERE grp = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let nulls: i64 = client
        .query_one("SELECT count(*) FROM dt.full_live WHERE sp IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    let facts: i64 = client
        .query_one("SELECT count(*) FROM dt.facts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(facts > 0, "the storm emptied the table");
    eprintln!("rechecked: full {rechecked_full}, bare {rechecked_bare}; NULL sums now {nulls}");
}

/// A refresh that fails after the apply gives the buffer back (the DELETE is rolled
/// back with it): the next refresh applies the same rows, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_gives_its_rows_back() {
    let db = TestDb::new();
    let client = connect(&db).await;
    client.batch_execute(SCHEMA).await.unwrap();
    let full = install(&client, "full", &["name", "grp"]).await;
    client
        .batch_execute(
            "INSERT INTO dt.facts VALUES (500, 1, 0, 1, 2.5, true, NULL); DELETE FROM dt.facts WHERE id = 1",
        )
        .await
        .unwrap();
    assert_eq!(buffered(&client, &full).await, 2);
    let mut sql =
        String::from("BEGIN ISOLATION LEVEL REPEATABLE READ;\nSET LOCAL search_path TO public;\n");
    for s in &full.plan.apply {
        sql.push_str(s);
        sql.push_str(";\n");
    }
    client.batch_execute(&sql).await.unwrap();
    assert_eq!(buffered(&client, &full).await, 0, "consumed inside");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(buffered(&client, &full).await, 2, "given back");
    assert_ne!(differences(&client, &full).await, 0);
    consume(&client, &full, None).await;
    assert_eq!(differences(&client, &full).await, 0);
    assert_eq!(buffered(&client, &full).await, 0);
}

/// Rows committed after the apply's snapshot stay in the buffer and are applied by the
/// next refresh: a writer that commits between the snapshot and the apply, one whose
/// transaction is open during the apply, and four writers running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_committed_after_the_snapshot_are_applied_next_time_exactly_once() {
    let db = TestDb::new();
    let client = connect(&db).await;
    client.batch_execute(SCHEMA).await.unwrap();
    let full = install(&client, "full", &["name", "grp"]).await;
    let writer = connect(&db).await;

    // The snapshot is taken, then a writer commits, then the apply runs.
    let refresher = connect(&db).await;
    refresher
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; LOCK TABLE dt.full_live IN EXCLUSIVE MODE; SELECT 1",
        )
        .await
        .unwrap();
    writer
        .batch_execute("INSERT INTO dt.facts VALUES (600, 2, 1, 1, 9.5, true, NULL)")
        .await
        .unwrap();
    // A writer whose transaction is still open while the apply runs.
    let open = connect(&db).await;
    open.batch_execute(
        "BEGIN; INSERT INTO dt.facts VALUES (601, 3, 2, 2, 1.5, false, NULL); DELETE FROM dt.facts WHERE id = 2",
    )
    .await
    .unwrap();
    let mut sql = String::from("SET LOCAL search_path TO public;\n");
    for s in &full.plan.apply {
        sql.push_str(s);
        sql.push_str(";\n");
    }
    sql.push_str("COMMIT");
    refresher.batch_execute(&sql).await.unwrap();
    open.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        buffered(&client, &full).await,
        3,
        "rows committed after the snapshot wait for the next refresh"
    );
    assert_ne!(differences(&client, &full).await, 0);
    consume(&client, &full, None).await;
    assert_eq!(differences(&client, &full).await, 0);

    // Four writers on their own rows while refreshes run back to back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        tasks.push(spawn_own_rows_writer(db.dsn(), w, stop.clone()));
    }
    let mut refreshes = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !tasks.iter().all(|t| t.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "writers did not finish"
        );
        consume(&client, &full, None).await;
        refreshes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    consume(&client, &full, None).await;
    assert_eq!(differences(&client, &full).await, 0);
    assert_eq!(buffered(&client, &full).await, 0);
    assert!(refreshes > 1, "the refreshes ran while writers wrote");
    eprintln!("{written} writes, {refreshes} refreshes while they ran");
}

/// Writer `w`: up to 400 statements (inserts, updates moving rows between groups,
/// deletes) on its own rows of dt.facts, until `stop`; returns how many.
fn spawn_own_rows_writer(
    dsn: String,
    w: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<i32> {
    tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut rng = StdRng::seed_from_u64(w as u64);
        let mut id = 10_000 * (w + 1);
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 400 {
            let sql = match rng.random_range(0..4) {
                0 | 1 => {
                    id += 1;
                    format!(
                        "INSERT INTO dt.facts VALUES ({id}, {}, {}, {}, {}, {}, NULL)",
                        rng.random_range(1..=3),
                        rng.random_range(0..4),
                        rng.random_range(0..7),
                        price(&mut rng),
                        rng.random_range(0..2) == 0
                    )
                }
                2 => format!(
                    "UPDATE dt.facts SET grp = (grp + 1) % 4, price = {} WHERE id BETWEEN {} AND {id} AND id % 3 = {}",
                    price(&mut rng),
                    10_000 * (w + 1),
                    rng.random_range(0..3)
                ),
                _ => format!(
                    "DELETE FROM dt.facts WHERE id BETWEEN {} AND {id} AND id % 5 = {}",
                    10_000 * (w + 1),
                    rng.random_range(0..5)
                ),
            };
            c.batch_execute(&sql).await.unwrap();
            n += 1;
        }
        n
    })
}

/// A partitioned fact table: the capture on the root and on each partition (a statement
/// naming a partition fires only the partition's triggers). Writes through the root,
/// straight into partitions, and updates moving rows between partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_fact_table() {
    let db = TestDb::new();
    let client = connect(&db).await;
    client
        .batch_execute(
            r#"
            CREATE SCHEMA dp;
            CREATE TABLE dp.cats (id int PRIMARY KEY, name text NOT NULL);
            CREATE TABLE dp.facts (id bigint NOT NULL, cat_id int NOT NULL, grp int NOT NULL,
                                   qty int NOT NULL, price numeric) PARTITION BY LIST (grp);
            CREATE TABLE dp.facts_low PARTITION OF dp.facts FOR VALUES IN (0, 1);
            CREATE TABLE dp.facts_high PARTITION OF dp.facts FOR VALUES IN (2, 3);
            INSERT INTO dp.cats VALUES (1, 'alpha'), (2, 'beta');
            INSERT INTO dp.facts SELECT g, 1 + g % 2, g % 4, g % 5, g * 0.5 FROM generate_series(1, 30) g;
            CREATE VIEW dp.by_cat_def AS
              SELECT c.name, f.grp, count(*) AS n, sum(f.qty) AS sq, count(f.price) AS np,
                     sum(f.price) AS sp
                FROM dp.facts f JOIN dp.cats c ON c.id = f.cat_id
               GROUP BY c.name, f.grp;
            "#,
        )
        .await
        .unwrap();
    let v = install_in(
        &client,
        "dp",
        "by_cat",
        &["name", "grp"],
        &["dp.facts", "dp.facts_low", "dp.facts_high"],
    )
    .await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut id = 1000;
    for batch in 0..40 {
        id += 1;
        let grp = rng.random_range(0..4);
        let part = if grp < 2 {
            "dp.facts_low"
        } else {
            "dp.facts_high"
        };
        let sql = match batch % 5 {
            0 => format!(
                "INSERT INTO dp.facts VALUES ({id}, {}, {grp}, {}, {})",
                rng.random_range(1..=2),
                rng.random_range(0..5),
                price(&mut rng)
            ),
            1 => format!(
                "INSERT INTO {part} VALUES ({id}, {}, {grp}, {}, {})",
                rng.random_range(1..=2),
                rng.random_range(0..5),
                price(&mut rng)
            ),
            2 => format!(
                "UPDATE dp.facts SET grp = (grp + 2) % 4 WHERE id % 4 = {}",
                rng.random_range(0..4)
            ),
            3 => format!(
                "DELETE FROM {part} WHERE id % 3 = {}",
                rng.random_range(0..3)
            ),
            _ => format!(
                "UPDATE {part} SET price = {}, qty = qty + 1 WHERE id % 2 = {}",
                price(&mut rng),
                rng.random_range(0..2)
            ),
        };
        client.batch_execute(&sql).await.unwrap();
        consume(&client, &v, None).await;
        assert_eq!(differences(&client, &v).await, 0, "batch {batch}: {sql}");
    }
}
