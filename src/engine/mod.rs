//! The rules and the loop that owns them: the coalescer (pure state machine), the core
//! loop that drives it, the LISTEN session, statistics detection and the refresh pool.

pub mod arming;
pub mod capture;
pub mod coalesce;
pub mod control;
pub mod core;
pub mod detect;
pub mod keys;
pub mod listen_event;
pub mod listener;
pub mod reason;
pub mod refresher;
pub mod schedule;
pub mod session;
pub mod startup;
pub mod tasks;
pub mod throttle;
