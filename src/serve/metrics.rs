//! Every metric refreshd publishes. Names and labels are part of the contract (SPEC.md).

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// The metric handles, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub refresh_duration: HistogramVec,
    pub refreshes: IntCounterVec,
    pub notifications: IntCounterVec,
    pub refresh_lag: HistogramVec,
    pub pending_since: GaugeVec,
    pub last_success: GaugeVec,
    pub listener_connected: IntGauge,
    pub listener_reconnects: IntCounter,
    pub queue_usage: Gauge,
    pub leader: IntGauge,
    pub build_info: prometheus::IntGaugeVec,
    pub control_rejected: IntCounter,
    pub control_coalesced: IntCounter,
    pub listener_roundtrip: Gauge,
    pub keyed_keys: IntCounterVec,
    pub keyed_malformed: IntCounterVec,
}

// Ten buckets each: every bucket is a series per view, and at 10,000 views the series
// are most of refreshd's memory.
const DURATION_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];
const LAG_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

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
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    &["view"],
                ),
            )
        };
        let refresh_duration = histogram(
            "refreshd_refresh_duration_seconds",
            "Time of the REFRESH MATERIALIZED VIEW statement.",
            DURATION_BUCKETS,
        );
        let refresh_lag = histogram(
            "refreshd_refresh_lag_seconds",
            "Time from the first pending change to the refresh that applied it committing.",
            LAG_BUCKETS,
        );
        let refreshes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "refreshd_refreshes_total",
                    "Refreshes run, by view, reason and outcome.",
                ),
                &["view", "reason", "outcome"],
            ),
        );
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
        let view_gauge =
            |name: &str, help: &str| register(r, GaugeVec::new(Opts::new(name, help), &["view"]));
        let pending_since = view_gauge(
            "refreshd_pending_since_seconds",
            "Age of the oldest change not yet applied to the view; 0 when fresh.",
        );
        let last_success = view_gauge(
            "refreshd_last_success_timestamp_seconds",
            "Unix time of the view's last successful refresh.",
        );
        let view_counter = |name: &str, help: &str| {
            register(r, IntCounterVec::new(Opts::new(name, help), &["view"]))
        };
        let keyed_keys = view_counter(
            "refreshd_keyed_keys_total",
            "Keys (groups) a keyed view recomputed one by one (a recompute of every group is not counted here).",
        );
        let keyed_malformed = view_counter(
            "refreshd_keyed_malformed_payloads_total",
            "Notifications for a keyed view whose payload was not a usable key list (or whose values did not cast to the key columns' types); each was taken as \"every group\".",
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
        Self {
            refresh_duration,
            refreshes,
            notifications,
            refresh_lag,
            pending_since,
            last_success,
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
            keyed_keys,
            keyed_malformed,
            registry,
        }
    }

    /// Makes a view's series exist from the start (at 0), so dashboards and alerts see
    /// it before its first refresh.
    pub fn register_view(&self, view: &str, channels: &[String], keyed: bool) {
        self.pending_since.with_label_values(&[view]).set(0.0);
        if keyed {
            self.keyed_keys.with_label_values(&[view]);
            self.keyed_malformed.with_label_values(&[view]);
        }
        for outcome in ["success", "failure"] {
            self.refreshes.with_label_values(&[view, "notify", outcome]);
        }
        for ch in channels {
            self.notifications.with_label_values(&[ch]);
        }
    }

    /// Drops a view's series after it left the configuration.
    pub fn forget_view(&self, view: &str) {
        let _ = self.pending_since.remove_label_values(&[view]);
        let _ = self.last_success.remove_label_values(&[view]);
        let _ = self.refresh_duration.remove_label_values(&[view]);
        let _ = self.refresh_lag.remove_label_values(&[view]);
        let _ = self.keyed_keys.remove_label_values(&[view]);
        let _ = self.keyed_malformed.remove_label_values(&[view]);
        for reason in [
            "notify",
            "schedule",
            "force",
            "startup",
            "resync",
            "dependency",
            "detected",
        ] {
            for outcome in ["success", "failure"] {
                let _ = self.refreshes.remove_label_values(&[view, reason, outcome]);
            }
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
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
        m.refreshes
            .with_label_values(&["public.gone", "force", "success"])
            .inc();
        m.refresh_duration
            .with_label_values(&["public.gone"])
            .observe(0.1);
        m.forget_view("public.gone");
        assert!(!m.render().contains("public.gone"), "{}", m.render());
    }
}
