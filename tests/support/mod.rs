//! Shared test infrastructure: a throwaway PostgreSQL cluster per test process (or the
//! server in `$DATABASE_URL`), a fresh database per test that is dropped even when the
//! test panics, and helpers to run the real binary.
#![allow(dead_code)]

pub mod arming;
pub mod browser;
pub mod config;
pub mod keyed_storm;
pub mod logging;
pub mod standby;
pub mod tpch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use refreshd::cli::cluster::{ClusterOptions, TempCluster};

/// `public.orders` with a statement-level NOTIFY trigger on `orders_changed` (constant
/// payload, TRUNCATE included), 1,000 rows in 10 buckets, and `public.order_totals` on
/// it with its unique index: the schema most daemon tests share.
pub const ORDERS_SCHEMA: &str = r#"
        CREATE TABLE public.orders (id bigserial PRIMARY KEY, bucket int NOT NULL, amount int NOT NULL);
        INSERT INTO public.orders (bucket, amount) SELECT g % 10, g FROM generate_series(1, 1000) g;
        CREATE FUNCTION public.notify_orders() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN PERFORM pg_notify('orders_changed', ''); RETURN NULL; END$$;
        CREATE TRIGGER orders_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.orders
          FOR EACH STATEMENT EXECUTE FUNCTION public.notify_orders();
        CREATE MATERIALIZED VIEW public.order_totals AS
          SELECT bucket, count(*) AS n, sum(amount) AS total FROM public.orders GROUP BY bucket;
        CREATE UNIQUE INDEX ON public.order_totals (bucket);
"#;

/// How many rows `public.order_totals` and a fresh computation of its query disagree on
/// (`"0"`: exact).
pub const ORDERS_EXACT: &str = "SELECT count(*) FROM ((TABLE public.order_totals EXCEPT ALL \
    SELECT bucket, count(*), sum(amount) FROM public.orders GROUP BY bucket) \
    UNION ALL (SELECT bucket, count(*), sum(amount) FROM public.orders GROUP BY bucket \
    EXCEPT ALL TABLE public.order_totals)) d";

/// How many rows two queries (or `TABLE t`s) disagree on, duplicates counted.
pub fn differences_sql(left: &str, right: &str) -> String {
    format!("SELECT count(*) FROM (({left} EXCEPT ALL {right}) UNION ALL ({right} EXCEPT ALL {left})) d")
}

/// Where test databases live.
pub struct Server {
    cluster: Option<TempCluster>,
    /// Key/value DSN parts (without dbname) for the admin connection.
    base: String,
    psql: PathBuf,
}

static SHARED: OnceLock<Server> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The per-process server: `$DATABASE_URL`'s, or a throwaway cluster started on first use.
pub fn server() -> &'static Server {
    SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let cfg = tokio_postgres::Config::from_str(&url).expect("DATABASE_URL parses");
            let mut base = String::new();
            if let Some(h) = cfg.get_hosts().first() {
                match h {
                    tokio_postgres::config::Host::Tcp(h) => base.push_str(&format!("host={h} ")),
                    tokio_postgres::config::Host::Unix(p) => {
                        base.push_str(&format!("host={} ", p.display()))
                    }
                }
            }
            if let Some(p) = cfg.get_ports().first() {
                base.push_str(&format!("port={p} "));
            }
            if let Some(u) = cfg.get_user() {
                base.push_str(&format!("user={u} "));
            }
            if let Some(pw) = cfg.get_password() {
                base.push_str(&format!(
                    "password='{}' ",
                    String::from_utf8_lossy(pw).replace('\'', "\\'")
                ));
            }
            Server {
                cluster: None,
                base,
                psql: refreshd::cli::cluster::client_program("psql"),
            }
        } else {
            let cluster =
                TempCluster::start(&ClusterOptions::default()).expect("start a throwaway cluster");
            let base = format!(
                "host={} port={} user=postgres ",
                cluster.socket_dir().display(),
                cluster.port()
            );
            let psql = refreshd::cli::cluster::client_program("psql");
            Server {
                cluster: Some(cluster),
                base,
                psql,
            }
        }
    })
}

impl Server {
    pub fn dsn(&self, db: &str) -> String {
        format!("{}dbname={db}", self.base)
    }

    /// Runs SQL through psql on `db`, failing the test on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(&self.psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.dsn(db))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a psql script file on `db`.
    pub fn psql_file(&self, db: &str, file: &Path) -> Output {
        Command::new(&self.psql)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.dsn(db))
            .arg("-f")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    pub fn cluster(&self) -> Option<&TempCluster> {
        self.cluster.as_ref()
    }
}

