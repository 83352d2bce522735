//! scheduler-svc against a real etcd, identity-svc and storage-svc, with
//! scheduler replicas as real processes and node agents simulated here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use common::*;
use petset_core::testing::wait_for;
use petset_proto::v1;

async fn claim(cluster: &Cluster, name: &str) -> v1::PersistentVolumeClaim {
    cluster
        .storage()
        .get_claim(v1::GetClaimRequest {
            namespace: "default".into(),
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_sequence_2_then_1_then_3_keeps_and_rebinds_the_claim_of_ordinal_1() {
    let cluster = Cluster::start("seed-sequence", 1).await;
    cluster.seed_volumes().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let _n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let _n2 = Agent::start(&cluster, 0, "n2", log.clone()).await;
    let (mut sets, pods) = (cluster.sets(0), cluster.pods(0));

    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(kubia(2)),
    })
    .await
    .unwrap();
    let two = wait_ready(&pods, "kubia", &["kubia-0", "kubia-1"]).await;
    // kubia-0 was Ready before kubia-1 was created.
    let ready0 = two["kubia-0"].status.clone().unwrap().ready_since.unwrap();
    let created1 = two["kubia-1"]
        .metadata
        .clone()
        .unwrap()
        .creation_timestamp
        .unwrap();
    assert!(
        (ready0.seconds, ready0.nanos) <= (created1.seconds, created1.nanos),
        "kubia-1 created before kubia-0 was Ready"
    );
    // The pods carry Kubernetes' labels and spread over the nodes.
    let labels = two["kubia-1"].metadata.clone().unwrap().labels;
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "kubia-1");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "1");
    assert!(labels["controller-revision-hash"].starts_with("kubia-"));
    assert_ne!(two["kubia-0"].node_name, two["kubia-1"].node_name);

    let data1 = claim(&cluster, "data-kubia-1").await;
    let (uid1, volume1) = (data1.metadata.unwrap().uid, data1.spec.unwrap().volume_name);
    let path = {
        let agents = [&_n1, &_n2];
        let agent = agents
            .iter()
            .find(|a| a.name == two["kubia-1"].node_name)
            .unwrap();
        agent.mounts.lock().unwrap()["kubia-1"].clone()
    };
    std::fs::write(path.join("kubia.txt"), "data of kubia-1\n").unwrap();

    // Scale to 1: kubia-1 goes, its claim stays Bound.
    sets.scale_stateful_set(v1::ScaleStatefulSetRequest {
        namespace: "default".into(),
        name: "kubia".into(),
        replicas: 1,
    })
    .await
    .unwrap();
    wait_ready(&pods, "kubia", &["kubia-0"]).await;
    let kept = claim(&cluster, "data-kubia-1").await;
    assert_eq!(kept.status.unwrap().phase, "Bound");
    assert_eq!(kept.metadata.unwrap().uid, uid1);

    // Scale to 3: kubia-1 comes back on the same claim and volume, with its
    // data; kubia-2 gets a claim of its own.
    sets.scale_stateful_set(v1::ScaleStatefulSetRequest {
        namespace: "default".into(),
        name: "kubia".into(),
        replicas: 3,
    })
    .await
    .unwrap();
    let three = wait_ready(&pods, "kubia", &["kubia-0", "kubia-1", "kubia-2"]).await;
    let again = claim(&cluster, "data-kubia-1").await;
    assert_eq!(
        (again.metadata.unwrap().uid, again.spec.unwrap().volume_name),
        (uid1, volume1.clone())
    );
    assert_eq!(
        three["kubia-1"].incarnation, 2,
        "a new incarnation of the same identity"
    );
    let data2 = claim(&cluster, "data-kubia-2").await;
    assert_ne!(data2.spec.unwrap().volume_name, volume1);
    let path = cluster.static_dir(&volume1);
    assert_eq!(
        std::fs::read_to_string(path.join("kubia.txt")).unwrap(),
        "data of kubia-1\n"
    );

    // The status says so.
    let set = sets
        .get_stateful_set(v1::GetStatefulSetRequest {
            namespace: "default".into(),
            name: "kubia".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = wait_status(&sets, "status to catch up", |s| s.ready_replicas == 3).await;
    assert_eq!(status.observed_generation, set.metadata.unwrap().generation);
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.current_replicas
        ),
        (3, 3, 3)
    );

    // Deleting the set keeps the claims (whenDeleted: Retain).
    sets.delete_stateful_set(v1::DeleteStatefulSetRequest {
        namespace: "default".into(),
        name: "kubia".into(),
    })
    .await
    .unwrap();
    wait_for("the set to be gone", WAIT, || {
        let mut sets = sets.clone();
        async move {
            let gone = sets
                .get_stateful_set(v1::GetStatefulSetRequest {
                    namespace: "default".into(),
                    name: "kubia".into(),
                })
                .await
                .is_err_and(|s| s.code() == tonic::Code::NotFound);
            gone.then_some(())
        }
    })
    .await;
    for name in ["data-kubia-0", "data-kubia-1", "data-kubia-2"] {
        assert_eq!(
            claim(&cluster, name).await.status.unwrap().phase,
            "Bound",
            "{name} kept"
        );
    }
    // Pods were stopped highest ordinal first.
    let stopped = stopped(&log);
    assert_eq!(stopped, ["kubia-1", "kubia-2", "kubia-1", "kubia-0"]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_scale_up_is_replaced_and_no_ordinal_is_created_twice() {
    let mut cluster = Cluster::start("leader-killed", 2).await;
    cluster.seed_volumes().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let first = cluster.leader().await;
    let leader = cluster
        .schedulers
        .iter()
        .position(|s| s.id == first)
        .unwrap();
    let other = 1 - leader;
    // The agents talk to the replica that survives, so that only the
    // leader dies, not the nodes' leases.
    let _n1 = Agent::start(&cluster, other, "n1", log.clone()).await;
    let _n2 = Agent::start(&cluster, other, "n2", log.clone()).await;
    // kubia-1 will not get Ready until released: the scale-up stops there.
    for agent in [&_n1, &_n2] {
        agent.held.lock().unwrap().insert("kubia-1".into());
    }
    let mut sets = cluster.sets(other);
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(kubia(3)),
    })
    .await
    .unwrap();
    let pods = cluster.pods(other);
    wait_for("kubia-1 to be created", WAIT, || {
        let mut pods = pods.clone();
        async move {
            pods_of(&mut pods, "kubia")
                .await
                .contains_key("kubia-1")
                .then_some(())
        }
    })
    .await;
    // Kill the leader mid-scale-up (SIGKILL: it cannot resign).
    cluster.schedulers[leader].kill();
    let second = cluster.leader_other_than(&first).await;
    assert_eq!(
        second, cluster.schedulers[other].id,
        "the other replica took over"
    );
    for agent in [&_n1, &_n2] {
        agent.release("kubia-1").await;
    }
    let done = wait_ready(&pods, "kubia", &["kubia-0", "kubia-1", "kubia-2"]).await;
    for pod in done.values() {
        assert_eq!(
            pod.incarnation,
            1,
            "{} was created once",
            pod.metadata.as_ref().unwrap().name
        );
    }
    let started: Vec<Seen> = log.lock().unwrap().clone();
    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
    for s in &started {
        if let Seen::Started { pod, .. } = s {
            *per_pod.entry(pod.clone()).or_default() += 1;
        }
    }
    assert!(
        per_pod.values().all(|n| *n == 1),
        "every pod started once: {started:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_with_a_partition_updates_from_the_top_down_to_it() {
    let cluster = Cluster::start("rolling-update", 1).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let _n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let (mut sets, pods) = (cluster.sets(0), cluster.pods(0));
    let mut set = kubia(3);
    set.spec.as_mut().unwrap().volume_claim_templates.clear();
    set.spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .volume_mounts
        .clear();
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(set.clone()),
    })
    .await
    .unwrap();
    let before = wait_ready(&pods, "kubia", &["kubia-0", "kubia-1", "kubia-2"]).await;
    let old_revision = before["kubia-0"].revision.clone();

    // New image, partition 1: kubia-2 then kubia-1 are replaced; kubia-0 stays.
    let spec = set.spec.as_mut().unwrap();
    spec.template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = "luksa/kubia-pet:v2".into();
    spec.update_strategy = Some(v1::UpdateStrategy {
        r#type: "RollingUpdate".into(),
        rolling_update: Some(v1::RollingUpdateStrategy {
            partition: 1,
            max_unavailable: String::new(),
        }),
    });
    let applied = sets
        .apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(set.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.metadata.unwrap().generation, 2);
    let status = wait_status(&sets, "two pods updated", |s| {
        s.updated_replicas == 2 && s.ready_replicas == 3
    })
    .await;
    assert_eq!(
        status.current_revision, old_revision,
        "below the partition the current revision stays"
    );
    let after = pods_of(&mut cluster.pods(0), "kubia").await;
    assert_eq!(after["kubia-0"].revision, old_revision);
    assert_eq!(after["kubia-1"].revision, status.update_revision);
    assert_eq!(after["kubia-2"].revision, status.update_revision);
    let stopped = stopped(&log);
    assert_eq!(
        stopped,
        ["kubia-2", "kubia-1"],
        "highest ordinal first, one at a time"
    );

    // Partition 0 finishes the rollout; the update revision becomes current.
    set.spec
        .as_mut()
        .unwrap()
        .update_strategy
        .as_mut()
        .unwrap()
        .rolling_update
        .as_mut()
        .unwrap()
        .partition = 0;
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(set),
    })
    .await
    .unwrap();
    let done = wait_status(&sets, "the rollout to finish", |s| {
        s.updated_replicas == 3 && s.ready_replicas == 3 && s.current_revision == s.update_revision
    })
    .await;
    assert_eq!(done.current_replicas, 3);
    let revisions = sets
        .list_revisions(v1::ListRevisionsRequest {
            namespace: "default".into(),
            name: "kubia".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(
        revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [1, 2]
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_unavailable_replaces_pods_two_at_a_time_from_the_top() {
    let cluster = Cluster::start("max-unavailable", 1).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let _n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let (mut sets, pods) = (cluster.sets(0), cluster.pods(0));
    let mut set = kubia(4);
    let spec = set.spec.as_mut().unwrap();
    spec.volume_claim_templates.clear();
    let container = &mut spec
        .template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    container.volume_mounts.clear();
    spec.update_strategy = Some(v1::UpdateStrategy {
        r#type: "RollingUpdate".into(),
        rolling_update: Some(v1::RollingUpdateStrategy {
            partition: 0,
            max_unavailable: "50%".into(),
        }),
    });
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(set.clone()),
    })
    .await
    .unwrap();
    let before = wait_ready(
        &pods,
        "kubia",
        &["kubia-0", "kubia-1", "kubia-2", "kubia-3"],
    )
    .await;
    let old_revision = before["kubia-0"].revision.clone();
    log.lock().unwrap().clear();

    set.spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = "luksa/kubia-pet:v2".into();
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(set),
    })
    .await
    .unwrap();
    wait_status(&sets, "the rollout to finish", |s| {
        s.update_revision != old_revision
            && s.updated_replicas == 4
            && s.ready_replicas == 4
            && s.current_revision == s.update_revision
    })
    .await;
    // 50% of 4: kubia-3 and kubia-2 go down together (both stopped before
    // either runs again), then kubia-1 and kubia-0.
    let events: Vec<(bool, String)> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Seen::Stopped { pod, .. } => Some((false, pod.clone())),
            Seen::Started { pod, .. } => Some((true, pod.clone())),
            Seen::Refused { .. } => None,
        })
        .collect();
    let batch = |from: usize| -> BTreeSet<String> {
        events[from..from + 2]
            .iter()
            .map(|(started, pod)| {
                assert!(!started, "a pod started inside a batch: {events:?}");
                pod.clone()
            })
            .collect()
    };
    assert_eq!(events.len(), 8, "{events:?}");
    assert_eq!(
        batch(0),
        ["kubia-2", "kubia-3"].map(String::from).into(),
        "{events:?}"
    );
    assert_eq!(
        batch(4),
        ["kubia-0", "kubia-1"].map(String::from).into(),
        "{events:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leaders_write_is_refused() {
    use petset_core::store::{Compare, CompareOp, TxnOp};
    let store =
        petset_core::store::Store::connect(&petset_core::testing::shared().store_config("deposed"))
            .await
            .unwrap();
    let shutdown = petset_core::shutdown::CancellationToken::new();
    let (tx, mut terms) = tokio::sync::mpsc::unbounded_channel();
    for id in ["a", "b"] {
        let tx = tx.clone();
        tokio::spawn(scheduler_svc::leader::run(
            store.clone(),
            id.into(),
            2,
            shutdown.clone(),
            move |term, token| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(term);
                    token.cancelled().await;
                }
            },
        ));
    }
    let first = terms.recv().await.unwrap();
    let key = store.key(&["pods", "default", "web-0"]);
    assert!(
        first
            .write(
                &store,
                vec![],
                vec![TxnOp::put(key.clone(), "\"by the leader\"", None)]
            )
            .await
            .unwrap()
    );
    // The first leader's lease is revoked behind its back (a partition, a
    // pause): the other replica takes over.
    store.revoke_lease(first.lease).await.unwrap();
    let second = terms.recv().await.unwrap();
    assert_ne!(second.id, first.id);
    let refused = first
        .write(
            &store,
            vec![Compare::version(key.clone(), CompareOp::Greater, 0)],
            vec![TxnOp::delete(key.clone(), None)],
        )
        .await
        .unwrap_err();
    assert!(refused.is_deposed(), "{refused}");
    assert!(
        store.get::<String>(&key).await.unwrap().is_some(),
        "the deposed leader's delete did not happen"
    );
    assert!(
        second
            .write(&store, vec![], vec![TxnOp::delete(key.clone(), None)])
            .await
            .unwrap()
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_sets_are_refused_naming_the_field_and_immutable_fields_stay() {
    let cluster = Cluster::start("bad-sets", 1).await;
    let mut sets = cluster.sets(0);
    let fields = |status: tonic::Status| -> Vec<String> {
        use tonic_types::StatusExt as _;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|f| f.field.clone())
            .collect()
    };
    type Edit = Box<dyn Fn(&mut v1::StatefulSet)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| s.spec.as_mut().unwrap().replicas = Some(-1)),
            "stateful_set.spec.replicas",
        ),
        (
            Box::new(|s| s.spec.as_mut().unwrap().selector = None),
            "stateful_set.spec.selector",
        ),
        (
            Box::new(|s| {
                s.spec
                    .as_mut()
                    .unwrap()
                    .selector
                    .as_mut()
                    .unwrap()
                    .match_labels
                    .insert("app".into(), "other".into());
            }),
            "stateful_set.spec.template.metadata.labels",
        ),
        (
            Box::new(|s| s.spec.as_mut().unwrap().service_name.clear()),
            "stateful_set.spec.service_name",
        ),
        (
            Box::new(|s| s.spec.as_mut().unwrap().pod_management_policy = "Random".into()),
            "stateful_set.spec.pod_management_policy",
        ),
        (
            Box::new(|s| {
                s.spec.as_mut().unwrap().update_strategy = Some(v1::UpdateStrategy {
                    r#type: "Sometimes".into(),
                    rolling_update: None,
                })
            }),
            "stateful_set.spec.update_strategy.type",
        ),
        (
            Box::new(|s| s.metadata.as_mut().unwrap().name = "Kubia".into()),
            "stateful_set.metadata.name",
        ),
        (
            Box::new(|s| {
                s.spec
                    .as_mut()
                    .unwrap()
                    .template
                    .as_mut()
                    .unwrap()
                    .spec
                    .as_mut()
                    .unwrap()
                    .restart_policy = "Never".into()
            }),
            "stateful_set.spec.template.spec.restart_policy",
        ),
        (
            Box::new(|s| {
                s.spec
                    .as_mut()
                    .unwrap()
                    .template
                    .as_mut()
                    .unwrap()
                    .spec
                    .as_mut()
                    .unwrap()
                    .containers[0]
                    .volume_mounts[0]
                    .name = "nothing".into()
            }),
            "stateful_set.spec.template.spec.containers[0].volume_mounts[0].name",
        ),
        (
            Box::new(|s| {
                s.spec.as_mut().unwrap().volume_claim_templates[0]
                    .spec
                    .as_mut()
                    .unwrap()
                    .resources = Some(v1::VolumeResourceRequirements {
                    requests: [("storage".to_string(), "0".to_string())].into(),
                })
            }),
            "stateful_set.spec.volume_claim_templates[0].spec.resources.requests.storage",
        ),
        (
            Box::new(|s| s.spec.as_mut().unwrap().ordinals = Some(v1::Ordinals { start: -1 })),
            "stateful_set.spec.ordinals.start",
        ),
    ];
    let before = petset_core::testing::all_keys(&cluster.store).await;
    for (edit, field) in cases {
        let mut set = kubia(2);
        edit(&mut set);
        let status = sets
            .apply_stateful_set(v1::ApplyStatefulSetRequest {
                stateful_set: Some(set),
            })
            .await
            .unwrap_err();
        let got = fields(status);
        assert!(got.iter().any(|f| f == field), "{field}: {got:?}");
    }
    assert_eq!(
        petset_core::testing::all_keys(&cluster.store).await,
        before,
        "nothing written"
    );

    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(kubia(0)),
    })
    .await
    .unwrap();
    let mut changed = kubia(0);
    changed.spec.as_mut().unwrap().service_name = "other".into();
    let status = sets
        .apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(changed),
        })
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("Forbidden: updates to statefulset spec for fields other than 'replicas'"),
        "{}",
        status.message()
    );
    // podManagementPolicy may change on a live set (kubernetes#117693).
    let mut parallel = kubia(0);
    parallel.spec.as_mut().unwrap().pod_management_policy = "Parallel".into();
    let applied = sets
        .apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(parallel),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.spec.unwrap().pod_management_policy, "Parallel");
    assert_eq!(applied.metadata.unwrap().generation, 2);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_of_a_lost_node_run_again_elsewhere_once_its_lease_expired() {
    let cluster = Cluster::start("node-lost", 1).await;
    cluster.seed_volumes().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let _n2 = Agent::start(&cluster, 0, "n2", log.clone()).await;
    let (mut sets, pods) = (cluster.sets(0), cluster.pods(0));
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(kubia(2)),
    })
    .await
    .unwrap();
    let before = wait_ready(&pods, "kubia", &["kubia-0", "kubia-1"]).await;
    let lost: Vec<String> = before
        .values()
        .filter(|p| p.node_name == "n1")
        .map(|p| p.metadata.clone().unwrap().name)
        .collect();
    assert_eq!(lost.len(), 1, "one pod per node");
    let volume = claim(&cluster, &format!("data-{}", lost[0]))
        .await
        .spec
        .unwrap()
        .volume_name;
    n1.kill();
    let after = wait_for("the lost pod to run on n2", WAIT, || {
        let mut pods = pods.clone();
        let lost = lost[0].clone();
        async move {
            let now = pods_of(&mut pods, "kubia").await;
            let p = now.get(&lost)?;
            (p.node_name == "n2" && p.status.as_ref()?.ready).then(|| p.clone())
        }
    })
    .await;
    assert_eq!(
        after.incarnation, 2,
        "a new incarnation once the old one's lease expired"
    );
    assert_eq!(
        claim(&cluster, &format!("data-{}", lost[0]))
            .await
            .spec
            .unwrap()
            .volume_name,
        volume,
        "on its own volume"
    );
    let nodes =
        petset_proto::v1::nodes_client::NodesClient::new(channel(cluster.schedulers[0].addr))
            .list_nodes(v1::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
    assert!(
        nodes.iter().any(|n| n.name == "n1" && !n.ready),
        "n1 is NotReady"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_logs_come_from_the_pods_agent_or_say_why_not() {
    let cluster = Cluster::start("pod-logs", 1).await;
    cluster.seed_volumes().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    // The simulated agent registers without a logs endpoint.
    let _n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let (mut sets, mut pods) = (cluster.sets(0), cluster.pods(0));
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(kubia(1)),
    })
    .await
    .unwrap();
    wait_ready(&pods, "kubia", &["kubia-0"]).await;
    let request = |name: &str| v1::PodLogsRequest {
        namespace: "default".into(),
        name: name.into(),
        ..Default::default()
    };
    let status = pods.pod_logs(request("kubia-0")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("node n1") && status.message().contains("serves no logs"),
        "{}",
        status.message()
    );
    let status = pods.pod_logs(request("kubia-9")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = pods.pod_logs(request("Kubia_0")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("name"), "{}", status.message());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_set_is_refused_or_skipped_and_the_other_sets_keep_reconciling() {
    let cluster = Cluster::start("poison", 1).await;
    cluster.seed_volumes().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let _n1 = Agent::start(&cluster, 0, "n1", log.clone()).await;
    let (mut sets, pods) = (cluster.sets(0), cluster.pods(0));
    let field_of = |status: tonic::Status| {
        use tonic_types::StatusExt as _;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert!(violation.description.contains("100000"), "{violation:?}");
        violation.field.clone()
    };

    // The set: refused before it is stored, naming the field.
    let mut huge = kubia(i32::MAX);
    huge.spec.as_mut().unwrap().pod_management_policy = "Parallel".into();
    let refused = sets
        .apply_stateful_set(v1::ApplyStatefulSetRequest {
            stateful_set: Some(huge),
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(refused), "stateful_set.spec.replicas");
    sets.apply_stateful_set(v1::ApplyStatefulSetRequest {
        stateful_set: Some(kubia(1)),
    })
    .await
    .unwrap();
    wait_ready(&pods, "kubia", &["kubia-0"]).await;
    let refused = sets
        .scale_stateful_set(v1::ScaleStatefulSetRequest {
            namespace: "default".into(),
            name: "kubia".into(),
            replicas: 100_001,
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(refused), "replicas");

    // Records the API would refuse, written straight into etcd (an older
    // version, a damaged value): one that does not decode, and a set with
    // 2147483647 replicas.
    let store = cluster.etcd().await;
    let mut client = store.client();
    let key = |name: &str| format!("{}/statefulsets/default/{name}", store.root());
    let stored = client.get(key("kubia"), None).await.unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    record["spec"]["replicas"] = i32::MAX.into();
    record["meta"]["name"] = "huge".into();
    client
        .put(key("huge"), serde_json::to_vec(&record).unwrap(), None)
        .await
        .unwrap();
    client
        .put(key("garbage"), b"{\"not\": \"a set\"".to_vec(), None)
        .await
        .unwrap();

    // The leader neither crashes nor stops: kubia still scales.
    sets.scale_stateful_set(v1::ScaleStatefulSetRequest {
        namespace: "default".into(),
        name: "kubia".into(),
        replicas: 2,
    })
    .await
    .unwrap();
    wait_ready(&pods, "kubia", &["kubia-0", "kubia-1"]).await;
    assert!(
        cluster.schedulers[0].running(),
        "the leader is still running"
    );
    // The API lists what decodes.
    let listed: Vec<String> = sets
        .list_stateful_sets(v1::ListStatefulSetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stateful_sets
        .into_iter()
        .map(|s| s.metadata.unwrap().name)
        .collect();
    assert_eq!(listed, ["huge", "kubia"]);
    let huge_pods = pods_of(&mut pods.clone(), "huge").await;
    assert!(huge_pods.is_empty(), "{:?}", huge_pods.keys());
    cluster.stop().await;
}
