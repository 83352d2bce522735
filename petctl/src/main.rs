//! petctl: petset's command line, in the habits of kubectl.
//!
//! It talks to scheduler-svc (`--server`, `PETSET_SERVER`, default
//! `127.0.0.1:50051`) and finds identity-svc and storage-svc through it.
//! Exit codes: 0 success, 1 the request failed (the message says why and
//! what to do), 2 bad usage.
//!
//! # Layout
//! - [`manifest`]: reading Kubernetes YAML.
//! - [`output`]: tables and Kubernetes-shaped JSON/YAML.
//! - [`proxy`]: `petctl proxy`.
//! - [`selector`]: label selectors (`get -l`).
//! - [`trace`]: the command's trace (OTLP), carried by every request.

/// `println!` that ends petctl quietly when whoever reads its output went
/// away (`petctl get po | head`), as kubectl does, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::output_failed(e);
        }
    }};
}

/// `print!`, likewise.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = write!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            $crate::output_failed(e);
        }
    }};
}

mod exec;
mod kind;
mod manifest;
mod output;
mod port_forward;
mod proxy;
mod selector;
mod trace;

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{CommandFactory as _, Parser, Subcommand};
use petset_proto::v1;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::kind::Kind;
use crate::manifest::Object;
use crate::output::Format;

