//! Starts a real storage-svc against the test harness's etcd, with its data
//! root in a temporary folder, and builds the objects the tests apply.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use identity_svc::issuance::Issuer;
use petset_core::identity::IdentityRef;
use petset_core::shutdown::CancellationToken;
use petset_core::store::{Store, StoreConfig};
use petset_proto::v1;
use petset_proto::v1::storage_client::StorageClient;
use storage_svc::{Config, Server};
use tonic::transport::Channel;

/// One storage-svc, stopped when told.
pub struct TestStorage {
    pub grpc: SocketAddr,
    pub store: StoreConfig,
    pub data: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestStorage {
    /// Starts storage-svc for test `name`, with a fresh key root and data
    /// root and no default class (the tests that want one say so).
    pub async fn start(name: &str) -> TestStorage {
        let store = petset_core::testing::shared().store_config(name);
        Self::start_on(store, tempfile::tempdir().unwrap(), "none").await
    }

    /// Starts storage-svc on key root `store` and data root `data`, with
    /// `--default-class default_class`.
    pub async fn start_on(
        store: StoreConfig,
        data: tempfile::TempDir,
        default_class: &str,
    ) -> TestStorage {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = listener.local_addr().unwrap();
        let mut config = config(&store, data.path());
        config.default_class = default_class.to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                Server::run(&config, listener, shutdown)
                    .await
                    .expect("storage-svc runs")
            }
        });
        let server = TestStorage {
            grpc,
            store,
            data,
            shutdown,
            task: Some(task),
        };
        petset_core::testing::wait_for(
            "storage-svc to answer gRPC",
            Duration::from_secs(10),
            || async {
                let mut client = StorageClient::new(
                    Channel::from_shared(format!("http://{grpc}"))
                        .ok()?
                        .connect()
                        .await
                        .ok()?,
                );
                client
                    .list_storage_classes(v1::ListStorageClassesRequest {})
                    .await
                    .ok()
            },
        )
        .await;
        server
    }

    pub async fn stop(self) {
        self.stop_keeping_data().await;
    }

    /// Stops the service and hands back its key root and data root, for a
    /// restart on the same state.
    pub async fn stop_keeping_data(mut self) -> (StoreConfig, tempfile::TempDir) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        (
            self.store.clone(),
            std::mem::replace(&mut self.data, tempfile::tempdir().unwrap()),
        )
    }

    pub async fn client(&self) -> StorageClient<Channel> {
        StorageClient::new(
            Channel::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }

    pub async fn etcd(&self) -> Store {
        Store::connect(&self.store).await.unwrap()
    }

    pub fn root(&self) -> &Path {
        self.data.path()
    }

    /// Where static volumes may live.
    pub fn static_dir(&self, name: &str) -> PathBuf {
        self.data.path().join("static").join(name)
    }

    /// Every file and directory under the data root, with file contents.
    pub fn disk(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        walk(self.data.path(), self.data.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if path.is_dir() {
            out.push((rel + "/", String::new()));
            walk(root, &path, out);
        } else {
            out.push((rel, std::fs::read_to_string(&path).unwrap_or_default()));
        }
    }
}

pub fn config(store: &StoreConfig, data_root: &Path) -> Config {
    use clap::Parser as _;
    let mut config = Config::parse_from([
        "storage-svc",
        "--data-root",
        data_root.to_str().unwrap(),
        "--etcd-endpoints",
        &store.endpoints.join(","),
        "--etcd-prefix",
        &store.root,
    ]);
    config.reclaim_interval = 3600;
    config
}

pub fn meta(name: &str) -> Option<v1::ObjectMeta> {
    Some(v1::ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

pub fn storage(size: &str) -> HashMap<String, String> {
    HashMap::from([("storage".to_string(), size.to_string())])
}

/// A static hostPath volume like the seed's `pv-a`.
pub fn host_path_volume(
    server: &TestStorage,
    name: &str,
    size: &str,
    class: &str,
    policy: &str,
) -> v1::PersistentVolume {
    v1::PersistentVolume {
        metadata: meta(name),
        spec: Some(v1::PersistentVolumeSpec {
            capacity: storage(size),
            access_modes: vec!["ReadWriteOnce".into(), "ReadOnlyMany".into()],
            persistent_volume_reclaim_policy: policy.into(),
            storage_class_name: class.into(),
            source: Some(v1::persistent_volume_spec::Source::HostPath(
                v1::HostPathVolumeSource {
                    path: server.static_dir(name).display().to_string(),
                    r#type: String::new(),
                },
            )),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn class(
    name: &str,
    provisioner: &str,
    mode: &str,
    policy: &str,
    default: bool,
) -> v1::StorageClass {
    let mut metadata = meta(name).unwrap();
    if default {
        metadata.annotations.insert(
            "storageclass.kubernetes.io/is-default-class".into(),
            "true".into(),
        );
    }
    v1::StorageClass {
        metadata: Some(metadata),
        provisioner: provisioner.into(),
        reclaim_policy: policy.into(),
        volume_binding_mode: mode.into(),
        ..Default::default()
    }
}

/// Applies a class (see [`class`]).
pub async fn apply_class(
    client: &mut StorageClient<Channel>,
    name: &str,
    provisioner: &str,
    mode: &str,
    policy: &str,
    default: bool,
) {
    client
        .apply_storage_class(v1::ApplyStorageClassRequest {
            storage_class: Some(class(name, provisioner, mode, policy, default)),
        })
        .await
        .unwrap();
}

/// The seed's `data` template: 1Mi, ReadWriteOnce, class as given.
pub fn data_template(size: &str, class: Option<&str>) -> v1::PersistentVolumeClaimTemplate {
    v1::PersistentVolumeClaimTemplate {
        metadata: meta("data"),
        spec: Some(v1::PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: Some(v1::VolumeResourceRequirements {
                requests: storage(size),
            }),
            storage_class_name: class.map(Into::into),
            ..Default::default()
        }),
    }
}

pub fn ensure_request(
    set: &str,
    ordinal: i64,
    template: &v1::PersistentVolumeClaimTemplate,
    node: &str,
) -> v1::EnsureClaimsRequest {
    v1::EnsureClaimsRequest {
        namespace: "default".into(),
        set_name: set.into(),
        ordinal,
        templates: vec![template.clone()],
        selector_labels: HashMap::from([("app".to_string(), set.to_string())]),
        node: node.into(),
    }
}

/// Ensures the claims of ordinals `0..n` of `set`, as a scale to `n` does.
pub async fn scale(
    client: &mut StorageClient<Channel>,
    set: &str,
    n: i64,
    template: &v1::PersistentVolumeClaimTemplate,
    node: &str,
) -> Vec<v1::ClaimBinding> {
    let mut out = Vec::new();
    for ordinal in 0..n {
        let response = client
            .ensure_claims(ensure_request(set, ordinal, template, node))
            .await
            .unwrap();
        out.extend(response.into_inner().bindings);
    }
    out
}

pub fn claim_of(binding: &v1::ClaimBinding) -> (&str, &str, &str, &str) {
    let claim = binding.claim.as_ref().unwrap();
    let meta = claim.metadata.as_ref().unwrap();
    let status = claim.status.as_ref().unwrap();
    (
        meta.name.as_str(),
        meta.uid.as_str(),
        status.phase.as_str(),
        claim.spec.as_ref().unwrap().volume_name.as_str(),
    )
}

/// An identity issued to `holder` under a fresh lease of `ttl` seconds,
/// as a node agent gets it.
pub struct Held {
    pub identity: IdentityRef,
    pub incarnation: u64,
    pub lease: i64,
}

pub async fn issue(
    store: &Store,
    set: &str,
    ordinal: u32,
    holder: &str,
    ttl: i64,
) -> petset_core::Result<Held> {
    let identity = IdentityRef {
        namespace: "default".into(),
        set_name: set.into(),
        ordinal,
    };
    let lease = store.grant_lease(ttl).await?;
    let record = Issuer::new(store.clone())
        .issue(&identity, set, holder, lease)
        .await?;
    Ok(Held {
        identity,
        incarnation: record.incarnation,
        lease,
    })
}

pub fn attach_request(claim: &str, node: &str, held: &Held) -> v1::AttachVolumeRequest {
    v1::AttachVolumeRequest {
        namespace: "default".into(),
        claim_name: claim.into(),
        node: node.into(),
        identity: Some(api_identity(&held.identity)),
        incarnation: held.incarnation,
    }
}

pub fn detach_request(claim: &str, held: &Held) -> v1::DetachVolumeRequest {
    v1::DetachVolumeRequest {
        namespace: "default".into(),
        claim_name: claim.into(),
        identity: Some(api_identity(&held.identity)),
        incarnation: held.incarnation,
    }
}

pub fn api_identity(r: &IdentityRef) -> v1::IdentityRef {
    v1::IdentityRef {
        namespace: r.namespace.clone(),
        set_name: r.set_name.clone(),
        ordinal: r.ordinal.into(),
    }
}

/// The field names of an INVALID_ARGUMENT answer's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}
