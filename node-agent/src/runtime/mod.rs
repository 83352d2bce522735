//! Running a container: as a process (the default runtime, here) or as a
//! Docker container ([`docker`]); [`Running`] is either. Commands run in a
//! running container ([`Exec`]: exec probes) belong here too.
//!
//! # Guarantees of the process runtime
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

use petset_core::serve::ServeError;
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub mod docker;

use self::docker::DockerRuntime;
use crate::{Config, Isolation, RuntimeKind};

/// The runtime the settings ask for, and the node's address (from the
/// settings, else the agent container's with the Docker runtime).
pub async fn from_config(
    config: &Config,
    deadlines: watch::Receiver<u64>,
) -> Result<(Runtime, Option<String>), ServeError> {
    let mut node_address = config.node_address.clone();
    let runtime = match config.runtime {
        RuntimeKind::Process => {
            let namespaces = match config.isolation {
                Isolation::Namespaces if !is_root() => {
                    return Err(ServeError::Config {
                        setting: "isolation",
                        reason: "namespaces need root; run as root or use --isolation none".into(),
                    });
                }
                Isolation::Namespaces => true,
                Isolation::None => false,
                Isolation::Auto => is_root(),
            };
            if !namespaces {
                tracing::warn!(
                    "running pods without namespaces: hostnames are only in HOSTNAME, and pods with volumes are refused"
                );
            }
            let fence = match crate::fence::shim_program() {
                Some(shim) => {
                    tracing::info!(shim = %shim.display(), "each container runs under petset-shim, which kills it at the node's lease deadline");
                    Some(Fence {
                        shim,
                        deadline: deadlines,
                    })
                }
                None => {
                    tracing::warn!(
                        "no petset-shim beside the agent or on PATH: containers are fenced by the agent alone, \
                         so a hung agent would keep them running past its lease"
                    );
                    None
                }
            };
            let cgroups = if namespaces {
                crate::limits::Cgroups::detect()
            } else {
                None
            };
            match &cgroups {
                // Container names carry the node: `..._<node>_<incarnation>_<run>`.
                Some(cgroups) => {
                    cgroups.sweep(&format!("_{}_", config.name));
                    for controller in cgroups.missing() {
                        tracing::warn!(
                            controller,
                            "no cgroup controller: containers' limits of it are not enforced"
                        );
                    }
                }
                None => {
                    tracing::warn!("no cgroups: containers' cpu and memory limits are not enforced")
                }
            }
            Runtime::Process {
                namespaces,
                fence,
                cgroups,
            }
        }
        RuntimeKind::Docker => {
            let settings = docker::DockerSettings {
                network: config.docker_network.clone(),
                sandbox: config.docker_sandbox.clone(),
                pod_dns: config.pod_dns.clone(),
                cluster_domain: config.cluster_domain.clone(),
            };
            let mut docker = docker::DockerRuntime::connect(&config.name, &settings)
                .await
                .map_err(|reason| ServeError::Config {
                    setting: "runtime",
                    reason,
                })?;
            match docker.remove_leftovers().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed containers an earlier run left"),
                Err(e) => tracing::warn!(error = %e, "cannot list earlier containers"),
            }
            tracing::info!(network = %docker.network, sandbox = ?docker.sandbox, "pods run as Docker containers");
            if docker.sandbox.is_none() {
                tracing::warn!(
                    "no sandbox container: pods will outlive this agent if it dies; its node lease still \
                     fences their identities and volumes, but run the agent in a container to have them die with it"
                );
            }
            if node_address.is_none() {
                node_address = docker.sandbox_address.clone();
            }
            match crate::fence::shim_program() {
                Some(shim) if docker.sandbox_is_self => {
                    tracing::info!(shim = %shim.display(), "the node's pods are fenced by petset-shim --namespace, which kills them at the node's lease deadline");
                    docker.deadline = Some(deadlines.clone());
                    start_namespace_fence(shim, deadlines);
                }
                _ => tracing::warn!(
                    "no namespace fence (the agent needs its own container as the sandbox, and petset-shim): \
                     a hung agent would keep its Docker pods running past its lease"
                ),
            }
            Runtime::Docker(Box::new(docker))
        }
    };
    Ok((runtime, node_address))
}

