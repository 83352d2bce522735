//! cpu and memory limits of process-runtime containers, enforced by the
//! kernel as a container runtime enforces them: each container with
//! `resources.limits` runs in a cgroup of its own (one with both
//! controllers on cgroup v2; one in each controller's hierarchy on v1).
//! - memory: `memory.max` (v2, and `memory.swap.max` 0: no swapping past
//!   the limit, as containerd sets it) or `memory.limit_in_bytes` (v1); a
//!   run the kernel's OOM killer ended is reported `OOMKilled`.
//! - cpu: a CFS quota per 100 ms period, `limits.cpu` × the period, as the
//!   kubelet computes it (`cpu.max` on v2, `cpu.cfs_quota_us` and
//!   `cpu.cfs_period_us` on v1); at least 1 ms, the kernel's minimum.

use std::path::{Path, PathBuf};

/// The CFS period, microseconds (the kubelet's).
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes, microseconds.
const MIN_QUOTA_US: u64 = 1_000;

/// One controller's `petset` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// `<mount>/petset`.
    dir: PathBuf,
    v2: bool,
}

/// Where this agent makes its containers' cgroups, per controller.
#[derive(Debug, Clone)]
pub struct Cgroups {
    memory: Option<Hierarchy>,
    cpu: Option<Hierarchy>,
}

/// What a container is limited to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `limits.memory`, bytes.
    pub memory: Option<u64>,
    /// `limits.cpu`, millicores.
    pub cpu_millis: Option<u64>,
}

impl Limits {
    /// Whether there is anything to limit.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpu_millis.is_some()
    }
}

/// One container run's cgroups; removed when dropped (once empty).
#[derive(Debug)]
pub struct ContainerCgroups {
    /// Every folder the run's processes join (one on v2).
    dirs: Vec<PathBuf>,
    /// The memory one, and whether it is v2.
    memory: Option<(PathBuf, bool)>,
}

/// The cgroup mounts: the v2 one, and v1's by controller.
fn mounts() -> (Option<PathBuf>, Vec<(PathBuf, Vec<String>)>) {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, at, kind, options, ..] = fields[..] else {
            continue;
        };
        match kind {
            "cgroup2" => v2 = Some(PathBuf::from(at)),
            "cgroup" => v1.push((
                PathBuf::from(at),
                options.split(',').map(str::to_string).collect(),
            )),
            _ => {}
        }
    }
    (v2, v1)
}

impl Cgroups {
    /// The host's controllers: cgroup v2's where it has them enabled,
    /// else v1's hierarchies; `None` when neither can be used (not root,
    /// no controller).
    pub fn detect() -> Option<Cgroups> {
        let (v2, v1) = mounts();
        let v2_controllers: Vec<String> = v2
            .as_ref()
            .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let pick = |controller: &str| -> Option<Hierarchy> {
            if let Some(mount) = v2
                .as_ref()
                .filter(|_| v2_controllers.iter().any(|c| c == controller))
            {
                let dir = mount.join("petset");
                std::fs::create_dir_all(&dir).ok()?;
                // Children of `petset` get the controller.
                let _ = std::fs::write(
                    mount.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                );
                std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"))
                    .ok()?;
                return Some(Hierarchy { dir, v2: true });
            }
            let (mount, _) = v1
                .iter()
                .find(|(_, options)| options.iter().any(|o| o == controller))?;
            let dir = mount.join("petset");
            std::fs::create_dir_all(&dir).ok()?;
            Some(Hierarchy { dir, v2: false })
        };
        let cgroups = Cgroups {
            memory: pick("memory"),
            cpu: pick("cpu"),
        };
        (cgroups.memory.is_some() || cgroups.cpu.is_some()).then_some(cgroups)
    }

