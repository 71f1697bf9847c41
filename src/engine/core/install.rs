//! Installing a configuration, at startup and after each reload: the plan computed
//! without I/O ([`ReloadPlan`], in `reload.rs`), then installed here into the metrics,
//! the coalescer, the book, the dirty groups, the indexes, schedules, the detector, the
//! listener's channels and roles, and what the HTTP server reads.

use tokio_util::sync::CancellationToken;

use super::reload::{self, ReloadPlan};
use super::{Command, Core, Index};
use crate::config::{Config, ViewConfig};
use crate::engine::coalesce::{Share, Timing};
use crate::engine::keys::DirtyKeys;
use crate::engine::schedule::Schedules;
use crate::engine::startup::Prepared;
use crate::engine::tasks::{self, Mapped};
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;
use crate::serve::metrics::Metrics;

impl Core {
    /// Takes a prepared configuration (at startup, and after each reload): computes
    /// what changes ([`ReloadPlan`]) and installs it.
    pub(super) async fn apply(&mut self, p: Prepared, first: bool) {
        let plan = if first {
            ReloadPlan::initial(&p.config)
        } else {
            let plan = ReloadPlan::diff(&self.config, &p.config);
            for section in &plan.restart_needed {
                tracing::warn!(
                    section,
                    "SIGHUP: {section} changed; that takes effect at the next restart"
                );
            }
            if let Err(e) = reload::refuse(self.shared.bound, p.token.as_deref()) {
                tracing::error!(error = %e, "SIGHUP: reload refused; keeping the old one");
                return;
            }
            plan
        };
        self.install(p, &plan);
        if !first {
            tracing::info!(
                views = self.config.views.len(),
                added = plan.added.len(),
                removed = plan.removed.len(),
                listen = ?plan.listen,
                unlisten = ?plan.unlisten,
                "SIGHUP: configuration reloaded"
            );
            self.release_awaiting(std::time::Instant::now());
            self.share_control();
        }
    }

    /// Installs `plan`: metrics, the coalescer's and the book's per-view state, the
    /// dirty groups, the catch-ups, the indexes, schedules, the detector, the channels
    /// and roles the listener follows, and what the HTTP server reads.
    fn install(&mut self, p: Prepared, plan: &ReloadPlan) {
        let new = p.config.clone();
        for name in &plan.removed {
            self.metrics.forget_view(&name.to_string());
        }
        for name in &plan.added {
            if let Some(v) = new.view(name) {
                self.metrics
                    .register_view(&v.name.to_string(), &v.channels, v.keyed.is_some());
            }
        }
        self.coalescer.reconfigure(
            new.views.iter().map(timing).collect(),
            p.reads.clone(),
            &plan.previous,
            new.database.max_concurrent_refreshes,
        );
        self.history = plan
            .previous
            .iter()
            .map(|p| p.map(|p| self.history[p].clone()).unwrap_or_default())
            .collect();
        self.keys = self.carry_keys(&new, plan);
        self.awaiting_listen.extend(plan.catch_up.iter().cloned());
        self.reads = p.reads;
        self.index = Index::new(&new);
        if self.stopping.is_none() {
            self.schedules = Schedules::new(&new.views, chrono::Utc::now());
        }
        self.restart_detector(p.watched);
        self.refresher.arming().set_quiet(&new.views);
        self.channels_tx
            .send_replace(new.channels().into_iter().collect());
        self.roles_tx.send_replace(new.control_roles.clone());
        *self.shared.config.write().expect("not poisoned") = new.clone();
        *self.shared.admin_token.write().expect("not poisoned") = p.token;
        self.config = new;
    }

    /// The dirty groups of the new keyed views: carried over, or everything dirty for
    /// the plan's fresh ones.
    fn carry_keys(&mut self, new: &Config, plan: &ReloadPlan) -> Vec<Option<DirtyKeys>> {
        new.views
            .iter()
            .zip(&plan.previous)
            .enumerate()
            .map(|(i, (v, prev))| {
                let keyed = v.keyed.as_ref()?;
                let kept = prev
                    .filter(|_| !plan.fresh_keys.contains(&i))
                    .and_then(|j| self.keys.get_mut(j).and_then(Option::take));
                Some(match kept {
                    Some(mut k) => {
                        k.set_max(keyed.max_keys);
                        k
                    }
                    None => {
                        let mut k = DirtyKeys::new(keyed.max_keys);
                        k.add_all();
                        k
                    }
                })
            })
            .collect()
    }

    /// Stops the statistics detector and starts one for `watched` (if any).
    fn restart_detector(&mut self, watched: Vec<crate::engine::detect::Watched>) {
        self.detector.cancel();
        self.detector = CancellationToken::new();
        if !watched.is_empty() {
            self.detectors.spawn(detector(
                self.refresh_info.clone(),
                watched,
                Mapped::new(self.tx.clone(), Command::Detected),
                self.metrics.clone(),
                self.detector.clone(),
            ));
        }
    }
}

/// Statistics detection for `watched` until `stop`, its findings sent as
/// [`Command::Detected`]; started again after a panic (see [`tasks::supervise`]).
async fn detector(
    info: ConnectInfo,
    watched: Vec<crate::engine::detect::Watched>,
    changed: Mapped<QualifiedName>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let stop2 = stop.clone();
    tasks::supervise(
        "detector",
        metrics,
        stop,
        move || {
            crate::engine::detect::run(
                info.clone(),
                watched.clone(),
                changed.clone(),
                stop2.clone(),
            )
        },
        || {},
    )
    .await
}

/// A view's timings as the coalescer takes them.
fn timing(v: &ViewConfig) -> Timing {
    Timing {
        debounce: v.debounce,
        max_delay: v.max_delay,
        min_interval: v.min_interval,
        max_load: Share::from_fraction(v.max_load),
    }
}
