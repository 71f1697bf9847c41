//! Physical standbys (`pg_basebackup -R`) of a throwaway cluster, and freezing a whole
//! server with SIGSTOP (tests/failover.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use refreshd::cli::cluster::{client_program, TempCluster};

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A hot standby streaming from a [`TempCluster`], on a port of its own on 127.0.0.1;
/// stopped and deleted on drop (and by a watchdog if the test process dies).
pub struct Standby {
    root: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    watchdog: Option<std::process::Child>,
}

impl Standby {
    /// Base-backs-up `primary` (with `-R`: streaming replication, `standby.signal`) and
    /// starts the copy; returns once it accepts connections.
    pub fn start(primary: &TempCluster) -> Standby {
        let bin = primary.bin_dir().to_path_buf();
        let as_postgres = as_root();
        let root = tempfile::Builder::new()
            .prefix("refreshd-standby-")
            .tempdir()
            .unwrap()
            .keep();
        let port = super::free_port();
        let mut s = Standby {
            root,
            bin,
            port,
            as_postgres,
            watchdog: None,
        };
        s.spawn_watchdog();
        if as_postgres {
            assert!(Command::new("chown")
                .arg("postgres:")
                .arg(&s.root)
                .status()
                .unwrap()
                .success());
        }
        if s.bin.join("pg_basebackup").exists() {
            let out = s
                .cmd("pg_basebackup")
                .arg("-D")
                .arg(s.data())
                .arg("-h")
                .arg(primary.socket_dir())
                .args(["-p", &primary.port().to_string(), "-U", "postgres"])
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pg_basebackup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            s.copy_of(primary);
        }
        // The copied postgresql.conf names the primary's port and socket directory;
        // later lines win.
        let conf = format!(
            "\n# standby\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            s.port,
            s.root.display()
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.data().join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        s.pg_ctl(&["-t", "60", "start"]);
        s
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// What `pg_basebackup -R -X none` with a replication slot does, for server builds
    /// that ship no `pg_basebackup` (the embedded 13 and 18 packages): a physical slot
    /// reserving WAL, then PostgreSQL's low-level backup API (one session from start to
    /// stop, `pg_backup_start`/`pg_backup_stop`, `pg_start_backup`/`pg_stop_backup`
    /// before 15) around a copy of the running primary's files, its `backup_label`
    /// written into the copy, and `standby.signal` with `primary_conninfo` and
    /// `primary_slot_name`: the standby streams from the backup's start.
    fn copy_of(&self, primary: &TempCluster) {
        use std::io::{BufRead, BufReader, Write};
        let version: u32 = primary
            .psql("postgres", &["-Atc", "SHOW server_version_num"])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let slot = format!("refreshd_standby_{}", self.port);
        let label = self.root.join("backup_label.out");
        let (start, stop) = if version >= 150000 {
            (
                "SELECT 'started' FROM pg_catalog.pg_backup_start('refreshd standby', true);",
                "SELECT labelfile FROM pg_catalog.pg_backup_stop(true);",
            )
        } else {
            (
                "SELECT 'started' FROM pg_catalog.pg_start_backup('refreshd standby', true, false);",
                "SELECT labelfile FROM pg_catalog.pg_stop_backup(false, true);",
            )
        };
        let mut session = Command::new(client_program("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(primary.socket_dsn("postgres"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut to = session.stdin.take().unwrap();
        let mut from = BufReader::new(session.stdout.take().unwrap());
        writeln!(
            to,
            "SET client_min_messages = warning;\nSELECT 1 FROM pg_catalog.pg_create_physical_replication_slot('{slot}', true);\n{start}"
        )
        .unwrap();
        to.flush().unwrap();
        let mut line = String::new();
        while line.trim() != "started" {
            line.clear();
            assert!(
                from.read_line(&mut line).unwrap() > 0,
                "the backup did not start"
            );
        }
        copy_tree(&primary.data_dir(), &self.data());
        writeln!(to, "\\o {}\n{stop}\n\\o\n\\q", label.display()).unwrap();
        drop(to);
        assert!(session.wait().unwrap().success(), "the backup did not stop");
        std::fs::copy(&label, self.data().join("backup_label")).unwrap();
        std::fs::write(self.data().join("standby.signal"), "").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.data().join("postgresql.auto.conf"))
            .unwrap()
            .write_all(
                format!(
                "\nprimary_conninfo = 'host={} port={} user=postgres'\nprimary_slot_name = '{slot}'\n",
                    primary.socket_dir().display(),
                    primary.port()
                )
                .as_bytes(),
            )
            .unwrap();
        if self.as_postgres {
            assert!(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(self.data())
                .status()
                .unwrap()
                .success());
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.join("server.log"))
            .arg("-w")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn spawn_watchdog(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- '{}'", pg_ctl.display())
        } else {
            format!("'{}'", pg_ctl.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -f '{data}/postmaster.pid' ]; then {stop} -D '{data}' stop -m immediate -w >/dev/null 2>&1; fi; \
             rm -rf '{root}'",
            pid = std::process::id(),
            data = self.data().display(),
            root = self.root.display(),
        );
        self.watchdog = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }

    /// Promotes the standby (`pg_ctl promote -w`: returns once it accepts writes).
    pub fn promote(&self) {
        self.pg_ctl(&["promote"]);
    }

    /// Runs SQL through psql on `db` over the Unix socket, failing the test on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(client_program("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host={} port={} user=postgres dbname={db}",
                self.root.display(),
                self.port
            ))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql on the standby failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server log, for diagnosing a failed test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "stop", "-m", "immediate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Copies a running server's data directory as a base backup does: not its WAL, slots,
/// pid file or temporary files; a file gone while copying (a temporary one) is skipped.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let (source, target) = (entry.path(), to.join(&*name));
        if matches!(
            &*name,
            "postmaster.pid" | "postmaster.opts" | "backup_label" | "tablespace_map"
        ) || name.starts_with("pgsql_tmp")
        {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if matches!(
                &*name,
                "pg_wal"
                    | "pg_replslot"
                    | "pg_stat_tmp"
                    | "pg_dynshmem"
                    | "pg_notify"
                    | "pg_serial"
                    | "pg_snapshots"
                    | "pg_subtrans"
            ) {
                std::fs::create_dir_all(&target).unwrap();
                if name == "pg_wal" {
                    std::fs::create_dir_all(target.join("archive_status")).unwrap();
                }
            } else {
                copy_tree(&source, &target);
            }
        } else if let Err(e) = std::fs::copy(&source, &target) {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{source:?}: {e}");
        }
    }
}

/// The processes of a server: its postmaster (from `postmaster.pid` in `data_dir`) and
/// every child of it (backends, checkpointer, walsender ...).
fn server_pids(data_dir: &Path) -> Vec<u32> {
    let pidfile = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    let postmaster: u32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[u32], sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A server frozen with SIGSTOP — the postmaster and every child — so that it accepts
/// TCP connections (the kernel completes the handshake into the listen backlog) but
/// never answers, and open sessions hang: a hung primary. Thawed (SIGCONT) on drop,
/// also when the test fails.
pub struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    /// Freezes the server whose data directory is `data_dir` (`SHOW data_directory`).
    pub fn freeze(data_dir: &Path) -> Frozen {
        // The postmaster first, so that it forks no new child meanwhile; then its
        // children, looked up once it is stopped.
        let postmaster = server_pids(data_dir)[0];
        assert!(signal(&[postmaster], "STOP"), "kill -STOP postmaster");
        let all = server_pids(data_dir);
        // A child may have exited meanwhile: ignore kill's status for children.
        signal(&all[1..], "STOP");
        Frozen { pids: all }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.pids, "CONT");
    }
}
