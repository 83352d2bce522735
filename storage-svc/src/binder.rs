//! Which volume a claim binds: a pure decision over the claim, its class and
//! the volumes that exist, made the way Kubernetes' PV controller makes it.
//!
//! # Rules
//! - A claim that names a volume (`spec.volumeName`) binds that one or none.
//! - A volume pre-bound to the claim (`claimRef`) comes first.
//! - Otherwise the smallest Available, unclaimed volume of the claim's class
//!   whose access modes include the claim's, whose capacity covers the
//!   request, whose labels match the claim's selector and, for a
//!   `WaitForFirstConsumer` claim, whose node affinity admits the pod's
//!   node. Ties go to the name that sorts first, so every replica decides
//!   the same.
//! - With no such volume, the class's provisioner makes one, except when the
//!   claim has a selector (a provisioner cannot honour labels).
//! - A `WaitForFirstConsumer` claim waits until the pod's node is known.

use crate::records::{
    BindingMode, ClaimRecord, ClassRecord, Provisioner, VolumePhase, VolumeRecord,
};

/// What to do with a Pending claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind the named volume.
    Bind(String),
    /// Have the class's provisioner make a volume (on the node, when given).
    Provision,
    /// Stay Pending, for the reason given.
    Wait(String),
}

/// Decides for `claim` of `class` among `volumes`, for a pod on `node`.
pub fn decide<'a>(
    claim: &ClaimRecord,
    class: Option<&ClassRecord>,
    volumes: impl Iterator<Item = &'a VolumeRecord> + Clone,
    node: Option<&str>,
) -> Decision {
    let class_name = claim.class_name();
    if !class_name.is_empty() && class.is_none() {
        return Decision::Wait(format!("storage class {class_name:?} does not exist"));
    }
    let wait_for_consumer =
        class.is_some_and(|c| c.binding_mode == BindingMode::WaitForFirstConsumer);
    if wait_for_consumer && node.is_none() {
        return Decision::Wait(
            "waiting for first consumer to be created before binding (volumeBindingMode: WaitForFirstConsumer)"
                .into(),
        );
    }
    // Kubernetes takes the node into account for every claim once a pod is
    // placed: an Immediate claim is bound before placement, where the node
    // is not known yet.
    let node = node.filter(|_| wait_for_consumer);
    if !claim.wanted_volume.is_empty() {
        let Some(volume) = volumes.clone().find(|v| v.meta.name == claim.wanted_volume) else {
            return Decision::Wait(format!("volume {:?} does not exist", claim.wanted_volume));
        };
        return match mismatch(claim, volume, node) {
            None => Decision::Bind(volume.meta.name.clone()),
            Some(why) => Decision::Wait(format!("volume {:?} {why}", claim.wanted_volume)),
        };
    }
    if let Some(volume) = volumes.clone().find(|v| {
        v.claim_ref.as_ref().is_some_and(|r| claim.is(r)) && mismatch(claim, v, node).is_none()
    }) {
        return Decision::Bind(volume.meta.name.clone());
    }
    let best = volumes
        .filter(|v| mismatch(claim, v, node).is_none())
        .min_by(|a, b| (a.capacity, &a.meta.name).cmp(&(b.capacity, &b.meta.name)));
    if let Some(volume) = best {
        return Decision::Bind(volume.meta.name.clone());
    }
    match class.map(|c| c.provisioner) {
        Some(Provisioner::NodeLocal | Provisioner::Shared) if claim.selector.is_empty() => {
            Decision::Provision
        }
        Some(Provisioner::NodeLocal | Provisioner::Shared) => Decision::Wait(
            "no volume matches the claim's selector, and a provisioner cannot make one with labels"
                .into(),
        ),
        _ => Decision::Wait(format!(
            "no Available volume of class {class_name:?} with access modes {} and at least {} bytes{}",
            claim
                .access_modes
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","),
            claim.request,
            if class.is_none() {
                " (the claim has no class and there is no default class, so nothing is provisioned)"
            } else {
                ""
            }
        )),
    }
}

