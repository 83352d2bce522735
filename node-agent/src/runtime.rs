//! Running a container as a process.
//!
//! # Guarantees
//! - With namespace isolation (root), each container runs in its own UTS and
//!   mount namespaces (`unshare`): its hostname is the pod's, and each
//!   volume is bind-mounted at its `mountPath` in that namespace only, so
//!   two pods can mount different volumes at the same path.
//! - A container's processes end when the agent dies: the wrapper is started
//!   with a parent-death signal (`setpriv --pdeathsig KILL`) and `unshare`
//!   kills its child when it dies (`--kill-child`).
//! - Each container leads its own process group, so stopping signals every
//!   process it started.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// How a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Working directory, if any.
    pub working_dir: Option<PathBuf>,
    /// The pod's hostname.
    pub hostname: String,
    /// `(host directory, mountPath)`.
    pub mounts: Vec<(PathBuf, String)>,
    /// Own namespaces (root), or a plain process.
    pub namespaces: bool,
}

/// The script run inside the new namespaces: set the hostname, bind the
/// volumes, then become the container's program.
const INSIDE: &str = r#"set -e
hostname "$PETSET_HOSTNAME"
i=0
while [ "$i" -lt "$PETSET_MOUNTS" ]; do
  eval "src=\$PETSET_MOUNT_SRC_$i; dst=\$PETSET_MOUNT_DST_$i"
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
  i=$((i + 1))
done
unset PETSET_HOSTNAME PETSET_MOUNTS
exec "$@"
"#;

impl Launch {
    /// The command that runs the container.
    pub fn command(&self, log: &Path) -> std::io::Result<Command> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut command = if self.namespaces {
            let mut c = Command::new("setpriv");
            c.args([
                "--pdeathsig",
                "KILL",
                "--",
                "unshare",
                "--uts",
                "--mount",
                "--propagation",
                "private",
            ])
            .args([
                "--fork",
                "--kill-child",
                "--",
                "/bin/sh",
                "-c",
                INSIDE,
                "petset-container",
            ])
            .args(&self.argv)
            .env("PETSET_HOSTNAME", &self.hostname)
            .env("PETSET_MOUNTS", self.mounts.len().to_string());
            for (i, (src, dst)) in self.mounts.iter().enumerate() {
                c.env(format!("PETSET_MOUNT_SRC_{i}"), src)
                    .env(format!("PETSET_MOUNT_DST_{i}"), dst);
            }
            c
        } else {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).args(&self.argv);
            c
        };
        command
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        Ok(command)
    }
}

/// Sends `signal` to every process of a container.
pub fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether this process may make namespaces and mounts.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
