//! Wake-ups that cost writers almost nothing (SPEC "Change capture").
//!
//! A `NOTIFY` per writing transaction halves writers: PostgreSQL serializes every
//! notifying transaction's commit. But refreshd needs one notification per refresh,
//! not one per write: once a view is due, further writes only have to be *seen* by
//! the refresh that is already coming. So refreshd's capture function
//! (`refreshd.notify_changed()`, see `pg::capture`) notifies only while refreshd
//! *arms* the channel, and otherwise lets the writer through with a shared lock:
//!
//! - **Armed**: refreshd's LISTEN session holds the channel's advisory locks
//!   (`ARM_CLASS + slot`, `hashtext(channel)`, all [`ARM_SLOTS`] slots) exclusively. A
//!   writer's `pg_try_advisory_xact_lock_shared` on its backend's slot fails, and it
//!   notifies.
//! - **Disarmed**: when that notification arrives, refreshd releases the lock *before*
//!   it marks the channel's views dirty. Writers now get the shared lock instead (held
//!   to their commit) and do not notify.
//! - **Re-armed before every refresh**: a refresh of a view first takes the lock on
//!   each of the view's channels again. Taking it waits for every writer that got the
//!   shared lock, so every write that skipped its notification has committed before
//!   the refresh's snapshot is taken. New writers queue behind refreshd's request (a
//!   lock request conflicts with waiting requests too), fail their try, and notify.
//!
//! - **Writes flowing**: when re-arming finds a slot held by a writer (a write that
//!   skipped its notification is still open: writes are flowing), refreshd lets go of
//!   the slots it took at once, waits for each busy slot in turn (taking and releasing
//!   it: a barrier, after which every writer that held it has committed), and leaves
//!   the channel disarmed for the refresh that follows: writers during that refresh
//!   skip their notification too. Instead, the channel's views are made due again at
//!   once (a notification of refreshd's own, [`Armed::Flowing`]), so the next refresh
//!   re-arms, and so on; the first re-arm that finds no writer in flight keeps the
//!   slots, and writers notify again. Under steady writes no writer pays for a
//!   notification then, where before every writer between the re-arm and the first
//!   notification's arrival did (12-23 notifying commits a refresh with `debounce = 0`,
//!   BENCHMARKS.md). A busy slot that stays busy past `ARM_LOCK_TIMEOUT` falls back
//!   to the case below.
//!
//! - **Re-armed while the views wait**: a notification makes a view due at `last
//!   notification + debounce`, and `debounce` is the quiet period after the *last*
//!   one (SPEC "Semantics"). Disarmed until the refresh, later writes sent none, so a
//!   burst of writes closer together than `debounce` was refreshed every `debounce`
//!   instead of once after it (a conformance review, 2026-12-05). So a channel
//!   disarmed for half the least `debounce` of its views ([`Arming::set_quiet`]) is
//!   re-armed then, as before a refresh: the next write notifies again and postpones
//!   the views (up to `max_delay`); writers in flight make it a flowing re-arm, which
//!   makes the views due again just the same. Writers pay at most one notification per
//!   channel per half `debounce` for it (one a second at the default 2 s).
//!
//! Why no change is lost: a writer that skips its notification does so while the
//! channel is disarmed. A channel is disarmed only between a notification's arrival
//! (which made every view on the channel due, *after* the release) or a flowing
//! re-arm (which made them due again, after its barrier) and the next re-arm, which
//! every one of those views' next refreshes performs first and which waits for that
//! writer's commit. If re-arming cannot get the lock within
//! `ARM_LOCK_TIMEOUT` (a long writing transaction), the refresh goes ahead, refreshd
//! keeps trying, and when the lock is finally taken the channel's views are made due
//! again; until then they are made due every [`PENDING_DUE_EVERY`] too, since every
//! other writer on that slot gets it shared and skips its notification meanwhile. When the LISTEN session ends, its locks go with it (every channel disarmed);
//! a new leader refreshes every view, re-arming first. While no refreshd runs,
//! writers never notify at all.
//!
//! Two refreshd deployments (different `ha.lock_name`) listening on one channel take
//! turns at the lock; while either holds it or waits for it, writers notify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::types::Type;

