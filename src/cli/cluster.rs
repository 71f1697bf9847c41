//! Throwaway PostgreSQL clusters started from the server binaries on this machine, for
//! tests, the demo and the benchmarks.
//!
//! `initdb` refuses to run as root, so as root every server command runs as the
//! `postgres` user (`runuser`), in a directory that user owns. Each cluster gets a
//! free TCP port on 127.0.0.1 and a private socket directory. A watchdog process stops
//! the server and deletes the directory once the process that started it is gone, so
//! a test that panics, aborts or is killed leaves nothing behind; a normal drop does
//! the same at once.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Options for [`TempCluster::start`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// When set, the superuser `postgres` gets this password and TCP connections must
    /// authenticate with SCRAM; otherwise every connection is trusted.
    pub password: Option<String>,
    /// PEM certificate and key to serve TLS with (`ssl = on`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Extra `postgresql.conf` settings.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct TempCluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    watchdog: Option<Child>,
    stopped: bool,
}

/// The directory holding `initdb`, `pg_ctl`, `postgres`: `$PG_BIN`, else PostgreSQL 15's
/// Debian location, else `pg_config --bindir`.
pub fn find_bin_dir() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    for v in ["15", "16", "17", "14", "13"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no PostgreSQL server binaries found: install postgresql-15 or set PG_BIN",
    ))
}

