//! Functions whose value is not fixed by their arguments, in one place: `derive`
//! refuses a key computed with one of them, `delta` a definition calling one. Only
//! PostgreSQL's own functions are known by name: a function the user defines VOLATILE or
//! STABLE is not seen here (the catalog facts carry no `provolatile` yet).

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
    "uuidv4",
    "uuidv7",
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

/// Functions whose value depends on the session that calls them: its role, its settings,
/// its connection, its transaction. A capture trigger runs in the writer's session, the
/// refresh and the delta apply (SECURITY DEFINER) in others: a value computed with one of
/// these differs between them. `current_user` and the other SQL value functions as
/// `parse` names them (`user` is `USER`, `current_catalog` is `CURRENT_CATALOG`).
const SESSION: &[&str] = &[
    "current_setting",
    "current_user",
    "current_role",
    "session_user",
    "system_user",
    "user",
    "current_schema",
    "current_schemas",
    "current_catalog",
    "current_query",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "txid_current_if_assigned",
    "pg_trigger_depth",
    "pg_my_temp_schema",
    "has_table_privilege",
    "has_column_privilege",
    "has_schema_privilege",
    "pg_has_role",
];

/// Functions whose value is the role evaluating them (REFRESH runs a materialized view's
/// query as its owner, refreshd as the role it connects as): a definition calling one
/// anywhere is refused. `current_user` and its kin as `parse` names them, and the
/// privilege inquiry functions (`has_*_privilege`).
const ROLE: &[&str] = &[
    "current_user",
    "current_role",
    "session_user",
    "system_user",
    "user",
    "pg_has_role",
    "row_security_active",
];

/// A function whose value is the role evaluating it (see [`ROLE`]).
pub(super) fn role_dependent(name: &str) -> bool {
    ROLE.contains(&name) || (name.starts_with("has_") && name.ends_with("_privilege"))
}

/// A key computed with this function cannot be derived from a row: the trigger that
/// computes it from the changed rows runs in the writer's session, at the writer's time.
pub(super) fn changes_under_key(name: &str) -> bool {
    CHANGING.contains(&name) || TIME_VALUES.contains(&name) || SESSION.contains(&name)
}

/// Functions of the clock (the time value functions are SQLValueFunction nodes).
pub(super) fn reads_the_clock(name: &str) -> bool {
    matches!(
        name,
        "now" | "clock_timestamp" | "statement_timestamp" | "transaction_timestamp" | "timeofday"
    )
}

/// PostgreSQL's aggregates a column may compute over rows (a call of one with a clock
/// value inside aggregates the clock).
pub(super) fn aggregate(name: &str) -> bool {
    matches!(
        name,
        "count"
            | "sum"
            | "avg"
            | "min"
            | "max"
            | "array_agg"
            | "string_agg"
            | "bool_and"
            | "bool_or"
            | "every"
            | "json_agg"
            | "jsonb_agg"
            | "json_object_agg"
            | "jsonb_object_agg"
            | "stddev"
            | "stddev_pop"
            | "stddev_samp"
            | "variance"
            | "var_pop"
            | "var_samp"
            | "bit_and"
            | "bit_or"
            | "percentile_cont"
            | "percentile_disc"
            | "mode"
    )
}

/// A function whose value depends on the calling session (its role, settings, connection).
pub(super) fn session_dependent(name: &str) -> bool {
    SESSION.contains(&name)
}

/// A delta computed now with this function would not match the rows counted before.
pub(super) fn changes_under_delta(name: &str) -> bool {
    CHANGING.contains(&name) || SESSION.contains(&name)
}
