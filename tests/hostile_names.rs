//! Names are data, never code (issue 18): tables, views, indexes and schemas named to
//! break out of SQL comments, TOML lines and terminal lines. Everything `init` writes is
//! applied with psql and runs nothing hidden in a name; the config it prints has exactly
//! the keys it meant; `check` and `status` print one line per view.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use refreshd::pg::ident::{quote_ident, QualifiedName};
use support::{wait_for, Daemon, TestDb};

/// A schema whose name opens and closes comments, quotes and escapes.
const SCHEMA: &str = "sch\n-- */ DROP TABLE inj.canary; /* 'q' \"d\" \\";

/// (schema, table) of the base tables.
fn tables() -> Vec<(&'static str, String)> {
    vec![
        ("inj", "t\nDROP TABLE inj.canary; --".to_string()),
        (SCHEMA, "t */ DROP TABLE inj.canary; /*".to_string()),
        (SCHEMA, "it's \"quoted\" \\ back\\slash\r\n".to_string()),
        (SCHEMA, "T".repeat(63)),
        ("inj", "Bestellungen_über_€_\u{202e}".to_string()),
        ("inj", format!("{}x", "ü".repeat(31))), // 63 bytes
    ]
}

/// (schema, view, indexes of the tables it reads).
fn views() -> Vec<(&'static str, String, Vec<usize>)> {
    vec![
        ("inj", "v\nDROP TABLE inj.canary; --".to_string(), vec![0]),
        (
            SCHEMA,
            "v */ DROP TABLE inj.canary; /*".to_string(),
            vec![1],
        ),
        (
            "inj",
            "m'); CREATE TABLE inj.pwned (x int); --\n".to_string(),
            vec![2],
        ),
        (SCHEMA, "V".repeat(63), vec![3]),
        (
            "inj",
            "Ü €\r\n[[view]]\nname = \"inj.canary\"\nconcurrently = false".to_string(),
            vec![4, 5],
        ),
    ]
}

fn q(schema: &str, name: &str) -> String {
    QualifiedName::new(schema, name).quoted()
}

fn setup(db: &TestDb) {
    let mut sql = String::from(
        "CREATE SCHEMA inj; CREATE TABLE inj.canary (x int); INSERT INTO inj.canary VALUES (1);\n",
    );
    sql.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(SCHEMA)));
    for (s, t) in tables() {
        sql.push_str(&format!(
            "CREATE TABLE {} (id int); INSERT INTO {} VALUES (1);\n",
            q(s, &t),
            q(s, &t)
        ));
    }
    for (i, (s, v, reads)) in views().into_iter().enumerate() {
        assert!(v.len() <= 63, "PostgreSQL would truncate {v:?}");
        let from: Vec<String> = reads
            .iter()
            .map(|&t| {
                let (ts, tn) = &tables()[t];
                q(ts, tn)
            })
            .collect();
        let union: Vec<String> = from.iter().map(|f| format!("SELECT id FROM {f}")).collect();
        sql.push_str(&format!(
            "CREATE MATERIALIZED VIEW {} AS SELECT 1 AS k, count(*) AS n FROM ({}) u;\n",
            q(s, &v),
            union.join(" UNION ALL ")
        ));
        let index = format!("ix{i}\nconcurrently = false\nstatement_timeout = \"0s\"\n-- */");
        sql.push_str(&format!(
            "CREATE UNIQUE INDEX {} ON {} (k);\n",
            quote_ident(&index),
            q(s, &v)
        ));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), sql).unwrap();
    let out = db.server.psql_file(&db.name, file.path());
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nothing a name said ran: the canary is there and nothing was created.
fn nothing_ran(db: &TestDb, when: &str) {
    assert_eq!(
        db.psql(
            "SELECT to_regclass('inj.canary') IS NOT NULL AND to_regclass('inj.pwned') IS NULL"
        ),
        "t",
        "{when}: a statement hidden in a name ran"
    );
    assert_eq!(db.psql("SELECT count(*) FROM inj.canary"), "1", "{when}");
}

fn apply(db: &TestDb, file: &std::path::Path) {
    let out = db.server.psql_file(&db.name, file);
    assert!(
        out.status.success(),
        "psql -v ON_ERROR_STOP=1 -f {}: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
}

fn capture_triggers(db: &TestDb) -> String {
    db.psql("SELECT count(*) FROM pg_trigger WHERE tgname = 'refreshd_notify'")
}

#[tokio::test(flavor = "multi_thread")]
async fn init_check_and_status_on_hostile_names() {
    let db = TestDb::new();
    setup(&db);
    let dir = tempfile::tempdir().unwrap();
    let out = support::refreshd(&[
        "init",
        "--url",
        &db.dsn(),
        "--sql",
        dir.path().to_str().unwrap(),
    ]);
    let config = support::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));

    // Applying what init wrote runs nothing hidden in a name, install and rollback.
    nothing_ran(&db, "before");
    apply(&db, &dir.path().join(refreshd::cli::init::INSTALL));
    nothing_ran(&db, "install");
    assert_eq!(capture_triggers(&db), tables().len().to_string());

    the_config_has_exactly_the_keys_init_meant(&config);
    check_and_refresh_print_one_line_per_view(&config);
    a_daemon_on_it_keeps_names_on_one_line(&db, &config).await;

    apply(&db, &dir.path().join(refreshd::cli::init::ROLLBACK));
    nothing_ran(&db, "rollback");
    assert_eq!(capture_triggers(&db), "0");
}

