//! The dirty groups of a keyed view: what its notifications named since its last
//! refresh started, coalesced like the notifications themselves. Anything refreshd
//! cannot read as keys means "everything": a lost key would be a lost change.

use std::collections::BTreeSet;

use crate::pg::keyed::{Key, Work};

/// PostgreSQL's limit on a NOTIFY payload; a longer one was not sent by NOTIFY.
const MAX_PAYLOAD: usize = 8000;

/// What one notification's payload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `*`, or more keys than `max_keys`.
    All,
    /// Empty: a wake-up that names no keys. For a view with a change buffer (`buffer`),
    /// "read the buffer"; for one without, everything (see [`Work::Wake`]).
    Wake,
    Keys(Vec<Key>),
    /// Not a key list this view can use; refreshed as "all". The reason is for the log
    /// (it never quotes the payload).
    Malformed(&'static str),
}

/// Reads a payload naming keys of `arity` columns: a JSON array of key tuples (arrays
/// of JSON strings or numbers); for one key column, bare values are accepted too.
pub fn parse(payload: &str, arity: usize) -> Payload {
    let p = payload.trim();
    if p.is_empty() {
        return Payload::Wake;
    }
    if p == "*" || p == "\"*\"" {
        return Payload::All;
    }
    if p.len() > MAX_PAYLOAD {
        return Payload::Malformed("longer than a NOTIFY payload can be");
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(p) else {
        return Payload::Malformed("not JSON");
    };
    let serde_json::Value::Array(tuples) = value else {
        return Payload::Malformed("not a JSON array of keys");
    };
    let mut keys = Vec::with_capacity(tuples.len());
    for t in tuples {
        let parts = match t {
            serde_json::Value::Array(parts) => parts,
            scalar if arity == 1 => vec![scalar],
            _ => return Payload::Malformed("a key is not a JSON array"),
        };
        if parts.len() != arity {
            return Payload::Malformed("a key has the wrong number of values");
        }
        let mut key = Vec::with_capacity(arity);
        for v in parts {
            match v {
                serde_json::Value::String(s) if !s.contains('\0') => key.push(s),
                serde_json::Value::Number(n) => key.push(n.to_string()),
                _ => return Payload::Malformed("a key value is not a JSON string or number"),
            }
        }
        keys.push(key);
    }
    Payload::Keys(keys)
}

/// A keyed view's groups waiting for a refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtyKeys {
    all: bool,
    /// A wake-up without keys arrived ([`Payload::Wake`]).
    wake: bool,
    set: BTreeSet<Key>,
    max_keys: usize,
    /// Seconds a keyed refresh took per key, and a full recompute took (moving
    /// averages of the last refreshes): when the keys would cost more than recomputing
    /// everything, everything is recomputed.
    per_key: Option<f64>,
    full: Option<f64>,
}

/// Weight of the newest refresh in the moving averages.
const EWMA: f64 = 0.3;

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + EWMA * (new - o)))
}

impl DirtyKeys {
    pub fn new(max_keys: usize) -> Self {
        Self {
            all: false,
            wake: false,
            set: BTreeSet::new(),
            max_keys,
            per_key: None,
            full: None,
        }
    }

    /// Everything is dirty.
    pub fn add_all(&mut self) {
        self.all = true;
        self.wake = false;
        self.set.clear();
    }

    /// A wake-up without keys: the view's buffer holds them (or, for a view without
    /// one, everything is dirty: decided by the refresh, which knows the view's config).
    pub fn add_wake(&mut self) {
        if !self.all {
            self.wake = true;
        }
    }

    /// Adds keys; past `max_keys` distinct keys, everything is dirty.
    pub fn add(&mut self, keys: Vec<Key>) {
        if self.all {
            return;
        }
        self.set.extend(keys);
        if self.set.len() > self.max_keys {
            self.add_all();
        }
    }

    /// Applies a parsed payload.
    pub fn apply(&mut self, p: Payload) {
        match p {
            Payload::Keys(k) => self.add(k),
            Payload::Wake => self.add_wake(),
            Payload::All | Payload::Malformed(_) => self.add_all(),
        }
    }

