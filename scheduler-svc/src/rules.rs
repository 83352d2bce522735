//! What a StatefulSet's pods are, beside the planner: pure functions the
//! executor calls, each with its tests here.
//!
//! # Rules (Kubernetes' `stateful_set_utils.go`, then petset's own)
//! - A pod of replica `i` at a revision ([`pod_for`], Kubernetes'
//!   `newVersionedStatefulSetPod`) is named `<set>-<i>`, which is also its
//!   hostname; its subdomain is the set's governing service; it carries the
//!   revision's template labels and annotations plus
//!   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`
//!   and `controller-revision-hash`; each claim template becomes a volume of
//!   the template's name on the claim `<template>-<set>-<i>`, replacing a
//!   template volume of the same name (Kubernetes' `updateStorage`).
//! - The planner sees a set through [`set_view`] and a pod through
//!   [`pod_view`]: a pod's phase counts only when reported by its current
//!   incarnation, and its identity is held only when the holder's
//!   incarnation is the pod's.
//! - An identity is an orphan ([`orphan_holder`]) when its holder names a
//!   pod uid no stored pod has: a leader died between issuing it and
//!   writing the pod. Only an orphan may be released by the controller.
//! - A set's claims are found by name ([`kept_claim_ordinals`]): a claim is
//!   replica `i`'s only when its name is `<template>-<set>-<i>` for one of
//!   the set's templates.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use petset_core::error::Violations;
use petset_core::identity::HolderRecord;
use petset_core::meta::Meta;
use petset_core::names::{
    POD_INDEX_LABEL, POD_NAME_LABEL, REVISION_LABEL, claim_name, claim_ordinal, pod_name,
};
use petset_core::quantity::Quantity;
use petset_core::selector::NodeSelector;
use petset_proto::v1;

use crate::planner::{Phase, PodView, Policy, SetView, Strategy};
use crate::records::{PodRecord, SetRecord};
use crate::world::World;

/// Where and as what a new pod runs: decided by the executor (placement,
/// identity issue) before the pod is written.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Fresh metadata (uid, creation time); name and labels are filled in.
    pub meta: Meta,
    /// The node chosen.
    pub node: String,
    /// The identity's incarnation issued for it.
    pub incarnation: u64,
}

/// The pod of replica `ordinal` of `set`, made from `template` (the
/// template of `revision`), as placed.
pub fn pod_for(
    set: &SetRecord,
    ordinal: u32,
    revision: &str,
    template: &v1::PodTemplateSpec,
    placed: Placed,
) -> PodRecord {
    let set_name = &set.meta.name;
    let name = pod_name(set_name, ordinal);
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.into_iter().collect();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = name.clone();
    spec.subdomain = set.spec.service_name.clone();
    for t in &set.spec.volume_claim_templates {
        let Some(tm) = &t.metadata else { continue };
        spec.volumes.retain(|v| v.name != tm.name);
        spec.volumes.push(v1::Volume {
            name: tm.name.clone(),
            persistent_volume_claim: Some(v1::PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tm.name, set_name, ordinal),
                read_only: false,
            }),
            empty_dir: None,
        });
    }
    PodRecord {
        meta: Meta {
            namespace: set.meta.namespace.clone(),
            name,
            labels,
            annotations: template_meta.annotations.into_iter().collect(),
            ..placed.meta
        },
        set_name: set_name.clone(),
        ordinal,
        node: placed.node,
        incarnation: placed.incarnation,
        revision: revision.to_string(),
        spec,
        deletion: None,
        trace: None,
    }
}

/// The cpu (millicores) and memory (bytes) a pod spec asks for: the sum
/// of its containers' requests.
pub fn requests(spec: &v1::PodSpec) -> (u64, u64) {
    let mut cpu = 0;
    let mut memory = 0;
    for c in &spec.containers {
        if let Some(r) = &c.resources {
            cpu += r
                .requests
                .get("cpu")
                .and_then(|q| Quantity::parse(q).ok()?.milli_value())
                .unwrap_or(0);
            memory += r
                .requests
                .get("memory")
                .and_then(|q| Quantity::parse(q).ok()?.value())
                .unwrap_or(0);
        }
    }
    (cpu, memory)
}

