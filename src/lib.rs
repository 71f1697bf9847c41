//! refreshd keeps PostgreSQL materialized views fresh: it LISTENs for notifications from
//! triggers, coalesces bursts per view, runs `REFRESH MATERIALIZED VIEW CONCURRENTLY`
//! on demand and on cron schedules, and publishes what it did for Prometheus.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod engine;
pub mod incremental;
mod percent;
pub mod pg;
pub mod serve;

/// The channel on which `NOTIFY refreshd_control, 'schema.view'` (or `'*'`) forces a
/// refresh.
pub const CONTROL_CHANNEL: &str = "refreshd_control";

/// The channel on which the leader announces each successful refresh, inside the
/// refresh's own transaction (`NOTIFY refreshd_refreshed, 'schema.view'`).
pub const EVENTS_CHANNEL: &str = "refreshd_refreshed";

/// The crate version, for `--version` and `refreshd_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
