//! LISTEN/NOTIFY in one place: sending a notification, the statements that LISTEN and
//! UNLISTEN (names always quoted), and driving a connection so that its notifications
//! reach refreshd (a connection future spawned as is discards them).

use std::collections::BTreeSet;

use futures_util::{Stream, StreamExt as _};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Notification};

use crate::pg::connect::PgConnection;
use crate::pg::ident::quote_ident;

/// `pg_notify(channel, payload)` (both bound as parameters, never spliced).
pub async fn send(
    client: &Client,
    channel: &str,
    payload: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "SELECT pg_catalog.pg_notify($1, $2)",
            &[(&channel, Type::TEXT), (&payload, Type::TEXT)],
        )
        .await
        .map(drop)
}

/// `LISTEN "channel";`
pub fn listen_sql(channel: &str) -> String {
    format!("LISTEN {};", quote_ident(channel))
}

/// The statements that take a session LISTENing on `listening` to `wanted` (empty
/// when they are the same).
pub fn sync_sql(listening: &BTreeSet<String>, wanted: &BTreeSet<String>) -> String {
    let mut sql = String::new();
    for ch in wanted.difference(listening) {
        sql.push_str(&listen_sql(ch));
    }
    for ch in listening.difference(wanted) {
        sql.push_str(&format!("UNLISTEN {};", quote_ident(ch)));
    }
    sql
}

/// A connection's messages (notifications, notices), until it ends or fails: driving
/// this stream is what drives the connection.
pub fn messages(
    mut connection: PgConnection,
) -> impl Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin {
    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx))
}

/// Drives `connection` until it ends (or fails), handing each notification to `on`.
pub async fn drive(connection: PgConnection, mut on: impl FnMut(Notification)) {
    let mut messages = messages(connection);
    while let Some(Ok(m)) = messages.next().await {
        if let AsyncMessage::Notification(n) = m {
            on(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_listens_on_the_new_and_unlistens_the_gone_quoted() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(sync_sql(&set(&["a"]), &set(&["a"])), "");
        assert_eq!(
            sync_sql(&set(&["a", "gone"]), &set(&["a", "New \"one\""])),
            "LISTEN \"New \"\"one\"\"\";UNLISTEN \"gone\";"
        );
    }
}