/// Where the node's containers run.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Processes on this host; `namespaces`: own UTS and mount namespaces.
    Process {
        /// Own namespaces per container (root).
        namespaces: bool,
        /// The deadline each container runs under (see [`crate::fence`]);
        /// `None` when no `petset-shim` was found.
        fence: Option<Fence>,
        /// Where containers with limits get their cgroups; `None` without
        /// root or a cpu or memory controller.
        cgroups: Option<crate::limits::Cgroups>,
    },
    /// Docker containers on a Docker network.
    Docker(Box<DockerRuntime>),
}

/// What a container's shim needs: the program, and the node's deadline as
/// the agent moves it.
#[derive(Debug, Clone)]
pub struct Fence {
    /// `petset-shim`.
    pub shim: PathBuf,
    /// The deadline (`CLOCK_BOOTTIME` ns), moved after each confirmed
    /// renewal of the node's lease.
    pub deadline: tokio::sync::watch::Receiver<u64>,
}

/// Why a container did not start; [`StartError::reason`] is the word
/// Kubernetes puts in the container's waiting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The image is not on the node, and images are never pulled.
    ImageNeverPull(String),
    /// Anything else.
    Failed(String),
}

impl StartError {
    /// The container state's reason (`ErrImageNeverPull`, `StartError`).
    pub fn reason(&self) -> &'static str {
        match self {
            StartError::ImageNeverPull(_) => "ErrImageNeverPull",
            StartError::Failed(_) => "StartError",
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::ImageNeverPull(m) | StartError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError::Failed(message)
    }
}

/// Where a command in a container (an exec probe) runs.
#[derive(Debug, Clone)]
pub enum Exec {
    /// On the host, with the container's environment (process runtime
    /// without namespaces: there is nothing to enter).
    Host(Vec<(String, String)>),
    /// In the namespaces (mount, UTS) of the process-runtime container
    /// whose process group `leader` leads, with its environment: its
    /// volumes at their mount paths, its hostname.
    Inside {
        /// The container's environment.
        env: Vec<(String, String)>,
        /// The container's group leader (its shim, or its wrapper).
        leader: u32,
        /// What runs a command as the container's user (setpriv and its
        /// options), before the command.
        as_user: Vec<String>,
    },
    /// Inside the container (Docker runtime).
    Docker(docker::ExecTarget),
}

/// A command that could not be run at all (as opposed to one that ran and
/// failed: that is its exit code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError(pub String);

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "command could not run: {}", self.0)
    }
}

impl Exec {
    /// Runs `command` (program and arguments) with no input and its output
    /// discarded; answers its exit code (-1 when killed by a signal).
    pub async fn run(&self, command: &[String]) -> Result<i64, ExecError> {
        if let Exec::Docker(target) = self {
            return target.run(command).await;
        }
        self.command(command, false)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map(|status| status.code().map_or(-1, i64::from))
            .map_err(|e| ExecError(e.to_string()))
    }

    /// The process that runs `command` in the container (process runtime),
    /// with the container's environment; its standard streams are the
    /// caller's to set. The Docker runtime has none: it execs through the
    /// engine.
    pub fn command(
        &self,
        command: &[String],
        terminal: bool,
    ) -> Result<tokio::process::Command, ExecError> {
        // On a terminal: a new session whose controlling terminal is its
        // standard input (util-linux setsid), then the command.
        let on_terminal: Vec<String>;
        let command = if terminal {
            on_terminal = [
                host_program("setsid").display().to_string(),
                "--ctty".into(),
            ]
            .into_iter()
            .chain(command.iter().cloned())
            .collect();
            &on_terminal[..]
        } else {
            command
        };
        let Some((program, args)) = command.split_first() else {
            return Err(ExecError("empty command".into()));
        };
        let (env, mut c) = match self {
            Exec::Docker(_) => {
                return Err(ExecError(
                    "a Docker-runtime container runs commands through the engine \
                     (docker::ExecTarget::session), not as a host process"
                        .into(),
                ));
            }
            Exec::Host(env) => {
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                (env, c)
            }
            Exec::Inside {
                env,
                leader,
                as_user,
            } => {
                let target = namespaced_descendant(*leader).ok_or_else(|| {
                    ExecError("the container's namespaces are not there (it is not running)".into())
                })?;
                let mut c = tokio::process::Command::new(host_program("nsenter"));
                c.arg("--target")
                    .arg(target.to_string())
                    .args(["--mount", "--uts", "--net", "--pid", "--"])
                    .args(as_user)
                    .args(command);
                (env, c)
            }
        };
        c.env_clear().envs(env.iter().cloned());
        Ok(c)
    }
}

