//! A real petset control plane for scheduler-svc's integration tests
//! (`tests/scheduler.rs`; here, not in scheduler-svc, which talks to the
//! other services only over gRPC and does not link them):
//! identity-svc and storage-svc in this process, scheduler-svc replicas as
//! real processes (so one can be killed), all on one test etcd under a key
//! root of their own; and node agents simulated by the test.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use petset_core::shutdown::CancellationToken;
use petset_core::store::{Store, StoreConfig};
use petset_core::testing::{Tied, free_port, wait_for};
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::nodes_client::NodesClient;
use petset_proto::v1::pods_client::PodsClient;
use petset_proto::v1::stateful_sets_client::StatefulSetsClient;
use petset_proto::v1::storage_client::StorageClient;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// One scheduler-svc process.
pub struct Scheduler {
    pub addr: SocketAddr,
    pub id: String,
    process: Tied,
}

impl Scheduler {
    /// Whether the replica's process still runs.
    pub fn running(&self) -> bool {
        self.process.running()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// identity-svc, storage-svc and scheduler replicas over one key root.
pub struct Cluster {
    pub store: StoreConfig,
    pub identity: SocketAddr,
    pub storage: SocketAddr,
    pub schedulers: Vec<Scheduler>,
    pub data: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Cluster {
    pub async fn start(name: &str, replicas: usize) -> Cluster {
        let store = petset_core::testing::shared().store_config(name);
        let data = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let listeners = identity_svc::Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let identity = listeners.grpc.local_addr().unwrap();
        tokio::spawn(identity_svc::Server::run(
            store.clone(),
            "cluster.local",
            listeners,
            shutdown.clone(),
        ));
        let storage_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let storage = storage_listener.local_addr().unwrap();
        let storage_config = {
            use clap::Parser as _;
            storage_svc::Config::parse_from([
                "storage-svc",
                "--data-root",
                data.path().join("storage").to_str().unwrap(),
                "--etcd-endpoints",
                &store.endpoints.join(","),
                "--etcd-prefix",
                &store.root,
                "--default-class",
                "none",
            ])
        };
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move { storage_svc::Server::run(&storage_config, storage_listener, shutdown).await }
        });
        let mut cluster = Cluster {
            store,
            identity,
            storage,
            schedulers: Vec::new(),
            data,
            shutdown,
        };
        for i in 0..replicas {
            cluster.start_scheduler(&format!("scheduler-{i}"));
        }
        for s in &cluster.schedulers {
            let addr = s.addr;
            wait_for("scheduler-svc to answer", WAIT, || async move {
                StatefulSetsClient::new(channel(addr))
                    .list_stateful_sets(v1::ListStatefulSetsRequest::default())
                    .await
                    .ok()
            })
            .await;
        }
        cluster
    }

    pub fn start_scheduler(&mut self, id: &str) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args = [
            "--grpc-addr".to_string(),
            addr.to_string(),
            "--identity-addr".into(),
            format!("http://{}", self.identity),
            "--storage-addr".into(),
            format!("http://{}", self.storage),
            "--etcd-endpoints".into(),
            self.store.endpoints.join(","),
            "--etcd-prefix".into(),
            self.store.root.clone(),
            "--leader-ttl".into(),
            "2".into(),
            "--id".into(),
            id.into(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
        ];
        // PETSET_TEST_LOGS keeps the replicas' logs (they go with the
        // temporary folder otherwise).
        let log = match std::env::var_os("PETSET_TEST_LOGS") {
            Some(dir) => {
                PathBuf::from(dir).join(format!("{}-{id}.log", self.store.root.replace('/', "_")))
            }
            None => self.data.path().join(format!("{id}.log")),
        };
        let process = Tied::spawn(&petset_e2e::binary("scheduler-svc"), &args, &log);
        self.schedulers.push(Scheduler {
            addr,
            id: id.into(),
            process,
        });
    }

    pub async fn etcd(&self) -> Store {
        Store::connect(&self.store).await.unwrap()
    }

    /// The id of the leading replica, once there is one other than `not`.
    pub async fn leader_other_than(&self, not: &str) -> String {
        let not = not.to_string();
        let store = self.etcd().await;
        let key = store.key(&["leader", "scheduler"]);
        wait_for("another leader", WAIT, || {
            let (store, key, not) = (store.clone(), key.clone(), not.clone());
            async move {
                let record = store.get::<serde_json::Value>(&key).await.ok()??;
                let id = record.value["id"].as_str()?.to_string();
                (id != not).then_some(id)
            }
        })
        .await
    }

    /// The id of the leading replica, once there is one.
    pub async fn leader(&self) -> String {
        let store = self.etcd().await;
        let key = store.key(&["leader", "scheduler"]);
        wait_for("a leader", WAIT, || {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let record = store.get::<serde_json::Value>(&key).await.ok()??;
                Some(record.value["id"].as_str()?.to_string())
            }
        })
        .await
    }

