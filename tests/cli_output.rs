//! What the one-shot commands print for people (issue 17): `status` says
//! "disconnected" and exits 1 when the daemon has lost PostgreSQL, and a reader that
//! closes the pipe early (`refreshd check | head -1`) ends a command quietly.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use refreshd::cli::cluster::{ClusterOptions, TempCluster};
use support::{wait_for, write_config, Daemon, TestDb};

/// Started while its database is down, the daemon answered `/status` with "the core
/// loop did not answer (shutting down?)" and `status` exited 2 (unreachable); README
/// says 1 for a daemon not connected or not ready (found by a review, 2026-12-05).
#[tokio::test(flavor = "multi_thread")]
async fn status_says_starting_and_exits_1_while_the_database_is_down_at_startup() {
    let port = support::free_port();
    let d = Daemon::start(&format!(
        "[database]\nurl = \"host=127.0.0.1 port={port} user=postgres dbname=x\"\nconnect_timeout = \"1s\"\n[[view]]\nname = \"public.one\"\nchannels = [\"one_changed\"]\n"
    ));
    let url = format!("http://127.0.0.1:{}", d.port);
    let mut last = (None, String::new());
    wait_for(Duration::from_secs(20), "status to answer", || {
        let out = support::refreshd(&["status", "--url", &url]);
        last = (out.status.code(), support::stdout(&out));
        let done = out.status.code() == Some(1);
        async move { done }
    })
    .await;
    let (_, text) = last;
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("starting (not ready)")),
        "{text}"
    );
    assert!(text.contains("public.one  unknown"), "{text}");
    assert_eq!(d.get("/status").0, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_says_disconnected_and_exits_1_when_the_database_is_gone() {
    let mut cluster = TempCluster::start(&ClusterOptions::default()).unwrap();
    cluster
        .psql(
            "postgres",
            &["-c", "CREATE MATERIALIZED VIEW public.one AS SELECT 1 AS k; CREATE UNIQUE INDEX ON public.one (k);"],
        )
        .unwrap();
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\nconnect_timeout = \"1s\"\n[[view]]\nname = \"public.one\"\nchannels = [\"one_changed\"]\n",
        cluster.socket_dsn("postgres")
    ));
    d.wait_ready(Duration::from_secs(30)).await;
    let url = format!("http://127.0.0.1:{}", d.port);
    wait_for(
        Duration::from_secs(15),
        "status exit 0 while connected",
        || {
            let code = support::refreshd(&["status", "--url", &url]).status.code();
            async move { code == Some(0) }
        },
    )
    .await;
    let out = support::refreshd(&["status", "--url", &url]);
    assert!(
        !support::stdout(&out).contains("disconnected"),
        "{}",
        support::stdout(&out)
    );

    // The server goes away: the daemon stays up, and status must not call it fine.
    cluster.stop().unwrap();
    let mut last = (None, String::new());
    wait_for(
        Duration::from_secs(30),
        "status to say disconnected",
        || {
            let out = support::refreshd(&["status", "--url", &url]);
            last = (out.status.code(), support::stdout(&out));
            let done = out.status.code() == Some(1);
            async move { done }
        },
    )
    .await;
    let (code, text) = last;
    assert_eq!(code, Some(1), "{text}");
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains("disconnected from PostgreSQL")),
        "{text}"
    );
    let view = lines.next().expect("the view's line");
    assert!(view.starts_with("public.one"), "{text}");
    assert!(
        !view.split_whitespace().any(|w| w == "fresh"),
        "a view of a disconnected daemon is not known to be fresh: {text}"
    );
}

/// Runs the binary with its stdout a pipe whose reading end is closed at once, as
/// `| head -0` would: the command's first line meets a closed pipe.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refreshd"))
        .args(args)
        .env_remove("REFRESHD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

fn assert_quiet(what: &str, out: &std::process::Output) {
    let err = support::stderr(out);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
    assert_ne!(out.status.code(), Some(101), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_commands_quietly() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let config = format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n",
        db.dsn()
    );
    let (_dir, path) = write_config(&config);
    let path = path.to_str().unwrap();

    let out = with_closed_stdout(&["check", "-c", path]);
    assert_quiet("check", &out);
    let out = with_closed_stdout(&["refresh", "-c", path, "--all"]);
    assert_quiet("refresh", &out);
    let out = with_closed_stdout(&["init", "--url", &db.dsn()]);
    assert_quiet("init", &out);

    let d = Daemon::start(&config);
    d.wait_ready(Duration::from_secs(30)).await;
    let url = format!("http://127.0.0.1:{}", d.port);
    let out = with_closed_stdout(&["status", "--url", &url]);
    assert_quiet("status", &out);
}
