//! Memory limits of process-runtime containers, enforced by the kernel as
//! a container runtime enforces them: each container with
//! `resources.limits.memory` runs in a memory cgroup of its own
//! (`memory.max` on cgroup v2, `memory.limit_in_bytes` on v1's memory
//! hierarchy), and a run the kernel's OOM killer ended is reported
//! `OOMKilled`.

use std::path::{Path, PathBuf};

/// Where this agent makes its containers' memory cgroups.
#[derive(Debug, Clone)]
pub struct MemoryCgroups {
    /// `<mount>/petset`.
    dir: PathBuf,
    v2: bool,
}

/// One container run's memory cgroup; removed when dropped (once empty).
#[derive(Debug)]
pub struct MemoryLimit {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroups {
    /// The host's memory controller: cgroup v2 when it has one enabled,
    /// else v1's memory hierarchy; `None` when neither can be used (not
    /// root, no memory controller).
    pub fn detect() -> Option<MemoryCgroups> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let mut v1 = None;
        let mut v2 = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, at, kind, options, ..] = fields[..] else {
                continue;
            };
            match kind {
                "cgroup2" => v2 = Some(PathBuf::from(at)),
                "cgroup" if options.split(',').any(|o| o == "memory") => {
                    v1 = Some(PathBuf::from(at))
                }
                _ => {}
            }
        }
        if let Some(mount) = v2.filter(|m| {
            std::fs::read_to_string(m.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        }) {
            let dir = mount.join("petset");
            std::fs::create_dir_all(&dir).ok()?;
            // Children of `petset` get the memory controller.
            let _ = std::fs::write(mount.join("cgroup.subtree_control"), "+memory");
            std::fs::write(dir.join("cgroup.subtree_control"), "+memory").ok()?;
            return Some(MemoryCgroups { dir, v2: true });
        }
        let dir = v1?.join("petset");
        std::fs::create_dir_all(&dir).ok()?;
        Some(MemoryCgroups { dir, v2: false })
    }

    /// Removes the cgroups whose names contain `marker` (a node's), those
    /// now empty; answers how many are left.
    pub fn sweep(&self, marker: &str) -> usize {
        let mut left = 0;
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().contains(marker)
                && entry.path().is_dir()
                && std::fs::remove_dir(entry.path()).is_err()
            {
                left += 1;
            }
        }
        left
    }

    /// A cgroup `name` limited to `bytes`.
    pub fn limit(&self, name: &str, bytes: u64) -> std::io::Result<MemoryLimit> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let (file, value) = if self.v2 {
            ("memory.max", bytes.to_string())
        } else {
            ("memory.limit_in_bytes", bytes.to_string())
        };
        std::fs::write(dir.join(file), value)?;
        if self.v2 {
            // No swapping past the limit, as containerd sets it.
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        }
        Ok(MemoryLimit { dir, v2: self.v2 })
    }
}

impl MemoryLimit {
    /// The file a process writes its pid to, to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Whether the kernel's OOM killer killed a process of it.
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        oom_kills(&self.dir.join(file)) > 0
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

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        // A cgroup goes once its last process has: the container's group
        // may take a moment to die after its leader.
        let dir = self.dir.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(std::time::Duration::from_millis(100))
                    }
                    _ => return,
                }
            }
            tracing::warn!(cgroup = %dir.display(), "a container's memory cgroup is still busy; left");
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
}
