//! One pod's life on this node: attach its claims, run its containers,
//! probe them, restart them, report, and stop them.
//!
//! # Expected flow
//! 1. Attach each claim through storage-svc with the pod's incarnation; the
//!    answer is the directory to bind-mount.
//! 2. Start each container (see [`crate::runtime`]); report the pod Running
//!    to scheduler-svc and its endpoint to identity-svc, both with the
//!    incarnation; report again whenever readiness or restarts change.
//! 3. A container that exits, or fails its liveness probe, is started again
//!    (`restartPolicy: Always`): at once the first time, then after 10 s,
//!    20 s, ... up to 5 minutes; the back-off resets after 10 minutes of
//!    running.
//! 4. Asked to stop (the pod is deleted): SIGTERM to every process, SIGKILL
//!    after the grace period, then detach the claims and release the
//!    identity, which tells the scheduler the pod is gone.
//! 5. Fenced (the node lost its lease): SIGKILL at once, and nothing else:
//!    the identity and the attachments went with the lease.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use petset_core::serve::ServiceChannel;
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::storage_client::StorageClient;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::probes::{self, Outcome};
use crate::runtime::{self, Launch, Running, Runtime};

/// Longest restart back-off, as the kubelet's.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long one scheduler replica has to take a status report.
const REPORT_DEADLINE: Duration = Duration::from_secs(5);
/// How often a pod's status is sent again though it did not change (the
/// kubelet's status sync period), so that a report lost on the way heals.
const STATUS_RESYNC: Duration = Duration::from_secs(10);
/// How soon a refused or failed report is first sent again.
const REPORT_RETRY: Duration = Duration::from_secs(1);
/// Running this long resets the back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How a pod is to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, SIGKILL after the grace period, then detach and release.
    Graceful(Duration),
    /// SIGKILL now and nothing else (the lease is gone).
    Fence,
}

/// What every pod task shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// The node's name.
    pub node: String,
    /// image → program (process runtime) or local image (Docker runtime).
    pub images: BTreeMap<String, String>,
    /// Where logs and emptyDirs live.
    pub data_dir: PathBuf,
    /// First restart back-off step.
    pub backoff: Duration,
    /// Where containers run.
    pub runtime: runtime::Runtime,
    /// scheduler-svc's replicas.
    pub nodes: crate::schedulers::Schedulers,
    /// identity-svc.
    pub identities: IdentitiesClient<ServiceChannel>,
    /// storage-svc.
    pub storage: StorageClient<ServiceChannel>,
    /// The node's address (a pod's `status.hostIP`).
    pub node_address: String,
    /// What an unset limit stands for in a `resourceFieldRef`.
    pub allocatable: crate::env::NodeAllocatable,
    /// Where to run a command in each running container (`petctl exec`).
    pub execs: ExecTargets,
    /// Process runtime: the address the node relays the pods' DNS from
    /// (their resolv.conf's nameserver), when `--pod-dns` is given.
    pub dns_relay: Option<IpAddr>,
    /// The cluster's DNS zone.
    pub zone: String,
    /// Process runtime, `--pod-network bridge`: the node's bridge, on which
    /// each pod gets a network namespace of its own.
    pub bridge: Option<crate::network::Bridge>,
}

/// The running containers, by (`<namespace>/<pod>`, index in the pod):
/// their name, where a command runs in them, and the pod's address.
pub type ExecTargets =
    Arc<std::sync::Mutex<BTreeMap<(String, usize), (String, runtime::Exec, IpAddr)>>>;

/// A running container's entry in [`ExecTargets`], removed when dropped.
struct ExecEntry {
    targets: ExecTargets,
    key: (String, usize),
}

impl ExecEntry {
    fn new(
        targets: &ExecTargets,
        pod: &str,
        index: usize,
        name: &str,
        exec: runtime::Exec,
        ip: IpAddr,
    ) -> Self {
        let key = (pod.to_string(), index);
        targets
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), (name.to_string(), exec, ip));
        ExecEntry {
            targets: targets.clone(),
            key,
        }
    }
}