/// Why `volume` cannot bind `claim` (for a pod on `node`), or `None` if it can.
pub fn mismatch(claim: &ClaimRecord, volume: &VolumeRecord, node: Option<&str>) -> Option<String> {
    let pre_bound_here = volume.claim_ref.as_ref().is_some_and(|r| claim.is(r));
    if volume.phase != VolumePhase::Available {
        return Some(format!("is {:?}, not Available", volume.phase));
    }
    if volume.claim_ref.is_some() && !pre_bound_here {
        return Some("is reserved for another claim".into());
    }
    if volume.class != claim.class_name() {
        return Some(format!(
            "has storage class {:?}, the claim asks for {:?}",
            volume.class,
            claim.class_name()
        ));
    }
    if let Some(missing) = claim
        .access_modes
        .iter()
        .find(|m| !volume.access_modes.contains(m))
    {
        return Some(format!("does not offer access mode {}", missing.as_str()));
    }
    if volume.capacity < claim.request {
        return Some(format!(
            "is too small: {} bytes, the claim asks for {}",
            volume.capacity, claim.request
        ));
    }
    if let Some((k, v)) = claim
        .selector
        .iter()
        .find(|(k, v)| volume.meta.labels.get(*k) != Some(*v))
    {
        return Some(format!("lacks the label {k}={v} the claim selects"));
    }
    if let (Some(node), Some(affinity)) = (node, &volume.node_affinity)
        && !affinity.matches_node(node)
    {
        return Some(format!("cannot be used on node {node:?}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use petset_core::meta::Meta;
    use petset_core::selector::NodeSelector;

    use super::*;
    use crate::records::{AccessMode, ClaimPhase, ClaimRef, ReclaimPolicy, VolumeSource};

    fn meta(name: &str, ns: &str) -> Meta {
        Meta {
            uid: format!("uid-{name}"),
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            generation: 1,
            created: SystemTime::UNIX_EPOCH,
        }
    }

    fn volume(name: &str, class: &str, mib: u64) -> VolumeRecord {
        VolumeRecord {
            meta: meta(name, ""),
            capacity: mib << 20,
            access_modes: vec![AccessMode::ReadWriteOnce, AccessMode::ReadOnlyMany],
            reclaim_policy: ReclaimPolicy::Retain,
            class: class.into(),
            node_affinity: None,
            source: VolumeSource::HostPath {
                path: format!("/v/{name}"),
                create: true,
            },
            claim_ref: None,
            phase: VolumePhase::Available,
            message: String::new(),
            phase_since: SystemTime::UNIX_EPOCH,
        }
    }

    fn claim(class: Option<&str>, mib: u64) -> ClaimRecord {
        ClaimRecord {
            meta: meta("data-kubia-0", "default"),
            access_modes: vec![AccessMode::ReadWriteOnce],
            request: mib << 20,
            class: class.map(Into::into),
            wanted_volume: String::new(),
            selector: BTreeMap::new(),
            owner: None,
            phase: ClaimPhase::Pending,
            volume: None,
            capacity: None,
            message: String::new(),
        }
    }

    fn class(provisioner: Provisioner, mode: BindingMode) -> ClassRecord {
        ClassRecord {
            meta: meta("fast", ""),
            provisioner,
            parameters: BTreeMap::new(),
            reclaim_policy: ReclaimPolicy::Delete,
            binding_mode: mode,
            allow_volume_expansion: false,
        }
    }

    #[test]
    fn smallest_matching_static_volume_wins() {
        let volumes = [
            volume("pv-c", "", 3),
            volume("pv-a", "", 1),
            volume("pv-b", "", 1),
        ];
        assert_eq!(
            decide(&claim(Some(""), 1), None, volumes.iter(), None),
            Decision::Bind("pv-a".into())
        );
        assert_eq!(
            decide(&claim(None, 2), None, volumes.iter(), None),
            Decision::Bind("pv-c".into())
        );
    }

    #[test]
    fn too_small_or_wrong_class_never_binds() {
        let volumes = [volume("small", "", 1), volume("other-class", "slow", 100)];
        let Decision::Wait(why) = decide(&claim(Some(""), 2), None, volumes.iter(), None) else {
            panic!("bound something");
        };
        assert!(why.contains("no Available volume"), "{why}");
        assert!(
            mismatch(&claim(Some(""), 2), &volumes[0], None)
                .unwrap()
                .contains("too small")
        );
        assert!(
            mismatch(&claim(Some(""), 2), &volumes[1], None)
                .unwrap()
                .contains("storage class")
        );
    }

    #[test]
    fn access_modes_must_be_offered() {
        let mut c = claim(Some(""), 1);
        c.access_modes = vec![AccessMode::ReadWriteMany];
        assert!(matches!(
            decide(&c, None, [volume("pv-a", "", 1)].iter(), None),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn pre_bound_and_named_volumes() {
        let mut reserved = volume("reserved", "", 5);
        reserved.claim_ref = Some(ClaimRef {
            namespace: "default".into(),
            name: "data-kubia-0".into(),
            uid: String::new(),
        });
        let volumes = [volume("pv-a", "", 1), reserved.clone()];
        assert_eq!(
            decide(&claim(Some(""), 1), None, volumes.iter(), None),
            Decision::Bind("reserved".into())
        );
        let mut other = claim(Some(""), 1);
        other.meta.name = "other".into();
        assert_eq!(
            decide(&other, None, volumes.iter(), None),
            Decision::Bind("pv-a".into())
        );
        other.wanted_volume = "reserved".into();
        assert!(
            matches!(decide(&other, None, volumes.iter(), None), Decision::Wait(w) if w.contains("reserved for another"))
        );
    }

    #[test]
    fn provisioners_and_first_consumer() {
        let local = class(Provisioner::NodeLocal, BindingMode::WaitForFirstConsumer);
        let c = claim(Some("fast"), 1);
        assert!(
            matches!(decide(&c, Some(&local), std::iter::empty(), None), Decision::Wait(w) if w.contains("first consumer"))
        );
        assert_eq!(
            decide(&c, Some(&local), std::iter::empty(), Some("n1")),
            Decision::Provision
        );
        let mut pinned = volume("local-n2", "fast", 1);
        pinned.node_affinity = Some(NodeSelector::hostname("n2"));
        assert_eq!(
            decide(&c, Some(&local), std::iter::once(&pinned), Some("n1")),
            Decision::Provision
        );
        assert_eq!(
            decide(&c, Some(&local), std::iter::once(&pinned), Some("n2")),
            Decision::Bind("local-n2".into())
        );
        let none = class(Provisioner::NoProvisioner, BindingMode::Immediate);
        assert!(matches!(
            decide(&c, Some(&none), std::iter::empty(), None),
            Decision::Wait(_)
        ));
        assert!(
            matches!(decide(&c, None, std::iter::empty(), None), Decision::Wait(w) if w.contains("does not exist"))
        );
    }
}
