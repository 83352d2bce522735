//! What storage costs over the raw etcd round trips it is made of.
//!
//! Starts a real etcd and an in-process storage-svc with its data root in a
//! temporary folder, then times, in the same run:
//! - baseline: one raw etcd compare-and-put transaction;
//! - `EnsureClaims` of a new ordinal that binds a static volume (reads the
//!   claim, the classes and the volumes, then one transaction over claim and
//!   volume);
//! - `EnsureClaims` of an ordinal whose claim is bound already (what every
//!   reconcile of a running set costs: two reads);
//! - `EnsureClaims` of a new ordinal provisioned by `petset.io/shared` (adds
//!   a statvfs and a mkdir);
//! - `AttachVolume` then `DetachVolume` of a bound claim.
//!
//! Run with `cargo bench -p storage-svc --bench storage`; results go in
//! BENCHMARKS.md as ratios to the baseline.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser as _;
use identity_svc::issuance::Issuer;
use petset_core::identity::IdentityRef;
use petset_core::shutdown::CancellationToken;
use petset_core::store::Store;
use petset_core::testing::bench::{raw_etcd_txn, report, time};
use petset_proto::v1;

const ROUNDS: usize = 300;

fn template(class: Option<&str>) -> v1::PersistentVolumeClaimTemplate {
    v1::PersistentVolumeClaimTemplate {
        metadata: Some(v1::ObjectMeta {
            name: "data".into(),
            ..Default::default()
        }),
        spec: Some(v1::PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: Some(v1::VolumeResourceRequirements {
                requests: HashMap::from([("storage".into(), "1Mi".into())]),
            }),
            storage_class_name: class.map(Into::into),
            ..Default::default()
        }),
    }
}

fn ensure(
    set: &str,
    ordinal: usize,
    template: &v1::PersistentVolumeClaimTemplate,
) -> v1::EnsureClaimsRequest {
    v1::EnsureClaimsRequest {
        namespace: "default".into(),
        set_name: set.into(),
        ordinal: (ordinal % 1_000_000) as i64,
        templates: vec![template.clone()],
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let etcd = petset_core::testing::Etcd::start();
    let store_config = etcd.store_config("bench");
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let config = storage_svc::Config::parse_from([
        "storage-svc",
        "--data-root",
        data.path().to_str().unwrap(),
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-prefix",
        &store_config.root,
        "--default-class",
        "none",
    ]);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { storage_svc::Server::run(&config, listener, shutdown).await }
    });
    let channel =
        petset_core::testing::wait_for("storage-svc", Duration::from_secs(10), || async {
            tonic::transport::Channel::from_shared(format!("http://{grpc}"))
                .ok()?
                .connect()
                .await
                .ok()
        })
        .await;
    let mut client = v1::storage_client::StorageClient::new(channel);

    // Enough static volumes for every bind round (warm-up included), and a
    // shared class for the provisioned ones.
    for i in 0..ROUNDS + ROUNDS / 10 {
        let name = format!("pv-{i:04}");
        client
            .apply_volume(v1::ApplyVolumeRequest {
                volume: Some(v1::PersistentVolume {
                    metadata: Some(v1::ObjectMeta {
                        name: name.clone(),
                        ..Default::default()
                    }),
                    spec: Some(v1::PersistentVolumeSpec {
                        capacity: HashMap::from([("storage".into(), "1Mi".into())]),
                        access_modes: vec!["ReadWriteOnce".into()],
                        source: Some(v1::persistent_volume_spec::Source::HostPath(
                            v1::HostPathVolumeSource {
                                path: data.path().join("static").join(&name).display().to_string(),
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
    client
        .apply_storage_class(v1::ApplyStorageClassRequest {
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
        .unwrap();

    let raw = raw_etcd_txn(&store_config, ROUNDS).await;

    let static_template = template(Some(""));
    let bind = time("EnsureClaims, binds a static volume", ROUNDS, |i| {
        let (mut client, request) = (client.clone(), ensure("static", i, &static_template));
        async move {
            let b = client.ensure_claims(request).await.unwrap().into_inner();
            assert!(b.bindings[0].volume.is_some());
        }
    })
    .await;
    let bound = time("EnsureClaims, already bound", ROUNDS, |i| {
        let (mut client, request) = (client.clone(), ensure("static", i, &static_template));
        async move {
            client.ensure_claims(request).await.unwrap();
        }
    })
    .await;
    let shared_template = template(Some("shared"));
    let provision = time("EnsureClaims, provisions (shared)", ROUNDS, |i| {
        let (mut client, request) = (client.clone(), ensure("shared", i, &shared_template));
        async move {
            let b = client.ensure_claims(request).await.unwrap().into_inner();
            assert!(b.bindings[0].volume.is_some());
        }
    })
    .await;

    let store = Store::connect(&store_config).await.unwrap();
    let lease = store.grant_lease(600).await.unwrap();
    let identity = IdentityRef {
        namespace: "default".into(),
        set_name: "static".into(),
        ordinal: 0,
    };
    let incarnation = Issuer::new(store.clone())
        .issue(&identity, "static", "bench", lease)
        .await
        .unwrap()
        .incarnation;
    let api_identity = v1::IdentityRef {
        namespace: "default".into(),
        set_name: "static".into(),
        ordinal: 0,
    };
    let attach = time("AttachVolume + DetachVolume", ROUNDS, |_| {
        let mut client = client.clone();
        let identity = api_identity.clone();
        async move {
            client
                .attach_volume(v1::AttachVolumeRequest {
                    namespace: "default".into(),
                    claim_name: "data-static-0".into(),
                    node: "n1".into(),
                    identity: Some(identity.clone()),
                    incarnation,
                })
                .await
                .unwrap();
            client
                .detach_volume(v1::DetachVolumeRequest {
                    namespace: "default".into(),
                    claim_name: "data-static-0".into(),
                    identity: Some(identity),
                    incarnation,
                })
                .await
                .unwrap();
        }
    })
    .await;

    println!("storage-svc, {ROUNDS} rounds each, one client, sequential");
    report(&raw, &raw);
    report(&bind, &raw);
    report(&bound, &raw);
    report(&provision, &raw);
    report(&attach, &raw);
    shutdown.cancel();
}
