//! The per-view series, stored compactly and written straight to the text format.
//!
//! With the `prometheus` crate every labelled child carries its own copy of the metric's
//! description and label pairs, and every scrape first builds the whole exposition as
//! protobuf structures: at 10,000 views that was ~9 KB resident per view and tens of
//! megabytes of short-lived allocations per scrape. Here a view costs a few hundred
//! bytes, and a scrape writes text into one buffer. Names, labels and types are those
//! of SPEC.md; series appear when the `prometheus` crate would have made them (a
//! histogram at its first observation, a `reason` at its first refresh).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::engine::reason::Reason;

/// Bucket bounds of `refreshd_refresh_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];
/// Bucket bounds of `refreshd_refresh_lag_seconds`.
pub const LAG_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

const OUTCOMES: [&str; 2] = ["success", "failure"];

#[derive(Debug, Clone, Default)]
struct Hist {
    /// Observations `<=` each bound (not cumulative; summed when written).
    counts: [u64; 9],
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64; 9], v: f64) {
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone, Default)]
struct Series {
    duration: Option<Box<Hist>>,
    lag: Option<Box<Hist>>,
    /// `refreshes[reason.index()][outcome]`; `None` until the series exists.
    refreshes: [[Option<u64>; 2]; Reason::ALL.len()],
    pending_since: f64,
    last_success: Option<f64>,
    /// `Some` for keyed views: (keys recomputed, malformed payloads).
    keyed: Option<(u64, u64)>,
    /// `refreshd_capture_gaps`: `Some` once the view's capture has been checked.
    capture_gaps: Option<u64>,
}

/// Every view's series, by view label (sorted, so output is stable).
#[derive(Debug, Default)]
pub struct PerView {
    views: Mutex<BTreeMap<String, Series>>,
}

impl PerView {
    fn with<R>(&self, view: &str, f: impl FnOnce(&mut Series) -> R) -> R {
        let mut map = self.views.lock().expect("not poisoned");
        if !map.contains_key(view) {
            map.insert(view.to_string(), Series::default());
        }
        f(map.get_mut(view).expect("just inserted"))
    }

    /// The series a view has from the start (at 0).
    pub fn register(&self, view: &str, keyed: bool) {
        self.with(view, |s| {
            s.pending_since = 0.0;
            for o in 0..2 {
                s.refreshes[Reason::Notify.index()][o].get_or_insert(0);
            }
            if keyed {
                s.keyed.get_or_insert((0, 0));
            }
        });
    }

    pub fn forget(&self, view: &str) {
        self.views.lock().expect("not poisoned").remove(view);
    }

    /// A refresh ended; `timings` (duration, lag, end as unix time) for a success.
    pub fn refreshed(&self, view: &str, reason: Reason, timings: Option<(f64, f64, f64)>) {
        self.with(view, |s| {
            let outcome = usize::from(timings.is_none());
            *s.refreshes[reason.index()][outcome].get_or_insert(0) += 1;
            if let Some((duration, lag, end)) = timings {
                s.duration
                    .get_or_insert_with(Default::default)
                    .observe(&DURATION_BUCKETS, duration);
                s.lag
                    .get_or_insert_with(Default::default)
                    .observe(&LAG_BUCKETS, lag);
                s.last_success = Some(end);
            }
        });
    }

    pub fn set_pending(&self, view: &str, age: f64) {
        let mut map = self.views.lock().expect("not poisoned");
        if let Some(s) = map.get_mut(view) {
            s.pending_since = age;
        }
    }

    pub fn keyed_keys(&self, view: &str, n: u64) {
        self.with(view, |s| s.keyed.get_or_insert((0, 0)).0 += n);
    }

    /// Base tables or partitions of the view whose changes are not captured.
    pub fn set_capture_gaps(&self, view: &str, n: u64) {
        self.with(view, |s| s.capture_gaps = Some(n));
    }

    pub fn keyed_malformed(&self, view: &str) {
        self.with(view, |s| s.keyed.get_or_insert((0, 0)).1 += 1);
    }

    /// A copy of every view's series (a few hundred bytes per view), to be written
    /// out chunk by chunk without holding the lock.
    pub fn snapshot(&self) -> Exposition {
        let map = self.views.lock().expect("not poisoned");
        Exposition {
            views: map.iter().map(|(k, s)| (escape(k), s.clone())).collect(),
        }
    }

    /// Every per-view family in the Prometheus text format, in one string.
    pub fn render(&self, out: &mut String) {
        for chunk in std::sync::Arc::new(self.snapshot()).chunks(usize::MAX) {
            out.push_str(&chunk);
        }
    }
}

/// The families written, in order.
const FAMILIES: usize = 8;

/// A snapshot of the per-view series, written as text in chunks of views, so a scrape
/// of 10,000 views never holds its whole (tens of megabytes) exposition in memory.
#[derive(Debug)]
pub struct Exposition {
    views: Vec<(String, Series)>,
}

