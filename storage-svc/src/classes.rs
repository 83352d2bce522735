//! Storage classes: who provisions a claim's volume, with which reclaim
//! policy, and when it is bound.
//!
//! # Guarantees
//! - `provisioner`, `parameters`, `reclaimPolicy` and `volumeBindingMode`
//!   never change once a class exists (as Kubernetes): the volumes already
//!   made under a class keep meaning what they meant.
//! - At most one class is the default; a second one marked default is
//!   refused, naming the first.

use std::collections::BTreeMap;

use petset_core::error::{Error, Result, Violations};
use petset_core::meta::{MetaInput, Scope};
use petset_core::store::{Store, Versioned};
use petset_core::validate;
use petset_proto::v1;

use crate::records::{
    BindingMode, ClassRecord, DEFAULT_CLASS_ANNOTATION, Keys, Provisioner, ReclaimPolicy,
};

/// A checked class from the API.
#[derive(Debug, Clone)]
pub struct ClassInput {
    /// Metadata.
    pub meta: MetaInput,
    /// The stored form it asks for (its metadata is filled in on write).
    pub provisioner: Provisioner,
    /// Parameters.
    pub parameters: BTreeMap<String, String>,
    /// Reclaim policy.
    pub reclaim_policy: ReclaimPolicy,
    /// Binding mode.
    pub binding_mode: BindingMode,
    /// Expansion allowed.
    pub allow_volume_expansion: bool,
}

/// Checks a class from the API; every broken rule is named.
pub fn parse(class: Option<&v1::StorageClass>) -> Result<ClassInput> {
    let Some(class) = class else {
        return Err(Error::invalid("storage_class", "is required"));
    };
    let mut v = Violations::new();
    let meta = MetaInput::parse(
        "storage_class.metadata",
        class.metadata.as_ref(),
        Scope::Cluster,
        validate::dns1123_subdomain,
        &mut v,
    );
    let provisioner = Provisioner::from_name(&class.provisioner);
    if provisioner.is_none() {
        v.add(
            "storage_class.provisioner",
            format!(
                "must be one of {} (got {:?}); petset runs no external provisioners",
                Provisioner::ALL.map(|(n, _)| n).join(", "),
                class.provisioner
            ),
        );
    }
    if !class.parameters.is_empty() {
        let mut names: Vec<_> = class.parameters.keys().cloned().collect();
        names.sort();
        v.add(
            "storage_class.parameters",
            format!(
                "petset's provisioners take no parameters; remove {}",
                names.join(", ")
            ),
        );
    }
    let reclaim_policy = match class.reclaim_policy.as_str() {
        "" | "Delete" => ReclaimPolicy::Delete,
        "Retain" => ReclaimPolicy::Retain,
        other => {
            v.add(
                "storage_class.reclaim_policy",
                format!(
                    "must be Delete or Retain, got {other:?} (Recycle is for static volumes only)"
                ),
            );
            ReclaimPolicy::Delete
        }
    };
    let binding_mode = match class.volume_binding_mode.as_str() {
        "" | "Immediate" => BindingMode::Immediate,
        "WaitForFirstConsumer" => BindingMode::WaitForFirstConsumer,
        other => {
            v.add(
                "storage_class.volume_binding_mode",
                format!("must be Immediate or WaitForFirstConsumer, got {other:?}"),
            );
            BindingMode::Immediate
        }
    };
    if provisioner == Some(Provisioner::NodeLocal) && binding_mode == BindingMode::Immediate {
        v.add(
            "storage_class.volume_binding_mode",
            "petset.io/node-local makes the volume on the pod's node, so it must be WaitForFirstConsumer",
        );
    }
    v.into_result()?;
    Ok(ClassInput {
        meta,
        provisioner: provisioner.expect("checked above"),
        parameters: class.parameters.clone().into_iter().collect(),
        reclaim_policy,
        binding_mode,
        allow_volume_expansion: class.allow_volume_expansion,
    })
}

/// The stored classes.
#[derive(Debug, Clone)]
pub struct Classes {
    store: Store,
}

impl Classes {
    /// Classes kept in `store`.
    pub fn new(store: Store) -> Self {
        Classes { store }
    }

    /// Reads one class.
    pub async fn get(&self, name: &str) -> Result<Versioned<ClassRecord>> {
        self.store
            .fetch(&Keys(&self.store).class(name), "storage class", name)
            .await
    }

    /// Every class, by name.
    pub async fn list(&self) -> Result<Vec<Versioned<ClassRecord>>> {
        let (items, _) = self
            .store
            .list::<ClassRecord>(&Keys(&self.store).classes())
            .await?;
        Ok(items.into_iter().map(|(_, v)| v).collect())
    }

