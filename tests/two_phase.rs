//! Writers that end their transactions in `PREPARE TRANSACTION` (two-phase commit, as
//! XA transaction managers do). PostgreSQL refuses to prepare a transaction that sent a
//! `NOTIFY`, and refreshd's capture notifies while refreshd arms the channel (see
//! `src/engine/arming.rs`): the first writer of a refresh cycle failed at PREPARE. A
//! session with `refreshd.two_phase = on` records its wake-up in `refreshd.wakes`
//! instead, which refreshd takes every second. Step by step, on a channel known to be
//! armed (its 16 locks held), for `init --apply`'s capture of a materialized view and for
//! `init --keyed`'s generated capture; and a prepared writer holding the channel's lock
//! shared (the channel disarmed) across a refresh.

mod support;

use std::time::Duration;

use support::arming::{armed_daemon, channel_locks, holds_shared_slot};
use support::keyed_storm::difference_sql;
use support::{wait_for, TestDb};

/// What PostgreSQL says to a PREPARE after a NOTIFY.
const NOTIFIED: &str = "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY";

fn schema(db: &TestDb) {
    assert_ne!(
        db.psql("SHOW max_prepared_transactions"),
        "0",
        "these tests need max_prepared_transactions > 0 (the throwaway cluster sets it)"
    );
    db.psql(
        "CREATE SCHEMA tp;
         CREATE TABLE tp.items (id int PRIMARY KEY, grp int NOT NULL, qty int NOT NULL);
         INSERT INTO tp.items VALUES (1, 1, 10);
         CREATE MATERIALIZED VIEW tp.totals AS
           SELECT grp, sum(qty) AS qty, max(qty) AS top FROM tp.items GROUP BY grp;
         CREATE UNIQUE INDEX ON tp.totals (grp);",
    );
}

/// `init --apply` on schema tp (with `--keyed` arguments when given), `debounce` for
/// every view.
fn adopt(db: &TestDb, keyed: &[&str], debounce: &str) -> String {
    let mut args = vec!["--schema", "tp"];
    args.extend_from_slice(keyed);
    support::arming::adopt_with(db, &args, debounce)
}

/// The channel `init` gave the materialized view (its only base table's).
fn channel_of(config: &str) -> String {
    config
        .lines()
        .find_map(|l| {
            l.strip_prefix("channels = [\"")
                .and_then(|r| r.strip_suffix("\"]"))
        })
        .expect("init names the view's channel")
        .to_string()
}

/// A globally unique transaction identifier (prepared transactions are cluster-wide).
fn gid(db: &TestDb, n: u32) -> String {
    format!("{}_{n}", db.name)
}

/// On a session of its own: `SET refreshd.two_phase` when `two_phase`, then `write` in a
/// transaction prepared as `gid`. The PREPARE's error, if any.
async fn prepare(
    db: &TestDb,
    two_phase: bool,
    write: &str,
    gid: &str,
) -> Result<tokio_postgres::Client, String> {
    let c = db.client().await;
    if two_phase {
        c.batch_execute("SET refreshd.two_phase = on")
            .await
            .unwrap();
    }
    c.batch_execute(&format!("BEGIN; {write}")).await.unwrap();
    match c
        .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .await
    {
        Ok(()) => Ok(c),
        Err(e) => Err(e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string())),
    }
}