use crate::engine::listen_event::ListenerEvent;
use crate::engine::tasks::Mapped;
use crate::pg::connect::error_chain;

/// The advisory lock class of refreshd's channel locks (the two-key form's first key;
/// the second is `hashtext(channel)`). Fixed forever: the capture function installed
/// in users' databases uses it. Distinct from the leader lock (a one-key lock).
pub const ARM_CLASS: i32 = 0x7266_7368; // "rfsh"

/// How long re-arming waits for writers' shared locks before the refresh goes ahead
/// without it (refreshd then keeps trying, and makes the views due once it has it).
pub const ARM_LOCK_TIMEOUT: &str = "200ms";

/// While a channel cannot be re-armed (a long transaction holds a slot), how often its
/// views are made due all the same ([`Arming::retry_pending`]).
pub const PENDING_DUE_EVERY: Duration = Duration::from_secs(5);

/// How long refreshd waits for an answer to one lock statement.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(5);

type Param<'a> = (&'a (dyn tokio_postgres::types::ToSql + Sync), Type);

/// Each channel's lock is split into this many slots, classes `ARM_CLASS` to
/// `ARM_CLASS + 15`: a writer takes the one of its backend (`pg_backend_pid() % 16`),
/// refreshd takes all of them. One lock for every writer made them queue on one lock
/// table entry (measured: 0.84x of no trigger at 8 writers against 0.92x split, see
/// BENCHMARKS.md, "Capture: what writers pay").
pub const ARM_SLOTS: i32 = 16;
const ALL_SLOTS: u16 = u16::MAX;

/// The slot numbers in a mask.
fn slots_in(mask: u16) -> Vec<i32> {
    (0..ARM_SLOTS).filter(|s| mask & (1 << s) != 0).collect()
}

/// Takes the slots `$3` of channel `$2` that are free, without waiting; returns them.
const TRY_SQL: &str = "SELECT s FROM unnest($3::int4[]) s WHERE pg_catalog.pg_try_advisory_lock($1 + s, pg_catalog.hashtext($2))";
/// Takes the slots `$3`, waiting (up to the session's `lock_timeout`) for their writers.
const LOCK_SQL: &str =
    "SELECT pg_catalog.pg_advisory_lock($1 + s, pg_catalog.hashtext($2)) FROM unnest($3::int4[]) s";
/// Releases the slots `$3`.
const UNLOCK_SQL: &str = "SELECT pg_catalog.pg_advisory_unlock($1 + s, pg_catalog.hashtext($2)) FROM unnest($3::int4[]) s";
/// Takes the slots `$3` as [`LOCK_SQL`] does, then releases them (a barrier: every
/// writer that held them has committed). The subquery (OFFSET 0 keeps it one) takes
/// them first; a statement cut short by the timeout leaves none held.
const BARRIER_SQL: &str = "SELECT pg_catalog.pg_advisory_unlock($1 + l.s, pg_catalog.hashtext($2)) FROM (SELECT s, pg_catalog.pg_advisory_lock($1 + s, pg_catalog.hashtext($2)) FROM unnest($3::int4[]) s OFFSET 0) AS l";

/// Runs one of the slot statements above for `channel`'s `slots`, within
/// [`STATEMENT_DEADLINE`]; `Err(None)` when no answer came.
async fn on_slots(
    client: &tokio_postgres::Client,
    sql: &str,
    channel: &str,
    slots: &[i32],
) -> Result<Vec<tokio_postgres::Row>, Option<tokio_postgres::Error>> {
    let params: [Param; 3] = [
        (&ARM_CLASS, Type::INT4),
        (&channel, Type::TEXT),
        (&slots, Type::INT4_ARRAY),
    ];
    match tokio::time::timeout(STATEMENT_DEADLINE, client.query_typed(sql, &params)).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
}

/// [`TRY_SQL`]: the slots of `slots` taken.
async fn try_slots(
    client: &tokio_postgres::Client,
    channel: &str,
    slots: &[i32],
) -> Result<Vec<i32>, Option<tokio_postgres::Error>> {
    on_slots(client, TRY_SQL, channel, slots)
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
}