/// A client program (`psql`, `pgbench`): from the server's directory when it has one,
/// else from the first PostgreSQL client found (`$PG_CLIENT_BIN`, Debian's, `$PATH`).
/// Server-only builds (the npm registry's, for the version matrix) carry no clients, and
/// PostgreSQL 15's clients speak to every server version refreshd supports.
pub fn client_program(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(b) = find_bin_dir() {
        dirs.push(b);
    }
    if let Some(p) = std::env::var_os("PG_CLIENT_BIN") {
        dirs.push(PathBuf::from(p));
    }
    for v in ["15", "16", "17", "18", "14", "13"] {
        dirs.push(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check(out: Output, what: &str) -> io::Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl TempCluster {
    /// Creates and starts a cluster in a new directory under the system temp dir.
    pub fn start(opts: &ClusterOptions) -> io::Result<Self> {
        let bin = find_bin_dir()?;
        let as_postgres = running_as_root();
        let root = tempfile::Builder::new()
            .prefix("refreshd-pg-")
            .tempdir()?
            .keep();
        let mut cluster = TempCluster {
            root,
            bin,
            port: 0,
            as_postgres,
            watchdog: None,
            stopped: true,
        };
        // From here on, Drop (or the watchdog) cleans up whatever exists.
        cluster.spawn_watchdog()?;
        if as_postgres {
            check(
                Command::new("chown")
                    .arg("postgres:")
                    .arg(&cluster.root)
                    .output()?,
                "chown postgres",
            )?;
        }
        cluster.initdb(opts)?;
        let mut last_err = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            cluster.write_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.stopped = false;
                    return Ok(cluster);
                }
                // Another process may have taken the port between our probe and bind.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not start postgres")))
    }

    fn cmd(&self, program: &str) -> Command {
        self.owner_command(&self.bin.join(program))
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn spawn_watchdog(&mut self) -> io::Result<()> {
        // A shell loop in its own session outlives us; it stops the server and removes
        // the directory after our process exits, however it exits.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -f '{data}/postmaster.pid' ]; then {stop} -D '{data}' stop -m immediate -w >/dev/null 2>&1; fi; \
             rm -rf '{root}'",
            pid = std::process::id(),
            data = self.data().display(),
            root = self.root.display(),
            stop = if self.as_postgres {
                format!("runuser -u postgres -- '{}'", self.bin.join("pg_ctl").display())
            } else {
                format!("'{}'", self.bin.join("pg_ctl").display())
            },
        );
        let child = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn initdb(&self, opts: &ClusterOptions) -> io::Result<()> {
        let mut c = self.cmd("initdb");
        c.arg("-D").arg(self.data()).args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
        ]);
        if let Some(pw) = &opts.password {
            let pwfile = self.root.join("pwfile");
            std::fs::write(&pwfile, pw)?;
            if self.as_postgres {
                check(
                    Command::new("chown")
                        .arg("postgres:")
                        .arg(&pwfile)
                        .output()?,
                    "chown",
                )?;
            }
            c.arg("--auth-host=scram-sha-256")
                .arg(format!("--pwfile={}", pwfile.display()));
        } else {
            c.arg("--auth-host=trust");
        }
        check(c.output()?, "initdb")?;
        if opts.password.is_some() {
            std::fs::remove_file(self.root.join("pwfile"))?;
        }
        let mut conf = String::from(
            "\n# refreshd test cluster\nlisten_addresses = '127.0.0.1'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 200\nshared_buffers = '128MB'\n\
             max_prepared_transactions = 10\n\
             log_min_messages = warning\nlog_line_prefix = '%m [%p] %a '\n",
        );
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.root.display()
        ));
        if let Some((cert, key)) = &opts.tls {
            let (c_dst, k_dst) = (
                self.data().join("server.crt"),
                self.data().join("server.key"),
            );
            std::fs::copy(cert, &c_dst)?;
            std::fs::copy(key, &k_dst)?;
            if self.as_postgres {
                check(
                    Command::new("chown")
                        .arg("postgres:")
                        .arg(&c_dst)
                        .arg(&k_dst)
                        .output()?,
                    "chown",
                )?;
            }
            check(
                Command::new("chmod").arg("600").arg(&k_dst).output()?,
                "chmod",
            )?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (k, v) in &opts.settings {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        append(&self.data().join("postgresql.conf"), &conf)
    }

    fn write_port(&self) -> io::Result<()> {
        append(
            &self.data().join("postgresql.conf"),
            &format!("port = {}\n", self.port),
        )
    }

    fn pg_ctl_start(&self) -> io::Result<()> {
        self.pg_ctl(&["-t", "60", "start"])
    }

    /// Runs `pg_ctl` with these arguments against the cluster (`restart -m fast`, ...).
    pub fn pg_ctl(&self, args: &[&str]) -> io::Result<()> {
        let log = self.root.join("server.log");
        check(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&log)
                .arg("-w")
                .args(args)
                .stdin(Stdio::null())
                .output()?,
            "pg_ctl",
        )
        .map(|_| ())
    }

    /// Stops the server now (`-m fast`); Drop will not try again.
    pub fn stop(&mut self) -> io::Result<()> {
        if !self.stopped {
            self.pg_ctl(&["stop", "-m", "fast"])?;
            self.stopped = true;
        }
        Ok(())
    }

    /// Starts the server again after [`TempCluster::stop`].
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.stopped {
            self.pg_ctl_start()?;
            self.stopped = false;
        }
        Ok(())
    }

    /// The data directory (for `postgres --single` while the server is stopped).
    pub fn data_dir(&self) -> PathBuf {
        self.data()
    }

    /// A directory the cluster's owner may write in, removed with the cluster.
    pub fn scratch_dir(&self) -> &Path {
        &self.root
    }

    /// `program` (a path or a name in PATH) run as the cluster's owner.
    pub fn owner_command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The server binaries' directory (for `psql`, `pgbench`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server log, for diagnosing a failed test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// A URL for `db` over TCP as `user` (no password).
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// A key/value DSN for `db` over the Unix socket as the superuser.
    pub fn socket_dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.root.display(),
            self.port
        )
    }

    /// Runs `psql` as the superuser on `db` with ON_ERROR_STOP, returning stdout.
    pub fn psql(&self, db: &str, args: &[&str]) -> io::Result<String> {
        let out = Command::new(client_program("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.socket_dsn(db))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        check(out, "psql").map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Waits until the server accepts connections again (after a restart).
    pub fn wait_ready(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.root)
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "server not ready"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())
}
