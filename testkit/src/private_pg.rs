//! A private PostgreSQL cluster for tests that stop Postgres: never the shared server.
//! initdb + pg_ctl from the Debian PostgreSQL 15 binaries, in a temporary directory, on a
//! free port, run as the `postgres` OS user when the tests run as root.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug)]
pub struct PrivatePostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn failed(what: &str, detail: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {detail}"))
}

/// Runs a PostgreSQL binary, as `postgres` when we are root (Postgres refuses root);
/// a non-zero exit is an error carrying its output (and `log`, when given).
fn pg(bin: &str, args: &[&str], log: Option<&Path>) -> io::Result<()> {
    let path = format!("{BIN}/{bin}");
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| failed(&format!("running {path}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let log = log
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    Err(failed(
        &format!("{bin} {}", args.last().copied().unwrap_or_default()),
        format!(
            "{}{}{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path(p: &Path) -> io::Result<&str> {
    p.to_str()
        .ok_or_else(|| failed("temporary path", "not UTF-8"))
}

impl PrivatePostgres {
    /// Creates and starts a cluster (trust auth, user `postgres`).
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pulseline-pg-").tempdir()?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !ok.success() {
                return Err(failed("chown of the private cluster directory", ok));
            }
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        pg(
            "initdb",
            &[
                "-D",
                path(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            None,
        )?;
        let this = Self {
            data,
            log,
            port: free_port()?,
            _dir: dir,
        };
        this.start_server()?;
        Ok(this)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The local stack's broker and registry with this cluster as the Postgres server, so
    /// `create_database` makes the test's database here.
    pub fn stack(&self) -> crate::Stack {
        crate::Stack {
            postgres_server_url: format!("postgres://postgres@127.0.0.1:{}", self.port),
            ..crate::Stack::from_env()
        }
    }

    /// Restarts in immediate mode, as a crash and recovery would: every connection drops,
    /// uncommitted transactions are lost; `down_for` is how long it stays down.
    pub fn restart_immediate(&self, down_for: std::time::Duration) -> io::Result<()> {
        self.stop()?;
        std::thread::sleep(down_for);
        self.start_server()
    }

    /// Starts the server again (after `stop`), on the same port and data.
    pub fn start_server(&self) -> io::Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data.display()
        );
        pg(
            "pg_ctl",
            &[
                "-D",
                path(&self.data)?,
                "-l",
                path(&self.log)?,
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            Some(&self.log),
        )
    }

    /// Stops the server immediately (as a crash would: connections drop).
    pub fn stop(&self) -> io::Result<()> {
        pg(
            "pg_ctl",
            &["-D", path(&self.data)?, "-m", "immediate", "-w", "stop"],
            None,
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