    /// What the host cannot limit: the missing controllers' names.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.memory.is_none() {
            missing.push("memory");
        }
        if self.cpu.is_none() {
            missing.push("cpu");
        }
        missing
    }

    fn hierarchies(&self) -> Vec<&Hierarchy> {
        let mut all: Vec<&Hierarchy> = self.memory.iter().chain(self.cpu.iter()).collect();
        all.dedup();
        all
    }

    /// Removes the cgroups whose names contain `marker` (a node's), those
    /// now empty; answers how many are left.
    pub fn sweep(&self, marker: &str) -> usize {
        let mut left = 0;
        for hierarchy in self.hierarchies() {
            for entry in std::fs::read_dir(&hierarchy.dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.file_name().to_string_lossy().contains(marker)
                    && entry.path().is_dir()
                    && std::fs::remove_dir(entry.path()).is_err()
                {
                    left += 1;
                }
            }
        }
        left
    }

    /// Cgroups `name` with `limits` (those the host can enforce).
    pub fn limit(&self, name: &str, limits: Limits) -> std::io::Result<ContainerCgroups> {
        let mut made = ContainerCgroups {
            dirs: Vec::new(),
            memory: None,
        };
        let join =
            |hierarchy: &Hierarchy, made: &mut ContainerCgroups| -> std::io::Result<PathBuf> {
                let dir = hierarchy.dir.join(name);
                if !made.dirs.contains(&dir) {
                    std::fs::create_dir_all(&dir)?;
                    made.dirs.push(dir.clone());
                }
                Ok(dir)
            };
        if let (Some(bytes), Some(hierarchy)) = (limits.memory, &self.memory) {
            let dir = join(hierarchy, &mut made)?;
            if hierarchy.v2 {
                std::fs::write(dir.join("memory.max"), bytes.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            } else {
                std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
            }
            made.memory = Some((dir, hierarchy.v2));
        }
        if let (Some(millis), Some(hierarchy)) = (limits.cpu_millis, &self.cpu) {
            let dir = join(hierarchy, &mut made)?;
            let quota = cpu_quota_us(millis);
            if hierarchy.v2 {
                std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        Ok(made)
    }
}

/// The CFS quota of `millis` millicores per [`CPU_PERIOD_US`].
fn cpu_quota_us(millis: u64) -> u64 {
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_QUOTA_US)
}

impl ContainerCgroups {
    /// The files a process writes its pid to, to join them all.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel's OOM killer killed a process of it.
    pub fn oom_killed(&self) -> bool {
        let Some((dir, v2)) = &self.memory else {
            return false;
        };
        let file = if *v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        oom_kills(&dir.join(file)) > 0
    }
}

fn oom_kills(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for ContainerCgroups {
    fn drop(&mut self) {
        // A cgroup goes once its last process has: the container's group
        // may take a moment to die after its leader.
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for dir in dirs {
                let removed = (0..100).any(|_| match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        false
                    }
                    _ => true,
                });
                if !removed {
                    tracing::warn!(cgroup = %dir.display(), "a container's cgroup is still busy; left");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_either_file() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("memory.events");
        std::fs::write(&v2, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(oom_kills(&v2), 1);
        let v1 = dir.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        assert_eq!(oom_kills(&v1), 0);
        assert_eq!(oom_kills(&dir.path().join("missing")), 0);
    }

    #[test]
    fn cpu_quota_is_the_kubelets() {
        // 500m: half of each 100 ms period; 2 cpus: two periods' worth.
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        // 1m would be 100 us: the kernel's minimum is 1 ms.
        assert_eq!(cpu_quota_us(1), MIN_QUOTA_US);
    }

    #[test]
    fn a_v2_container_joins_one_cgroup_with_both_limits() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy {
            dir: root.path().to_path_buf(),
            v2: true,
        };
        let cgroups = Cgroups {
            memory: Some(hierarchy.clone()),
            cpu: Some(hierarchy),
        };
        let made = cgroups
            .limit(
                "c_1",
                Limits {
                    memory: Some(64 << 20),
                    cpu_millis: Some(250),
                },
            )
            .unwrap();
        assert_eq!(made.procs(), vec![root.path().join("c_1/cgroup.procs")]);
        let read = |f: &str| std::fs::read_to_string(root.path().join("c_1").join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "25000 100000");
        assert!(!made.oom_killed());
    }

    #[test]
    fn v1_containers_join_one_cgroup_per_hierarchy() {
        let memory = tempfile::tempdir().unwrap();
        let cpu = tempfile::tempdir().unwrap();
        let cgroups = Cgroups {
            memory: Some(Hierarchy {
                dir: memory.path().to_path_buf(),
                v2: false,
            }),
            cpu: Some(Hierarchy {
                dir: cpu.path().to_path_buf(),
                v2: false,
            }),
        };
        let only_cpu = cgroups
            .limit(
                "c_2",
                Limits {
                    memory: None,
                    cpu_millis: Some(1500),
                },
            )
            .unwrap();
        assert_eq!(only_cpu.procs(), vec![cpu.path().join("c_2/cgroup.procs")]);
        let quota = std::fs::read_to_string(cpu.path().join("c_2/cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota, "150000");
        let both = cgroups
            .limit(
                "c_3",
                Limits {
                    memory: Some(1 << 30),
                    cpu_millis: Some(100),
                },
            )
            .unwrap();
        assert_eq!(both.procs().len(), 2);
    }
}