/// A database of its own for one test; dropped (with FORCE) when the value is.
pub struct TestDb {
    pub name: String,
    pub server: &'static Server,
}

impl TestDb {
    pub fn new() -> Self {
        let server = server();
        let name = format!(
            "refreshd_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        server.psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { name, server }
    }

    /// Key/value DSN as the superuser (or DATABASE_URL's user).
    pub fn dsn(&self) -> String {
        self.server.dsn(&self.name)
    }

    /// Key/value DSN as another role (no password: the throwaway cluster trusts).
    pub fn dsn_as(&self, user: &str) -> String {
        let base = self.base_without(&["user=", "password="]);
        format!("{base} user={user} dbname={}", self.name)
    }

    /// The admin DSN's parts without those starting with one of `keys`.
    fn base_without(&self, keys: &[&str]) -> String {
        self.server
            .base
            .split_whitespace()
            .filter(|p| !keys.iter().any(|k| p.starts_with(k)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The server's `server_version_num` (150018 for 15.18).
    pub fn server_version(&self) -> u32 {
        self.psql("SHOW server_version_num")
            .parse()
            .expect("server_version_num")
    }

    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }

    /// The server's TCP port on 127.0.0.1 (the throwaway cluster's, or
    /// `$DATABASE_URL`'s), for a proxy in front of it.
    pub fn tcp_port(&self) -> u16 {
        match self.server.cluster() {
            Some(c) => c.port(),
            None => {
                let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
                let cfg = tokio_postgres::Config::from_str(&url).expect("DATABASE_URL parses");
                cfg.get_ports().first().copied().unwrap_or(5432)
            }
        }
    }

    /// Key/value DSN as the superuser through 127.0.0.1:`port` (a proxy).
    pub fn dsn_via(&self, port: u16) -> String {
        let base = self.base_without(&["host=", "port="]);
        format!("host=127.0.0.1 port={port} {base} dbname={}", self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.dsn(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new(&self.server.psql)
            .args(["-X", "-q", "-d"])
            .arg(self.server.dsn("postgres"))
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdin(Stdio::null())
            .output();
    }
}

/// The repository root (for `sql/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a config file into a temp dir that lives as long as the returned guard.
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("refreshd.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// `refreshd check` on `config` exits 0 (the report and the config in the failure).
pub fn assert_check_passes(config: &str) {
    let (_dir, path) = write_config(config);
    let check = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let report = format!("{}{}", stdout(&check), stderr(&check));
    assert_eq!(check.status.code(), Some(0), "{report}\n{config}");
}

/// Runs the real binary with these arguments.
pub fn refreshd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_refreshd"))
        .args(args)
        .env_remove("REFRESHD_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run refreshd")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits for `cond` to hold, polling, up to `timeout`; panics with `what` otherwise.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The backend pid of a client's session.
pub async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid()")
        .get(0)
}

/// Waits (10 s at most) until backend `pid` waits on a lock; panics naming `what`.
pub async fn waits_on_a_lock(db: &TestDb, pid: i32, what: &str) {
    let probe = db.client().await;
    wait_for(Duration::from_secs(10), what, || {
        let probe = &probe;
        async move {
            probe
                .query_one(
                    "SELECT coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .map(|r| r.get::<_, String>(0) == "Lock")
                .unwrap_or(false)
        }
    })
    .await;
}

/// A free TCP port on 127.0.0.1 for the HTTP server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 client for the daemon's routes: (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample in Prometheus text, by its exact name-and-labels prefix
/// (labels in the order the registry prints them: alphabetical).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
}

/// The real daemon as a child process, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `refreshd run` on `config` (which must not set [http]: a free port is
    /// appended as the last table).
    pub fn start(config: &str) -> Daemon {
        Self::start_with_env(config, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(config, "", env)
    }

    /// The general form: `http_extra` is appended to the generated `[http]` table.
    pub fn start_full(config: &str, http_extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_args(&[], config, http_extra, env)
    }

    /// [`Daemon::start_full`] with `global` arguments before `run` (`--log-format json`).
    pub fn start_args(
        global: &[&str],
        config: &str,
        http_extra: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refreshd.toml");
        std::fs::write(
            &path,
            format!("{config}\n[http]\nlisten = \"127.0.0.1:{port}\"\n{http_extra}\n"),
        )
        .unwrap();
        let log = dir.path().join("refreshd.log");
        let child = Command::new(env!("CARGO_BIN_EXE_refreshd"))
            .args(global)
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "refreshd=debug,info")
            .envs(env.iter().copied())
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

    /// Rewrites the config file (keeping the HTTP section) for a SIGHUP.
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(
            &self.config,
            format!("{config}\n[http]\nlisten = \"127.0.0.1:{}\"\n", self.port),
        )
        .unwrap();
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, &[]).unwrap_or((0, String::new()))
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http(self.port, "POST", path, headers).unwrap_or((0, String::new()))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// `refreshd_refreshes_total{outcome,reason,view}`, 0 when absent.
    pub fn refreshes(&self, view: &str, reason: &str, outcome: &str) -> f64 {
        sample(
            &self.metrics(),
            &format!("refreshd_refreshes_total{{outcome=\"{outcome}\",reason=\"{reason}\",view=\"{view}\"}}"),
        )
        .unwrap_or(0.0)
    }

    /// Sum over reasons of successful refreshes of `view`.
    pub fn successes(&self, view: &str) -> f64 {
        let m = self.metrics();
        ["notify", "schedule", "force", "startup", "resync", "dependency", "detected"]
            .iter()
            .filter_map(|r| {
                sample(&m, &format!("refreshd_refreshes_total{{outcome=\"success\",reason=\"{r}\",view=\"{view}\"}}"))
            })
            .sum()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let what = format!("/readyz on {} (log: {})", self.port, self.log.display());
        wait_for(timeout, &what, || async { self.get("/readyz").0 == 200 }).await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- refreshd log ---\n{}", self.log_text());
        }
    }
}

/// A real PgBouncer (Debian's `pgbouncer`) in transaction mode in front of the test
/// server, as the postgres user, on a free loopback port; stopped on drop.
pub struct PgBouncer {
    pub port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// `pool_size` server connections per (database, user), shared by every client.
    pub fn start(db: &TestDb, pool_size: u32) -> PgBouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is needed for this test (apt-get install pgbouncer); .ci/run installs it");
        let cluster = db
            .server
            .cluster()
            .expect("PgBouncer tests need the throwaway cluster (unset DATABASE_URL)");
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={} port={}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 200\n\
                 server_reset_query =\nignore_startup_parameters = extra_float_digits,options,application_name\n\
                 logfile = {}\npidfile = {}\n",
                cluster.socket_dir().display(),
                cluster.port(),
                dir.path().join("users.txt").display(),
                dir.path().join("pgbouncer.log").display(),
                dir.path().join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        // PgBouncer refuses to run as root.
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", bin])
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer { port, child, dir }
    }

    /// A key/value DSN for `db` through the pooler.
    pub fn dsn(&self, db: &TestDb) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            self.port, db.name
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let pid =
            std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")).unwrap_or_default();
        for p in [pid.trim().to_string(), self.child.id().to_string()] {
            if !p.is_empty() {
                let _ = Command::new("kill").args(["-TERM", &p]).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Replicas and the control channel (tests/replicas.rs, tests/control.rs).

/// A TCP proxy that can freeze: while frozen it forwards nothing in either direction
/// but keeps every socket open, so the peers see a connection that is neither closed
/// nor answering (TCP keepalives are still answered by the proxy's kernel) — the
/// half-open connection only an application-level deadline can find. New connections
/// are accepted while frozen, and hang the same way.
///
/// It can also hold back one kind of query ([`FreezingProxy::hold_sent`]): a
/// connection that sends a given text is held from there on, every other goes on.
pub struct FreezingProxy {
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gate: std::sync::Arc<Gate>,
}

/// What [`FreezingProxy::hold_sent`] holds, and the connections it holds.
#[derive(Default)]
struct Gate {
    marker: std::sync::Mutex<Option<Vec<u8>>>,
    held: std::sync::atomic::AtomicUsize,
    /// Bumped by [`FreezingProxy::cut_held`]: the held connections are closed.
    cut: std::sync::atomic::AtomicUsize,
}

impl FreezingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = std::sync::Arc::new(Gate::default());
        let (f, g) = (frozen.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(proxy_pump(cr, sw, f.clone(), Some(g.clone())));
                tokio::spawn(proxy_pump(sr, cw, f.clone(), None));
            }
        });
        FreezingProxy { port, frozen, gate }
    }

    /// From now on, a connection whose client sends `text` (in a query) is held there:
    /// nothing more of it reaches the server until [`FreezingProxy::release`] or
    /// [`FreezingProxy::cut_held`].
    pub fn hold_sent(&self, text: &str) {
        *self.gate.marker.lock().unwrap() = Some(text.as_bytes().to_vec());
    }

    /// How many connections are held now.
    pub fn held(&self) -> usize {
        self.gate.held.load(Ordering::SeqCst)
    }

    /// Holds nothing more, and lets the held connections go on.
    pub fn release(&self) {
        *self.gate.marker.lock().unwrap() = None;
    }

    /// Holds nothing more, and closes the held connections (their clients see the
    /// server go away).
    pub fn cut_held(&self) {
        self.gate.cut.fetch_add(1, Ordering::SeqCst);
        self.release();
    }

    /// Stops forwarding; sockets stay open.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Forwards again (what was held back is delivered).
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

async fn proxy_pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gate: Option<std::sync::Arc<Gate>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    // The end of the previous read: a text may straddle two.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(g) = &gate {
            let marker = g.marker.lock().unwrap().clone();
            if let Some(m) = marker {
                let mut seen = std::mem::take(&mut tail);
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(m.len()).any(|w| w == m.as_slice()) {
                    let cut = g.cut.load(Ordering::SeqCst);
                    g.held.fetch_add(1, Ordering::SeqCst);
                    while g.marker.lock().unwrap().is_some() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    g.held.fetch_sub(1, Ordering::SeqCst);
                    if g.cut.load(Ordering::SeqCst) != cut {
                        // Closing this half ends the server's session; the other
                        // pump then closes the client's side.
                        return;
                    }
                }
                let keep = seen.len().saturating_sub(m.len());
                tail = seen.split_off(keep);
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Sum of every sample of `name` whose labels contain all of `labels` (each written as
/// `key="value"`), 0 when there is none.
pub fn sum_samples(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with("{")) {
                return None;
            }
            labels
                .iter()
                .all(|want| rest.contains(want))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl Daemon {
    /// `refreshd_leader` (-1 when the daemon does not answer).
    pub fn leader(&self) -> f64 {
        sample(&self.metrics(), "refreshd_leader").unwrap_or(-1.0)
    }

    /// Failed refreshes of `view`, over every reason.
    pub fn failures(&self, view: &str) -> f64 {
        sum_samples(
            &self.metrics(),
            "refreshd_refreshes_total",
            &["outcome=\"failure\"", &format!("view=\"{view}\"")],
        )
    }

    /// Forced refreshes of `view` (success and failure).
    pub fn forced(&self, view: &str) -> f64 {
        sum_samples(
            &self.metrics(),
            "refreshd_refreshes_total",
            &["reason=\"force\"", &format!("view=\"{view}\"")],
        )
    }

    /// A counter without labels, 0 when absent.
    pub fn counter(&self, name: &str) -> f64 {
        sample(&self.metrics(), name).unwrap_or(0.0)
    }

    /// The log from byte `from` on.
    pub fn log_since(&self, from: usize) -> String {
        let text = self.log_text();
        text.get(from..).unwrap_or("").to_string()
    }
}

impl Server {
    /// Runs SQL through psql on `db` and says whether it worked (for cleanup in `Drop`,
    /// where a panic would abort).
    pub fn try_psql(&self, db: &str, sql: &str) -> bool {
        Command::new(&self.psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.dsn(db))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The psql binary (to run it as another role, or with `-c` from a short session).
    pub fn psql_bin(&self) -> &Path {
        &self.psql
    }
}

/// Login roles of one test (role names are cluster-wide, so each carries a suffix
/// unique to the test's database); dropped with what they own when the value is.
/// Declare it after the [`TestDb`] so that it is dropped first.
pub struct TestRoles {
    db: String,
    server: &'static Server,
    names: Vec<String>,
}

impl TestRoles {
    /// Creates `LOGIN` roles `<base>_<db name>` with CONNECT on the test database.
    pub fn create(db: &TestDb, bases: &[&str]) -> TestRoles {
        let names: Vec<String> = bases.iter().map(|b| format!("{b}_{}", db.name)).collect();
        for n in &names {
            db.psql(&format!(
                "CREATE ROLE {n} LOGIN; GRANT CONNECT ON DATABASE {} TO {n}",
                db.name
            ));
        }
        TestRoles {
            db: db.name.clone(),
            server: db.server,
            names,
        }
    }

    /// The full name of the role created from `base`.
    pub fn name(&self, base: &str) -> String {
        let want = format!("{base}_{}", self.db);
        self.names
            .iter()
            .find(|n| **n == want)
            .cloned()
            .unwrap_or_else(|| panic!("no role {base}"))
    }
}

impl Drop for TestRoles {
    fn drop(&mut self) {
        let all = self.names.join(", ");
        self.server
            .try_psql(&self.db, &format!("DROP OWNED BY {all} CASCADE"));
        for n in &self.names {
            // Sessions of the role may still be closing.
            self.server.try_psql(
                &self.db,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{n}'"
                ),
            );
            self.server
                .try_psql("postgres", &format!("DROP ROLE IF EXISTS {n}"));
        }
    }
}

/// `SHOW name` on a session, as the server answers it.
pub async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    let rows = c.simple_query(&format!("SHOW {name}")).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}
