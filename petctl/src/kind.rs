//! The resource kinds petctl knows, by every name kubectl accepts for them.

use anyhow::{Result, bail};

/// A kind of object petctl can get, describe or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `statefulsets.apps` (`sts`).
    StatefulSet,
    /// `pods` (`po`).
    Pod,
    /// `persistentvolumeclaims` (`pvc`).
    Claim,
    /// `persistentvolumes` (`pv`).
    Volume,
    /// `nodes` (`no`).
    Node,
    /// `services` (`svc`).
    Service,
    /// `storageclasses.storage.k8s.io` (`sc`).
    StorageClass,
}

impl Kind {
    /// The kind a resource name on the command line means (singular,
    /// plural, short name or `name.group`, in any case).
    pub fn parse(name: &str) -> Result<Kind> {
        Ok(match name.to_lowercase().as_str() {
            "sts" | "statefulset" | "statefulsets" | "statefulset.apps" | "statefulsets.apps" => {
                Kind::StatefulSet
            }
            "po" | "pod" | "pods" => Kind::Pod,
            "pvc" | "persistentvolumeclaim" | "persistentvolumeclaims" => Kind::Claim,
            "pv" | "persistentvolume" | "persistentvolumes" => Kind::Volume,
            "no" | "node" | "nodes" => Kind::Node,
            "svc" | "service" | "services" => Kind::Service,
            "sc"
            | "storageclass"
            | "storageclasses"
            | "storageclass.storage.k8s.io"
            | "storageclasses.storage.k8s.io" => Kind::StorageClass,
            other => bail!(
                "the server doesn't have a resource type {other:?}; petset has statefulsets (sts), pods (po), pvc, pv, nodes (no), services (svc), storageclasses (sc)"
            ),
        })
    }
}

/// kubectl's name for the resource (`statefulsets.apps`), as errors
/// print it.
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::StatefulSet => "statefulsets.apps",
            Kind::Pod => "pods",
            Kind::Claim => "persistentvolumeclaims",
            Kind::Volume => "persistentvolumes",
            Kind::Node => "nodes",
            Kind::Service => "services",
            Kind::StorageClass => "storageclasses.storage.k8s.io",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_kubectl_takes_is_understood() {
        for (names, kind) in [
            (
                "sts statefulset statefulsets StatefulSet statefulset.apps",
                Kind::StatefulSet,
            ),
            ("po pod pods Pod", Kind::Pod),
            (
                "pvc persistentvolumeclaim persistentvolumeclaims",
                Kind::Claim,
            ),
            ("pv persistentvolume PersistentVolumes", Kind::Volume),
            ("no node nodes", Kind::Node),
            ("svc service services", Kind::Service),
            (
                "sc storageclass storageclasses.storage.k8s.io",
                Kind::StorageClass,
            ),
        ] {
            for name in names.split(' ') {
                assert_eq!(Kind::parse(name).unwrap(), kind, "{name}");
            }
        }
        let err = Kind::parse("deployments").unwrap_err().to_string();
        assert!(err.contains("\"deployments\""), "{err}");
    }
}
