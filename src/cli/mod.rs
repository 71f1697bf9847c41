//! The command line: `run`, `check`, `refresh`, `demo`.

pub mod cluster;
pub mod demo;
pub mod init;
pub mod logging;
pub mod status;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cli::logging::LogFormat;
use crate::config::{Config, ViewConfig, DEFAULT_CONFIG_PATH};
use crate::pg::catalog::{self, Verdict};
use crate::pg::connect::ConnectInfo;
use crate::pg::ident::QualifiedName;
use crate::pg::refresh;

/// Exit code: everything fine.
pub const EXIT_OK: u8 = 0;
/// Exit code: problems found, a refresh failed, or a fatal runtime error.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code: the configuration is unreadable or invalid.
pub const EXIT_CONFIG: u8 = 2;

/// Keeps PostgreSQL materialized views fresh.
#[derive(Debug, Parser)]
#[command(name = "refreshd", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter when `RUST_LOG` is not set: the demo keeps the terminal for its
    /// own summary lines.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo { .. } => crate::cli::demo::LOG_FILTER,
            _ => crate::cli::logging::DEFAULT_FILTER,
        }
    }
}

/// `-c FILE`, shared by the commands that read a configuration.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(short = 'c', long = "config", env = "REFRESHD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: LISTEN, coalesce, refresh, serve metrics.
    Run(ConfigArg),
    /// Start a throwaway PostgreSQL with the seeds' schemas and data, and keep its views
    /// fresh while a stream of writes changes them (Ctrl-C stops and cleans up).
    Demo {
        /// Where /metrics, /status and POST /refresh are served.
        #[arg(long, default_value = "127.0.0.1:9648")]
        listen: std::net::SocketAddr,
        /// Data scale: 1 puts about a million attendance rows behind the attendance view.
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
        /// Pause between two small write transactions.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        write_every: Duration,
    },
    /// Validate the configuration, connect, and check every view against the catalog.
    Check(ConfigArg),
    /// Refresh views now, once, and print each duration.
    Refresh {
        #[command(flatten)]
        config: ConfigArg,
        /// Refresh every configured view.
        #[arg(long, conflicts_with = "views")]
        all: bool,
        /// Views to refresh (schema.view), as named in the configuration.
        #[arg(required_unless_present = "all")]
        views: Vec<String>,
    },
    /// Read an existing database's catalog and print a configuration for every
    /// materialized view (and, with --sql, the NOTIFY triggers they need). Changes nothing
    /// unless --apply.
    Init {
        /// The database (postgresql://user@host:port/db or key=value pairs).
        #[arg(long)]
        url: String,
        /// Only views in these schemas (repeatable); default every user schema.
        #[arg(long = "schema")]
        schemas: Vec<String>,
        /// Write install and rollback SQL for the triggers into this directory.
        #[arg(long = "sql")]
        sql: Option<PathBuf>,
        /// Apply that SQL (change capture and refreshd's schema) in one transaction,
        /// idempotently.
        #[arg(long)]
        apply: bool,
        /// Derive incremental maintenance for this materialized view (schema.view,
        /// repeatable), report it in the configuration's comments and convert it to a
        /// keyed view (<view>_live and <view>_def; the SQL is written by --sql, applied
        /// by --apply).
        #[arg(long = "keyed", value_name = "VIEW", value_parser = parse_view_name)]
        keyed: Vec<QualifiedName>,
        /// Convert the --keyed views in place: each materialized view becomes a table of
        /// the same name, columns, indexes and grants (rollback restores it).
        #[arg(long = "in-place", requires = "keyed")]
        in_place: bool,
    },
    /// Ask a running daemon how its views are: one line per view (exit 1 if one is
    /// failing, 2 if the daemon cannot be reached).
    Status {
        /// The daemon's HTTP address.
        #[arg(long, default_value = crate::cli::status::DEFAULT_URL)]
        url: String,
    },
}

