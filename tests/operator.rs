//! What an operator's tools see: the standard `process_*` series, `HEAD` on every GET
//! route, and the status page's view of a failing view.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::browser::browse;
use support::{sample, wait_for, Daemon, TestDb};

fn orders_config(db: &TestDb) -> String {
    format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\ndebounce = \"0s\"\n",
        db.dsn()
    )
}

/// One request: (status, lower-cased headers, body bytes as read to the end).
fn raw(port: u16, method: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the answer");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn process_metrics_are_published_and_promtool_accepts_the_exposition() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let d = Daemon::start(&orders_config(&db));
    d.wait_ready(Duration::from_secs(20)).await;
    let m = d.metrics();
    let value = |name: &str| sample(&m, name).unwrap_or_else(|| panic!("no {name} in:\n{m}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start >= now - 60.0,
        "start time {start}, now {now}"
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    let fds = value("process_open_fds");
    assert!(fds > 3.0, "open fds {fds}");
    assert!(value("process_max_fds") >= fds);
    let cpu = value("process_cpu_seconds_total");
    assert!(cpu >= 0.0);
    for (name, kind) in [
        ("process_start_time_seconds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is a {kind}:\n{m}"
        );
    }
    // Work moves the CPU counter, never back.
    for i in 0..20 {
        db.psql(&format!(
            "INSERT INTO public.orders (bucket, amount) VALUES ({}, 1)",
            i % 10
        ));
    }
    let later = sample(&d.metrics(), "process_cpu_seconds_total").unwrap();
    assert!(later >= cpu, "{later} < {cpu}");

    // The exposition as a whole passes Prometheus's own checker (fetched as HTTP/1.0,
    // so the streamed body is not chunked).
    let m = {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(m.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn head_answers_every_get_route_without_a_body() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let d = Daemon::start(&orders_config(&db));
    d.wait_ready(Duration::from_secs(20)).await;
    for path in ["/", "/metrics", "/healthz", "/readyz", "/status"] {
        let (get_status, get_headers, get_body) = raw(d.port, "GET", path);
        let (status, headers, body) = raw(d.port, "HEAD", path);
        assert_eq!(get_status, 200, "GET {path}");
        assert_eq!(status, get_status, "HEAD {path}");
        assert!(!get_body.is_empty(), "GET {path} has a body");
        assert!(
            body.is_empty(),
            "HEAD {path} sent a body: {}",
            String::from_utf8_lossy(&body)
        );
        for h in ["content-type", "content-security-policy", "cache-control"] {
            assert_eq!(
                header(&headers, h),
                header(&get_headers, h),
                "HEAD {path}: {h}"
            );
        }
    }
    // Other methods on those routes: 405 naming what is allowed.
    let (status, headers, _) = raw(d.port, "DELETE", "/metrics");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    let (status, headers, _) = raw(d.port, "HEAD", "/refresh");
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("POST"));
}

/// The `<td>` of `view`'s row labelled `label`, as HTML.
fn cell<'a>(dom: &'a str, view: &str, label: &str) -> &'a str {
    let row = dom
        .split(&format!("data-view=\"{view}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("a row for {view}:\n{dom}"));
    let row = row.split("</tr>").next().unwrap();
    row.split(&format!("data-label=\"{label}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("a {label} cell in {row}"))
        .split("</td>")
        .next()
        .unwrap()
}

/// A view that refreshed once and then fails: the page shows when it last succeeded
/// (and how long that took) apart from its failing attempt, counts "1 refresh", and
/// draws the one refresh on a scale.
#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_last_success_and_last_failure_apart() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    db.psql(
        r#"
        CREATE TABLE public.switch (broken bool NOT NULL);
        INSERT INTO public.switch VALUES (false);
        CREATE FUNCTION public.maybe_fail() RETURNS int LANGUAGE plpgsql AS
          $$BEGIN IF (SELECT broken FROM public.switch) THEN
                RAISE EXCEPTION 'broken on purpose' USING ERRCODE = '22012';
              END IF; RETURN 1; END$$;
        CREATE MATERIALIZED VIEW public.fragile AS SELECT public.maybe_fail() AS one;
        CREATE UNIQUE INDEX ON public.fragile (one);
        "#,
    );
    let d = Daemon::start(&format!(
        "{}[[view]]\nname = \"public.fragile\"\nchannels = [\"fragile_changed\"]\n",
        orders_config(&db)
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(20), "the startup refresh", || async {
        d.successes("public.fragile") >= 1.0
    })
    .await;
    db.psql("UPDATE public.switch SET broken = true");
    let (code, body) = d.post("/refresh/public.fragile?wait=10s", &[]);
    assert_eq!(code, 502, "the refresh fails: {body}");
    wait_for(
        Duration::from_secs(10),
        "the failure in /status",
        || async { d.get("/status").1.contains("\"last_outcome\":\"failure\"") },
    )
    .await;

    let url = format!("http://127.0.0.1:{}/", d.port);
    let profile = tempfile::tempdir().unwrap();
    let dom = browse(&url, profile.path(), &["--dump-dom".to_string()]);
    let success = cell(&dom, "public.fragile", "last success");
    assert!(success.contains(" ago"), "last success: {success}");
    assert!(success.contains("took "), "last success: {success}");
    let failure = cell(&dom, "public.fragile", "last failure");
    assert!(failure.contains(" ago"), "last failure: {failure}");
    assert!(failure.contains("22012"), "last failure: {failure}");
    let name = cell(&dom, "public.fragile", "view");
    assert!(
        name.contains(">1 refresh<") || name.contains("> 1 refresh<"),
        "singular: {name}"
    );
    // The trend from the first refresh, with its scale.
    let trend = cell(&dom, "public.fragile", "trend");
    assert!(trend.contains("<circle"), "one refresh is drawn: {trend}");
    assert!(trend.contains("class=\"ymax\""), "a y scale: {trend}");
    assert!(
        trend.contains(" ms<") || trend.contains(" s<"),
        "the scale has units: {trend}"
    );
    // The healthy view says nothing failed.
    let healthy = cell(&dom, "public.order_totals", "last failure");
    assert!(healthy.contains('—'), "{healthy}");

    if let Ok(path) = std::env::var("REFRESHD_SCREENSHOT") {
        browse(&url, profile.path(), &[format!("--screenshot={path}")]);
    }
}

/// `[history]`: the table is created, each refresh leaves one row (successes with
/// their reason and duration, failures with their SQLSTATE), and rows past the
/// retention are deleted.
#[tokio::test(flavor = "multi_thread")]
async fn history_records_each_refresh_and_keeps_to_its_retention() {
    let db = TestDb::new();
    history_schema(&db);
    let table = HISTORY;
    let count = |filter: &str| history_count(&db, filter);
    each_refresh_leaves_one_history_row(&db).await;
    // Rows older than the retention go at the next start's first refresh.
    db.psql(&format!(
        "INSERT INTO {table} (view, reason, started, duration, outcome) \
         VALUES ('public.order_totals', 'notify', now() - interval '2 hours', '1 ms', 'success')"
    ));
    let before = count("true");
    db.psql("UPDATE public.switch SET broken = false");
    let d = Daemon::start(&history_config(&db, "1h"));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(20), "the old row deleted", || async {
        count("started < now() - interval '1 hour'") == 0
    })
    .await;
    assert!(count("true") >= before - 1, "only the old row went");
}

/// The history table the tests here configure.
const HISTORY: &str = r#""Ops"."refresh history""#;

/// The orders schema, schema "Ops" for the history, `public.fragile` (fails with
/// SQLSTATE 22012 while `public.switch` says broken) and the keyed pair `public.kv_live`
/// (key g) of `public.kv_def`.
fn history_schema(db: &TestDb) {
    db.psql(support::ORDERS_SCHEMA);
    db.psql(
        r#"
        CREATE SCHEMA "Ops";
        CREATE TABLE public.switch (broken bool NOT NULL);
        INSERT INTO public.switch VALUES (false);
        CREATE FUNCTION public.maybe_fail() RETURNS int LANGUAGE plpgsql AS
          $$BEGIN IF (SELECT broken FROM public.switch) THEN
                RAISE EXCEPTION 'broken on purpose' USING ERRCODE = '22012';
              END IF; RETURN 1; END$$;
        CREATE MATERIALIZED VIEW public.fragile AS SELECT public.maybe_fail() AS one;
        CREATE UNIQUE INDEX ON public.fragile (one);
        CREATE TABLE public.kv (g int NOT NULL, v int NOT NULL);
        INSERT INTO public.kv SELECT g % 50, g FROM generate_series(1, 20000) g;
        CREATE INDEX ON public.kv (g);
        ANALYZE public.kv;
        CREATE VIEW public.kv_def AS SELECT g, sum(v)::bigint AS s FROM public.kv GROUP BY g;
        CREATE TABLE public.kv_live AS SELECT * FROM public.kv_def;
        ALTER TABLE public.kv_live ADD PRIMARY KEY (g);
        "#,
    );
}

/// order_totals, fragile and kv_live, with [`HISTORY`] kept for `retention`.
fn history_config(db: &TestDb, retention: &str) -> String {
    format!(
        "{}[[view]]\nname = \"public.fragile\"\nchannels = [\"fragile_changed\"]\n\
         [[view]]\nname = \"public.kv_live\"\nkind = \"keyed\"\nquery = \"public.kv_def\"\nkey = [\"g\"]\nchannels = [\"kv_keys\"]\ndebounce = \"0s\"\n\
         [history]\ntable = '\"Ops\".\"refresh history\"'\nretention = \"{retention}\"\n",
        orders_config(db)
    )
}

/// Rows of [`HISTORY`] matching `filter`.
fn history_count(db: &TestDb, filter: &str) -> i64 {
    db.psql(&format!("SELECT count(*) FROM {HISTORY} WHERE {filter}"))
        .trim()
        .parse()
        .unwrap()
}

/// A daemon keeping history for 7 days: startup, notify, keyed (counting its groups)
/// and failed (with its SQLSTATE) refreshes each leave a row; the counters agree.
async fn each_refresh_leaves_one_history_row(db: &TestDb) {
    let table = HISTORY;
    let count = |filter: &str| history_count(db, filter);
    let d = Daemon::start(&history_config(db, "7d"));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(20), "the startup refreshes", || async {
        d.successes("public.fragile") >= 1.0 && d.successes("public.order_totals") >= 1.0
    })
    .await;
    assert_eq!(
        count("view = 'public.order_totals' AND reason = 'startup' AND outcome = 'success' AND duration > '0'::interval AND kind = 'concurrently' AND sqlstate IS NULL"),
        1,
        "{}",
        db.psql(&format!("SELECT * FROM {table}"))
    );
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (1, 1)");
    wait_for(Duration::from_secs(10), "a notify row", || async {
        count("view = 'public.order_totals' AND reason = 'notify' AND outcome = 'success'") >= 1
    })
    .await;
    // A keyed view's row counts the groups it recomputed.
    db.psql("UPDATE public.kv SET v = v + 1 WHERE g = 7; SELECT pg_notify('kv_keys', '[7]')");
    wait_for(Duration::from_secs(10), "the keyed row", || async {
        count("view = 'public.kv_live' AND reason = 'notify' AND outcome = 'success'") >= 1
    })
    .await;
    assert_eq!(
        count("view = 'public.kv_live' AND reason = 'notify' AND ((kind = 'keyed_keys' AND keys = 1) OR (kind = 'keyed_all' AND keys IS NULL))"),
        count("view = 'public.kv_live' AND reason = 'notify'"),
        "{}",
        db.psql(&format!("SELECT * FROM {table} WHERE view = 'public.kv_live'"))
    );
    db.psql("UPDATE public.switch SET broken = true");
    let (code, body) = d.post("/refresh/public.fragile?wait=10s", &[]);
    assert_eq!(code, 502, "{body}");
    wait_for(Duration::from_secs(10), "the failure's row", || async {
        count("view = 'public.fragile' AND reason = 'force' AND outcome = 'failure' AND sqlstate = '22012'") == 1
    })
    .await;
    // One row per refresh: the counters and the table agree.
    let successes = d.successes("public.order_totals") as i64;
    assert_eq!(
        count("view = 'public.order_totals' AND outcome = 'success'"),
        successes
    );
}