/// petctl controls petset, as kubectl controls Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "petctl", version, about)]
struct Cli {
    /// scheduler-svc's address.
    #[arg(
        long,
        short = 's',
        global = true,
        env = "PETSET_SERVER",
        default_value = "127.0.0.1:50051"
    )]
    server: String,
    /// The namespace.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates or updates objects from manifests (files, folders, `-`).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Lists objects: statefulsets (sts), pods (po), pvc, pv, nodes, services (svc), storageclasses (sc).
    Get {
        resource: String,
        name: Option<String>,
        /// wide, json or yaml.
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only objects whose labels match: `app=web,tier!=db`, `app`,
        /// `!app`, `env in (a,b)`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Shows an object in detail.
    Describe { resource: String, name: String },
    /// Sets a StatefulSet's replicas: `scale sts NAME --replicas=N`.
    Scale {
        resource: String,
        name: String,
        #[arg(long)]
        replicas: i32,
    },
    /// Deletes objects: `delete sts|po|pvc|pv|svc|sc NAME`.
    Delete {
        resource: String,
        name: String,
        /// Pods: remove at once without waiting for the node agent.
        #[arg(long)]
        force: bool,
        /// Pods: seconds before SIGKILL.
        #[arg(long)]
        grace_period: Option<i64>,
    },
    /// Runs a command in a pod's container, as `kubectl exec`:
    /// `exec [-i] [-c CONTAINER] POD -- COMMAND [ARGS...]`; petctl ends
    /// with the command's exit code.
    Exec {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass standard input to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// A terminal (not supported yet).
        #[arg(short = 't', long)]
        tty: bool,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Forwards local ports to a pod's ports, as `kubectl port-forward`:
    /// `port-forward POD [LOCAL:]REMOTE...`, until interrupted.
    PortForward {
        pod: String,
        /// `LOCAL:REMOTE`, or `REMOTE` for the same port locally.
        #[arg(required = true)]
        ports: Vec<String>,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Prints a pod's logs.
    Logs {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(long)]
        tail: Option<i64>,
        /// The previous run (before the last restart).
        #[arg(short = 'p', long)]
        previous: bool,
        /// Go on printing what the container writes, until it ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Opens a local port that forwards to the API's HTTP side (the pod and
    /// service proxy), as `kubectl proxy` does.
    Proxy {
        #[arg(short = 'p', long, default_value_t = 8001)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Rollouts of a StatefulSet: `rollout status|history|restart|undo sts
    /// NAME`. restart stamps the pod template (as kubectl does, with the
    /// `kubectl.kubernetes.io/restartedAt` annotation), so every pod is
    /// replaced by the set's update strategy; undo puts back the template of
    /// the revision before the newest one, or of `--to-revision`.
    Rollout {
        action: String,
        resource: String,
        name: String,
        /// status: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// undo: the revision to go back to (default: the one before the
        /// newest).
        #[arg(long)]
        to_revision: Option<i64>,
    },
    /// Prints a shell completion script, as `kubectl completion`:
    /// `source <(petctl completion bash)`, or zsh.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A channel to a petset service, each request carrying the trace.
type Traced = InterceptedService<Channel, trace::Traceparent>;

impl Command {
    /// The command's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Apply { .. } => "apply",
            Command::Get { .. } => "get",
            Command::Describe { .. } => "describe",
            Command::Scale { .. } => "scale",
            Command::Delete { .. } => "delete",
            Command::Logs { .. } => "logs",
            Command::Exec { .. } => "exec",
            Command::PortForward { .. } => "port-forward",
            Command::Proxy { .. } => "proxy",
            Command::Rollout { .. } => "rollout",
            Command::Completion { .. } => "completion",
        }
    }
}

/// Writes `shell`'s completion script for petctl to `out`.
fn completion(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "petctl", out);
}

/// The template annotation `rollout restart` stamps, as kubectl's.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Standard output failed: a closed pipe ends petctl at once and quietly
/// (its reader has all it wanted); anything else is reported.
pub(crate) fn output_failed(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing the output: {e}");
    std::process::exit(1);
}

/// Connections to the services.
#[derive(Clone)]
struct Clients {
    scheduler: Channel,
    trace: trace::Traceparent,
    namespace: String,
    /// Where the other services are, asked once per run.
    info: tokio::sync::OnceCell<v1::ClusterInfo>,
}

impl Clients {
    fn connect(server: &str, namespace: &str, trace: trace::Traceparent) -> Result<Clients> {
        let url = if server.contains("://") {
            server.to_string()
        } else {
            format!("http://{server}")
        };
        let scheduler = Endpoint::from_shared(url.clone())
            .with_context(|| format!("--server {server:?} is not an address"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Clients {
            scheduler,
            trace,
            namespace: namespace.to_string(),
            info: tokio::sync::OnceCell::new(),
        })
    }

    /// `channel` with the trace on every request.
    fn traced(&self, channel: Channel) -> Traced {
        InterceptedService::new(channel, self.trace.clone())
    }

    fn sets(&self) -> v1::stateful_sets_client::StatefulSetsClient<Traced> {
        v1::stateful_sets_client::StatefulSetsClient::new(self.traced(self.scheduler.clone()))
    }

    fn pods(&self) -> v1::pods_client::PodsClient<Traced> {
        v1::pods_client::PodsClient::new(self.traced(self.scheduler.clone()))
    }

    fn nodes(&self) -> v1::nodes_client::NodesClient<Traced> {
        v1::nodes_client::NodesClient::new(self.traced(self.scheduler.clone()))
    }

    async fn info(&self) -> Result<v1::ClusterInfo> {
        let info = self
            .info
            .get_or_try_init(|| async {
                let answer =
                    v1::cluster_client::ClusterClient::new(self.traced(self.scheduler.clone()))
                        .get_cluster_info(v1::GetClusterInfoRequest {})
                        .await
                        .map_err(explain)?;
                Ok::<_, anyhow::Error>(answer.into_inner())
            })
            .await?;
        Ok(info.clone())
    }

    async fn storage(&self) -> Result<v1::storage_client::StorageClient<Traced>> {
        let info = self.info().await?;
        Ok(v1::storage_client::StorageClient::new(self.traced(
            Endpoint::from_shared(info.storage_addr)?.connect_lazy(),
        )))
    }

    async fn services(&self) -> Result<v1::services_client::ServicesClient<Traced>> {
        let info = self.info().await?;
        Ok(v1::services_client::ServicesClient::new(self.traced(
            Endpoint::from_shared(info.identity_addr)?.connect_lazy(),
        )))
    }
}

/// Turns a gRPC error into a message a person can act on.
pub(crate) fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic_types_free::details;
    match status.code() {
        tonic::Code::Unavailable => anyhow!(
            "cannot reach petset ({}): is it running? Start it with scripts/up, or point --server / PETSET_SERVER at scheduler-svc",
            status.message()
        ),
        tonic::Code::NotFound => anyhow!("Error from server (NotFound): {}", status.message()),
        tonic::Code::AlreadyExists => {
            anyhow!("Error from server (AlreadyExists): {}", status.message())
        }
        tonic::Code::InvalidArgument => {
            anyhow!("Error from server (Invalid): {}", details(&status))
        }
        tonic::Code::FailedPrecondition => {
            anyhow!("Error from server (Conflict): {}", status.message())
        }
        tonic::Code::Aborted => anyhow!(
            "Error from server (Conflict): {}; read the object again and retry",
            status.message()
        ),
        _ => anyhow!(
            "Error from server ({:?}): {}",
            status.code(),
            status.message()
        ),
    }
}

mod tonic_types_free {
    /// The status message (it lists every broken field and rule).
    pub fn details(status: &tonic::Status) -> String {
        status
            .message()
            .trim_start_matches("invalid argument: ")
            .to_string()
    }
}

async fn apply(c: &Clients, files: &[String]) -> Result<()> {
    let manifests = manifest::read(files)?;
    for w in &manifests.warnings {
        eprintln!("{w}");
    }
    for object in manifests.objects {
        let what = object.describe();
        // As kubectl: read the object first; absent means created, the
        // same version after the apply means unchanged.
        let (before, after) = match object {
            Object::StatefulSet(mut s) => {
                default_namespace(&mut s.metadata, &c.namespace);
                let (ns, name) = ns_name(&s.metadata);
                let before = version_of(
                    c.sets()
                        .get_stateful_set(v1::GetStatefulSetRequest {
                            namespace: ns,
                            name,
                        })
                        .await
                        .map(|r| r.into_inner().metadata),
                )?;
                let after = c
                    .sets()
                    .apply_stateful_set(v1::ApplyStatefulSetRequest {
                        stateful_set: Some(*s),
                    })
                    .await
                    .map_err(explain)?
                    .into_inner()
                    .metadata;
                (before, after)
            }
            Object::Service(mut s) => {
                default_namespace(&mut s.metadata, &c.namespace);
                let (namespace, name) = ns_name(&s.metadata);
                let mut services = c.services().await?;
                let before = version_of(
                    services
                        .get_service(v1::GetServiceRequest { namespace, name })
                        .await
                        .map(|r| r.into_inner().metadata),
                )?;
                let after = services
                    .apply_service(v1::ApplyServiceRequest { service: Some(s) })
                    .await
                    .map_err(explain)?
                    .into_inner()
                    .metadata;
                (before, after)
            }
            Object::Claim(mut claim) => {
                default_namespace(&mut claim.metadata, &c.namespace);
                let (namespace, name) = ns_name(&claim.metadata);
                let mut storage = c.storage().await?;
                let before = version_of(
                    storage
                        .get_claim(v1::GetClaimRequest { namespace, name })
                        .await
                        .map(|r| r.into_inner().metadata),
                )?;
                let after = storage
                    .apply_claim(v1::ApplyClaimRequest { claim: Some(claim) })
                    .await
                    .map_err(explain)?
                    .into_inner()
                    .metadata;
                (before, after)
            }
            Object::Volume(v) => {
                let (_, name) = ns_name(&v.metadata);
                let mut storage = c.storage().await?;
                let before = version_of(
                    storage
                        .get_volume(v1::GetVolumeRequest { name })
                        .await
                        .map(|r| r.into_inner().metadata),
                )?;
                let after = storage
                    .apply_volume(v1::ApplyVolumeRequest { volume: Some(v) })
                    .await
                    .map_err(explain)?
                    .into_inner()
                    .metadata;
                (before, after)
            }
            Object::StorageClass(sc) => {
                let (_, name) = ns_name(&sc.metadata);
                let mut storage = c.storage().await?;
                let before = version_of(
                    storage
                        .get_storage_class(v1::GetStorageClassRequest { name })
                        .await
                        .map(|r| r.into_inner().metadata),
                )?;
                let after = storage
                    .apply_storage_class(v1::ApplyStorageClassRequest {
                        storage_class: Some(sc),
                    })
                    .await
                    .map_err(explain)?
                    .into_inner()
                    .metadata;
                (before, after)
            }
        };
        let after = after.map(|m| m.resource_version).unwrap_or_default();
        out!("{what} {}", applied(before.as_deref(), &after));
    }
    Ok(())
}

/// kubectl's word for an apply: `created` when the object did not exist
/// (`before` is `None`), `unchanged` when its version did not move.
fn applied(before: Option<&str>, after: &str) -> &'static str {
    match before {
        None => "created",
        Some(version) if version == after => "unchanged",
        Some(_) => "configured",
    }
}

