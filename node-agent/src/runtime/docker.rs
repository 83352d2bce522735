//! Running a container as a Docker container (`--runtime docker`).
//!
//! # Guarantees
//! - Each pod gets its own address on one Docker network (`--ip`, from the
//!   node's pod subnet), its hostname, the cluster's DNS server and search
//!   path, and its volumes bind-mounted at their `mountPath`. Images are
//!   never pulled: an image that is not on the node is refused by name
//!   (Kubernetes' `imagePullPolicy: Never`).
//! - A pod's containers end with the node: when the agent itself runs in a
//!   container (the *sandbox*), every pod container joins its PID
//!   namespace, and the kernel kills them all when the sandbox's init
//!   exits, however the node went down. Containers are removed when they
//!   exit (`AutoRemove`), so a dead node leaves nothing behind.
//! - The agent removes, when it starts, every container an earlier run of
//!   it left (labels `petset.io/node` and `petset.io/sandbox`).
//! - Output is attached before the container starts, so a container that
//!   fails at once still leaves its message in the pod's log.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::{ExecError, StartError};

/// Label: the node a container runs for.
pub const NODE_LABEL: &str = "petset.io/node";
/// Label: the agent container whose PID namespace it joined.
pub const SANDBOX_LABEL: &str = "petset.io/sandbox";
/// Label: `<namespace>/<pod>`.
pub const POD_LABEL: &str = "petset.io/pod";
/// A request timeout long enough never to fire (a year).
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How the agent reaches Docker and where it puts pods.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    client: Docker,
    node: String,
    /// The network pods join.
    pub network: String,
    /// The agent's own container, when it runs in one.
    pub sandbox: Option<String>,
    /// The agent's address on `network`, when it runs in a container.
    pub sandbox_address: Option<String>,
    /// Whether the sandbox is the agent's own container (`auto`), so that
    /// the agent shares the pid namespace its pods join.
    pub sandbox_is_self: bool,
    /// The node's fence deadline (`CLOCK_BOOTTIME` ns), when the node's
    /// namespace fence runs: no container starts past it, as no
    /// process-runtime shim starts one.
    pub deadline: Option<tokio::sync::watch::Receiver<u64>>,
    dns: Vec<String>,
    zone: String,
}

/// What the agent was told about Docker.
#[derive(Debug, Clone, Default)]
pub struct DockerSettings {
    /// The network for pods; default: the sandbox's only network.
    pub network: Option<String>,
    /// `auto` (this container, when the agent runs in one), `none`, or a
    /// container name or ID.
    pub sandbox: String,
    /// Pods' DNS server: an address or a name this agent resolves.
    pub pod_dns: Option<String>,
    /// The cluster's DNS zone (search path `<ns>.svc.<zone>`, ...).
    pub cluster_domain: String,
}