    /// What a refresh starting now recomputes (everything when `full`, the refresh's
    /// reason asks for it, or when the keys would take longer than everything, as far
    /// as the refreshes so far tell); the set starts empty for the next one. Until a
    /// time per key has been measured, the keys are refreshed only if the planner
    /// agrees they cost less than everything ([`Work::KeysIfCheaper`]).
    pub fn take(&mut self, full: bool) -> Work {
        let costly = matches!((self.per_key, self.full), (Some(k), Some(f)) if k * self.set.len() as f64 > f);
        let all = std::mem::take(&mut self.all) || full || costly;
        let wake = std::mem::take(&mut self.wake);
        let set = std::mem::take(&mut self.set);
        if all {
            Work::All
        } else if wake {
            Work::Wake {
                keys: set.into_iter().collect(),
                per_key: self.per_key,
                full: self.full,
            }
        } else if self.per_key.is_none() && !set.is_empty() {
            Work::KeysIfCheaper(set.into_iter().collect(), self.full)
        } else {
            Work::Keys(set.into_iter().collect())
        }
    }

    /// A refresh committed after `seconds`, having recomputed `keys` groups one by
    /// one, or everything (`None`).
    pub fn timed(&mut self, keys: Option<usize>, seconds: f64) {
        match keys {
            None => self.full = ewma(self.full, seconds),
            Some(0) => {}
            Some(n) => self.per_key = ewma(self.per_key, seconds / n as f64),
        }
    }

    /// A refresh of `work` that did not commit after `seconds` gives its work back,
    /// and teaches the estimates that it costs at least that much (a refresh of many
    /// keys that ran into `statement_timeout` must not be tried the same way again).
    pub fn failed(&mut self, work: &Work, seconds: f64) {
        if let Work::Wake { .. } = work {
            // How many keys its buffer held is not known here: nothing to learn.
            self.restore(work);
            return;
        }
        let (estimate, n) = match work.keys() {
            None => (&mut self.full, 1),
            Some(k) => (&mut self.per_key, k.len().max(1)),
        };
        let lower_bound = seconds / n as f64;
        if estimate.is_none_or(|e| lower_bound > e) {
            *estimate = ewma(*estimate, lower_bound);
        }
        self.restore(work);
    }