/// The version a read found: `None` when the object does not exist.
fn version_of(
    read: std::result::Result<Option<v1::ObjectMeta>, tonic::Status>,
) -> Result<Option<String>> {
    match read {
        Ok(meta) => Ok(Some(meta.map(|m| m.resource_version).unwrap_or_default())),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        // A name the read refuses: the apply says why, about its fields.
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(None),
        Err(status) => Err(explain(status)),
    }
}

/// `(namespace, name)` of an object's metadata.
fn ns_name(meta: &Option<v1::ObjectMeta>) -> (String, String) {
    let meta = meta.clone().unwrap_or_default();
    (meta.namespace, meta.name)
}

fn default_namespace(meta: &mut Option<v1::ObjectMeta>, namespace: &str) {
    let meta = meta.get_or_insert_with(Default::default);
    if meta.namespace.is_empty() {
        meta.namespace = namespace.to_string();
    }
}

async fn scale(c: &Clients, kind: &str, name: &str, replicas: i32) -> Result<()> {
    if Kind::parse(kind)? != Kind::StatefulSet {
        bail!("petset scales statefulsets only: petctl scale sts {name} --replicas={replicas}");
    }
    c.sets()
        .scale_stateful_set(v1::ScaleStatefulSetRequest {
            namespace: c.namespace.clone(),
            name: name.into(),
            replicas,
        })
        .await
        .map_err(explain)?;
    out!("statefulset.apps/{name} scaled");
    Ok(())
}

