//! The directories behind volumes: where they live, making them, and
//! removing or wiping them when their claim goes.
//!
//! # Guarantees
//! - No name reaches outside its root. Provisioned volumes live at
//!   `<data root>/nodes/<node>/<volume>` or `<data root>/shared/<volume>`,
//!   where node and volume names are DNS-1123 (no `/`, no `..`). Static
//!   `hostPath`/`local` paths must be absolute, clean (no `.`, `..` or empty
//!   components, no NUL) and under one of the allowed prefixes, so a
//!   `Recycle` can never wipe `/`.
//! - A provision larger than the free space of the filesystem it would live
//!   on is refused before anything is made.

use std::io;
use std::path::{Path, PathBuf};

use petset_core::error::{Error, Result};
use petset_core::quantity::format_bytes;

use crate::records::{Provisioner, VolumeSource};

/// Longest path accepted (Linux `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// Where volumes may live on this machine.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Root of provisioned volumes: `nodes/<node>/` and `shared/` under it.
    pub data_root: PathBuf,
    /// Static `hostPath`/`local` volumes must live under one of these.
    pub host_path_prefixes: Vec<PathBuf>,
}

impl Roots {
    /// Roots with static volumes allowed under `<data root>/static` when no
    /// prefix is given.
    pub fn new(data_root: PathBuf, mut host_path_prefixes: Vec<PathBuf>) -> Roots {
        if host_path_prefixes.is_empty() {
            host_path_prefixes.push(data_root.join("static"));
        }
        Roots {
            data_root,
            host_path_prefixes,
        }
    }