impl DockerRuntime {
    /// Connects to the local Docker engine (`DOCKER_HOST` or the default
    /// socket) and finds the sandbox and the network.
    pub async fn connect(node: &str, settings: &DockerSettings) -> Result<Self, String> {
        let client = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot reach Docker: {e}"))?
            .negotiate_version()
            .await
            .map_err(|e| format!("cannot reach Docker (version negotiation): {e}"))?;
        let sandbox = match settings.sandbox.as_str() {
            "none" => None,
            "auto" => {
                // Docker names a container's host after its short ID
                // unless told otherwise.
                let me = std::env::var("HOSTNAME").unwrap_or_default();
                if me.is_empty() {
                    None
                } else {
                    client.inspect_container(&me, None).await.ok()
                }
            }
            name => Some(
                client
                    .inspect_container(name, None)
                    .await
                    .map_err(|e| format!("sandbox container {name:?}: {e}"))?,
            ),
        };
        let sandbox_networks = sandbox
            .as_ref()
            .and_then(|c| c.network_settings.as_ref()?.networks.clone())
            .unwrap_or_default();
        let sandbox = sandbox.and_then(|c| c.id);
        let sandbox_is_self = settings.sandbox == "auto" && sandbox.is_some();
        let network = match &settings.network {
            Some(n) => n.clone(),
            None => {
                let mut names: Vec<&String> = sandbox_networks.keys().collect();
                names.sort();
                match names.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err("no pod network: pass --docker-network (the agent does not run in a container)".into());
                    }
                    many => {
                        return Err(format!(
                            "the agent's container is on several networks ({many:?}): pass --docker-network"
                        ));
                    }
                }
            }
        };
        client
            .inspect_network(
                &network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| format!("pod network {network:?}: {e}"))?;
        let sandbox_address = sandbox_networks
            .get(&network)
            .and_then(|e| e.ip_address.clone())
            .filter(|a| !a.is_empty());
        let mut dns = Vec::new();
        if let Some(server) = &settings.pod_dns {
            let address = match server.parse::<std::net::IpAddr>() {
                Ok(ip) => ip,
                Err(_) => tokio::net::lookup_host((server.as_str(), 53))
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .map(|a| a.ip())
                    .ok_or_else(|| format!("pod DNS server {server:?} does not resolve"))?,
            };
            dns.push(address.to_string());
        }
        Ok(Self {
            client,
            node: node.to_string(),
            network,
            sandbox,
            sandbox_address,
            sandbox_is_self,
            deadline: None,
            dns,
            zone: settings.cluster_domain.clone(),
        })
    }

    fn own_labels(&self) -> Vec<String> {
        let mut labels = vec![format!("{NODE_LABEL}={}", self.node)];
        if let Some(sandbox) = &self.sandbox {
            labels.push(format!("{SANDBOX_LABEL}={sandbox}"));
        }
        labels
    }

    /// Removes every container an earlier run of this agent left.
    pub async fn remove_leftovers(&self) -> Result<usize, String> {
        let filters = HashMap::from([("label".to_string(), self.own_labels())]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let mut removed = 0;
        for c in list {
            let Some(id) = c.id else { continue };
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            match self.client.remove_container(&id, Some(options)).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "cannot remove a leftover container")
                }
            }
        }
        Ok(removed)
    }

    /// Creates and starts one container; its output goes to `log`.
    pub async fn start(&self, spec: &ContainerSpec<'_>, log: &Path) -> Result<Started, StartError> {
        if let Some(deadline) = &self.deadline
            && crate::fence::boottime_ns() >= *deadline.borrow()
        {
            return Err(StartError::Failed(
                "the node's lease deadline has passed: no container starts until it is renewed"
                    .into(),
            ));
        }
        let mut labels = HashMap::from([
            (NODE_LABEL.to_string(), self.node.clone()),
            (POD_LABEL.to_string(), spec.pod.to_string()),
        ]);
        let mut pid_mode = None;
        if let Some(sandbox) = &self.sandbox {
            labels.insert(SANDBOX_LABEL.to_string(), sandbox.clone());
            pid_mode = Some(format!("container:{sandbox}"));
        }
        let zone = &self.zone;
        let search = vec![
            format!("{}.svc.{zone}", spec.namespace),
            format!("svc.{zone}"),
            zone.clone(),
        ];
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.to_vec()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.to_vec()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.map(str::to_string),
            hostname: Some(spec.hostname.to_string()),
            user: spec.user.clone(),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(HostConfig {
                binds: Some(
                    spec.mounts
                        .iter()
                        .map(|(src, dst)| format!("{}:{dst}", src.display()))
                        .collect(),
                ),
                network_mode: Some(self.network.clone()),
                pid_mode,
                dns: (!self.dns.is_empty()).then(|| self.dns.clone()),
                dns_search: (!self.dns.is_empty()).then_some(search),
                auto_remove: Some(true),
                // The resolved set, from nothing: the engine's default set
                // is the same one it starts from.
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(
                    spec.security
                        .capabilities
                        .iter()
                        .map(|c| format!("CAP_{c}"))
                        .collect(),
                ),
                security_opt: spec
                    .security
                    .no_new_privs
                    .then(|| vec!["no-new-privileges".to_string()]),
                readonly_rootfs: Some(spec.security.read_only_root),
                memory: spec
                    .limits
                    .memory
                    .map(|bytes| bytes.min(i64::MAX as u64) as i64),
                // No swap beyond the limit, as Kubernetes runs containers.
                memory_swap: spec
                    .limits
                    .memory
                    .map(|bytes| bytes.min(i64::MAX as u64) as i64),
                // limits.cpu as the engine's CFS quota (`docker --cpus`).
                nano_cpus: spec
                    .limits
                    .cpu_millis
                    .map(|millis| millis.saturating_mul(1_000_000).min(i64::MAX as u64) as i64),
                group_add: Some(spec.security.groups.iter().map(u32::to_string).collect()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(spec.ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let options = CreateContainerOptions {
            // After the agent's container too: two stacks on one engine
            // never collide.
            name: Some(format!(
                "{}_{}",
                spec.name,
                self.sandbox
                    .as_deref()
                    .map_or("host".to_string(), |s| s.chars().take(12).collect())
            )),
            ..Default::default()
        };
        let created = self
            .client
            .create_container(Some(options), body)
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                } => StartError::ImageNeverPull(format!(
                    "image {:?} is not present on node {} and images are never pulled: build or load it there",
                    spec.image, self.node
                )),
                e => StartError::Failed(format!("cannot create the container: {e}")),
            })?;
        let id = created.id;
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let output = match self.client.attach_container(&id, Some(attach)).await {
            Ok(attached) => attached.output,
            Err(e) => {
                self.remove(&id).await;
                return Err(format!("cannot attach to the container: {e}").into());
            }
        };
        let copy = tokio::spawn(async move {
            let mut output = output;
            while let Some(Ok(chunk)) = output.next().await {
                if file.write_all(&chunk.into_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = file.flush().await;
        });
        if let Err(e) = self.client.start_container(&id, None).await {
            self.remove(&id).await;
            copy.abort();
            return Err(format!("cannot start the container: {e}").into());
        }
        // The engine answers a wait when the container ends, however long
        // that is: no request timeout for this one (bollard's is 2 minutes).
        let client = self.client.clone().with_timeout(NO_TIMEOUT);
        let wait_id = id.clone();
        let exit = tokio::spawn(async move {
            let options = WaitContainerOptions {
                condition: "removed".into(),
            };
            let outcome = match client.wait_container(&wait_id, Some(options)).next().await {
                Some(Ok(r)) => format!("exited with exit status: {}", r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
                    format!("exited with exit status: {code} {error}")
                        .trim_end()
                        .to_string()
                }
                // Removed before the wait arrived: it ended, with a status
                // nobody can read any more.
                _ => "exited".to_string(),
            };
            let _ = copy.await;
            outcome
        });
        Ok(Started {
            client: self.client.clone(),
            id,
            exit,
        })
    }

    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let _ = self.client.remove_container(id, Some(options)).await;
    }
}

/// One container, as Docker is to run it.
#[derive(Debug)]
pub struct ContainerSpec<'a> {
    /// The container's name on the engine.
    pub name: String,
    /// `<namespace>/<pod>`.
    pub pod: &'a str,
    /// The pod's namespace (the first DNS search domain).
    pub namespace: &'a str,
    /// The image to run (after the agent's image map).
    pub image: &'a str,
    /// Kubernetes' `command` (the entrypoint), empty for the image's.
    pub command: &'a [String],
    /// Kubernetes' `args` (the cmd), empty for the image's.
    pub args: &'a [String],
    /// Environment.
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: Option<&'a str>,
    /// The pod's hostname.
    pub hostname: &'a str,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// `(host directory, mountPath)`.
    pub mounts: &'a [(std::path::PathBuf, String)],
    /// `uid:gid` when the security context names a user or group; else
    /// the image's user.
    pub user: Option<String>,
    /// Groups, capabilities, no_new_privs, read-only root.
    pub security: &'a petset_core::security::Effective,
    /// `resources.limits`: memory (the engine's `Memory`) and cpu
    /// (`NanoCpus`).
    pub limits: crate::limits::Limits,
}