    /// A client of any scheduler replica still running.
    pub fn sets(&self, i: usize) -> StatefulSetsClient<Channel> {
        StatefulSetsClient::new(channel(self.schedulers[i].addr))
    }

    pub fn pods(&self, i: usize) -> PodsClient<Channel> {
        PodsClient::new(channel(self.schedulers[i].addr))
    }

    pub fn storage(&self) -> StorageClient<Channel> {
        StorageClient::new(channel(self.storage))
    }

    pub fn identities(&self) -> IdentitiesClient<Channel> {
        IdentitiesClient::new(channel(self.identity))
    }

    pub fn static_dir(&self, name: &str) -> PathBuf {
        self.data.path().join("storage").join("static").join(name)
    }

    /// The seed's three 1Mi static volumes.
    pub async fn seed_volumes(&self) {
        for pv in ["pv-a", "pv-b", "pv-c"] {
            self.storage()
                .apply_volume(v1::ApplyVolumeRequest {
                    volume: Some(v1::PersistentVolume {
                        metadata: Some(v1::ObjectMeta {
                            name: pv.into(),
                            ..Default::default()
                        }),
                        spec: Some(v1::PersistentVolumeSpec {
                            capacity: HashMap::from([("storage".into(), "1Mi".into())]),
                            access_modes: vec!["ReadWriteOnce".into()],
                            persistent_volume_reclaim_policy: "Recycle".into(),
                            source: Some(v1::persistent_volume_spec::Source::HostPath(
                                v1::HostPathVolumeSource {
                                    path: self.static_dir(pv).display().to_string(),
                                    r#type: String::new(),
                                },
                            )),
                            ..Default::default()
                        }),
                        status: None,
                    }),
                })
                .await
                .unwrap();
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
    }
}

/// The seed's kubia set.
pub fn kubia(replicas: i32) -> v1::StatefulSet {
    let labels: HashMap<String, String> = HashMap::from([("app".into(), "kubia".into())]);
    v1::StatefulSet {
        metadata: Some(v1::ObjectMeta {
            name: "kubia".into(),
            ..Default::default()
        }),
        spec: Some(v1::StatefulSetSpec {
            replicas: Some(replicas),
            selector: Some(v1::SetSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            service_name: "kubia".into(),
            template: Some(v1::PodTemplateSpec {
                metadata: Some(v1::ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(v1::PodSpec {
                    containers: vec![v1::Container {
                        name: "kubia".into(),
                        image: "luksa/kubia-pet".into(),
                        ports: vec![v1::ContainerPort {
                            name: "http".into(),
                            container_port: 8080,
                            ..Default::default()
                        }],
                        volume_mounts: vec![v1::VolumeMount {
                            name: "data".into(),
                            mount_path: "/var/data".into(),
                            read_only: false,
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            volume_claim_templates: vec![v1::PersistentVolumeClaimTemplate {
                metadata: Some(v1::ObjectMeta {
                    name: "data".into(),
                    ..Default::default()
                }),
                spec: Some(v1::PersistentVolumeClaimSpec {
                    access_modes: vec!["ReadWriteOnce".into()],
                    resources: Some(v1::VolumeResourceRequirements {
                        requests: HashMap::from([("storage".into(), "1Mi".into())]),
                    }),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// What a simulated agent saw happen, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Started {
        pod: String,
        incarnation: u64,
        node: String,
    },
    Stopped {
        pod: String,
        incarnation: u64,
    },
    Refused {
        pod: String,
        node: String,
    },
}

/// A node agent simulated by the test: registers, keeps its lease alive,
/// "runs" the pods bound to it (attaches their claims and reports them
/// Running and Ready) and stops them when asked (detaches, releases the
/// identity). Killing it stops its keep-alive, as a dead agent would.
pub struct Agent {
    pub name: String,
    pub mounts: Arc<Mutex<BTreeMap<String, PathBuf>>>,
    /// Pods reported Running but not Ready until released.
    pub held: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// While set, every new pod is refused as the kubelet's admission
    /// refuses one (Failed, `OutOfpods`).
    pub refusing: Arc<std::sync::atomic::AtomicBool>,
    running: Arc<Mutex<BTreeMap<String, u64>>>,
    nodes: NodesClient<Channel>,
    stop: CancellationToken,
}

impl Agent {
    pub async fn start(
        cluster: &Cluster,
        scheduler: usize,
        name: &str,
        log: Arc<Mutex<Vec<Seen>>>,
    ) -> Agent {
        Self::start_with_capacity(cluster, scheduler, name, log, None).await
    }

    /// [`Agent::start`], registering a capacity of `pods` pods (the
    /// scheduler's default, 110, when `None`).
    pub async fn start_with_capacity(
        cluster: &Cluster,
        scheduler: usize,
        name: &str,
        log: Arc<Mutex<Vec<Seen>>>,
        pods: Option<u32>,
    ) -> Agent {
        let mut nodes = NodesClient::new(channel(cluster.schedulers[scheduler].addr));
        let lease = nodes
            .register_node(v1::RegisterNodeRequest {
                name: name.into(),
                address: "127.0.0.1".into(),
                ttl_seconds: 2,
                capacity: pods
                    .map(|n| HashMap::from([("pods".to_string(), n.to_string())]))
                    .unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .lease_id;
        let stop = CancellationToken::new();
        let mounts = Arc::new(Mutex::new(BTreeMap::new()));
        let held = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = Arc::new(Mutex::new(BTreeMap::new()));
        let agent_nodes = nodes.clone();
        let keep = {
            let (mut nodes, name, stop) = (nodes.clone(), name.to_string(), stop.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    let _ = nodes
                        .keep_alive_node(v1::KeepAliveNodeRequest {
                            name: name.clone(),
                            lease_id: lease,
                        })
                        .await;
                }
            }
        };
        tokio::spawn(keep);
        let run = {
            let (name, stop, mounts) = (name.to_string(), stop.clone(), mounts.clone());
            let (held, running, refusing) = (held.clone(), running.clone(), refusing.clone());
            let mut refused = std::collections::BTreeSet::new();
            let storage = cluster.storage();
            let identities = cluster.identities();
            async move {
                let mut stream = nodes
                    .watch_node_pods(v1::WatchNodePodsRequest {
                        node_name: name.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        event = stream.next() => event,
                    };
                    let Some(Ok(event)) = event else { return };
                    for pod in event.pods {
                        let meta = pod.metadata.clone().unwrap();
                        let identity = v1::IdentityRef {
                            namespace: meta.namespace.clone(),
                            set_name: pod.set_name.clone(),
                            ordinal: pod.ordinal,
                        };
                        let claims: Vec<String> = pod
                            .spec
                            .as_ref()
                            .map(|s| {
                                s.volumes
                                    .iter()
                                    .filter_map(|v| {
                                        Some(v.persistent_volume_claim.as_ref()?.claim_name.clone())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if pod.deletion_timestamp.is_some() {
                            let was_running = running.lock().unwrap().remove(&meta.name).is_some();
                            if was_running {
                                for claim in &claims {
                                    let _ = storage
                                        .clone()
                                        .detach_volume(v1::DetachVolumeRequest {
                                            namespace: meta.namespace.clone(),
                                            claim_name: claim.clone(),
                                            identity: Some(identity.clone()),
                                            incarnation: pod.incarnation,
                                        })
                                        .await;
                                }
                                mounts.lock().unwrap().remove(&meta.name);
                                log.lock().unwrap().push(Seen::Stopped {
                                    pod: meta.name.clone(),
                                    incarnation: pod.incarnation,
                                });
                            }
                            let _ = identities
                                .clone()
                                .release_identity(v1::ReleaseIdentityRequest {
                                    r#ref: Some(identity.clone()),
                                    incarnation: pod.incarnation,
                                })
                                .await;
                            continue;
                        }
                        if running.lock().unwrap().get(&meta.name) == Some(&pod.incarnation)
                            || refused.contains(&(meta.name.clone(), pod.incarnation))
                        {
                            continue;
                        }
                        if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                            refused.insert((meta.name.clone(), pod.incarnation));
                            log.lock().unwrap().push(Seen::Refused {
                                pod: meta.name.clone(),
                                node: name.clone(),
                            });
                            let status = v1::PodStatus {
                                phase: "Failed".into(),
                                reason: "OutOfpods".into(),
                                message: "Pod was rejected: simulated".into(),
                                ..Default::default()
                            };
                            let _ = nodes.report_pod_status(report(&pod, status)).await;
                            continue;
                        }
                        for claim in &claims {
                            let attached = storage
                                .clone()
                                .attach_volume(v1::AttachVolumeRequest {
                                    namespace: meta.namespace.clone(),
                                    claim_name: claim.clone(),
                                    node: name.clone(),
                                    identity: Some(identity.clone()),
                                    incarnation: pod.incarnation,
                                })
                                .await;
                            if let Ok(a) = attached {
                                mounts
                                    .lock()
                                    .unwrap()
                                    .insert(meta.name.clone(), PathBuf::from(a.into_inner().path));
                            }
                        }
                        running
                            .lock()
                            .unwrap()
                            .insert(meta.name.clone(), pod.incarnation);
                        let ready = !held.lock().unwrap().contains(&meta.name);
                        log.lock().unwrap().push(Seen::Started {
                            pod: meta.name.clone(),
                            incarnation: pod.incarnation,
                            node: name.clone(),
                        });
                        let status = v1::PodStatus {
                            phase: "Running".into(),
                            ready,
                            pod_ip: "127.0.0.1".into(),
                            ..Default::default()
                        };
                        let _ = nodes.report_pod_status(report(&pod, status)).await;
                    }
                }
            }
        };
        tokio::spawn(run);
        Agent {
            name: name.into(),
            mounts,
            held,
            refusing,
            running,
            nodes: agent_nodes,
            stop,
        }
    }

    /// Lets a held pod become Ready (if this agent runs it).
    pub async fn release(&self, pod: &str) {
        self.held.lock().unwrap().remove(pod);
        let incarnation = self.running.lock().unwrap().get(pod).copied();
        if let Some(incarnation) = incarnation {
            self.nodes
                .clone()
                .report_pod_status(v1::ReportPodStatusRequest {
                    namespace: "default".into(),
                    name: pod.into(),
                    incarnation,
                    status: Some(v1::PodStatus {
                        phase: "Running".into(),
                        ready: true,
                        pod_ip: "127.0.0.1".into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
    }

    /// The agent dies: no more keep-alives, no more reports.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

/// The status report of `pod`'s incarnation.
fn report(pod: &v1::Pod, status: v1::PodStatus) -> v1::ReportPodStatusRequest {
    let meta = pod.metadata.clone().unwrap_or_default();
    v1::ReportPodStatusRequest {
        namespace: meta.namespace,
        name: meta.name,
        incarnation: pod.incarnation,
        status: Some(status),
    }
}

/// Pods of a set, by name.
pub async fn pods_of(pods: &mut PodsClient<Channel>, set: &str) -> BTreeMap<String, v1::Pod> {
    pods.list_pods(v1::ListPodsRequest {
        namespace: "default".into(),
        set_name: set.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().pods)
    .unwrap_or_default()
    .into_iter()
    .map(|p| (p.metadata.clone().unwrap().name, p))
    .collect()
}

/// Waits until the set has exactly `names` pods, all Running and Ready.
pub async fn wait_ready(
    pods: &PodsClient<Channel>,
    set: &str,
    names: &[&str],
) -> BTreeMap<String, v1::Pod> {
    let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wait_for(&format!("pods {names:?} Ready"), WAIT, || {
        let mut pods = pods.clone();
        let want = want.clone();
        async move {
            let now = pods_of(&mut pods, set).await;
            let ready = now.keys().cloned().collect::<Vec<_>>() == want
                && now.values().all(|p| {
                    p.status.as_ref().is_some_and(|s| s.ready) && p.deletion_timestamp.is_none()
                });
            ready.then_some(now)
        }
    })
    .await
}

/// Waits until kubia's status satisfies `done`, and answers it.
pub async fn wait_status(
    sets: &StatefulSetsClient<Channel>,
    what: &str,
    done: impl Fn(&v1::StatefulSetStatus) -> bool,
) -> v1::StatefulSetStatus {
    wait_for(what, WAIT, || {
        let mut sets = sets.clone();
        let done = &done;
        async move {
            let s = sets
                .get_stateful_set(v1::GetStatefulSetRequest {
                    namespace: "default".into(),
                    name: "kubia".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status?;
            done(&s).then_some(s)
        }
    })
    .await
}

/// The pods the simulated agents stopped, in order.
pub fn stopped(log: &Mutex<Vec<Seen>>) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::Stopped { pod, .. } => Some(pod.clone()),
            _ => None,
        })
        .collect()
}
