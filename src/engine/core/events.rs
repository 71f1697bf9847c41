//! The listener's events: notifications (a keyed view's payload parsed into its
//! dirty groups), control payloads, the channels now LISTENed (catch-ups released),
//! and leadership won or lost (the coalescer paused without the lock).

use super::Core;
use crate::engine::keys::{self, Payload};
use crate::engine::listener::ListenerEvent;
use crate::engine::reason::Reason;
use crate::pg::ident::QualifiedName;
use crate::serve::status::MAX_VIEW_NAME;

impl Core {
    /// Hands a listener event to its handler.
    pub(super) fn listener_event(&mut self, ev: ListenerEvent, now: std::time::Instant) {
        match ev {
            ListenerEvent::Control(payload) => self.control(&payload, now),
            ListenerEvent::Notification { channel, .. }
                if channel == crate::pg::force::FORCE_CHANNEL =>
            {
                self.take_force_requests()
            }
            ListenerEvent::Notification {
                channel, payload, ..
            } => self.notified(&channel, &payload, now),
            ListenerEvent::Listening(set) => {
                self.listening = set;
                self.release_awaiting(now);
            }
            ListenerEvent::Leading { first } => self.leading(first, now),
            ListenerEvent::Standby | ListenerEvent::Lost => self.not_leading(),
        }
    }

    /// A notification: every view on its channel is marked; a keyed view's dirty
    /// groups take its payload (a malformed one, counted and logged, means every
    /// group).
    fn notified(&mut self, channel: &str, payload: &str, now: std::time::Instant) {
        tracing::trace!(%channel, payload = %payload.chars().take(64).collect::<String>(), "notification");
        let Some(views) = self.index.by_channel.get(channel) else {
            return;
        };
        for &i in views {
            if let Some(k) = &mut self.keys[i] {
                let view = &self.config.views[i];
                let arity = view.keyed.as_ref().map_or(1, |k| k.key.len());
                let parsed = keys::parse(payload, arity);
                if let Payload::Malformed(why) = parsed {
                    let name = view.name.clone();
                    self.metrics.views.keyed_malformed(&name.to_string());
                    let bytes = payload.len();
                    if let Some(n) = self.throttle.admit(&("malformed", name.to_string()), now) {
                        tracing::warn!(view = %name, %channel, why, bytes, suppressed = n, "a notification's payload is not a key list for this keyed view; recomputing every group");
                    }
                }
                k.apply(parsed);
            }
            self.coalescer.mark(i, Reason::Notify, now);
        }
    }

    /// This replica leads: every view is caught up (at startup, or resynced after a
    /// loss), the requests made while no refreshd led are taken, capture is checked.
    fn leading(&mut self, first: bool, now: std::time::Instant) {
        self.leading = true;
        // Every view is caught up now, those waiting for their channels too.
        self.awaiting_listen.clear();
        if self.stopping.is_none() {
            self.coalescer.set_paused(false);
        }
        let reason = if first {
            Reason::Startup
        } else {
            Reason::Resync
        };
        let views = &self.config.views;
        let mut waiting: Vec<bool> = views
            .iter()
            .map(|v| self.capture.hold_unread(v, reason))
            .collect();
        // And every view reading a held one, through any number of layers.
        let mut more = true;
        while more {
            more = false;
            for (i, v) in views.iter().enumerate() {
                if !waiting[i] && self.reads[i].iter().any(|&l| waiting[l]) {
                    self.capture.follow(v.name.clone(), reason);
                    waiting[i] = true;
                    more = true;
                }
            }
        }
        let mut held = 0usize;
        for (i, w) in waiting.into_iter().enumerate() {
            if w {
                held += 1;
            } else {
                self.coalescer.mark(i, reason, now);
            }
        }
        if held > 0 {
            tracing::info!(views = held, "catch-up refreshes wait for the first capture check to read which tables each view reads (DDL between a refresh and that reading would go unseen)");
        }
        // Requests made while no refreshd led (or while this one was away).
        self.take_force_requests();
        self.share_control();
        self.capture.check_now();
    }

    /// A standby, or the connection lost: without the lock another replica may lead,
    /// so nothing starts until it is ours again.
    fn not_leading(&mut self) {
        self.leading = false;
        self.listening.clear();
        self.coalescer.set_paused(true);
        self.refresher.close_idle();
        self.capture.drop_held();
    }

    /// Catch-up refreshes for views whose channels are now all LISTENed.
    pub(super) fn release_awaiting(&mut self, now: std::time::Instant) {
        let listening = &self.listening;
        let index = &self.index;
        let config = &self.config;
        let reads = &self.reads;
        let coalescer = &mut self.coalescer;
        let capture = &mut self.capture;
        self.awaiting_listen.retain(|(name, reason)| {
            let Some(&i) = index.by_name.get(name) else {
                return false;
            };
            let v = &config.views[i];
            if v.channels.iter().all(|c| listening.contains(c)) {
                // A view a reload added: its first capture reading comes first (and
                // the reading of a view it reads).
                if !capture.hold_unread(v, *reason) {
                    if reads[i]
                        .iter()
                        .any(|&l| capture.waiting(&config.views[l].name))
                    {
                        capture.follow(v.name.clone(), *reason);
                    } else {
                        coalescer.mark(i, *reason, now);
                    }
                }
                false
            } else {
                true
            }
        });
    }

    /// A control payload from an allowed sender: `*` or a configured view's name.
    fn control(&mut self, payload: &str, now: std::time::Instant) {
        let p = payload.trim();
        if p == "*" {
            self.log_throttled(("control", "*".into()), |n| {
                tracing::info!(
                    suppressed = n,
                    "control channel: forced refresh of every view"
                )
            });
            self.force(None, now);
            return;
        }
        let found = (p.len() <= MAX_VIEW_NAME)
            .then(|| QualifiedName::parse(p).ok())
            .flatten()
            .and_then(|n| self.index.by_name.get(&n).copied());
        match found {
            Some(i) => {
                let name = self.config.views[i].name.clone();
                self.log_throttled(("control", name.to_string()), |n| {
                    tracing::info!(view = %name, suppressed = n, "control channel: forced refresh")
                });
                self.force(Some(&name), now);
            }
            None => {
                self.metrics.control_rejected.inc();
                let shown: String = p.chars().take(80).collect();
                let bytes = p.len();
                self.log_throttled(("control", String::new()), |n| {
                    tracing::warn!(payload = ?shown, bytes, suppressed = n, "control channel: payload names no configured view; ignored")
                });
            }
        }
    }
}
