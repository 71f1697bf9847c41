//! Owning tasks: every task refreshd spawns is awaited or drained by something (no
//! fire-and-forget), and a panic in a long-lived loop is seen: logged with its message,
//! counted in `refreshd_task_panics_total{reason}`, and the loop started again.
//!
//! Also the test-only fault hook ([`fault`]): with `REFRESHD_TEST_PANIC` set when the
//! daemon starts, the named task panics once, so that the tests can show what happens.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::serve::metrics::Metrics;

/// The receiving side is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A sender that wraps each message into another channel's type on the way in: what a
/// task that only re-wraps messages would do, without the task.
pub struct Mapped<T> {
    send: Arc<dyn Fn(T) -> Result<(), Closed> + Send + Sync>,
}

impl<T> Clone for Mapped<T> {
    fn clone(&self) -> Self {
        Self {
            send: self.send.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Mapped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mapped")
    }
}

impl<T: 'static> Mapped<T> {
    /// Messages sent here arrive on `tx`'s channel as `wrap(message)`.
    pub fn new<U: Send + 'static>(tx: mpsc::UnboundedSender<U>, wrap: fn(T) -> U) -> Self {
        Self {
            send: Arc::new(move |m| tx.send(wrap(m)).map_err(|_| Closed)),
        }
    }

    /// A sender whose messages go nowhere (for a component started on its own).
    pub fn discard() -> Self {
        Self {
            send: Arc::new(|_| Ok(())),
        }
    }

    pub fn send(&self, message: T) -> Result<(), Closed> {
        (self.send)(message)
    }
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// A task's `JoinError` as text for a log line: the panic's message, or "cancelled".
pub fn join_error_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => panic_message(payload.as_ref()),
        Err(_) => "cancelled".to_string(),
    }
}

/// Counts a panic of `task` and logs it at error level.
///
/// Logged before it is counted: whoever sees the counter move (an alert, a test) finds
/// the line already written.
pub fn panicked(metrics: &Metrics, task: &'static str, message: &str) {
    tracing::error!(task, panic = %message, "a refreshd task panicked (a bug in refreshd: please report it)");
    metrics.task_panics.with_label_values(&[task]).inc();
}

/// How long a loop must have run before a panic starts its backoff over.
const STABLE: Duration = Duration::from_secs(60);

/// Runs the loop `make` builds until it returns (or `stop` is cancelled). A panic is
/// logged and counted (as `task`), `on_panic` runs, and after a backoff with jitter
/// (250 ms doubling up to 30 s, reset once a run lasted a minute) a new loop is built
/// and run. The loop runs inside this future: whoever owns this future owns the loop.
pub async fn supervise<F, Fut>(
    task: &'static str,
    metrics: Metrics,
    stop: CancellationToken,
    mut make: F,
    on_panic: impl Fn(),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = crate::pg::connect::Backoff::default();
    loop {
        let started = std::time::Instant::now();
        // AssertUnwindSafe: what a loop shares with the rest (metrics, health, channels)
        // is atomics and channels, consistent after any panic.
        let Err(payload) = AssertUnwindSafe(make()).catch_unwind().await else {
            return;
        };
        panicked(&metrics, task, &panic_message(payload.as_ref()));
        on_panic();
        if started.elapsed() >= STABLE {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            task,
            restart_in_ms = delay.as_millis() as u64,
            "restarting the task"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The environment variable of the test-only fault hook.
pub const FAULT_ENV: &str = "REFRESHD_TEST_PANIC";

/// The tasks the fault hook can make panic.
pub const FAULTS: [&str; 5] = [
    "listener",
    "listener_driver",
    "detector",
    "http",
    "http_accept",
];

static FAULT: OnceLock<Option<&'static str>> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

/// Reads [`FAULT_ENV`] (once: later calls, and later changes of the environment, do
/// nothing). An unknown value is refused, so that a typo in a test cannot pass silently.
pub fn arm_fault_hook() -> Result<(), String> {
    let value = std::env::var(FAULT_ENV).ok();
    let armed = match value.as_deref() {
        None | Some("") => None,
        Some(v) => Some(
            *FAULTS
                .iter()
                .find(|f| **f == v)
                .ok_or_else(|| format!("{FAULT_ENV}={v}: not one of {}", FAULTS.join(", ")))?,
        ),
    };
    if FAULT.set(armed).is_ok() {
        if let Some(f) = armed {
            tracing::warn!(
                task = f,
                "{FAULT_ENV} is set: test fault hook armed, this task will panic once"
            );
        }
    }
    Ok(())
}

/// The test-only fault hook: panics the first time it is reached at the point named
/// by `REFRESHD_TEST_PANIC` (see [`arm_fault_hook`]); does nothing otherwise.
pub fn fault(point: &'static str) {
    if FAULT.get().copied().flatten() == Some(point) && !FIRED.swap(true, Ordering::SeqCst) {
        panic!("test fault hook: {FAULT_ENV}={point}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_wraps_and_reports_a_closed_channel() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<u32>>();
        let m = Mapped::new(tx, Some);
        m.clone().send(7).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Some(7));
        drop(rx);
        assert_eq!(m.send(8), Err(Closed));
    }

    #[test]
    fn panic_messages() {
        let p = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "plain");
        let n = 3;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "formatted 3");
    }

    #[tokio::test]
    async fn supervise_restarts_after_a_panic_and_ends_with_the_loop() {
        let metrics = Metrics::new();
        let runs = std::sync::atomic::AtomicU32::new(0);
        let hooks = std::sync::atomic::AtomicU32::new(0);
        supervise(
            "detector",
            metrics.clone(),
            CancellationToken::new(),
            || {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("run {n}");
                    }
                }
            },
            || {
                hooks.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(hooks.load(Ordering::SeqCst), 2);
        assert_eq!(
            metrics.task_panics.with_label_values(&["detector"]).get(),
            2
        );
    }
}
