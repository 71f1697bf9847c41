//! The configuration file: parsing, defaults, and validation with errors that name the
//! file, the line and the key.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::pg::ident::{validate_channel, QualifiedName};

/// The path used when neither `-c` nor `$REFRESHD_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/refreshd/config.toml";

/// A configuration problem, located in its file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

/// How a view learns that it is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// Triggers NOTIFY a channel.
    Notify,
    /// refreshd polls the cumulative statistics of the base tables.
    Statistics,
}

/// Who owns a view's change capture (`capture`, see SPEC "Change capture").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// refreshd installs what is missing (a trigger on a new partition) and heals it.
    Managed,
    /// refreshd reports gaps and refreshes the view fully at each check until closed.
    Verify,
    /// No checks.
    Off,
}

/// A validated cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// As written in the file.
    pub expr: String,
    /// With a seconds field (a 5-field crontab line gets `0` seconds).
    pub with_seconds: String,
}

/// What a `kind = "keyed"` view adds: the table `name` is kept equal to the plain view
/// `query`, one group (`key` value) at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub query: QualifiedName,
    /// Column names, in the order of the payload's key tuples.
    pub key: Vec<String>,
    /// More dirty keys than this: recompute everything.
    pub max_keys: usize,
}

/// Key columns a keyed view may have (each is one bind parameter per key).
pub const MAX_KEY_COLUMNS: usize = 8;
/// The largest `max_keys`: PostgreSQL takes at most 65,535 bind parameters.
pub const MAX_MAX_KEYS: usize = 8_000;

/// One materialized view (or keyed table) and how to keep it fresh.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewConfig {
    pub name: QualifiedName,
    /// `Some` for `kind = "keyed"`.
    pub keyed: Option<Keyed>,
    pub channels: Vec<String>,
    pub schedule: Option<Schedule>,
    pub debounce: Duration,
    pub max_delay: Duration,
    pub min_interval: Duration,
    /// Share of wall-clock time the view's refreshes may take, in (0, 1] (`max_load`).
    pub max_load: f64,
    pub concurrently: bool,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub detect: Detect,
    pub poll_interval: Duration,
    pub capture: Capture,
    /// Line of the `[[view]]` entry, for messages.
    pub line: usize,
}

/// Where the password comes from; the value itself is never stored here.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlSource {
    Inline(String),
    Env(String),
}

/// `[database]`.
#[derive(Clone, PartialEq)]
pub struct DatabaseConfig {
    pub url: UrlSource,
    pub password_file: Option<PathBuf>,
    pub listen_url: Option<UrlSource>,
    pub max_concurrent_refreshes: usize,
    pub connect_timeout: Duration,
}

/// Never shows the URL: it may carry a password.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("password_file", &self.password_file)
            .field("max_concurrent_refreshes", &self.max_concurrent_refreshes)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub admin_token_file: Option<PathBuf>,
}

/// `[ha]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    pub lock_name: String,
    pub retry_interval: Duration,
}

/// `[history]`: one row per refresh in a table of the database (off without it).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryConfig {
    /// Created by refreshd when missing.
    pub table: QualifiedName,
    /// Rows whose refresh started longer ago are deleted (at most once a minute).
    pub retention: Duration,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub shutdown_timeout: Duration,
    /// How often `run` re-checks every view's change capture.
    pub capture_check_interval: Duration,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub ha: HaConfig,
    pub views: Vec<ViewConfig>,
    /// Roles (besides refreshd's own and its members) whose `NOTIFY refreshd_control`
    /// is honoured.
    pub control_roles: Vec<String>,
    /// Send `NOTIFY refreshd_refreshed, 'schema.view'` inside each successful refresh.
    pub events: bool,
    /// `[history]`, when set.
    pub history: Option<HistoryConfig>,
}

impl Config {
    /// The directory relative paths in the file are resolved against.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| *b == b'\n')
            .map(|(i, _)| i)
            .collect();
        let ctx = Ctx {
            path,
            text,
            newlines,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
        ctx.validate(raw)
    }

    /// Looks a view up by its parsed name.
    pub fn view(&self, name: &QualifiedName) -> Option<&ViewConfig> {
        self.views.iter().find(|v| &v.name == name)
    }

    /// Every channel some view listens on, sorted and without repeats.
    pub fn channels(&self) -> Vec<String> {
        let mut set: Vec<String> = self
            .views
            .iter()
            .flat_map(|v| v.channels.iter().cloned())
            .collect();
        set.sort();
        set.dedup();
        set
    }
}

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    shutdown_timeout: Option<Spanned<String>>,
    capture_check_interval: Option<Spanned<String>>,
    control_roles: Option<Vec<Spanned<String>>>,
    events: Option<bool>,
    database: Option<Spanned<RawDatabase>>,
    http: Option<RawHttp>,
    ha: Option<RawHa>,
    history: Option<Spanned<RawHistory>>,
    defaults: Option<Spanned<RawView>>,
    #[serde(default)]
    view: Vec<Spanned<RawView>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    listen_url: Option<Spanned<String>>,
    listen_url_env: Option<Spanned<String>>,
    max_concurrent_refreshes: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    lock_name: Option<Spanned<String>>,
    retry_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    table: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
}

/// A `[[view]]` entry; `[defaults]` has the same keys but `name`.
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct RawView {
    name: Option<Spanned<String>>,
    channels: Option<Vec<Spanned<String>>>,
    schedule: Option<Spanned<String>>,
    debounce: Option<Spanned<String>>,
    max_delay: Option<Spanned<String>>,
    min_interval: Option<Spanned<String>>,
    max_load: Option<Spanned<String>>,
    concurrently: Option<Spanned<bool>>,
    statement_timeout: Option<Spanned<String>>,
    lock_timeout: Option<Spanned<String>>,
    detect: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    capture: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    key: Option<Spanned<Vec<Spanned<String>>>>,
    max_keys: Option<Spanned<i64>>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offsets of every `\n` in `text`.
    newlines: Vec<usize>,
}

