//! The command line: `run`, `check`, `refresh`, `demo`.

pub mod cluster;
pub mod demo;
pub mod init;
pub mod logging;
pub mod status;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cli::logging::LogFormat;
use crate::config::{Config, ViewConfig, DEFAULT_CONFIG_PATH};
use crate::pg::catalog::{self, Verdict};
use crate::pg::connect::ConnectInfo;
use crate::pg::connect::DbError;
use crate::pg::ident::{IdentError, QualifiedName};
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
fn parse_view_name(s: &str) -> Result<QualifiedName, IdentError> {
    QualifiedName::parse(s)
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

/// Why a one-shot command could not connect.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The settings cannot be resolved (a missing env var, an unreadable password file).
    #[error(transparent)]
    Settings(DbError),
    /// The server cannot be reached.
    #[error(transparent)]
    Server(DbError),
}

impl ConnectError {
    /// Exit code 2 for the settings, 1 for the server.
    fn exit_code(&self) -> u8 {
        match self {
            ConnectError::Settings(_) => EXIT_CONFIG,
            ConnectError::Server(_) => EXIT_PROBLEMS,
        }
    }
}

/// Connects for a one-shot command.
async fn connect(config: &Config) -> Result<(ConnectInfo, tokio_postgres::Client), ConnectError> {
    let info = ConnectInfo::for_refresh(&config.database, &config_dir(config))
        .map_err(ConnectError::Settings)?;
    let client = info.connect().await.map_err(ConnectError::Server)?;
    Ok((info, client))
}

async fn check(path: &Path) -> u8 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A `listen_url` that cannot be resolved is a bad configuration, as `url` is (it
    // was a FAIL line and exit 1: a conformance review, 2026-12-05).
    if let Err(e) = ConnectInfo::for_listen(&config.database, &config_dir(&config)) {
        eprintln!(
            "refreshd: invalid configuration: {}: database.listen_url: {e}",
            config.path.display()
        );
        return EXIT_CONFIG;
    }
    let (info, client) = match connect(&config).await {
        Ok(c) => c,
        Err(e @ ConnectError::Settings(_)) => {
            eprintln!("refreshd: {e}");
            return e.exit_code();
        }
        Err(e @ ConnectError::Server(_)) => {
            say(&format!("FAIL  database: {e}"));
            return e.exit_code();
        }
    };
    say_connected(&config, &info, &client).await;
    let mut tally = Tally::default();
    if !check_listen_session(&config).await {
        tally.fail += 1;
    }
    let mut inspected = Inspected::read(&client, &config).await;
    for view in &config.views {
        match inspected.report(&client, view).await {
            Ok(report) => {
                say(&report_line(view, &report));
                tally.count(report.verdict);
            }
            Err(e) => {
                say(&format!(
                    "FAIL  {}: cannot inspect the catalog: {e}",
                    view.name.shown()
                ));
                tally.fail += 1;
            }
        }
    }
    say_graph(&client, &config).await;
    let Tally { ok, warn, fail } = tally;
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

/// `check`'s count of views per verdict.
#[derive(Default)]
struct Tally {
    ok: usize,
    warn: usize,
    fail: usize,
}

impl Tally {
    fn count(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Ok => self.ok += 1,
            Verdict::Warn => self.warn += 1,
            Verdict::Fail => self.fail += 1,
        }
    }
}

/// `check`'s first lines: the file, the server and the role; a warning when no view is
/// configured.
async fn say_connected(config: &Config, info: &ConnectInfo, client: &tokio_postgres::Client) {
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
}

/// What the catalog says about every configured view, read in a few queries (not a few
/// per view), to be judged one view at a time.
struct Inspected {
    /// One per materialized (not keyed) view, in order.
    facts: std::vec::IntoIter<Result<Option<catalog::ViewFacts>, InspectError>>,
    /// The change capture gaps `run` would report (verify: a problem) or close (managed:
    /// a warning), per view (SPEC "Change capture").
    capture_gaps: HashMap<QualifiedName, Vec<String>>,
    /// Every configured view's name.
    managed: std::collections::HashSet<QualifiedName>,
    /// How each keyed view's maintenance derives from its query (SPEC "Incremental
    /// maintenance"), one per keyed view, in order.
    derived: std::vec::IntoIter<Result<crate::pg::definitions::Derived, String>>,
}

