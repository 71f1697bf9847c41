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
    tls: MakeTls,
    ssl_mode: SslMode,
    target: String,
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
        Ok(Self {
            pg,
            tls,
            ssl_mode,
            target,
        })
    }

    /// `user@host:port/db`, never the password: for logs and errors.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Opens a connection; the caller drives the returned [`PgConnection`].
    pub async fn connect_raw(&self) -> Result<(Client, PgConnection), DbError> {
        let timeout = self
            .pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        // connect_timeout in tokio-postgres bounds each TCP attempt; this bounds the
        // whole handshake including TLS and authentication.
        match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.pg.connect(self.tls.clone()),
        )
        .await
        {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(DbError::Connect {
                target: self.target.clone(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(DbError::Timeout {
                target: self.target.clone(),
                timeout,
            }),
        }
    }

    /// Opens a connection and drives it on a task of its own.
    pub async fn connect(&self) -> Result<Client, DbError> {
        let (client, connection) = self.connect_raw().await?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %e, "connection closed");
            }
        });
        Ok(client)
    }

    /// The TLS connector, for cancel requests.
    pub fn tls(&self) -> MakeTls {
        self.tls.clone()
    }
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
    let host = pg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("?");
    let db = pg.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
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

    #[test]
    fn parse_errors_never_quote_a_token() {
        let e = split_ssl_options("host=h password=half secret-rest sslmode=require").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
