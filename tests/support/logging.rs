//! The daemon with `--log-format json`, and its log read back as JSON lines.

use std::process::{Command, Stdio};

use super::{free_port, Daemon};

impl Daemon {
    /// Like [`Daemon::start`], logging JSON (`--log-format json`) at debug for refreshd.
    pub fn start_json(config: &str) -> Daemon {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refreshd.toml");
        std::fs::write(
            &path,
            format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .unwrap();
        let log = dir.path().join("refreshd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_refreshd"))
            .args(["--log-format", "json", "run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "refreshd=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn refreshd");
        Daemon {
            child,
            port,
            log,
            config: path,
            _dir: dir,
        }
    }

    /// Every line of the log parsed as JSON (a line that is not JSON fails the test).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }
}
