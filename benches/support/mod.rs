//! Helpers for the benchmark harness: the refreshd child process, its HTTP endpoints,
//! /proc accounting, and small statistics. (A directory module, so Cargo does not take
//! it for a benchmark target of its own.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages, as "a / b / c".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|_| "?".into())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile; NaN for no samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// PostgreSQL's extension library directory (where pg_cron.so would be).
pub fn pkglibdir() -> Option<PathBuf> {
    let bin = refreshd::cli::cluster::find_bin_dir().ok()?;
    let out = std::process::Command::new(bin.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .or_else(|_| {
            std::process::Command::new("pg_config")
                .arg("--pkglibdir")
                .output()
        })
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// One `[[view]]` of a generated config.
#[derive(Clone)]
pub struct ViewCfg {
    name: String,
    channel: String,
    debounce: String,
    max_delay: String,
    /// Extra `[[view]]` lines, e.g. `detect = "statistics"`.
    extra: String,
}

impl ViewCfg {
    pub fn new(name: &str, channel: &str, debounce: &str, max_delay: &str) -> ViewCfg {
        ViewCfg {
            name: name.into(),
            channel: channel.into(),
            debounce: debounce.into(),
            max_delay: max_delay.into(),
            extra: String::new(),
        }
    }

    /// A view that learns of changes from table statistics (`detect = "statistics"`),
    /// with no channel: no trigger is involved.
    pub fn statistics(name: &str, poll_interval: &str, debounce: &str, max_delay: &str) -> ViewCfg {
        ViewCfg {
            name: name.into(),
            channel: String::new(),
            debounce: debounce.into(),
            max_delay: max_delay.into(),
            extra: format!("detect = \"statistics\"\npoll_interval = \"{poll_interval}\"\n"),
        }
    }

    /// The same view with more `[[view]]` lines, e.g. `max_load = "25%"`.
    /// The same view with another debounce.
    pub fn with_debounce(mut self, debounce: &str) -> ViewCfg {
        self.debounce = debounce.into();
        self
    }

    pub fn with_extra(mut self, lines: &str) -> ViewCfg {
        self.extra.push_str(lines);
        self
    }

    /// A statistics view whose debounce is long enough (a minute or more) that a
    /// pending refresh does not start during a measurement.
    fn parks(&self) -> bool {
        self.extra.contains("detect = \"statistics\"")
            && humantime::parse_duration(&self.debounce).is_ok_and(|d| d >= Duration::from_secs(60))
    }

    /// A keyed view (`kind = "keyed"`): the table `name` kept equal to the plain view
    /// `query`, group by group, from the keys notified on `channel`.
    pub fn keyed(
        name: &str,
        query: &str,
        key: &[&str],
        channel: &str,
        debounce: &str,
        max_delay: &str,
    ) -> ViewCfg {
        let key: Vec<String> = key.iter().map(|k| format!("\"{k}\"")).collect();
        ViewCfg {
            name: name.into(),
            channel: channel.into(),
            debounce: debounce.into(),
            max_delay: max_delay.into(),
            extra: format!(
                "kind = \"keyed\"\nquery = \"{query}\"\nkey = [{}]\n",
                key.join(", ")
            ),
        }
    }
}

/// The real release binary as a child process, with its own config and log file.
pub struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

/// Built by Cargo for benches alongside this harness (the `bench` profile inherits
/// `release`, so this is target/release/refreshd).
const BIN: &str = env!("CARGO_BIN_EXE_refreshd");

/// The copy of [`BIN`] every daemon of this run starts, once [`pin_binary`] made it.
static PINNED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs refreshd binary `bin` with `args` (`init ...`, say) as a user would: its stdout
/// (the config `init` prints) and stderr (what it said); an error with that stderr when
/// it fails.
pub async fn run_refreshd<S: AsRef<std::ffi::OsStr>>(
    bin: &std::path::Path,
    args: &[S],
) -> Result<(String, String)> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "refreshd {} failed: {stderr}",
            args.first()
                .map_or(String::new(), |a| a.as_ref().to_string_lossy().into_owned())
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), stderr))
}

