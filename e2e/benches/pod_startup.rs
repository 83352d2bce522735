//! A stateful pod-startup figure (Kubernetes' SLOs leave it blank): the time
//! from a scale-up of one replica to that pod Running and Ready, through the
//! whole of petset — the leader's controller, identity-svc (identity issued
//! under the node's lease), storage-svc (a claim made and bound to a
//! provisioned directory, then attached), the node agent (a real process in
//! its own UTS and mount namespaces, its volume bind-mounted, a readiness
//! probe) and the status report back.
//!
//! Baseline, measured in the same run: starting the same program the same
//! way by hand (the agent's `setpriv`/`unshare` wrapper) and running the
//! probe once, with no control plane at all.
//!
//! With `PETSET_BENCH_RUNTIME=docker` the agent runs each pod as a Docker
//! container (`--runtime docker`) on a network the bench makes, from the
//! image `petset/kubia-pet:dev` (`scripts/images`; `PETSET_BENCH_IMAGE`
//! overrides), with no readiness probe (Ready once started); the baseline
//! is `docker run -d --rm` of the same image by hand with the same address,
//! hostname and bind mount.
//!
//! Run with `cargo bench -p petset-e2e --bench pod_startup` (as root, with
//! etcd installed: `scripts/install-deps`). Results go in BENCHMARKS.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser as _;
use petset_core::shutdown::CancellationToken;
use petset_core::testing::bench::{Stats, report};
use petset_proto::v1;
use tonic::transport::Channel;

const PODS: usize = 40;

/// Where the bench's pods run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Runtime {
    Process,
    /// The image, and the network's first two octets.
    Docker {
        image: String,
        net: String,
    },
}

impl Runtime {
    fn from_env() -> Runtime {
        match std::env::var("PETSET_BENCH_RUNTIME").as_deref() {
            Ok("docker") => Runtime::Docker {
                image: std::env::var("PETSET_BENCH_IMAGE")
                    .unwrap_or_else(|_| "petset/kubia-pet:dev".into()),
                net: "10.251".into(),
            },
            _ => Runtime::Process,
        }
    }

    fn container(&self) -> v1::Container {
        let mount = v1::VolumeMount {
            name: "data".into(),
            mount_path: "/var/data".into(),
            read_only: false,
        };
        match self {
            Runtime::Process => v1::Container {
                name: "app".into(),
                command: vec!["sleep".into(), "3600".into()],
                readiness_probe: Some(v1::Probe {
                    exec: Some(v1::ExecAction {
                        command: vec!["true".into()],
                    }),
                    period_seconds: 1,
                    ..Default::default()
                }),
                volume_mounts: vec![mount],
                ..Default::default()
            },
            Runtime::Docker { image, .. } => v1::Container {
                name: "app".into(),
                image: image.clone(),
                volume_mounts: vec![mount],
                ..Default::default()
            },
        }
    }
}