/// The config parses, with exactly the keys init meant, one table per view, and
/// refreshd reads it the same way.
fn the_config_has_exactly_the_keys_init_meant(config: &str) {
    let doc: toml::Value = toml::from_str(config).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let top: BTreeSet<&str> = doc.as_table().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        top,
        BTreeSet::from(["database", "defaults", "view"]),
        "{config}"
    );
    let keys =
        |v: &toml::Value| -> BTreeSet<String> { v.as_table().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&doc["database"]), BTreeSet::from(["url".to_string()]));
    assert_eq!(
        keys(&doc["defaults"]),
        BTreeSet::from(["debounce".to_string(), "max_delay".to_string()])
    );
    let entries = doc["view"].as_array().unwrap();
    let want: BTreeSet<String> = views()
        .iter()
        .map(|(s, v, _)| QualifiedName::new(*s, v.as_str()).to_string())
        .collect();
    let got: BTreeSet<String> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want, "{config}");
    for e in entries {
        assert_eq!(
            keys(e),
            BTreeSet::from(["name".to_string(), "channels".to_string()]),
            "every view has a usable unique index: no other key\n{config}"
        );
        for c in e["channels"].as_array().unwrap() {
            let c = c.as_str().unwrap();
            assert!(
                c.len() <= 63
                    && c.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "channel {c:?}"
            );
        }
    }
    // And refreshd reads it the same way.
    let parsed = refreshd::config::Config::parse(std::path::Path::new("init.toml"), config)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(parsed.views.len(), views().len());
    assert!(parsed.views.iter().all(|v| v.concurrently));
}

/// `check` prints one line per view (plus the listen session, the header and the
/// summary); `refresh --all` one line per view.
fn check_and_refresh_print_one_line_per_view(config: &str) {
    let (_c, path) = support::write_config(config);
    let check = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = support::stdout(&check);
    assert_eq!(check.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().count(), views().len() + 3, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("OK ")).count(),
        views().len() + 1,
        "{text}"
    );
    for (s, v, _) in views() {
        let shown = QualifiedName::new(s, v.as_str()).shown();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(&format!("OK    {shown}: ")))
                .count(),
            1,
            "{shown} in\n{text}"
        );
    }
    // refresh: one line per view.
    let refresh = support::refreshd(&["refresh", "-c", path.to_str().unwrap(), "--all"]);
    let text = support::stdout(&refresh);
    assert_eq!(refresh.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().count(), views().len(), "{text}");
    assert!(text.lines().all(|l| l.contains(": refreshed (")), "{text}");
}

/// A daemon on `config`: a write reaches the view; `status` prints one line per view,
/// with no carriage return or bidi override; the text log keeps each event on one line.
async fn a_daemon_on_it_keeps_names_on_one_line(db: &TestDb, config: &str) {
    let d = Daemon::start(config);
    d.wait_ready(Duration::from_secs(30)).await;
    let (ts, tn) = &tables()[0];
    db.psql(&format!("INSERT INTO {} VALUES (2)", q(ts, tn)));
    let (vs, vn, _) = &views()[0];
    let count = format!("SELECT n FROM {}", q(vs, vn));
    wait_for(Duration::from_secs(15), "the write in the view", || async {
        db.psql(&count) == "2"
    })
    .await;
    let url = format!("http://127.0.0.1:{}", d.port);
    let mut last = String::new();
    wait_for(Duration::from_secs(15), "status exit 0", || {
        let out = support::refreshd(&["status", "--url", &url]);
        last = support::stdout(&out);
        async move { out.status.code() == Some(0) }
    })
    .await;
    assert_eq!(last.lines().count(), views().len() + 1, "{last}");
    for (s, v, _) in views() {
        let shown = QualifiedName::new(s, v.as_str()).shown();
        assert_eq!(
            last.lines().filter(|l| l.starts_with(&shown)).count(),
            1,
            "{shown} in\n{last}"
        );
    }
    assert!(
        !last.contains('\r') && !last.contains('\u{202e}'),
        "{last:?}"
    );
    // The daemon's text log keeps each event on one line: no line starts with
    // anything but a timestamp.
    let log = d.log_text();
    for line in log.lines() {
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit() || c == '\u{1b}'),
            "a log line broken by a name: {line:?}\n{log}"
        );
    }
    drop(d);
}
