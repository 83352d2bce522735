//! The README's local stack (`scripts/up`) on ports of its own, and what
//! tests use to watch and disturb it: the process table, a sampler of pod
//! copies, stopped processes resumed on drop.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{binary, free_port, free_ports, leads, repo_root};

/// The ports one stack uses, each reserved for the test process.
#[derive(Debug, Clone)]
pub struct Ports {
    /// etcd's client port (its peer port is the next one); with three
    /// members (`PETSET_ETCD_MEMBERS=3`), member n's is this + 2(n-1).
    pub etcd: u16,
    /// identity-svc's gRPC.
    pub identity: u16,
    /// identity-svc's DNS.
    pub dns: u16,
    /// storage-svc's gRPC.
    pub storage: u16,
    /// The two scheduler-svc replicas' gRPC.
    pub schedulers: [u16; 2],
    /// The first of the three agents' ports.
    pub agents: u16,
}

/// `scripts/up`, running; stopped (SIGTERM) when dropped. SIGTERM, not
/// Ctrl-C's SIGINT: a test run started in the background of a
/// non-interactive shell (as CI may) inherits SIGINT ignored, and bash
/// cannot trap a signal ignored at its start.
#[derive(Debug)]
pub struct LocalStack {
    /// The script.
    pub up: Child,
    /// The ports.
    pub ports: Ports,
    /// Its folder (logs, pid files, volumes).
    pub dir: tempfile::TempDir,
}

impl LocalStack {
    /// Starts `scripts/up` with pods on `pod_net` (`a.b`: node n gives
    /// `a.b.n.x`) and node leases of `lease_ttl` seconds; waits until it
    /// has applied the example and is ready.
    pub fn start(pod_net: &str, lease_ttl: u64) -> LocalStack {
        Self::start_with(pod_net, lease_ttl, &[])
    }

