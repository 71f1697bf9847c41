//! The refresh connections: a small pool (at most `max_concurrent_refreshes`, which the
//! coalescer enforces), one refresh per connection at a time, and server-side
//! cancellation of whatever is still running at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{CancelToken, Client};

use crate::config::ViewConfig;
use crate::engine::arming::Arming;
use crate::pg::connect::ConnectInfo;
use crate::pg::keyed::Work;
use crate::pg::refresh::{refresh_recorded, FailureClass, HistoryRow, RefreshError, Refreshed};

/// Shared by every refresh task.
pub struct Refresher {
    info: Mutex<ConnectInfo>,
    idle: Mutex<Vec<Client>>,
    inflight: Mutex<HashMap<u64, CancelToken>>,
    next_id: AtomicU64,
    arming: Arc<Arming>,
}

impl Refresher {
    pub fn new(info: ConnectInfo, arming: Arc<Arming>) -> Arc<Self> {
        Arc::new(Self {
            info: Mutex::new(info),
            idle: Mutex::new(Vec::new()),
            inflight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            arming,
        })
    }

    /// The channel locks refreshes re-arm (see `arming`).
    pub fn arming(&self) -> &Arc<Arming> {
        &self.arming
    }

    fn info(&self) -> ConnectInfo {
        self.info.lock().expect("not poisoned").clone()
    }

    /// A connection from the pool, or a new one.
    async fn checkout(&self) -> Result<Client, RefreshError> {
        loop {
            let c = self.idle.lock().expect("not poisoned").pop();
            match c {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        self.info().connect().await.map_err(|e| RefreshError {
            class: FailureClass::Transient,
            code: None,
            message: e.to_string(),
            detail: None,
            hint: Some("cannot reach the database; refreshd retries with backoff"),
            duration: Duration::ZERO,
            connection_broken: false,
        })
    }

    /// Refreshes one view on a pooled connection (a keyed view: `work`, or everything
    /// without it); `event` sends `refreshd_refreshed` in the refresh's transaction.
    pub async fn refresh(
        &self,
        view: &ViewConfig,
        work: Option<&Work>,
        event: bool,
        history: Option<HistoryRow<'_>>,
    ) -> Result<Refreshed, RefreshError> {
        // Before the refresh's snapshot: every write that skipped its notification
        // while the view's channels were disarmed has committed (see `arming`).
        self.arming.arm(&view.channels).await;
        let client = self.checkout().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.inflight
            .lock()
            .expect("not poisoned")
            .insert(id, client.cancel_token());
        let result = refresh_recorded(&client, view, work, event, history).await;
        self.inflight.lock().expect("not poisoned").remove(&id);
        // A connection that failed without a server error (lost, or no answer), or
        // could not roll back, is not reused, even if the socket looks open.
        let suspect = matches!(&result, Err(e) if e.connection_broken);
        if !client.is_closed() && !suspect {
            self.idle.lock().expect("not poisoned").push(client);
        }
        result
    }

    /// Asks the server to cancel every refresh still running. Returns how many.
    pub async fn cancel_all(&self) -> usize {
        let tokens: Vec<CancelToken> = self
            .inflight
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        let tls = self.info().tls();
        for t in &tokens {
            if let Err(e) = t.cancel_query(tls.clone()).await {
                tracing::warn!(error = %e, "could not send a cancel request");
            }
        }
        tokens.len()
    }

    /// Drops idle connections (on reload, or when leadership is lost).
    pub fn close_idle(&self) {
        self.idle.lock().expect("not poisoned").clear();
    }
}