impl Drop for ExecEntry {
    fn drop(&mut self) {
        self.targets.lock().expect("not poisoned").remove(&self.key);
    }
}

impl Context {
    /// Where to run a command in container `container` (empty: the first)
    /// of pod `pod` (`<namespace>/<name>`), while it runs.
    pub fn exec_target(&self, pod: &str, container: &str) -> Option<(String, runtime::Exec)> {
        let targets = self.execs.lock().expect("not poisoned");
        targets
            .range((pod.to_string(), 0)..=(pod.to_string(), usize::MAX))
            .map(|(_, target)| target)
            .find(|(name, _, _)| container.is_empty() || name == container)
            .map(|(name, exec, _)| (name.clone(), exec.clone()))
    }

    /// The address of pod `pod` (`<namespace>/<name>`) while one of its
    /// containers runs.
    pub fn running_pod_ip(&self, pod: &str) -> Option<IpAddr> {
        let targets = self.execs.lock().expect("not poisoned");
        targets
            .range((pod.to_string(), 0)..=(pod.to_string(), usize::MAX))
            .map(|(_, (_, _, ip))| *ip)
            .next()
    }
}

impl Context {
    /// The folder of a pod's logs and emptyDirs.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.data_dir
            .join("pods")
            .join(format!("{namespace}_{name}"))
    }

    /// The image map's entry for an image (a program, or a local image):
    /// an exact match, or the image without its tag.
    pub fn mapped_image(&self, image: &str) -> Option<String> {
        self.images.get(image).cloned().or_else(|| {
            let untagged = image.rsplit_once(':').map(|(i, _)| i).unwrap_or(image);
            self.images.get(untagged).cloned()
        })
    }
}

/// A container's state, as its task sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ContainerState {
    running: bool,
    ready: bool,
    restarts: i32,
    reason: String,
    message: String,
    /// Why the last run ended (Kubernetes' lastState.terminated.reason).
    last_termination: String,
}

