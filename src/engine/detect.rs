//! `detect = "statistics"`: learning that a view is stale without any trigger, by
//! polling the cumulative statistics of its base tables.
//!
//! Every `poll_interval` one query reads, for each watched table, the insert, update
//! and delete counters of `pg_stat_all_tables` and `pg_class.relfilenode` (TRUNCATE,
//! and a plain REFRESH of a materialized view, give the relation a new file but move
//! no counter). Any difference from the previous reading — including a counter reset —
//! marks the view dirty. Readings are remembered per view, so views sharing a table
//! each see its change. The first reading of a view also counts as a change: the
//! detector starts (at startup and after every reload) at some moment after the
//! daemon's own catch-up, and a write whose counters it takes as a baseline might
//! otherwise never be applied.
//!
//! Freshness bound: PostgreSQL flushes a backend's counters when its transaction ends,
//! at most once a second; a backend that goes idle with counts it could not flush
//! retries after up to 10 s (`PGSTAT_IDLE_INTERVAL`). A backend that exits flushes at
//! once. So a change is seen within `poll_interval` plus, at worst, about 10 s.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;

/// One view watched by statistics, with the relations whose counters stand for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub view: QualifiedName,
    pub tables: Vec<u32>,
    pub poll_interval: Duration,
}

/// One table's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub relfilenode: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

/// The pure part: compares readings, remembering the last one per (view, table).
#[derive(Debug, Default)]
pub struct Comparator {
    last: HashMap<(usize, u32), Option<Reading>>,
}

impl Comparator {
    /// Records `now` for `view`'s `tables`; true when any of them differs from the
    /// previous reading for this view, or when this is the view's first reading. A
    /// table that vanished (dropped) or appeared counts as a change.
    pub fn changed(&mut self, view: usize, tables: &[u32], now: &HashMap<u32, Reading>) -> bool {
        let mut changed = false;
        for oid in tables {
            let current = now.get(oid).copied();
            match self.last.insert((view, *oid), current) {
                None => changed = true,
                Some(previous) => changed |= previous != current,
            }
        }
        changed
    }
}

const QUERY: &str = "SELECT c.oid, c.relfilenode::int8, \
        coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_del, 0) \
   FROM pg_catalog.pg_class c \
   LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid \
  WHERE c.oid = ANY ($1)";

async fn read(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<HashMap<u32, Reading>, tokio_postgres::Error> {
    let oids: Vec<u32> = oids.to_vec();
    let rows = client
        .query_typed(QUERY, &[(&oids, tokio_postgres::types::Type::OID_ARRAY)])
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, u32>(0),
                Reading {
                    relfilenode: r.get(1),
                    inserted: r.get(2),
                    updated: r.get(3),
                    deleted: r.get(4),
                },
            )
        })
        .collect())
}

/// Polls until `stop`, sending the name of every view whose tables moved. Its lines
/// carry the `detector` span.
#[tracing::instrument(name = "detector", skip_all, fields(views = watched.len()))]
pub async fn run(
    info: ConnectInfo,
    watched: Vec<Watched>,
    changed: crate::engine::tasks::Mapped<QualifiedName>,
    stop: CancellationToken,
) {
    if watched.is_empty() {
        return;
    }
    let mut comparator = Comparator::default();
    let mut next: BTreeMap<usize, Instant> =
        (0..watched.len()).map(|i| (i, Instant::now())).collect();
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let wake = next.values().min().copied().unwrap_or_else(Instant::now);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = info
                .connect_until(&stop, |e, delay| {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "statistics detection cannot connect");
                })
                .await;
            if client.is_none() {
                return;
            }
        }
        let now = Instant::now();
        let due: Vec<usize> = next
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(i, _)| *i)
            .collect();
        let mut oids: Vec<u32> = due
            .iter()
            .flat_map(|&i| watched[i].tables.iter().copied())
            .collect();
        oids.sort_unstable();
        oids.dedup();
        let reading = match tokio::time::timeout(
            Duration::from_secs(10),
            read(client.as_ref().expect("connected"), &oids),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::pg::connect::error_chain(&e), "statistics detection query failed");
                client = None;
                continue;
            }
            Err(_) => {
                tracing::warn!("statistics detection query timed out");
                client = None;
                continue;
            }
        };
        crate::engine::tasks::fault("detector");
        for i in due {
            let w = &watched[i];
            if comparator.changed(i, &w.tables, &reading) {
                tracing::debug!(view = %w.view, "statistics moved");
                let _ = changed.send(w.view.clone());
            }
            next.insert(i, now + w.poll_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(f: i64, i: i64, u: i64, d: i64) -> Reading {
        Reading {
            relfilenode: f,
            inserted: i,
            updated: u,
            deleted: d,
        }
    }

    #[test]
    fn views_sharing_a_table_each_see_its_change() {
        let mut c = Comparator::default();
        let mut now = HashMap::from([(7, r(1, 0, 0, 0))]);
        assert!(c.changed(0, &[7], &now));
        assert!(c.changed(1, &[7], &now));
        assert!(!c.changed(0, &[7], &now));
        assert!(!c.changed(1, &[7], &now));
        now.insert(7, r(1, 1, 0, 0));
        assert!(c.changed(0, &[7], &now));
        assert!(
            c.changed(1, &[7], &now),
            "the second view sees the change too"
        );
    }

    #[test]
    fn first_reading_counts_then_any_difference_counts() {
        let mut c = Comparator::default();
        let t = [1u32, 2];
        let mut now = HashMap::from([(1, r(10, 0, 0, 0)), (2, r(20, 5, 0, 0))]);
        assert!(c.changed(0, &t, &now), "the first reading is a change");
        assert!(!c.changed(0, &t, &now));
        now.insert(2, r(20, 6, 0, 0));
        assert!(c.changed(0, &t, &now), "insert");
        now.insert(2, r(20, 6, 1, 0));
        assert!(c.changed(0, &t, &now), "update");
        now.insert(1, r(10, 0, 0, 3));
        assert!(c.changed(0, &t, &now), "delete");
        now.insert(1, r(11, 0, 0, 3));
        assert!(c.changed(0, &t, &now), "truncate: new relfilenode");
        now.insert(1, r(11, 0, 0, 0));
        assert!(c.changed(0, &t, &now), "a reset counts");
        now.remove(&1);
        assert!(c.changed(0, &t, &now), "dropped");
        assert!(!c.changed(0, &t, &now));
    }
}