/// A volume's node affinity as a selector (checked when the volume was
/// stored, so nothing is reported here).
pub fn node_selector(api: &v1::NodeSelector) -> NodeSelector {
    let mut ignored = Violations::new();
    NodeSelector::parse(
        "affinity",
        api.node_selector_terms.iter().map(|t| {
            t.match_expressions
                .iter()
                .map(|r| (r.key.as_str(), r.operator.as_str(), r.values.clone()))
                .collect()
        }),
        &mut ignored,
    )
}

/// The planner's view of a set.
pub fn set_view(set: &SetRecord, current_revision: &str, update_revision: &str) -> SetView {
    let spec = &set.spec;
    let retention = spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap_or_default();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.rolling_update.clone();
    SetView {
        replicas: spec.replicas.unwrap_or(1).max(0) as u32,
        start: spec.ordinals.as_ref().map(|o| o.start).unwrap_or(0).max(0) as u32,
        policy: if spec.pod_management_policy == "Parallel" {
            Policy::Parallel
        } else {
            Policy::OrderedReady
        },
        strategy: if strategy.r#type == "OnDelete" {
            Strategy::OnDelete
        } else {
            Strategy::RollingUpdate {
                partition: rolling.map(|r| r.partition.max(0) as u32).unwrap_or(0),
            }
        },
        min_ready: Duration::from_secs(spec.min_ready_seconds.max(0) as u64),
        delete_claims_when_scaled: retention.when_scaled == "Delete",
        delete_claims_when_deleted: retention.when_deleted == "Delete",
        deleting: set.deleting.is_some(),
        max_unavailable: crate::planner::resolve_max_unavailable(
            strategy
                .rolling_update
                .as_ref()
                .map_or("", |r| r.max_unavailable.as_str()),
            spec.replicas.unwrap_or(1).max(0) as u32,
        ),
        current_revision: current_revision.to_string(),
        update_revision: update_revision.to_string(),
    }
}

/// The planner's view of a pod in `world`.
pub fn pod_view(world: &World, pod: &PodRecord) -> PodView {
    let ns = &pod.meta.namespace;
    let status = world
        .pod_status
        .get(&(ns.clone(), pod.meta.name.clone()))
        .filter(|s| s.incarnation == pod.incarnation);
    let phase = match status.map(|s| s.phase.as_str()) {
        Some("Running") => Phase::Running,
        Some("Failed") => Phase::Failed,
        Some("Succeeded") => Phase::Succeeded,
        _ => Phase::Pending,
    };
    let identity_held = world
        .holders
        .get(&(ns.clone(), pod.set_name.clone(), pod.ordinal))
        .is_some_and(|h| h.incarnation == pod.incarnation);
    PodView {
        name: pod.meta.name.clone(),
        ordinal: pod.ordinal,
        revision: pod.revision.clone(),
        phase,
        ready_since: status.filter(|s| s.ready).and_then(|s| s.ready_since),
        terminating: pod.deletion.is_some(),
        node_ready: world.node_ready(&pod.node),
        identity_held,
    }
}

/// The holder of replica `ordinal`'s identity when it is an orphan: its
/// holder `<node>/<pod uid>` names a uid no stored pod has.
pub fn orphan_holder<'a>(
    world: &'a World,
    ns: &str,
    set: &str,
    ordinal: u32,
) -> Option<&'a HolderRecord> {
    world
        .holders
        .get(&(ns.to_string(), set.to_string(), ordinal))
        .filter(|h| {
            let uid = h.holder.rsplit('/').next().unwrap_or_default();
            !world.pods.values().any(|p| p.value.meta.uid == uid)
        })
}

