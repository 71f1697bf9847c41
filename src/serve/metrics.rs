//! Every metric refreshd publishes. Names and labels are part of the contract (SPEC.md).

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::serve::per_view::PerView;

mod process;

/// The metric handles. Per-view series live in [`PerView`] (compact, written as text);
/// the rest in a `prometheus` registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub views: Arc<PerView>,
    pub notifications: IntCounterVec,
    pub listener_connected: IntGauge,
    pub listener_reconnects: IntCounter,
    pub queue_usage: Gauge,
    pub leader: IntGauge,
    pub build_info: prometheus::IntGaugeVec,
    pub control_rejected: IntCounter,
    pub control_coalesced: IntCounter,
    pub listener_roundtrip: Gauge,
    /// Panics of refreshd's own tasks, by task (in the `reason` label: SPEC.md allows
    /// no other label name): see [`TASKS`].
    pub task_panics: IntCounterVec,
}

/// The values of `refreshd_task_panics_total`'s `reason` label: the task that panicked.
pub const TASKS: [&str; 6] = [
    "listener",
    "detector",
    "capture",
    "refresh",
    "http",
    "background",
];

/// Registers a freshly made metric (names are fixed: a clash is a bug).
fn register<T>(registry: &Registry, made: prometheus::Result<T>) -> T
where
    T: prometheus::core::Collector + Clone + 'static,
{
    let m = made.expect("valid metric");
    registry
        .register(Box::new(m.clone()))
        .expect("unique metric names");
    m
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let notifications = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "refreshd_notifications_total",
                    "Notifications received, by channel.",
                ),
                &["channel"],
            ),
        );
        let int_gauge = |name: &str, help: &str| register(r, IntGauge::new(name, help));
        let counter = |name: &str, help: &str| register(r, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| register(r, Gauge::new(name, help));
        let build_info = register(
            r,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "refreshd_build_info",
                    "Always 1; the version is in the label.",
                ),
                &["version"],
            ),
        );
        build_info.with_label_values(&[crate::VERSION]).set(1);
        let task_panics = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "refreshd_task_panics_total",
                    "Panics of refreshd's own tasks (a bug), by task in the reason label: listener, detector, capture, refresh, http, background.",
                ),
                &["reason"],
            ),
        );
        for t in TASKS {
            task_panics.with_label_values(&[t]);
        }
        // process_* (start time, CPU, memory, fds), read from /proc at each scrape.
        if cfg!(target_os = "linux") {
            registry
                .register(Box::new(process::ProcessCollector::new()))
                .expect("unique metric names");
        }
        Self {
            views: Arc::new(PerView::default()),
            notifications,
            listener_connected: int_gauge(
                "refreshd_listener_connected",
                "1 while the LISTEN connection is established (and proven).",
            ),
            listener_reconnects: counter(
                "refreshd_listener_reconnects_total",
                "Times the LISTEN connection was re-established after a loss.",
            ),
            queue_usage: gauge(
                "refreshd_notification_queue_usage_ratio",
                "pg_notification_queue_usage(), sampled with the listener's probe.",
            ),
            leader: int_gauge("refreshd_leader", "1 while this replica holds leadership."),
            build_info,
            control_rejected: counter(
                "refreshd_control_rejected_total",
                "Control notifications not acted on: a sender whose role may not control refreshd, or a payload naming no configured view.",
            ),
            control_coalesced: counter(
                "refreshd_control_coalesced_total",
                "Forced refreshes (control channel, HTTP, SIGUSR1) that joined one already queued for the view.",
            ),
            listener_roundtrip: gauge(
                "refreshd_listener_roundtrip_seconds",
                "Time of the last self-addressed NOTIFY to reach the LISTEN session (the listener's proof and probe).",
            ),
            task_panics,
            registry,
        }
    }

    /// Makes a view's series exist from the start (at 0), so dashboards and alerts see
    /// it before its first refresh.
    pub fn register_view(&self, view: &str, channels: &[String], keyed: bool) {
        self.views.register(view, keyed);
        for ch in channels {
            self.notifications.with_label_values(&[ch]);
        }
    }

    /// Drops a view's series after it left the configuration.
    pub fn forget_view(&self, view: &str) {
        self.views.forget(view);
    }

    /// The registry's series (all but the per-view ones) in the text format.
    pub fn render_registry(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    /// The whole Prometheus text format in one string.
    pub fn render(&self) -> String {
        let mut out = self.render_registry();
        self.views.render(&mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_view_leaves_no_series() {
        let m = Metrics::new();
        m.register_view("public.gone", &["c".to_string()], true);
        m.views.refreshed(
            "public.gone",
            crate::engine::reason::Reason::Force,
            Some((0.1, 0.2, 1.0)),
        );
        m.forget_view("public.gone");
        assert!(!m.render().contains("public.gone"), "{}", m.render());
    }
}
