//! refreshd's own change capture: the SQL that installs it (shared by `init` and by
//! `capture = "managed"` in `run`), and the catalog query that checks it.

use crate::pg::ident::{quote_ident, sql_comment, QualifiedName};
use crate::pg::refresh::quote_literal;

/// The fixed name of refreshd's capture trigger on every table it captures.
pub const TRIGGER: &str = "refreshd_notify";

/// refreshd's schema for SQL control (`refreshd.force`), as shipped in `sql/refreshd/`.
pub const CONTROL_SQL: &str = include_str!("../../sql/refreshd/001_control.sql");
/// Its rollback.
pub const CONTROL_ROLLBACK_SQL: &str = include_str!("../../sql/refreshd/901_rollback_control.sql");

/// The capture function: a statement-level trigger function that notifies the channel
/// given as its argument with a constant payload (PostgreSQL folds repeats within a
/// transaction). Idempotent.
pub const FUNCTION_SQL: &str = "CREATE SCHEMA IF NOT EXISTS refreshd;
CREATE OR REPLACE FUNCTION refreshd.notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION refreshd.notify_changed() IS 'refreshd: change capture (statement-level NOTIFY of the channel in TG_ARGV[0], constant payload)';
";

/// Drops the capture function (after every trigger that uses it).
pub const FUNCTION_ROLLBACK_SQL: &str = "DROP FUNCTION IF EXISTS refreshd.notify_changed();\n";

/// (Re)creates refreshd's capture trigger on `table`, notifying `channel`. Idempotent:
/// an earlier one (another channel, or disabled) is replaced.
pub fn trigger_sql(table: &QualifiedName, channel: &str) -> String {
    let t = table.quoted();
    format!(
        "DROP TRIGGER IF EXISTS {trg} ON {t};\n\
         CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}\n    \
         FOR EACH STATEMENT EXECUTE FUNCTION refreshd.notify_changed({ch});\n\
         COMMENT ON TRIGGER {trg} ON {t} IS {comment};\n",
        trg = quote_ident(TRIGGER),
        ch = quote_literal(channel),
        comment = quote_literal(&format!(
            "refreshd: change capture -> channel {}",
            sql_comment(channel)
        )),
    )
}

/// Drops refreshd's capture trigger on `table` (idempotent).
pub fn drop_trigger_sql(table: &QualifiedName) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {};\n",
        quote_ident(TRIGGER),
        table.quoted()
    )
}
