//! Multi-host URLs against real primaries and physical standbys: a first host that
//! accepts TCP but never answers (a primary frozen with SIGSTOP) costs one
//! `connect_timeout`, then the promoted standby is used; a URL that reaches only a
//! standby says how to fix it.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use refreshd::cli::cluster::{ClusterOptions, TempCluster};
use support::standby::{Frozen, Standby};
use support::{wait_for, Daemon};

const TOTALS: &str = "public.order_totals";

const VIEW: &str = "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n\
                    debounce = \"100ms\"\nmax_delay = \"1s\"\n";

const EXACT: &str = "SELECT count(*) FROM ((TABLE public.order_totals EXCEPT \
    SELECT bucket, count(*), sum(amount) FROM public.orders GROUP BY bucket) \
    UNION ALL (SELECT bucket, count(*), sum(amount) FROM public.orders GROUP BY bucket \
    EXCEPT TABLE public.order_totals)) d";

/// A primary with the orders schema and a streaming standby of it.
fn primary_and_standby() -> (TempCluster, Standby) {
    let primary = TempCluster::start(&ClusterOptions::default()).unwrap();
    primary
        .psql("postgres", &["-c", support::ORDERS_SCHEMA])
        .unwrap();
    let standby = Standby::start(&primary);
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    (primary, standby)
}

fn data_dir(c: &TempCluster) -> PathBuf {
    PathBuf::from(
        c.psql("postgres", &["-Atc", "SHOW data_directory"])
            .unwrap()
            .trim(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_first_host_fails_over_to_the_promoted_standby() {
    let (primary, standby) = primary_and_standby();
    let connect_timeout = Duration::from_secs(2);
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        primary.port(),
        standby.port
    );
    let daemon = Daemon::start(&format!(
        "[database]\nurl = \"{url}\"\nconnect_timeout = \"{}s\"\n{VIEW}",
        connect_timeout.as_secs()
    ));
    daemon.wait_ready(Duration::from_secs(30)).await;
    refreshes_on_the_primary(&daemon, &primary).await;
    let notified_before = daemon.refreshes(TOTALS, "notify", "success");

    // The primary hangs: TCP connections are still accepted (by the kernel), nothing
    // answers, and the open sessions hang.
    let from = daemon.log_text().len();
    let frozen = Frozen::freeze(&data_dir(&primary));
    wait_for(
        Duration::from_secs(30),
        "the daemon to notice the frozen primary",
        || async { daemon.log_since(from).contains("LISTEN connection lost") },
    )
    .await;
    // A failover manager promotes the standby; the daemon's URL already lists it.
    standby.promote();
    let promoted = Instant::now();
    let budget = connect_timeout * 3 + Duration::from_secs(5);
    let answered = format!("127.0.0.1:{}/postgres", standby.port);
    wait_for(budget, "LISTEN on the promoted standby", || async {
        daemon
            .log_since(from)
            .lines()
            .any(|l| l.contains("LISTEN established") && l.contains(&answered))
    })
    .await;
    standby.psql(
        "postgres",
        "INSERT INTO public.orders (bucket, amount) VALUES (2, 7)",
    );
    let left = budget.saturating_sub(promoted.elapsed());
    wait_for(
        left,
        "the write on the promoted standby reflected by a NOTIFY-driven refresh",
        || async {
            daemon.refreshes(TOTALS, "notify", "success") > notified_before
                && standby.psql("postgres", EXACT) == "0"
        },
    )
    .await;
    for l in daemon
        .log_since(from)
        .lines()
        .filter(|l| l.contains("LISTEN"))
    {
        println!("{l}");
    }
    println!(
        "failover: LISTEN re-established and the write reflected {:.1} s after the promotion (budget {budget:?})",
        promoted.elapsed().as_secs_f64()
    );
    assert_eq!(daemon.get("/readyz").0, 200);
    drop(frozen);
}

/// A write on `primary` is refreshed by `daemon`, whose first session names the primary.
async fn refreshes_on_the_primary(daemon: &Daemon, primary: &TempCluster) {
    // The catch-up refresh first: a notification arriving before it starts is served by
    // it (one refresh, reason startup), and no NOTIFY-driven refresh would follow.
    wait_for(Duration::from_secs(15), "the catch-up refresh", || async {
        daemon.successes(TOTALS) >= 1.0
    })
    .await;
    primary
        .psql(
            "postgres",
            &[
                "-c",
                "INSERT INTO public.orders (bucket, amount) VALUES (1, 5)",
            ],
        )
        .unwrap();
    wait_for(
        Duration::from_secs(15),
        "a refresh on the primary",
        || async {
            daemon.refreshes(TOTALS, "notify", "success") >= 1.0
                && primary.psql("postgres", &["-Atc", EXACT]).unwrap().trim() == "0"
        },
    )
    .await;
    let led_on_primary = daemon.log_text();
    assert!(
        led_on_primary.contains(&format!("127.0.0.1:{}/postgres", primary.port()))
            && led_on_primary.contains("LISTEN established"),
        "the first session should name the primary:\n{led_on_primary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_only_url_says_to_use_target_session_attrs() {
    let (_primary, standby) = primary_and_standby();
    let config = format!(
        "[database]\nurl = \"postgresql://postgres@127.0.0.1:{}/postgres\"\nconnect_timeout = \"2s\"\n{VIEW}",
        standby.port
    );
    // `check` runs the same LISTEN proof and says the same.
    let (_dir, path) = support::write_config(&config);
    let out = support::refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = support::stdout(&out);
    let listen = text
        .lines()
        .find(|l| l.contains("listen session"))
        .unwrap_or_else(|| panic!("no listen session line:\n{text}"));
    assert!(
        listen.starts_with("FAIL")
            && listen.contains("cannot execute LISTEN during recovery")
            && listen.contains("target_session_attrs=read-write"),
        "{text}"
    );
    let daemon = Daemon::start(&config);
    let hint_line = || {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains("LISTEN connection failed"))
            .map(str::to_string)
    };
    wait_for(
        Duration::from_secs(20),
        "the LISTEN failure to be logged",
        || async { hint_line().is_some() },
    )
    .await;
    let line = hint_line().unwrap();
    println!("{listen}\n{line}");
    assert!(
        line.contains("cannot execute LISTEN during recovery")
            && line.contains("target_session_attrs=read-write")
            && line.contains(&format!("127.0.0.1:{}", standby.port)),
        "{line}"
    );
    let log = daemon.log_text();
    assert!(
        !log.contains("LISTEN connection lost"),
        "no connection was ever made, none was lost:\n{log}"
    );
    assert_eq!(daemon.get("/readyz").0, 503);
}
