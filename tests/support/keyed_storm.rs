//! Randomized write storms for differential tests of keyed views: several writer
//! threads, each on its own connection, each running random statements in their own
//! transactions; and the "table equals its definition" check.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Runs `writers` concurrent writers, each `rounds` transactions long. `op(rng, writer,
/// round)` gives one transaction's SQL (without BEGIN/COMMIT). Deadlocks and lock
/// conflicts the concurrency rules allow (40P01, 40001, 55P03) roll the transaction
/// back and count; any other error fails. Returns (committed, rolled back).
pub async fn storm<F>(dsn: &str, writers: usize, rounds: usize, seed: u64, op: F) -> (usize, usize)
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    storm_until(dsn, writers, rounds, None, None, seed, op).await
}

/// Like [`storm`], but each writer stops at the first round that starts after `length`
/// (a storm of about that duration, whatever the machine's speed).
pub async fn storm_for<F>(
    dsn: &str,
    writers: usize,
    length: Duration,
    seed: u64,
    op: F,
) -> (usize, usize)
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    let end = std::time::Instant::now() + length;
    storm_until(dsn, writers, usize::MAX, Some(end), None, seed, op).await
}

/// Like [`storm`] beside a refresher that counts its refreshes in `refreshes`: each
/// writer runs at least `rounds` rounds, and more (numbered on) until the refresher
/// has counted `at_least` refreshes since the storm began, so that refreshes fall
/// among the writes however the machine's load shares its cores. Fails when that
/// takes over three minutes.
async fn storm_beside<F>(
    dsn: &str,
    writers: usize,
    rounds: usize,
    seed: u64,
    op: F,
    refreshes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    at_least: usize,
) -> (usize, usize)
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    use std::sync::atomic::Ordering;
    let start = refreshes.load(Ordering::SeqCst);
    let counted = (refreshes, start, at_least);
    let out = storm_until(dsn, writers, rounds, None, Some(counted.clone()), seed, op).await;
    let done = counted.0.load(Ordering::SeqCst) - start;
    assert!(
        done >= at_least,
        "the refresher made {done} refreshes in 3 minutes of writes, fewer than {at_least}"
    );
    out
}

/// A refresher's counter, its value when the storm began, and how many more refreshes
/// the writers wait for ([`storm_beside`]).
type Counted = (std::sync::Arc<std::sync::atomic::AtomicUsize>, usize, usize);

async fn storm_until<F>(
    dsn: &str,
    writers: usize,
    rounds: usize,
    end: Option<std::time::Instant>,
    counted: Option<Counted>,
    seed: u64,
    op: F,
) -> (usize, usize)
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    let mut tasks = Vec::new();
    let cap = std::time::Instant::now() + Duration::from_secs(180);
    for w in 0..writers {
        let dsn = dsn.to_string();
        let counted = counted.clone();
        // Past `rounds`: on while the refresher has not counted enough, up to `cap`.
        let more = move || {
            counted.as_ref().is_some_and(|(n, start, at_least)| {
                n.load(std::sync::atomic::Ordering::SeqCst) - start < *at_least
                    && std::time::Instant::now() < cap
            })
        };
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .expect("writer connects");
            tokio::spawn(conn);
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let (mut ok, mut rolled) = (0, 0);
            for round in 0.. {
                if round >= rounds && !more() {
                    break;
                }
                if end.is_some_and(|end| std::time::Instant::now() >= end) {
                    break;
                }
                let sql = op(&mut rng, w, round);
                match client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        assert!(
                            ["40P01", "40001", "55P03"].contains(&code.as_str()),
                            "writer {w}: {sql}: {e:?}"
                        );
                        rolled += 1;
                    }
                }
                if rng.random_range(0..4) == 0 {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                }
            }
            (ok, rolled)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, rolled) = t.await.expect("writer task");
        total.0 += ok;
        total.1 += rolled;
    }
    total
}

/// Rows in one and not the other, both ways (`EXCEPT ALL`): 0 when the table equals
/// its definition exactly. `minus` names columns left out (e.g. a `now()` column).
pub fn difference_sql(table: &str, definition: &str, minus: &[&str]) -> String {
    if minus.is_empty() {
        return format!(
            "SELECT count(*) FROM ((TABLE {table} EXCEPT ALL TABLE {definition}) \
             UNION ALL (TABLE {definition} EXCEPT ALL TABLE {table})) AS x"
        );
    }
    let strip: String = minus.iter().map(|c| format!(" - '{c}'")).collect();
    format!(
        "SELECT count(*) FROM ((SELECT to_jsonb(t){strip} FROM {table} t EXCEPT ALL SELECT to_jsonb(d){strip} FROM {definition} d) \
         UNION ALL (SELECT to_jsonb(d){strip} FROM {definition} d EXCEPT ALL SELECT to_jsonb(t){strip} FROM {table} t)) AS x"
    )
}

