//! Object metadata as every stored petset object carries it (Kubernetes'
//! `metadata`): name, namespace, labels, annotations, uid, generation,
//! creation time; and the `resourceVersion` a client sends back for an
//! optimistic update.

use std::collections::BTreeMap;
use std::time::SystemTime;

use petset_proto::v1;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Violations};
use crate::validate;

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In a namespace (`default` when none is given).
    Namespaced,
    /// Cluster-wide; a namespace given is refused.
    Cluster,
}

/// Metadata as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Set once, at creation.
    pub uid: String,
    /// Empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Grows by one with each change of the spec.
    pub generation: i64,
    /// When it was created.
    pub created: SystemTime,
}

/// Checked metadata from a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaInput {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Write only over this revision, when given.
    pub resource_version: Option<i64>,
}

impl MetaInput {
    /// Checks `meta` (under `field`, e.g. `volume.metadata`): the name must
    /// pass `name_rule`, the namespace be a DNS-1123 label (or absent for a
    /// cluster-scoped kind), labels valid, the version one read from the
    /// server. Broken rules go to `v`.
    pub fn parse(
        field: &str,
        meta: Option<&v1::ObjectMeta>,
        scope: Scope,
        name_rule: fn(&str) -> std::result::Result<(), String>,
        v: &mut Violations,
    ) -> MetaInput {
        let meta = meta.cloned().unwrap_or_default();
        v.check(format!("{field}.name"), name_rule(&meta.name));
        let namespace = match scope {
            Scope::Namespaced => {
                let ns = validate::namespace_or_default(&meta.namespace);
                v.check(format!("{field}.namespace"), validate::dns1123_label(&ns));
                ns
            }
            Scope::Cluster => {
                if !meta.namespace.is_empty() {
                    v.add(
                        format!("{field}.namespace"),
                        format!(
                            "must be empty: this kind is cluster-scoped (got {:?})",
                            meta.namespace
                        ),
                    );
                }
                String::new()
            }
        };
        let labels: BTreeMap<_, _> = meta.labels.into_iter().collect();
        v.check(format!("{field}.labels"), validate::labels(&labels));
        let resource_version = parse_resource_version(
            &format!("{field}.resource_version"),
            &meta.resource_version,
            v,
        );
        MetaInput {
            namespace,
            name: meta.name,
            labels,
            annotations: meta.annotations.into_iter().collect(),
            resource_version,
        }
    }

    /// New stored metadata for a first write.
    pub fn create(&self) -> Meta {
        Meta {
            uid: uuid::Uuid::new_v4().to_string(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            generation: 1,
            created: SystemTime::now(),
        }
    }

    /// Refuses an update over a revision other than the one the client read.
    pub fn check_version(&self, kind: &str, current_revision: i64) -> Result<()> {
        match self.resource_version {
            Some(rv) if rv != current_revision => Err(Error::Conflict(format!(
                "{kind} {} changed since version {rv} (now {current_revision}); read it again and reapply",
                self.display_name()
            ))),
            _ => Ok(()),
        }
    }

    /// `ns/name`, or `name` when cluster-scoped.
    pub fn display_name(&self) -> String {
        display_name(&self.namespace, &self.name)
    }
}

impl Meta {
    /// The API form, at the revision the object was read.
    pub fn to_api(&self, mod_revision: i64) -> v1::ObjectMeta {
        v1::ObjectMeta {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone().into_iter().collect(),
            annotations: self.annotations.clone().into_iter().collect(),
            uid: self.uid.clone(),
            resource_version: mod_revision.to_string(),
            generation: self.generation,
            creation_timestamp: Some(self.created.into()),
        }
    }

    /// `ns/name`, or `name` when cluster-scoped.
    pub fn display_name(&self) -> String {
        display_name(&self.namespace, &self.name)
    }
}

fn display_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Parses `metadata.resourceVersion`: empty (no condition) or a positive
/// revision read from the server.
pub fn parse_resource_version(field: &str, text: &str, v: &mut Violations) -> Option<i64> {
    match text {
        "" => None,
        rv => match rv.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                v.add(
                    field,
                    format!("must be a version read from the server, got {rv:?}"),
                );
                None
            }
        },
    }
}