    /// [`LocalStack::start`] with more environment for scripts/up and
    /// everything it starts.
    pub fn start_with(pod_net: &str, lease_ttl: u64, env: &[(&str, &str)]) -> LocalStack {
        let mut dir = tempfile::tempdir().expect("a folder");
        // PETSET_KEEP_STACK=1 keeps the folder (logs) after the test.
        if std::env::var_os("PETSET_KEEP_STACK").is_some() {
            dir.disable_cleanup(true);
            eprintln!("the stack's folder (kept): {}", dir.path().display());
        }
        // etcd's peer port is its client port + 1 (and up to three members
        // take two ports each), and the three agents take three ports from
        // the one given: each range is reserved whole.
        let ports = Ports {
            etcd: free_ports(6),
            identity: free_port(),
            dns: free_port(),
            storage: free_port(),
            schedulers: [free_port(), free_port()],
            agents: free_ports(3),
        };
        let up = Command::new(repo_root().join("scripts/up"))
            .env("PETSET_STACK_DIR", dir.path())
            .env("PETSET_ETCD_PORT", ports.etcd.to_string())
            .env("PETSET_IDENTITY_PORT", ports.identity.to_string())
            .env("PETSET_DNS_PORT", ports.dns.to_string())
            .env("PETSET_STORAGE_PORT", ports.storage.to_string())
            .env("PETSET_SCHEDULER_PORT", ports.schedulers[0].to_string())
            .env("PETSET_API_PORT", free_port().to_string())
            .env("PETSET_SCHEDULER_PORT_2", ports.schedulers[1].to_string())
            .env("PETSET_API_PORT_2", free_port().to_string())
            .env("PETSET_AGENT_PORT", ports.agents.to_string())
            .env("PETSET_NODE_LEASE_TTL", lease_ttl.to_string())
            // Pod addresses of their own, so a stack a person runs beside
            // the test does not collide with it.
            .env("PETSET_POD_NET", pod_net)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/up starts");
        let mut stack = LocalStack { up, ports, dir };
        let start = Instant::now();
        while !stack.dir.path().join("ready").exists() {
            if let Ok(Some(status)) = stack.up.try_wait() {
                panic!("scripts/up exited early with {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "scripts/up was not ready in 300 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        stack
    }

    /// `127.0.0.1:<port>` of scheduler replica `i`.
    pub fn scheduler(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports.schedulers[i])
    }

    /// Which scheduler replica leads (by index), when exactly one does.
    pub fn leader(&self) -> Option<usize> {
        match (leads(&self.scheduler(0)), leads(&self.scheduler(1))) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    }

    /// The pid of `node`'s agent that runs now (scripts/up's, or one a
    /// test started again): of this stack's, by its data folder, not of
    /// another stack on the machine.
    pub fn running_agent(&self, node: &str) -> String {
        let data = format!("--data-dir {} ", self.dir.path().join(node).display());
        let pids = processes(&["node-agent", &format!("--name {node} "), &data]);
        let about = |pid: &String| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cgroup = crate::node_fault::cgroup_of(pid).unwrap_or_default();
            format!("{pid}: {stat} (cgroup {cgroup})")
        };
        assert_eq!(
            pids.len(),
            1,
            "{node}: {:?}",
            pids.iter().map(about).collect::<Vec<_>>()
        );
        pids[0].clone()
    }

    /// Stops the stack as SIGTERM does and waits for scripts/up to end.
    pub fn stop(&mut self) {
        if let Ok(None) = self.up.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.up.id().to_string()])
                .status();
            let _ = self.up.wait();
        }
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pids of processes running the program `parts[0]` (a name or a path:
/// their `argv[0]` is it, or ends in `/` and it) whose command line
/// (arguments separated by spaces) contains each of the other `parts`. A
/// shell or supervisor that merely names the program among its arguments
/// (a test's watchdog, a pod's shim) is not one of them; nor is a child a
/// match has just forked to start another program, which shows its
/// parent's command line until it execs (an agent starting a pod).
pub fn processes(parts: &[&str]) -> Vec<String> {
    let Some((program, rest)) = parts.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).into_owned();
        let argv0 = cmd.split('\0').next().unwrap_or_default();
        let runs = argv0 == *program || argv0.ends_with(&format!("/{program}"));
        let cmd = cmd.replace('\0', " ");
        if runs && rest.iter().all(|p| cmd.contains(p)) {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let parent = |pid: &String| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
    };
    let matched = out.clone();
    out.retain(|pid| parent(pid).is_none_or(|p| !matched.contains(&p)));
    out
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Whether process `pid` will run no more of its own code: it is exiting
/// (`PF_EXITING` in its flags), or SIGKILL is pending for it, which the
/// kernel acts on before it returns to user space (a frozen copy its fence
/// killed, thawed a moment ago, is such a process until it is gone).
pub fn dying(pid: &str) -> bool {
    let read =
        |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    exiting(&read("stat")) || kill_pending(&read("status"))
}

/// Whether a `/proc/<pid>/stat` line has `PF_EXITING` in its flags.
fn exiting(stat: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    // `pid (comm) state ppid pgrp session tty tpgid flags ...`: after the
    // comm (which may hold spaces and parentheses), flags is the seventh.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0)
}

/// Whether a `/proc/<pid>/status` text has SIGKILL (signal 9) pending, for
/// the thread or the process.
fn kill_pending(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & SIGKILL_BIT != 0)
}

/// Every process running `program` itself (its shim and wrappers name it
/// among their arguments) that carries a pod: its pid, `POD_NAME` and
/// `POD_IP` (empty when it has none), from one read of its environment.
pub fn pods_running(program: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for pid in processes(&[program]) {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env);
        let var = |name: &str| {
            env.split('\0')
                .find_map(|v| v.strip_prefix(name))
                .map(str::to_string)
        };
        if let Some(name) = var("POD_NAME=") {
            let ip = var("POD_IP=").unwrap_or_default();
            out.push((pid, name, ip));
        }
    }
    out
}

/// The pid of a pod's kubia-pet process (by its POD_NAME and POD_IP).
pub fn process_of(name: &str, ip: &str) -> Option<String> {
    let program = binary("kubia-pet");
    pods_running(program.to_str()?)
        .into_iter()
        .find(|(_, pod, at)| pod == name && at == ip)
        .map(|(pid, _, _)| pid)
}