/// The node's `program` (util-linux's setpriv, unshare, nsenter) by the
/// agent's own PATH: the container's PATH, which its wrappers run with, is
/// the pod's to set.
fn host_program(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

/// The first process, breadth first from `leader` down its descendants,
/// whose mount and pid namespaces are not the agent's: the container's
/// (`unshare` itself is in the new mount namespace, but only its children
/// are in the new pid namespace).
fn namespaced_descendant(leader: u32) -> Option<u32> {
    let ns = |pid: &str| {
        let of = |kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        Some((of("mnt")?, of("pid")?))
    };
    let own = ns("self")?;
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut queue = std::collections::VecDeque::from([leader]);
    while let Some(pid) = queue.pop_front() {
        if let Some((mnt, pidns)) = ns(&pid.to_string())
            && mnt != own.0
            && pidns != own.1
        {
            return Some(pid);
        }
        queue.extend(children.get(&pid).into_iter().flatten());
    }
    None
}

/// A running container.
#[derive(Debug)]
pub enum Running {
    /// A process group, and its cgroups when it has limits.
    Process(Child, Option<crate::limits::ContainerCgroups>),
    /// A Docker container.
    Docker(docker::Started),
}

impl Running {
    /// Waits for the container to end (cancel-safe); how it ended.
    pub async fn wait(&mut self) -> String {
        match self {
            Running::Process(child, _) => format!(
                "exited with {}",
                child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
            Running::Docker(c) => c.wait().await,
        }
    }

    /// SIGTERM to every process, SIGKILL after `grace`; waits for the end.
    pub async fn terminate(&mut self, grace: std::time::Duration) {
        match self {
            Running::Process(child, _) => {
                signal(child, rustix::process::Signal::TERM);
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    signal(child, rustix::process::Signal::KILL);
                    let _ = child.wait().await;
                }
            }
            Running::Docker(c) => c.terminate(grace).await,
        }
    }

    /// SIGKILL to every process; waits for the end.
    pub async fn kill(&mut self) {
        match self {
            Running::Process(child, _) => {
                signal(child, rustix::process::Signal::KILL);
                let _ = child.wait().await;
            }
            Running::Docker(c) => c.kill().await,
        }
    }

    /// Whether the kernel's OOM killer ended this run (its memory limit).
    pub fn oom_killed(&self) -> bool {
        match self {
            Running::Process(_, Some(limit)) => limit.oom_killed(),
            _ => false,
        }
    }

    /// Where commands run in this container (exec probes, `petctl exec`):
    /// inside it, as its user, when it has namespaces of its own; else on
    /// the host.
    pub fn exec(&self, launch: &Launch) -> Exec {
        let env = launch.env.clone().into_iter().collect();
        match self {
            Running::Process(child, _) => match child.id() {
                Some(leader) if launch.namespaces => Exec::Inside {
                    env,
                    leader,
                    as_user: launch.as_user(&[]),
                },
                _ => Exec::Host(env),
            },
            Running::Docker(c) => Exec::Docker(c.exec_target()),
        }
    }
}

/// How a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program and its arguments (process runtime).
    pub argv: Vec<String>,
    /// The image, after the node's image map (Docker runtime).
    pub image: String,
    /// Kubernetes' `command` (Docker runtime: the entrypoint).
    pub command: Vec<String>,
    /// Kubernetes' `args` (Docker runtime: the cmd).
    pub args: Vec<String>,
    /// `<namespace>/<pod>`.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The engine's name for the container (Docker runtime; each run adds
    /// its restart count).
    pub engine_name: String,
    /// The pod's address.
    pub ip: std::net::Ipv4Addr,
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
    /// The pod's network namespace, which the container joins
    /// (`--pod-network bridge`); `None`: the host's network.
    pub netns: Option<PathBuf>,
    /// Who the container runs as, with which capabilities (its security
    /// context, resolved).
    pub security: petset_core::security::Effective,
    /// Docker runtime: `uid:gid` when the security context names either.
    pub user: Option<String>,
    /// `resources.limits` (memory in bytes, cpu in millicores).
    pub limits: crate::limits::Limits,
}