    /// A refresh that did not commit gives its work back.
    pub fn restore(&mut self, work: &Work) {
        match work.keys() {
            None => self.add_all(),
            Some(k) => self.add(k.to_vec()),
        }
        if let Work::Wake { .. } = work {
            self.add_wake();
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && !self.all && !self.wake
    }

    /// A new `max_keys` (reload).
    pub fn set_max(&mut self, max_keys: usize) {
        self.max_keys = max_keys;
        self.add(Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &[&str]) -> Key {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn payloads() {
        assert_eq!(parse("", 2), Payload::Wake);
        assert_eq!(parse("  ", 1), Payload::Wake);
        assert_eq!(parse(" * ", 2), Payload::All);
        assert_eq!(parse("\"*\"", 1), Payload::All);
        assert_eq!(
            parse(r#"[["a","b"],["c","d"]]"#, 2),
            Payload::Keys(vec![k(&["a", "b"]), k(&["c", "d"])])
        );
        assert_eq!(
            parse("[[3],[4]]", 1),
            Payload::Keys(vec![k(&["3"]), k(&["4"])])
        );
        assert_eq!(
            parse("[3, \"x\"]", 1),
            Payload::Keys(vec![k(&["3"]), k(&["x"])])
        );
        assert_eq!(parse("[]", 1), Payload::Keys(vec![]));
        assert!(matches!(parse("nope", 1), Payload::Malformed("not JSON")));
        assert!(matches!(parse("{\"a\":1}", 1), Payload::Malformed(_)));
        assert!(matches!(parse("[[1,2]]", 1), Payload::Malformed(_)));
        assert!(matches!(parse("[[1]]", 2), Payload::Malformed(_)));
        assert!(matches!(parse("[3]", 2), Payload::Malformed(_)));
        assert!(matches!(parse("[[null]]", 1), Payload::Malformed(_)));
        assert!(matches!(parse("[[true]]", 1), Payload::Malformed(_)));
        assert!(matches!(parse("[[[1]]]", 1), Payload::Malformed(_)));
        assert!(matches!(parse("[\"a\\u0000b\"]", 1), Payload::Malformed(_)));
        let big = format!("[{}]", vec!["1"; 5000].join(","));
        assert!(matches!(parse(&big, 1), Payload::Malformed(_)));
        // SQL in a string is a value like any other: it is bound, never spliced.
        assert_eq!(
            parse(r#"[["'); DROP TABLE x; --"]]"#, 1),
            Payload::Keys(vec![k(&["'); DROP TABLE x; --"])])
        );
    }

    #[test]
    fn keys_coalesce_overflow_and_come_back_after_a_failure() {
        let mut d = DirtyKeys::new(3);
        d.timed(Some(1), 0.001); // a time per key is known: keys are taken as they are
        assert!(d.is_empty());
        d.add(vec![k(&["1"]), k(&["2"]), k(&["1"])]);
        assert_eq!(d.len(), 2);
        let w = d.take(false);
        assert_eq!(w, Work::Keys(vec![k(&["1"]), k(&["2"])]));
        assert!(d.is_empty());
        d.add(vec![k(&["3"])]);
        d.restore(&w);
        assert_eq!(
            d.take(false),
            Work::Keys(vec![k(&["1"]), k(&["2"]), k(&["3"])])
        );
        d.add(vec![k(&["1"]), k(&["2"]), k(&["3"]), k(&["4"])]);
        assert_eq!(d.take(false), Work::All, "more than max_keys");
        d.add(vec![k(&["1"])]);
        assert_eq!(d.take(true), Work::All, "a full reason wins");
        assert!(d.is_empty());
        d.apply(Payload::Malformed("x"));
        d.add(vec![k(&["1"])]);
        assert_eq!(d.take(false), Work::All);
        d.restore(&Work::All);
        assert_eq!(d.take(false), Work::All);
    }

    #[test]
    fn a_wake_up_carries_its_keys_and_the_estimates_and_comes_back_after_a_failure() {
        let mut d = DirtyKeys::new(3);
        d.apply(parse("", 1));
        assert!(!d.is_empty());
        d.add(vec![k(&["1"])]);
        let w = d.take(false);
        assert_eq!(
            w,
            Work::Wake {
                keys: vec![k(&["1"])],
                per_key: None,
                full: None
            }
        );
        assert_eq!(w.keys(), Some(&[k(&["1"])][..]));
        assert!(d.is_empty());
        // A failure gives back the keys and the wake-up, and teaches nothing.
        d.failed(&w, 30.0);
        assert_eq!(d.take(false), w);
        d.timed(None, 0.5);
        d.apply(Payload::Wake);
        assert!(matches!(d.take(false), Work::Wake { keys, full: Some(_), .. } if keys.is_empty()));
        // "*" and a full reason still mean everything.
        d.apply(Payload::Wake);
        d.apply(parse("*", 1));
        assert_eq!(d.take(false), Work::All);
        d.apply(Payload::Wake);
        assert_eq!(d.take(true), Work::All);
        d.apply(Payload::All);
        d.apply(Payload::Wake);
        assert_eq!(d.take(false), Work::All);
    }

    #[test]
    fn keys_that_would_cost_more_than_everything_recompute_everything() {
        let mut d = DirtyKeys::new(1000);
        d.add(vec![k(&["1"]), k(&["2"]), k(&["3"])]);
        assert!(
            matches!(d.take(false), Work::KeysIfCheaper(v, None) if v.len() == 3),
            "nothing measured yet: the planner decides"
        );
        d.timed(None, 0.5);
        d.timed(Some(2), 0.02);
        // 0.01 s per key against 0.5 s for everything: 49 keys are cheaper, 51 are not.
        d.add((0..49).map(|i| k(&[&i.to_string()])).collect());
        assert!(matches!(d.take(false), Work::Keys(v) if v.len() == 49));
        d.add((0..51).map(|i| k(&[&i.to_string()])).collect());
        assert_eq!(d.take(false), Work::All);
    }

    #[test]
    fn a_failed_refresh_raises_the_estimates_and_gives_its_work_back() {
        let mut d = DirtyKeys::new(1000);
        d.timed(None, 0.5);
        d.timed(Some(10), 0.01);
        // 70 keys that ran 15 s into a timeout: at least 0.21 s a key, so 70 keys are
        // now dearer than everything.
        let keys: Vec<Key> = (0..70).map(|i| k(&[&i.to_string()])).collect();
        d.failed(&Work::Keys(keys.clone()), 15.0);
        assert_eq!(d.len(), 70, "the keys come back");
        assert_eq!(d.take(false), Work::All);
        // A failure that ended sooner than the estimate (a lock timeout at once) does
        // not make keys look cheaper than they are.
        let before = d.per_key;
        d.failed(&Work::Keys(keys), 0.0);
        assert_eq!(d.per_key, before);
        d.failed(&Work::All, 0.1);
        assert_eq!(d.take(false), Work::All);
    }
}