/// Copies target/release/refreshd to a private directory and starts every daemon of
/// the run from that copy: a `cargo build --release` elsewhere on the machine (tests
/// run meanwhile) would otherwise swap the binary in the middle of a run. The copy
/// lives as long as the returned directory.
pub fn pin_binary() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("refreshd-bench-bin-")
        .tempdir()?;
    let copy = dir.path().join("refreshd");
    std::fs::copy(BIN, &copy).with_context(|| format!("copy {BIN}"))?;
    let _ = PINNED.set(copy);
    Ok(dir)
}

fn bin() -> PathBuf {
    PINNED.get().cloned().unwrap_or_else(|| PathBuf::from(BIN))
}

/// One `refreshed` line of refreshd's JSON log.
#[derive(Clone, Debug)]
pub struct LogRefresh {
    pub view: String,
    pub reason: String,
    /// `refresh`, `keyed_keys`, `keyed_all`, ... (refreshd's `kind` field).
    pub kind: String,
    pub duration_ms: f64,
    pub lag_ms: f64,
}

impl Daemon {
    /// Starts `refreshd run` and waits until it is ready and every view has finished
    /// its startup refresh, so measurements never include start-up work.
    pub async fn start(dsn: &str, views: &[ViewCfg], tag: &str) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("refreshd-bench-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cfg = format!(
            "shutdown_timeout = \"10s\"\n[database]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            dsn.replace('"', "\\\"")
        );
        for v in views {
            let channels = if v.channel.is_empty() {
                String::new()
            } else {
                format!("\"{}\"", v.channel)
            };
            cfg += &format!(
                "\n[[view]]\nname = \"{}\"\nchannels = [{channels}]\ndebounce = \"{}\"\nmax_delay = \"{}\"\n{}",
                v.name, v.debounce, v.max_delay, v.extra
            );
        }
        let cfg_path = dir.path().join("refreshd.toml");
        std::fs::write(&cfg_path, cfg)?;
        let log = std::fs::File::create(dir.path().join("refreshd.log"))?;
        let child = tokio::process::Command::new(bin())
            // JSON logs so the harness can read each refresh's duration back.
            .args(["--log-format", "json", "run", "-c"])
            .arg(&cfg_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin().display()))?;
        let pid = child.id().context("refreshd pid")?;
        let d = Daemon {
            child,
            pid,
            port,
            started: Instant::now(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        loop {
            if Instant::now() > deadline {
                bail!(
                    "refreshd ({tag}) not ready; last /status: {last}\nlog:\n{}",
                    d.log()
                );
            }
            if let Ok(s) = d.get("/status").await {
                last = s.clone();
                // Idle: done with startup. A statistics view's detector counts its
                // first reading as a change; when that reading lands after the startup
                // refresh began, the view stays pending for its debounce, which with
                // an hour-long debounce (the write-path runs) means no work before
                // the run is over, so pending is settled enough there.
                let idle = s.matches("\"state\":\"idle\"").count();
                let parked = s.matches("\"state\":\"pending\"").count();
                let may_park = views.iter().filter(|v| v.parks()).count();
                let ok = s.matches("\"last_outcome\":\"success\"").count();
                if s.contains("\"ready\":true")
                    && idle + parked.min(may_park) == views.len()
                    && ok == views.len()
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress(&format!("refreshd ({tag}) pid {} ready on :{port}", d.pid));
        Ok(d)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("refreshd.log")).unwrap_or_default()
    }

    /// A bare HTTP/1.0 GET (no client library needed for two plain-text endpoints).
    pub async fn get(&self, path: &str) -> Result<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("bad HTTP answer")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_string())
    }

    /// `duration_ms` of every successful refresh with this reason, from the JSON log.
    pub fn refresh_durations_ms(&self, reason: &str) -> Vec<f64> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                // refreshd's JSON logs put the event's fields at the top level
                // (`flatten_event`); older layouts nest them under "fields".
                let f = v.get("fields").unwrap_or(&v);
                // The view and the reason are the `refresh` span's fields.
                let r = f
                    .get("reason")
                    .or_else(|| v.get("span")?.get("reason"))?
                    .as_str()?;
                (f.get("message")?.as_str()? == "refreshed" && r == reason)
                    .then(|| f.get("duration_ms")?.as_f64())?
            })
            .collect()
    }

    /// Every successful refresh in the JSON log, in order.
    pub fn refresh_log(&self) -> Vec<LogRefresh> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let f = v.get("fields").unwrap_or(&v);
                if f.get("message")?.as_str()? != "refreshed" {
                    return None;
                }
                // The view and the reason are the `refresh` span's fields (the JSON
                // log's "span"); older layouts had them on the event.
                let text = |k: &str| {
                    f.get(k)
                        .or_else(|| v.get("span").and_then(|s| s.get(k)))
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                Some(LogRefresh {
                    view: text("view"),
                    reason: text("reason"),
                    kind: text("kind"),
                    duration_ms: f.get("duration_ms")?.as_f64()?,
                    lag_ms: f.get("lag_ms").and_then(|x| x.as_f64()).unwrap_or(f64::NAN),
                })
            })
            .collect()
    }

    pub async fn metrics(&self) -> Result<String> {
        self.get("/metrics").await
    }

    /// utime + stime from /proc/PID/stat, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the ")" that closes the command name; utime and stime are the
        // 14th and 15th fields of the whole line.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
        ticks as f64 / clk_tck()
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then wait for the clean exit.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Sum of the samples of metric `name` whose labels mention `filter`.
pub fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The smallest sample; +∞ for none.
pub fn min_of(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

/// The largest sample, at least 0.
pub fn max_of(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

/// "median (min–max)" of the samples, one decimal.
pub fn median_min_max(v: &[f64]) -> String {
    format!("{:.1} ({:.1}–{:.1})", median(v), min_of(v), max_of(v))
}

/// The CPUs this process may use (0 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// " `--quick`" when the run is a quick one, else nothing (for the mode row).
pub fn quick_flag(quick: bool) -> &'static str {
    if quick {
        " `--quick`"
    } else {
        ""
    }
}

/// The "run" table every mode prints first: its heading, the two-column table head and
/// the mode row; add the other rows with [`run_row`].
pub fn run_table_head(heading: &str, mode: &str) -> String {
    format!("## {heading}\n\n| | |\n|---|---|\n| mode | {mode} |\n")
}

/// One row of the "run" table.
pub fn run_row(key: &str, value: &str) -> String {
    format!("| {key} | {value} |\n")
}

/// The run table's "host" row: cores, the load average at start and end, and the 1-min
/// load after each sample (`each`: "sample", "run", ...).
pub fn host_row(load_start: &str, load_end: &str, each: &str, loads: &[f64]) -> String {
    run_row(
        "host",
        &format!(
            "{} cores; load average (1/5/15 min) at start {load_start}, at end {load_end}; 1-min load after each {each}: median {:.1}, max {:.1}",
            cores(),
            median(loads),
            max_of(loads)
        ),
    )
}

/// The run table's "harness wall time" row, in minutes.
pub fn wall_time_row(total: Duration) -> String {
    run_row(
        "harness wall time",
        &format!("{:.1} min", total.as_secs_f64() / 60.0),
    )
}

/// What `refreshd init` said, as a fenced block after the run table.
pub fn init_said(lines: &[String]) -> String {
    let mut o = String::from("\n`refreshd init` said:\n\n```\n");
    for l in lines {
        o += l;
        o += "\n";
    }
    o += "```\n";
    o
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A connection that counts the notifications it receives (LISTEN on it), the counter,
/// and the task reading them (abort it when done).
pub async fn counting_listener(
    dsn: &str,
) -> Result<(
    tokio_postgres::Client,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
)> {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let (client, mut conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let task = tokio::spawn(async move {
        let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = msgs.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                c2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok((client, count, task))
}

/// Which tree the daemon was built from (other work may edit it meanwhile).
pub fn build_line() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "target/release/refreshd (copied at start), built from HEAD {} with {} uncommitted file(s) under src/",
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain", "--", "src"]).lines().count()
    )
}

/// The 1-minute load average; NaN when unreadable.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}