    /// Checks a static volume's path.
    pub fn check_host_path(&self, path: &str) -> std::result::Result<(), String> {
        if path.contains('\0') {
            return Err("must not contain NUL bytes".into());
        }
        if path.len() > PATH_MAX {
            return Err(format!(
                "must be no more than {PATH_MAX} bytes, got {}",
                path.len()
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("must be an absolute path, got {path:?}"));
        }
        let clean = path == "/"
            || path[1..]
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            return Err(format!(
                "must be a clean path (no '.', '..' or empty components, no trailing '/'), got {path:?}"
            ));
        }
        let p = Path::new(path);
        let allowed = self
            .host_path_prefixes
            .iter()
            .any(|prefix| p.starts_with(prefix) && p != prefix);
        if !allowed {
            return Err(format!(
                "{path:?} is outside the directories this server may use for volumes ({}); \
                 put the volume under one of them or start storage-svc with --host-path-prefix",
                self.host_path_prefixes
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }

    /// The directory of volume `name` with `source`.
    pub fn path_of(&self, name: &str, source: &VolumeSource) -> PathBuf {
        match source {
            VolumeSource::HostPath { path, .. } | VolumeSource::Local { path } => {
                PathBuf::from(path)
            }
            VolumeSource::NodeLocal { node } => self.data_root.join("nodes").join(node).join(name),
            VolumeSource::Shared => self.data_root.join("shared").join(name),
        }
    }

    /// Makes the directory of a new volume `name` of `bytes` for
    /// `provisioner`, on `node` for node-local ones. Refuses what does not
    /// fit in the free space there.
    pub fn provision(
        &self,
        provisioner: Provisioner,
        class: &str,
        node: Option<&str>,
        name: &str,
        bytes: u64,
    ) -> Result<VolumeSource> {
        let source = match (provisioner, node) {
            (Provisioner::NodeLocal, Some(node)) => VolumeSource::NodeLocal { node: node.into() },
            (Provisioner::NodeLocal, None) => {
                return Err(Error::FailedPrecondition(format!(
                    "storage class {class:?} ({}) provisions on the pod's node: bind it once the pod is placed \
                     (volumeBindingMode: WaitForFirstConsumer)",
                    provisioner.as_str()
                )));
            }
            (Provisioner::Shared, _) => VolumeSource::Shared,
            (Provisioner::NoProvisioner, _) => {
                return Err(Error::FailedPrecondition(format!(
                    "storage class {class:?} has no provisioner: only static volumes of that class can bind"
                )));
            }
        };
        let path = self.path_of(name, &source);
        let parent = path.parent().expect("volume paths have a parent");
        let io_error = |what: &str, e: io::Error| {
            Error::unavailable(format!("cannot {what} {}", parent.display()), e)
        };
        // Measured on the nearest directory that exists, so that a refusal
        // leaves no directory behind.
        let existing = parent
            .ancestors()
            .find(|p| p.is_dir())
            .unwrap_or(Path::new("/"));
        let free = free_bytes(existing).map_err(|e| io_error("measure free space of", e))?;
        if bytes > free {
            return Err(Error::InsufficientCapacity(format!(
                "storage class {class:?} cannot provision {} ({bytes} bytes){}: only {} is free under {}",
                format_bytes(bytes),
                node.map(|n| format!(" on node {n:?}")).unwrap_or_default(),
                format_bytes(free),
                parent.display()
            )));
        }
        std::fs::create_dir_all(parent).map_err(|e| io_error("create", e))?;
        std::fs::create_dir(&path).map_err(|e| io_error("create a volume directory in", e))?;
        Ok(source)
    }
}

/// Bytes available to an unprivileged user on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Makes sure a volume's directory exists, creating it when allowed.
pub fn ensure_dir(path: &Path, create: bool) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if !create {
        return Err(Error::FailedPrecondition(format!(
            "volume directory {} does not exist (hostPath type Directory); create it or use DirectoryOrCreate",
            path.display()
        )));
    }
    std::fs::create_dir_all(path)
        .map_err(|e| Error::unavailable(format!("cannot create {}", path.display()), e))
}

/// Removes a volume's directory and everything in it; a missing one is
/// already removed.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Empties a volume's directory, keeping the directory itself. Symbolic
/// links are removed, never followed.
pub fn wipe(path: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return std::fs::create_dir_all(path),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Roots {
        Roots::new("/var/lib/petset".into(), vec![])
    }

    #[test]
    fn host_paths_stay_under_their_prefix() {
        let r = roots();
        assert!(r.check_host_path("/var/lib/petset/static/pv-a").is_ok());
        for (bad, why) in [
            ("/var/lib/petset/static/../../../etc", "clean path"),
            ("/var/lib/petset/static/./pv", "clean path"),
            ("/var/lib/petset/static//pv", "clean path"),
            ("/var/lib/petset/static/pv/", "clean path"),
            ("var/lib/petset/static/pv", "absolute"),
            ("/var/lib/petset/static", "outside"),
            ("/var/lib/petset/staticx/pv", "outside"),
            ("/", "outside"),
            ("/etc", "outside"),
            ("/var/lib/petset/static/a\0b", "NUL"),
        ] {
            let err = r.check_host_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = format!("/var/lib/petset/static/{}", "a/".repeat(2100));
        assert!(r.check_host_path(&long).unwrap_err().contains("4096"));
    }

    #[test]
    fn provisioned_paths_are_under_the_data_root() {
        let r = roots();
        let p = r.path_of("pvc-1", &VolumeSource::NodeLocal { node: "n1".into() });
        assert_eq!(p, Path::new("/var/lib/petset/nodes/n1/pvc-1"));
        assert_eq!(
            r.path_of("pvc-2", &VolumeSource::Shared),
            Path::new("/var/lib/petset/shared/pvc-2")
        );
    }

    #[test]
    fn wipe_keeps_the_directory_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let vol = dir.path().join("v");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/f"), "data").unwrap();
        std::fs::write(vol.join("g"), "data").unwrap();
        std::os::unix::fs::symlink(outside.path(), vol.join("link")).unwrap();
        wipe(&vol).unwrap();
        assert!(vol.is_dir());
        assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0);
        assert!(outside.path().join("keep").exists());
    }
}
