//! Connecting to PostgreSQL: resolving the URL and password, TLS per `sslmode`, TCP
//! keepalives for long-lived connections, and `application_name = refreshd`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, UrlSource};

/// The TLS stream type of every refreshd connection.
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// `MakeRustlsConnect` that also accepts Unix socket paths as host names.
///
/// tokio-postgres asks for a TLS connector before it decides whether TLS is used, and
/// rustls refuses a socket path as a server name. Over a Unix socket refreshd never
/// uses TLS (as libpq), so the placeholder name is never presented to a server.
#[derive(Clone)]
pub struct MakeTls(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        if hostname.starts_with('/') || hostname.is_empty() {
            MakeTlsConnect::<S>::make_tls_connect(&mut self.0, "localhost")
        } else {
            MakeTlsConnect::<S>::make_tls_connect(&mut self.0, hostname)
        }
    }
}
/// A connection that must be polled (spawned, or driven with `poll_message`).
pub type PgConnection = Connection<Socket, TlsStream>;

/// Why the database settings could not be turned into a connection.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.{key}: environment variable {var} is not set")]
    MissingEnv { key: &'static str, var: String },
    #[error("database.{key}: invalid connection string: {reason}")]
    BadUrl { key: &'static str, reason: String },
    #[error("database.password_file: cannot read {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sslrootcert {}: {reason}", path.display())]
    RootCert { path: PathBuf, reason: String },
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("connecting to {target} timed out after {timeout:?}")]
    Timeout { target: String, timeout: Duration },
}

/// libpq's `sslmode` values that refreshd honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Everything needed to open a connection; cheap to clone.
#[derive(Clone)]
pub struct ConnectInfo {
    pg: tokio_postgres::Config,
    /// One configuration per host of the URL, tried in turn (as libpq does), each
    /// with its own `connect_timeout`.
    hosts: Vec<HostAttempt>,
    tls: MakeTls,
    ssl_mode: SslMode,
    target: String,
    /// The tasks that drive [`ConnectInfo::connect`]'s connections (shared by clones):
    /// each ends when its client is dropped; the daemon waits for them at shutdown
    /// ([`ConnectInfo::drain`]).
    drivers: tokio_util::task::TaskTracker,
}

/// One host of a (possibly multi-host) URL: the URL's settings with that host only.
#[derive(Clone)]
struct HostAttempt {
    pg: tokio_postgres::Config,
    /// `user@host:port/db`, for logs and errors.
    target: String,
}

impl std::fmt::Debug for HostAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target)
    }
}

/// A new connection and the host that answered.
pub struct Opened {
    pub client: Client,
    pub connection: PgConnection,
    /// `user@host:port/db` of the host that answered (of a multi-host URL, not
    /// necessarily the first).
    pub host: String,
}

impl std::fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("target", &self.target)
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

impl ConnectInfo {
    /// Resolves `[database]` (`url` or `url_env`, `password_file`) for the refresh
    /// connections.
    pub fn for_refresh(db: &DatabaseConfig, config_dir: &Path) -> Result<Self, DbError> {
        Self::resolve(&db.url, "url", db, config_dir)
    }

    /// The LISTEN connection: `listen_url` when set (so that a pooler can sit on the
    /// refresh connections but not on the listener), else `url`.
    pub fn for_listen(db: &DatabaseConfig, config_dir: &Path) -> Result<Self, DbError> {
        match &db.listen_url {
            Some(u) => Self::resolve(u, "listen_url", db, config_dir),
            None => Self::for_refresh(db, config_dir),
        }
    }