/// A started container.
#[derive(Debug)]
pub struct Started {
    client: Docker,
    id: String,
    exit: tokio::task::JoinHandle<String>,
}

impl Started {
    /// Waits until the container has ended (cancel-safe); how it ended.
    pub async fn wait(&mut self) -> String {
        (&mut self.exit)
            .await
            .unwrap_or_else(|_| "exited".to_string())
    }

    /// SIGTERM, SIGKILL after `grace`, and waits for the end.
    pub async fn terminate(&mut self, grace: Duration) {
        let options = StopContainerOptions {
            t: Some(grace.as_secs().min(i32::MAX as u64) as i32),
            ..Default::default()
        };
        let _ = self.client.stop_container(&self.id, Some(options)).await;
        self.wait().await;
    }

    /// SIGKILL, and waits for the end.
    pub async fn kill(&mut self) {
        let options = KillContainerOptions {
            signal: "KILL".into(),
        };
        let _ = self.client.kill_container(&self.id, Some(options)).await;
        self.wait().await;
    }

    /// A handle for exec probes.
    pub fn exec_target(&self) -> ExecTarget {
        ExecTarget {
            client: self.client.clone(),
            id: self.id.clone(),
        }
    }
}

/// Where exec probes run: inside a running container.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    client: Docker,
    id: String,
}

