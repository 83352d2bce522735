//! Control-plane scale: how fast petset places and starts a burst of pods,
//! how long one OrderedReady step takes, and how much memory each service
//! holds at 10,000 pods, each beside a baseline measured in the same run.
//!
//! The services run as their own processes (release builds, so their
//! resident memory is theirs alone) over a real etcd; the nodes are hollow,
//! as kubemark's: each registers, keeps its lease, watches its pods,
//! attaches their claims, reports them Running and Ready and their
//! endpoints, and stops them when asked, but runs no process.
//!
//! Baselines:
//! - the etcd transaction ceiling: create-if-absent transactions from 64
//!   concurrent clients, divided by the etcd writes one pod costs (counted
//!   from the store's revision over the burst): the pods/s etcd alone would
//!   allow;
//! - the latency of one raw compare-and-put transaction (a put).
//!
//! Run with `cargo build --release --bins && cargo bench -p petset-e2e
//! --bench scale` (with etcd installed: `scripts/install-deps`).
//! `PETSET_BENCH_PODS` (1000) and `PETSET_BENCH_RSS_PODS` (10000) change
//! the sizes. Results go in BENCHMARKS.md.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use petset_core::testing::bench::raw_etcd_txn;
use petset_core::testing::{Etcd, Tied, free_port, wait_for};
use petset_proto::v1;
use tonic::transport::Channel;

fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// A release binary beside this bench's own.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --release --bins` first",
        path.display()
    );
    path
}

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A Parallel (or OrderedReady) set of `replicas` sleeping pods, with one
/// claim each of the default class when `claims`.
fn set(name: &str, replicas: i32, parallel: bool, claims: bool) -> v1::StatefulSet {
    let labels: HashMap<String, String> = [("app".to_string(), name.to_string())].into();
    v1::StatefulSet {
        metadata: Some(v1::ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(v1::StatefulSetSpec {
            replicas: Some(replicas),
            selector: Some(v1::SetSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            service_name: name.into(),
            pod_management_policy: if parallel { "Parallel" } else { "OrderedReady" }.into(),
            template: Some(v1::PodTemplateSpec {
                metadata: Some(v1::ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(v1::PodSpec {
                    containers: vec![v1::Container {
                        name: "app".into(),
                        command: vec!["sleep".into(), "3600".into()],
                        volume_mounts: if claims {
                            vec![v1::VolumeMount {
                                name: "data".into(),
                                mount_path: "/var/data".into(),
                                read_only: false,
                            }]
                        } else {
                            Vec::new()
                        },
                        ..Default::default()
                    }],
                    termination_grace_period_seconds: Some(1),
                    ..Default::default()
                }),
            }),
            volume_claim_templates: if claims {
                vec![v1::PersistentVolumeClaimTemplate {
                    metadata: Some(v1::ObjectMeta {
                        name: "data".into(),
                        ..Default::default()
                    }),
                    spec: Some(v1::PersistentVolumeClaimSpec {
                        access_modes: vec!["ReadWriteOnce".into()],
                        resources: Some(v1::VolumeResourceRequirements {
                            requests: [("storage".to_string(), "1Ki".to_string())].into(),
                        }),
                        ..Default::default()
                    }),
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The control plane's addresses.
#[derive(Clone)]
struct Plane {
    scheduler: String,
    identity: String,
    storage: String,
}

/// One hollow node: everything an agent tells the control plane, no
/// process.
async fn hollow(plane: Plane, name: String, pods_capacity: u32) {
    let mut nodes = v1::nodes_client::NodesClient::new(channel(&plane.scheduler));
    let identities = v1::identities_client::IdentitiesClient::new(channel(&plane.identity));
    let storage = v1::storage_client::StorageClient::new(channel(&plane.storage));
    let lease = nodes
        .register_node(v1::RegisterNodeRequest {
            name: name.clone(),
            address: "127.0.0.1".into(),
            ttl_seconds: 30,
            capacity: [("pods".to_string(), pods_capacity.to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    tokio::spawn({
        let (mut nodes, name) = (nodes.clone(), name.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = nodes
                    .keep_alive_node(v1::KeepAliveNodeRequest {
                        name: name.clone(),
                        lease_id: lease,
                    })
                    .await;
            }
        }
    });
    let mut stream = nodes
        .watch_node_pods(v1::WatchNodePodsRequest {
            node_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // (pod, incarnation) started or stopped already.
    let mut started: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut stopped: BTreeSet<(String, u64)> = BTreeSet::new();
    while let Some(Ok(event)) = stream.next().await {
        for pod in event.pods {
            let meta = pod.metadata.clone().unwrap_or_default();
            let key = (meta.name.clone(), pod.incarnation);
            let deleting = pod.deletion_timestamp.is_some();
            if (deleting && !stopped.insert(key.clone())) || (!deleting && !started.insert(key)) {
                continue;
            }
            let (mut nodes, identities, storage, name) = (
                nodes.clone(),
                identities.clone(),
                storage.clone(),
                name.clone(),
            );
            tokio::spawn(async move {
                let identity = v1::IdentityRef {
                    namespace: meta.namespace.clone(),
                    set_name: pod.set_name.clone(),
                    ordinal: pod.ordinal,
                };
                let claims: Vec<String> = pod
                    .spec
                    .iter()
                    .flat_map(|s| &s.volumes)
                    .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
                    .collect();
                if deleting {
                    for claim in claims {
                        let _ = storage
                            .clone()
                            .detach_volume(v1::DetachVolumeRequest {
                                namespace: meta.namespace.clone(),
                                claim_name: claim,
                                identity: Some(identity.clone()),
                                incarnation: pod.incarnation,
                            })
                            .await;
                    }
                    let _ = identities
                        .clone()
                        .release_identity(v1::ReleaseIdentityRequest {
                            r#ref: Some(identity),
                            incarnation: pod.incarnation,
                        })
                        .await;
                    return;
                }
                for claim in claims {
                    let _ = storage
                        .clone()
                        .attach_volume(v1::AttachVolumeRequest {
                            namespace: meta.namespace.clone(),
                            claim_name: claim,
                            node: name.clone(),
                            identity: Some(identity.clone()),
                            incarnation: pod.incarnation,
                        })
                        .await;
                }
                let _ = nodes
                    .report_pod_status(v1::ReportPodStatusRequest {
                        namespace: meta.namespace.clone(),
                        name: meta.name.clone(),
                        incarnation: pod.incarnation,
                        status: Some(v1::PodStatus {
                            phase: "Running".into(),
                            ready: true,
                            pod_ip: "127.0.0.1".into(),
                            ..Default::default()
                        }),
                    })
                    .await;
                let _ = identities
                    .clone()
                    .report_endpoint(v1::ReportEndpointRequest {
                        r#ref: Some(identity),
                        incarnation: pod.incarnation,
                        address: "127.0.0.1".into(),
                        ready: true,
                        labels: meta.labels.clone(),
                        ..Default::default()
                    })
                    .await;
            });
        }
    }
}

/// Applies `set` and waits until `replicas` of its pods are Ready; answers
/// how long that took and how many etcd revisions it made.
async fn run_set(
    plane: &Plane,
    store: &petset_core::store::Store,
    set: v1::StatefulSet,
) -> (Duration, i64) {
    let name = set.metadata.clone().unwrap().name;
    let replicas = set.spec.as_ref().unwrap().replicas.unwrap();
    let mut sets = v1::stateful_sets_client::StatefulSetsClient::new(channel(&plane.scheduler));
    let before = revision(store).await;
    let start = Instant::now();
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(set),
    })
    .await
    .unwrap();
    loop {
        let status = sets
            .get_stateful_set(v1::GetStatefulSetRequest {
                namespace: "default".into(),
                name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap_or_default();
        if status.ready_replicas == replicas {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "{name}: {} of {replicas} Ready after 900 s",
            status.ready_replicas
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (start.elapsed(), revision(store).await - before)
}

async fn revision(store: &petset_core::store::Store) -> i64 {
    store
        .client()
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Deletes set `name` and waits until it is gone.
async fn delete_set(plane: &Plane, name: &str) {
    let mut sets = v1::stateful_sets_client::StatefulSetsClient::new(channel(&plane.scheduler));
    sets.delete_stateful_set(v1::DeleteStatefulSetRequest {
        namespace: "default".into(),
        name: name.into(),
    })
    .await
    .unwrap();
    wait_for(&format!("{name} deleted"), Duration::from_secs(600), || {
        let mut sets = sets.clone();
        async move {
            sets.get_stateful_set(v1::GetStatefulSetRequest {
                namespace: "default".into(),
                name: name.into(),
            })
            .await
            .is_err()
            .then_some(())
        }
    })
    .await;
}

/// The etcd ceiling: create-if-absent transactions per second from 64
/// concurrent clients over `for_how_long`.
async fn txn_ceiling(endpoint: &str, root: &str, for_how_long: Duration) -> f64 {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let client = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|w| {
            let (mut client, done, root) = (client.clone(), done.clone(), root.to_string());
            tokio::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < for_how_long {
                    let key = format!("{root}/ceiling/{w}/{i}");
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, "x", None)]);
                    client.txn(txn).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Resident memory of process `pid`, MiB.
fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let pods = size("PETSET_BENCH_PODS", 1000);
    let rss_pods = size("PETSET_BENCH_RSS_PODS", 10_000);
    let etcd = Etcd::start();
    let store_config = etcd.store_config("scale");
    let store = petset_core::store::Store::connect(&store_config)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let plane = Plane {
        scheduler: format!("127.0.0.1:{}", free_port()),
        identity: format!("127.0.0.1:{}", free_port()),
        storage: format!("127.0.0.1:{}", free_port()),
    };
    let etcd_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--etcd-endpoints".into(),
            etcd.endpoint(),
            "--etcd-prefix".into(),
            store_config.root.clone(),
        ]);
        args
    };
    let log = |name: &str| data.path().join(format!("{name}.log"));
    let identity = Tied::spawn(
        &binary("identity-svc"),
        &etcd_args(&[
            "--grpc-addr",
            &plane.identity,
            "--dns-addr",
            &format!("127.0.0.1:{}", free_port()),
        ]),
        &log("identity-svc"),
    );
    let storage_root = data.path().join("storage");
    let storage = Tied::spawn(
        &binary("storage-svc"),
        &etcd_args(&[
            "--grpc-addr",
            &plane.storage,
            "--data-root",
            storage_root.to_str().unwrap(),
        ]),
        &log("storage-svc"),
    );
    let scheduler = Tied::spawn(
        &binary("scheduler-svc"),
        &etcd_args(&[
            "--grpc-addr",
            &plane.scheduler,
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--identity-addr",
            &format!("http://{}", plane.identity),
            "--storage-addr",
            &format!("http://{}", plane.storage),
            "--id",
            "bench",
        ]),
        &log("scheduler-svc"),
    );
    wait_for("scheduler-svc", Duration::from_secs(30), || async {
        v1::stateful_sets_client::StatefulSetsClient::new(channel(&plane.scheduler))
            .list_stateful_sets(v1::ListStatefulSetsRequest::default())
            .await
            .ok()
    })
    .await;
    // 10 nodes for the bursts, more for 10,000 pods (110 each).
    let nodes = (rss_pods / 110 + 1).max(10);
    for n in 0..nodes {
        tokio::spawn(hollow(plane.clone(), format!("hollow-{n:03}"), 110));
    }
    wait_for("the hollow nodes", Duration::from_secs(60), || async {
        let listed = v1::nodes_client::NodesClient::new(channel(&plane.scheduler))
            .list_nodes(v1::ListNodesRequest {})
            .await
            .ok()?
            .into_inner()
            .nodes;
        (listed.iter().filter(|n| n.ready).count() == nodes).then_some(())
    })
    .await;

    // Baselines.
    let put = raw_etcd_txn(&store_config, 400).await;
    let ceiling = txn_ceiling(&etcd.endpoint(), &store_config.root, Duration::from_secs(3)).await;

    // Bursts.
    let (plain, plain_writes) =
        run_set(&plane, &store, set("burst", pods as i32, true, false)).await;
    delete_set(&plane, "burst").await;
    let (claimed, claimed_writes) =
        run_set(&plane, &store, set("claimed", pods as i32, true, true)).await;
    delete_set(&plane, "claimed").await;
    // OrderedReady steps.
    let steps = 50;
    let (ordered, _) = run_set(&plane, &store, set("ordered", steps, false, false)).await;
    delete_set(&plane, "ordered").await;
    // Memory at rss_pods pods.
    let (big, _) = run_set(&plane, &store, set("big", rss_pods as i32, true, false)).await;
    let rss = [
        ("identity-svc", rss_mib(identity.pid())),
        ("storage-svc", rss_mib(storage.pid())),
        ("scheduler-svc", rss_mib(scheduler.pid())),
    ];

    let put_p50 = put.percentile(0.5);
    let pods_per_s = |d: Duration| pods as f64 / d.as_secs_f64();
    let allowed = |writes: i64| ceiling / (writes as f64 / pods as f64);
    println!("control-plane scale, {nodes} hollow nodes, release build");
    println!(
        "etcd: compare-and-put p50 {:.2} ms; ceiling {ceiling:.0} txn/s (64 clients)",
        put_p50.as_secs_f64() * 1e3
    );
    for (what, took, writes) in [
        ("Parallel, no claims", plain, plain_writes),
        ("Parallel, one claim per pod", claimed, claimed_writes),
    ] {
        println!(
            "{what}: {pods} pods Ready in {:.2} s = {:.0} pods/s; {:.1} etcd writes/pod, so etcd allows {:.0} pods/s: {:.0}% of the ceiling",
            took.as_secs_f64(),
            pods_per_s(took),
            writes as f64 / pods as f64,
            allowed(writes),
            100.0 * pods_per_s(took) / allowed(writes),
        );
    }
    let step = ordered / steps as u32;
    println!(
        "OrderedReady: {steps} pods in {:.2} s = {:.2} ms per step = {:.1}x the etcd put p50",
        ordered.as_secs_f64(),
        step.as_secs_f64() * 1e3,
        step.as_secs_f64() / put_p50.as_secs_f64()
    );
    println!(
        "{rss_pods} pods Ready in {:.1} s; resident memory: {}",
        big.as_secs_f64(),
        rss.iter()
            .map(|(s, mib)| format!("{s} {mib:.0} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