impl Ctx<'_> {
    /// The 1-based line of a byte offset: a binary search over the newlines, found
    /// once (a count from the start per view made 10,000 views take 30 s).
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.newlines.partition_point(|&nl| nl < end) + 1
    }

    fn err(
        &self,
        span: Option<&Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: span.map(|s| self.line_of(s)),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// A parse or type error from the TOML reader, explained: the key it is about (found
    /// from the error's position in the text), the expected form for a wrong type, and the
    /// nearest known key for an unknown one.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim();
        let span = e.span();
        let key = span.as_ref().and_then(|s| self.key_at(s));
        let message = match message.strip_prefix("unknown field ") {
            Some(rest) => unknown_key_message(rest).unwrap_or_else(|| message.to_string()),
            None if message.starts_with("invalid type: ") => {
                wrong_type_message(message, key.as_deref())
            }
            None => message.to_string(),
        };
        ConfigError {
            file: self.path.to_path_buf(),
            line: span.map(|s| self.line_of(&s)),
            key,
            message,
        }
    }

    /// The dotted key (`view[0].debounce`, `database.url`) written at `span`, read from the
    /// text: the last table header above it and the key left of `=` on its line (or the
    /// key itself when the span covers it, as for an unknown key). `None` when the text
    /// does not have that simple shape (a value continued over several lines, say).
    fn key_at(&self, span: &Range<usize>) -> Option<String> {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = &self.text[line_start..line_end];
        let at = start - line_start;
        if line.trim_start().starts_with('[') {
            // An unknown table: the header names it.
            let name = table_header(line)?.0;
            return Some(name);
        }
        let own = match line.find('=') {
            Some(eq) if eq < at => unquote(line[..eq].trim()),
            _ => unquote(self.text.get(span.clone())?.trim()),
        };
        if own.is_empty() {
            return None;
        }
        // The table this line belongs to: the nearest header above, and for [[view]]
        // its index.
        let above = &self.text[..line_start];
        let mut table: Option<String> = None;
        let mut header_at = None;
        for (i, l) in above.lines().enumerate() {
            if let Some((name, array)) = table_header(l) {
                table = Some(name.clone());
                header_at = Some((i, name, array));
            }
        }
        let prefix = match header_at {
            None => None,
            Some((i, name, true)) => {
                let n = above
                    .lines()
                    .take(i)
                    .filter(|l| table_header(l).is_some_and(|(h, a)| a && h == name))
                    .count();
                Some(format!("{name}[{n}]"))
            }
            Some(_) => table,
        };
        Some(match prefix {
            Some(p) => format!("{p}.{own}"),
            None => own,
        })
    }

    fn duration(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
            self.err(
                Some(&v.span()),
                key,
                format!(
                    "invalid duration {:?}: {e} (write e.g. \"250ms\", \"2s\", \"15m\")",
                    v.get_ref()
                ),
            )
        })?;
        // PostgreSQL's timeouts are int milliseconds; anything else beyond a year is a
        // mistake (and would overflow time arithmetic).
        let max = if key.ends_with("statement_timeout") || key.ends_with("lock_timeout") {
            Duration::from_millis(i32::MAX as u64)
        } else {
            Duration::from_secs(366 * 24 * 3600)
        };
        if d > max {
            return Err(self.err(
                Some(&v.span()),
                key,
                format!(
                    "{:?} is too long: at most {}",
                    v.get_ref(),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(d)
    }

    fn opt_duration(
        &self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        v.map_or(Ok(default), |v| self.duration(v, key))
    }

    fn url_source(
        &self,
        url: Option<&Spanned<String>>,
        env: Option<&Spanned<String>>,
        section_span: Option<&Range<usize>>,
        key: &str,
        required: bool,
    ) -> Result<Option<UrlSource>, ConfigError> {
        match (url, env) {
            (Some(_), Some(e)) => Err(self.err(
                Some(&e.span()),
                &format!("{key}_env"),
                format!("set either {key} or {key}_env, not both"),
            )),
            (Some(u), None) => {
                if u.get_ref().trim().is_empty() {
                    return Err(self.err(Some(&u.span()), key, "is empty"));
                }
                Ok(Some(UrlSource::Inline(u.get_ref().clone())))
            }
            (None, Some(e)) => {
                let name = e.get_ref();
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(self.err(
                        Some(&e.span()),
                        &format!("{key}_env"),
                        format!("{name:?} is not an environment variable name"),
                    ));
                }
                Ok(Some(UrlSource::Env(name.clone())))
            }
            (None, None) if required => Err(self.err(
                section_span,
                key,
                format!(
                    "missing: set {key} = \"postgresql://...\" or {key}_env = \"DATABASE_URL\""
                ),
            )),
            (None, None) => Ok(None),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let shutdown_timeout = self.opt_duration(
            raw.shutdown_timeout.as_ref(),
            "shutdown_timeout",
            Duration::from_secs(30),
        )?;
        let capture_check_interval =
            self.capture_check_interval(raw.capture_check_interval.as_ref())?;
        let control_roles = self.control_roles(raw.control_roles.as_deref())?;
        let database = self.database(raw.database)?;
        let http = self.http(raw.http)?;
        let ha = self.ha(raw.ha)?;
        let history = self.history(raw.history)?;
        let defaults = self.defaults(raw.defaults)?;
        let views = self.views(&raw.view, &defaults)?;
        Ok(Config {
            path: self.path.to_path_buf(),
            shutdown_timeout,
            capture_check_interval,
            control_roles,
            events: raw.events.unwrap_or(true),
            history,
            database,
            http,
            ha,
            views,
        })
    }

    /// `capture_check_interval`: at least a second.
    fn capture_check_interval(&self, v: Option<&Spanned<String>>) -> Result<Duration, ConfigError> {
        let interval = self.opt_duration(v, "capture_check_interval", Duration::from_secs(60))?;
        if interval < Duration::from_secs(1) {
            return Err(self.err(
                v.map(|s| s.span()).as_ref(),
                "capture_check_interval",
                "must be at least 1s",
            ));
        }
        Ok(interval)
    }

    /// `control_roles`: names that can be roles.
    fn control_roles(&self, roles: Option<&[Spanned<String>]>) -> Result<Vec<String>, ConfigError> {
        let mut control_roles = Vec::new();
        for r in roles.into_iter().flatten() {
            let name = r.get_ref();
            // NAMEDATALEN - 1: a longer name cannot be a role.
            if name.is_empty() || name.len() > 63 || name.contains('\0') {
                return Err(self.err(
                    Some(&r.span()),
                    "control_roles",
                    format!("{name:?} is not a role name (1 to 63 bytes)"),
                ));
            }
            control_roles.push(name.clone());
        }
        Ok(control_roles)
    }

    /// `[defaults]`: the keys every view may share (not its name, nor a keyed view's own).
    fn defaults(&self, defaults: Option<Spanned<RawView>>) -> Result<RawView, ConfigError> {
        let Some(d) = defaults else {
            return Ok(RawView::default());
        };
        if let Some(n) = &d.get_ref().name {
            return Err(self.err(
                Some(&n.span()),
                "defaults.name",
                "a view name cannot be a default; name views in [[view]] entries",
            ));
        }
        let raw = d.get_ref();
        let per_view = [
            ("kind", raw.kind.as_ref().map(|k| k.span())),
            ("query", raw.query.as_ref().map(|k| k.span())),
            ("key", raw.key.as_ref().map(|k| k.span())),
            ("max_keys", raw.max_keys.as_ref().map(|k| k.span())),
        ];
        if let Some((k, span)) = per_view.into_iter().find(|(_, s)| s.is_some()) {
            return Err(self.err(
                span.as_ref(),
                &format!("defaults.{k}"),
                "set this in the [[view]] entry it belongs to, not in [defaults]",
            ));
        }
        Ok(d.into_inner())
    }

    /// Every `[[view]]` entry, each name listed once.
    fn views(
        &self,
        entries: &[Spanned<RawView>],
        defaults: &RawView,
    ) -> Result<Vec<ViewConfig>, ConfigError> {
        let mut views = Vec::with_capacity(entries.len());
        let mut seen: BTreeMap<QualifiedName, usize> = BTreeMap::new();
        for (i, v) in entries.iter().enumerate() {
            let view = self.view(i, v, defaults)?;
            if let Some(first) = seen.insert(view.name.clone(), view.line) {
                return Err(self.err(
                    v.get_ref().name.as_ref().map(|n| n.span()).as_ref(),
                    &format!("view[{i}].name"),
                    format!("view {} is listed twice (first at line {first})", view.name),
                ));
            }
            views.push(view);
        }
        Ok(views)
    }

    /// `[database]`.
    fn database(&self, db: Option<Spanned<RawDatabase>>) -> Result<DatabaseConfig, ConfigError> {
        let Some(db) = db else {
            return Err(self.err(None, "database", "missing section [database]"));
        };
        let db_span = db.span();
        let db = db.into_inner();
        let url = self
            .url_source(
                db.url.as_ref(),
                db.url_env.as_ref(),
                Some(&db_span),
                "database.url",
                true,
            )?
            .expect("required");
        let listen_url = self.url_source(
            db.listen_url.as_ref(),
            db.listen_url_env.as_ref(),
            Some(&db_span),
            "database.listen_url",
            false,
        )?;
        let password_file = db
            .password_file
            .as_ref()
            .map(|p| PathBuf::from(p.get_ref()));
        if let Some(p) = &db.password_file {
            if p.get_ref().is_empty() {
                return Err(self.err(Some(&p.span()), "database.password_file", "is empty"));
            }
        }
        let max_concurrent_refreshes = match &db.max_concurrent_refreshes {
            None => 2,
            Some(v) if (1..=64).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                return Err(self.err(
                    Some(&v.span()),
                    "database.max_concurrent_refreshes",
                    format!("{} is out of range: use 1 to 64", v.get_ref()),
                ))
            }
        };
        let connect_timeout = self.opt_duration(
            db.connect_timeout.as_ref(),
            "database.connect_timeout",
            Duration::from_secs(5),
        )?;
        if connect_timeout.is_zero() {
            let span = db.connect_timeout.as_ref().map(|s| s.span());
            return Err(self.err(
                span.as_ref(),
                "database.connect_timeout",
                "must be more than 0s",
            ));
        }

        Ok(DatabaseConfig {
            url,
            password_file,
            listen_url,
            max_concurrent_refreshes,
            connect_timeout,
        })
    }

    /// `[http]`.
    fn http(&self, http: Option<RawHttp>) -> Result<HttpConfig, ConfigError> {
        let http = http.unwrap_or(RawHttp {
            listen: None,
            admin_token_file: None,
        });
        let listen = match &http.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 9648)),
            Some(v) => v.get_ref().parse().map_err(|_| {
                self.err(
                    Some(&v.span()),
                    "http.listen",
                    format!(
                        "{:?} is not an address:port such as \"127.0.0.1:9648\" or \"[::]:9648\"",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let admin_token_file = http
            .admin_token_file
            .as_ref()
            .map(|p| PathBuf::from(p.get_ref()));
        if !listen.ip().is_loopback() && admin_token_file.is_none() {
            let span = http.listen.as_ref().map(|s| s.span());
            return Err(self.err(
                span.as_ref(),
                "http.admin_token_file",
                format!(
                    "required when http.listen ({listen}) is not a loopback address: POST /refresh would be open to the network"
                ),
            ));
        }

        Ok(HttpConfig {
            listen,
            admin_token_file,
        })
    }

    /// `[history]`.
    fn history(
        &self,
        history: Option<Spanned<RawHistory>>,
    ) -> Result<Option<HistoryConfig>, ConfigError> {
        let Some(h) = history else { return Ok(None) };
        let span = h.span();
        let h = h.into_inner();
        let Some(table) = &h.table else {
            return Err(self.err(
                Some(&span),
                "history.table",
                "is missing: name the table refreshd writes its history to, such as table = \"refreshd.history\"",
            ));
        };
        let table = QualifiedName::parse(table.get_ref()).map_err(|e| {
            self.err(
                Some(&table.span()),
                "history.table",
                format!("{e} (write it as schema.table)"),
            )
        })?;
        let retention = self.opt_duration(
            h.retention.as_ref(),
            "history.retention",
            Duration::from_secs(7 * 24 * 3600),
        )?;
        if retention.is_zero() {
            let span = h.retention.as_ref().map(|s| s.span());
            return Err(self.err(
                span.as_ref(),
                "history.retention",
                "must be more than 0s (leave [history] out to keep no history)",
            ));
        }
        Ok(Some(HistoryConfig { table, retention }))
    }

    /// `[ha]`.
    fn ha(&self, ha: Option<RawHa>) -> Result<HaConfig, ConfigError> {
        let ha = ha.unwrap_or(RawHa {
            lock_name: None,
            retry_interval: None,
        });
        let lock_name = match &ha.lock_name {
            None => "refreshd".to_string(),
            Some(v) if v.get_ref().is_empty() => {
                return Err(self.err(Some(&v.span()), "ha.lock_name", "is empty"))
            }
            Some(v) => v.get_ref().clone(),
        };
        let retry_interval = self.opt_duration(
            ha.retry_interval.as_ref(),
            "ha.retry_interval",
            Duration::from_secs(5),
        )?;
        if retry_interval.is_zero() {
            let span = ha.retry_interval.as_ref().map(|s| s.span());
            return Err(self.err(span.as_ref(), "ha.retry_interval", "must be more than 0s"));
        }

        Ok(HaConfig {
            lock_name,
            retry_interval,
        })
    }

    fn view(&self, i: usize, v: &Spanned<RawView>, d: &RawView) -> Result<ViewConfig, ConfigError> {
        let e = Entry {
            i,
            raw: v.get_ref(),
            defaults: d,
        };
        let line = self.line_of(&v.span());
        let name = self.view_name(&e, v)?;
        let pacing = self.pacing(&e)?;
        let statement_timeout = self.view_duration(
            &e,
            |v| &v.statement_timeout,
            "statement_timeout",
            Duration::from_secs(600),
        )?;
        let lock_timeout = self.view_duration(
            &e,
            |v| &v.lock_timeout,
            "lock_timeout",
            Duration::from_secs(5),
        )?;
        let (detect, poll_interval) = self.detection(&e)?;
        let concurrently = e
            .raw
            .concurrently
            .as_ref()
            .or(d.concurrently.as_ref())
            .map(|b| *b.get_ref())
            .unwrap_or(true);
        let capture = self.capture(&e)?;
        let channels = self.channels(&e)?;
        let schedule = match e.pick(|v| &v.schedule, "schedule") {
            None => None,
            Some((s, k)) => Some(
                parse_schedule(s.get_ref())
                    .map_err(|m| self.err(Some(&s.span()), &k, m.to_string()))?,
            ),
        };
        let keyed = self.keyed(&e, &name)?;
        Ok(ViewConfig {
            name,
            keyed,
            channels,
            schedule,
            debounce: pacing.debounce,
            max_delay: pacing.max_delay,
            min_interval: pacing.min_interval,
            max_load: pacing.max_load,
            concurrently,
            statement_timeout,
            lock_timeout,
            detect,
            poll_interval,
            capture,
            line,
        })
    }

    /// `name`: present and schema-qualified.
    fn view_name(&self, e: &Entry, v: &Spanned<RawView>) -> Result<QualifiedName, ConfigError> {
        let Some(name) = &e.raw.name else {
            return Err(self.err(
                Some(&v.span()),
                &e.key("name"),
                "missing: every [[view]] needs name = \"schema.view\"",
            ));
        };
        QualifiedName::parse(name.get_ref().trim()).map_err(|err| {
            self.err(
                Some(&name.span()),
                &e.key("name"),
                format!("{:?}: {err}", name.get_ref()),
            )
        })
    }

    /// A duration key of a view, from the entry, else `[defaults]`, else `default`.
    fn view_duration(
        &self,
        e: &Entry,
        field: fn(&RawView) -> &Option<Spanned<String>>,
        k: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match e.pick(field, k) {
            Some((s, key)) => self.duration(&s, &key),
            None => Ok(default),
        }
    }

    /// When refreshes may start: `debounce`, `max_delay`, `min_interval` (which must agree)
    /// and `max_load`.
    fn pacing(&self, e: &Entry) -> Result<Pacing, ConfigError> {
        let debounce =
            self.view_duration(e, |v| &v.debounce, "debounce", Duration::from_secs(2))?;
        let max_delay =
            self.view_duration(e, |v| &v.max_delay, "max_delay", Duration::from_secs(30))?;
        let min_interval =
            self.view_duration(e, |v| &v.min_interval, "min_interval", Duration::ZERO)?;
        self.timing_agrees(e, debounce, max_delay, min_interval)?;
        let max_load = match e.pick(|v| &v.max_load, "max_load") {
            None => 1.0,
            Some((s, k)) => parse_share(s.get_ref())
                .map_err(|m| self.err(Some(&s.span()), &k, m.to_string()))?,
        };
        Ok(Pacing {
            debounce,
            max_delay,
            min_interval,
            max_load,
        })
    }

    /// How staleness is detected: `poll_interval` (at least 100ms) and `detect`.
    fn detection(&self, e: &Entry) -> Result<(Detect, Duration), ConfigError> {
        let poll_interval = self.view_duration(
            e,
            |v| &v.poll_interval,
            "poll_interval",
            Duration::from_secs(1),
        )?;
        if poll_interval < Duration::from_millis(100) {
            let (s, k) = e
                .pick(|v| &v.poll_interval, "poll_interval")
                .expect("non-default");
            return Err(self.err(Some(&s.span()), &k, "must be at least 100ms"));
        }
        let detect = match e.pick(|v| &v.detect, "detect") {
            None => Detect::Notify,
            Some((s, k)) => match s.get_ref().as_str() {
                "notify" => Detect::Notify,
                "statistics" => Detect::Statistics,
                other => {
                    return Err(self.err(
                        Some(&s.span()),
                        &k,
                        format!(
                            "{other:?} is not a detection mode: use \"notify\" or \"statistics\""
                        ),
                    ))
                }
            },
        };
        Ok((detect, poll_interval))
    }

    /// `capture`: who owns the view's change capture.
    fn capture(&self, e: &Entry) -> Result<Capture, ConfigError> {
        Ok(match e.pick(|v| &v.capture, "capture") {
            None => Capture::Verify,
            Some((s, k)) => match s.get_ref().as_str() {
                "managed" => Capture::Managed,
                "verify" => Capture::Verify,
                "off" => Capture::Off,
                other => {
                    return Err(self.err(
                        Some(&s.span()),
                        &k,
                        format!(
                        "{other:?} is not a capture mode: use \"managed\", \"verify\" or \"off\""
                    ),
                    ))
                }
            },
        })
    }

    /// `channels`: valid names, none of refreshd's own, repeats dropped.
    fn channels(&self, e: &Entry) -> Result<Vec<String>, ConfigError> {
        let (channels_raw, channels_key) = match (&e.raw.channels, &e.defaults.channels) {
            (Some(c), _) => (c.clone(), e.key("channels")),
            (None, Some(c)) => (c.clone(), "defaults.channels".to_string()),
            (None, None) => (Vec::new(), e.key("channels")),
        };
        let mut channels = Vec::with_capacity(channels_raw.len());
        let mut seen = HashSet::new();
        for c in &channels_raw {
            validate_channel(c.get_ref()).map_err(|err| {
                self.err(
                    Some(&c.span()),
                    &channels_key,
                    format!("channel {:?}: {err}", c.get_ref()),
                )
            })?;
            if [crate::CONTROL_CHANNEL, crate::pg::force::FORCE_CHANNEL]
                .contains(&c.get_ref().as_str())
            {
                return Err(self.err(
                    Some(&c.span()),
                    &channels_key,
                    format!(
                        "{:?} is one of refreshd's control channels and cannot feed a view",
                        c.get_ref()
                    ),
                ));
            }
            if seen.insert(c.get_ref().clone()) {
                channels.push(c.get_ref().clone());
            }
        }
        Ok(channels)
    }
}

/// One `[[view]]` entry as written, with `[defaults]` under it.
struct Entry<'a> {
    /// Its place among the entries, for keys such as `view[3].debounce`.
    i: usize,
    raw: &'a RawView,
    defaults: &'a RawView,
}

impl Entry<'_> {
    /// The dotted key of one of the entry's own keys.
    fn key(&self, k: &str) -> String {
        format!("view[{}].{k}", self.i)
    }

    /// A key set on the view wins over `[defaults]`; the key returned names where the
    /// value came from, for errors.
    fn pick(
        &self,
        field: fn(&RawView) -> &Option<Spanned<String>>,
        k: &str,
    ) -> Option<(Spanned<String>, String)> {
        field(self.raw)
            .clone()
            .map(|s| (s, self.key(k)))
            .or_else(|| {
                field(self.defaults)
                    .clone()
                    .map(|s| (s, format!("defaults.{k}")))
            })
    }
}

/// When a view's refreshes may start.
struct Pacing {
    debounce: Duration,
    max_delay: Duration,
    min_interval: Duration,
    max_load: f64,
}

impl Ctx<'_> {
    /// Refuses timings that contradict each other: a `debounce` or a `min_interval`
    /// longer than `max_delay` would make `max_delay` a promise refreshd cannot keep (or
    /// the debounce one it never applies). The error is placed on the key the view
    /// itself sets (else on the `[defaults]` one) and names both values and the fix.
    fn timing_agrees(
        &self,
        e: &Entry,
        debounce: Duration,
        max_delay: Duration,
        min_interval: Duration,
    ) -> Result<(), ConfigError> {
        let (raw, d) = (e.raw, e.defaults);
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let blame = |other: &Option<Spanned<String>>,
                     other_default: &Option<Spanned<String>>,
                     other_name: &str,
                     message: String| {
            let set = [
                (other, e.key(other_name)),
                (&raw.max_delay, e.key("max_delay")),
                (other_default, format!("defaults.{other_name}")),
                (&d.max_delay, "defaults.max_delay".to_string()),
            ];
            let (span, k) = set
                .into_iter()
                .find_map(|(v, k)| v.as_ref().map(|v| (v.span(), k)))
                .map_or((None, e.key(other_name)), |(s, k)| (Some(s), k));
            self.err(span.as_ref(), &k, message)
        };
        if debounce > max_delay {
            return Err(blame(
                &raw.debounce,
                &d.debounce,
                "debounce",
                format!(
                    "debounce ({}) is longer than max_delay ({}): every refresh would start at max_delay and the debounce would never apply; lower debounce or raise max_delay",
                    fmt(debounce),
                    fmt(max_delay)
                ),
            ));
        }
        if min_interval > max_delay {
            return Err(blame(
                &raw.min_interval,
                &d.min_interval,
                "min_interval",
                format!(
                    "min_interval ({}) is longer than max_delay ({}): under steady writes a refresh could not start within max_delay; lower min_interval or raise max_delay to at least {}",
                    fmt(min_interval),
                    fmt(max_delay),
                    fmt(min_interval)
                ),
            ));
        }
        Ok(())
    }

    /// `kind`, and for `kind = "keyed"` its `query`, `key` and `max_keys` (and no
    /// `concurrently`).
    fn keyed(&self, e: &Entry, name: &QualifiedName) -> Result<Option<Keyed>, ConfigError> {
        if !self.is_keyed(e)? {
            return Ok(None);
        }
        let raw = e.raw;
        let kind_span = raw.kind.as_ref().expect("keyed").span();
        let query = self.keyed_query(e, &kind_span, name)?;
        let columns = self.key_columns(e, &kind_span)?;
        let max_keys = self.max_keys(e)?;
        if let Some(c) = &raw.concurrently {
            return Err(self.err(
                Some(&c.span()),
                &e.key("concurrently"),
                "a keyed view is a table refreshd writes group by group: concurrently applies to materialized views only",
            ));
        }
        Ok(Some(Keyed {
            query,
            key: columns,
            max_keys,
        }))
    }

    /// Whether `kind` says keyed; a materialized view sets none of a keyed view's keys.
    fn is_keyed(&self, e: &Entry) -> Result<bool, ConfigError> {
        let raw = e.raw;
        let keyed = match &raw.kind {
            None => false,
            Some(k) => match k.get_ref().as_str() {
                "materialized" => false,
                "keyed" => true,
                other => {
                    return Err(self.err(
                        Some(&k.span()),
                        &e.key("kind"),
                        format!("{other:?} is not a view kind: use \"materialized\" (the default) or \"keyed\""),
                    ))
                }
            },
        };
        if !keyed {
            let extra = [
                ("query", raw.query.as_ref().map(|k| k.span())),
                ("key", raw.key.as_ref().map(|k| k.span())),
                ("max_keys", raw.max_keys.as_ref().map(|k| k.span())),
            ];
            if let Some((k, span)) = extra.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    span.as_ref(),
                    &e.key(k),
                    "only for kind = \"keyed\" views (this one is a materialized view)",
                ));
            }
        }
        Ok(keyed)
    }

    /// A keyed view's `query`: another relation than its table.
    fn keyed_query(
        &self,
        e: &Entry,
        kind_span: &Range<usize>,
        name: &QualifiedName,
    ) -> Result<QualifiedName, ConfigError> {
        let Some(q) = &e.raw.query else {
            return Err(self.err(
                Some(kind_span),
                &e.key("query"),
                "missing: a keyed view needs query = \"schema.view\", the plain view that defines its rows",
            ));
        };
        let query = QualifiedName::parse(q.get_ref().trim()).map_err(|err| {
            self.err(
                Some(&q.span()),
                &e.key("query"),
                format!("{:?}: {err}", q.get_ref()),
            )
        })?;
        if &query == name {
            return Err(self.err(
                Some(&q.span()),
                &e.key("query"),
                "the query must be another relation than the table it fills",
            ));
        }
        Ok(query)
    }

    /// A keyed view's `key`: 1 to [`MAX_KEY_COLUMNS`] column names, each once.
    fn key_columns(&self, e: &Entry, kind_span: &Range<usize>) -> Result<Vec<String>, ConfigError> {
        let Some(cols) = &e.raw.key else {
            return Err(self.err(
                Some(kind_span),
                &e.key("key"),
                "missing: a keyed view needs key = [\"column\", ...], the columns that identify a group",
            ));
        };
        if cols.get_ref().is_empty() || cols.get_ref().len() > MAX_KEY_COLUMNS {
            return Err(self.err(
                Some(&cols.span()),
                &e.key("key"),
                format!("name 1 to {MAX_KEY_COLUMNS} columns"),
            ));
        }
        let mut columns: Vec<String> = Vec::new();
        for c in cols.get_ref() {
            let n = c.get_ref();
            if n.is_empty() || n.len() > 63 || n.contains('\0') {
                return Err(self.err(
                    Some(&c.span()),
                    &e.key("key"),
                    format!("{n:?} is not a column name (1 to 63 bytes)"),
                ));
            }
            if columns.contains(n) {
                return Err(self.err(
                    Some(&c.span()),
                    &e.key("key"),
                    format!("column {n:?} is listed twice"),
                ));
            }
            columns.push(n.clone());
        }
        Ok(columns)
    }

    /// A keyed view's `max_keys`: 1 to [`MAX_MAX_KEYS`].
    fn max_keys(&self, e: &Entry) -> Result<usize, ConfigError> {
        let Some(m) = &e.raw.max_keys else {
            return Ok(DEFAULT_MAX_KEYS);
        };
        let v = *m.get_ref();
        if v < 1 || v as u64 > MAX_MAX_KEYS as u64 {
            return Err(self.err(
                Some(&m.span()),
                &e.key("max_keys"),
                format!("{v} is out of range: 1 to {MAX_MAX_KEYS}"),
            ));
        }
        Ok(v as usize)
    }
}

