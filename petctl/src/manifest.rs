//! Kubernetes manifests as people write them: YAML (or JSON) files, folders
//! of them, or stdin; several documents per file; `kind: List`.
//!
//! # Rules
//! - Supported kinds: `apps/v1` StatefulSet (`apps/v1beta1` and `v1beta2`
//!   with a deprecation warning), `v1` Service, PersistentVolume,
//!   PersistentVolumeClaim, `storage.k8s.io/v1` StorageClass, `v1` List.
//! - An unknown kind is an error; a misspelled one suggests the right name.
//! - A field petset does not know is an error naming its path (so a
//!   misspelling is caught); a field Kubernetes has but petset ignores on
//!   purpose (`imagePullPolicy`, ...) is named in a warning; fields the
//!   server sets (`metadata.uid`, `status`, ...) are dropped quietly, as
//!   `kubectl apply` does.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use petset_proto::v1;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One object to apply.
#[derive(Debug, Clone)]
pub enum Object {
    /// `apps/v1` StatefulSet.
    StatefulSet(Box<v1::StatefulSet>),
    /// `v1` Service.
    Service(v1::Service),
    /// `v1` PersistentVolume.
    Volume(v1::PersistentVolume),
    /// `v1` PersistentVolumeClaim.
    Claim(v1::PersistentVolumeClaim),
    /// `storage.k8s.io/v1` StorageClass.
    StorageClass(v1::StorageClass),
}

impl Object {
    /// `kind/name`, as kubectl prints it.
    pub fn describe(&self) -> String {
        let (kind, meta) = match self {
            Object::StatefulSet(o) => ("statefulset.apps", &o.metadata),
            Object::Service(o) => ("service", &o.metadata),
            Object::Volume(o) => ("persistentvolume", &o.metadata),
            Object::Claim(o) => ("persistentvolumeclaim", &o.metadata),
            Object::StorageClass(o) => ("storageclass.storage.k8s.io", &o.metadata),
        };
        format!(
            "{kind}/{}",
            meta.as_ref().map(|m| m.name.as_str()).unwrap_or("")
        )
    }
}

/// What reading manifests gave: the objects, and warnings to print.
#[derive(Debug, Default)]
pub struct Manifests {
    /// In file order.
    pub objects: Vec<Object>,
    /// One line each.
    pub warnings: Vec<String>,
}

const KINDS: [&str; 6] = [
    "StatefulSet",
    "Service",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "StorageClass",
    "List",
];

/// Fields Kubernetes has that petset ignores, with why.
const IGNORED: [(&str, &str); 13] = [
    ("imagePullPolicy", "images are mapped to local programs"),
    ("terminationMessagePath", "not kept"),
    ("terminationMessagePolicy", "not kept"),
    (
        "dnsPolicy",
        "pods use the cluster's DNS as configured on the node",
    ),
    ("schedulerName", "petset places pods itself"),
    ("seccompProfile", "no seccomp filter is applied yet"),
    ("appArmorProfile", "no AppArmor profile is applied"),
    ("seLinuxOptions", "no SELinux label is applied"),
    ("windowsOptions", "Linux nodes only"),
    ("procMount", "the node's /proc is used"),
    ("fsGroupChangePolicy", "volumes are always given to fsGroup"),
    ("sysctls", "pods share the node's kernel settings"),
    (
        "sessionAffinity",
        "headless services have no virtual address",
    ),
];

/// Server-set fields, dropped quietly.
const SERVER_SET: [&str; 8] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Reads `-f` arguments: files, folders (their `.yaml`, `.yml` and `.json`
/// files, sorted) or `-` for stdin.
pub fn read(paths: &[String]) -> Result<Manifests> {
    let mut out = Manifests::default();
    for path in paths {
        if path == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading stdin")?;
            parse(&text, "stdin", &mut out)?;
            continue;
        }
        let p = Path::new(path);
        let files: Vec<PathBuf> = if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading folder {path}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            files
        } else {
            vec![p.to_path_buf()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "the path {:?} does not exist or cannot be read",
                    file.display().to_string()
                )
            })?;
            parse(&text, &file.display().to_string(), &mut out)?;
        }
    }
    if out.objects.is_empty() {
        bail!("no objects passed to apply");
    }
    Ok(out)
}

