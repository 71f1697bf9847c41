//! The channel locks refreshd holds while no refresh of a view is due (see
//! `src/engine/arming.rs`): 16 advisory locks per channel, classes
//! [`CLASS`]..[`CLASS`]+15, object `hashtext(channel)`. Shared by `tests/arming.rs`
//! (materialized views) and `tests/keyed_buffer.rs` (generated keyed views).

use std::time::Duration;

use super::{refreshd, stderr, stdout, wait_for, Daemon, TestDb};

/// The first of a channel lock's 16 classes (slots).
pub const CLASS: i64 = 1919316840;

/// The condition on `pg_locks` selecting refreshd's channel locks in the current
/// database, of `channel` only when given.
fn locks_of(channel: Option<&str>) -> String {
    let object = channel.map_or(String::new(), |c| {
        format!(
            " AND objid = hashtext({})::oid",
            refreshd::pg::refresh::quote_literal(c)
        )
    });
    format!(
        "locktype = 'advisory' AND classid::int8 BETWEEN {CLASS} AND {CLASS} + 15{object} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
}

/// How many of refreshd's channel locks (of `channel`, or of every channel) match
/// `filter`.
pub async fn channel_locks(c: &tokio_postgres::Client, channel: Option<&str>, filter: &str) -> i64 {
    c.query_one(
        &format!(
            "SELECT count(*) FROM pg_locks WHERE {} AND {filter}",
            locks_of(channel)
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Whether the session of `c` (a writer in its open transaction) holds its slot of a
/// channel lock shared: it skipped its notification because a refresh is due.
pub async fn holds_shared_slot(
    c: &impl tokio_postgres::GenericClient,
    channel: Option<&str>,
) -> bool {
    c.query_one(
        &format!(
            "SELECT count(*) FROM pg_locks WHERE {} AND mode = 'ShareLock' AND granted AND pid = pg_backend_pid()",
            locks_of(channel)
        ),
        &[],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

/// Starts the daemon on `config` and waits for its startup refresh of `view` and for
/// the channel (or every channel) armed: all 16 locks held.
pub async fn armed_daemon(db: &TestDb, config: &str, view: &str, channel: Option<&str>) -> Daemon {
    let d = Daemon::start(config);
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(10), "the startup refresh", || async {
        d.successes(view) >= 1.0
    })
    .await;
    let probe = db.client().await;
    wait_for(Duration::from_secs(10), "the channel armed", || async {
        channel_locks(&probe, channel, "mode = 'ExclusiveLock' AND granted").await == 16
    })
    .await;
    d
}

/// `init --url DSN --apply` with `args` after it; its config with `debounce` for every
/// view.
pub fn adopt_with(db: &TestDb, args: &[&str], debounce: &str) -> String {
    let dsn = db.dsn();
    let mut all = vec!["init", "--url", &dsn, "--apply"];
    all.extend_from_slice(args);
    let out = refreshd(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    with_default(&stdout(&out), "debounce", debounce)
}

/// `config` (as `init` prints it) with the first `key = ...` line, its `[defaults]`
/// one, set to `value`.
pub fn with_default(config: &str, key: &str, value: &str) -> String {
    let line = config
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("init sets {key}"))
        .to_string();
    config.replacen(&line, &format!("{key} = \"{value}\""), 1)
}

/// The arming slot of a session (`pg_backend_pid() % 16`, see `src/engine/arming.rs`).
pub async fn slot_of(c: &impl tokio_postgres::GenericClient) -> i32 {
    c.query_one("SELECT pg_backend_pid() % 16", &[])
        .await
        .unwrap()
        .get(0)
}

/// A new session whose backend takes arming slot `slot` (sessions are opened until one
/// does: one in sixteen).
pub async fn session_on_slot(db: &TestDb, slot: i32) -> tokio_postgres::Client {
    for _ in 0..200 {
        let c = db.client().await;
        if slot_of(&c).await == slot {
            return c;
        }
    }
    panic!("no backend on arming slot {slot} in 200 sessions")
}
