//! What petctl prints: kubectl's tables, and objects in Kubernetes' shape
//! (`apiVersion`, `kind`, `metadata`, `spec`, `status`) as JSON or YAML, so
//! that scripts written for kubectl's output read petctl's.

use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use petset_proto::v1;
use serde_json::{Value, json};

use crate::kind::Kind;
use crate::selector::Selector;
use crate::{Clients, explain};

/// The page size of lists, as kubectl's `--chunk-size` default.
const CHUNK: i64 = 500;

/// Every item of a paged list: `ask` is given each page's `continue`
/// token (empty first) and answers the page's items and the next token.
async fn every_page<T, F, Fut>(mut ask: F) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = ask(token).await.map_err(explain)?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table.
    Table,
    /// A table with more columns.
    Wide,
    /// Kubernetes-shaped JSON.
    Json,
    /// Kubernetes-shaped YAML.
    Yaml,
}

impl Format {
    /// `-o` as given.
    pub fn parse(o: Option<&str>) -> Result<Format> {
        Ok(match o {
            None => Format::Table,
            Some("wide") => Format::Wide,
            Some("json") => Format::Json,
            Some("yaml") => Format::Yaml,
            Some(other) => bail!(
                "unable to match a printer suitable for the output format {other:?}, allowed formats are: json, wide, yaml"
            ),
        })
    }
}

fn when(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t.as_ref()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
}

fn rfc3339(t: &Option<prost_types::Timestamp>) -> Value {
    let Some(t) = t else { return Value::Null };
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// kubectl's AGE column.
fn age(t: &Option<prost_types::Timestamp>) -> String {
    let Some(then) = when(t) else {
        return "<unknown>".into();
    };
    let s = SystemTime::now()
        .duration_since(then)
        .unwrap_or_default()
        .as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn meta(m: &Option<v1::ObjectMeta>) -> Value {
    let m = m.clone().unwrap_or_default();
    let mut out = serde_json::to_value(&m).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut out {
        map.retain(|_, v| {
            !(v.is_null() || v == "" || v == 0 || v.as_object().is_some_and(|o| o.is_empty()))
        });
        map.insert("creationTimestamp".into(), rfc3339(&m.creation_timestamp));
    }
    out
}

fn set_json(s: &v1::StatefulSet) -> Value {
    let st = s.status.clone().unwrap_or_default();
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(&s.metadata),
        "spec": serde_json::to_value(&s.spec).unwrap_or(Value::Null),
        "status": {
            "observedGeneration": st.observed_generation,
            "replicas": st.replicas,
            "readyReplicas": st.ready_replicas,
            "availableReplicas": st.available_replicas,
            "currentReplicas": st.current_replicas,
            "updatedReplicas": st.updated_replicas,
            "currentRevision": st.current_revision,
            "updateRevision": st.update_revision,
            "collisionCount": st.collision_count,
            "conditions": st.conditions.iter().map(|c| json!({
                "type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message,
                "lastTransitionTime": rfc3339(&c.last_transition_time),
            })).collect::<Vec<_>>(),
        }
    })
}

fn pod_json(p: &v1::Pod) -> Value {
    let st = p.status.clone().unwrap_or_default();
    let mut spec = serde_json::to_value(&p.spec).unwrap_or(json!({}));
    spec["nodeName"] = json!(p.node_name);
    let mut metadata = meta(&p.metadata);
    // The fencing token, where a person (or a script) can read it.
    metadata["annotations"]["petset.io/incarnation"] = json!(p.incarnation.to_string());
    metadata["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": p.set_name, "controller": true}]);
    if p.deletion_timestamp.is_some() {
        metadata["deletionTimestamp"] = rfc3339(&p.deletion_timestamp);
        metadata["deletionGracePeriodSeconds"] = json!(p.deletion_grace_period_seconds);
    }
    let containers = p
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": st.phase,
            "podIP": st.pod_ip,
            "reason": st.reason,
            "message": st.message,
            "startTime": rfc3339(&st.start_time),
            "conditions": [{"type": "Ready", "status": if st.ready { "True" } else { "False" }, "lastTransitionTime": rfc3339(&st.ready_since)}],
            "containerStatuses": containers.iter().map(|c| {
                let mut status = json!({
                    "name": c.name, "image": c.image, "ready": st.ready, "restartCount": st.restart_count,
                });
                if !st.last_termination_reason.is_empty() {
                    status["lastState"] = json!({"terminated": {"reason": st.last_termination_reason}});
                }
                status
            }).collect::<Vec<_>>(),
        }
    })
}

