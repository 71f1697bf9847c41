//! systemd integration (`Type=notify`): `READY=1` once the replica is doing its part
//! (as `/readyz` defines it), `WATCHDOG=1` while the loops make progress (when
//! `WatchdogSec` is set), `STOPPING=1` at shutdown. Without `$NOTIFY_SOCKET` every call
//! is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::serve::health::Health;

/// Runs until `stop`; then says `STOPPING=1`.
pub async fn supervise(health: Arc<Health>, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = watchdog_period();
    // Ping at half the watchdog period, as sd_watchdog_enabled(3) recommends; check
    // readiness at least every 250 ms so READY=1 follows /readyz closely.
    let period = watchdog.map_or(Duration::from_millis(250), |w| {
        (w / 2).min(Duration::from_millis(250))
    });
    let mut ready_sent = false;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !ready_sent && health.ready() {
            ready_sent = true;
            let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status("ready")]);
        }
        // Only a live process pings: a stuck loop lets systemd's watchdog restart us.
        if watchdog.is_some() && health.alive() {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        }
    }
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` names another process (libsystemd's
/// `sd_watchdog_enabled` semantics: an unset `WATCHDOG_PID` means this process).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
