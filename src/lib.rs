//! refreshd keeps PostgreSQL materialized views fresh: it LISTENs for notifications from
//! triggers, coalesces bursts per view, runs `REFRESH MATERIALIZED VIEW CONCURRENTLY`
//! on demand and on cron schedules, and publishes what it did for Prometheus.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod detect;
pub mod health;
pub mod http;
pub mod ident;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod refresh;
pub mod refresher;
pub mod systemd;

/// The channel on which `NOTIFY refreshd_control, 'schema.view'` (or `'*'`) forces a
/// refresh.
pub const CONTROL_CHANNEL: &str = "refreshd_control";

/// The crate version, for `--version` and `refreshd_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