/// `[name]` or `[[name]]` (then `true`), with spaces and a trailing comment allowed.
fn table_header(line: &str) -> Option<(String, bool)> {
    let l = line.trim();
    let (inner, array) = if let Some(r) = l.strip_prefix("[[") {
        (r.split("]]").next()?, true)
    } else {
        (l.strip_prefix('[')?.split(']').next()?, false)
    };
    let name = unquote(inner.trim());
    (!name.is_empty()).then_some((name, array))
}

/// A bare or quoted TOML key as written.
fn unquote(k: &str) -> String {
    k.trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// Keys whose value is a duration string.
const DURATION_KEYS: &[&str] = &[
    "shutdown_timeout",
    "capture_check_interval",
    "connect_timeout",
    "retry_interval",
    "debounce",
    "max_delay",
    "min_interval",
    "statement_timeout",
    "lock_timeout",
    "poll_interval",
];

/// `invalid type: integer `2`, expected a string` said in the file's terms: for a duration
/// key the form to write (`debounce = "2s"`), for the others the TOML type expected.
fn wrong_type_message(message: &str, key: Option<&str>) -> String {
    let found = message
        .strip_prefix("invalid type: ")
        .and_then(|r| r.split(", expected").next())
        .unwrap_or("another type");
    let leaf = key.map(|k| k.rsplit('.').next().unwrap_or(k));
    if leaf == Some("max_load") {
        return format!("expected a share of time like \"25%\" (quoted), found {found}");
    }
    if let Some(leaf) = leaf.filter(|l| DURATION_KEYS.contains(l)) {
        let number = found
            .strip_prefix("integer `")
            .and_then(|r| r.strip_suffix('`'))
            .and_then(|n| n.parse::<u64>().ok());
        return match number {
            Some(n) => format!(
                "expected a duration string like \"2s\", found {found}: write {leaf} = \"{n}s\" for {n} seconds"
            ),
            None => format!(
                "expected a duration string like \"2s\", \"250ms\" or \"15m\", found {found}"
            ),
        };
    }
    let expected = message.split(", expected ").nth(1).unwrap_or("");
    let expected = match expected {
        "a boolean" => "true or false (without quotes)",
        "i64" | "u64" | "usize" => "a whole number (without quotes)",
        "a string" => "a quoted string",
        "a sequence" => "a list such as [\"a\", \"b\"]",
        other => other,
    };
    format!("expected {expected}, found {found}")
}

/// serde's "unknown field `x`, expected one of `a`, `b`" with the nearest known key
/// suggested, or the known keys listed when none is near.
fn unknown_key_message(rest: &str) -> Option<String> {
    let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let (unknown, known) = names.split_first()?;
    let best = known
        .iter()
        .map(|k| (edit_distance(&unknown.to_lowercase(), k), *k))
        .min();
    Some(match best {
        Some((d, k)) if d <= (unknown.chars().count() / 3).max(1) => {
            format!("unknown key `{unknown}`: did you mean `{k}`?")
        }
        _ if known.is_empty() => format!("unknown key `{unknown}`: this table takes no keys"),
        _ => format!(
            "unknown key `{unknown}`: the keys here are {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Levenshtein distance in characters (insertions, deletions, substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// Why a `max_load` value is not a share of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("{0:?} is not a share of time: write a percentage such as \"25%\"")]
    NotAPercentage(String),
    #[error("{0:?} is out of range: a share of time is more than 0% and at most 100% (\"100%\" sets no budget)")]
    OutOfRange(String),
}

/// A `max_load` value: a percentage, more than 0% and at most 100%, as a fraction.
pub fn parse_share(text: &str) -> Result<f64, ShareError> {
    let t = text.trim();
    let Some(number) = t.strip_suffix('%') else {
        return Err(ShareError::NotAPercentage(text.to_string()));
    };
    match number.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && p > 0.0 && p <= 100.0 => Ok(p / 100.0),
        Ok(_) => Err(ShareError::OutOfRange(text.to_string())),
        Err(_) => Err(ShareError::NotAPercentage(text.to_string())),
    }
}

/// `max_keys` when the file does not set it.
pub const DEFAULT_MAX_KEYS: usize = 1000;

/// Why a `schedule` is not a cron expression refreshd accepts.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {fields} fields; write 6 (sec min hour day month weekday) or 5 like crontab")]
    FieldCount { expr: String, fields: usize },
    #[error("invalid cron expression {expr:?}: {source}")]
    Cron {
        expr: String,
        source: croner::errors::CronError,
    },
}