async fn delete(
    c: &Clients,
    kind: &str,
    name: &str,
    force: bool,
    grace: Option<i64>,
) -> Result<()> {
    let ns = c.namespace.clone();
    match Kind::parse(kind)? {
        Kind::StatefulSet => {
            c.sets()
                .delete_stateful_set(v1::DeleteStatefulSetRequest {
                    namespace: ns,
                    name: name.into(),
                })
                .await
                .map_err(explain)?;
            out!("statefulset.apps \"{name}\" deleted");
        }
        Kind::Pod => {
            let r = c
                .pods()
                .delete_pod(v1::DeletePodRequest {
                    namespace: ns,
                    name: name.into(),
                    force,
                    grace_period_seconds: grace,
                })
                .await
                .map_err(explain)?
                .into_inner();
            if !r.warning.is_empty() {
                eprintln!("Warning: {}", r.warning);
            }
            out!("pod \"{name}\" deleted");
        }
        Kind::Claim => {
            c.storage()
                .await?
                .delete_claim(v1::DeleteClaimRequest {
                    namespace: ns,
                    name: name.into(),
                })
                .await
                .map_err(explain)?;
            out!("persistentvolumeclaim \"{name}\" deleted");
        }
        Kind::Volume => {
            c.storage()
                .await?
                .delete_volume(v1::DeleteVolumeRequest { name: name.into() })
                .await
                .map_err(explain)?;
            out!("persistentvolume \"{name}\" deleted");
        }
        Kind::Service => {
            c.services()
                .await?
                .delete_service(v1::DeleteServiceRequest {
                    namespace: ns,
                    name: name.into(),
                })
                .await
                .map_err(explain)?;
            out!("service \"{name}\" deleted");
        }
        Kind::StorageClass => {
            c.storage()
                .await?
                .delete_storage_class(v1::DeleteStorageClassRequest { name: name.into() })
                .await
                .map_err(explain)?;
            out!("storageclass.storage.k8s.io \"{name}\" deleted");
        }
        Kind::Node => bail!("nodes leave when their agent stops; they cannot be deleted"),
    }
    Ok(())
}