/// Runs one pod until told to stop.
pub async fn supervise(
    ctx: Arc<Context>,
    pod: v1::Pod,
    ip: Ipv4Addr,
    mut stop: watch::Receiver<Option<Stop>>,
) {
    let meta = pod.metadata.clone().unwrap_or_default();
    let (ns, name) = (meta.namespace.clone(), meta.name.clone());
    let spec = pod.spec.clone().unwrap_or_default();
    let identity = v1::IdentityRef {
        namespace: ns.clone(),
        set_name: pod.set_name.clone(),
        ordinal: pod.ordinal,
    };
    let reporter = Reporter {
        ctx: ctx.clone(),
        pod: pod.clone(),
        ip: IpAddr::V4(ip),
    };
    tracing::info!(pod = %format!("{ns}/{name}"), incarnation = pod.incarnation, %ip, "starting pod");
    // Starting the pod, until it first reports every container running, is
    // one span in the trace of the controller action that made it.
    let mut starting = Some(
        tracing::info_span!("start pod", pod = %format!("{ns}/{name}"), incarnation = pod.incarnation),
    );
    if let Some(span) = &starting
        && !pod.trace_parent.is_empty()
    {
        petset_core::telemetry::set_remote_parent(span, &pod.trace_parent);
    }
    let in_start =
        |starting: &Option<tracing::Span>| starting.clone().unwrap_or_else(tracing::Span::none);
    let dir = ctx.pod_dir(&ns, &name);
    let _ = tokio::fs::create_dir_all(&dir).await;

    // Volumes: claims attached through storage-svc, emptyDirs made here.
    let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut attached: Vec<String> = Vec::new();
    for volume in &spec.volumes {
        if let Some(claim) = &volume.persistent_volume_claim {
            loop {
                let request = v1::AttachVolumeRequest {
                    namespace: ns.clone(),
                    claim_name: claim.claim_name.clone(),
                    node: ctx.node.clone(),
                    identity: Some(identity.clone()),
                    incarnation: pod.incarnation,
                };
                match ctx
                    .storage
                    .clone()
                    .attach_volume(request)
                    .instrument(in_start(&starting))
                    .await
                {
                    Ok(a) => {
                        volumes.insert(volume.name.clone(), PathBuf::from(a.into_inner().path));
                        attached.push(claim.claim_name.clone());
                        break;
                    }
                    Err(status) => {
                        let message =
                            format!("attaching claim {}: {}", claim.claim_name, status.message());
                        let go_on =
                            creating(&ctx, &reporter, &identity, &attached, message, &mut stop)
                                .instrument(in_start(&starting))
                                .await;
                        if !go_on {
                            return;
                        }
                    }
                }
            }
        } else if volume.empty_dir.is_some() {
            let path = dir.join("volumes").join(&volume.name);
            let _ = tokio::fs::create_dir_all(&path).await;
            volumes.insert(volume.name.clone(), path);
        }
    }

    // fsGroup: the pod's volumes belong to that group, group-writable, as
    // the kubelet makes them (fsGroupChangePolicy Always).
    if let Some(gid) = spec.security_context.as_ref().and_then(|s| s.fs_group)
        && rustix::process::getuid().is_root()
    {
        for path in volumes.values() {
            let path = path.clone();
            let given = tokio::task::spawn_blocking(move || give_to_group(&path, gid as u32)).await;
            if let Ok(Err(e)) = given {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "fsGroup: a volume was not given to the group");
            }
        }
    }

    // The pod's network namespace (`--pod-network bridge`), which all its
    // containers join, as a pod sandbox's.
    let mut sandbox = None;
    if let Some(bridge) = &ctx.bridge {
        loop {
            match bridge.sandbox(ip).instrument(in_start(&starting)).await {
                Ok(made) => {
                    sandbox = Some(made);
                    break;
                }
                Err(message) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), %message, "cannot make the pod's network namespace");
                    let message = format!("FailedCreatePodSandBox: {message}");
                    let go_on = creating(&ctx, &reporter, &identity, &attached, message, &mut stop)
                        .instrument(in_start(&starting))
                        .await;
                    if !go_on {
                        return;
                    }
                }
            }
        }
    }
    let netns = sandbox.as_ref().map(crate::network::Sandbox::path);

    // Containers.
    let (state_tx, mut state_rx) =
        watch::channel(vec![ContainerState::default(); spec.containers.len()]);
    let state_tx = Arc::new(state_tx);
    let mut tasks = tokio::task::JoinSet::new();
    let (container_stop_tx, container_stop) = watch::channel::<Option<Stop>>(None);
    for (index, container) in spec.containers.iter().enumerate() {
        let launch = match launch_for(&ctx, &pod, container, &volumes, ip, netns.clone()) {
            Ok(launch) => launch,
            Err(message) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), container = %container.name, %message, "container cannot start");
                state_tx.send_modify(|s| {
                    s[index] = ContainerState {
                        reason: "CreateContainerConfigError".into(),
                        message,
                        ..Default::default()
                    }
                });
                continue;
            }
        };
        let log = dir.join(format!("{}.log", container.name));
        tasks.spawn(run_container(
            ctx.clone(),
            container.clone(),
            launch,
            log,
            IpAddr::V4(ip),
            index,
            state_tx.clone(),
            container_stop.clone(),
            spec.termination_grace_period_seconds.unwrap_or(30),
        ));
    }
    // Reported on each change, again every STATUS_RESYNC, and soon after
    // a report that did not go through.
    let mut last: Option<Vec<ContainerState>> = None;
    let resync = tokio::time::sleep(STATUS_RESYNC);
    tokio::pin!(resync);
    let mut due = false;
    let mut retry = REPORT_RETRY;
    let how = loop {
        let now = state_rx.borrow_and_update().clone();
        if due || last.as_ref() != Some(&now) {
            let delivered = reporter.report(&now).instrument(in_start(&starting)).await;
            if delivered && !now.is_empty() && now.iter().all(|c| c.running) {
                // Running: the start is over (the span ends here).
                starting = None;
            }
            last = Some(now);
            due = false;
            let next = if delivered {
                retry = REPORT_RETRY;
                STATUS_RESYNC
            } else {
                // 1 s, doubled while it keeps failing, at most the period.
                let next = retry;
                retry = (retry * 2).min(STATUS_RESYNC);
                next
            };
            resync.as_mut().reset(Instant::now() + next);
        }
        tokio::select! {
            _ = stop.changed() => break *stop.borrow(),
            changed = state_rx.changed() => if changed.is_err() { break None },
            _ = &mut resync => due = true,
        }
    };
    let _ = container_stop_tx.send(how);
    while tasks.join_next().await.is_some() {}
    if let Some(sandbox) = sandbox {
        sandbox.remove().await;
    }
    finish(&ctx, &reporter, &identity, &attached, how).await;
    tracing::info!(pod = %format!("{ns}/{name}"), incarnation = pod.incarnation, ?how, "pod stopped");
}