impl ExecTarget {
    /// Runs `command` in the container; answers its exit code.
    pub async fn run(&self, command: &[String]) -> Result<i64, ExecError> {
        let mut session = self.session(command, false, false, None).await?;
        while session.output.next().await.is_some() {}
        session.handle.exit_code().await
    }

    /// Starts `command` in the container as `docker exec` does (the
    /// container's user and environment), attached: its input when `stdin`,
    /// on a terminal of `size` when `tty`.
    pub async fn session(
        &self,
        command: &[String],
        stdin: bool,
        tty: bool,
        size: Option<&petset_proto::v1::TerminalSize>,
    ) -> Result<Session, ExecError> {
        let failed = |e: bollard::errors::Error| ExecError(e.to_string());
        let create = bollard::exec::CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            ..Default::default()
        };
        let id = self
            .client
            .create_exec(&self.id, create)
            .await
            .map_err(failed)?
            .id;
        let started = self
            .client
            .start_exec(
                &id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(failed)?;
        let bollard::exec::StartExecResults::Attached { output, input } = started else {
            return Err(ExecError("the engine did not attach to the command".into()));
        };
        let handle = ExecHandle {
            client: self.client.clone(),
            id,
        };
        if let Some(size) = size {
            handle.resize(size).await;
        }
        Ok(Session {
            handle,
            output,
            input,
        })
    }
}

/// What a [`Session`]'s command writes.
pub type SessionOutput = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>>
            + Send,
    >,
>;

/// A command started in a container with [`ExecTarget::session`].
pub struct Session {
    /// Its terminal's size and, once it ended, its exit code.
    pub handle: ExecHandle,
    /// What it writes, as it writes it (on a terminal, one stream).
    pub output: SessionOutput,
    /// Its standard input (closing it ends the input).
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// An engine exec, by id.
#[derive(Debug, Clone)]
pub struct ExecHandle {
    client: Docker,
    id: String,
}

impl ExecHandle {
    /// Gives its terminal the client's size (a failure is only logged:
    /// the command may have ended).
    pub async fn resize(&self, size: &petset_proto::v1::TerminalSize) {
        let (cols, rows) = crate::terminal::cells(size);
        let size = bollard::exec::ResizeExecOptions {
            height: rows,
            width: cols,
        };
        if let Err(e) = self.client.resize_exec(&self.id, size).await {
            tracing::debug!(error = %e, "exec terminal not resized");
        }
    }

    /// Its exit code once it ended (-1 when the engine does not say).
    pub async fn exit_code(&self) -> Result<i64, ExecError> {
        let inspected = self
            .client
            .inspect_exec(&self.id)
            .await
            .map_err(|e| ExecError(e.to_string()))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }
}
