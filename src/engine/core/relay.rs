//! A standby's relays to the leader: a forced refresh, and a read-your-writes wait,
//! both through the control channel (a standby's own role is always allowed there).

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::book::rfc3339;
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;
use crate::pg::notify;
use crate::serve::status::WaitOutcome;

/// How long a standby keeps the session that relayed a force open after its NOTIFY, so
/// the leader can look the sender up (the lookup takes milliseconds).
const RELAY_LINGER: Duration = Duration::from_secs(2);

/// Relays a forced refresh of `payload` (a view's name, or `*`) to the leader.
pub async fn force(info: ConnectInfo, payload: String) {
    let sent = async {
        let client = info.connect().await.map_err(|e| e.to_string())?;
        notify::send(&client, crate::CONTROL_CHANNEL, &payload)
            .await
            .map_err(|e| crate::pg::connect::error_chain(&e))?;
        // The leader checks a control sender's role by its backend pid, which
        // must still exist then: keep the session a moment.
        tokio::time::sleep(RELAY_LINGER).await;
        drop(client);
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), sent).await {
        Ok(Ok(())) => {
            tracing::info!(view = %payload, "standby: forced refresh relayed to the leader")
        }
        Ok(Err(e)) => {
            tracing::warn!(view = %payload, error = %e, "standby: could not relay the forced refresh to the leader")
        }
        Err(_) => {
            tracing::warn!(view = %payload, "standby: relaying the forced refresh timed out")
        }
    }
}

/// Refreshes of a view running right now in this database (on any session this role
/// can see; a view of the same name in another database of the cluster is another view).
const RUNNING_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_stat_activity \
     WHERE state = 'active' AND pid <> pg_catalog.pg_backend_pid() \
     AND datname = pg_catalog.current_database() \
     AND position('REFRESH MATERIALIZED VIEW' in query) > 0 AND position($1 in query) > 0";

/// A standby's read-your-writes: relay the force through the control channel and
/// answer when the leader's refresh event (`refreshd_refreshed`) shows a refresh of the
/// view that started after the request. A refresh already running when the standby
/// looked (before it LISTENed) may have started earlier, so its event is skipped; a
/// refresh that ends after that look started after it. Errs on the side of waiting.
pub async fn and_wait(
    info: ConnectInfo,
    view: QualifiedName,
    mut reply: tokio::sync::oneshot::Sender<WaitOutcome>,
) {
    let name = view.to_string();
    let waited = async {
        let (client, connection) = info.connect_raw().await.map_err(|e| e.to_string())?;
        let quoted = view.quoted();
        let (ntx, mut nrx) = mpsc::unbounded_channel();
        // The connection is driven beside the wait, not on a task of its own; when
        // it ends, `nrx` ends the wait.
        let driver = notify::drive(connection, move |n| {
            let _ = ntx.send(n.payload().to_string());
        });
        let work = async {
            let running: i64 = client
                .query_typed(RUNNING_SQL, &[(&quoted, tokio_postgres::types::Type::TEXT)])
                .await
                .map_err(|e| crate::pg::connect::error_chain(&e))?
                .first()
                .map_or(0, |r| r.get(0));
            client
                .batch_execute(&notify::listen_sql(crate::EVENTS_CHANNEL))
                .await
                .map_err(|e| crate::pg::connect::error_chain(&e))?;
            notify::send(&client, crate::CONTROL_CHANNEL, &name)
                .await
                .map_err(|e| crate::pg::connect::error_chain(&e))?;
            let sent = std::time::Instant::now();
            let mut skip = running;
            while let Some(p) = nrx.recv().await {
                if p == name {
                    if skip == 0 {
                        return Ok(sent);
                    }
                    skip -= 1;
                }
            }
            Err("the connection closed".to_string())
        };
        let (mut driver, mut work) = (std::pin::pin!(driver), std::pin::pin!(work));
        tokio::select! {
            r = &mut work => r,
            () = &mut driver => work.await,
        }
    };
    tokio::select! {
        _ = reply.closed() => {}
        r = waited => match r {
            Ok(_) => {
                let _ = reply.send(WaitOutcome::Refreshed {
                    end: rfc3339(SystemTime::now()),
                    duration_seconds: 0.0,
                });
            }
            Err(e) => tracing::warn!(view = %name, error = %e, "standby: read-your-writes relay failed"),
        }
    }
}
