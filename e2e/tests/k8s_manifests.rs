//! deploy/k8s, rendered by `kubectl kustomize` as `kubectl apply -k` would,
//! with every object parsed by k8s-openapi's types: a wrong type fails the
//! parse, and an unknown or misspelled field, which the typed objects do
//! not keep, fails the round trip (object → type → object). Then what the
//! deployment promises: etcd as a StatefulSet of three behind a headless
//! service, the services as Deployments (scheduler-svc with two replicas),
//! the node agent as a DaemonSet, selectors that match their templates,
//! Services whose selectors and named ports meet a workload's, references to
//! ConfigMaps and claims that exist, disruption budgets for etcd's quorum
//! and a scheduler replica, no API token in any pod, and on every container
//! probes, resource requests and a security context that drops every
//! capability, non-root
//! and read-only wherever the program allows.

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, PodSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use petset_e2e::repo_root;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The paths in `original` that `back` lost.
fn dropped(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => dropped(value, other, &here, out),
                    None if value.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, value) in a.iter().enumerate() {
                let here = format!("{path}[{i}]");
                match b.get(i) {
                    Some(other) => dropped(value, other, &here, out),
                    None => out.push(here),
                }
            }
        }
        _ => {}
    }
}

/// Parses `doc` as `T`; an error names what does not fit the schema.
fn typed<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(
    doc: &Value,
) -> Result<T, String> {
    if doc["apiVersion"] != T::API_VERSION || doc["kind"] != T::KIND {
        return Err(format!(
            "{}/{} is not {}/{}",
            doc["apiVersion"],
            doc["kind"],
            T::API_VERSION,
            T::KIND
        ));
    }
    let object: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    dropped(doc, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(object)
    } else {
        Err(format!("unknown fields: {}", lost.join(", ")))
    }
}

/// A workload's pod template, with what selects it.
struct Workload<'a> {
    name: String,
    selector: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    pod: &'a PodSpec,
}

impl Workload<'_> {
    /// Whether a (non-empty) label selector picks this workload's pods.
    fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        !selector.is_empty() && selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// Every object of the rendered deployment, by kind.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
    claims: Vec<PersistentVolumeClaim>,
    stateful_sets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    budgets: Vec<PodDisruptionBudget>,
}

fn parse(doc: &Value) -> Result<(), String> {
    Objects::default().add(doc)
}

impl Objects {
    fn add(&mut self, doc: &Value) -> Result<(), String> {
        match doc["kind"].as_str().unwrap_or_default() {
            "Namespace" => self.namespaces.push(typed(doc)?),
            "ConfigMap" => self.config_maps.push(typed(doc)?),
            "Service" => self.services.push(typed(doc)?),
            "PersistentVolumeClaim" => self.claims.push(typed(doc)?),
            "StatefulSet" => self.stateful_sets.push(typed(doc)?),
            "Deployment" => self.deployments.push(typed(doc)?),
            "DaemonSet" => self.daemon_sets.push(typed(doc)?),
            "PodDisruptionBudget" => self.budgets.push(typed(doc)?),
            other => return Err(format!("kind {other:?} is not one petset deploys")),
        }
        Ok(())
    }
}

fn render() -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("deploy/k8s"))
        .output()
        .expect("kubectl runs (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/k8s failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn name_of(doc: &Value) -> String {
    format!("{} {}", doc["kind"], doc["metadata"]["name"])
}

