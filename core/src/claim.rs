//! What a claim asks for: the checks a claim and a claim template share.
//!
//! storage-svc applies them to claims and to the templates it makes claims
//! from; scheduler-svc applies them to a StatefulSet's
//! `volumeClaimTemplates` when the set is applied, so a template storage-svc
//! would refuse is refused at apply time with the same message.

use std::collections::BTreeMap;

use petset_proto::v1;
use serde::{Deserialize, Serialize};

use crate::error::Violations;
use crate::quantity;
use crate::validate;

/// How a volume may be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccessMode {
    /// Read-write by the pods of one node.
    ReadWriteOnce,
    /// Read-only by many nodes.
    ReadOnlyMany,
    /// Read-write by many nodes.
    ReadWriteMany,
    /// Read-write by one pod.
    ReadWriteOncePod,
}

impl AccessMode {
    /// Every mode, by the name users write.
    pub const ALL: [AccessMode; 4] = [
        AccessMode::ReadWriteOnce,
        AccessMode::ReadOnlyMany,
        AccessMode::ReadWriteMany,
        AccessMode::ReadWriteOncePod,
    ];

    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }

    /// kubectl's short form (`RWO`).
    pub fn short(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "RWO",
            AccessMode::ReadOnlyMany => "ROX",
            AccessMode::ReadWriteMany => "RWX",
            AccessMode::ReadWriteOncePod => "RWOP",
        }
    }
}

/// Parses a list of access modes under `field`; at least one is needed.
pub fn parse_access_modes(field: &str, modes: &[String], v: &mut Violations) -> Vec<AccessMode> {
    if modes.is_empty() {
        v.add(
            field,
            "at least one access mode is required (e.g. ReadWriteOnce)",
        );
    }
    let mut out = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        match AccessMode::ALL.iter().find(|m| m.as_str() == mode) {
            Some(m) if !out.contains(m) => out.push(*m),
            Some(_) => {}
            None => v.add(
                format!("{field}[{i}]"),
                format!(
                    "must be ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod, got {mode:?}"
                ),
            ),
        }
    }
    if out.contains(&AccessMode::ReadWriteOncePod) && out.len() > 1 {
        v.add(
            field,
            "ReadWriteOncePod cannot be combined with other access modes",
        );
    }
    out
}

/// Parses `{storage: <quantity>}` under `field`.
pub fn parse_storage(
    field: &str,
    resources: &std::collections::HashMap<String, String>,
    v: &mut Violations,
) -> u64 {
    for key in resources.keys().filter(|k| *k != "storage") {
        v.add(
            format!("{field}.{key}"),
            "only `storage` is understood for volumes",
        );
    }
    match resources.get("storage") {
        None => {
            v.add(
                format!("{field}.storage"),
                "is required: how many bytes, as a quantity (1Mi, 10Gi)",
            );
            0
        }
        Some(text) => match quantity::parse_bytes(text) {
            Ok(bytes) => bytes,
            Err(reason) => {
                v.add(format!("{field}.storage"), reason);
                0
            }
        },
    }
}

/// Parses the volume mode: only `Filesystem`.
pub fn parse_volume_mode(field: &str, mode: &str, v: &mut Violations) {
    match mode {
        "" | "Filesystem" => {}
        "Block" => v.add(
            field,
            "Block volumes are not supported: petset volumes are directories",
        ),
        other => v.add(field, format!("must be Filesystem, got {other:?}")),
    }
}

/// The spec of a claim, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSpec {
    /// Access modes.
    pub access_modes: Vec<AccessMode>,
    /// Bytes asked for.
    pub request: u64,
    /// Class as written: `None` for unset.
    pub class: Option<String>,
    /// `spec.volumeName`.
    pub wanted_volume: String,
    /// `spec.selector.matchLabels`.
    pub selector: BTreeMap<String, String>,
}

/// Checks a claim spec (of a claim or a template) under `field`.
pub fn parse_spec(
    field: &str,
    spec: Option<&v1::PersistentVolumeClaimSpec>,
    v: &mut Violations,
) -> ClaimSpec {
    let spec = spec.cloned().unwrap_or_default();
    let access_modes = parse_access_modes(&format!("{field}.access_modes"), &spec.access_modes, v);
    let request = parse_storage(
        &format!("{field}.resources.requests"),
        &spec.resources.unwrap_or_default().requests,
        v,
    );
    if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        v.check(
            format!("{field}.storage_class_name"),
            validate::dns1123_subdomain(class),
        );
    }
    if !spec.volume_name.is_empty() {
        v.check(
            format!("{field}.volume_name"),
            validate::dns1123_subdomain(&spec.volume_name),
        );
    }
    let selector: BTreeMap<_, _> = spec
        .selector
        .unwrap_or_default()
        .match_labels
        .into_iter()
        .collect();
    v.check(
        format!("{field}.selector.match_labels"),
        validate::labels(&selector),
    );
    parse_volume_mode(&format!("{field}.volume_mode"), &spec.volume_mode, v);
    ClaimSpec {
        access_modes,
        request,
        class: spec.storage_class_name,
        wanted_volume: spec.volume_name,
        selector,
    }
}