impl Inspected {
    async fn read(client: &tokio_postgres::Client, config: &Config) -> Self {
        let plain: Vec<&ViewConfig> = config.views.iter().filter(|v| v.keyed.is_none()).collect();
        let facts = catalog::inspect_many(client, &plain)
            .await
            .map(|f| f.into_iter().map(Ok).collect::<Vec<_>>())
            .unwrap_or_else(|e| {
                let e = std::sync::Arc::new(e);
                plain
                    .iter()
                    .map(|_| Err(InspectError::Catalog(e.clone())))
                    .collect()
            })
            .into_iter();
        let keyed: Vec<crate::pg::definitions::KeyedLines> = config
            .views
            .iter()
            .filter_map(|v| v.keyed.as_ref().map(|k| (v, k)))
            .map(|(v, k)| crate::pg::definitions::KeyedLines {
                query: &k.query,
                key: k.key.as_slice(),
                table: &v.name,
                buffer: k.buffer.as_ref(),
            })
            .collect();
        let derived = match keyed.is_empty() {
            true => Vec::new(),
            false => crate::pg::definitions::derivation_lines(client, &keyed)
                .await
                .unwrap_or_else(|e| {
                    let why = format!(
                        "reading the catalog: {}",
                        crate::pg::connect::error_chain(&e)
                    );
                    keyed.iter().map(|_| Err(why.clone())).collect()
                }),
        };
        Inspected {
            facts,
            capture_gaps: capture_gaps(client, config).await,
            managed: config.views.iter().map(|v| v.name.clone()).collect(),
            derived: derived.into_iter(),
        }
    }

    /// The next view's report: a keyed view checked on its own, a materialized view's
    /// facts judged with its capture gaps. Call it for every view, in order.
    async fn report(
        &mut self,
        client: &tokio_postgres::Client,
        view: &ViewConfig,
    ) -> Result<catalog::ViewReport, InspectError> {
        let r = match &view.keyed {
            Some(keyed) => {
                // Taken first: one per keyed view, whatever the judging gives.
                let derived = self.derived.next();
                let mut r = crate::pg::keyed_check::judge_keyed(client, view, keyed)
                    .await
                    .map_err(InspectError::Keyed)?;
                if let Some(d) = derived {
                    crate::pg::keyed_check::derivation_facts(&mut r, &d);
                }
                r
            }
            None => {
                let facts = self.facts.next().expect("one per plain view")?;
                catalog::judge(view, facts.as_ref(), &self.managed)
            }
        };
        let gaps = self.capture_gaps.remove(&view.name).unwrap_or_default();
        Ok(with_capture_gaps(r, view, &gaps))
    }
}

/// Why `check` could not judge a view.
#[derive(Debug, thiserror::Error)]
enum InspectError {
    /// The catalog read of every materialized view at once failed (the same error for
    /// each of them), told with its causes.
    #[error("{}", crate::pg::connect::error_chain(.0))]
    Catalog(std::sync::Arc<tokio_postgres::Error>),
    /// A keyed view's own check failed, told with its causes.
    #[error("{}", crate::pg::connect::error_chain(.0))]
    Keyed(tokio_postgres::Error),
}

/// Change capture, in one query for all the views it is checked for: per view, each
/// table with a gap and why.
async fn capture_gaps(
    client: &tokio_postgres::Client,
    config: &Config,
) -> HashMap<QualifiedName, Vec<String>> {
    let checked: Vec<&ViewConfig> = config
        .views
        .iter()
        .filter(|v| crate::engine::capture::checked(v))
        .collect();
    let names: Vec<QualifiedName> = checked
        .iter()
        .map(|v| crate::engine::capture::checked_relation(v).clone())
        .collect();
    let configured: std::collections::HashSet<QualifiedName> =
        config.views.iter().map(|v| v.name.clone()).collect();
    let mut gaps: HashMap<QualifiedName, Vec<String>> = HashMap::new();
    if let Ok(f) = crate::pg::capture::inspect(client, &names).await {
        for (i, (v, tables)) in checked.iter().zip(&f.views).enumerate() {
            if let Some(tables) = tables {
                let keyed = v.keyed.is_some();
                let tables = crate::engine::capture::not_configured(tables, &configured);
                let mut verdict = crate::engine::capture::judge(
                    &v.channels,
                    &tables,
                    None,
                    keyed,
                    crate::engine::capture::capture_owned(v),
                );
                // As `run` judges a generated keyed view (a stale one is reported by
                // the keyed checks).
                let generated = f.generated.get(i).copied().unwrap_or(false);
                let stale = f.stale.get(i).copied().unwrap_or(false);
                if keyed && generated && !stale && verdict.tables.is_some() {
                    crate::engine::capture::incomplete_gaps(v, &tables, &mut verdict);
                }
                gaps.insert(
                    v.name.clone(),
                    verdict
                        .gaps
                        .iter()
                        .map(|g| match (&g.heal, keyed) {
                            (None, true) => format!("{}: {} ({UNHEALED})", g.table, g.why),
                            _ => format!("{}: {}", g.table, g.why),
                        })
                        .collect(),
                );
            }
        }
    }
    gaps
}

