//! Whole-node faults for the local stack: each node's agent, and so every
//! shim and pod it starts, runs in a cgroup (v2) of its own
//! (`PETSET_NODE_CGROUPS`, see scripts/up), so a node can be frozen as a
//! whole (`cgroup.freeze`, what a paused VM looks like from inside) or cut
//! off from the control plane (iptables drops every packet its sockets send
//! to a control-plane port, and every packet to its agent's port: the
//! connections hang, as on a real partition, rather than being refused).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where a cgroup hierarchy is mounted: v1's that holds `v1_controller`,
/// or with `None` the v2 one (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host).
pub fn cgroup_mount(v1_controller: Option<&str>) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, at, kind, options, ..] = fields[..] else {
            return None;
        };
        let fits = match v1_controller {
            Some(c) => kind == "cgroup" && options.split(',').any(|o| o == c),
            None => kind == "cgroup2",
        };
        fits.then(|| PathBuf::from(at))
    })
}

/// The entries of a `/proc/<pid>/cgroup` text: each hierarchy's
/// controllers (empty for v2) and the path under its mount.
pub fn cgroup_entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        Some((parts.next()?, parts.next()?))
    })
}

/// The cgroup (v2) of process `pid`, as a path under the mount.
pub fn cgroup_of(pid: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup_entries(&text)
        .find(|(controllers, _)| controllers.is_empty())
        .map(|(_, path)| path.to_string())
}

/// Whether the cgroup at `path` (under `mount`) is frozen: every process in
/// it stopped by the kernel, none can run until it is thawed.
pub fn frozen(mount: &Path, path: &str) -> bool {
    std::fs::read_to_string(
        mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.events"),
    )
    .is_ok_and(|events| events.lines().any(|l| l == "frozen 1"))
}

/// The host's freezers: cgroup v2's (`cgroup.freeze`, the chaos suite's)
/// and v1's (`freezer.state`, what `docker pause` uses on a v1 host).
#[derive(Debug, Clone, Default)]
pub struct Freezers {
    v2: Option<PathBuf>,
    v1: Option<PathBuf>,
}

impl Freezers {
    /// Where they are mounted.
    pub fn find() -> Freezers {
        Freezers {
            v2: cgroup_mount(None),
            v1: cgroup_mount(Some("freezer")),
        }
    }

    /// Whether process `pid` is frozen by either.
    pub fn frozen(&self, pid: &str) -> bool {
        let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        cgroup_entries(&cgroups).any(|(controllers, path)| {
            if controllers.is_empty() {
                self.v2.as_deref().is_some_and(|m| frozen(m, path))
            } else if controllers.split(',').any(|c| c == "freezer") {
                self.v1.as_deref().is_some_and(|m| {
                    std::fs::read_to_string(
                        m.join(path.trim_start_matches('/')).join("freezer.state"),
                    )
                    .is_ok_and(|s| s.trim() == "FROZEN")
                })
            } else {
                false
            }
        })
    }
}

/// A cgroup folder with one child per node; thawed, emptied into the root
/// and removed when dropped (after the stack stopped).
#[derive(Debug)]
pub struct NodeCgroups {
    mount: PathBuf,
    /// Its path under the mount, e.g. `petset-chaos-1234`.
    pub name: String,
}

impl NodeCgroups {
    /// Makes the folder; panics when the host has no cgroup v2 hierarchy.
    pub fn create() -> NodeCgroups {
        let mount = cgroup_mount(None).expect("a cgroup v2 hierarchy is mounted");
        let name = format!("petset-chaos-{}", std::process::id());
        std::fs::create_dir_all(mount.join(&name)).expect("a cgroup of our own");
        NodeCgroups { mount, name }
    }

    /// The folder to give scripts/up as `PETSET_NODE_CGROUPS`.
    pub fn dir(&self) -> PathBuf {
        self.mount.join(&self.name)
    }

    /// Node `node`'s cgroup path under the mount.
    pub fn node(&self, node: &str) -> String {
        format!("{}/{node}", self.name)
    }

    /// `program args...` as a command line that first moves itself into
    /// `node`'s cgroup (for an agent started again by a test).
    pub fn command_in(&self, node: &str, argv: &[String]) -> Vec<String> {
        let mut out = vec![
            "sh".to_string(),
            "-c".to_string(),
            r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.to_string(),
            self.mount.join(self.node(node)).display().to_string(),
        ];
        out.extend(argv.iter().cloned());
        out
    }

    /// Freezes `node`, agent, shims and pods, and waits until the kernel
    /// says every one of them is frozen; thawed when the guard is dropped.
    pub fn freeze(&self, node: &str) -> Frozen {
        let dir = self.mount.join(self.node(node));
        std::fs::write(dir.join("cgroup.freeze"), "1").expect("freezing");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !frozen(&self.mount, &self.node(node)) {
            assert!(Instant::now() < deadline, "{node} not frozen in 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        Frozen { dir, thawed: None }
    }

    /// Cuts `node` off from the control plane: drops what its processes
    /// send to any of `control_ports`, and what anyone sends to its agent's
    /// `agent_port`. Healed when the guard is dropped.
    pub fn cut_off(&self, node: &str, control_ports: &[u16], agent_port: u16) -> CutOff {
        let ports: Vec<String> = control_ports.iter().map(u16::to_string).collect();
        let rules = vec![
            vec![
                "-p".to_string(),
                "tcp".into(),
                "-m".into(),
                "cgroup".into(),
                "--path".into(),
                self.node(node),
                "-m".into(),
                "multiport".into(),
                "--dports".into(),
                ports.join(","),
                "-j".into(),
                "DROP".into(),
            ],
            vec![
                "-p".to_string(),
                "tcp".into(),
                "--dport".into(),
                agent_port.to_string(),
                "-j".into(),
                "DROP".into(),
            ],
        ];
        let mut cut = CutOff { rules: Vec::new() };
        for rule in rules {
            assert!(iptables("-I", &rule), "iptables -I OUTPUT {rule:?}");
            cut.rules.push(rule);
        }
        cut
    }
}

impl Drop for NodeCgroups {
    fn drop(&mut self) {
        let dir = self.dir();
        let children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        for child in children {
            let _ = std::fs::write(child.join("cgroup.freeze"), "0");
            // Whatever still runs there (nothing, once the stack stopped)
            // goes back to the root, so the folder can be removed.
            let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(&child);
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// A frozen node; thawed when dropped (also when a test fails).
#[derive(Debug)]
pub struct Frozen {
    dir: PathBuf,
    thawed: Option<Instant>,
}

impl Frozen {
    /// Thaws the node now; the instant it was thawed.
    pub fn thaw(&mut self) -> Instant {
        std::fs::write(self.dir.join("cgroup.freeze"), "0").expect("thawing");
        *self.thawed.insert(Instant::now())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.thawed.is_none() {
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        }
    }
}

/// A node cut off from the control plane; healed when dropped.
#[derive(Debug)]
pub struct CutOff {
    rules: Vec<Vec<String>>,
}

impl Drop for CutOff {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = iptables("-D", &rule);
        }
    }
}

/// `iptables -w VERB OUTPUT RULE...`; whether it succeeded.
fn iptables(verb: &str, rule: &[String]) -> bool {
    Command::new("iptables")
        .args(["-w", verb, "OUTPUT"])
        .args(rule)
        .status()
        .is_ok_and(|s| s.success())
}