impl Exposition {
    /// The text, `per_chunk` views at a time; each item is produced when asked for.
    pub fn chunks(self: std::sync::Arc<Self>, per_chunk: usize) -> impl Iterator<Item = String> {
        let n = self.views.len();
        let per_chunk = per_chunk.max(1);
        (0..FAMILIES)
            .flat_map(move |f| (0..n.div_ceil(per_chunk).max(1)).map(move |c| (f, c * per_chunk)))
            .map(move |(f, start)| {
                let mut out = String::new();
                let end = n.min(start.saturating_add(per_chunk));
                self.family(f, start == 0, start..end, &mut out);
                out
            })
            .filter(|s| !s.is_empty())
    }

    /// Family `f` for the views in `range`, with its header when `first`.
    fn family(&self, f: usize, first: bool, range: std::ops::Range<usize>, out: &mut String) {
        let mut w = Writer {
            out,
            all: &self.views[..],
            views: &self.views[range],
            first,
        };
        match f {
            0 => w.histogram(DURATION, &DURATION_BUCKETS, |s| s.duration.as_deref()),
            1 => w.histogram(LAG, &LAG_BUCKETS, |s| s.lag.as_deref()),
            2 => w.refreshes(),
            3 => w.simple(PENDING_SINCE, |s| Some(num(s.pending_since))),
            4 => w.simple(LAST_SUCCESS, |s| s.last_success.map(num)),
            5 => w.simple(KEYED_KEYS, |s| s.keyed.map(|k| k.0)),
            7 => w.simple(CAPTURE_GAPS, |s| s.capture_gaps),
            _ => w.simple(KEYED_MALFORMED, |s| s.keyed.map(|k| k.1)),
        }
    }
}

/// A family's name, help text and type.
type Meta = (&'static str, &'static str, &'static str);

const DURATION: Meta = (
    "refreshd_refresh_duration_seconds",
    "Time of the refresh statement (REFRESH, or a keyed view's transaction).",
    "histogram",
);
const LAG: Meta = (
    "refreshd_refresh_lag_seconds",
    "Time from the first pending change to the refresh that applied it committing.",
    "histogram",
);
const REFRESHES: Meta = (
    "refreshd_refreshes_total",
    "Refreshes run, by view, reason and outcome.",
    "counter",
);
const PENDING_SINCE: Meta = (
    "refreshd_pending_since_seconds",
    "Age of the oldest change not yet applied to the view; 0 when fresh.",
    "gauge",
);
const LAST_SUCCESS: Meta = (
    "refreshd_last_success_timestamp_seconds",
    "Unix time of the view's last successful refresh.",
    "gauge",
);
const KEYED_KEYS: Meta = (
    "refreshd_keyed_keys_total",
    "Keys (groups) a keyed view recomputed one by one (a recompute of every group is not counted here).",
    "counter",
);
const CAPTURE_GAPS: Meta = (
    "refreshd_capture_gaps",
    "Base tables or partitions of the view whose changes no enabled trigger notifies on one of its channels (see capture_check_interval).",
    "gauge",
);
const KEYED_MALFORMED: Meta = (
    "refreshd_keyed_malformed_payloads_total",
    "Notifications for a keyed view whose payload was not a usable key list (or whose values did not cast to the key columns' types); each was taken as \"every group\".",
    "counter",
);

/// Where one family's chunk is written: the views of the chunk, every view (whether
/// the family has any series decides its header), and whether the chunk is the first.
struct Writer<'a> {
    out: &'a mut String,
    all: &'a Views,
    views: &'a Views,
    first: bool,
}

