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
    storm_until(dsn, writers, rounds, None, seed, op).await
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
    storm_until(dsn, writers, usize::MAX, Some(end), seed, op).await
}

async fn storm_until<F>(
    dsn: &str,
    writers: usize,
    rounds: usize,
    end: Option<std::time::Instant>,
    seed: u64,
    op: F,
) -> (usize, usize)
where
    F: Fn(&mut StdRng, usize, usize) -> String + Send + Sync + Copy + 'static,
{
    let mut tasks = Vec::new();
    for w in 0..writers {
        let dsn = dsn.to_string();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .expect("writer connects");
            tokio::spawn(conn);
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            let (mut ok, mut rolled) = (0, 0);
            for round in 0..rounds {
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