/// The script run inside the new namespaces: set the hostname, bind the
/// volumes, make the root read-only when asked (in this mount namespace
/// only; the volumes, mounted on it, stay writable), then become the
/// container's program (through setpriv, which sets its user, groups and
/// capabilities) in its cgroups when it has limits. Its arguments: the
/// hostname, `ro` or `rw`, the number of cgroups, each one's
/// `cgroup.procs`, the number of mounts, each mount's source and target,
/// then the command: nothing of the agent's travels in the environment,
/// which is the container's alone.
const INSIDE: &str = r#"set -e
hostname "$1"
root=$2
k=$3
shift 3
while [ "$k" -gt 0 ]; do
  echo $$ > "$1"
  shift
  k=$((k - 1))
done
n=$1
shift
while [ "$n" -gt 0 ]; do
  if [ -d "$1" ]; then mkdir -p "$2"; elif [ ! -e "$2" ]; then touch "$2"; fi
  mount --bind "$1" "$2"
  shift 2
  n=$((n - 1))
done
if [ "$root" = ro ]; then mount -o remount,bind,ro /; fi
exec "$@"
"#;

impl Launch {
    /// `command` run as the container's user, groups and capabilities
    /// (util-linux setpriv; the caller is root).
    pub fn as_user(&self, command: &[String]) -> Vec<String> {
        let mut argv = vec![host_program("setpriv").display().to_string()];
        argv.extend(self.security.setpriv_args());
        argv.push("--".into());
        argv.extend(command.iter().cloned());
        argv
    }

    /// Starts run `restarts` of the container on `runtime`, its output
    /// appended to `log`.
    pub async fn start(
        &self,
        runtime: &Runtime,
        log: &Path,
        restarts: i32,
    ) -> Result<Running, StartError> {
        match runtime {
            Runtime::Process { fence, cgroups, .. } => {
                let shim = fence
                    .as_ref()
                    .map(|f| (f.shim.as_path(), *f.deadline.borrow()));
                let limit = match cgroups {
                    Some(cgroups) if self.namespaces && self.limits.any() => Some(
                        cgroups
                            .limit(&format!("{}_{restarts}", self.engine_name), self.limits)
                            .map_err(|e| format!("cannot make the container's cgroups: {e}"))?,
                    ),
                    _ => None,
                };
                let mut child = self
                    .command(
                        log,
                        shim,
                        limit.as_ref().map(|l| l.procs()).unwrap_or_default(),
                    )
                    .and_then(|mut c| c.spawn())
                    .map_err(|e| format!("cannot start {:?}: {e}", self.argv.first()))?;
                if let (Some(fence), Some(stdin)) = (fence, child.stdin.take()) {
                    tokio::spawn(forward_deadlines(stdin, fence.deadline.clone()));
                }
                Ok(Running::Process(child, limit))
            }
            Runtime::Docker(docker) => {
                let spec = docker::ContainerSpec {
                    name: format!("{}_{restarts}", self.engine_name),
                    pod: &self.pod,
                    namespace: &self.namespace,
                    image: &self.image,
                    command: &self.command,
                    args: &self.args,
                    env: &self.env,
                    working_dir: self.working_dir.as_deref().and_then(Path::to_str),
                    hostname: &self.hostname,
                    ip: self.ip,
                    mounts: &self.mounts,
                    user: self.user.clone(),
                    security: &self.security,
                    limits: self.limits,
                };
                docker.start(&spec, log).await.map(Running::Docker)
            }
        }
    }

