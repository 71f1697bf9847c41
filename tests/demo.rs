//! `refreshd demo` shows writes turning into refreshes, keeps the terminal quiet, and
//! leaves nothing behind however it ends.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, http, sample, wait_for};

/// The demo as a child process (stderr to `log`), killed when dropped.
struct Demo {
    child: Child,
    log: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(port: u16) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("demo.log");
        let child = Command::new(env!("CARGO_BIN_EXE_refreshd"))
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--scale",
                "0.01",
                "--write-every",
                "200ms",
            ])
            // The demo's own default log filter, as a person gets it.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Demo {
            child,
            log,
            port,
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn notify_refreshes(&self) -> f64 {
        let m = http(self.port, "GET", "/metrics", &[])
            .map(|r| r.1)
            .unwrap_or_default();
        [
            "public.attendance_statistics_summary",
            "core.mv_inventory_valuation",
        ]
        .iter()
        .filter_map(|v| {
            sample(
                &m,
                &format!("refreshd_refreshes_total{{outcome=\"success\",reason=\"notify\",view=\"{v}\"}}"),
            )
        })
        .sum()
    }

    /// Waits (60 s at most, the demo's cluster and data included) for two refreshes
    /// caused by its writes; a timeout shows the demo's log.
    async fn wait_refreshing(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.notify_refreshes() < 2.0 {
            assert!(
                Instant::now() < deadline,
                "timed out after 60s waiting for the demo's writes to turn into refreshes; its log:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn cluster_dir(&self) -> String {
        let dir = self
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("refreshd demo: cluster in "))
            .and_then(|l| l.split(" on port").next())
            .map(str::to_string)
            .expect("the demo names its cluster directory");
        assert!(Path::new(&dir).exists());
        dir
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Waits (15 s at most) for the demo to exit: its status.
    fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the demo did not exit on {what}:\n{}", self.text());
    }

    /// Exit 0, the cluster directory gone, no process of it left.
    fn assert_cleaned_up(&mut self, cluster_dir: &str, what: &str) {
        let status = self.wait_exit(what);
        assert!(status.success(), "{status:?}\n{}", self.text());
        assert!(
            !Path::new(cluster_dir).exists(),
            "cluster directory left behind"
        );
        let procs = Command::new("pgrep")
            .args(["-f", cluster_dir])
            .output()
            .unwrap();
        assert!(
            procs.stdout.is_empty(),
            "processes left behind: {}",
            String::from_utf8_lossy(&procs.stdout)
        );
        assert!(
            self.text().contains("nothing left behind"),
            "{}",
            self.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_refreshes_and_cleans_up_on_ctrl_c() {
    let mut demo = Demo::start(free_port());
    demo.wait_refreshing().await;
    let cluster_dir = demo.cluster_dir();
    let text = demo.text();
    assert!(
        text.lines().any(|l| l.contains("watch the data: ")
            && l.contains("psql")
            && l.contains("postgresql://postgres@127.0.0.1:")),
        "the psql command to watch the data:\n{text}"
    );
    // The summary line every 15 s stands alone: the per-refresh lines are not shown.
    wait_for(Duration::from_secs(30), "a summary line", || async {
        demo.text().contains("refreshd demo: last 15 s: ")
    })
    .await;
    let text = demo.text();
    let summary = text
        .lines()
        .find(|l| l.contains("refreshd demo: last 15 s: "))
        .unwrap();
    assert!(
        summary.contains(" writes, ") && summary.contains(" across 5 views"),
        "{summary}"
    );
    assert!(
        !text.contains(": refreshed "),
        "per-refresh lines flood the terminal:\n{text}"
    );
    assert!(text.lines().count() < 25, "{text}");

    demo.signal("INT");
    demo.assert_cleaned_up(&cluster_dir, "Ctrl-C");
}

/// Closing the terminal sends SIGHUP: the demo ends as on Ctrl-C.
#[tokio::test(flavor = "multi_thread")]
async fn demo_ends_on_sighup_and_cleans_up() {
    let mut demo = Demo::start(free_port());
    demo.wait_refreshing().await;
    let cluster_dir = demo.cluster_dir();
    demo.signal("HUP");
    demo.assert_cleaned_up(&cluster_dir, "SIGHUP");
    assert!(
        !demo.text().contains("ERROR"),
        "SIGHUP is no error:\n{}",
        demo.text()
    );
}

/// A busy `--listen` port fails at once, before any cluster is made.
#[test]
fn demo_on_a_busy_port_fails_before_building_the_cluster() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let started = Instant::now();
    let mut demo = Demo::start(port);
    let status = demo.wait_exit("a busy port");
    let took = started.elapsed();
    let text = demo.text();
    assert!(!status.success(), "{text}");
    assert!(took < Duration::from_secs(2), "took {took:?}:\n{text}");
    assert!(
        text.contains(&format!("--listen 127.0.0.1:{port}"))
            && text.contains("nothing was started"),
        "{text}"
    );
    assert!(!text.contains("cluster"), "no cluster was started:\n{text}");
    drop(busy);
}