/// LISTENs on `channels` on a connection of its own; every notification (channel,
/// payload) arrives on the receiver. The connection lives as long as the client.
pub async fn listen(
    dsn: &str,
    channels: &[&str],
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("listener connects");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    for c in channels {
        client
            .batch_execute(&format!("LISTEN {}", refreshd::pg::ident::quote_ident(c)))
            .await
            .expect("LISTEN");
    }
    (client, rx)
}

/// How long a keyed table may take to equal what it must after a storm.
pub const EQUAL_DEADLINE: Duration = Duration::from_secs(120);

/// A keyed table and what it must equal: `what` for the failure message, `sql` counting
/// the rows they differ by.
pub struct Exact {
    pub what: String,
    pub sql: String,
}

impl Exact {
    /// `table` equals `definition` (a view or table), columns `minus` left out.
    pub fn definition(table: &str, definition: &str, minus: &[&str]) -> Exact {
        Exact {
            what: format!("{table} to equal {definition}"),
            sql: difference_sql(table, definition, minus),
        }
    }

    /// `table` equals the rows of `query` (SQL text).
    pub fn query(table: &str, query: &str) -> Exact {
        Exact {
            what: format!("{table} to equal its query"),
            sql: super::differences_sql(&format!("TABLE {table}"), query),
        }
    }
}

/// Waits until every table equals what it must, each up to [`EQUAL_DEADLINE`], on one
/// connection that first runs `setup` (a `search_path`, or nothing).
pub async fn wait_equal(dsn: &str, setup: &str, exact: &[Exact]) {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    if !setup.is_empty() {
        client.batch_execute(setup).await.expect("setup");
    }
    for e in exact {
        super::wait_for(EQUAL_DEADLINE, &e.what, || {
            let (client, sql) = (&client, &e.sql);
            async move {
                client
                    .query_one(sql.as_str(), &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) == 0)
                    .unwrap_or(false)
            }
        })
        .await;
    }
}

/// How long a storm runs: rounds per writer, or about a duration.
#[derive(Clone, Copy)]
pub enum Length {
    Rounds(usize),
    For(Duration),
}

/// What [`storm_then_equal`] saw.
pub struct Stormed {
    pub committed: usize,
    pub rolled_back: usize,
    /// The storm's duration.
    pub took: Duration,
    /// From the storm's end until every table equalled what it must.
    pub caught_up: Duration,
}

/// A storm ([`storm`] or [`storm_for`]), then [`wait_equal`]: the differential test's
/// step, repeated by every keyed test that runs writers against the daemon.
pub async fn storm_then_equal<F>(
    dsn: &str,
    writers: usize,
    length: Length,
    seed: u64,
    op: F,
    setup: &str,
    exact: &[Exact],
) -> Stormed
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    let started = std::time::Instant::now();
    let (committed, rolled_back) = match length {
        Length::Rounds(n) => storm(dsn, writers, n, seed, op).await,
        Length::For(d) => storm_for(dsn, writers, d, seed, op).await,
    };
    let took = started.elapsed();
    wait_equal(dsn, setup, exact).await;
    Stormed {
        committed,
        rolled_back,
        took,
        caught_up: started.elapsed() - took,
    }
}

/// `init --schema SCHEMA --apply --in-place --keyed VIEW`, which must succeed: its
/// config and what it said.
pub fn convert_in_place(db: &super::TestDb, schema: &str, view: &str) -> (String, String) {
    convert_all_in_place(db, schema, &[view])
}

