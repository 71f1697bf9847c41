//! Cron schedules as a plain value with time passed in: the core loop asks when the
//! next one fires and sleeps until then (with everything else it waits for), then
//! takes the views whose time has come. No task, no timer wheel, nothing to shut down:
//! a reload builds a new value and the old one is dropped. (tokio-cron-scheduler, used
//! before, kept about 190 kB per reload alive: `tests/reload.rs` measured 23 MiB →
//! 77 MiB over 280 reloads.)
//!
//! Schedules are in UTC. A firing missed by more than one period (the process was
//! stopped, or the clock jumped forward) fires once, not once per missed period; if the
//! clock jumps back, the next firing is computed again from the new time.

use chrono::{DateTime, Utc};

use crate::config::ViewConfig;
use crate::pg::ident::QualifiedName;

struct Entry {
    view: QualifiedName,
    cron: croner::Cron,
    next: Option<DateTime<Utc>>,
}

/// The schedules of one configuration.
pub struct Schedules {
    entries: Vec<Entry>,
    last_now: DateTime<Utc>,
}

fn next_after(cron: &croner::Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t, false).ok()
}

impl Schedules {
    /// The scheduled views of `views`, each first firing after `now`.
    pub fn new(views: &[ViewConfig], now: DateTime<Utc>) -> Self {
        let entries = views
            .iter()
            .filter_map(|v| {
                let s = v.schedule.as_ref()?;
                // Validated when the configuration was loaded.
                let cron = croner::Cron::new(&s.with_seconds)
                    .with_seconds_required()
                    .parse()
                    .ok()?;
                let next = next_after(&cron, now);
                Some(Entry {
                    view: v.name.clone(),
                    cron,
                    next,
                })
            })
            .collect();
        Self {
            entries,
            last_now: now,
        }
    }

    /// No schedule at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The earliest upcoming firing.
    pub fn next_fire(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().filter_map(|e| e.next).min()
    }

    /// The views whose firing time has come by `now`, each once; their next firing is
    /// the first one after `now`.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<QualifiedName> {
        if now < self.last_now {
            for e in &mut self.entries {
                e.next = next_after(&e.cron, now);
            }
        }
        self.last_now = now;
        let mut due = Vec::new();
        for e in &mut self.entries {
            if e.next.is_some_and(|n| n <= now) {
                due.push(e.view.clone());
                e.next = next_after(&e.cron, now);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn views(schedules: &[(&str, Option<&str>)]) -> Vec<ViewConfig> {
        let mut text = String::from("[database]\nurl = \"postgresql://u@h/d\"\n");
        for (name, s) in schedules {
            text.push_str(&format!(
                "[[view]]\nname = \"{name}\"\nchannels = [\"c\"]\n"
            ));
            if let Some(s) = s {
                text.push_str(&format!("schedule = \"{s}\"\n"));
            }
        }
        crate::config::Config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap()
            .views
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, s).unwrap()
    }

    #[test]
    fn fires_each_view_at_its_times() {
        let v = views(&[
            ("public.a", Some("0 */15 * * * *")),
            ("public.b", Some("*/5 * * * *")),
            ("public.c", None),
        ]);
        let mut s = Schedules::new(&v, at(10, 1, 0));
        assert!(!s.is_empty());
        assert_eq!(s.next_fire(), Some(at(10, 5, 0)));
        assert!(s.take_due(at(10, 4, 59)).is_empty());
        let due = s.take_due(at(10, 5, 0));
        assert_eq!(due, vec![QualifiedName::new("public", "b")]);
        assert!(s.take_due(at(10, 5, 0)).is_empty(), "once per firing");
        assert_eq!(s.next_fire(), Some(at(10, 10, 0)));
        let due = s.take_due(at(10, 15, 0));
        assert_eq!(due.len(), 2, "both at the quarter hour");
        assert_eq!(s.next_fire(), Some(at(10, 20, 0)));
    }

    #[test]
    fn missed_periods_fire_once_and_a_clock_jump_back_recomputes() {
        let v = views(&[("public.a", Some("0 * * * * *"))]);
        let mut s = Schedules::new(&v, at(10, 0, 30));
        assert_eq!(
            s.take_due(at(10, 30, 0)).len(),
            1,
            "30 missed minutes: one firing"
        );
        assert_eq!(s.next_fire(), Some(at(10, 31, 0)));
        // The clock goes back an hour: the next firing follows it.
        assert!(s.take_due(at(9, 30, 10)).is_empty());
        assert_eq!(s.next_fire(), Some(at(9, 31, 0)));
    }

    #[test]
    fn no_schedules() {
        let s = Schedules::new(&views(&[("public.a", None)]), at(0, 0, 0));
        assert!(s.is_empty());
        assert_eq!(s.next_fire(), None);
    }
}
