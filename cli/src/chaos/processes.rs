//! The parts a chaos run kills and restarts: the services as child processes, a private
//! Postgres cluster and a private noida-db broker, each with its log in the run's directory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free port on the loopback interface (free when asked; the caller binds it soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, what: &str, within: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if began.elapsed() > within {
            bail!(
                "{what} not listening on {addr} after {} s",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// One service binary run as a child process with its environment; restartable.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    pub fn new(
        name: &'static str,
        program: PathBuf,
        args: &[&str],
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Self {
        Self {
            name,
            program,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts it (its output appended to its log).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash: nothing is flushed, no goodbye to the group.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits (up to `within`, then SIGKILL).
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let began = Instant::now();
        while child.try_wait()?.is_none() {
            if began.elapsed() > within {
                child.kill().ok();
                child.wait()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Whether it exited on its own (a crash the run did not cause).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// The noida-db binary: `PULSELINE_NOIDA_BIN`, else the one in the pip package (as
/// `scripts/stack` finds it).
pub fn noida_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("PULSELINE_NOIDA_BIN") {
        return Ok(PathBuf::from(path));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import noida_db,os;print(os.path.join(os.path.dirname(noida_db.__file__),'noida-db'))",
        ])
        .output()
        .context("running python3 to find noida-db")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.exists() {
        bail!("noida-db not found (pip install noida-db==0.2.3, or set PULSELINE_NOIDA_BIN)");
    }
    Ok(path)
}
