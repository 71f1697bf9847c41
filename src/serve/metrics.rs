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
}

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let refresh_duration = HistogramVec::new(
            HistogramOpts::new(
                "refreshd_refresh_duration_seconds",
                "Time of the REFRESH MATERIALIZED VIEW statement.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["view"],
        )
        .expect("valid metric");
        let refreshes = IntCounterVec::new(
            Opts::new(
                "refreshd_refreshes_total",
                "Refreshes run, by view, reason and outcome.",
            ),
            &["view", "reason", "outcome"],
        )
        .expect("valid metric");
        let notifications = IntCounterVec::new(
            Opts::new(
                "refreshd_notifications_total",
                "Notifications received, by channel.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        let refresh_lag = HistogramVec::new(
            HistogramOpts::new(
                "refreshd_refresh_lag_seconds",
                "Time from the first pending change to the refresh that applied it committing.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["view"],
        )
        .expect("valid metric");
        let pending_since = GaugeVec::new(
            Opts::new(
                "refreshd_pending_since_seconds",
                "Age of the oldest change not yet applied to the view; 0 when fresh.",
            ),
            &["view"],
        )
        .expect("valid metric");
        let last_success = GaugeVec::new(
            Opts::new(
                "refreshd_last_success_timestamp_seconds",
                "Unix time of the view's last successful refresh.",
            ),
            &["view"],
        )
        .expect("valid metric");
        let listener_connected = IntGauge::new(
            "refreshd_listener_connected",
            "1 while the LISTEN connection is established.",
        )
        .expect("valid metric");
        let listener_reconnects = IntCounter::new(
            "refreshd_listener_reconnects_total",
            "Times the LISTEN connection was re-established after a loss.",
        )
        .expect("valid metric");
        let queue_usage = Gauge::new(
            "refreshd_notification_queue_usage_ratio",
            "pg_notification_queue_usage(), sampled on the LISTEN connection.",
        )
        .expect("valid metric");
        let leader = IntGauge::new("refreshd_leader", "1 while this replica holds leadership.")
            .expect("valid metric");
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "refreshd_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )
        .expect("valid metric");
        let control_rejected = IntCounter::new(
            "refreshd_control_rejected_total",
            "Control notifications not acted on: a sender whose role may not control refreshd, or a payload naming no configured view.",
        )
        .expect("valid metric");
        let control_coalesced = IntCounter::new(
            "refreshd_control_coalesced_total",
            "Forced refreshes (control channel, HTTP, SIGUSR1) that joined one already queued for the view.",
        )
        .expect("valid metric");
        let listener_roundtrip = Gauge::new(
            "refreshd_listener_roundtrip_seconds",
            "Time of the last self-addressed NOTIFY to reach the LISTEN session (the listener's proof and probe).",
        )
        .expect("valid metric");
        for c in [
            Box::new(refresh_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refreshes.clone()),
            Box::new(notifications.clone()),
            Box::new(refresh_lag.clone()),
            Box::new(pending_since.clone()),
            Box::new(last_success.clone()),
            Box::new(listener_connected.clone()),
            Box::new(listener_reconnects.clone()),
            Box::new(queue_usage.clone()),
            Box::new(leader.clone()),
            Box::new(build_info.clone()),
            Box::new(control_rejected.clone()),
            Box::new(control_coalesced.clone()),
            Box::new(listener_roundtrip.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        build_info.with_label_values(&[crate::VERSION]).set(1);
        Self {
            registry,
            refresh_duration,
            refreshes,
            notifications,
            refresh_lag,
            pending_since,
            last_success,
            listener_connected,
            listener_reconnects,
            queue_usage,
            leader,
            build_info,
            control_rejected,
            control_coalesced,
            listener_roundtrip,
        }
    }

    /// Makes a view's series exist from the start (at 0), so dashboards and alerts see
    /// it before its first refresh.
    pub fn register_view(&self, view: &str, channels: &[String]) {
        self.pending_since.with_label_values(&[view]).set(0.0);
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
