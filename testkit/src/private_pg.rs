//! A private PostgreSQL cluster for tests that stop Postgres: never the shared server.
//! initdb + pg_ctl from the Debian PostgreSQL 15 binaries, in a temporary directory, on a
//! free port, run as the `postgres` OS user when the tests run as root.

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

/// Runs a PostgreSQL binary, as `postgres` when we are root (Postgres refuses root).
fn pg(bin: &str, args: &[&str]) -> std::process::Output {
    let path = format!("{BIN}/{bin}");
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {path}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivatePostgres {
    /// Creates and starts a cluster (trust auth, user `postgres`).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pulseline-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown of the private cluster directory");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let out = pg(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let this = Self {
            data,
            log,
            port: free_port(),
            _dir: dir,
        };
        this.start_server();
        this
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
    pub fn restart_immediate(&self, down_for: std::time::Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.start_server();
    }

    /// Starts the server again (after `stop`), on the same port and data.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data.display()
        );
        let out = pg(
            "pg_ctl",
            &[
                "-D",
                path(&self.data),
                "-l",
                path(&self.log),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stops the server immediately (as a crash would: connections drop).
    pub fn stop(&self) {
        let out = pg(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = pg(
            "pg_ctl",
            &["-D", path(&self.data), "-m", "immediate", "-w", "stop"],
        );
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
