//! Liveness and readiness, kept apart: `/healthz` says the loops are alive (never the
//! database), `/readyz` says this replica is doing its part.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the LISTEN connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not connected.
    Disconnected = 0,
    /// Connected, waiting for the advisory lock.
    Standby = 1,
    /// Holds the lock and LISTENs.
    Leader = 2,
}

/// Shared between the loops and the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    config_loaded: AtomicBool,
    role: AtomicU8,
    core_beat: AtomicU64,
    listener_beat: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A loop that has not beaten for this long is considered stuck.
pub const STALL: Duration = Duration::from_secs(60);

impl Health {
    pub fn set_config_loaded(&self) {
        self.config_loaded.store(true, Ordering::Release);
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            2 => Role::Leader,
            1 => Role::Standby,
            _ => Role::Disconnected,
        }
    }

    pub fn beat_core(&self) {
        self.core_beat.store(now_ms(), Ordering::Release);
    }

    pub fn beat_listener(&self) {
        self.listener_beat.store(now_ms(), Ordering::Release);
    }

    /// Both loops beat recently.
    pub fn alive(&self) -> bool {
        let now = now_ms();
        let fresh = |b: &AtomicU64| {
            now.saturating_sub(b.load(Ordering::Acquire)) < STALL.as_millis() as u64
        };
        fresh(&self.core_beat) && fresh(&self.listener_beat)
    }

    /// Config loaded and the replica is the listening leader or a connected standby.
    pub fn ready(&self) -> bool {
        self.config_loaded.load(Ordering::Acquire) && self.role() != Role::Disconnected
    }
}