/// The channel locks of the current LISTEN session.
pub struct Arming {
    /// SQL on the session, one statement at a time (held across its round trip).
    session: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    state: Mutex<State>,
    /// Where the leading session's notifications go: a flowing re-arm makes the
    /// channel's views due again through it.
    wake: Mutex<Option<Mapped<ListenerEvent>>>,
}

#[derive(Default)]
struct State {
    /// Bumped at each attach and detach: a statement's result is applied only to the
    /// session it ran on.
    generation: u64,
    attached: bool,
    /// The slots held, per channel (all of them: armed).
    armed: HashMap<String, u16>,
    /// Re-arming timed out: try again; make the views due once armed, and every
    /// [`PENDING_DUE_EVERY`] until then (the value: when they were last made due).
    pending: HashMap<String, std::time::Instant>,
    /// Calls of [`Arming::retry_pending`]: where its tries start.
    retries: usize,
    /// Channels disarmed (by a notification, or a flowing re-arm) and when: re-armed
    /// after their quiet delay ([`Arming::due_quiet`]).
    disarmed: HashMap<String, std::time::Instant>,
    /// Per channel, how long after it was disarmed it is re-armed (half the least
    /// `debounce` of its views; none where that would postpone nothing).
    quiet: HashMap<String, Duration>,
}

/// What [`Arming::arm`] did for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Armed {
    /// Held (already, or now): every write that skipped its notification committed.
    Yes,
    /// Writers were in flight: every one of them has committed (a barrier), and the
    /// channel is left disarmed; its views are due again (see the module doc).
    Flowing,
    /// Writers still hold it (or the statement failed): the refresh goes ahead and the
    /// channel is retried.
    Pending,
    /// No leading LISTEN session: nothing to arm (a new one refreshes everything).
    NoSession,
}

impl Default for Arming {
    fn default() -> Self {
        Self::new()
    }
}