/// Parses one file's documents.
pub fn parse(text: &str, source: &str, out: &mut Manifests) -> Result<()> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| anyhow!("error parsing {source}: {e}"))?;
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let at = format!("{source} (document {})", i + 1);
        object(doc, &at, out)?;
    }
    Ok(())
}

fn object(doc: Value, at: &str, out: &mut Manifests) -> Result<()> {
    let Value::Object(mut map) = doc else {
        bail!("{at}: a manifest must be a mapping with apiVersion and kind");
    };
    let api_version = map
        .remove("apiVersion")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let kind = map
        .remove("kind")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if kind.is_empty() {
        bail!("{at}: Object 'Kind' is missing");
    }
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let at = format!("{at}: {kind} {name:?}");
    map.remove("status");
    let expected = match kind.as_str() {
        "StatefulSet" => "apps/v1",
        "StorageClass" => "storage.k8s.io/v1",
        "Service" | "PersistentVolume" | "PersistentVolumeClaim" | "List" => "v1",
        other => {
            let best = KINDS
                .iter()
                .min_by_key(|k| strsim::levenshtein(&k.to_lowercase(), &other.to_lowercase()))
                .expect("kinds");
            let hint = if strsim::levenshtein(&best.to_lowercase(), &other.to_lowercase()) <= 4 {
                format!("; did you mean {best}?")
            } else {
                format!("; petset takes {}", KINDS.join(", "))
            };
            bail!("{at}: no matches for kind {other:?} in version {api_version:?}{hint}");
        }
    };
    if api_version != expected {
        match (kind.as_str(), api_version.as_str()) {
            ("StatefulSet", "apps/v1beta1" | "apps/v1beta2") => {
                out.warnings.push(format!(
                    "Warning: {api_version} StatefulSet is deprecated (removed in Kubernetes 1.16); it is read as apps/v1: write apiVersion: apps/v1"
                ));
                // Those versions defaulted the selector to the template's
                // labels; apps/v1 requires it.
                if let Some(spec) = map.get_mut("spec").and_then(Value::as_object_mut)
                    && !spec.contains_key("selector")
                    && let Some(labels) = spec
                        .get("template")
                        .and_then(|t| t.get("metadata"))
                        .and_then(|m| m.get("labels"))
                        .cloned()
                {
                    spec.insert(
                        "selector".into(),
                        serde_json::json!({ "matchLabels": labels }),
                    );
                    out.warnings.push(format!("Warning: {at}: spec.selector defaulted to the template's labels, as {api_version} did"));
                }
            }
            _ => bail!(
                "{at}: no matches for kind {kind:?} in version {api_version:?}; use apiVersion: {expected}"
            ),
        }
    }
    if kind == "List" {
        let items = map
            .remove("items")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        for (i, item) in items.into_iter().enumerate() {
            object(item, &format!("{at} item {i}"), out)?;
        }
        return Ok(());
    }
    let metadata = metadata(map.remove("metadata"), &at, out)?;
    let object = match kind.as_str() {
        "StatefulSet" => {
            let mut spec = map.remove("spec").unwrap_or(Value::Null);
            strip_ignored(&mut spec, "spec", &at, out);
            Object::StatefulSet(Box::new(v1::StatefulSet {
                metadata: Some(metadata),
                spec: Some(typed(spec, "spec", &at)?),
                status: None,
            }))
        }
        "Service" => {
            let mut spec = map.remove("spec").unwrap_or(Value::Null);
            strip_ignored(&mut spec, "spec", &at, out);
            Object::Service(v1::Service {
                metadata: Some(metadata),
                spec: Some(typed(spec, "spec", &at)?),
            })
        }
        "PersistentVolumeClaim" => {
            let spec = map.remove("spec").unwrap_or(Value::Null);
            Object::Claim(v1::PersistentVolumeClaim {
                metadata: Some(metadata),
                spec: Some(typed(spec, "spec", &at)?),
                status: None,
            })
        }
        "PersistentVolume" => {
            let spec = map.remove("spec").unwrap_or(Value::Null);
            Object::Volume(v1::PersistentVolume {
                metadata: Some(metadata),
                spec: Some(volume_spec(spec, &at)?),
                status: None,
            })
        }
        "StorageClass" => {
            let mut rest = Value::Object(std::mem::take(&mut map));
            let mut class: v1::StorageClass = typed(std::mem::take(&mut rest), "", &at)?;
            class.metadata = Some(metadata);
            Object::StorageClass(class)
        }
        _ => unreachable!("kinds are matched above"),
    };
    if let Some(field) = map.keys().next() {
        bail!("{at}: unknown field {field:?} (a {kind} has apiVersion, kind, metadata and spec)");
    }
    out.objects.push(object);
    Ok(())
}