fn claim_json(c: &v1::PersistentVolumeClaim) -> Value {
    let st = c.status.clone().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(&c.metadata),
        "spec": serde_json::to_value(&c.spec).unwrap_or(Value::Null),
        "status": {"phase": st.phase, "accessModes": st.access_modes, "capacity": st.capacity},
    })
}

fn volume_json(v: &v1::PersistentVolume) -> Value {
    let spec = v.spec.clone().unwrap_or_default();
    let st = v.status.clone().unwrap_or_default();
    let mut out = json!({
        "capacity": spec.capacity,
        "accessModes": spec.access_modes,
        "persistentVolumeReclaimPolicy": spec.persistent_volume_reclaim_policy,
        "storageClassName": spec.storage_class_name,
        "volumeMode": spec.volume_mode,
    });
    match &spec.source {
        Some(v1::persistent_volume_spec::Source::HostPath(h)) => {
            out["hostPath"] = json!({"path": h.path, "type": h.r#type})
        }
        Some(v1::persistent_volume_spec::Source::Local(l)) => {
            out["local"] = json!({"path": l.path})
        }
        _ => {}
    }
    if let Some(r) = &spec.claim_ref {
        out["claimRef"] = json!({"kind": "PersistentVolumeClaim", "namespace": r.namespace, "name": r.name, "uid": r.uid});
    }
    if let Some(a) = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
    {
        out["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": a.node_selector_terms.iter().map(|t| json!({
            "matchExpressions": t.match_expressions.iter().map(|e| json!({"key": e.key, "operator": e.operator, "values": e.values})).collect::<Vec<_>>()
        })).collect::<Vec<_>>()}});
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": meta(&v.metadata),
        "spec": out,
        "status": {"phase": st.phase, "message": st.message},
    })
}

fn node_json(n: &v1::Node) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": n.labels, "creationTimestamp": rfc3339(&n.registered_at)},
        "status": {
            "capacity": n.capacity,
            "addresses": [{"type": "InternalIP", "address": n.address}],
            "conditions": [{"type": "Ready", "status": if n.ready { "True" } else { "Unknown" }}],
            "daemonEndpoints": {"kubeletEndpoint": {"address": n.agent_endpoint}},
        }
    })
}

fn service_json(s: &v1::Service) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(&s.metadata), "spec": serde_json::to_value(&s.spec).unwrap_or(Value::Null)})
}

fn class_json(c: &v1::StorageClass) -> Value {
    let mut out = serde_json::to_value(c).unwrap_or(json!({}));
    out["apiVersion"] = json!("storage.k8s.io/v1");
    out["kind"] = json!("StorageClass");
    out["metadata"] = meta(&c.metadata);
    out
}

fn name_of(m: &Option<v1::ObjectMeta>) -> String {
    m.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out!("{}", line.join("   ").trim_end());
    }
}