/// The ordinals that still have a claim made from one of `set`'s
/// templates, among the claims named `claims`.
pub fn kept_claim_ordinals<'a>(
    set: &SetRecord,
    claims: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<u32> {
    let templates: Vec<&str> = set
        .spec
        .volume_claim_templates
        .iter()
        .filter_map(|t| t.metadata.as_ref().map(|m| m.name.as_str()))
        .collect();
    claims
        .into_iter()
        .filter_map(|claim| {
            templates
                .iter()
                .find_map(|t| claim_ordinal(claim, t, &set.meta.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use proptest::prelude::*;

    use super::*;
    use crate::records::PodStatusRecord;
    use petset_core::store::Versioned;

    fn versioned<T>(value: T) -> Versioned<T> {
        Versioned {
            value,
            mod_revision: 1,
            create_revision: 1,
            lease: 0,
        }
    }

    fn set(name: &str, service: &str, templates: &[&str]) -> SetRecord {
        SetRecord {
            meta: Meta {
                uid: "set-uid".into(),
                namespace: "prod".into(),
                name: name.into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                generation: 1,
                created: SystemTime::UNIX_EPOCH,
            },
            spec: v1::StatefulSetSpec {
                service_name: service.into(),
                volume_claim_templates: templates
                    .iter()
                    .map(|t| v1::PersistentVolumeClaimTemplate {
                        metadata: Some(v1::ObjectMeta {
                            name: t.to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            deleting: None,
            trace: None,
        }
    }

    fn template(labels: &[(&str, &str)], volumes: &[&str]) -> v1::PodTemplateSpec {
        v1::PodTemplateSpec {
            metadata: Some(v1::ObjectMeta {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: [("note".to_string(), "kept".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(v1::PodSpec {
                containers: vec![v1::Container {
                    name: "app".into(),
                    image: "kubia-pet".into(),
                    ..Default::default()
                }],
                volumes: volumes
                    .iter()
                    .map(|v| v1::Volume {
                        name: v.to_string(),
                        empty_dir: Some(Default::default()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn placed(uid: &str) -> Placed {
        Placed {
            meta: Meta {
                uid: uid.into(),
                namespace: String::new(),
                name: String::new(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                generation: 1,
                created: SystemTime::UNIX_EPOCH,
            },
            node: "node-b".into(),
            incarnation: 7,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Every pod is Kubernetes' `newVersionedStatefulSetPod`: its name
        /// and hostname, its subdomain, the three labels over the
        /// template's, and one claim volume per template that the claim
        /// naming rule maps back to this ordinal.
        #[test]
        fn a_pod_is_what_kubernetes_makes_of_its_template(
            set_name in "[a-z]{1,8}(-[a-z0-9]{1,4})?",
            ordinal in 0u32..100_000,
            claim_templates in proptest::sample::subsequence(vec!["data", "logs", "www"], 0..=3),
            template_volumes in proptest::sample::subsequence(vec!["data", "scratch"], 0..=2),
            app in "[a-z]{1,6}",
        ) {
            let s = set(&set_name, "svc", &claim_templates);
            let t = template(&[("app", &app), (POD_NAME_LABEL, "spoofed")], &template_volumes);
            let pod = pod_for(&s, ordinal, "rev-1", &t, placed("uid-1"));
            let name = format!("{set_name}-{ordinal}");
            prop_assert_eq!(&pod.meta.name, &name);
            prop_assert_eq!(&pod.meta.namespace, "prod");
            prop_assert_eq!(&pod.meta.uid, "uid-1");
            prop_assert_eq!(&pod.spec.hostname, &name);
            prop_assert_eq!(&pod.spec.subdomain, "svc");
            prop_assert_eq!((pod.ordinal, pod.incarnation, pod.node.as_str()), (ordinal, 7, "node-b"));
            prop_assert_eq!(&pod.meta.labels["app"], &app);
            prop_assert_eq!(&pod.meta.labels[POD_NAME_LABEL], &name);
            prop_assert_eq!(&pod.meta.labels[POD_INDEX_LABEL], &ordinal.to_string());
            prop_assert_eq!(&pod.meta.labels[REVISION_LABEL], "rev-1");
            prop_assert_eq!(&pod.meta.annotations["note"], "kept");
            for t in &claim_templates {
                let claims: Vec<&str> = pod.spec.volumes.iter()
                    .filter(|v| v.name == *t)
                    .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()))
                    .collect();
                prop_assert_eq!(claims.len(), 1, "one claim volume for {}", t);
                prop_assert_eq!(claim_ordinal(claims[0], t, &set_name), Some(ordinal));
                prop_assert_eq!(
                    pod.spec.volumes.iter().filter(|v| v.name == *t).count(), 1,
                    "the claim replaces a template volume of the same name"
                );
            }
            prop_assert!(template_volumes.iter().all(|v| pod.spec.volumes.iter().any(|p| p.name == *v)));
            // The kept claims of this pod map back to its ordinal only.
            let claim_names: Vec<String> = claim_templates
                .iter()
                .map(|t| claim_name(t, &set_name, ordinal))
                .collect();
            let kept = kept_claim_ordinals(&s, claim_names.iter().map(String::as_str));
            let expected: BTreeSet<u32> = if claim_templates.is_empty() { BTreeSet::new() } else { [ordinal].into() };
            prop_assert_eq!(kept, expected);
        }
    }

    #[test]
    fn claims_of_another_set_or_template_are_not_kept() {
        let s = set("web", "svc", &["data"]);
        let kept = kept_claim_ordinals(
            &s,
            [
                "data-web-0",
                "data-web-3",
                "data-web-a-1",
                "logs-web-2",
                "data-webb-4",
            ],
        );
        assert_eq!(kept, [0, 3].into());
    }

    #[test]
    fn requests_sum_the_containers() {
        let resources = |cpu: &str, memory: &str| {
            Some(v1::ResourceRequirements {
                requests: [
                    ("cpu".to_string(), cpu.to_string()),
                    ("memory".to_string(), memory.to_string()),
                ]
                .into(),
                ..Default::default()
            })
        };
        let spec = v1::PodSpec {
            containers: vec![
                v1::Container {
                    resources: resources("250m", "64Mi"),
                    ..Default::default()
                },
                v1::Container {
                    resources: resources("1", "1Gi"),
                    ..Default::default()
                },
                v1::Container::default(),
            ],
            ..Default::default()
        };
        assert_eq!(requests(&spec), (1250, (64 << 20) + (1 << 30)));
    }

    fn world_with(pods: &[(&str, u32, &str, u64)], holder: (u32, &str, u64)) -> World {
        let mut world = World::default();
        for (name, ordinal, uid, incarnation) in pods {
            let mut pod = pod_for(
                &set("web", "svc", &[]),
                *ordinal,
                "rev",
                &template(&[], &[]),
                placed(uid),
            );
            pod.incarnation = *incarnation;
            world
                .pods
                .insert(("prod".into(), name.to_string()), versioned(pod));
        }
        world.holders.insert(
            ("prod".into(), "web".into(), holder.0),
            HolderRecord {
                holder: holder.1.into(),
                lease_id: 1,
                incarnation: holder.2,
                service: "svc".into(),
                issued_at: SystemTime::UNIX_EPOCH,
            },
        );
        world
    }

    #[test]
    fn only_an_identity_whose_pod_was_never_written_is_an_orphan() {
        let world = world_with(&[("web-0", 0, "uid-0", 1)], (0, "node-b/uid-0", 1));
        assert!(orphan_holder(&world, "prod", "web", 0).is_none());
        let world = world_with(&[("web-0", 0, "uid-0", 1)], (0, "node-b/uid-lost", 2));
        assert_eq!(
            orphan_holder(&world, "prod", "web", 0).map(|h| h.incarnation),
            Some(2)
        );
        // No holder at all: nothing to release.
        assert!(orphan_holder(&world, "prod", "web", 1).is_none());
    }

    #[test]
    fn a_pod_counts_only_what_its_own_incarnation_reported() {
        let mut world = world_with(&[("web-0", 0, "uid-0", 3)], (0, "node-b/uid-0", 3));
        let pod = world.pods[&("prod".to_string(), "web-0".to_string())]
            .value
            .clone();
        let report = |incarnation| PodStatusRecord {
            incarnation,
            phase: "Running".into(),
            ready: true,
            pod_ip: "127.0.0.2".into(),
            restart_count: 0,
            message: String::new(),
            reason: String::new(),
            ready_since: Some(SystemTime::UNIX_EPOCH),
            start_time: None,
            last_termination_reason: String::new(),
        };
        world
            .pod_status
            .insert(("prod".into(), "web-0".into()), report(2));
        let stale = pod_view(&world, &pod);
        assert_eq!((stale.phase, stale.ready_since), (Phase::Pending, None));
        assert!(stale.identity_held);
        world
            .pod_status
            .insert(("prod".into(), "web-0".into()), report(3));
        let view = pod_view(&world, &pod);
        assert_eq!(view.phase, Phase::Running);
        assert!(view.ready_since.is_some());
        assert!(!view.node_ready, "node-b never registered");
        // The identity moved on to a later incarnation.
        world.holders.values_mut().for_each(|h| h.incarnation = 4);
        assert!(!pod_view(&world, &pod).identity_held);
    }
}