/// `--keyed VIEW`: a schema-qualified name, parsed like the configuration's names.
fn parse_view_name(s: &str) -> Result<QualifiedName, String> {
    QualifiedName::parse(s).map_err(|e| e.to_string())
}

/// Runs a parsed command line; returns the exit code.
pub async fn dispatch(cli: Cli) -> u8 {
    match cli.command {
        Command::Run(c) => run(&c.config).await,
        Command::Demo {
            listen,
            scale,
            write_every,
        } => {
            let opts = crate::cli::demo::DemoOptions {
                listen,
                scale,
                write_every,
            };
            match with_shutdown(|shutdown| crate::cli::demo::run(opts, shutdown)).await {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("refreshd demo: {e:#}");
                    EXIT_PROBLEMS
                }
            }
        }
        Command::Check(c) => check(&c.config).await,
        Command::Refresh { config, all, views } => refresh_cmd(&config.config, all, &views).await,
        Command::Status { url } => crate::cli::status::run(&url).await,
        Command::Init {
            url,
            schemas,
            sql,
            apply,
            keyed,
            in_place,
        } => {
            let opts = crate::cli::init::Options {
                schemas: &schemas,
                sql_dir: sql.as_deref(),
                apply,
                keyed: &keyed,
                in_place,
            };
            crate::cli::init::run(&url, &opts).await
        }
    }
}

/// Prints one line for a person on stdout. Control and invisible characters (in a name
/// from the catalog, in a server's message) are escaped, so it stays one line; a closed
/// stdout (`refreshd check | head -1`) ends the process quietly.
pub fn say(line: &str) {
    let mut text = crate::pg::ident::escape_line(line).into_owned();
    text.push('\n');
    emit(&text);
}

/// Writes `text` to stdout as it is (the caller made every line safe). A closed pipe
/// ends the process quietly with exit code 0, as a reader that stopped reading wants
/// (the way `head` and `grep -q` are used); any other write error exits 1.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(EXIT_OK));
        }
        eprintln!("refreshd: cannot write to stdout: {e}");
        std::process::exit(i32::from(EXIT_PROBLEMS));
    }
}

/// Loads the config or prints why not.
pub fn load_config(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("refreshd: invalid configuration: {e}");
        EXIT_CONFIG
    })
}

/// The directory relative paths in the config (password_file, sslrootcert) start from.
pub fn config_dir(config: &Config) -> PathBuf {
    config.dir()
}

/// Connects for a one-shot command: exit code 2 when the settings cannot be resolved
/// (a missing env var, an unreadable password file), 1 when the server cannot be reached.
async fn connect(config: &Config) -> Result<(ConnectInfo, tokio_postgres::Client), (u8, String)> {
    let info = ConnectInfo::for_refresh(&config.database, &config_dir(config))
        .map_err(|e| (EXIT_CONFIG, e.to_string()))?;
    let client = info
        .connect()
        .await
        .map_err(|e| (EXIT_PROBLEMS, e.to_string()))?;
    Ok((info, client))
}