impl Writer<'_> {
    /// A histogram family; a view without observations has no series.
    fn histogram(
        &mut self,
        (name, help, kind): Meta,
        bounds: &[f64; 9],
        get: impl Fn(&Series) -> Option<&Hist>,
    ) {
        if self.first && self.all.iter().any(|(_, s)| get(s).is_some()) {
            header(self.out, name, help, kind);
        }
        let out = &mut *self.out;
        for (v, s) in self.views {
            let Some(h) = get(s) else { continue };
            let mut cumulative = 0;
            for (b, c) in bounds.iter().zip(&h.counts) {
                cumulative += c;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{view=\"{v}\",le=\"{}\"}} {cumulative}",
                    num(*b)
                );
            }
            let _ = writeln!(out, "{name}_bucket{{view=\"{v}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{view=\"{v}\"}} {}", num(h.sum));
            let _ = writeln!(out, "{name}_count{{view=\"{v}\"}} {}", h.count);
        }
    }

    /// A family with one sample per view (`kind` gauge or counter); a view without a
    /// value has no series.
    fn simple<T: std::fmt::Display>(
        &mut self,
        (name, help, kind): Meta,
        get: impl Fn(&Series) -> Option<T>,
    ) {
        if self.first && self.all.iter().any(|(_, s)| get(s).is_some()) {
            header(self.out, name, help, kind);
        }
        for (v, s) in self.views {
            if let Some(x) = get(s) {
                let _ = writeln!(self.out, "{name}{{view=\"{v}\"}} {x}");
            }
        }
    }

    /// `refreshd_refreshes_total`: one series per view, reason and outcome that exists.
    fn refreshes(&mut self) {
        if self.first {
            let (name, help, kind) = REFRESHES;
            header(self.out, name, help, kind);
        }
        for (v, s) in self.views {
            for reason in Reason::ALL {
                let (r, reason) = (reason.index(), reason.as_str());
                for (o, outcome) in OUTCOMES.iter().enumerate() {
                    if let Some(n) = s.refreshes[r][o] {
                        let _ = writeln!(
                            self.out,
                            "refreshd_refreshes_total{{outcome=\"{outcome}\",reason=\"{reason}\",view=\"{v}\"}} {n}"
                        );
                    }
                }
            }
        }
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value as Prometheus reads it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

type Views = [(String, Series)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_as_they_are_used_and_render_in_the_text_format() {
        let p = PerView::default();
        p.register("public.a", false);
        p.register("s.\"Q\\x\"", true);
        let mut out = String::new();
        p.render(&mut out);
        assert!(
            !out.contains("refreshd_refresh_duration_seconds"),
            "no histogram before a refresh:\n{out}"
        );
        assert!(out.contains(
            "refreshd_refreshes_total{outcome=\"failure\",reason=\"notify\",view=\"public.a\"} 0"
        ));
        assert!(
            out.contains("refreshd_keyed_keys_total{view=\"s.\\\"Q\\\\x\\\"\"} 0"),
            "{out}"
        );
        assert!(!out.contains("refreshd_keyed_keys_total{view=\"public.a\"}"));
        p.refreshed("public.a", Reason::Startup, Some((0.07, 2.0, 1700000000.5)));
        p.refreshed("public.a", Reason::Force, None);
        p.keyed_keys("s.\"Q\\x\"", 3);
        p.set_pending("public.a", 1.5);
        let mut out = String::new();
        p.render(&mut out);
        for line in [
            "# TYPE refreshd_refresh_duration_seconds histogram",
            "refreshd_refresh_duration_seconds_bucket{view=\"public.a\",le=\"0.05\"} 0",
            "refreshd_refresh_duration_seconds_bucket{view=\"public.a\",le=\"0.1\"} 1",
            "refreshd_refresh_duration_seconds_bucket{view=\"public.a\",le=\"+Inf\"} 1",
            "refreshd_refresh_duration_seconds_sum{view=\"public.a\"} 0.07",
            "refreshd_refresh_lag_seconds_bucket{view=\"public.a\",le=\"1\"} 0",
            "refreshd_refresh_lag_seconds_bucket{view=\"public.a\",le=\"3\"} 1",
            "refreshd_refreshes_total{outcome=\"success\",reason=\"startup\",view=\"public.a\"} 1",
            "refreshd_refreshes_total{outcome=\"failure\",reason=\"force\",view=\"public.a\"} 1",
            "refreshd_pending_since_seconds{view=\"public.a\"} 1.5",
            "refreshd_last_success_timestamp_seconds{view=\"public.a\"} 1700000000.5",
            "refreshd_keyed_keys_total{view=\"s.\\\"Q\\\\x\\\"\"} 3",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
        }
        // Chunked, the same text.
        let chunked: String = std::sync::Arc::new(p.snapshot()).chunks(1).collect();
        assert_eq!(chunked, out);
        p.forget("public.a");
        let mut out = String::new();
        p.render(&mut out);
        assert!(!out.contains("public.a"), "{out}");
    }

    #[test]
    fn every_reason_is_exposed_once_a_refresh_of_it_is_recorded() {
        let p = PerView::default();
        p.register("public.a", false);
        for (k, reason) in Reason::ALL.iter().enumerate() {
            let k = k as f64;
            p.refreshed("public.a", *reason, Some((0.1, 0.2, 1700000000.0 + k)));
            p.refreshed("public.a", *reason, None);
            p.refreshed("public.a", *reason, None);
        }
        let mut out = String::new();
        p.render(&mut out);
        for reason in Reason::ALL {
            let r = reason.as_str();
            for (outcome, n) in [("success", 1), ("failure", 2)] {
                let line = format!(
                    "refreshd_refreshes_total{{outcome=\"{outcome}\",reason=\"{r}\",view=\"public.a\"}} {n}"
                );
                assert_eq!(
                    out.lines().filter(|l| *l == line).count(),
                    1,
                    "{line} once in:\n{out}"
                );
            }
        }
        let series = out
            .lines()
            .filter(|l| l.starts_with("refreshd_refreshes_total{"))
            .count();
        assert_eq!(series, 2 * Reason::ALL.len(), "{out}");
    }
}
