//! storage-svc against a real etcd and real directories: the seed's
//! dedicated-storage story, binding rules, concurrency, fenced attach,
//! reclaim on disk, and refusals that change nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use petset_core::testing::{all_keys, wait_for};
use petset_proto::v1;

#[tokio::test]
async fn data_of_ordinal_1_survives_scale_down_and_returns_on_the_same_claim_and_volume() {
    let server = TestStorage::start("scale-down-keeps-data").await;
    let mut client = server.client().await;
    let store = server.etcd().await;
    // The seed: three static 1Mi volumes, claims with no class.
    for name in ["pv-a", "pv-b", "pv-c"] {
        client
            .apply_volume(v1::ApplyVolumeRequest {
                volume: Some(host_path_volume(&server, name, "1Mi", "", "Recycle")),
            })
            .await
            .unwrap();
    }
    let template = data_template("1Mi", None);

    // Scale to 2: data-kubia-0 and data-kubia-1, each bound to its own volume.
    let two = scale(&mut client, "kubia", 2, &template, "").await;
    let (name1, uid1, phase1, volume1) = claim_of(&two[1]);
    assert_eq!((name1, phase1), ("data-kubia-1", "Bound"));
    assert_ne!(claim_of(&two[0]).3, volume1, "one volume per claim");
    let (uid1, volume1) = (uid1.to_string(), volume1.to_string());

    // kubia-1 runs on n1 and stores data.
    let held = issue(&store, "kubia", 1, "agent-n1/kubia-1", 30)
        .await
        .unwrap();
    let attached = client
        .attach_volume(attach_request("data-kubia-1", "n1", &held))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attached.volume_name, volume1);
    std::fs::write(
        std::path::Path::new(&attached.path).join("kubia.txt"),
        "hey there, kubia-1\n",
    )
    .unwrap();

    // Scale to 1: the pod stops (detach, release); nothing deletes the claim.
    assert!(
        client
            .detach_volume(detach_request("data-kubia-1", &held))
            .await
            .unwrap()
            .into_inner()
            .detached
    );
    identity_svc::issuance::Issuer::new(store.clone())
        .release(&held.identity, held.incarnation)
        .await
        .unwrap();
    scale(&mut client, "kubia", 1, &template, "").await;
    let kept = client
        .list_claims(v1::ListClaimsRequest {
            namespace: "default".into(),
            label_selector: HashMap::from([("petset.io/set".to_string(), "kubia".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .claims;
    assert_eq!(kept.len(), 2, "scale-down keeps data-kubia-1");

    // Scale to 3: kubia-1 gets the same claim and volume back, with its data,
    // on another node; kubia-2 gets a new claim.
    let three = scale(&mut client, "kubia", 3, &template, "").await;
    let (_, uid1_again, _, volume1_again) = claim_of(&three[1]);
    assert_eq!(
        (uid1_again, volume1_again),
        (uid1.as_str(), volume1.as_str())
    );
    let (name2, _, phase2, volume2) = claim_of(&three[2]);
    assert_eq!((name2, phase2), ("data-kubia-2", "Bound"));
    assert!(![claim_of(&three[0]).3, volume1.as_str()].contains(&volume2));
    let again = issue(&store, "kubia", 1, "agent-n2/kubia-1", 30)
        .await
        .unwrap();
    assert_eq!(again.incarnation, 2);
    let attached = client
        .attach_volume(attach_request("data-kubia-1", "n2", &again))
        .await
        .unwrap()
        .into_inner();
    let data =
        std::fs::read_to_string(std::path::Path::new(&attached.path).join("kubia.txt")).unwrap();
    assert_eq!(data, "hey there, kubia-1\n");
    server.stop().await;
}

#[tokio::test]
async fn a_static_volume_too_small_or_of_another_class_is_never_bound() {
    let server = TestStorage::start("no-wrong-binding").await;
    let mut client = server.client().await;
    for (name, size, class) in [("small", "1Mi", ""), ("other-class", "100Mi", "slow")] {
        client
            .apply_volume(v1::ApplyVolumeRequest {
                volume: Some(host_path_volume(&server, name, size, class, "Retain")),
            })
            .await
            .unwrap();
    }
    let template = data_template("5Mi", Some(""));
    let first = client
        .ensure_claims(ensure_request("web", 0, &template, ""))
        .await
        .unwrap()
        .into_inner();
    let claim = first.bindings[0].claim.as_ref().unwrap();
    let status = claim.status.as_ref().unwrap();
    assert_eq!(status.phase, "Pending");
    assert!(
        status.message.contains("no Available volume"),
        "{}",
        status.message
    );
    assert!(first.bindings[0].volume.is_none());

    // A volume that fits arrives: the next ensure binds it, and only it.
    client
        .apply_volume(v1::ApplyVolumeRequest {
            volume: Some(host_path_volume(&server, "fits", "5Mi", "", "Retain")),
        })
        .await
        .unwrap();
    let second = client
        .ensure_claims(ensure_request("web", 0, &template, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(claim_of(&second.bindings[0]).3, "fits");
    assert_eq!(
        claim_of(&second.bindings[0]).1,
        claim.metadata.as_ref().unwrap().uid,
        "the same claim"
    );
    for name in ["small", "other-class"] {
        let v = client
            .get_volume(v1::GetVolumeRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.status.unwrap().phase, "Available", "{name}");
        assert!(v.spec.unwrap().claim_ref.is_none(), "{name}");
    }
    server.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_ensures_for_one_ordinal_make_one_claim_and_one_volume() {
    let server = TestStorage::start("fifty-ensures").await;
    let mut client = server.client().await;
    apply_class(
        &mut client,
        "shared",
        "petset.io/shared",
        "Immediate",
        "Delete",
        true,
    )
    .await;
    let template = data_template("1Mi", None);
    let calls = (0..50).map(|_| {
        let mut client = client.clone();
        let request = ensure_request("kafka", 0, &template, "");
        async move { client.ensure_claims(request).await }
    });
    let answers = futures::future::join_all(calls).await;
    let mut seen = std::collections::BTreeSet::new();
    for answer in answers {
        let bindings = answer.expect("every ensure succeeds").into_inner().bindings;
        let (name, uid, phase, volume) = claim_of(&bindings[0]);
        assert_eq!((name, phase), ("data-kafka-0", "Bound"));
        seen.insert((uid.to_string(), volume.to_string()));
    }
    assert_eq!(
        seen.len(),
        1,
        "every caller got the same claim and volume: {seen:?}"
    );
    let claims = client
        .list_claims(v1::ListClaimsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .claims;
    let volumes = client
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!((claims.len(), volumes.len()), (1, 1));
    let dirs: Vec<_> = std::fs::read_dir(server.root().join("shared"))
        .unwrap()
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "the losers removed the directories they made"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_second_node_attaches_a_rwo_volume_only_after_the_first_holder_lets_go() {
    let server = TestStorage::start("fenced-attach").await;
    let mut client = server.client().await;
    let store = server.etcd().await;
    apply_class(
        &mut client,
        "shared",
        "petset.io/shared",
        "Immediate",
        "Delete",
        false,
    )
    .await;
    let template = data_template("1Mi", Some("shared"));
    client
        .ensure_claims(ensure_request("db", 0, &template, ""))
        .await
        .unwrap();

    // Node n1 holds db-0 under a short lease it will stop renewing.
    let first = issue(&store, "db", 0, "agent-n1/db-0", 2).await.unwrap();
    let on_n1 = client
        .attach_volume(attach_request("data-db-0", "n1", &first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_n1.node, "n1");
    // A retry is the same attachment.
    let retry = client
        .attach_volume(attach_request("data-db-0", "n1", &first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.attached_at, on_n1.attached_at);

    // n2 cannot get the identity, and with n1's incarnation cannot attach.
    assert!(issue(&store, "db", 0, "agent-n2/db-0", 30).await.is_err());
    let refused = client
        .attach_volume(attach_request("data-db-0", "n2", &first))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("still attached on node n1"),
        "{}",
        refused.message()
    );

    // n1's lease expires: its attachment goes with the identity.
    let second = wait_for(
        "n1's lease to expire and n2 to get db-0",
        Duration::from_secs(15),
        || async { issue(&store, "db", 0, "agent-n2/db-0", 30).await.ok() },
    )
    .await;
    assert_eq!(second.incarnation, first.incarnation + 1);
    let on_n2 = client
        .attach_volume(attach_request("data-db-0", "n2", &second))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (on_n2.node.as_str(), on_n2.path.as_str()),
        ("n2", on_n1.path.as_str())
    );

    // The stale incarnation is refused, even on its old node.
    let stale = client
        .attach_volume(attach_request("data-db-0", "n1", &first))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    assert!(
        stale.message().contains("stale incarnation"),
        "{}",
        stale.message()
    );

    // A release path too: n2 detaches and gives db-0 back; n3 takes it.
    assert!(
        client
            .detach_volume(detach_request("data-db-0", &second))
            .await
            .unwrap()
            .into_inner()
            .detached
    );
    identity_svc::issuance::Issuer::new(store.clone())
        .release(&second.identity, second.incarnation)
        .await
        .unwrap();
    let third = issue(&store, "db", 0, "agent-n3/db-0", 30).await.unwrap();
    client
        .attach_volume(attach_request("data-db-0", "n3", &third))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn read_write_many_attaches_on_many_nodes() {
    let server = TestStorage::start("rwx-attach").await;
    let mut client = server.client().await;
    let store = server.etcd().await;
    apply_class(
        &mut client,
        "shared",
        "petset.io/shared",
        "Immediate",
        "Delete",
        false,
    )
    .await;
    let mut template = data_template("1Mi", Some("shared"));
    template.spec.as_mut().unwrap().access_modes = vec!["ReadWriteMany".into()];
    let claim = claim_of(
        &client
            .ensure_claims(ensure_request("web", 0, &template, ""))
            .await
            .unwrap()
            .into_inner()
            .bindings[0],
    )
    .0
    .to_string();
    // Two identities share the one claim (a template-less volume of a set).
    let a = issue(&store, "web", 0, "agent-n1/web-0", 30).await.unwrap();
    let b = issue(&store, "web", 1, "agent-n2/web-1", 30).await.unwrap();
    client
        .attach_volume(attach_request(&claim, "n1", &a))
        .await
        .unwrap();
    client
        .attach_volume(attach_request(&claim, "n2", &b))
        .await
        .unwrap();
    let all = client
        .list_attachments(v1::ListAttachmentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .attachments;
    assert_eq!(all.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn node_local_volumes_are_made_on_the_pods_node_and_pin_it() {
    let server = TestStorage::start("node-local").await;
    let mut client = server.client().await;
    apply_class(
        &mut client,
        "local",
        "petset.io/node-local",
        "WaitForFirstConsumer",
        "Delete",
        true,
    )
    .await;
    let template = data_template("1Mi", None);
    let waiting = client
        .ensure_claims(ensure_request("zk", 0, &template, ""))
        .await
        .unwrap()
        .into_inner();
    let status = waiting.bindings[0]
        .claim
        .as_ref()
        .unwrap()
        .status
        .clone()
        .unwrap();
    assert_eq!(status.phase, "Pending");
    assert!(
        status.message.contains("first consumer"),
        "{}",
        status.message
    );

    let placed = client
        .ensure_claims(ensure_request("zk", 0, &template, "n1"))
        .await
        .unwrap()
        .into_inner();
    let volume = placed.bindings[0]
        .volume
        .clone()
        .expect("bound on placement");
    let name = volume.metadata.unwrap().name;
    assert!(server.root().join("nodes/n1").join(&name).is_dir());
    let affinity = volume
        .spec
        .unwrap()
        .node_affinity
        .unwrap()
        .required
        .unwrap();
    assert_eq!(
        affinity.node_selector_terms[0].match_expressions[0].values,
        ["n1"]
    );

    // The pod cannot move: another node is refused, naming the one it must use.
    let moved = client
        .ensure_claims(ensure_request("zk", 0, &template, "n2"))
        .await
        .unwrap_err();
    assert_eq!(moved.code(), tonic::Code::FailedPrecondition);
    assert!(moved.message().contains("node n1"), "{}", moved.message());
    server.stop().await;
}

#[tokio::test]
async fn each_reclaim_policy_does_what_it_says_on_disk() {
    let server = TestStorage::start("reclaim").await;
    let mut client = server.client().await;
    let store = server.etcd().await;
    for policy in ["Retain", "Delete", "Recycle"] {
        let name = format!("pv-{}", policy.to_lowercase());
        client
            .apply_volume(v1::ApplyVolumeRequest {
                volume: Some(host_path_volume(&server, &name, "1Mi", "", policy)),
            })
            .await
            .unwrap();
        let claim = v1::PersistentVolumeClaim {
            metadata: meta(&format!("claim-{}", policy.to_lowercase())),
            spec: Some(v1::PersistentVolumeClaimSpec {
                access_modes: vec!["ReadWriteOnce".into()],
                resources: Some(v1::VolumeResourceRequirements {
                    requests: storage("1Mi"),
                }),
                storage_class_name: Some(String::new()),
                volume_name: name.clone(),
                ..Default::default()
            }),
            status: None,
        };
        let applied = client
            .apply_claim(v1::ApplyClaimRequest { claim: Some(claim) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(applied.status.unwrap().phase, "Bound");
        std::fs::create_dir_all(server.static_dir(&name)).unwrap();
        std::fs::write(server.static_dir(&name).join("data.txt"), policy).unwrap();
    }

    // A claim in use is not deleted.
    let held = issue(&store, "app", 0, "agent-n1/app-0", 30).await.unwrap();
    let mut in_use = attach_request("claim-retain", "n1", &held);
    in_use.identity.as_mut().unwrap().set_name = "app".into();
    client.attach_volume(in_use).await.unwrap();
    let refused = client
        .delete_claim(v1::DeleteClaimRequest {
            namespace: "default".into(),
            name: "claim-retain".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("in use"),
        "{}",
        refused.message()
    );
    client
        .detach_volume(detach_request("claim-retain", &held))
        .await
        .unwrap();

    let delete = |name: &str| v1::DeleteClaimRequest {
        namespace: "default".into(),
        name: name.into(),
    };
    let retained = client
        .delete_claim(delete("claim-retain"))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(retained.status.unwrap().phase, "Released");
    assert_eq!(
        std::fs::read_to_string(server.static_dir("pv-retain").join("data.txt")).unwrap(),
        "Retain"
    );

    let deleted = client
        .delete_claim(delete("claim-delete"))
        .await
        .unwrap()
        .into_inner()
        .volume;
    assert!(deleted.is_none());
    assert!(!server.static_dir("pv-delete").exists());
    let gone = client
        .get_volume(v1::GetVolumeRequest {
            name: "pv-delete".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    let recycled = client
        .delete_claim(delete("claim-recycle"))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(recycled.status.unwrap().phase, "Available");
    assert!(recycled.spec.unwrap().claim_ref.is_none());
    assert!(server.static_dir("pv-recycle").is_dir());
    assert_eq!(
        std::fs::read_dir(server.static_dir("pv-recycle"))
            .unwrap()
            .count(),
        0
    );

    // A provisioned volume of a Delete class goes with its claim.
    apply_class(
        &mut client,
        "shared",
        "petset.io/shared",
        "Immediate",
        "Delete",
        false,
    )
    .await;
    let made = client
        .ensure_claims(ensure_request(
            "tmp",
            0,
            &data_template("1Mi", Some("shared")),
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    let volume = claim_of(&made.bindings[0]).3.to_string();
    assert!(server.root().join("shared").join(&volume).is_dir());
    client.delete_claim(delete("data-tmp-0")).await.unwrap();
    assert!(!server.root().join("shared").join(&volume).exists());
    server.stop().await;
}

#[tokio::test]
async fn a_request_larger_than_the_free_space_is_refused_and_nothing_is_made() {
    let server = TestStorage::start("too-large").await;
    let mut client = server.client().await;
    apply_class(
        &mut client,
        "shared",
        "petset.io/shared",
        "Immediate",
        "Delete",
        true,
    )
    .await;
    let (keys, disk) = (all_keys(&server.store).await, server.disk());
    let refused = client
        .ensure_claims(ensure_request("big", 0, &data_template("1Ei", None), ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("cannot provision 1Ei") && refused.message().contains("free"),
        "{}",
        refused.message()
    );
    assert_eq!(all_keys(&server.store).await, keys);
    assert_eq!(server.disk(), disk);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_changes_nothing() {
    let server = TestStorage::start("bad-input").await;
    let mut client = server.client().await;
    // Something to change, so that "nothing changed" means something.
    client
        .apply_volume(v1::ApplyVolumeRequest {
            volume: Some(host_path_volume(&server, "pv-a", "1Mi", "", "Recycle")),
        })
        .await
        .unwrap();
    std::fs::create_dir_all(server.static_dir("pv-a")).unwrap();
    std::fs::write(server.static_dir("pv-a").join("keep.txt"), "keep").unwrap();
    let (keys, disk) = (all_keys(&server.store).await, server.disk());

    let volume = |edit: &dyn Fn(&mut v1::PersistentVolume)| {
        let mut v = host_path_volume(&server, "pv-new", "1Mi", "", "Retain");
        edit(&mut v);
        v1::ApplyVolumeRequest { volume: Some(v) }
    };
    let set_path = |path: String| {
        move |v: &mut v1::PersistentVolume| {
            v.spec.as_mut().unwrap().source = Some(v1::persistent_volume_spec::Source::HostPath(
                v1::HostPathVolumeSource {
                    path: path.clone(),
                    r#type: String::new(),
                },
            ))
        }
    };
    let static_root = server
        .static_dir("x")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let volume_cases: Vec<(v1::ApplyVolumeRequest, &str)> = vec![
        (
            volume(&|v| v.spec.as_mut().unwrap().capacity = storage("0")),
            "volume.spec.capacity.storage",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().capacity = storage("-1Mi")),
            "volume.spec.capacity.storage",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().capacity = storage("1MB")),
            "volume.spec.capacity.storage",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().capacity = storage("ten")),
            "volume.spec.capacity.storage",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().access_modes = vec!["ReadWriteSometimes".into()]),
            "volume.spec.access_modes[0]",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().persistent_volume_reclaim_policy = "Shred".into()),
            "volume.spec.persistent_volume_reclaim_policy",
        ),
        (
            volume(&|v| v.metadata.as_mut().unwrap().name = "../../etc".into()),
            "volume.metadata.name",
        ),
        (
            volume(&|v| v.metadata.as_mut().unwrap().name = "/abs".into()),
            "volume.metadata.name",
        ),
        (
            volume(&|v| v.metadata.as_mut().unwrap().name = "a\0b".into()),
            "volume.metadata.name",
        ),
        (
            volume(&|v| v.metadata.as_mut().unwrap().name = "a".repeat(300)),
            "volume.metadata.name",
        ),
        (
            volume(&set_path(format!("{static_root}/../../../etc"))),
            "volume.spec.host_path.path",
        ),
        (
            volume(&set_path("/etc".into())),
            "volume.spec.host_path.path",
        ),
        (
            volume(&set_path("relative/dir".into())),
            "volume.spec.host_path.path",
        ),
        (
            volume(&set_path(format!("{static_root}/a\0b"))),
            "volume.spec.host_path.path",
        ),
        (
            volume(&set_path(format!("{static_root}/{}", "d/".repeat(2100)))),
            "volume.spec.host_path.path",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().source = None),
            "volume.spec.source",
        ),
        (
            volume(&|v| v.spec.as_mut().unwrap().volume_mode = "Block".into()),
            "volume.spec.volume_mode",
        ),
        // Changing a volume's source once it exists.
        (
            {
                let mut v = host_path_volume(&server, "pv-a", "1Mi", "", "Recycle");
                set_path(server.static_dir("elsewhere").display().to_string())(&mut v);
                v1::ApplyVolumeRequest { volume: Some(v) }
            },
            "volume.spec.source",
        ),
    ];
    for (request, field) in volume_cases {
        let status = client.apply_volume(request).await.unwrap_err();
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{field}: {status:?}"
        );
    }

    let class_cases = [
        (
            class("fast", "kubernetes.io/gce-pd", "", "", false),
            "storage_class.provisioner",
        ),
        (
            class("fast", "petset.io/shared", "Sometimes", "", false),
            "storage_class.volume_binding_mode",
        ),
        (
            class("fast", "petset.io/shared", "", "Recycle", false),
            "storage_class.reclaim_policy",
        ),
        (
            class("fast", "petset.io/node-local", "Immediate", "", false),
            "storage_class.volume_binding_mode",
        ),
        (
            class("Fast_Class", "petset.io/shared", "", "", false),
            "storage_class.metadata.name",
        ),
    ];
    for (class, field) in class_cases {
        let status = client
            .apply_storage_class(v1::ApplyStorageClassRequest {
                storage_class: Some(class),
            })
            .await
            .unwrap_err();
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{field}: {status:?}"
        );
    }

    let template = data_template("1Mi", Some(""));
    let ensure = |edit: &dyn Fn(&mut v1::EnsureClaimsRequest)| {
        let mut r = ensure_request("kubia", 0, &template, "");
        edit(&mut r);
        r
    };
    let ensure_cases: Vec<(v1::EnsureClaimsRequest, &str)> = vec![
        (ensure(&|r| r.ordinal = -1), "ordinal"),
        (ensure(&|r| r.set_name = "../kubia".into()), "set_name"),
        (ensure(&|r| r.namespace = "Default".into()), "namespace"),
        (ensure(&|r| r.node = "../n1".into()), "node"),
        (
            ensure(&|r| r.templates[0].metadata.as_mut().unwrap().name = "da/ta".into()),
            "templates[0].metadata.name",
        ),
        (
            ensure(&|r| {
                r.templates[0].spec.as_mut().unwrap().resources =
                    Some(v1::VolumeResourceRequirements {
                        requests: storage("0Mi"),
                    })
            }),
            "templates[0].spec.resources.requests.storage",
        ),
        (
            ensure(&|r| {
                r.templates[0].spec.as_mut().unwrap().access_modes =
                    vec!["ReadWriteOnce".into(), "Sometimes".into()]
            }),
            "templates[0].spec.access_modes[1]",
        ),
    ];
    for (request, field) in ensure_cases {
        let status = client.ensure_claims(request).await.unwrap_err();
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{field}: {status:?}"
        );
    }

    let bad_attach = v1::AttachVolumeRequest {
        namespace: "default".into(),
        claim_name: "data/../x".into(),
        node: "n1".into(),
        identity: None,
        incarnation: 0,
    };
    let fields = violated_fields(&client.attach_volume(bad_attach).await.unwrap_err());
    for field in ["claim_name", "identity", "incarnation"] {
        assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
    }

    assert_eq!(all_keys(&server.store).await, keys, "etcd unchanged");
    assert_eq!(server.disk(), disk, "disk unchanged");
    server.stop().await;
}

async fn classes(
    client: &mut v1::storage_client::StorageClient<tonic::transport::Channel>,
) -> Vec<(String, String, bool)> {
    client
        .list_storage_classes(v1::ListStorageClassesRequest {})
        .await
        .unwrap()
        .into_inner()
        .storage_classes
        .into_iter()
        .map(|c| {
            let meta = c.metadata.unwrap();
            let default = meta
                .annotations
                .get("storageclass.kubernetes.io/is-default-class")
                .is_some_and(|v| v == "true");
            (meta.name, c.provisioner, default)
        })
        .collect()
}

fn class_of(binding: &v1::ClaimBinding) -> Option<String> {
    binding
        .claim
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .storage_class_name
        .clone()
}

#[tokio::test]
async fn a_fresh_service_makes_a_default_class_and_a_claim_naming_none_binds_with_no_other_step() {
    let store = petset_core::testing::shared().store_config("default-class-at-start");
    let server = TestStorage::start_on(
        store,
        tempfile::tempdir().unwrap(),
        "standard=petset.io/shared",
    )
    .await;
    let mut client = server.client().await;
    assert_eq!(
        classes(&mut client).await,
        vec![("standard".into(), "petset.io/shared".into(), true)]
    );
    // Most real manifests: a claim template with no storageClassName.
    let bound = scale(&mut client, "db", 2, &data_template("1Mi", None), "").await;
    for binding in &bound {
        assert_eq!(claim_of(binding).2, "Bound");
        assert_eq!(class_of(binding).as_deref(), Some("standard"));
    }

    // A restart asking for another default leaves the stored one as it is:
    // the operator's (or the first start's) choice stands.
    let (store, data) = server.stop_keeping_data().await;
    let server = TestStorage::start_on(store, data, "fast=petset.io/node-local").await;
    let mut client = server.client().await;
    assert_eq!(
        classes(&mut client).await,
        vec![("standard".into(), "petset.io/shared".into(), true)]
    );
    server.stop().await;
}

#[tokio::test]
async fn claims_pending_for_want_of_a_default_class_take_one_that_appears_later() {
    let server = TestStorage::start("default-class-retroactive").await;
    let mut client = server.client().await;
    assert!(classes(&mut client).await.is_empty());
    let pending = scale(&mut client, "db", 2, &data_template("1Mi", None), "").await;
    for binding in &pending {
        assert_eq!(claim_of(binding).2, "Pending");
        assert_eq!(class_of(binding), None);
    }
    // Explicitly no class: Kubernetes never gives such a claim a default.
    let none = scale(
        &mut client,
        "static",
        1,
        &data_template("1Mi", Some("")),
        "",
    )
    .await;
    assert_eq!(claim_of(&none[0]).2, "Pending");

    apply_class(
        &mut client,
        "standard",
        "petset.io/shared",
        "",
        "Delete",
        true,
    )
    .await;
    let claims = client
        .list_claims(v1::ListClaimsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .claims;
    let mut seen: Vec<(String, String, Option<String>)> = claims
        .into_iter()
        .map(|c| {
            (
                c.metadata.unwrap().name,
                c.status.unwrap().phase,
                c.spec.unwrap().storage_class_name,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("data-db-0".into(), "Bound".into(), Some("standard".into())),
            ("data-db-1".into(), "Bound".into(), Some("standard".into())),
            (
                "data-static-0".into(),
                "Pending".into(),
                Some(String::new())
            ),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_default_class_setting_stops_the_service_naming_it() {
    let store = petset_core::testing::shared().store_config("default-class-setting");
    for (setting, words) in [
        ("standard", "NAME=PROVISIONER"),
        ("Standard=petset.io/shared", "class name"),
        (
            "standard=kubernetes.io/no-provisioner",
            "provisioner must be",
        ),
        ("standard=example.com/nfs", "provisioner must be"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = config(&store, data.path());
        config.default_class = setting.into();
        let error = storage_svc::Server::run(&config, listener, Default::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("default-class") && error.contains(words),
            "{setting}: {error}"
        );
    }
}
