//! Functions whose value is not fixed by their arguments, in one place: `derive`
//! refuses a key computed with one of them, `delta` a definition calling one.

/// Functions whose value changes with time or from call to call.
const CHANGING: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "nextval",
    "currval",
    "lastval",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "txid_current",
    "pg_backend_pid",
    "age",
];

/// `CURRENT_DATE` and the other time value functions, as `parse` names them. The delta
/// check refuses them by their node kind (SQLValueFunction) instead.
const TIME_VALUES: &[&str] = &[
    "current_date",
    "current_time",
    "current_time_n",
    "current_timestamp",
    "current_timestamp_n",
    "localtime",
    "localtime_n",
    "localtimestamp",
    "localtimestamp_n",
];

/// Functions whose value depends on the session (refused by the delta check only).
const SESSION: &[&str] = &["current_setting", "current_user", "session_user"];

/// A key computed with this function cannot be derived from a row.
pub(super) fn changes_under_key(name: &str) -> bool {
    CHANGING.contains(&name) || TIME_VALUES.contains(&name)
}

/// A delta computed now with this function would not match the rows counted before.
pub(super) fn changes_under_delta(name: &str) -> bool {
    CHANGING.contains(&name) || SESSION.contains(&name)
}