/// What `check` adds to a keyed view's gap that `capture = "managed"` cannot close.
const UNHEALED: &str = "its capture was generated by init --keyed: run its rollback SQL, then init --keyed again (a view converted in place is a table, which init --keyed does not convert)";

/// A view's report with its change capture gaps: a warning when refreshd closes them
/// (`capture = "managed"`), else a problem.
fn with_capture_gaps(
    mut r: catalog::ViewReport,
    view: &ViewConfig,
    gaps: &[String],
) -> catalog::ViewReport {
    if gaps.is_empty() {
        return r;
    }
    if view.capture == crate::config::Capture::Managed && !gaps.iter().any(|g| g.contains(UNHEALED))
    {
        r.warnings.push(format!("change capture incomplete ({}); capture = \"managed\": run installs the missing trigger(s)", gaps.join(", ")));
    } else if view.keyed.is_some() {
        // init --apply installs no keyed capture, and init --keyed does not convert a
        // table (a view converted in place): only the daemon copies the root's triggers.
        r.problems.push(format!(
            "change capture incomplete: {} (capture = \"managed\" copies the root's capture triggers onto a new partition)",
            gaps.join(", ")
        ));
    } else {
        r.problems.push(format!(
            "change capture incomplete: {} (refreshd init --apply, or capture = \"managed\")",
            gaps.join(", ")
        ));
    }
    r.verdict = if r.problems.is_empty() {
        r.verdict.max(Verdict::Warn)
    } else {
        Verdict::Fail
    };
    r
}

/// `check`'s line about one view: its verdict, then problems, warnings and facts.
fn report_line(view: &ViewConfig, report: &catalog::ViewReport) -> String {
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
    line
}

/// The order refreshd keeps: a view is refreshed after the views it reads.
async fn say_graph(client: &tokio_postgres::Client, config: &Config) {
    if let Ok(reads) = crate::engine::startup::dependency_graph(client, &config.views).await {
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

/// Why `refresh VIEW...` names a view it cannot refresh.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("{input:?}: {source}")]
    BadName { input: String, source: IdentError },
    #[error("unknown view {name}: not in {} (configured: {})", file.display(), listed(configured))]
    Unknown {
        name: QualifiedName,
        file: PathBuf,
        /// Every configured view's name.
        configured: Vec<String>,
    },
}

/// Names joined with commas, or "none".
fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn resolve_views<'a>(
    config: &'a Config,
    names: &[String],
) -> Result<Vec<&'a ViewConfig>, ResolveError> {
    let mut out = Vec::new();
    for n in names {
        let parsed = QualifiedName::parse(n).map_err(|source| ResolveError::BadName {
            input: n.clone(),
            source,
        })?;
        match config.view(&parsed) {
            Some(v) => out.push(v),
            None => {
                return Err(ResolveError::Unknown {
                    name: parsed,
                    file: config.path.clone(),
                    configured: config.views.iter().map(|v| v.name.to_string()).collect(),
                })
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
    // SPEC: "0 all succeeded, 1 otherwise" (2 is `check`'s and `run`'s for a bad
    // configuration; here nothing was refreshed either way).
    let config = match load_config(path) {
        Ok(c) => c,
        Err(_) => return EXIT_PROBLEMS,
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
        Err(e) => {
            eprintln!("refreshd: {e}");
            return EXIT_PROBLEMS;
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
    // Waits beside `f` (not on a task of its own): cancels the token at the first
    // signal, then stays pending until `f` ends.
    let signalled = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
        token.cancel();
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = f(shutdown) => r,
        () = signalled => unreachable!("stays pending"),
    }
}

async fn run(path: &Path) -> u8 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = path.to_path_buf();
    let run =
        |shutdown| async move { Ok(crate::engine::core::run(config, Some(path), shutdown).await?) };
    match with_shutdown(run).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fatal");
            eprintln!("refreshd: {e:#}");
            EXIT_PROBLEMS
        }
    }
}