/// [`convert_in_place`] of several views in one `init` (`--keyed` each).
pub fn convert_all_in_place(db: &super::TestDb, schema: &str, views: &[&str]) -> (String, String) {
    let dsn = db.dsn();
    let mut args = vec![
        "init",
        "--url",
        &dsn,
        "--schema",
        schema,
        "--apply",
        "--in-place",
    ];
    for v in views {
        args.extend(["--keyed", v]);
    }
    let out = super::refreshd(&args);
    let (config, stderr) = (super::stdout(&out), super::stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{config}");
    // As refreshd's first capture check after the install does.
    db.psql(KEEP_GUARDS_SQL);
    (config, stderr)
}

/// What refreshd's leader does with the foreign-key guards of every keyed conversion
/// at a capture check (incremental::guard), by hand: each keeper called; a guard found
/// broken settled at once (no writer runs beside a test's by-hand refresh) and
/// `refreshd_test.everything` set for the session, which [`refresh_by_hand_sql`]
/// reads as "recompute everything".
pub const KEEP_GUARDS_SQL: &str = "BEGIN; DO $keep$ DECLARE f pg_catalog.regproc; r text; BEGIN \
     FOR f IN SELECT p.oid::regproc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
               WHERE n.nspname = 'refreshd' AND pg_catalog.obj_description(p.oid, 'pg_proc') LIKE 'refreshd: keeps the foreign-key guard %' ORDER BY p.oid LOOP \
       EXECUTE format('SELECT %s(NULL)', f) INTO r; \
       IF r LIKE 'broken %' THEN \
         EXECUTE format('SELECT %s(%s)', f, split_part(r, ' ', 2)); \
         PERFORM set_config('refreshd_test.everything', 'on', false); \
       END IF; \
     END LOOP; END $keep$; COMMIT;";

/// A storm writer's transaction: `sql` in a DO block that ignores the foreign-key and
/// unique violations random writes run into, one in three at REPEATABLE READ.
pub fn tolerant(rng: &mut StdRng, sql: &str) -> String {
    use rand::RngExt;
    let rr = if rng.random_range(0..3) == 0 {
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
    } else {
        ""
    };
    format!("{rr}DO $$BEGIN {sql}; EXCEPTION WHEN foreign_key_violation OR unique_violation THEN NULL; END$$")
}

/// One refresh of a view converted in place, done by hand as refreshd does it (LOCK,
/// REPEATABLE READ, its consume function `refreshd.<schema>_<name>_consume`, then the
/// keys it returned recomputed from `<view>_def`, or everything when a row says so).
/// `key` is the view's (single) key column. Says `everything` or how many keys.
pub fn refresh_by_hand_sql(view: &str, key: &str) -> String {
    let (schema, name) = view.split_once('.').expect("schema.view");
    let consume = format!("refreshd.{schema}_{name}_consume");
    format!(
        "{KEEP_GUARDS_SQL} \
         BEGIN ISOLATION LEVEL REPEATABLE READ; LOCK TABLE {view} IN EXCLUSIVE MODE; \
         CREATE TEMP TABLE consumed ON COMMIT DROP AS SELECT * FROM {consume}(); \
         INSERT INTO consumed (all_) SELECT true WHERE current_setting('refreshd_test.everything', true) = 'on'; \
         DELETE FROM {view} t WHERE t.{key} IN (SELECT {key} FROM consumed) \
            OR EXISTS (SELECT 1 FROM consumed WHERE all_ OR {key} IS NULL); \
         INSERT INTO {view} SELECT * FROM {view}_def d WHERE d.{key} IN (SELECT {key} FROM consumed) \
            OR EXISTS (SELECT 1 FROM consumed WHERE all_ OR {key} IS NULL); \
         SELECT CASE WHEN bool_or(all_ OR {key} IS NULL) THEN 'everything' ELSE count(*)::text END FROM consumed; COMMIT"
    )
}

/// Refreshes `view` (converted in place, definition `<view>_def`) as refreshd does;
/// returns what the consume function said (the number of keys, or "everything").
pub fn refresh_by_hand(db: &super::TestDb, view: &str, key: &str) -> String {
    db.psql(&refresh_by_hand_sql(view, key))
}

/// The number of rows by which `view` and its definition `<view>_def` differ.
pub fn difference(db: &super::TestDb, view: &str) -> String {
    db.psql(&difference_sql(view, &format!("{view}_def"), &[]))
}

/// `view`'s rows and its definition's, for a failure message.
pub fn show_both(db: &super::TestDb, view: &str) -> String {
    db.psql(&format!(
        "SELECT 'table: ' || coalesce((SELECT string_agg(t::text, ' ' ORDER BY t::text) FROM {view} t), '') \
         || ' | definition: ' || coalesce((SELECT string_agg(d::text, ' ' ORDER BY d::text) FROM {view}_def d), '')"
    ))
}

/// The keyed table equals its definition; else fails with both and what the refresh
/// said.
pub fn assert_exact(db: &super::TestDb, view: &str, said: &str) {
    assert_eq!(
        difference(db, view),
        "0",
        "{view}: refresh said {said}; {}",
        show_both(db, view)
    );
}

/// A refresher beside a storm ([`storm_beside`]): refreshes `views` (view converted in
/// place, key column) by hand, as refreshd does, one after the other, until `stop`,
/// counting each round in `counter`. `tweak` may change a refresh's SQL (roll it back,
/// give it a statement timeout); a refresh failing with one of the SQLSTATEs `allowed`
/// is rolled back and counted, any other error fails. Returns the rounds, the refreshes
/// that recomputed everything, and the failed ones.
fn refresher(
    dsn: &str,
    views: &[(&str, &str)],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counter: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tweak: fn(&mut StdRng, String) -> String,
    allowed: &'static [&'static str],
) -> tokio::task::JoinHandle<(usize, usize, usize)> {
    use std::sync::atomic::Ordering;
    let dsn = dsn.to_string();
    let views: Vec<(String, String)> = views
        .iter()
        .map(|(v, k)| (v.to_string(), k.to_string()))
        .collect();
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("refresher connects");
        tokio::spawn(conn);
        let mut rng = StdRng::seed_from_u64(5);
        let (mut rounds, mut everything, mut failed) = (0, 0, 0);
        while !stop.load(Ordering::Relaxed) {
            for (v, key) in &views {
                let sql = tweak(&mut rng, refresh_by_hand_sql(v, key));
                match client.simple_query(&sql).await {
                    Ok(rows) => {
                        let said = rows.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0).map(str::to_string)
                            }
                            _ => None,
                        });
                        if said.as_deref() == Some("everything") {
                            everything += 1;
                        }
                    }
                    Err(e) => {
                        let _ = client.simple_query("ROLLBACK").await;
                        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                        assert!(allowed.contains(&code.as_str()), "refresh of {v}: {e:?}");
                        failed += 1;
                    }
                }
            }
            rounds += 1;
            counter.fetch_add(1, Ordering::SeqCst);
        }
        (rounds, everything, failed)
    })
}