/// `get RESOURCE [NAME]`.
pub async fn get(
    c: &Clients,
    resource: Kind,
    name: Option<&str>,
    ns: &str,
    format: Format,
    selector: &Selector,
) -> Result<()> {
    let wide = format == Format::Wide;
    let keep = |n: &str| name.is_none_or(|want| want == n);
    let (items, mut rows): (Vec<Value>, Vec<Vec<String>>) = match resource {
        Kind::StatefulSet => {
            let client = c.sets();
            let sets = every_page(|token| {
                let mut client = client.clone();
                let request = v1::ListStatefulSetsRequest {
                    namespace: ns.into(),
                    limit: CHUNK,
                    r#continue: token,
                };
                async move {
                    let r = client.list_stateful_sets(request).await?.into_inner();
                    Ok((r.stateful_sets, r.r#continue))
                }
            })
            .await?;
            let sets: Vec<_> = sets
                .into_iter()
                .filter(|s| keep(&name_of(&s.metadata)))
                .collect();
            let mut rows = vec![vec!["NAME".into(), "READY".into(), "AGE".into()]];
            if wide {
                rows[0].extend(["CONTAINERS".to_string(), "IMAGES".to_string()]);
            }
            for s in &sets {
                let spec = s.spec.clone().unwrap_or_default();
                let st = s.status.clone().unwrap_or_default();
                let mut row = vec![
                    name_of(&s.metadata),
                    format!("{}/{}", st.ready_replicas, spec.replicas.unwrap_or(1)),
                    age(&s.metadata.as_ref().and_then(|m| m.creation_timestamp)),
                ];
                if wide {
                    let containers = spec
                        .template
                        .and_then(|t| t.spec)
                        .map(|p| p.containers)
                        .unwrap_or_default();
                    row.push(
                        containers
                            .iter()
                            .map(|c| c.name.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                    row.push(
                        containers
                            .iter()
                            .map(|c| c.image.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
                rows.push(row);
            }
            (sets.iter().map(set_json).collect(), rows)
        }
        Kind::Pod => {
            let client = c.pods();
            let pods = every_page(|token| {
                let mut client = client.clone();
                let request = v1::ListPodsRequest {
                    namespace: ns.into(),
                    limit: CHUNK,
                    r#continue: token,
                    ..Default::default()
                };
                async move {
                    let r = client.list_pods(request).await?.into_inner();
                    Ok((r.pods, r.r#continue))
                }
            })
            .await?;
            let pods: Vec<_> = pods
                .into_iter()
                .filter(|p| keep(&name_of(&p.metadata)))
                .collect();
            let mut rows = vec![vec![
                "NAME".into(),
                "READY".into(),
                "STATUS".into(),
                "RESTARTS".into(),
                "AGE".into(),
            ]];
            if wide {
                rows[0].extend(["IP".to_string(), "NODE".to_string()]);
            }
            for p in &pods {
                let st = p.status.clone().unwrap_or_default();
                let containers = p.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
                let status = if p.deletion_timestamp.is_some() {
                    "Terminating".to_string()
                } else if !st.reason.is_empty() && st.phase != "Running" {
                    st.reason.clone()
                } else {
                    st.phase.clone()
                };
                let mut row = vec![
                    name_of(&p.metadata),
                    format!("{}/{containers}", if st.ready { containers } else { 0 }),
                    status,
                    st.restart_count.to_string(),
                    age(&p.metadata.as_ref().and_then(|m| m.creation_timestamp)),
                ];
                if wide {
                    row.push(if st.pod_ip.is_empty() {
                        "<none>".into()
                    } else {
                        st.pod_ip.clone()
                    });
                    row.push(p.node_name.clone());
                }
                rows.push(row);
            }
            (pods.iter().map(pod_json).collect(), rows)
        }
        Kind::Claim => {
            let client = c.storage().await?;
            let claims = every_page(|token| {
                let mut client = client.clone();
                let request = v1::ListClaimsRequest {
                    namespace: ns.into(),
                    limit: CHUNK,
                    r#continue: token,
                    ..Default::default()
                };
                async move {
                    let r = client.list_claims(request).await?.into_inner();
                    Ok((r.claims, r.r#continue))
                }
            })
            .await?;
            let claims: Vec<_> = claims
                .into_iter()
                .filter(|x| keep(&name_of(&x.metadata)))
                .collect();
            let mut rows = vec![
                [
                    "NAME",
                    "STATUS",
                    "VOLUME",
                    "CAPACITY",
                    "ACCESS MODES",
                    "STORAGECLASS",
                    "AGE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for x in &claims {
                let spec = x.spec.clone().unwrap_or_default();
                let st = x.status.clone().unwrap_or_default();
                rows.push(vec![
                    name_of(&x.metadata),
                    st.phase.clone(),
                    spec.volume_name.clone(),
                    st.capacity.get("storage").cloned().unwrap_or_default(),
                    short_modes(&st.access_modes),
                    spec.storage_class_name.clone().unwrap_or_default(),
                    age(&x.metadata.as_ref().and_then(|m| m.creation_timestamp)),
                ]);
            }
            (claims.iter().map(claim_json).collect(), rows)
        }
        Kind::Volume => {
            let client = c.storage().await?;
            let volumes = every_page(|token| {
                let mut client = client.clone();
                let request = v1::ListVolumesRequest {
                    limit: CHUNK,
                    r#continue: token,
                };
                async move {
                    let r = client.list_volumes(request).await?.into_inner();
                    Ok((r.volumes, r.r#continue))
                }
            })
            .await?;
            let volumes: Vec<_> = volumes
                .into_iter()
                .filter(|x| keep(&name_of(&x.metadata)))
                .collect();
            let mut rows = vec![
                [
                    "NAME",
                    "CAPACITY",
                    "ACCESS MODES",
                    "RECLAIM POLICY",
                    "STATUS",
                    "CLAIM",
                    "STORAGECLASS",
                    "AGE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for v in &volumes {
                let spec = v.spec.clone().unwrap_or_default();
                let st = v.status.clone().unwrap_or_default();
                rows.push(vec![
                    name_of(&v.metadata),
                    spec.capacity.get("storage").cloned().unwrap_or_default(),
                    short_modes(&spec.access_modes),
                    spec.persistent_volume_reclaim_policy.clone(),
                    st.phase.clone(),
                    spec.claim_ref
                        .map(|r| format!("{}/{}", r.namespace, r.name))
                        .unwrap_or_default(),
                    spec.storage_class_name.clone(),
                    age(&v.metadata.as_ref().and_then(|m| m.creation_timestamp)),
                ]);
            }
            (volumes.iter().map(volume_json).collect(), rows)
        }
        Kind::Node => {
            let nodes = c
                .nodes()
                .list_nodes(v1::ListNodesRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .nodes;
            let nodes: Vec<_> = nodes.into_iter().filter(|n| keep(&n.name)).collect();
            let mut rows = vec![["NAME", "STATUS", "PODS", "AGE"].map(String::from).to_vec()];
            if wide {
                rows[0].extend(["INTERNAL-IP".to_string(), "AGENT".to_string()]);
            }
            for n in &nodes {
                let mut row = vec![
                    n.name.clone(),
                    if n.ready { "Ready" } else { "NotReady" }.into(),
                    n.pods.to_string(),
                    age(&n.registered_at),
                ];
                if wide {
                    row.extend([n.address.clone(), n.agent_endpoint.clone()]);
                }
                rows.push(row);
            }
            (nodes.iter().map(node_json).collect(), rows)
        }
        Kind::Service => {
            let client = c.services().await?;
            let services = every_page(|token| {
                let mut client = client.clone();
                let request = v1::ListServicesRequest {
                    namespace: ns.into(),
                    limit: CHUNK,
                    r#continue: token,
                };
                async move {
                    let r = client.list_services(request).await?.into_inner();
                    Ok((r.services, r.r#continue))
                }
            })
            .await?;
            let services: Vec<_> = services
                .into_iter()
                .filter(|s| keep(&name_of(&s.metadata)))
                .collect();
            let mut rows = vec![
                [
                    "NAME",
                    "TYPE",
                    "CLUSTER-IP",
                    "EXTERNAL-IP",
                    "PORT(S)",
                    "AGE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for s in &services {
                let spec = s.spec.clone().unwrap_or_default();
                let ports: Vec<String> = spec
                    .ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p.port,
                            if p.protocol.is_empty() {
                                "TCP"
                            } else {
                                &p.protocol
                            }
                        )
                    })
                    .collect();
                rows.push(vec![
                    name_of(&s.metadata),
                    "ClusterIP".into(),
                    "None".into(),
                    "<none>".into(),
                    ports.join(","),
                    age(&s.metadata.as_ref().and_then(|m| m.creation_timestamp)),
                ]);
            }
            (services.iter().map(service_json).collect(), rows)
        }
        Kind::StorageClass => {
            let classes = c
                .storage()
                .await?
                .list_storage_classes(v1::ListStorageClassesRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .storage_classes;
            let classes: Vec<_> = classes
                .into_iter()
                .filter(|s| keep(&name_of(&s.metadata)))
                .collect();
            let mut rows = vec![
                [
                    "NAME",
                    "PROVISIONER",
                    "RECLAIMPOLICY",
                    "VOLUMEBINDINGMODE",
                    "ALLOWVOLUMEEXPANSION",
                    "AGE",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for s in &classes {
                let default = s.metadata.as_ref().is_some_and(|m| {
                    m.annotations
                        .get("storageclass.kubernetes.io/is-default-class")
                        .is_some_and(|v| v == "true")
                });
                rows.push(vec![
                    format!(
                        "{}{}",
                        name_of(&s.metadata),
                        if default { " (default)" } else { "" }
                    ),
                    s.provisioner.clone(),
                    s.reclaim_policy.clone(),
                    s.volume_binding_mode.clone(),
                    s.allow_volume_expansion.to_string(),
                    age(&s.metadata.as_ref().and_then(|m| m.creation_timestamp)),
                ]);
            }
            (classes.iter().map(class_json).collect(), rows)
        }
    };
    // One row per item, after the header, in the same order.
    let (items, mut rows) = {
        let mut kept_rows = vec![rows.remove(0)];
        let mut kept = Vec::new();
        for (item, row) in items.into_iter().zip(rows) {
            if selector.matches(&item["metadata"]["labels"]) {
                kept.push(item);
                kept_rows.push(row);
            }
        }
        (kept, kept_rows)
    };
    if let Some(n) = name
        && items.is_empty()
    {
        bail!("Error from server (NotFound): {resource} {n:?} not found");
    }
    match format {
        Format::Json | Format::Yaml => {
            let value = if name.is_some() && items.len() == 1 {
                items.into_iter().next().expect("one")
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
            };
            if format == Format::Json {
                out!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                out_raw!("{}", serde_saphyr::to_string(&value)?);
            }
        }
        Format::Table | Format::Wide => {
            if rows.len() == 1 {
                let scope = if ns.is_empty() {
                    String::new()
                } else {
                    format!(" in {ns} namespace")
                };
                eprintln!("No resources found{scope}.");
            } else {
                rows[1..].sort();
                table(rows);
            }
        }
    }
    Ok(())
}

fn short_modes(modes: &[String]) -> String {
    modes
        .iter()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `describe RESOURCE NAME`: the object as YAML, then what explains its
/// state.
pub async fn describe(c: &Clients, resource: Kind, name: &str) -> Result<()> {
    get(
        c,
        resource,
        Some(name),
        &c.namespace,
        Format::Yaml,
        &Selector::default(),
    )
    .await?;
    if resource == Kind::StatefulSet {
        let pods = c
            .pods()
            .list_pods(v1::ListPodsRequest {
                namespace: c.namespace.clone(),
                set_name: name.into(),
                ..Default::default()
            })
            .await
            .map_err(explain)?
            .into_inner()
            .pods;
        out!("Pods:");
        for p in pods {
            let st = p.status.unwrap_or_default();
            out!(
                "  {:<16} {:<10} ready={:<5} node={} ip={} incarnation={} revision={}{}",
                name_of(&p.metadata),
                st.phase,
                st.ready,
                p.node_name,
                st.pod_ip,
                p.incarnation,
                p.revision,
                if st.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", st.message)
                }
            );
        }
    }
    Ok(())
}

/// One line of `rollout status`, and whether the rollout is done.
pub fn rollout_line(set: &v1::StatefulSet) -> (String, bool) {
    let spec = set.spec.clone().unwrap_or_default();
    let st = set.status.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let generation = set.metadata.as_ref().map(|m| m.generation).unwrap_or(0);
    if st.observed_generation < generation {
        return (
            "Waiting for statefulset spec update to be observed...".into(),
            false,
        );
    }
    if let Some(blocked) = st.conditions.iter().find(|c| c.reason == "Blocked") {
        return (format!("Waiting: {}", blocked.message), false);
    }
    if st.ready_replicas < replicas {
        return (
            format!(
                "Waiting for {} pods to be ready...",
                replicas - st.ready_replicas
            ),
            false,
        );
    }
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .map(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        if st.updated_replicas < replicas - partition {
            return (
                format!(
                    "Waiting for partitioned roll out to finish: {} out of {} new pods have been updated...",
                    st.updated_replicas,
                    replicas - partition
                ),
                false,
            );
        }
        return (
            format!(
                "partitioned roll out complete: {} new pods have been updated...",
                st.updated_replicas
            ),
            true,
        );
    }
    if st.update_revision != st.current_revision {
        return (
            format!(
                "waiting for statefulset rolling update to complete {} pods at revision {}...",
                st.updated_replicas, st.update_revision
            ),
            false,
        );
    }
    (
        format!(
            "statefulset rolling update complete {replicas} pods at revision {}...",
            st.current_revision
        ),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_have_the_kubernetes_shape() {
        let set = v1::StatefulSet {
            metadata: Some(v1::ObjectMeta {
                name: "kubia".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(v1::StatefulSetSpec {
                replicas: Some(2),
                service_name: "kubia".into(),
                ..Default::default()
            }),
            status: Some(v1::StatefulSetStatus {
                ready_replicas: 2,
                ..Default::default()
            }),
        };
        let v = set_json(&set);
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "StatefulSet");
        assert_eq!(v["metadata"]["name"], "kubia");
        assert_eq!(v["spec"]["serviceName"], "kubia");
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(v["status"]["readyReplicas"], 2);
    }
}