fn set(runtime: &Runtime, replicas: i32) -> v1::StatefulSet {
    let labels: HashMap<String, String> = [("app".to_string(), "bench".to_string())].into();
    v1::StatefulSet {
        metadata: Some(v1::ObjectMeta {
            name: "bench".into(),
            ..Default::default()
        }),
        spec: Some(v1::StatefulSetSpec {
            replicas: Some(replicas),
            selector: Some(v1::SetSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            service_name: "bench".into(),
            template: Some(v1::PodTemplateSpec {
                metadata: Some(v1::ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(v1::PodSpec {
                    containers: vec![runtime.container()],
                    termination_grace_period_seconds: Some(1),
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
                        requests: [("storage".to_string(), "1Mi".to_string())].into(),
                    }),
                    storage_class_name: Some("shared".into()),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let runtime = Runtime::from_env();
    let etcd = petset_core::testing::Etcd::start();
    let store = etcd.store_config("bench");
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let channel = |addr: std::net::SocketAddr| {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };

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
    let storage_config = storage_svc::Config::parse_from([
        "storage-svc",
        "--data-root",
        data.path().join("storage").to_str().unwrap(),
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-prefix",
        &store.root,
        "--default-class",
        "none",
    ]);
    tokio::spawn({
        let s = shutdown.clone();
        async move { storage_svc::Server::run(&storage_config, storage_listener, s).await }
    });
    let scheduler_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = scheduler_listener.local_addr().unwrap();
    let scheduler_config = scheduler_svc::Config::parse_from([
        "scheduler-svc",
        "--http-addr",
        "127.0.0.1:0",
        "--identity-addr",
        &format!("http://{identity}"),
        "--storage-addr",
        &format!("http://{storage}"),
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-prefix",
        &store.root,
    ]);
    tokio::spawn({
        let s = shutdown.clone();
        async move { scheduler_svc::Server::run(&scheduler_config, scheduler_listener, s).await }
    });
    let agent_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", petset_core::testing::free_port())
            .parse()
            .unwrap();
    let mut agent_args = vec![
        "node-agent".to_string(),
        "--name".into(),
        "bench-node".into(),
        "--scheduler-addr".into(),
        format!("http://{scheduler}"),
        "--identity-addr".into(),
        format!("http://{identity}"),
        "--storage-addr".into(),
        format!("http://{storage}"),
        "--grpc-addr".into(),
        agent_addr.to_string(),
        "--data-dir".into(),
        data.path().join("agent").display().to_string(),
    ];
    let network = format!("petset-bench-{}", std::process::id());
    match &runtime {
        Runtime::Process => agent_args.extend(["--pod-subnet".into(), "127.9.0.0/24".into()]),
        Runtime::Docker { net, .. } => {
            docker(&[
                "network",
                "create",
                "--subnet",
                &format!("{net}.0.0/16"),
                &network,
            ]);
            agent_args.extend([
                "--runtime".into(),
                "docker".into(),
                "--docker-sandbox".into(),
                "none".into(),
                "--docker-network".into(),
                network.clone(),
                "--pod-subnet".into(),
                format!("{net}.1.0/24"),
            ]);
        }
    }
    let agent_config = node_agent::Config::parse_from(agent_args);
    let agent_listener = tokio::net::TcpListener::bind(agent_addr).await.unwrap();
    tokio::spawn({
        let s = shutdown.clone();
        async move { node_agent::Agent::run(&agent_config, agent_listener, s).await }
    });

    let mut storage_client = v1::storage_client::StorageClient::new(channel(storage));
    petset_core::testing::wait_for("storage-svc", Duration::from_secs(20), || {
        let mut c = storage_client.clone();
        async move {
            c.apply_storage_class(v1::ApplyStorageClassRequest {
                storage_class: Some(v1::StorageClass {
                    metadata: Some(v1::ObjectMeta {
                        name: "shared".into(),
                        ..Default::default()
                    }),
                    provisioner: "petset.io/shared".into(),
                    ..Default::default()
                }),
            })
            .await
            .ok()
        }
    })
    .await;
    let _ = &mut storage_client;
    let mut sets = v1::stateful_sets_client::StatefulSetsClient::new(channel(scheduler));
    let pods = v1::pods_client::PodsClient::new(channel(scheduler));
    let nodes = v1::nodes_client::NodesClient::new(channel(scheduler));
    wait_nodes(&nodes, "the node to register", |n| n.ready).await;

    let ready = |name: String| {
        let pods = pods.clone();
        async move {
            loop {
                let pod = pods
                    .clone()
                    .get_pod(v1::GetPodRequest {
                        namespace: "default".into(),
                        name: name.clone(),
                    })
                    .await;
                if pod.is_ok_and(|p| p.into_inner().status.is_some_and(|s| s.ready)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let mut samples = Vec::new();
    for i in 0..PODS {
        let start = Instant::now();
        sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(set(&runtime, i as i32 + 1)),
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(60), ready(format!("bench-{i}")))
            .await
            .expect("pod Ready");
        samples.push(start.elapsed());
    }
    let startup = Stats {
        name: "scale-up by one → pod Ready (petset)",
        samples,
    };

    // Baseline: the same container started by hand (the wrapper and the
    // probe for processes, `docker run` for Docker).
    let mut samples = Vec::new();
    let dir = data.path().join("baseline");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..PODS {
        let start = Instant::now();
        match &runtime {
            Runtime::Process => {
                let mut child = tokio::process::Command::new("setpriv")
                    .args(["--pdeathsig", "KILL", "--", "unshare", "--uts", "--mount", "--propagation", "private", "--fork", "--kill-child", "--"])
                    .args(["/bin/sh", "-c", "hostname \"$H\"; mkdir -p /var/data; mount --bind \"$D\" /var/data; exec sleep 3600"])
                    .env("H", format!("baseline-{i}"))
                    .env("D", &dir)
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap();
                let probe = tokio::process::Command::new("true").status().await.unwrap();
                assert!(probe.success());
                samples.push(start.elapsed());
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            Runtime::Docker { image, net } => {
                let name = format!("{network}-baseline-{i}");
                docker(&[
                    "run",
                    "-d",
                    "--rm",
                    "--name",
                    &name,
                    "--network",
                    &network,
                    "--ip",
                    &format!("{net}.2.{}", i + 1),
                    "--hostname",
                    &format!("baseline-{i}"),
                    "-v",
                    &format!("{}:/var/data", dir.display()),
                    image,
                ]);
                samples.push(start.elapsed());
                docker(&["rm", "-f", &name]);
            }
        }
    }
    let baseline = Stats {
        name: match runtime {
            Runtime::Process => "start the same process by hand (baseline)",
            Runtime::Docker { .. } => "docker run the same image by hand (baseline)",
        },
        samples,
    };

    println!("pod startup, {PODS} pods one after another, one node, runtime {runtime:?}");
    report(&baseline, &baseline);
    report(&startup, &baseline);
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(set(&runtime, 0)),
    })
    .await
    .unwrap();
    wait_nodes(&nodes, "the pods to stop", |n| n.pods == 0).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    if matches!(runtime, Runtime::Docker { .. }) {
        docker(&["network", "rm", &network]);
    }
}

/// Waits until every node passes `ok` (at least one node registered).
async fn wait_nodes(
    nodes: &v1::nodes_client::NodesClient<Channel>,
    what: &str,
    ok: fn(&v1::Node) -> bool,
) {
    petset_core::testing::wait_for(what, Duration::from_secs(60), || {
        let mut n = nodes.clone();
        async move {
            n.list_nodes(v1::ListNodesRequest {})
                .await
                .ok()
                .filter(|r| !r.get_ref().nodes.is_empty() && r.get_ref().nodes.iter().all(ok))
        }
    })
    .await;
}

/// Runs the docker CLI (the bench's own set-up and baseline).
fn docker(args: &[&str]) {
    let status = std::process::Command::new("docker")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker runs");
    assert!(status.success(), "docker {args:?} failed");
}