/// A refresh's SQL as it is ([`refresher`]'s `tweak`).
pub fn as_is(_: &mut StdRng, sql: String) -> String {
    sql
}

/// Regions <- stores <- sales (24 stores in 6 regions, 2,400 sales, every key NO
/// ACTION) in schema `s`, with two views over them: `s.counted` (count and sum by
/// region: deltas) and `s.probed` (a sum only: groups losing rows are probed).
pub fn counted_and_probed_schema(s: &str) -> String {
    format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.regions (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE {s}.stores (id int PRIMARY KEY, region_id int NOT NULL REFERENCES {s}.regions);
         CREATE TABLE {s}.sales (id bigint PRIMARY KEY, store_id int NOT NULL REFERENCES {s}.stores, qty int NOT NULL);
         CREATE INDEX ON {s}.sales (store_id); CREATE INDEX ON {s}.stores (region_id);
         INSERT INTO {s}.regions SELECT g, 'region ' || g FROM generate_series(1, 6) g;
         INSERT INTO {s}.stores SELECT g, 1 + g % 6 FROM generate_series(1, 24) g;
         INSERT INTO {s}.sales SELECT g, 1 + g % 24, 1 + g % 9 FROM generate_series(1, 2400) g;
         CREATE MATERIALIZED VIEW {s}.counted AS SELECT r.id AS region, r.name, count(*) AS n, sum(s.qty) AS qty
           FROM {s}.sales s JOIN {s}.stores st ON st.id = s.store_id JOIN {s}.regions r ON r.id = st.region_id GROUP BY r.id, r.name;
         CREATE UNIQUE INDEX ON {s}.counted (region);
         CREATE MATERIALIZED VIEW {s}.probed AS SELECT r.id AS region, sum(s.qty) AS qty
           FROM {s}.sales s JOIN {s}.stores st ON st.id = s.store_id JOIN {s}.regions r ON r.id = st.region_id GROUP BY r.id;
         CREATE UNIQUE INDEX ON {s}.probed (region);
         ANALYZE;"
    )
}

/// A refresher beside a storm ([`storm_while_refreshing`]): the views it refreshes
/// (converted in place, key column), how each refresh's SQL is changed, the SQLSTATEs a
/// refresh may fail with, and how many rounds of refreshes the writers wait for.
pub struct Refreshing<'a> {
    pub views: &'a [(&'a str, &'a str)],
    pub tweak: fn(&mut StdRng, String) -> String,
    pub allowed: &'static [&'static str],
    pub at_least: usize,
}

