//! The CPU time each part of a run used, so that the main job shows its bottleneck.
//!
//! The pipeline's services run on their own Tokio runtimes, whose threads carry the
//! part's name (`pl-gateway`, ...; see `pipeline`), and the stream processors on their own
//! thread (`processor-<instance>`), so this process's threads are summed by name.
//! Postgres and the broker are the processes listening on their ports, with their
//! children (Postgres runs a process per connection). Read from /proc: on another system,
//! or for a server that is not on this machine, a part is simply missing.

use std::collections::{BTreeMap, HashMap};

use procfs::process::{FDTarget, Process, Stat};

/// CPU seconds (user + system) by part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSeconds(pub BTreeMap<String, f64>);

/// Thread-name prefix of the pipeline's part runtimes.
pub const PART_THREAD_PREFIX: &str = "pl-";

/// The part a thread of this process belongs to, by its name.
fn part_of_thread(name: &str) -> &str {
    if let Some(part) = name.strip_prefix(PART_THREAD_PREFIX) {
        part
    } else if name.starts_with("processor-") {
        // The stream processors' worker thread (`processor-<instance>`).
        "processor"
    } else if name.starts_with("rdk:") {
        // librdkafka's own threads, shared by every part that talks to the broker.
        "kafka-clients"
    } else {
        // The simulated clients, the checks and the main runtime.
        "driver"
    }
}

fn seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

fn own(stat: &Stat) -> u64 {
    stat.utime + stat.stime
}

impl CpuSeconds {
    /// What each part has used so far. `servers` names the local servers to include, by
    /// the TCP port they listen on (e.g. `("postgres", 5432)`).
    pub fn now(servers: &[(&str, u16)]) -> Self {
        let mut parts = BTreeMap::new();
        if let Ok(me) = Process::myself()
            && let Ok(tasks) = me.tasks()
        {
            for stat in tasks.flatten().filter_map(|t| t.stat().ok()) {
                *parts
                    .entry(part_of_thread(&stat.comm).to_owned())
                    .or_insert(0.0) += seconds(own(&stat));
            }
        }
        for (name, port) in servers {
            if let Some(ticks) = server_ticks(*port) {
                parts.insert((*name).to_owned(), seconds(ticks));
            }
        }
        Self(parts)
    }

    /// What each part used since `earlier`.
    pub fn since(&self, earlier: &CpuSeconds) -> CpuSeconds {
        let parts = self
            .0
            .iter()
            .map(|(part, s)| {
                let before = earlier.0.get(part).copied().unwrap_or(0.0);
                (part.clone(), (s - before).max(0.0))
            })
            .collect();
        CpuSeconds(parts)
    }

    /// `part 1.2 s, ...`, the busiest first.
    pub fn summary(&self) -> String {
        let mut parts: Vec<_> = self.0.iter().collect();
        parts.sort_by(|a, b| b.1.total_cmp(a.1));
        parts
            .iter()
            .map(|(part, s)| format!("{part} {s:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The CPU ticks of the process listening on TCP `port` on this machine and of all its
/// descendants: those alive now, and those that ended and were waited for.
fn server_ticks(port: u16) -> Option<u64> {
    let inode = procfs::net::tcp()
        .ok()?
        .into_iter()
        .chain(procfs::net::tcp6().ok().into_iter().flatten())
        .find(|e| e.state == procfs::net::TcpState::Listen && e.local_address.port() == port)?
        .inode;
    let processes: Vec<Process> = procfs::process::all_processes()
        .ok()?
        .filter_map(Result::ok)
        .collect();
    let server = processes.iter().find(|p| {
        p.fd().is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| matches!(fd.target, FDTarget::Socket(i) if i == inode))
        })
    })?;
    let stats: HashMap<i32, Stat> = processes
        .iter()
        .filter_map(|p| p.stat().ok().map(|s| (p.pid, s)))
        .collect();
    let root = stats.get(&server.pid)?;
    let mut total = own(root) + root.cutime.max(0) as u64 + root.cstime.max(0) as u64;
    let mut frontier = vec![server.pid];
    while let Some(parent) = frontier.pop() {
        for (pid, stat) in &stats {
            if stat.ppid == parent {
                total += own(stat);
                frontier.push(*pid);
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_attributed_by_name() {
        assert_eq!(part_of_thread("pl-gateway"), "gateway");
        assert_eq!(part_of_thread("processor-3f2a"), "processor");
        assert_eq!(part_of_thread("rdk:broker1"), "kafka-clients");
        assert_eq!(part_of_thread("tokio-runtime-w"), "driver");
    }

    #[test]
    fn a_busy_thread_shows_under_its_part_and_in_the_difference() {
        let before = CpuSeconds::now(&[]);
        std::thread::Builder::new()
            .name(format!("{PART_THREAD_PREFIX}spin"))
            .spawn(|| {
                let began = std::time::Instant::now();
                let mut x = 0u64;
                while began.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                // Keep the thread alive until it has been read.
                std::thread::park_timeout(std::time::Duration::from_secs(5));
                x
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(std::time::Duration::from_millis(450));
        let used = CpuSeconds::now(&[]).since(&before);
        let spin = used.0.get("spin").copied().unwrap_or(0.0);
        assert!(spin >= 0.1, "the spinning thread used {spin} s: {used:?}");
        assert!(used.summary().starts_with("spin "), "{}", used.summary());
    }

    #[test]
    fn a_local_server_is_found_by_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        // This test process is the server: its own ticks are counted.
        assert!(
            server_ticks(port).is_some(),
            "no process found listening on {port}"
        );
        drop(listener);
        assert_eq!(server_ticks(port), None);
    }
}