/// Reports the pod still being created (`ContainerCreating`, `message`),
/// then waits 2 s before the caller tries again (`true`); told to stop
/// meanwhile, detaches the claims `attached` so far, releases the identity
/// and answers `false`.
async fn creating(
    ctx: &Context,
    reporter: &Reporter,
    identity: &v1::IdentityRef,
    attached: &[String],
    message: String,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> bool {
    reporter
        .report(&[ContainerState {
            reason: "ContainerCreating".into(),
            message,
            ..Default::default()
        }])
        .await;
    tokio::select! {
        _ = stop.changed() => {
            let how = *stop.borrow();
            finish(ctx, reporter, identity, attached, how).await;
            false
        }
        _ = tokio::time::sleep(Duration::from_secs(2)) => true,
    }
}

/// After the processes are gone: detach and release, unless fenced.
async fn finish(
    ctx: &Context,
    reporter: &Reporter,
    identity: &v1::IdentityRef,
    attached: &[String],
    how: Option<Stop>,
) {
    if how == Some(Stop::Fence) {
        return;
    }
    let pod = &reporter.pod;
    for claim in attached {
        let request = v1::DetachVolumeRequest {
            namespace: identity.namespace.clone(),
            claim_name: claim.clone(),
            identity: Some(identity.clone()),
            incarnation: pod.incarnation,
        };
        if let Err(status) = ctx.storage.clone().detach_volume(request).await {
            tracing::warn!(claim = %claim, %status, "detach failed; the attachment goes with the lease");
        }
    }
    let release = v1::ReleaseIdentityRequest {
        r#ref: Some(identity.clone()),
        incarnation: pod.incarnation,
    };
    if let Err(status) = ctx.identities.clone().release_identity(release).await {
        tracing::warn!(%status, "identity not released; it goes with the lease");
    }
}

/// The command line, environment and mounts of one container.
fn launch_for(
    ctx: &Context,
    pod: &v1::Pod,
    container: &v1::Container,
    volumes: &BTreeMap<String, PathBuf>,
    ip: Ipv4Addr,
    netns: Option<PathBuf>,
) -> Result<Launch, String> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for m in &container.volume_mounts {
        let src = volumes
            .get(&m.name)
            .ok_or_else(|| format!("volume {:?} is not available on this node", m.name))?;
        mounts.push((src.clone(), m.mount_path.clone()));
    }
    // Kubernetes' order: the variables (each may use those before it),
    // then $(VAR) in command and args with all of them.
    let facts = crate::env::PodFacts {
        pod,
        pod_ip: ip.to_string(),
        host_ip: ctx.node_address.clone(),
        node: ctx.allocatable,
    };
    let mut env = crate::env::environment(&facts, container)?;
    let command = crate::env::expand_all(&container.command, &env);
    let args = crate::env::expand_all(&container.args, &env);
    let namespaces = matches!(
        ctx.runtime,
        Runtime::Process {
            namespaces: true,
            ..
        }
    );
    // Whom it runs as: the pod's and the container's security contexts
    // over the runtime's user (the agent's, for processes).
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let security = petset_core::security::Effective::resolve(
        spec.security_context.as_ref(),
        container.security_context.as_ref(),
        uid,
        gid,
    );
    if security.run_as_non_root && security.uid == 0 {
        return Err(format!(
            "container {} has runAsNonRoot and would run as root (uid 0): set runAsUser",
            container.name
        ));
    }
    let asked = (security.uid, security.gid) != (uid, gid)
        || !security.groups.is_empty()
        || security.read_only_root;
    if asked
        && matches!(
            ctx.runtime,
            Runtime::Process {
                namespaces: false,
                ..
            }
        )
    {
        return Err(format!(
            "container {}'s securityContext (user {}, group {}, groups {:?}, read-only root {}) needs the node agent to run as root",
            container.name, security.uid, security.gid, security.groups, security.read_only_root
        ));
    }
    let mut argv = Vec::new();
    let mut image = container.image.clone();
    match &ctx.runtime {
        Runtime::Docker(_) => {
            if spec.containers.len() > 1 {
                return Err(format!(
                    "the Docker runtime runs one container per pod (the pod's address is the container's); this pod has {}",
                    spec.containers.len()
                ));
            }
            if let Some(local) = ctx.mapped_image(&container.image) {
                image = local;
            }
        }
        Runtime::Process { namespaces, .. } => {
            argv = command.clone();
            if argv.is_empty() {
                let program = ctx.mapped_image(&container.image).ok_or_else(|| {
                    format!(
                        "image {:?} has no command and is not mapped to a program on node {}: start the agent with --image {}=/path/to/program",
                        container.image, ctx.node, container.image
                    )
                })?;
                argv.push(program);
            }
            argv.extend(args.iter().cloned());
            if !mounts.is_empty() && !namespaces {
                return Err(format!(
                    "the node agent runs without namespace isolation (not root, or --isolation none), so volumes cannot be \
                     mounted at their mountPath ({}); run node-agent as root",
                    mounts
                        .iter()
                        .map(|(_, d)| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    let hostname = if spec.hostname.is_empty() {
        meta.name.clone()
    } else {
        spec.hostname.clone()
    };
    if namespaces {
        // The pod's own /etc/hosts, and its resolv.conf when the node
        // relays DNS, mounted over the node's in its mount namespace.
        let etc = ctx.pod_dir(&meta.namespace, &meta.name).join("etc");
        let namespace = petset_core::validate::namespace_or_default(&meta.namespace);
        let mut files = vec![(
            "hosts",
            crate::dns::hosts(
                IpAddr::V4(ip),
                &hostname,
                &spec.subdomain,
                &namespace,
                &ctx.zone,
            ),
        )];
        if let Some(relay) = ctx.dns_relay {
            files.push((
                "resolv.conf",
                crate::dns::resolv_conf(relay, &namespace, &ctx.zone),
            ));
        }
        for (name, text) in files {
            let path = etc.join(name);
            std::fs::create_dir_all(&etc)
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|e| format!("cannot write the pod's /etc/{name}: {e}"))?;
            mounts.push((path, format!("/etc/{name}")));
        }
    }
    // petset's conveniences, where the pod defines none of these names.
    for (name, value) in [
        ("POD_NAME", &meta.name),
        ("POD_NAMESPACE", &meta.namespace),
        ("POD_IP", &ip.to_string()),
        ("HOSTNAME", &hostname),
    ] {
        env.entry(name.into()).or_insert_with(|| value.clone());
    }
    if let Runtime::Process { .. } = ctx.runtime {
        // A Docker image brings its own PATH.
        env.entry("PATH".into()).or_insert_with(|| {
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        });
        // The container runs as the agent's user, whose home it gets (as
        // container runtimes set HOME from the user's passwd entry).
        env.entry("HOME".into())
            .or_insert_with(|| std::env::var("HOME").unwrap_or_else(|_| "/".into()));
    }
    Ok(Launch {
        argv,
        image,
        command,
        args,
        pod: format!("{}/{}", meta.namespace, meta.name),
        namespace: meta.namespace.clone(),
        engine_name: format!(
            "petset_{}_{}_{}_{}_{}",
            container.name, meta.name, meta.namespace, ctx.node, pod.incarnation
        ),
        ip,
        env,
        working_dir: (!container.working_dir.is_empty())
            .then(|| PathBuf::from(&container.working_dir)),
        hostname,
        mounts,
        namespaces,
        netns,
        limits: {
            let limit = |name: &str| {
                container
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.get(name))
                    .and_then(|q| petset_core::quantity::Quantity::parse(q).ok())
            };
            crate::limits::Limits {
                memory: limit("memory").and_then(|q| q.value()),
                cpu_millis: limit("cpu").and_then(|q| q.milli_value()),
            }
        },
        user: named_user(
            spec.security_context.as_ref(),
            container.security_context.as_ref(),
        ),
        security,
    })
}

/// `uid:gid` (or `uid`) when a security context names a user or group
/// (the Docker runtime's `User`); `None` leaves the image's.
fn named_user(
    pod: Option<&v1::PodSecurityContext>,
    container: Option<&v1::SecurityContext>,
) -> Option<String> {
    let uid = container
        .and_then(|c| c.run_as_user)
        .or(pod.and_then(|p| p.run_as_user));
    let gid = container
        .and_then(|c| c.run_as_group)
        .or(pod.and_then(|p| p.run_as_group));
    match (uid, gid) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        // A group alone cannot be said to the engine without a user: the
        // image's user and group.
        (None, _) => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_container(
    ctx: Arc<Context>,
    container: v1::Container,
    launch: Launch,
    log: PathBuf,
    ip: IpAddr,
    index: usize,
    state: Arc<watch::Sender<Vec<ContainerState>>>,
    mut stop: watch::Receiver<Option<Stop>>,
    grace: i64,
) {
    let grace = Duration::from_secs(grace.max(0) as u64);
    let mut backoff = RestartBackoff::new(ctx.backoff);
    let mut restarts = 0;
    let set = |f: &dyn Fn(&mut ContainerState)| state.send_modify(|s| f(&mut s[index]));
    loop {
        let wait = backoff.current();
        if !wait.is_zero() {
            let message = format!(
                "back-off {wait:?} restarting failed container {}",
                container.name
            );
            set(&|s| {
                s.running = false;
                s.ready = false;
                s.reason = "CrashLoopBackOff".into();
                s.message = message.clone();
            });
            if !backoff.wait(&mut stop).await {
                return;
            }
        }
        if tokio::fs::try_exists(&log).await.unwrap_or(false) {
            let _ = tokio::fs::rename(&log, log.with_extension("previous.log")).await;
        }
        let mut child: Running = match launch.start(&ctx.runtime, &log, restarts).await {
            Ok(child) => child,
            Err(failure) => {
                tracing::warn!(container = %container.name, message = %failure, "container did not start");
                let message = failure.to_string();
                set(&|s| {
                    s.reason = failure.reason().into();
                    s.message = message.clone();
                });
                backoff.failed_start();
                continue;
            }
        };
        let started = Instant::now();
        let _exec = ExecEntry::new(
            &ctx.execs,
            &launch.pod,
            index,
            &container.name,
            child.exec(&launch),
            ip,
        );
        let has_readiness = container.readiness_probe.is_some();
        set(&|s| {
            s.running = true;
            s.ready = !has_readiness;
            s.restarts = restarts;
            s.reason.clear();
            s.message.clear();
        });
        let (probe_tx, mut probes) = tokio::sync::mpsc::channel(4);
        let mut probe_tasks = tokio::task::JoinSet::new();
        for (kind, probe) in [
            ("readiness", &container.readiness_probe),
            ("liveness", &container.liveness_probe),
        ] {
            if let Some(probe) = probe.clone() {
                let (tx, ports, exec) = (
                    probe_tx.clone(),
                    container.ports.clone(),
                    child.exec(&launch),
                );
                probe_tasks.spawn(probe_loop(kind, probe, ip, ports, exec, tx));
            }
        }
        let outcome = loop {
            tokio::select! {
                _ = stop.changed() => {
                    let how = *stop.borrow();
                    match how {
                        Some(Stop::Fence) | None => child.kill().await,
                        Some(Stop::Graceful(g)) => child.terminate(g).await,
                    }
                    return;
                }
                outcome = child.wait() => break outcome,
                Some((kind, ok)) = probes.recv() => match kind {
                    "readiness" => set(&|s| s.ready = ok),
                    _ if !ok => {
                        child.terminate(grace).await;
                        break "failed its liveness probe".to_string();
                    }
                    _ => {}
                },
            }
        };
        probe_tasks.abort_all();
        restarts += 1;
        // As the kubelet says it: OOMKilled when the kernel's OOM killer
        // ended the run (its memory limit), else Error.
        let (reason, outcome) = if child.oom_killed() {
            (
                "OOMKilled",
                format!("{outcome}: killed by the kernel, out of memory (its limit)"),
            )
        } else {
            ("Error", outcome)
        };
        drop(child);
        tracing::info!(container = %container.name, log = %log.display(), %outcome, reason, restarts, "container ended; restarting");
        let message = format!("container {} {outcome}", container.name);
        set(&|s| {
            s.running = false;
            s.ready = false;
            s.restarts = restarts;
            s.reason = reason.into();
            s.message = message.clone();
            s.last_termination = reason.into();
        });
        backoff.ended(started.elapsed(), restarts);
    }
}

/// The kubelet's crash-loop back-off for one container: the first restart
/// at once, then `base` (10 s by default), doubled on each further restart
/// up to 5 minutes; a run longer than 10 minutes starts over.
#[derive(Debug, Clone)]
pub struct RestartBackoff {
    base: Duration,
    current: Duration,
}

impl RestartBackoff {
    /// No wait yet; `base` is the first step.
    pub fn new(base: Duration) -> Self {
        RestartBackoff {
            base,
            current: Duration::ZERO,
        }
    }

    /// The wait before the next start.
    pub fn current(&self) -> Duration {
        self.current
    }

    fn step(&mut self) {
        self.current = if self.current.is_zero() {
            self.base
        } else {
            (self.current * 2).min(MAX_BACKOFF)
        };
    }

    /// The container could not be started.
    pub fn failed_start(&mut self) {
        self.step();
    }

    /// The container ended after running `ran`; it has been restarted
    /// `restarts` times counting this one.
    pub fn ended(&mut self, ran: Duration, restarts: i32) {
        if ran > BACKOFF_RESET || restarts == 1 {
            self.current = Duration::ZERO;
        } else {
            self.step();
        }
    }

    /// Waits out the current back-off; `false` when `stop` changed first.
    pub async fn wait(&self, stop: &mut watch::Receiver<Option<Stop>>) -> bool {
        tokio::select! {
            _ = stop.changed() => false,
            _ = tokio::time::sleep(self.current) => true,
        }
    }
}

/// Runs a probe on its schedule and sends `(kind, passing)` when its
/// verdict changes (after `successThreshold` / `failureThreshold`).
async fn probe_loop(
    kind: &'static str,
    probe: v1::Probe,
    ip: IpAddr,
    ports: Vec<v1::ContainerPort>,
    exec: runtime::Exec,
    verdicts: tokio::sync::mpsc::Sender<(&'static str, bool)>,
) {
    let period = Duration::from_secs(probe.period_seconds.max(1) as u64);
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.max(0) as u64
    ))
    .await;
    let (mut successes, mut failures) = (0, 0);
    let mut verdict: Option<bool> = None;
    loop {
        match probes::run(&probe, ip, &ports, &exec).await {
            Outcome::Success => {
                successes += 1;
                failures = 0;
                if successes >= probe.success_threshold.max(1) && verdict != Some(true) {
                    verdict = Some(true);
                    if verdicts.send((kind, true)).await.is_err() {
                        return;
                    }
                }
            }
            Outcome::Failure(why) => {
                failures += 1;
                successes = 0;
                tracing::debug!(kind, %why, failures, "probe failed");
                if failures >= probe.failure_threshold.max(1) && verdict != Some(false) {
                    verdict = Some(false);
                    if verdicts.send((kind, false)).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Reports a pod's state to scheduler-svc and identity-svc.
struct Reporter {
    ctx: Arc<Context>,
    pod: v1::Pod,
    ip: IpAddr,
}

impl Reporter {
    /// Reports to scheduler-svc (status) and identity-svc (endpoint);
    /// answers whether both took it.
    async fn report(&self, containers: &[ContainerState]) -> bool {
        let meta = self.pod.metadata.clone().unwrap_or_default();
        let running = !containers.is_empty() && containers.iter().all(|c| c.running);
        let ready = running && containers.iter().all(|c| c.ready);
        let waiting = containers.iter().find(|c| !c.reason.is_empty());
        let status = v1::PodStatus {
            phase: if running { "Running" } else { "Pending" }.into(),
            ready,
            pod_ip: self.ip.to_string(),
            restart_count: containers.iter().map(|c| c.restarts).sum(),
            reason: waiting.map(|c| c.reason.clone()).unwrap_or_default(),
            message: waiting.map(|c| c.message.clone()).unwrap_or_default(),
            last_termination_reason: containers
                .iter()
                .map(|c| c.last_termination.clone())
                .find(|r| !r.is_empty())
                .unwrap_or_default(),
            ..Default::default()
        };
        let request = v1::ReportPodStatusRequest {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            incarnation: self.pod.incarnation,
            status: Some(status),
        };
        let reported = self
            .ctx
            .nodes
            .call(REPORT_DEADLINE, |mut nodes| {
                let request = request.clone();
                async move { nodes.report_pod_status(request).await }
            })
            .await;
        let mut delivered = true;
        if let Err(status) = reported {
            tracing::warn!(pod = %meta.name, %status, "status report refused");
            delivered = false;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .map(|p| v1::EndpointPort {
                name: p.name.clone(),
                port: p.container_port,
                protocol: p.protocol.clone(),
            })
            .collect();
        let endpoint = v1::ReportEndpointRequest {
            r#ref: Some(v1::IdentityRef {
                namespace: meta.namespace.clone(),
                set_name: self.pod.set_name.clone(),
                ordinal: self.pod.ordinal,
            }),
            incarnation: self.pod.incarnation,
            address: self.ip.to_string(),
            ports,
            ready,
            labels: meta.labels.clone(),
        };
        if let Err(status) = self.ctx.identities.clone().report_endpoint(endpoint).await {
            tracing::warn!(pod = %meta.name, %status, "endpoint report refused");
            delivered = false;
        }
        delivered
    }
}

/// Gives `root` and everything under it to group `gid` (symbolic links
/// themselves, not what they point to): readable and writable by the
/// group, folders searchable and setgid (new files join the group), files
/// executable by the group where their owner may execute them.
fn give_to_group(root: &std::path::Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, None, Some(gid))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        let mut wanted = mode | 0o060;
        if meta.is_dir() {
            wanted |= 0o2010;
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else if mode & 0o100 != 0 {
            wanted |= 0o010;
        }
        if wanted != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))?;
        }
    }
    Ok(())
}