    /// Creates or updates a class.
    pub async fn apply(&self, input: ClassInput) -> Result<Versioned<ClassRecord>> {
        let key = Keys(&self.store).class(&input.meta.name);
        let existing = self.store.get::<ClassRecord>(&key).await?;
        let mut record = match &existing {
            None => ClassRecord {
                meta: input.meta.create(),
                provisioner: input.provisioner,
                parameters: input.parameters.clone(),
                reclaim_policy: input.reclaim_policy,
                binding_mode: input.binding_mode,
                allow_volume_expansion: input.allow_volume_expansion,
            },
            Some(current) => {
                input
                    .meta
                    .check_version("storage class", current.mod_revision)?;
                let c = &current.value;
                let mut v = Violations::new();
                for (field, same) in [
                    ("provisioner", c.provisioner == input.provisioner),
                    ("parameters", c.parameters == input.parameters),
                    ("reclaim_policy", c.reclaim_policy == input.reclaim_policy),
                    ("volume_binding_mode", c.binding_mode == input.binding_mode),
                ] {
                    if !same {
                        v.add(
                            format!("storage_class.{field}"),
                            "field is immutable: delete the class and create it again to change it",
                        );
                    }
                }
                v.into_result()?;
                let mut record = c.clone();
                record.allow_volume_expansion = input.allow_volume_expansion;
                record
            }
        };
        record.meta.labels = input.meta.labels.clone();
        record.meta.annotations = input.meta.annotations.clone();
        if record.is_default() {
            let others = self.list().await?;
            if let Some(other) = others
                .iter()
                .find(|o| o.value.is_default() && o.value.meta.name != record.meta.name)
            {
                return Err(Error::invalid(
                    "storage_class.metadata.annotations",
                    format!(
                        "storage class {:?} is the default already; unset its {} annotation first",
                        other.value.meta.name,
                        crate::records::DEFAULT_CLASS_ANNOTATION
                    ),
                ));
            }
        }
        if let Some(current) = &existing
            && current.value == record
        {
            return Ok(current.clone());
        }
        let written = self
            .store
            .put_over(&key, record, existing.as_ref())
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "storage class {} changed while being applied; apply again",
                    input.meta.name
                ))
            })?;
        tracing::info!(class = %written.value.meta.name, provisioner = written.value.provisioner.as_str(), "storage class applied");
        Ok(written)
    }

    /// Deletes a class; its volumes and claims stay.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let current = self.get(name).await?;
        if !self
            .store
            .delete_over(&Keys(&self.store).class(name), &current)
            .await?
        {
            return Err(Error::Conflict(format!(
                "storage class {name} changed while being deleted; retry"
            )));
        }
        tracing::info!(class = name, "storage class deleted");
        Ok(())
    }

    /// Makes `name` the default class, provisioned by `provisioner`, unless
    /// a class of that name or some default class exists already (an
    /// operator's choice stands). Answers the class it created, if any.
    ///
    /// This is what kind, minikube and k3s ship: a stack where a claim
    /// that names no class binds with no other step.
    pub async fn ensure_default(
        &self,
        name: &str,
        provisioner: Provisioner,
    ) -> Result<Option<ClassRecord>> {
        let classes = self.list().await?;
        if let Some(existing) = classes
            .iter()
            .find(|c| c.value.is_default() || c.value.meta.name == name)
        {
            tracing::info!(
                class = %existing.value.meta.name,
                default = existing.value.is_default(),
                "storage class present; the default class is left as it is"
            );
            return Ok(None);
        }
        let meta = MetaInput {
            namespace: String::new(),
            name: name.to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([(DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())]),
            resource_version: None,
        };
        let record = ClassRecord {
            meta: meta.create(),
            provisioner,
            parameters: BTreeMap::new(),
            reclaim_policy: ReclaimPolicy::Delete,
            // A node-local volume exists only once its pod has a node.
            binding_mode: match provisioner {
                Provisioner::NodeLocal => BindingMode::WaitForFirstConsumer,
                _ => BindingMode::Immediate,
            },
            allow_volume_expansion: false,
        };
        let key = Keys(&self.store).class(name);
        // Created only if absent: a replica starting beside this one, or a
        // class applied meanwhile, wins.
        match self
            .store
            .put_over(&key, record, None::<&Versioned<ClassRecord>>)
            .await?
        {
            Some(written) => {
                tracing::info!(
                    class = name,
                    provisioner = provisioner.as_str(),
                    "default storage class created"
                );
                Ok(Some(written.value))
            }
            None => Ok(None),
        }
    }

    /// The default class, if one is marked.
    pub async fn default_class(&self) -> Result<Option<ClassRecord>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .map(|c| c.value)
            .find(ClassRecord::is_default))
    }
}