/// Accepts 6 fields (with seconds) or 5 like crontab (seconds = 0), validated with the
/// same parser tokio-cron-scheduler uses.
pub fn parse_schedule(expr: &str) -> Result<Schedule, ScheduleError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let with_seconds = match fields.len() {
        6 => fields.join(" "),
        5 => format!("0 {}", fields.join(" ")),
        n => {
            return Err(ScheduleError::FieldCount {
                expr: expr.to_string(),
                fields: n,
            })
        }
    };
    croner::Cron::new(&with_seconds)
        .with_seconds_required()
        .parse()
        .map_err(|source| ScheduleError::Cron {
            expr: expr.to_string(),
            source,
        })?;
    Ok(Schedule {
        expr: expr.to_string(),
        with_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/refreshd/t.toml"), text)
    }

    const BASE: &str = "[database]\nurl = \"postgresql://u:secret@h/db\"\n";

    #[test]
    fn minimal_and_defaults() {
        let c = parse(&format!(
            "{BASE}[defaults]\ndebounce = \"0s\"\n[[view]]\nname = \"public.a\"\nchannels = [\"c1\"]\n[[view]]\nname = '\"Sales\".\"Daily Totals\"'\ndebounce = \"250ms\"\nschedule = \"*/5 * * * *\"\nconcurrently = false\n"
        ))
        .unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.database.max_concurrent_refreshes, 2);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9648");
        assert_eq!(c.ha.lock_name, "refreshd");
        assert_eq!(c.views.len(), 2);
        assert_eq!(c.views[0].debounce, Duration::ZERO);
        assert_eq!(c.views[0].max_delay, Duration::from_secs(30));
        assert_eq!(c.views[0].line, 5);
        assert_eq!(c.views[1].name, QualifiedName::new("Sales", "Daily Totals"));
        assert_eq!(c.views[1].debounce, Duration::from_millis(250));
        assert!(!c.views[1].concurrently);
        assert_eq!(
            c.views[1].schedule.as_ref().unwrap().with_seconds,
            "0 */5 * * * *"
        );
        assert_eq!(c.channels(), vec!["c1".to_string()]);
    }

    fn err(text: &str) -> ConfigError {
        parse(text).expect_err("must be refused")
    }

    #[test]
    fn history_is_off_by_default_and_checked() {
        let view = "[[view]]\nname = \"public.a\"\n";
        assert_eq!(parse(&format!("{BASE}{view}")).unwrap().history, None);
        let c = parse(&format!(
            "{BASE}{view}[history]\ntable = \"refreshd.history\"\n"
        ))
        .unwrap();
        let h = c.history.unwrap();
        assert_eq!(h.table, QualifiedName::new("refreshd", "history"));
        assert_eq!(h.retention, Duration::from_secs(7 * 24 * 3600));
        let e = err(&format!("{BASE}{view}[history]\nretention = \"1d\"\n"));
        assert!(e.to_string().contains("history.table"), "{e}");
        let e = err(&format!("{BASE}{view}[history]\ntable = \"history\"\n"));
        assert!(e.to_string().contains("schema.table"), "{e}");
        let e = err(&format!(
            "{BASE}{view}[history]\ntable = \"a.b\"\nretention = \"0s\"\n"
        ));
        assert!(e.to_string().contains("history.retention"), "{e}");
        let e = err(&format!("{BASE}{view}[history]\ntables = \"a.b\"\n"));
        assert!(e.to_string().contains("did you mean `table`?"), "{e}");
    }

    #[test]
    fn refreshds_own_channels_cannot_feed_a_view() {
        for ch in ["refreshd_control", "refreshd_force"] {
            let e = err(&format!(
                "{BASE}[[view]]\nname = \"public.a\"\nchannels = [\"{ch}\"]\n"
            ));
            assert_eq!(e.key.as_deref(), Some("view[0].channels"), "{e}");
            assert!(e.to_string().contains("control channels"), "{e}");
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\ndebounce = \"2x\"\n"
        ));
        assert_eq!(e.line, Some(5));
        assert_eq!(e.key.as_deref(), Some("view[0].debounce"));
        assert!(
            e.to_string()
                .starts_with("/etc/refreshd/t.toml:5: view[0].debounce: invalid duration"),
            "{e}"
        );

        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\ndebunce = \"2s\"\n"
        ));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("debunce"), "{e}");

        let e = err(&format!("{BASE}[[view]]\nname = \"a\"\n"));
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("schema-qualified"), "{e}");

        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\n[[view]]\nname = \"PUBLIC.A\"\n"
        ));
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("listed twice (first at line 3)"), "{e}");

        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nschedule = \"61 * * * *\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].schedule"));
        assert_eq!(e.line, Some(5));
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nschedule = \"* * *\"\n"
        ));
        assert!(e.message.contains("3 fields"), "{e}");

        let e = err(&format!(
            "{BASE}[defaults]\nmax_delay = \"soon\"\n[[view]]\nname = \"public.a\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("defaults.max_delay"));
        assert_eq!(e.line, Some(4));

        let e = err("[database]\n");
        assert_eq!(e.key.as_deref(), Some("database.url"));
        let e = err(&format!("{BASE}url_env = \"X\"\n"));
        assert_eq!(e.key.as_deref(), Some("database.url_env"));
        let e = err(&format!("{BASE}[http]\nlisten = \"0.0.0.0:9648\"\n"));
        assert_eq!(e.key.as_deref(), Some("http.admin_token_file"));
        let e = err(&format!("{BASE}max_concurrent_refreshes = 0\n"));
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn keyed_views_are_checked_key_by_key() {
        let ok = parse(&format!(
            "{BASE}[[view]]\nname = \"public.live\"\nkind = \"keyed\"\nquery = \"public.def\"\nkey = [\"a\", \"b\"]\n"
        ))
        .unwrap();
        let k = ok.views[0].keyed.as_ref().unwrap();
        assert_eq!(k.query.to_string(), "public.def");
        assert_eq!(k.key, vec!["a", "b"]);
        assert_eq!(k.max_keys, DEFAULT_MAX_KEYS);
        let cases = [
            (
                "kind = \"incremental\"\n",
                "view[0].kind",
                "not a view kind",
            ),
            (
                "kind = \"keyed\"\nkey = [\"a\"]\n",
                "view[0].query",
                "missing",
            ),
            (
                "kind = \"keyed\"\nquery = \"public.def\"\n",
                "view[0].key",
                "missing",
            ),
            (
                "kind = \"keyed\"\nquery = \"public.def\"\nkey = []\n",
                "view[0].key",
                "1 to 8",
            ),
            (
                "kind = \"keyed\"\nquery = \"public.def\"\nkey = [\"a\", \"a\"]\n",
                "view[0].key",
                "twice",
            ),
            (
                "kind = \"keyed\"\nquery = \"def\"\nkey = [\"a\"]\n",
                "view[0].query",
                "schema-qualified",
            ),
            (
                "kind = \"keyed\"\nquery = \"public.live\"\nkey = [\"a\"]\n",
                "view[0].query",
                "another relation",
            ),
            (
                "kind = \"keyed\"\nquery = \"public.def\"\nkey = [\"a\"]\nmax_keys = 0\n",
                "view[0].max_keys",
                "out of range",
            ),
            (
                "kind = \"keyed\"\nquery = \"public.def\"\nkey = [\"a\"]\nconcurrently = false\n",
                "view[0].concurrently",
                "materialized views only",
            ),
            ("query = \"public.def\"\n", "view[0].query", "only for kind"),
            ("max_keys = 5\n", "view[0].max_keys", "only for kind"),
        ];
        for (extra, key, msg) in cases {
            let e = err(&format!("{BASE}[[view]]\nname = \"public.live\"\n{extra}"));
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
            assert!(e.message.contains(msg), "{extra}: {e}");
            assert!(e.line.is_some_and(|l| l >= 5), "{extra}: {e}");
        }
        let e = err(&format!("{BASE}[defaults]\nkey = [\"a\"]\n"));
        assert_eq!(e.key.as_deref(), Some("defaults.key"));
    }

    #[test]
    fn durations_have_upper_bounds() {
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nstatement_timeout = \"30days\"\n"
        ));
        assert!(e.message.contains("too long"), "{e}");
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\ndebounce = \"1000years\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].debounce"));
        assert!(parse(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nstatement_timeout = \"24days\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("debounce", "debounce"), 0);
        assert_eq!(edit_distance("debunce", "debounce"), 1);
        assert_eq!(edit_distance("maxdelay", "max_delay"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("flaw", "lawn"), 2);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn wrong_types_name_the_key_and_the_form() {
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\ndebounce = 2\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].debounce"));
        assert_eq!(e.line, Some(5));
        assert!(
            e.message.contains("expected a duration string like \"2s\"")
                && e.message.contains("debounce = \"2s\""),
            "{e}"
        );
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\n[[view]]\nname = \"public.b\"\nmax_delay = 1.5\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[1].max_delay"));
        assert!(e.message.contains("duration string"), "{e}");
        let e = err(&format!("{BASE}[defaults]\nconcurrently = \"yes\"\n"));
        assert_eq!(e.key.as_deref(), Some("defaults.concurrently"));
        assert!(e.message.contains("true or false"), "{e}");
        let e = err(&format!("{BASE}max_concurrent_refreshes = \"4\"\n"));
        assert_eq!(e.key.as_deref(), Some("database.max_concurrent_refreshes"));
        assert!(e.message.contains("whole number"), "{e}");
        let e = err(&format!("shutdown_timeout = 30\n{BASE}"));
        assert_eq!(e.key.as_deref(), Some("shutdown_timeout"));
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nmaxdelay = \"5s\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].maxdelay"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("did you mean `max_delay`?"), "{e}");
        let e = err(&format!("{BASE}[htp]\nlisten = \"127.0.0.1:1\"\n"));
        assert!(e.message.contains("did you mean `http`?"), "{e}");
        let e = err(&format!("{BASE}colour = \"red\"\n"));
        assert!(!e.message.contains("did you mean"), "{e}");
        assert!(e.message.contains("`connect_timeout`"), "{e}");
        let e = err(&format!("{BASE}[defaults]\nDebounce = \"1s\"\n"));
        assert!(e.message.contains("did you mean `debounce`?"), "{e}");
    }

    #[test]
    fn max_load_is_a_share_with_a_default_and_bounds() {
        let c = parse(&format!(
            "{BASE}[defaults]\nmax_load = \"50%\"\n[[view]]\nname = \"public.a\"\n[[view]]\nname = \"public.b\"\nmax_load = \" 12.5% \"\n"
        ))
        .unwrap();
        assert_eq!(c.views[0].max_load, 0.5);
        assert_eq!(c.views[1].max_load, 0.125);
        let c = parse(&format!("{BASE}[[view]]\nname = \"public.a\"\n")).unwrap();
        assert_eq!(c.views[0].max_load, 1.0, "100% by default: no budget");
        assert_eq!(parse_share("100%"), Ok(1.0));
        for bad in [
            "0%", "-5%", "100.1%", "250%", "25", "0.25", "NaN%", "inf%", "%", "a%",
        ] {
            assert!(parse_share(bad).is_err(), "{bad:?} accepted");
        }
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nmax_load = \"0%\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].max_load"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("more than 0% and at most 100%"), "{e}");
        let e = err(&format!("{BASE}[defaults]\nmax_load = 0.25\n"));
        assert_eq!(e.key.as_deref(), Some("defaults.max_load"));
        assert!(e.message.contains("like \"25%\""), "{e}");
    }

    #[test]
    fn contradictory_timings_are_refused() {
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\ndebounce = \"1m\"\nmax_delay = \"30s\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].debounce"));
        assert_eq!(e.line, Some(5));
        assert!(
            e.message
                .contains("debounce (1m) is longer than max_delay (30s)"),
            "{e}"
        );
        // The default max_delay (30s) counts too.
        let e = err(&format!(
            "{BASE}[[view]]\nname = \"public.a\"\nmin_interval = \"2m\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].min_interval"));
        assert!(
            e.message
                .contains("min_interval (2m) is longer than max_delay (30s)"),
            "{e}"
        );
        // [defaults] sets max_delay below the built-in debounce (2s): blamed there.
        let e = err(&format!(
            "{BASE}[defaults]\nmax_delay = \"1s\"\n[[view]]\nname = \"public.a\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("defaults.max_delay"));
        assert_eq!(e.line, Some(4));
        // A view's own max_delay is blamed before [defaults]' debounce.
        let e = err(&format!(
            "{BASE}[defaults]\ndebounce = \"10s\"\n[[view]]\nname = \"public.a\"\nmax_delay = \"5s\"\n"
        ));
        assert_eq!(e.key.as_deref(), Some("view[0].max_delay"));
        // Equal is fine, and so is a view that fixes what [defaults] would contradict.
        parse(&format!(
            "{BASE}[defaults]\nmax_delay = \"1s\"\ndebounce = \"1s\"\nmin_interval = \"1s\"\n[[view]]\nname = \"public.a\"\n[[view]]\nname = \"public.b\"\ndebounce = \"1m\"\nmax_delay = \"1h\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn password_never_in_errors_or_debug() {
        let e = err("[database]\nurl = \"postgresql://u:secret@h/db\"\nbogus = 1\n");
        assert!(!e.to_string().contains("secret"), "{e}");
        let c = parse(BASE).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }
}
