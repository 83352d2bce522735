//! Scale: scheduler-svc's controller and placement on bursts and on a large
//! store, against a real etcd, identity-svc and storage-svc, with node
//! agents simulated here (hollow nodes: they run no process).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use petset_core::testing::wait_for;
use petset_proto::v1;

/// A Parallel set of `replicas` pods with no claims.
fn burst(name: &str, replicas: i32) -> v1::StatefulSet {
    let mut set = kubia(replicas);
    let meta = set.metadata.as_mut().unwrap();
    meta.name = name.into();
    let spec = set.spec.as_mut().unwrap();
    spec.pod_management_policy = "Parallel".into();
    spec.volume_claim_templates.clear();
    let labels = HashMap::from([("app".to_string(), name.to_string())]);
    spec.selector.as_mut().unwrap().match_labels = labels.clone();
    let template = spec.template.as_mut().unwrap();
    template.metadata.as_mut().unwrap().labels = labels;
    template.spec.as_mut().unwrap().containers[0]
        .volume_mounts
        .clear();
    set
}

/// Waits until set `name` has `replicas` pods, every one Ready; answers how
/// many run on each node.
async fn wait_all_ready(cluster: &Cluster, name: &str, replicas: usize) -> BTreeMap<String, usize> {
    wait_for(
        &format!("{replicas} pods of {name} Ready"),
        Duration::from_secs(120),
        || async {
            let pods = pods_of(&mut cluster.pods(0), name).await;
            let ready = pods.len() == replicas
                && pods
                    .values()
                    .all(|p| p.status.as_ref().is_some_and(|s| s.ready));
            ready.then(|| {
                let mut per_node = BTreeMap::new();
                for pod in pods.values() {
                    *per_node.entry(pod.node_name.clone()).or_insert(0) += 1;
                }
                per_node
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_300_pods_spreads_over_3_nodes_and_no_node_gets_more_than_its_capacity() {
    let cluster = Cluster::start("burst", 1).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    // 110 + 110 + 80 = 300: spread evenly until n3 is full, then the rest
    // on n1 and n2 up to their capacity, and not one pod more anywhere.
    let _n1 = Agent::start_with_capacity(&cluster, 0, "n1", log.clone(), Some(110)).await;
    let _n2 = Agent::start_with_capacity(&cluster, 0, "n2", log.clone(), Some(110)).await;
    let _n3 = Agent::start_with_capacity(&cluster, 0, "n3", log.clone(), Some(80)).await;
    cluster
        .sets(0)
        .apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(burst("web", 300)),
        })
        .await
        .unwrap();
    let per_node = wait_all_ready(&cluster, "web", 300).await;
    assert_eq!(
        per_node,
        BTreeMap::from([("n1".into(), 110), ("n2".into(), 110), ("n3".into(), 80)]),
        "every node filled to its capacity, none past it"
    );
    // Each pod was started once: none was placed twice.
    let started = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s, Seen::Started { .. }))
        .count();
    assert_eq!(started, 300);
    // Listed in pages of 128, the pods are those of one whole list, each
    // with its status.
    let mut pods = cluster.pods(0);
    let whole = pods_of(&mut pods, "web").await;
    let (mut paged, mut token, mut pages) = (BTreeMap::new(), String::new(), 0);
    loop {
        let page = pods
            .list_pods(v1::ListPodsRequest {
                namespace: "default".into(),
                limit: 128,
                r#continue: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.pods.len() <= 128);
        for pod in page.pods {
            let name = pod.metadata.as_ref().unwrap().name.clone();
            assert!(paged.insert(name, pod).is_none(), "a pod in two pages");
        }
        if page.r#continue.is_empty() {
            break;
        }
        token = page.r#continue;
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, whole, "the pages hold the whole list");
    // One more pod has nowhere to go, and says why.
    let mut sets = cluster.sets(0);
    sets.scale_stateful_set(v1::ScaleStatefulSetRequest {
        namespace: "default".into(),
        name: "web".into(),
        replicas: 301,
    })
    .await
    .unwrap();
    let blocked = wait_for("the 301st pod to be reported unschedulable", WAIT, || {
        let mut sets = sets.clone();
        async move {
            let set = sets
                .get_stateful_set(v1::GetStatefulSetRequest {
                    namespace: "default".into(),
                    name: "web".into(),
                })
                .await
                .ok()?
                .into_inner();
            let status = set.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.reason == "Blocked")
                .map(|c| c.message)
        }
    })
    .await;
    assert!(
        blocked.contains("web-300 is unschedulable: 0/3 nodes are available: 3 too many pods"),
        "{blocked}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_past_the_4_mib_message_limit_reconciles() {
    let cluster = Cluster::start("large-store", 1).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let _n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let _n2 = Agent::start(&cluster, 0, "n2", log.clone()).await;
    // 12 sets whose template carries a 200 KiB annotation: each set, its
    // revision and each of its pods hold it, 7 MiB in all, so no single
    // read of the store fits in one 4 MiB message.
    let note = "x".repeat(200 << 10);
    let mut sets = cluster.sets(0);
    for i in 0..12 {
        let mut set = burst(&format!("big-{i}"), 2);
        set.spec
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .metadata
            .as_mut()
            .unwrap()
            .annotations = HashMap::from([("example.com/note".to_string(), note.clone())]);
        sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(set),
        })
        .await
        .unwrap();
    }
    for i in 0..12 {
        wait_all_ready(&cluster, &format!("big-{i}"), 2).await;
    }
    let store = cluster.etcd().await;
    let (kvs, _) = store.list_raw(&store.prefix(&[])).await.unwrap();
    let stored: usize = kvs.iter().map(|kv| kv.value().len()).sum();
    assert!(stored > 4 << 20, "{stored} bytes stored");
    // The sets list in pages of 5 (5, 5, 2), each with its status, as
    // they list whole.
    let whole = sets
        .list_stateful_sets(v1::ListStatefulSetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stateful_sets;
    let (mut paged, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = sets
            .list_stateful_sets(v1::ListStatefulSetsRequest {
                namespace: "default".into(),
                limit: 5,
                r#continue: token,
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.stateful_sets.len());
        paged.extend(page.stateful_sets);
        if page.r#continue.is_empty() {
            break;
        }
        token = page.r#continue;
    }
    assert_eq!(sizes, [5, 5, 2]);
    assert_eq!(paged, whole);
    assert!(
        paged
            .iter()
            .all(|s| s.status.as_ref().is_some_and(|st| st.ready_replicas == 2)),
        "every set with its status"
    );
    // And the controller still follows changes: a scale-up of the last set.
    sets.scale_stateful_set(v1::ScaleStatefulSetRequest {
        namespace: "default".into(),
        name: "big-11".into(),
        replicas: 3,
    })
    .await
    .unwrap();
    wait_all_ready(&cluster, "big-11", 3).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_its_node_refuses_is_placed_again_on_another_node() {
    let cluster = Cluster::start("refused", 1).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    // n1 sorts first, so an empty cluster places there first; it refuses.
    let n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    n1.refusing.store(true, std::sync::atomic::Ordering::SeqCst);
    let _n2 = Agent::start(&cluster, 0, "n2", log.clone()).await;
    cluster
        .sets(0)
        .apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(burst("web", 1)),
        })
        .await
        .unwrap();
    let per_node = wait_all_ready(&cluster, "web", 1).await;
    assert_eq!(per_node, BTreeMap::from([("n2".into(), 1)]));
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|s| matches!(s, Seen::Refused { .. }))
            .collect::<Vec<_>>(),
        [&Seen::Refused {
            pod: "web-0".into(),
            node: "n1".into()
        }],
        "refused once by n1, then placed on n2: {seen:?}"
    );
    let pod = pods_of(&mut cluster.pods(0), "web").await["web-0"].clone();
    assert!(
        pod.incarnation >= 2,
        "a new incarnation: {}",
        pod.incarnation
    );
    cluster.stop().await;
}