    fn resolve(
        source: &UrlSource,
        key: &'static str,
        db: &DatabaseConfig,
        config_dir: &Path,
    ) -> Result<Self, DbError> {
        let url = match source {
            UrlSource::Inline(u) => u.clone(),
            UrlSource::Env(var) => std::env::var(var).map_err(|_| DbError::MissingEnv {
                key,
                var: var.clone(),
            })?,
        };
        let split = split_ssl_options(&url).map_err(|reason| DbError::BadUrl { key, reason })?;
        let mut pg =
            tokio_postgres::Config::from_str(&split.rest).map_err(|e| DbError::BadUrl {
                key,
                reason: e.to_string(),
            })?;
        if let Some(path) = &db.password_file {
            let path = config_dir.join(path);
            let pw = std::fs::read_to_string(&path)
                .map_err(|source| DbError::PasswordFile { path, source })?;
            pg.password(pw.trim_end_matches(['\r', '\n']));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("refreshd");
        }
        pg.connect_timeout(db.connect_timeout);
        // Long-lived connections must notice a dead peer in well under a minute; the
        // defaults (2 h idle) would leave a half-open listener deaf for hours.
        pg.keepalives(true);
        if pg.get_keepalives_idle() == Duration::from_secs(7200) {
            pg.keepalives_idle(Duration::from_secs(30));
        }
        pg.keepalives_interval(Duration::from_secs(10));
        pg.keepalives_retries(3);
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(Duration::from_secs(60));
        }
        let mut ssl_mode = split.ssl_mode.unwrap_or(SslMode::Prefer);
        // As in libpq, TLS is never used over a Unix-domain socket.
        let all_unix = !pg.get_hosts().is_empty()
            && pg
                .get_hosts()
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        if all_unix {
            ssl_mode = SslMode::Disable;
        }
        pg.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let root = match &split.root_cert {
            Some(p) => Some(load_roots(&config_dir.join(p))?),
            None => None,
        };
        let tls = MakeTls(MakeRustlsConnect::new(tls_config(ssl_mode, root)));
        let target = describe(&pg);
        let hosts = split_hosts(&pg).map_err(|reason| DbError::BadUrl { key, reason })?;
        Ok(Self {
            pg,
            hosts,
            tls,
            ssl_mode,
            target,
            drivers: tokio_util::task::TaskTracker::new(),
        })
    }

    /// `user@host:port/db`, never the password: for logs and errors.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Opens a connection; the caller drives the returned [`PgConnection`].
    pub async fn connect_raw(&self) -> Result<(Client, PgConnection), DbError> {
        self.open().await.map(|o| (o.client, o.connection))
    }

    /// Opens a connection, trying the URL's hosts in turn (in random order with
    /// `load_balance_hosts=random`), as libpq does: each host gets its own
    /// `connect_timeout`, which covers the TCP connect, TLS, the startup and
    /// authentication and the `target_session_attrs` check, so that a host that
    /// accepts TCP but never answers (a frozen server) costs one timeout and the next
    /// host is tried.
    pub async fn open(&self) -> Result<Opened, DbError> {
        let timeout = self
            .pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        if self.hosts.is_empty() {
            // No host at all: tokio-postgres says what is missing.
            return match self.pg.connect(self.tls.clone()).await {
                Ok((client, connection)) => Ok(Opened {
                    client,
                    connection,
                    host: self.target.clone(),
                }),
                Err(e) => Err(DbError::Connect {
                    target: self.target.clone(),
                    reason: error_chain(&e),
                }),
            };
        }
        let mut order: Vec<&HostAttempt> = self.hosts.iter().collect();
        if self.pg.get_load_balance_hosts() == tokio_postgres::config::LoadBalanceHosts::Random {
            shuffle(&mut order);
        }
        let mut failures: Vec<(String, DbError)> = Vec::new();
        for host in order {
            match tokio::time::timeout(timeout, host.pg.connect(self.tls.clone())).await {
                Ok(Ok((client, connection))) => {
                    if !failures.is_empty() {
                        tracing::debug!(host = %host.target, skipped = %failures.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join("; "), "connected to a later host");
                    }
                    return Ok(Opened {
                        client,
                        connection,
                        host: host.target.clone(),
                    });
                }
                Ok(Err(e)) => failures.push((
                    host.target.clone(),
                    DbError::Connect {
                        target: host.target.clone(),
                        reason: error_chain(&e),
                    },
                )),
                Err(_) => failures.push((
                    host.target.clone(),
                    DbError::Timeout {
                        target: host.target.clone(),
                        timeout,
                    },
                )),
            }
        }
        if failures.len() == 1 {
            return Err(failures.pop().expect("one failure").1);
        }
        let reason = failures
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        Err(DbError::Connect {
            target: self.target.clone(),
            reason: format!("no host answered: {reason}"),
        })
    }

    /// Opens a connection and drives it on a task of its own, tracked for
    /// [`ConnectInfo::drain`]; the task ends when the client is dropped (after telling
    /// the server goodbye).
    pub async fn connect(&self) -> Result<Client, DbError> {
        let (client, connection) = self.connect_raw().await?;
        let target = self.target.clone();
        self.drivers.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %e, "connection closed");
            }
        });
        Ok(client)
    }

    /// Connects, retrying with [`Backoff`] (capped at 30 s) until it works; `None` once
    /// `stop` is cancelled. `retrying` hears each failure and the wait before the next
    /// attempt (to log it, or to beat a liveness clock).
    pub async fn connect_until(
        &self,
        stop: &CancellationToken,
        mut retrying: impl FnMut(&DbError, Duration),
    ) -> Option<Client> {
        let mut backoff = Backoff::new(RECONNECT_CAP);
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => return None,
                c = self.connect() => c,
            };
            match attempt {
                Ok(c) => return Some(c),
                Err(e) => {
                    let delay = backoff.next_delay();
                    retrying(&e, delay);
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits, at most `within`, for the tasks driving this target's connections (of
    /// every clone) to end: once their clients are dropped, each says goodbye to the
    /// server and ends. Those still running after `within` are left to the runtime's
    /// shutdown.
    pub async fn drain(&self, within: Duration) -> bool {
        self.drivers.close();
        tokio::time::timeout(within, self.drivers.wait())
            .await
            .is_ok()
    }

    /// The TLS connector, for cancel requests.
    pub fn tls(&self) -> MakeTls {
        self.tls.clone()
    }
}

/// The longest wait between two reconnection attempts.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// Capped exponential backoff with full jitter, for reconnecting (and restarting a
/// task): the n-th wait is drawn uniformly from [0, base], base = 250 ms × 2^n, at most
/// the cap, so that replicas cut off together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(RECONNECT_CAP)
    }
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Self { attempt: 0, cap }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = jittered(self.attempt, self.cap);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// After a success: the next failure waits little again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// One draw of [`Backoff`]: uniform over [0, base], base = 250 ms × 2^attempt, at most
/// `cap`.
pub fn jittered(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(10))).min(cap);
    Duration::from_nanos(rand::random_range(0..=base.as_nanos() as u64))
}