fn typed<T: DeserializeOwned>(value: Value, prefix: &str, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = match (prefix, path.as_str()) {
            ("", p) => p.to_string(),
            (p, ".") => p.to_string(),
            (p, rest) => format!("{p}.{rest}"),
        };
        anyhow!("{at}: {path}: {}", e.inner())
    })
}

fn metadata(value: Option<Value>, at: &str, out: &mut Manifests) -> Result<v1::ObjectMeta> {
    let Some(Value::Object(mut map)) = value else {
        bail!("{at}: metadata.name is required");
    };
    for field in SERVER_SET {
        map.remove(field);
    }
    for field in ["ownerReferences", "finalizers", "generateName"] {
        if map.remove(field).is_some() {
            out.warnings.push(format!(
                "Warning: {at}: metadata.{field} is not supported by petset and was ignored"
            ));
        }
    }
    typed(Value::Object(map), "metadata", at)
}

/// Removes (with a warning) the fields petset ignores on purpose.
fn strip_ignored(value: &mut Value, path: &str, at: &str, out: &mut Manifests) {
    match value {
        Value::Object(map) => {
            for (field, why) in IGNORED {
                if map.remove(field).is_some() {
                    out.warnings.push(format!("Warning: {at}: {path}.{field} is not supported by petset ({why}); it was ignored"));
                }
            }
            for (k, v) in map.iter_mut() {
                strip_ignored(v, &format!("{path}.{k}"), at, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                strip_ignored(v, &format!("{path}[{i}]"), at, out);
            }
        }
        _ => {}
    }
}

/// Volume sources Kubernetes has that petset cannot provide, by name.
const CLOUD_SOURCES: [(&str, &str); 12] = [
    ("gcePersistentDisk", "gce_persistent_disk"),
    ("awsElasticBlockStore", "aws_elastic_block_store"),
    ("azureDisk", "azure_disk"),
    ("azureFile", "azure_file"),
    ("nfs", "nfs"),
    ("iscsi", "iscsi"),
    ("csi", "csi"),
    ("cephfs", "cephfs"),
    ("rbd", "rbd"),
    ("fc", "fc"),
    ("cinder", "cinder"),
    ("glusterfs", "glusterfs"),
];

fn string(map: &mut Map<String, Value>, key: &str) -> String {
    match map.remove(key) {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A PersistentVolume's spec, read by hand: its source is a oneof.
fn volume_spec(value: Value, at: &str) -> Result<v1::PersistentVolumeSpec> {
    let Value::Object(mut map) = value else {
        bail!("{at}: spec is required");
    };
    for (kubernetes, _) in CLOUD_SOURCES {
        if map.contains_key(kubernetes) {
            bail!(
                "{at}: spec.{kubernetes}: {kubernetes} volumes are not supported: petset volumes are directories on its nodes; \
                 use hostPath or local (or a StorageClass) instead"
            );
        }
    }
    let mut spec = v1::PersistentVolumeSpec {
        capacity: match map.remove("capacity") {
            Some(Value::Object(c)) => c
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
            _ => Default::default(),
        },
        access_modes: typed(
            map.remove("accessModes").unwrap_or(Value::Array(vec![])),
            "spec.accessModes",
            at,
        )?,
        persistent_volume_reclaim_policy: string(&mut map, "persistentVolumeReclaimPolicy"),
        storage_class_name: string(&mut map, "storageClassName"),
        volume_mode: string(&mut map, "volumeMode"),
        ..Default::default()
    };
    if let Some(Value::Object(mut h)) = map.remove("hostPath") {
        spec.source = Some(v1::persistent_volume_spec::Source::HostPath(
            v1::HostPathVolumeSource {
                path: string(&mut h, "path"),
                r#type: string(&mut h, "type"),
            },
        ));
    }
    if let Some(Value::Object(mut l)) = map.remove("local") {
        spec.source = Some(v1::persistent_volume_spec::Source::Local(
            v1::LocalVolumeSource {
                path: string(&mut l, "path"),
            },
        ));
    }
    if let Some(Value::Object(mut r)) = map.remove("claimRef") {
        spec.claim_ref = Some(v1::ClaimReference {
            namespace: string(&mut r, "namespace"),
            name: string(&mut r, "name"),
            uid: string(&mut r, "uid"),
        });
    }
    if let Some(affinity) = map.remove("nodeAffinity") {
        let required = affinity.get("required").cloned().unwrap_or(Value::Null);
        let terms = required
            .get("nodeSelectorTerms")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut selector = v1::NodeSelector::default();
        for term in terms {
            let exprs = term
                .get("matchExpressions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            selector.node_selector_terms.push(v1::NodeSelectorTerm {
                match_expressions: exprs
                    .into_iter()
                    .map(|e| v1::NodeSelectorRequirement {
                        key: e.get("key").and_then(Value::as_str).unwrap_or("").into(),
                        operator: e
                            .get("operator")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                        values: e
                            .get("values")
                            .and_then(Value::as_array)
                            .map(|v| {
                                v.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        spec.node_affinity = Some(v1::VolumeNodeAffinity {
            required: Some(selector),
        });
    }
    if let Some(field) = map.keys().next() {
        bail!("{at}: spec.{field}: unknown or unsupported field of a PersistentVolume");
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<Manifests> {
        let mut out = Manifests::default();
        parse(text, "test.yaml", &mut out)?;
        Ok(out)
    }

    #[test]
    fn the_seeds_misspelled_kind_gets_a_suggestion() {
        let err = read_text("apiVersion: v1\nkind: PersistenVolum\nmetadata: {name: pv-a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean PersistentVolume?"), "{err}");
    }

    #[test]
    fn cloud_volumes_are_refused_by_name() {
        let text = "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv-a}\nspec:\n  capacity: {storage: 1Mi}\n  accessModes: [ReadWriteOnce]\n  gcePersistentDisk: {pdName: pv-a}\n";
        let err = read_text(text).unwrap_err().to_string();
        assert!(
            err.contains("spec.gcePersistentDisk: gcePersistentDisk volumes are not supported"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let text = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: kubia}\nspec:\n  serviceName: kubia\n  template:\n    spec:\n      containers:\n      - name: kubia\n        image: x\n        portz: []\n";
        let err = read_text(text).unwrap_err().to_string();
        assert!(
            err.contains("spec.template.spec.containers[0]") && err.contains("portz"),
            "{err}"
        );
    }

    #[test]
    fn beta_versions_warn_and_ignored_fields_are_named() {
        let text = "apiVersion: apps/v1beta1\nkind: StatefulSet\nmetadata: {name: kubia, uid: x}\nspec:\n  serviceName: kubia\n  replicas: 2\n  template:\n    metadata: {labels: {app: kubia}}\n    spec:\n      containers:\n      - name: kubia\n        image: x\n        imagePullPolicy: Always\n        ports: [{containerPort: 8080}]\n        readinessProbe: {httpGet: {port: 8080}}\n";
        let m = read_text(text).unwrap();
        assert!(
            m.warnings.iter().any(|w| w.contains("deprecated")),
            "{:?}",
            m.warnings
        );
        assert!(
            m.warnings.iter().any(|w| w.contains("imagePullPolicy")),
            "{:?}",
            m.warnings
        );
        let Object::StatefulSet(set) = &m.objects[0] else {
            panic!()
        };
        let spec = set.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.selector.as_ref().unwrap().match_labels["app"],
            "kubia",
            "defaulted as v1beta1 did"
        );
        let c = &spec
            .template
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port,
            "8080"
        );
    }

    #[test]
    fn lists_and_documents() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: kubia}\n  spec: {clusterIP: None, ports: [{port: 80, targetPort: 8080}]}\n---\napiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: local}\nprovisioner: petset.io/node-local\nvolumeBindingMode: WaitForFirstConsumer\n";
        let m = read_text(text).unwrap();
        assert_eq!(m.objects.len(), 2);
        let Object::Service(s) = &m.objects[0] else {
            panic!()
        };
        assert_eq!(s.spec.as_ref().unwrap().cluster_ip, "None");
        assert_eq!(s.spec.as_ref().unwrap().ports[0].target_port, "8080");
    }
}
