//! The log's spans: every line of one refresh carries the refresh's span (view, reason,
//! run id), in the JSON log as `span`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::{wait_for, Daemon, TestDb};

const TOTALS: &str = "public.order_totals";
const COUNTS: &str = "public.order_counts";

/// `(view, run, reason)` of a line's refresh span, if it has one.
fn refresh_span(line: &serde_json::Value) -> Option<(String, u64, String)> {
    let span = line.get("span")?;
    if span["name"] != "refresh" {
        return None;
    }
    Some((
        span["view"].as_str()?.to_string(),
        span["run"].as_u64()?,
        span["reason"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn each_refresh_logs_in_its_own_span() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    db.psql(
        "CREATE MATERIALIZED VIEW public.order_counts AS \
           SELECT bucket, count(*) AS n FROM public.orders GROUP BY bucket; \
         CREATE UNIQUE INDEX ON public.order_counts (bucket);",
    );
    let d = Daemon::start_json(&format!(
        "[database]\nurl = \"{}\"\n\
         [[view]]\nname = \"{TOTALS}\"\nchannels = [\"orders_changed\"]\ndebounce = \"100ms\"\n\
         [[view]]\nname = \"{COUNTS}\"\nchannels = [\"orders_changed\"]\ndebounce = \"100ms\"\n",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    wait_for(Duration::from_secs(20), "the startup refreshes", || async {
        d.refreshes(TOTALS, "startup", "success") == 1.0
            && d.refreshes(COUNTS, "startup", "success") == 1.0
    })
    .await;
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (3, 1)");
    wait_for(
        Duration::from_secs(20),
        "a notify refresh of each view",
        || async {
            d.refreshes(TOTALS, "notify", "success") >= 1.0
                && d.refreshes(COUNTS, "notify", "success") >= 1.0
        },
    )
    .await;

    let lines = d.json_lines();
    // Every line, refreshes or not, is one JSON object with a message.
    assert!(lines
        .iter()
        .all(|l| l["fields"].is_null() && l["message"].is_string()));
    let (starts, ends) = starts_and_ends(&lines);
    // The notify refresh of each view: its start and its end carry the same view and
    // run id, and the two views' run ids differ.
    let notify_run = |view: &str| {
        let runs: Vec<u64> = ends
            .iter()
            .filter(|(_, (v, r))| v == view && r == "notify")
            .map(|(run, _)| *run)
            .collect();
        assert_eq!(runs.len(), 1, "{view}: {ends:?}");
        runs[0]
    };
    let (a, b) = (notify_run(TOTALS), notify_run(COUNTS));
    assert_ne!(a, b, "two refreshes, two run ids");
    for (run, view) in [(a, TOTALS), (b, COUNTS)] {
        assert_eq!(
            starts.get(&run),
            Some(&(view.to_string(), "notify".to_string())),
            "the start of run {run}: {starts:?}"
        );
    }
    // Every refresh that ended had started, under its own run id (startup ones too).
    assert!(ends.len() >= 4, "{ends:?}");
    for (run, end) in &ends {
        assert_eq!(starts.get(run), Some(end), "run {run}");
    }
    let views: BTreeSet<&str> = ends.values().map(|(v, _)| v.as_str()).collect();
    assert_eq!(views, BTreeSet::from([COUNTS, TOTALS]));
}

/// A refresh's (view, reason), by run id.
type Runs = BTreeMap<u64, (String, String)>;

/// The refreshes that started and those that ended (successfully) in the JSON log,
/// each run once; an end's line carries the view in its span only.
fn starts_and_ends(lines: &[serde_json::Value]) -> (Runs, Runs) {
    let mut starts = Runs::new();
    let mut ends = Runs::new();
    for l in lines {
        let Some((view, run, reason)) = refresh_span(l) else {
            continue;
        };
        match l["message"].as_str() {
            Some("refresh starting") => {
                assert!(
                    starts.insert(run, (view, reason)).is_none(),
                    "run {run} started twice"
                );
            }
            Some("refreshed") => {
                assert_eq!(l["outcome"], "success", "{l}");
                assert!(
                    l.get("view").is_none(),
                    "the view is the span's, not repeated: {l}"
                );
                assert!(
                    ends.insert(run, (view, reason)).is_none(),
                    "run {run} ended twice"
                );
            }
            _ => {}
        }
    }
    (starts, ends)
}

/// A reload of a file with a mistake keeps the old configuration and logs where the
/// mistake is: the file, the line and the key, as fields of their own in JSON.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_reload_logs_the_file_line_and_key() {
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let config = |debounce: &str| {
        format!(
            "[database]\nurl = \"{}\"\n[[view]]\nname = \"{TOTALS}\"\nchannels = [\"orders_changed\"]\ndebounce = {debounce}\n",
            db.dsn()
        )
    };
    let d = Daemon::start_json(&config("\"100ms\""));
    d.wait_ready(Duration::from_secs(20)).await;
    d.rewrite_config(&config("2"));
    d.signal("HUP");
    let refused = || {
        d.json_lines().into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("keeping the old one"))
        })
    };
    wait_for(Duration::from_secs(10), "the refused reload", || async {
        refused().is_some()
    })
    .await;
    let line = refused().unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["line"], 6, "{line}");
    assert_eq!(line["key"], "view[0].debounce", "{line}");
    assert!(
        line["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("refreshd.toml")),
        "{line}"
    );
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("refreshd.toml:6: view[0].debounce: expected a duration string"),
        "{error}"
    );
    // The old configuration still works. After the catch-up refresh (it waits for the
    // first capture check): a write before it is taken by it, as reason "startup"
    // (failed once in CI so, the refusal coming first).
    wait_for(Duration::from_secs(10), "the catch-up refresh", || async {
        d.refreshes(TOTALS, "startup", "success") >= 1.0
    })
    .await;
    db.psql("INSERT INTO public.orders (bucket, amount) VALUES (3, 1)");
    wait_for(
        Duration::from_secs(10),
        "a refresh after the refusal",
        || async { d.refreshes(TOTALS, "notify", "success") >= 1.0 },
    )
    .await;
}
