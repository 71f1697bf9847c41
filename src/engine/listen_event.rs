//! What the listener reports to the core, and its probe timing: a leaf, so that the
//! listener, its session driver (`session.rs`) and the arming (`arming.rs`) share it
//! without depending on one another.

use std::collections::BTreeSet;
use std::time::Duration;

/// What the listener reports to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerEvent {
    /// A notification on a LISTENed channel.
    Notification {
        channel: String,
        payload: String,
        /// The sending backend's pid.
        pid: i32,
    },
    /// This replica now leads and LISTENs; every view must be caught up.
    /// `first` is true for the first time in the process's life.
    Leading { first: bool },
    /// Connected, but another replica leads.
    Standby,
    /// The channels now LISTENed (after the initial LISTEN and after every change).
    Listening(BTreeSet<String>),
    /// The connection (and with it leadership) is gone.
    Lost,
    /// A control-channel payload from a sender the gate allowed.
    Control(String),
}

/// How often the idle listener proves its connection works (and samples the queue).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long that probe may take before the connection is declared dead.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);