/// What a storm beside a refresher did: transactions committed and rolled back,
/// refresh rounds, refreshes that recomputed everything, refreshes that failed.
#[derive(Debug)]
pub struct StormDone {
    pub committed: usize,
    pub rolled_back: usize,
    pub rounds: usize,
    pub everything: usize,
    pub failed: usize,
}

/// `writers` writers ([`storm_beside`]) while a refresher ([`refresher`]) refreshes
/// `r.views` back to back; the refresher stops when the writers have.
pub async fn storm_while_refreshing<F>(
    dsn: &str,
    writers: usize,
    rounds: usize,
    seed: u64,
    op: F,
    r: Refreshing<'_>,
) -> StormDone
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let refreshing = refresher(
        dsn,
        r.views,
        stop.clone(),
        counter.clone(),
        r.tweak,
        r.allowed,
    );
    let (committed, rolled_back) =
        storm_beside(dsn, writers, rounds, seed, op, counter, r.at_least).await;
    stop.store(true, Ordering::Relaxed);
    let (rounds, everything, failed) = refreshing.await.expect("refresher");
    StormDone {
        committed,
        rolled_back,
        rounds,
        everything,
        failed,
    }
}

/// Four writers running `op` for `rounds` rounds each beside a back-to-back refresher
/// of `views` (views converted in place, key column), writers' deadlocks and
/// serialization failures rolled back; then one more refresh of each view, which must
/// leave it equal to its definition. Returns what the storm did.
pub async fn stormed_then_exact<F>(
    db: &super::TestDb,
    rounds: usize,
    seed: u64,
    op: F,
    views: &[(&str, &str)],
) -> StormDone
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    let done = storm_while_refreshing(
        &db.dsn(),
        4,
        rounds,
        seed,
        op,
        Refreshing {
            views,
            tweak: as_is,
            allowed: &["40001", "40P01"],
            at_least: 6,
        },
    )
    .await;
    println!("{done:?}");
    for (v, key) in views {
        let said = refresh_by_hand(db, v, key);
        assert_exact(db, v, &said);
    }
    done
}

/// The rows the capture of keyed view `view` (`schema.name`, converted with a buffer
/// named after it) holds for group recomputes: its key buffer's, and its reach
/// buffers' (the values tables reaching the key through a join path buffered, turned
/// into keys by the next refresh).
pub fn buffered_for_recompute(db: &super::TestDb, view: &str) -> String {
    let stem = view.replace('.', "_");
    db.psql(&format!(
        "SELECT (SELECT count(*) FROM refreshd.{stem}_keys) + coalesce((SELECT sum((xpath('/row/n/text()', \
           query_to_xml(format('SELECT count(*) AS n FROM %s', c.oid::regclass), false, true, '')))[1]::text::bigint) \
           FROM pg_class c WHERE c.relnamespace = 'refreshd'::regnamespace AND c.relname LIKE '{stem}\\_reach\\_%'), 0)"
    ))
}

/// Sales (`sales` rows, indexed by store only) → stores → regions, and products joined
/// to sales, in schema `schema`, with a view of them per region name (`by_region`): a
/// change to a product reaches its keys through the sales, looked up by `product_id`.
pub fn reach_through_facts_sql(schema: &str, sales: u32) -> String {
    format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.regions (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE {schema}.stores (id int PRIMARY KEY, region_id int NOT NULL);
         CREATE TABLE {schema}.products (id int PRIMARY KEY, cat text NOT NULL);
         CREATE TABLE {schema}.sales (id int PRIMARY KEY, store_id int NOT NULL, product_id int NOT NULL, qty int NOT NULL);
         INSERT INTO {schema}.regions VALUES (1, 'north'), (2, 'south');
         INSERT INTO {schema}.stores SELECT g, 1 + g % 2 FROM generate_series(1, 4) g;
         INSERT INTO {schema}.products SELECT g, 'a' FROM generate_series(1, 100) g;
         INSERT INTO {schema}.sales SELECT g, 1 + g % 4, 1 + g % 100, g % 7 FROM generate_series(1, {sales}) g;
         CREATE INDEX ON {schema}.sales (store_id);
         ANALYZE;
         CREATE MATERIALIZED VIEW {schema}.by_region AS
           SELECT r.name, count(*) FILTER (WHERE p.cat = 'a') AS a_sales, sum(s.qty) AS qty
             FROM {schema}.sales s JOIN {schema}.products p ON p.id = s.product_id
             JOIN {schema}.stores st ON st.id = s.store_id JOIN {schema}.regions r ON r.id = st.region_id
            GROUP BY r.name;
         CREATE UNIQUE INDEX ON {schema}.by_region (name);"
    )
}
