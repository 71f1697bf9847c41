//! What operators and their tools read: the HTTP server, Prometheus metrics, liveness
//! and readiness, systemd notifications.

pub mod health;
pub mod http;
pub mod metrics;
pub mod per_view;
pub mod status;
pub mod systemd;