#[test]
fn every_object_fits_the_kubernetes_schema() {
    let docs = render();
    let mut objects = Objects::default();
    let errors: Vec<String> = docs
        .iter()
        .filter_map(|d| objects.add(d).err().map(|e| format!("{}: {e}", name_of(d))))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(objects.namespaces.len(), 1);
    assert_eq!(objects.config_maps.len(), 3);
    assert_eq!(objects.claims.len(), 1, "the shared data claim");

    // Storage out of the box: storage-svc makes the default class, of the
    // provisioner that puts volumes on the shared data claim.
    let storage = objects
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("storage-svc"))
        .expect("a storage-svc Deployment");
    let env = storage.spec.template.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert_eq!(
        env.iter()
            .find(|e| e.name == "PETSET_STORAGE_DEFAULT_CLASS")
            .and_then(|e| e.value.as_deref()),
        Some("standard=petset.io/shared")
    );

    // etcd: a StatefulSet of three with a volume each, behind a headless
    // service that publishes members before they are ready.
    let etcd = &objects.stateful_sets[0];
    let spec = &etcd.spec;
    assert_eq!(
        (
            etcd.metadata.name.as_deref(),
            spec.replicas,
            spec.service_name.as_deref()
        ),
        (Some("etcd"), Some(3), Some("etcd"))
    );
    assert_eq!(spec.volume_claim_templates.as_ref().map(Vec::len), Some(1));
    let headless = objects
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("etcd"))
        .and_then(|s| s.spec.as_ref())
        .expect("the etcd service");
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));

    // The services as Deployments, scheduler-svc with two replicas, each
    // with a Service.
    let replicas = |name: &str| {
        objects
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .and_then(|d| d.spec.replicas)
    };
    assert_eq!(replicas("scheduler-svc"), Some(2));
    assert!(replicas("identity-svc").is_some() && replicas("storage-svc").is_some());
    for name in ["identity-svc", "storage-svc", "scheduler-svc"] {
        assert!(
            objects
                .services
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(name)),
            "no Service {name}"
        );
    }
    assert_eq!(
        objects
            .daemon_sets
            .iter()
            .map(|d| d.metadata.name.clone())
            .collect::<Vec<_>>(),
        vec![Some("node-agent".to_string())]
    );

    // Every container: readiness and liveness probes, requests, a security
    // context without privilege escalation; non-root but for the node agent.
    let workloads: Vec<Workload> = objects
        .stateful_sets
        .iter()
        .map(|s| (&s.metadata, &s.spec.selector, &s.spec.template))
        .chain(
            objects
                .deployments
                .iter()
                .map(|d| (&d.metadata, &d.spec.selector, &d.spec.template)),
        )
        .chain(
            objects
                .daemon_sets
                .iter()
                .map(|d| (&d.metadata, &d.spec.selector, &d.spec.template)),
        )
        .map(|(meta, selector, template)| Workload {
            name: meta.name.clone().unwrap_or_default(),
            selector: selector.match_labels.clone().unwrap_or_default(),
            labels: template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            pod: template.spec.as_ref().expect("a pod spec"),
        })
        .collect();
    assert_eq!(workloads.len(), 5);
    let config_maps: Vec<String> = objects
        .config_maps
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let claims: Vec<String> = objects
        .claims
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    // etcd keeps its quorum and scheduler-svc a replica through voluntary
    // disruptions (drains), and each budget selects a workload's pods.
    let budgets: BTreeMap<String, IntOrString> = objects
        .budgets
        .iter()
        .map(|b| {
            let spec = b.spec.as_ref().expect("a budget spec");
            let selector = spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let name = b.metadata.name.clone().unwrap_or_default();
            assert!(
                workloads.iter().any(|w| w.selected_by(&selector)),
                "budget {name} selects no workload"
            );
            (name, spec.min_available.clone().expect("minAvailable"))
        })
        .collect();
    assert_eq!(budgets.get("etcd"), Some(&IntOrString::Int(2)));
    assert_eq!(budgets.get("scheduler-svc"), Some(&IntOrString::Int(1)));
    for w in &workloads {
        // petset does not use the Kubernetes API: no token in its pods.
        assert_eq!(
            w.pod.automount_service_account_token,
            Some(false),
            "{}",
            w.name
        );
        // The selector picks the template's pods.
        assert!(
            w.selected_by(&w.selector),
            "{}: selector {:?} does not match the template's labels {:?}",
            w.name,
            w.selector,
            w.labels
        );
        // Every ConfigMap and claim it names exists (kustomize renames the
        // generated ConfigMaps with a hash and must rewrite references).
        for c in &w.pod.containers {
            for source in c.env_from.iter().flatten() {
                if let Some(r) = &source.config_map_ref {
                    assert!(
                        config_maps.contains(&r.name),
                        "{}: no ConfigMap {}",
                        w.name,
                        r.name
                    );
                }
            }
        }
        for v in w.pod.volumes.iter().flatten() {
            if let Some(pvc) = &v.persistent_volume_claim {
                assert!(
                    claims.contains(&pvc.claim_name),
                    "{}: no claim {}",
                    w.name,
                    pvc.claim_name
                );
            }
        }
    }
    // Every Service selects a workload's pods, and its named target ports
    // are that workload's container ports.
    for service in &objects.services {
        let name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.as_ref().expect("a service spec");
        let selector = spec.selector.clone().unwrap_or_default();
        let target = workloads
            .iter()
            .find(|w| w.selected_by(&selector))
            .unwrap_or_else(|| panic!("Service {name} selects no workload ({selector:?})"));
        let ports: Vec<String> = target
            .pod
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.clone())
            .collect();
        for port in spec.ports.iter().flatten() {
            if let Some(IntOrString::String(named)) = &port.target_port {
                assert!(
                    ports.contains(named),
                    "Service {name}: target port {named} is not a port of {}",
                    target.name
                );
            }
        }
    }
    for w in workloads {
        let (name, pod) = (w.name, w.pod);
        for c in &pod.containers {
            assert!(
                c.readiness_probe.is_some() && c.liveness_probe.is_some(),
                "{name}/{}: probes",
                c.name
            );
            assert!(
                c.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
                "{name}/{}: resource requests",
                c.name
            );
            let security = c.security_context.as_ref().expect("a security context");
            let drops = security.capabilities.as_ref().and_then(|c| c.drop.clone());
            assert_eq!(
                drops,
                Some(vec!["ALL".to_string()]),
                "{name}/{}: capabilities",
                c.name
            );
            if name == "node-agent" {
                // Namespaces and mounts for its pods: SYS_ADMIN, which
                // Kubernetes only grants with privilege escalation allowed.
                let adds = security
                    .capabilities
                    .as_ref()
                    .and_then(|c| c.add.clone())
                    .unwrap_or_default();
                assert!(adds.iter().any(|a| a == "SYS_ADMIN"), "{adds:?}");
                assert_ne!(security.allow_privilege_escalation, Some(false));
            } else {
                assert_eq!(
                    security.allow_privilege_escalation,
                    Some(false),
                    "{name}/{}",
                    c.name
                );
                assert_eq!(
                    security.read_only_root_filesystem,
                    Some(true),
                    "{name}/{}",
                    c.name
                );
            }
            let non_root = pod
                .security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root)
                .or(security.run_as_non_root);
            assert_eq!(
                non_root,
                Some(name != "node-agent"),
                "{name}/{}: runAsNonRoot",
                c.name
            );
        }
    }
}

#[test]
fn a_misspelled_or_mistyped_field_is_refused() {
    let docs = render();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment")
        .clone();
    assert_eq!(parse(&deployment), Ok(()));

    // The seed's own kind of typo: a field one letter off.
    let mut typo = deployment.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] =
        typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].clone();
    let error = parse(&typo).unwrap_err();
    assert!(
        error.contains(".spec.template.spec.containers[0].readinesProbe"),
        "{error}"
    );

    // A field at the wrong level.
    let mut misplaced = deployment.clone();
    misplaced["spec"]["serviceName"] = Value::String("x".into());
    assert!(parse(&misplaced).unwrap_err().contains(".spec.serviceName"));

    // A wrong type.
    let mut mistyped = deployment.clone();
    mistyped["spec"]["replicas"] = Value::String("two".into());
    assert!(parse(&mistyped).is_err());

    // A kind that is not what it says.
    let mut kind = deployment;
    kind["kind"] = Value::String("Deploymnet".into());
    assert!(parse(&kind).unwrap_err().contains("Deploymnet"));
}