/// A tokio-postgres error with its causes: its own Display says only "db error" or
/// "error connecting to server", the server's message is in the source.
pub fn error_chain(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn describe(pg: &tokio_postgres::Config) -> String {
    let user = pg.get_user().unwrap_or("?");
    let db = pg.get_dbname().unwrap_or(user);
    let n = pg.get_hosts().len().max(pg.get_hostaddrs().len());
    let hosts = if n == 0 {
        format!(
            "localhost:{}",
            pg.get_ports().first().copied().unwrap_or(5432)
        )
    } else {
        (0..n)
            .map(|i| host_label(pg, i))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{user}@{hosts}/{db}")
}

/// `host:port` of the `i`th host (`host` falling back to `hostaddr`, the port to the
/// single port given, then 5432).
fn host_label(pg: &tokio_postgres::Config, i: usize) -> String {
    let host = match (pg.get_hosts().get(i), pg.get_hostaddrs().get(i)) {
        (Some(tokio_postgres::config::Host::Tcp(h)), _) => h.clone(),
        (Some(tokio_postgres::config::Host::Unix(p)), _) => p.display().to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "localhost".into(),
    };
    format!("{host}:{}", port_of(pg, i))
}

fn port_of(pg: &tokio_postgres::Config, i: usize) -> u16 {
    pg.get_ports()
        .get(i)
        .or_else(|| pg.get_ports().first())
        .copied()
        .unwrap_or(5432)
}

/// The URL's settings with everything but the hosts, hostaddrs and ports.
fn without_hosts(pg: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    if let Some(v) = pg.get_user() {
        c.user(v);
    }
    if let Some(v) = pg.get_password() {
        c.password(v);
    }
    if let Some(v) = pg.get_dbname() {
        c.dbname(v);
    }
    if let Some(v) = pg.get_options() {
        c.options(v);
    }
    if let Some(v) = pg.get_application_name() {
        c.application_name(v);
    }
    c.ssl_mode(pg.get_ssl_mode());
    c.ssl_negotiation(pg.get_ssl_negotiation());
    if let Some(v) = pg.get_connect_timeout() {
        c.connect_timeout(*v);
    }
    if let Some(v) = pg.get_tcp_user_timeout() {
        c.tcp_user_timeout(*v);
    }
    c.keepalives(pg.get_keepalives());
    c.keepalives_idle(pg.get_keepalives_idle());
    if let Some(v) = pg.get_keepalives_interval() {
        c.keepalives_interval(v);
    }
    if let Some(v) = pg.get_keepalives_retries() {
        c.keepalives_retries(v);
    }
    c.target_session_attrs(pg.get_target_session_attrs());
    c.channel_binding(pg.get_channel_binding());
    c.load_balance_hosts(pg.get_load_balance_hosts());
    c
}

/// One configuration per host, with that host's `hostaddr` and port; the same checks
/// as libpq (as many hostaddrs as hosts, one port or one per host).
fn split_hosts(pg: &tokio_postgres::Config) -> Result<Vec<HostAttempt>, String> {
    let (hosts, addrs, ports) = (pg.get_hosts(), pg.get_hostaddrs(), pg.get_ports());
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(format!(
            "{} hosts but {} hostaddrs: give one hostaddr per host",
            hosts.len(),
            addrs.len()
        ));
    }
    let n = hosts.len().max(addrs.len());
    if ports.len() > 1 && ports.len() != n {
        return Err(format!(
            "{} ports for {n} hosts: give one port for all hosts or one per host",
            ports.len()
        ));
    }
    Ok((0..n)
        .map(|i| {
            let mut c = without_hosts(pg);
            match hosts.get(i) {
                Some(tokio_postgres::config::Host::Tcp(h)) => {
                    c.host(h);
                }
                Some(tokio_postgres::config::Host::Unix(p)) => {
                    c.host_path(p);
                    // As in libpq, TLS is never used over a Unix-domain socket.
                    c.ssl_mode(tokio_postgres::config::SslMode::Disable);
                }
                None => {}
            }
            if let Some(a) = addrs.get(i) {
                c.hostaddr(*a);
            }
            if !ports.is_empty() {
                c.port(port_of(pg, i));
            }
            let user = pg.get_user().unwrap_or("?");
            let db = pg.get_dbname().unwrap_or(user);
            HostAttempt {
                pg: c,
                target: format!("{user}@{}/{db}", host_label(pg, i)),
            }
        })
        .collect())
}

/// Fisher-Yates with the standard library's per-process random hash keys.
fn shuffle<T>(v: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    for i in (1..v.len()).rev() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// A connection string with the TLS options tokio-postgres does not know taken out.
#[derive(Debug, PartialEq)]
struct SplitUrl {
    rest: String,
    ssl_mode: Option<SslMode>,
    root_cert: Option<String>,
}

fn parse_ssl_mode(v: &str) -> Result<SslMode, String> {
    Ok(match v {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgresql://...?sslmode=...`) or a
/// key/value string (`host=... sslmode=...`).
fn split_ssl_options(url: &str) -> Result<SplitUrl, String> {
    let mut ssl_mode = None;
    let mut root_cert = None;
    let mut take = |k: &str, v: &str| -> Result<bool, String> {
        match k {
            "sslmode" => {
                ssl_mode = Some(parse_ssl_mode(v)?);
                Ok(true)
            }
            "sslrootcert" => {
                root_cert = Some(v.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v)?)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in kv_tokens(url)? {
            if !take(&k, &v)? {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    Ok(SplitUrl {
        rest,
        ssl_mode,
        root_cert,
    })
}

/// Never quotes the value: it may be part of a password.
fn percent_decode(s: &str) -> Result<String, String> {
    crate::percent::decode(s).ok_or_else(|| {
        "the URL's query has a malformed percent-encoding (write %XX with two hex digits)".into()
    })
}

/// Splits `key=value key='quoted value'` into (key, value, raw token).
fn kv_tokens(s: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            // The token may be part of a password: never quote it.
            return Err(
                "expected key=value; quote values that contain spaces with single quotes".into(),
            );
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated quoted value".into()),
                    Some('\\') => {
                        if let Some(c) = chars.get(i + 1) {
                            value.push(*c);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        out.push((key, value, chars[start..i].iter().collect()));
    }
    Ok(out)
}

fn load_roots(path: &Path) -> Result<RootCertStore, DbError> {
    let err = |reason: String| DbError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        store.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// libpq semantics: `verify-full` checks chain and host name; `verify-ca` the chain only;
/// `require`/`prefer` encrypt without checking, unless a root certificate is given, in
/// which case they check the chain like `verify-ca`.
fn tls_config(mode: SslMode, root: Option<RootCertStore>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let roots = Arc::new(root.clone().unwrap_or_else(|| RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }));
    let verify_chain = match mode {
        SslMode::VerifyFull => return builder.with_root_certificates(roots).with_no_client_auth(),
        SslMode::VerifyCa => true,
        SslMode::Require | SslMode::Prefer => root.is_some(),
        SslMode::Disable => false,
    };
    let inner = if verify_chain {
        Some(
            WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .expect("root store is not empty"),
        )
    } else {
        None
    };
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LibpqVerifier {
            chain: inner,
            provider: provider(),
        }))
        .with_no_client_auth()
}

/// Checks the chain only (`verify-ca`), or nothing (`require` without a root certificate).
#[derive(Debug)]
struct LibpqVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_is_capped() {
        let mut b = super::Backoff::default();
        for _ in 0..40 {
            assert!(b.next_delay() <= super::RECONNECT_CAP);
        }
    }

    #[test]
    fn backoff_is_full_jitter() {
        // attempt 3: base 2 s. Uniform over [0, 2 s]: both halves are drawn (the chance
        // that 200 draws all land in one half is 2^-199), never above the base.
        let draws: Vec<std::time::Duration> = (0..200)
            .map(|_| super::jittered(3, super::RECONNECT_CAP))
            .collect();
        let second = std::time::Duration::from_secs(1);
        assert!(draws.iter().all(|d| *d <= 2 * second));
        assert!(draws.iter().any(|d| *d < second), "{draws:?}");
        assert!(draws.iter().any(|d| *d > second), "{draws:?}");
    }

    #[test]
    fn backoff_grows_then_resets() {
        let mut b = super::Backoff::new(std::time::Duration::from_secs(30));
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.attempt, 5);
        b.reset();
        assert!(b.next_delay() <= std::time::Duration::from_millis(250));
    }
    use super::*;

    #[test]
    fn splits_url_options() {
        let s = split_ssl_options("postgresql://u:p@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem").unwrap();
        assert_eq!(s.rest, "postgresql://u:p@h:5/db?application_name=x");
        assert_eq!(s.ssl_mode, Some(SslMode::VerifyFull));
        assert_eq!(s.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let s = split_ssl_options("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(s.rest, "postgresql://h/db");
        assert!(split_ssl_options("postgresql://h/db?sslmode=bogus").is_err());
        assert!(split_ssl_options("postgresql://h/db?sslrootcert=%+1").is_err());
    }

    #[test]
    fn splits_key_value_options() {
        let s = split_ssl_options(
            "host=/tmp port=5 sslmode=verify-ca password='a b\\'c' sslrootcert = /x.pem",
        )
        .unwrap();
        assert_eq!(s.rest, "host=/tmp port=5 password='a b\\'c'");
        assert_eq!(s.ssl_mode, Some(SslMode::VerifyCa));
        assert_eq!(s.root_cert.as_deref(), Some("/x.pem"));
        assert!(tokio_postgres::Config::from_str(&s.rest).is_ok());
    }

    fn config(s: &str) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(s).unwrap()
    }

    #[test]
    fn one_host_keeps_every_setting() {
        // Config is PartialEq: a setting the per-host copy forgot would show here.
        let pg = config(
            "host=db.example port=6543 user=u password=p dbname=d options='-c x=1' \
             application_name=a sslmode=require connect_timeout=7 tcp_user_timeout=9 \
             keepalives=1 keepalives_idle=11 keepalives_interval=3 keepalives_retries=4 \
             target_session_attrs=read-write channel_binding=require load_balance_hosts=random",
        );
        let hosts = split_hosts(&pg).unwrap();
        assert_eq!(hosts.len(), 1);
        assert!(hosts[0].pg == pg);
        assert_eq!(hosts[0].target, "u@db.example:6543/d");
        let pg = config("host=h hostaddr=10.0.0.1 user=u");
        assert!(split_hosts(&pg).unwrap()[0].pg == pg);
    }

    #[test]
    fn several_hosts_one_config_each() {
        let pg =
            config("host=a,b,/run/pg port=1,2,3 user=u dbname=d target_session_attrs=read-write");
        let hosts = split_hosts(&pg).unwrap();
        let targets: Vec<&str> = hosts.iter().map(|h| h.target.as_str()).collect();
        assert_eq!(targets, ["u@a:1/d", "u@b:2/d", "u@/run/pg:3/d"]);
        assert_eq!(describe(&pg), "u@a:1,b:2,/run/pg:3/d");
        for (h, port) in hosts.iter().zip([1, 2, 3]) {
            assert_eq!(h.pg.get_hosts().len(), 1);
            assert_eq!(h.pg.get_ports(), [port]);
            assert_eq!(
                h.pg.get_target_session_attrs(),
                tokio_postgres::config::TargetSessionAttrs::ReadWrite
            );
        }
        assert_eq!(
            hosts[2].pg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        // One port for all hosts.
        let hosts = split_hosts(&config("host=a,b port=7 user=u")).unwrap();
        assert_eq!(hosts[1].pg.get_ports(), [7]);
        assert_eq!(hosts[1].target, "u@b:7/u");
        // hostaddr per host, the host name kept for TLS.
        let hosts = split_hosts(&config("host=a,b hostaddr=10.0.0.1,10.0.0.2 user=u")).unwrap();
        assert_eq!(
            hosts[1].pg.get_hostaddrs(),
            ["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            matches!(&hosts[1].pg.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "b")
        );
    }

    #[test]
    fn host_counts_must_agree() {
        let e = split_hosts(&config("host=a,b port=1,2,3")).unwrap_err();
        assert!(e.contains("3 ports for 2 hosts"), "{e}");
        let e = split_hosts(&config("host=a,b hostaddr=10.0.0.1")).unwrap_err();
        assert!(e.contains("2 hosts but 1 hostaddrs"), "{e}");
    }

    #[test]
    fn parse_errors_never_quote_a_token() {
        let e = split_ssl_options("host=h password=half secret-rest sslmode=require").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