impl Arming {
    pub fn new() -> Self {
        Self {
            session: tokio::sync::Mutex::new(None),
            state: Mutex::new(State::default()),
            wake: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// A new leading LISTEN session (holding no channel lock yet), whose notifications
    /// go to `wake`.
    pub async fn attach(
        &self,
        client: Arc<tokio_postgres::Client>,
        wake: Mapped<ListenerEvent>,
    ) -> Result<(), String> {
        let set = client.query_typed(
            "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
            &[(&ARM_LOCK_TIMEOUT, Type::TEXT)],
        );
        match tokio::time::timeout(STATEMENT_DEADLINE, set).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(error_chain(&e)),
            Err(_) => return Err("setting lock_timeout got no answer".into()),
        }
        let mut session = self.session.lock().await;
        *session = Some(client);
        *self.wake.lock().expect("not poisoned") = Some(wake);
        let mut st = self.state();
        st.generation += 1;
        st.attached = true;
        st.armed.clear();
        st.pending.clear();
        st.disarmed.clear();
        Ok(())
    }

    /// The session ended (its locks with it).
    pub async fn detach(&self) {
        let mut session = self.session.lock().await;
        *session = None;
        let mut st = self.state();
        st.generation += 1;
        st.attached = false;
        st.armed.clear();
        st.pending.clear();
        st.disarmed.clear();
    }

    /// The session is gone, from a context that cannot wait (a panicked listener):
    /// nothing is armed and nothing is tried until the next [`Arming::attach`].
    pub fn lost(&self) {
        let mut st = self.state();
        st.generation += 1;
        st.attached = false;
        st.armed.clear();
        st.pending.clear();
        st.disarmed.clear();
    }

    /// Whether a notification on `channel` must wait for [`Arming::disarm`] before it
    /// is passed on.
    pub fn is_armed(&self, channel: &str) -> bool {
        self.state().armed.contains_key(channel)
    }

    pub fn has_pending(&self) -> bool {
        !self.state().pending.is_empty()
    }

    /// Sets, per channel, how long after being disarmed it is re-armed (see the module
    /// doc, "Re-armed while the views wait"): half the least `debounce` of the views on
    /// it whose `debounce` is shorter than their `max_delay` (no re-arm postpones
    /// anything otherwise), at least 50 ms.
    pub fn set_quiet(&self, views: &[crate::config::ViewConfig]) {
        let mut quiet: HashMap<String, Duration> = HashMap::new();
        for v in views {
            if v.debounce.is_zero() || v.debounce >= v.max_delay {
                continue;
            }
            let delay = (v.debounce / 2).max(Duration::from_millis(50));
            for ch in &v.channels {
                let d = quiet.entry(ch.clone()).or_insert(delay);
                *d = (*d).min(delay);
            }
        }
        let mut st = self.state();
        st.disarmed.retain(|c, _| quiet.contains_key(c));
        st.quiet = quiet;
    }

    /// Whether some channel waits to be re-armed after its quiet delay. Asked at every
    /// turn of the listener's loop: only channels with a delay are recorded as
    /// disarmed, so this is a length test.
    pub fn has_quiet(&self) -> bool {
        !self.state().disarmed.is_empty()
    }

    /// Records `channel` disarmed now, if it has a quiet delay.
    fn note_disarmed(st: &mut State, channel: &str) {
        if st.quiet.contains_key(channel) {
            st.disarmed
                .insert(channel.to_string(), std::time::Instant::now());
        }
    }

    /// The channels whose quiet delay has passed since they were disarmed (and that
    /// are not retried as pending): taken, to be armed ([`Arming::arm`]).
    pub fn due_quiet(&self, now: std::time::Instant) -> Vec<String> {
        let mut st = self.state();
        let due: Vec<String> = st
            .disarmed
            .iter()
            .filter(|(c, at)| {
                !st.pending.contains_key(*c)
                    && st
                        .quiet
                        .get(*c)
                        .is_some_and(|d| now.duration_since(**at) >= *d)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for c in &due {
            st.disarmed.remove(c);
        }
        due
    }

    /// Releases `channel`'s locks, so that writers stop notifying it until the next
    /// refresh re-arms it. Call it before passing the notification on.
    pub async fn disarm(&self, channel: &str) {
        let session = self.session.lock().await;
        let Some(client) = session.as_ref() else {
            return;
        };
        let held = {
            let mut st = self.state();
            let Some(held) = st.armed.remove(channel) else {
                return;
            };
            Self::note_disarmed(&mut st, channel);
            held
        };
        match on_slots(client, UNLOCK_SQL, channel, &slots_in(held)).await {
            Ok(_) => {}
            // Still held, perhaps: writers keep notifying, which is safe.
            Err(Some(e)) => {
                tracing::debug!(%channel, error = %error_chain(&e), "releasing a channel's locks failed")
            }
            Err(None) => tracing::debug!(%channel, "releasing a channel's locks got no answer"),
        }
    }

    /// Arms every channel of a view about to be refreshed (see the module doc). Returns
    /// the least of the channels' outcomes.
    pub async fn arm(&self, channels: &[String]) -> Armed {
        let mut outcome = Armed::Yes;
        for ch in channels {
            match self.arm_one(ch).await {
                Armed::NoSession => return Armed::NoSession,
                Armed::Pending => outcome = Armed::Pending,
                Armed::Flowing => self.wake(ch),
                Armed::Yes => {}
            }
        }
        outcome
    }

    /// Makes `channel`'s views due again, as a notification on it would (a flowing
    /// re-arm left it disarmed: the writes after this refresh's snapshot need the next).
    fn wake(&self, channel: &str) {
        if let Some(w) = self.wake.lock().expect("not poisoned").as_ref() {
            let _ = w.send(ListenerEvent::Notification {
                channel: channel.to_string(),
                payload: String::new(),
                pid: 0,
            });
        }
    }

    /// Takes every slot of `channel` not held yet: first all at once without waiting,
    /// then one by one, each waiting up to `ARM_LOCK_TIMEOUT` for the writers on it.
    async fn arm_one(&self, channel: &str) -> Armed {
        let session = self.session.lock().await;
        let Some(client) = session.as_ref() else {
            return Armed::NoSession;
        };
        let (generation, held) = {
            let st = self.state();
            if !st.attached {
                return Armed::NoSession;
            }
            let held = st.armed.get(channel).copied().unwrap_or(0);
            if held == ALL_SLOTS {
                return Armed::Yes;
            }
            (st.generation, held)
        };
        let missing = slots_in(!held & ALL_SLOTS);
        let taken = match try_slots(client, channel, &missing).await {
            Ok(taken) => taken,
            Err(e) => return self.arm_failed(generation, channel, e),
        };
        if !self.took(generation, channel, &taken) {
            return Armed::NoSession;
        }
        let busy: Vec<i32> = missing
            .iter()
            .copied()
            .filter(|s| !taken.contains(s))
            .collect();
        if held == 0 && !busy.is_empty() {
            return self.flowing(client, generation, channel, busy).await;
        }
        for slot in busy {
            match on_slots(client, LOCK_SQL, channel, &[slot]).await {
                Ok(_) => {
                    if !self.took(generation, channel, &[slot]) {
                        return Armed::NoSession;
                    }
                }
                Err(e) => return self.arm_failed(generation, channel, e),
            }
        }
        let mut st = self.state();
        if st.generation != generation {
            return Armed::NoSession;
        }
        st.pending.remove(channel);
        st.disarmed.remove(channel);
        Armed::Yes
    }

    /// Re-arming found `busy` slots held by writers (see the module doc, "Writes
    /// flowing"): lets go of the slots just taken, then takes and releases each busy
    /// one in turn (waiting up to `ARM_LOCK_TIMEOUT` for its writers). `Flowing` when
    /// every writer that held one has committed; a slot still busy after the timeout
    /// falls back to holding the channel's other slots and retrying ([`Armed::Pending`]).
    async fn flowing(
        &self,
        client: &tokio_postgres::Client,
        generation: u64,
        channel: &str,
        busy: Vec<i32>,
    ) -> Armed {
        let taken = slots_in(self.state().armed.get(channel).copied().unwrap_or(0));
        if let Err(e) = on_slots(client, UNLOCK_SQL, channel, &taken).await {
            return self.arm_failed(generation, channel, e);
        }
        {
            let mut st = self.state();
            if st.generation != generation {
                return Armed::NoSession;
            }
            st.armed.remove(channel);
        }
        for slot in busy {
            let Err(failed) = on_slots(client, BARRIER_SQL, channel, &[slot]).await else {
                continue;
            };
            // A writer outlives the timeout: arm as before, and retry.
            if let Ok(taken) = try_slots(client, channel, &slots_in(ALL_SLOTS)).await {
                if !self.took(generation, channel, &taken) {
                    return Armed::NoSession;
                }
            }
            return self.arm_failed(generation, channel, failed);
        }
        let mut st = self.state();
        if st.generation != generation {
            return Armed::NoSession;
        }
        st.pending.remove(channel);
        // Left disarmed: re-armed after its quiet delay again.
        Self::note_disarmed(&mut st, channel);
        Armed::Flowing
    }

    /// Records slots taken on the session of `generation`; false if it is gone.
    fn took(&self, generation: u64, channel: &str, slots: &[i32]) -> bool {
        let mut st = self.state();
        if st.generation != generation {
            return false;
        }
        let mask = st.armed.entry(channel.to_string()).or_insert(0);
        for s in slots {
            *mask |= 1 << s;
        }
        true
    }

    fn arm_failed(
        &self,
        generation: u64,
        channel: &str,
        e: Option<tokio_postgres::Error>,
    ) -> Armed {
        if let Some(e) = e {
            if e.code() != Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                tracing::debug!(%channel, error = %error_chain(&e), "arming a channel failed");
            }
        }
        let mut st = self.state();
        if st.generation != generation {
            return Armed::NoSession;
        }
        // Kept from the first failure: each retry fails again while the writer stays.
        st.pending
            .entry(channel.to_string())
            .or_insert_with(std::time::Instant::now);
        Armed::Pending
    }

    /// Tries the channels whose re-arming timed out again; for each one armed now, a
    /// notification is passed on (its views are due: a write that skipped its
    /// notification may have committed after their refresh began). A channel still
    /// pending has its views made due every [`PENDING_DUE_EVERY`] all the same: while a
    /// long transaction holds its slot, every other writer on that slot (one backend
    /// in [`ARM_SLOTS`]) gets the shared lock too and skips its notification, and its
    /// commit would wait for the long one's end.
    /// At most about half a second per call (each channel may wait `ARM_LOCK_TIMEOUT`),
    /// so that the listener's loop keeps beating and probing.
    pub async fn retry_pending(&self, due: impl Fn(ListenerEvent)) {
        let notify = |channel: String| {
            due(ListenerEvent::Notification {
                channel,
                payload: String::new(),
                pid: 0,
            })
        };
        // Every overdue channel first, before any lock is tried: the tries below stop
        // after half a second, and a channel never reached would never be due.
        let (overdue, mut pending) = {
            let mut st = self.state();
            let mut overdue = Vec::new();
            for (ch, at) in st.pending.iter_mut() {
                if at.elapsed() >= PENDING_DUE_EVERY {
                    *at = std::time::Instant::now();
                    overdue.push(ch.clone());
                }
            }
            let mut pending: Vec<String> = st.pending.keys().cloned().collect();
            pending.sort();
            // Each call starts one channel further on, so that every channel is tried.
            st.retries = st.retries.wrapping_add(1);
            let turn = if pending.is_empty() {
                0
            } else {
                st.retries % pending.len()
            };
            pending.rotate_left(turn);
            (overdue, pending)
        };
        for ch in overdue {
            tracing::debug!(channel = %ch, "a writer still holds a slot of the channel; its views are due, as writers sharing that slot skip their notification");
            notify(ch);
        }
        let started = std::time::Instant::now();
        for ch in pending.drain(..) {
            if started.elapsed() > Duration::from_millis(500) {
                break;
            }
            if matches!(self.arm_one(&ch).await, Armed::Yes | Armed::Flowing) {
                tracing::debug!(channel = %ch, "channel armed after waiting for writers; its views are due");
                notify(ch);
            }
        }
    }
}

/// Notifications held back per channel until its lock is released (in arrival order).
#[derive(Default)]
pub struct HeldBack {
    held: HashMap<String, Vec<ListenerEvent>>,
}

impl HeldBack {
    /// Holds `event` back if its channel is being released; returns whether a release
    /// must be started (the first event held for the channel).
    pub fn hold(&mut self, channel: &str, event: ListenerEvent) -> bool {
        match self.held.get_mut(channel) {
            Some(v) => {
                v.push(event);
                false
            }
            None => {
                self.held.insert(channel.to_string(), vec![event]);
                true
            }
        }
    }

    /// Whether notifications on `channel` are being held back.
    pub fn holding(&self, channel: &str) -> bool {
        self.held.contains_key(channel)
    }

    /// The channel is released: its held notifications, in order.
    pub fn release(&mut self, channel: &str) -> Vec<ListenerEvent> {
        self.held.remove(channel).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(ch: &str, p: &str) -> ListenerEvent {
        ListenerEvent::Notification {
            channel: ch.into(),
            payload: p.into(),
            pid: 1,
        }
    }

    #[test]
    fn held_back_in_order_per_channel() {
        let mut h = HeldBack::default();
        assert!(h.hold("a", n("a", "1")));
        assert!(!h.hold("a", n("a", "2")));
        assert!(h.hold("b", n("b", "1")));
        assert!(h.holding("a"));
        assert_eq!(h.release("a"), vec![n("a", "1"), n("a", "2")]);
        assert!(!h.holding("a"));
        assert!(h.holding("b"));
        assert_eq!(h.release("a"), vec![]);
    }

    #[test]
    fn the_class_is_fixed() {
        // The capture function in users' databases names this number.
        assert_eq!(ARM_CLASS, 1_919_316_840);
        assert!(crate::pg::capture::FUNCTION_SQL
            .contains("1919316840 OPERATOR(pg_catalog.+) (pg_catalog.pg_backend_pid() OPERATOR(pg_catalog.%) 16)"));
        assert_eq!(slots_in(ALL_SLOTS).len(), ARM_SLOTS as usize);
        assert_eq!(slots_in(0b101), vec![0, 2]);
    }

    #[tokio::test]
    async fn without_a_session_nothing_is_armed() {
        let a = Arming::new();
        assert_eq!(a.arm(&["c".to_string()]).await, Armed::NoSession);
        assert!(!a.is_armed("c"));
        a.disarm("c").await;
        assert!(!a.has_pending());
    }
}
