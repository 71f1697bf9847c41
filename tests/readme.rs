//! README's "Your own database in three commands", run as written: the fenced block's
//! `refreshd` lines, in order, in a shell with `DATABASE_URL` set, against a throwaway
//! database and a schema this test makes up (the README never saw it). The one thing
//! added is an `[http]` table before `run`, so that parallel tests do not share port
//! 9648.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{wait_for, TestDb};

/// The `refreshd ...` lines of the README section, comments stripped.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(support::repo().join("README.md")).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Your own database in three commands"))
        .expect("README has the section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    block
        .lines()
        .map(|l| l.split(" # ").next().unwrap().trim().to_string())
        .filter(|l| l.starts_with("refreshd "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_three_commands_of_readme_keep_a_new_database_fresh() {
    let commands = readme_commands();
    assert_eq!(commands.len(), 3, "{commands:?}");
    assert!(commands[0].starts_with("refreshd init") && commands[0].contains("--apply"));
    assert!(commands[2].starts_with("refreshd run"));

    let db = TestDb::new();
    sales_schema(&db);

    // A shell that finds `refreshd` on PATH, in a fresh directory, as a newcomer has.
    let dir = tempfile::tempdir().unwrap();
    let path = path_with_refreshd(dir.path());
    let shell = |line: &str| {
        let mut c = Command::new("sh");
        c.args(["-c", line])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("DATABASE_URL", db.dsn())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    };
    for line in &commands[..2] {
        let out = shell(line).output().unwrap();
        assert!(
            out.status.success(),
            "{line}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = std::fs::read_to_string(dir.path().join("refreshd.toml")).unwrap();
    assert!(config.contains("Region Totals"), "{config}");

    let port = support::free_port();
    std::fs::write(
        dir.path().join("refreshd.toml"),
        format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let mut run = shell(&format!("exec {}", commands[2]))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _guard = Kill(&mut run);
    let total = r#"SELECT total FROM "Sales"."Region Totals" WHERE region = 'north'"#;
    wait_for(Duration::from_secs(30), "the first refresh", || async {
        db.psql(total) == "2550"
    })
    .await;
    // A write through the parent, one straight into a partition, one to the dimension.
    db.psql(
        r#"INSERT INTO "Sales".orders (region, amount, at) VALUES ('north', 1000, '2026-02-01')"#,
    );
    db.psql(
        r#"INSERT INTO "Sales".orders_old (region, amount, at) VALUES ('north', 1, '2025-02-01')"#,
    );
    wait_for(
        Duration::from_secs(40),
        "the writes in the view",
        || async { db.psql(total) == "3551" },
    )
    .await;
    db.psql(r#"UPDATE "Sales".regions SET manager = 'cy' WHERE name = 'south'"#);
    wait_for(Duration::from_secs(40), "the dimension change", || async {
        db.psql(r#"SELECT manager FROM "Sales"."Region Totals" WHERE region = 'south'"#) == "cy"
    })
    .await;
    // And SQL control, as the section says.
    db.psql(r#"UPDATE "Sales".regions SET manager = 'di' WHERE name = 'south'"#);
    db.psql(r#"SELECT refreshd.force('"Sales"."Region Totals"')"#);
    wait_for(Duration::from_secs(10), "the forced refresh", || async {
        db.psql(r#"SELECT manager FROM "Sales"."Region Totals" WHERE region = 'south'"#) == "di"
    })
    .await;
}

/// Kills and reaps the child when dropped.
struct Kill<'a>(&'a mut std::process::Child);

impl Drop for Kill<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A schema the README never saw: a partitioned fact table, a dimension, and a
/// materialized view with a quoted name on both.
fn sales_schema(db: &TestDb) {
    db.psql(
        r#"CREATE SCHEMA "Sales";
           CREATE TABLE "Sales".orders (id bigserial, region text NOT NULL,
               amount numeric NOT NULL, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, at))
             PARTITION BY RANGE (at);
           CREATE TABLE "Sales".orders_old PARTITION OF "Sales".orders
             FOR VALUES FROM (MINVALUE) TO ('2026-01-01');
           CREATE TABLE "Sales".orders_new PARTITION OF "Sales".orders
             FOR VALUES FROM ('2026-01-01') TO (MAXVALUE);
           CREATE TABLE "Sales".regions (name text PRIMARY KEY, manager text NOT NULL);
           INSERT INTO "Sales".regions VALUES ('north', 'ann'), ('south', 'bo');
           INSERT INTO "Sales".orders (region, amount, at)
             SELECT CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END, g, '2025-06-01'
               FROM generate_series(1, 100) g;
           CREATE MATERIALIZED VIEW "Sales"."Region Totals" AS
             SELECT r.name AS region, r.manager, count(o.id) AS orders, coalesce(sum(o.amount), 0) AS total
               FROM "Sales".regions r LEFT JOIN "Sales".orders o ON o.region = r.name
              GROUP BY r.name, r.manager;
           CREATE UNIQUE INDEX ON "Sales"."Region Totals" (region);"#,
    );
}

/// A PATH on which `refreshd` (a link in `dir`/bin to the binary under test) comes first.
fn path_with_refreshd(dir: &std::path::Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_refreshd"), bin.join("refreshd")).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}