/// What a [`Sampler`] saw: how many times it looked, the most live copies
/// of each pod at one instant, and every stretch of time in which some pod
/// had two or more.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Looks at the process table.
    pub samples: u64,
    /// Pod name → the most processes carrying it at once.
    pub most: BTreeMap<String, usize>,
    /// Each stretch of consecutive looks at which one pod ran in two or
    /// more live processes (the same set of them).
    pub doubles: Vec<Double>,
    previous: Option<Instant>,
}

/// Two or more live copies of one pod, seen from `first` to `last`.
#[derive(Debug, Clone)]
pub struct Double {
    /// The pod.
    pub pod: String,
    /// The pids of its copies.
    pub pids: Vec<String>,
    /// The first look that saw them.
    pub first: Instant,
    /// The last look that saw them.
    pub last: Instant,
}

impl Samples {
    /// Looks at which some pod had two or more live copies.
    pub fn doubled(&self) -> Vec<(&str, usize)> {
        self.most
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(p, n)| (p.as_str(), *n))
            .collect()
    }

    fn look(&mut self, now: BTreeMap<String, Vec<String>>, at: Instant) {
        for (pod, pids) in &now {
            let most = self.most.entry(pod.clone()).or_default();
            *most = (*most).max(pids.len());
            if pids.len() < 2 {
                continue;
            }
            match self.doubles.iter_mut().rev().find(|d| &d.pod == pod) {
                Some(d) if &d.pids == pids && Some(d.last) == self.previous => d.last = at,
                _ => self.doubles.push(Double {
                    pod: pod.clone(),
                    pids: pids.clone(),
                    first: at,
                    last: at,
                }),
            }
        }
        self.previous = Some(at);
        self.samples += 1;
    }
}

/// Reads the process table every ~2 ms until stopped, counting the live
/// kubia-pet processes of each pod: the independent witness that no
/// identity ever runs twice. A process in a frozen cgroup (a frozen node,
/// a paused container) is not live: the kernel runs none of it until it is
/// thawed; nor is one that is exiting or has SIGKILL pending ([`dying`]).
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

impl Sampler {
    /// Starts sampling the pods of the stack whose pod addresses are in
    /// `pod_net` (`a.b`, as given to [`LocalStack::start`]): another
    /// stack's pods on the machine are not this one's copies.
    pub fn start(pod_net: &str) -> Sampler {
        Self::watching(pod_net, binary("kubia-pet").to_str().expect("UTF-8"))
    }

    /// As [`Sampler::start`], counting the processes of `program` (a path,
    /// or a name that matches it in any folder: a container's).
    pub fn watching(pod_net: &str, program: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ours = format!("{pod_net}.");
        let program = program.to_string();
        let freezers = crate::node_fault::Freezers::find();
        let thread = std::thread::spawn(move || {
            let mut seen = Samples::default();
            while !flag.load(Ordering::Relaxed) {
                let mut now: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (pid, pod, ip) in pods_running(&program) {
                    if !ip.starts_with(&ours) {
                        continue;
                    }
                    let stopped = freezers.frozen(&pid);
                    if !stopped && alive(&pid) && !dying(&pid) {
                        now.entry(pod).or_default().push(pid);
                    }
                }
                for pids in now.values_mut() {
                    pids.sort();
                }
                seen.look(now, Instant::now());
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        Sampler { stop, thread }
    }

    /// Stops sampling; what it saw.
    pub fn stop(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler ran")
    }
}

/// Resumes a stopped process (SIGCONT) when dropped, also when a test
/// fails, so that the stack can stop it.
#[derive(Debug)]
pub struct Resume(pub String);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_exiting_or_with_sigkill_pending_is_dying() {
        // Flags 0x400104 (PF_EXITING among them), then 0x400100.
        let stat =
            |flags: u64| format!("27215 (kubia (pet)) D 27190 27215 27215 0 -1 {flags} 501 0 0");
        assert!(exiting(&stat(4194564)));
        assert!(!exiting(&stat(4194560)));
        let status = |pending: &str| {
            format!("Name:\tkubia-pet\nSigPnd:\t0000000000000000\nShdPnd:\t{pending}\n")
        };
        assert!(kill_pending(&status("0000000000000100")));
        assert!(!kill_pending(&status("0000000000004000")));
        // This test's own process runs on.
        assert!(!dying(&std::process::id().to_string()));
    }
}
