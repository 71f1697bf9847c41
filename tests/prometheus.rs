//! A real Prometheus (`/usr/bin/prometheus`, or `$PROMETHEUS`) scrapes a running
//! refreshd; its HTTP API must see the refresh counter and be able to compute a
//! duration quantile from the histogram, as the dashboard and alerts do.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{free_port, http, sample, wait_for, Daemon, TestDb};

const VIEW: &str = "public.prom_totals";

/// Prometheus as a child process on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: refreshd\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin} (apt-get install prometheus): {e}"));
        Prometheus {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// GET as HTTP/1.0, so the answer is never chunked: (status, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let status = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    }

    /// `/api/v1/query` for an instant vector: the result array (empty on any failure).
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let Some((200, body)) = self.get(&format!("/api/v1/query?query={}", encode(promql))) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        assert_eq!(v["status"], "success", "{body}");
        assert_eq!(v["data"]["resultType"], "vector", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single sample's value of an instant query, if there is exactly one.
    fn scalar(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log_text());
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_counters_and_histograms() {
    let db = TestDb::new();
    prom_schema(&db);
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"{VIEW}\"\nchannels = [\"prom_changed\"]\ndebounce = \"0s\"\n",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;

    let prom = Prometheus::start(d.port);
    wait_for(
        Duration::from_secs(30),
        "Prometheus to be ready",
        || async { matches!(prom.get("/-/ready"), Some((200, _))) },
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "Prometheus to scrape refreshd (up == 1)",
        || async { prom.scalar("up{job=\"refreshd\"}") == Some(1.0) },
    )
    .await;

    let p90 = p90_while_refreshing(&d, &prom, &db).await;
    // The histogram's buckets bound the answer: a refresh of a 5-row view is fast.
    assert!(p90 > 0.0 && p90 < 10.0, "p90 = {p90}");

    // The counter is there, labelled as the contract says, and agrees with /metrics
    // (Prometheus may lag the live value by a scrape or two, never lead it).
    let series = prom.query("refreshd_refreshes_total{job=\"refreshd\",outcome=\"success\"}");
    assert!(
        !series.is_empty(),
        "no refreshd_refreshes_total in Prometheus"
    );
    let reasons: Vec<&str> = series
        .iter()
        .map(|s| {
            assert_eq!(s["metric"]["view"], VIEW, "{s}");
            s["metric"]["reason"].as_str().unwrap()
        })
        .collect();
    for r in ["startup", "force", "notify"] {
        assert!(reasons.contains(&r), "reason {r} missing from {reasons:?}");
    }
    let scraped: f64 = series
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    let live = d.successes(VIEW);
    assert!(
        scraped >= 3.0 && scraped <= live,
        "scraped {scraped}, live {live}"
    );

    // The same sort of expressions the dashboard and the alerts use evaluate.
    let leader = sample(&d.metrics(), "refreshd_leader");
    assert_eq!(leader, Some(1.0));
    assert_eq!(prom.scalar("sum(refreshd_leader)"), Some(1.0));
    assert!(prom
        .scalar("sum(rate(refreshd_refresh_lag_seconds_count[1m]))")
        .is_some_and(|v| v > 0.0));
}

/// `public.prom_src` with a NOTIFY trigger on `prom_changed`, and `public.prom_totals`.
fn prom_schema(db: &TestDb) {
    db.psql(
        r#"
        CREATE TABLE public.prom_src (id bigserial PRIMARY KEY, bucket int NOT NULL);
        INSERT INTO public.prom_src (bucket) SELECT g % 5 FROM generate_series(1, 100) g;
        CREATE FUNCTION public.notify_prom() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN PERFORM pg_notify('prom_changed', ''); RETURN NULL; END$$;
        CREATE TRIGGER prom_notify AFTER INSERT OR UPDATE OR DELETE ON public.prom_src
          FOR EACH STATEMENT EXECUTE FUNCTION public.notify_prom();
        CREATE MATERIALIZED VIEW public.prom_totals AS
          SELECT bucket, count(*) AS n FROM public.prom_src GROUP BY bucket;
        CREATE UNIQUE INDEX ON public.prom_totals (bucket);
        "#,
    );
}

/// Refreshes while Prometheus scrapes every second, so rate() has increases to see:
/// writes (NOTIFY, debounce 0s) and forced refreshes over POST /refresh, alternating,
/// until the quantile is a number. Each round waits for its refresh to be counted.
/// The p90 refresh duration Prometheus computes.
async fn p90_while_refreshing(d: &Daemon, prom: &Prometheus, db: &TestDb) -> f64 {
    let quantile = "histogram_quantile(0.9, sum by (le) \
                    (rate(refreshd_refresh_duration_seconds_bucket{job=\"refreshd\"}[1m])))";
    let round = std::cell::Cell::new(0u32);
    let last = std::cell::Cell::new(None::<f64>);
    wait_for(
        Duration::from_secs(60),
        "a finite p90 refresh duration from Prometheus",
        || async {
            round.set(round.get() + 1);
            let before = d.successes(VIEW);
            if round.get().is_multiple_of(2) {
                db.psql(&format!(
                    "INSERT INTO public.prom_src (bucket) VALUES ({})",
                    round.get() % 5
                ));
            } else {
                let (code, body) =
                    http(d.port, "POST", &format!("/refresh/{VIEW}"), &[]).unwrap_or_default();
                assert_eq!(code, 202, "{body}");
            }
            wait_for(
                Duration::from_secs(10),
                "the refresh to be counted",
                || async { d.successes(VIEW) > before },
            )
            .await;
            last.set(prom.scalar(quantile));
            // At least one round of each kind, whatever Prometheus already has.
            round.get() >= 2 && last.get().is_some_and(f64::is_finite)
        },
    )
    .await;
    last.get().unwrap()
}