async fn check(path: &Path) -> u8 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (info, client) = match connect(&config).await {
        Ok(c) => c,
        Err((EXIT_CONFIG, e)) => {
            eprintln!("refreshd: {e}");
            return EXIT_CONFIG;
        }
        Err((code, e)) => {
            say(&format!("FAIL  database: {e}"));
            return code;
        }
    };
    let who = client
        .query_typed(
            "SELECT current_user::text, current_setting('server_version')",
            &[],
        )
        .await
        .map(|rows| {
            let r = &rows[0];
            format!(
                "as {} (PostgreSQL {})",
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            )
        })
        .unwrap_or_default();
    say(&format!(
        "config {}: {} view(s); connected to {} {who}",
        config.path.display(),
        config.views.len(),
        info.target()
    ));
    if config.views.is_empty() {
        say("WARN  no [[view]] configured: refreshd would have nothing to do");
    }
    let (mut ok, mut warn, mut fail) = (0, 0, 0);
    if !check_listen_session(&config).await {
        fail += 1;
    }
    let managed: Vec<QualifiedName> = config.views.iter().map(|v| v.name.clone()).collect();
    // Every materialized view's facts in a few queries (not a few per view).
    let plain: Vec<&ViewConfig> = config.views.iter().filter(|v| v.keyed.is_none()).collect();
    let mut facts = catalog::inspect_many(&client, &plain)
        .await
        .map(|f| f.into_iter().map(Ok).collect::<Vec<_>>())
        .unwrap_or_else(|e| {
            let e = crate::pg::connect::error_chain(&e);
            plain.iter().map(|_| Err(e.clone())).collect()
        })
        .into_iter();
    // Change capture (SPEC "Change capture"), in one query for all views: the gaps `run`
    // would report (verify: a problem) or close (managed: a warning).
    let checked: Vec<&ViewConfig> = config
        .views
        .iter()
        .filter(|v| crate::engine::capture::checked(v))
        .collect();
    let names: Vec<QualifiedName> = checked.iter().map(|v| v.name.clone()).collect();
    let mut capture_gaps: std::collections::HashMap<QualifiedName, Vec<String>> =
        Default::default();
    if let Ok(f) = crate::pg::capture::inspect(&client, &names).await {
        for (v, tables) in checked.iter().zip(&f.views) {
            if let Some(tables) = tables {
                let verdict = crate::engine::capture::judge(&v.channels, tables, None);
                capture_gaps.insert(
                    v.name.clone(),
                    verdict
                        .gaps
                        .iter()
                        .map(|g| format!("{}: {}", g.table, g.why))
                        .collect(),
                );
            }
        }
    }
    for view in &config.views {
        let report = match &view.keyed {
            Some(keyed) => crate::pg::keyed_check::judge_keyed(&client, view, keyed)
                .await
                .map_err(|e| e.to_string()),
            None => facts
                .next()
                .expect("one per plain view")
                .map(|facts| {
                    let mut r = catalog::judge(view, facts.as_ref(), &managed);
                    let gaps = capture_gaps.remove(&view.name).unwrap_or_default();
                    if !gaps.is_empty() {
                        if view.capture == crate::config::Capture::Managed {
                            r.warnings.push(format!("change capture incomplete ({}); capture = \"managed\": run installs the missing trigger(s)", gaps.join(", ")));
                        } else {
                            r.problems.push(format!("change capture incomplete: {} (refreshd init --apply, or capture = \"managed\")", gaps.join(", ")));
                        }
                        r.verdict = if r.problems.is_empty() {
                            r.verdict.max(Verdict::Warn)
                        } else {
                            Verdict::Fail
                        };
                    }
                    r
                }),
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                say(&format!(
                    "FAIL  {}: cannot inspect the catalog: {e}",
                    view.name.shown()
                ));
                fail += 1;
                continue;
            }
        };
        let mut line = String::new();
        let _ = write!(
            line,
            "{:<5} {}: ",
            match report.verdict {
                Verdict::Ok => "OK",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            },
            view.name.shown()
        );
        let mut parts: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("PROBLEM {p}"))
            .collect();
        parts.extend(report.warnings.iter().map(|w| format!("warning: {w}")));
        parts.extend(report.facts.iter().cloned());
        line.push_str(&parts.join("; "));
        say(&line);
        match report.verdict {
            Verdict::Ok => ok += 1,
            Verdict::Warn => warn += 1,
            Verdict::Fail => fail += 1,
        }
    }
    // The order refreshd keeps: a view is refreshed after the views it reads.
    if let Ok(reads) = crate::engine::startup::dependency_graph(&client, &config.views).await {
        for (i, r) in reads.iter().enumerate() {
            if !r.is_empty() {
                let lower: Vec<String> = r.iter().map(|&l| config.views[l].name.shown()).collect();
                say(&format!(
                    "graph {} is refreshed after {}",
                    config.views[i].name.shown(),
                    lower.join(", ")
                ));
            }
        }
    }
    say(&format!(
        "{} view(s): {ok} ok, {warn} with warnings, {fail} with problems",
        config.views.len()
    ));
    if fail > 0 {
        EXIT_PROBLEMS
    } else {
        EXIT_OK
    }
}