    /// The command that runs the container as a process: under
    /// `petset-shim` with its first deadline when `shim` is given.
    pub fn command(
        &self,
        log: &Path,
        shim: Option<(&Path, u64)>,
        cgroup_procs: Vec<PathBuf>,
    ) -> std::io::Result<Command> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        // Under the shim when there is one; in the pod's network namespace
        // when it has one (nsenter execs what follows: the shim stays the
        // parent).
        let new = |program: &str| {
            let mut argv: Vec<std::ffi::OsString> = Vec::new();
            if let Some((shim, deadline)) = shim {
                argv.extend([shim.into(), deadline.to_string().into(), "--".into()]);
            }
            if let Some(netns) = &self.netns {
                let mut net = std::ffi::OsString::from("--net=");
                net.push(netns);
                argv.extend([host_program("nsenter").into(), net, "--".into()]);
            }
            argv.push(host_program(program).into());
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        let mut command = if self.namespaces {
            let mut c = new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"])
                .arg(host_program("unshare"))
                // Own hostname, mounts and process ids: the container's
                // program is pid 1 of its own /proc, as in a container.
                .args(["--uts", "--mount", "--pid", "--mount-proc"])
                .args(["--propagation", "private"])
                .args([
                    "--fork",
                    "--kill-child",
                    "--",
                    "/bin/sh",
                    "-c",
                    INSIDE,
                    "petset-container",
                ])
                .arg(&self.hostname)
                .arg(if self.security.read_only_root {
                    "ro"
                } else {
                    "rw"
                })
                .arg(cgroup_procs.len().to_string())
                .args(&cgroup_procs)
                .arg(self.mounts.len().to_string());
            for (src, dst) in &self.mounts {
                c.arg(src).arg(dst);
            }
            c.args(self.as_user(&self.argv));
            c
        } else {
            let mut c = new("setpriv");
            c.arg("--pdeathsig=KILL");
            if self.security.no_new_privs {
                c.arg("--no-new-privs");
            }
            c.arg("--").args(&self.argv);
            c
        };
        command
            // The container's environment is its own: nothing of the agent's.
            .env_clear()
            .envs(&self.env)
            // The shim reads its deadlines there; the container gets none.
            .stdin(if shim.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
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

/// Docker runtime, the agent in the container whose pid namespace its pods
/// join: starts `petset-shim --namespace` with the node's first deadline
/// (its registration) and feeds it each new one (see [`crate::fence`]).
/// The pipe closes when the agent's process ends.
fn start_namespace_fence(shim: PathBuf, mut deadlines: watch::Receiver<u64>) {
    tokio::spawn(async move {
        let Ok(first) = deadlines.wait_for(|d| *d > 0).await.map(|d| *d) else {
            return;
        };
        let started = Command::new(&shim)
            .arg("--namespace")
            .arg(first.to_string())
            .stdin(Stdio::piped())
            .spawn();
        match started {
            Ok(mut child) => {
                if let Some(stdin) = child.stdin.take() {
                    forward_deadlines(stdin, deadlines).await;
                }
                let status = child.wait().await;
                tracing::error!(?status, "the namespace fence ended");
            }
            Err(e) => tracing::error!(error = %e, "cannot start the namespace fence"),
        }
    });
}

/// Writes each new deadline to a container's shim until either side is
/// gone. When the agent drops its end (it stops), the shim's input closes
/// and it kills the container.
async fn forward_deadlines(
    mut stdin: tokio::process::ChildStdin,
    mut deadline: tokio::sync::watch::Receiver<u64>,
) {
    use tokio::io::AsyncWriteExt as _;
    while deadline.changed().await.is_ok() {
        let line = crate::fence::line(*deadline.borrow_and_update());
        if stdin.write_all(line.as_bytes()).await.is_err() {
            return;
        }
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