async fn logs(c: &Clients, request: v1::PodLogsRequest, follow: bool) -> Result<()> {
    // scheduler-svc asks the pod's node agent, as the API server asks the
    // kubelet: only scheduler-svc need be reachable.
    let from_node = |status: tonic::Status| {
        // scheduler-svc answered, but the node's agent did not.
        if status.code() == tonic::Code::Unavailable && status.message().starts_with("node ") {
            anyhow!("Error from server: {}", status.message())
        } else {
            explain(status)
        }
    };
    if !follow {
        let r = c
            .pods()
            .pod_logs(request)
            .await
            .map_err(from_node)?
            .into_inner();
        out_raw!("{}", r.text);
        return Ok(());
    }
    let mut stream = c
        .pods()
        .follow_pod_logs(request)
        .await
        .map_err(from_node)?
        .into_inner();
    while let Some(r) = stream.message().await.map_err(from_node)? {
        out_raw!("{}", r.text);
    }
    Ok(())
}

async fn rollout(
    c: &Clients,
    action: &str,
    kind: &str,
    name: &str,
    timeout: u64,
    to_revision: Option<i64>,
) -> Result<()> {
    if Kind::parse(kind)? != Kind::StatefulSet {
        bail!("rollout works on statefulsets: petctl rollout {action} sts {name}");
    }
    let get = || async {
        anyhow::Ok(
            c.sets()
                .get_stateful_set(v1::GetStatefulSetRequest {
                    namespace: c.namespace.clone(),
                    name: name.into(),
                })
                .await
                .map_err(explain)?
                .into_inner(),
        )
    };
    let revisions = || async {
        let mut revisions = c
            .sets()
            .list_revisions(v1::ListRevisionsRequest {
                namespace: c.namespace.clone(),
                name: name.into(),
            })
            .await
            .map_err(explain)?
            .into_inner()
            .revisions;
        revisions.sort_by_key(|r| r.revision);
        anyhow::Ok(revisions)
    };
    match action {
        "restart" | "undo" => {
            // Read, change the template, write back conditionally on the
            // version read (a concurrent change is refused, not lost).
            let mut set = get().await?;
            let spec = set.spec.get_or_insert_default();
            let done = if action == "restart" {
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)?;
                spec.template
                    .get_or_insert_default()
                    .metadata
                    .get_or_insert_default()
                    .annotations
                    .insert(RESTARTED_AT.into(), now);
                "restarted"
            } else {
                let revisions = revisions().await?;
                let target = match to_revision {
                    Some(n) => revisions.iter().find(|r| r.revision == n).ok_or_else(|| {
                        anyhow::anyhow!(
                            "statefulset {name} has no revision {n}: petctl rollout history sts {name}"
                        )
                    })?,
                    None => match revisions.as_slice() {
                        [.., previous, _] => previous,
                        _ => bail!("statefulset {name} has no earlier revision to go back to"),
                    },
                };
                if spec.template == target.template {
                    out!(
                        "statefulset.apps/{name} skipped rollback (current template already matches revision {})",
                        target.revision
                    );
                    return Ok(());
                }
                spec.template = target.template.clone();
                "rolled back"
            };
            set.status = None;
            c.sets()
                .apply_stateful_set(v1::ApplyStatefulSetRequest {
                    stateful_set: Some(set),
                })
                .await
                .map_err(explain)?;
            out!("statefulset.apps/{name} {done}");
            Ok(())
        }
        "history" => {
            let revisions = revisions().await?;
            out!("statefulset.apps/{name}");
            out!("{:<10}NAME", "REVISION");
            for r in revisions {
                out!("{:<10}{}", r.revision, r.name);
            }
            Ok(())
        }
        "status" => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut last = String::new();
            loop {
                let set = get().await?;
                let (line, done) = output::rollout_line(&set);
                if line != last {
                    out!("{line}");
                    last = line;
                }
                if done {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!("timed out waiting for the rollout of statefulset {name} ({timeout} s)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        other => {
            bail!("unknown rollout action {other:?}: use status, history, restart or undo")
        }
    }
}

async fn run(cli: Cli, trace: trace::Traceparent) -> Result<()> {
    let c = Clients::connect(&cli.server, &cli.namespace, trace)?;
    match cli.command {
        Command::Apply { files } => apply(&c, &files).await,
        Command::Get {
            resource: r,
            name,
            output,
            all_namespaces,
            selector,
        } => {
            let selector = selector::Selector::parse(selector.as_deref().unwrap_or(""))?;
            let format = Format::parse(output.as_deref())?;
            let ns = if all_namespaces {
                String::new()
            } else {
                c.namespace.clone()
            };
            // `get sts,po`: one table after the other, as kubectl.
            let kinds = r.split(',').map(Kind::parse).collect::<Result<Vec<_>>>()?;
            for (i, kind) in kinds.iter().enumerate() {
                if i > 0 && matches!(format, Format::Table | Format::Wide) {
                    out!();
                }
                output::get(&c, *kind, name.as_deref(), &ns, format, &selector).await?;
            }
            Ok(())
        }
        Command::Describe { resource: r, name } => {
            output::describe(&c, Kind::parse(&r)?, &name).await
        }
        Command::Scale {
            resource: r,
            name,
            replicas,
        } => scale(&c, &r, &name, replicas).await,
        Command::Delete {
            resource: r,
            name,
            force,
            grace_period,
        } => delete(&c, &r, &name, force, grace_period).await,
        Command::Logs {
            pod,
            container,
            tail,
            previous,
            follow,
        } => {
            let request = v1::PodLogsRequest {
                namespace: c.namespace.clone(),
                name: pod,
                container: container.unwrap_or_default(),
                tail_lines: tail.unwrap_or(0),
                previous,
            };
            logs(&c, request, follow).await
        }
        Command::PortForward {
            pod,
            ports,
            address,
        } => port_forward::forward(&c, &pod, address, &ports).await,
        Command::Exec {
            pod,
            container,
            stdin,
            tty,
            command,
        } => {
            let args = exec::ExecArgs {
                pod,
                container,
                stdin,
                tty,
                command,
            };
            exec::exec(&c, args).await
        }
        Command::Proxy { port, address } => {
            let info = c.info().await?;
            if info.api_http_addr.is_empty() {
                bail!("this scheduler-svc serves no HTTP API; upgrade it");
            }
            proxy::serve(std::net::SocketAddr::new(address, port), info.api_http_addr).await
        }
        Command::Rollout {
            action,
            resource: r,
            name,
            timeout,
            to_revision,
        } => rollout(&c, &action, &r, &name, timeout, to_revision).await,
        Command::Completion { shell } => {
            completion(shell, &mut std::io::stdout());
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let trace = trace::Trace::start(cli.command.name());
    let outcome = run(cli, trace.interceptor()).await;
    // A command that ran and failed is not petctl failing.
    let exited = outcome
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<exec::Exited>())
        .map(|e| e.0);
    trace.end(outcome.is_err() && exited.is_none());
    if let Some(code) = exited {
        eprintln!("command terminated with exit code {code}");
        std::process::exit(code);
    }
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_know_the_verbs() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut script = Vec::new();
            completion(shell, &mut script);
            let script = String::from_utf8(script).unwrap();
            for verb in ["apply", "exec", "port-forward", "rollout", "completion"] {
                assert!(script.contains(verb), "{shell:?} lacks {verb}");
            }
        }
    }

    #[test]
    fn apply_says_what_kubectl_says() {
        assert_eq!(applied(None, "7"), "created");
        assert_eq!(applied(Some("7"), "7"), "unchanged");
        assert_eq!(applied(Some("7"), "9"), "configured");
        let missing = version_of(Err(tonic::Status::not_found("statefulset default/x")));
        assert_eq!(missing.unwrap(), None);
        let found = version_of(Ok(Some(v1::ObjectMeta {
            resource_version: "12".into(),
            ..Default::default()
        })));
        assert_eq!(found.unwrap().as_deref(), Some("12"));
        assert!(version_of(Err(tonic::Status::unavailable("down"))).is_err());
    }
}