/// The LISTEN session's proof, as `run` does it; prints one line.
async fn check_listen_session(config: &Config) -> bool {
    let listen = match ConnectInfo::for_listen(&config.database, &config_dir(config)) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("FAIL  listen session: {e}"));
            return false;
        }
    };
    match crate::engine::session::prove(&listen, config.database.connect_timeout).await {
        Ok(rtt) => {
            say(&format!(
                "OK    listen session {}: a real session (test notification in {:.1} ms)",
                listen.target(),
                rtt.as_secs_f64() * 1000.0
            ));
            true
        }
        Err(e) => {
            say(&format!("FAIL  listen session {}: {e}", listen.target()));
            false
        }
    }
}

fn resolve_views<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a ViewConfig>, String> {
    let mut out = Vec::new();
    for n in names {
        let parsed = QualifiedName::parse(n).map_err(|e| format!("{n:?}: {e}"))?;
        match config.view(&parsed) {
            Some(v) => out.push(v),
            None => {
                let known: Vec<String> = config.views.iter().map(|v| v.name.to_string()).collect();
                return Err(format!(
                    "unknown view {parsed}: not in {} (configured: {})",
                    config.path.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
    }
    Ok(out)
}

/// Formats a duration for people: `12.3 ms`, `4.56 s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

async fn refresh_cmd(path: &Path, all: bool, names: &[String]) -> u8 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let views = if all {
        config.views.iter().collect()
    } else {
        match resolve_views(&config, names) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("refreshd: {e}");
                return EXIT_PROBLEMS;
            }
        }
    };
    let client = match connect(&config).await {
        Ok((_, c)) => c,
        Err((code, e)) => {
            eprintln!("refreshd: {e}");
            return code;
        }
    };
    // Lower views before the views that read them.
    let views = match crate::engine::startup::dependency_graph(&client, &config.views).await {
        Ok(reads) => {
            let order = crate::engine::startup::topological_order(&reads);
            order
                .into_iter()
                .map(|i| &config.views[i])
                .filter(|v| views.iter().any(|s| s.name == v.name))
                .collect::<Vec<_>>()
        }
        Err(e) => {
            eprintln!(
                "refreshd: cannot read the dependency graph ({e:#}); refreshing in the order given"
            );
            views
        }
    };
    let mut failed = 0;
    for view in &views {
        match refresh::refresh_one(&client, view, None, config.events).await {
            Ok(r) => say(&format!(
                "{}: refreshed ({}) in {}",
                view.name.shown(),
                r.kind.as_str(),
                human(r.duration)
            )),
            Err(e) => {
                failed += 1;
                say(&format!(
                    "{}: FAILED after {}: {e}",
                    view.name.shown(),
                    human(e.duration)
                ));
            }
        }
    }
    if failed > 0 {
        eprintln!("refreshd: {failed} of {} refresh(es) failed", views.len());
        EXIT_PROBLEMS
    } else {
        EXIT_OK
    }
}

/// Runs `f` with a token cancelled by SIGTERM or SIGINT.
async fn with_shutdown<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use tokio::signal::unix::{signal, SignalKind};
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
        token.cancel();
    });
    f(shutdown).await
}

async fn run(path: &Path) -> u8 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = path.to_path_buf();
    match with_shutdown(|shutdown| crate::engine::core::run(config, path, shutdown)).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fatal");
            eprintln!("refreshd: {e:#}");
            EXIT_PROBLEMS
        }
    }
}