/// The armed path: without the setting the PREPARE fails (this is what the setting is
/// for); with it, the PREPARE succeeds, and once committed the write reaches the view
/// through `refreshd.wakes` (no notification was sent). `view_has(qty)` reads the view.
async fn armed_writers_prepare(db: &TestDb, channel: &str, view_has: impl Fn(i64) -> bool) {
    let probe = db.client().await;
    let armed = || async {
        support::arming::channel_locks(&probe, Some(channel), "mode = 'ExclusiveLock' AND granted")
            .await
            == 16
    };
    assert!(armed().await, "the channel is armed");
    let refused = match prepare(
        db,
        false,
        "UPDATE tp.items SET qty = qty + 1 WHERE id = 1",
        &gid(db, 0),
    )
    .await
    {
        Ok(_) => panic!("a writer that notified cannot PREPARE"),
        Err(e) => e,
    };
    assert!(refused.contains(NOTIFIED), "{refused}");
    // Rolled back, notification and all: still armed.
    assert!(armed().await);

    let c = prepare(
        db,
        true,
        "UPDATE tp.items SET qty = qty + 100 WHERE id = 1",
        &gid(db, 1),
    )
    .await
    .unwrap_or_else(|e| panic!("a two-phase writer prepares: {e}"));
    c.batch_execute(&format!("COMMIT PREPARED '{}'", gid(db, 1)))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the prepared write in the view",
        || async { view_has(110) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_phase_writer_prepares_and_its_write_reaches_a_materialized_view() {
    let db = TestDb::new();
    schema(&db);
    let config = adopt(&db, &[], "0s");
    let channel = channel_of(&config);
    let _d = armed_daemon(&db, &config, "tp.totals", Some(&channel)).await;
    armed_writers_prepare(&db, &channel, |qty| {
        db.psql("SELECT qty FROM tp.totals WHERE grp = 1") == qty.to_string()
    })
    .await;
    assert_eq!(db.psql("SELECT count(*) FROM refreshd.wakes"), "0", "taken");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_phase_writer_prepares_and_its_write_reaches_a_keyed_view() {
    let db = TestDb::new();
    schema(&db);
    let config = adopt(&db, &["--keyed", "tp.totals"], "0s");
    let channel = "refreshd_keys_tp_totals";
    let _d = armed_daemon(&db, &config, "tp.totals_live", Some(channel)).await;
    armed_writers_prepare(&db, channel, |qty| {
        db.psql("SELECT qty FROM tp.totals_live WHERE grp = 1") == qty.to_string()
            && db.psql(&difference_sql("tp.totals_live", "tp.totals_def", &[])) == "0"
    })
    .await;
}

/// The other path: the channel disarmed (a refresh is due), a two-phase writer takes its
/// slot shared and prepares, holding the slot across the refresh, which goes ahead
/// without it once re-arming gives up; when it commits, refreshd takes the lock and
/// its write is in the next refresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_writer_holding_the_channel_lock_is_in_a_later_refresh() {
    let db = TestDb::new();
    schema(&db);
    let config = adopt(&db, &[], "3s");
    let channel = channel_of(&config);
    let d = armed_daemon(&db, &config, "tp.totals", Some(&channel)).await;
    let probe = db.client().await;

    // X notifies: refreshd releases the channel, and the view is due in 3 s.
    db.psql("UPDATE tp.items SET qty = qty + 1 WHERE id = 1");
    wait_for(Duration::from_secs(10), "the lock released", || async {
        channel_locks(&probe, Some(&channel), "true").await == 0
    })
    .await;
    let before = d.successes("tp.totals");

    // W, two-phase: skips its notification (the slot taken shared), prepares.
    let w = db.client().await;
    w.batch_execute(
        "SET refreshd.two_phase = on; BEGIN; UPDATE tp.items SET qty = qty + 100 WHERE id = 1",
    )
    .await
    .unwrap();
    assert!(holds_shared_slot(&w, Some(&channel)).await);
    w.batch_execute(&format!("PREPARE TRANSACTION '{}'", gid(&db, 1)))
        .await
        .unwrap();

    // The refresh goes ahead without W; refreshd keeps waiting for its slot.
    wait_for(Duration::from_secs(15), "X's refresh", || async {
        d.successes("tp.totals") > before
            && db.psql("SELECT qty FROM tp.totals WHERE grp = 1") == "11"
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "refreshd waiting for the prepared writer",
        || async {
            channel_locks(
                &probe,
                Some(&channel),
                "mode = 'ExclusiveLock' AND NOT granted",
            )
            .await
                == 1
        },
    )
    .await;
    db.psql(&format!("COMMIT PREPARED '{}'", gid(&db, 1)));
    wait_for(Duration::from_secs(10), "W's write in the view", || async {
        db.psql("SELECT qty FROM tp.totals WHERE grp = 1") == "111"
    })
    .await;
}

/// refreshd connecting as another role than the one that installed its schema (init
/// run as a DBA's role): it may not take from `refreshd.wakes`. That is said once, and
/// the LISTEN session stays up: looking for the table does not fail, and a failure
/// there is no lost connection. (Before, the catalog lookup's "permission denied for
/// schema refreshd" ended the session, again and again.) A plain write still reaches
/// the view.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_may_not_take_wakes_keeps_its_session_and_says_so() {
    let db = TestDb::new();
    schema(&db);
    let roles = support::TestRoles::create(&db, &["tp_app"]);
    let app = roles.name("tp_app");
    let config = adopt(&db, &[], "0s");
    db.psql(&format!(
        "ALTER MATERIALIZED VIEW tp.totals OWNER TO {app};
         GRANT USAGE ON SCHEMA tp TO {app}; GRANT SELECT ON tp.items TO {app};"
    ));
    let url = config
        .lines()
        .find(|l| l.starts_with("url = "))
        .expect("init writes the url")
        .to_string();
    let config = config.replacen(&url, &format!("url = \"{}\"", db.dsn_as(&app)), 1);
    let d = support::Daemon::start(&config);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the warning", || async {
        d.log_text()
            .contains("refreshd.wakes exists but refreshd's role may not take from it")
    })
    .await;
    db.psql("UPDATE tp.items SET qty = 20 WHERE id = 1");
    wait_for(Duration::from_secs(10), "the write in the view", || async {
        db.psql("SELECT qty FROM tp.totals WHERE grp = 1") == "20"
    })
    .await;
    assert_eq!(
        d.counter("refreshd_listener_reconnects_total"),
        0.0,
        "{}",
        d.log_text()
    );
    assert_eq!(
        d.log_text()
            .matches("refreshd.wakes exists but refreshd's role may not take from it")
            .count(),
        1
    );
}
