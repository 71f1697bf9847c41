//! The daemon with `--log-format json`, and its log read back as JSON lines.

use super::Daemon;

impl Daemon {
    /// Like [`Daemon::start`], logging JSON (`--log-format json`) at debug for refreshd.
    pub fn start_json(config: &str) -> Daemon {
        Daemon::start_args(&["--log-format", "json"], config, "", &[])
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
