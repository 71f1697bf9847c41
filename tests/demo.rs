//! `refreshd demo` shows writes turning into refreshes and leaves nothing behind.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{free_port, http, sample, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn demo_refreshes_and_cleans_up_on_ctrl_c() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_refreshd"))
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--scale",
                "0.01",
                "--write-every",
                "200ms",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let notify_refreshes = || {
        let m = http(port, "GET", "/metrics", &[])
            .map(|r| r.1)
            .unwrap_or_default();
        sample(
            &m,
            "refreshd_refreshes_total{outcome=\"success\",reason=\"notify\",view=\"public.attendance_statistics_summary\"}",
        )
        .unwrap_or(0.0)
            + sample(
                &m,
                "refreshd_refreshes_total{outcome=\"success\",reason=\"notify\",view=\"core.mv_inventory_valuation\"}",
            )
            .unwrap_or(0.0)
    };
    wait_for(
        Duration::from_secs(60),
        "the demo's writes to turn into refreshes",
        || async { notify_refreshes() >= 2.0 },
    )
    .await;
    let cluster_dir = text()
        .lines()
        .find_map(|l| l.strip_prefix("refreshd demo: cluster in "))
        .and_then(|l| l.split(" on port").next())
        .map(str::to_string)
        .expect("the demo names its cluster directory");
    assert!(std::path::Path::new(&cluster_dir).exists());
    assert!(
        text().contains("refreshed view="),
        "a live line per refresh:\n{}",
        text()
    );

    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| panic!("the demo did not exit on Ctrl-C:\n{}", text()));
    assert!(status.success(), "{status:?}\n{}", text());
    assert!(
        !std::path::Path::new(&cluster_dir).exists(),
        "cluster directory left behind"
    );
    let procs = Command::new("pgrep")
        .args(["-f", &cluster_dir])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    assert!(text().contains("nothing left behind"));
}
