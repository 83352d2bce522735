//! Claims: made by people (`kubectl apply` of a PVC) or from a set's
//! `volumeClaimTemplates`, one per template per ordinal, and bound to a
//! volume one-to-one.
//!
//! # Expected flow
//! 1. The scheduler calls [`Claims::ensure`] for replica `i` before placing
//!    it: each claim `<template>-<set>-<i>` is created if missing and bound
//!    if a volume matches or the class provisions one. A claim kept from an
//!    earlier scale-down is found Bound already, to the same volume.
//! 2. For `WaitForFirstConsumer` claims it calls again with the node it
//!    chose; the binder picks a volume that can live there, or the node-local
//!    provisioner makes one on that node.
//! 3. A claim is deleted only when asked ([`Claims::delete`]): a person, or
//!    the scheduler where the set's retention policy says `Delete`.
//!
//! # Guarantees
//! - Creating a claim and binding it is one transaction when the volume is
//!   known; binding a Pending claim is one transaction over the claim and
//!   the volume, guarded by the revisions the decision was made on. Of any
//!   number of concurrent ensures for one claim, one creates it and all
//!   answer the same binding.
//! - A provisioned directory whose transaction lost is removed again.
//! - A claim whose volume is attached is not deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use petset_core::error::{Error, Result, Violations};
use petset_core::identity::IdentityRef;
use petset_core::meta::{MetaInput, Scope};
use petset_core::names;
use petset_core::quantity::format_bytes;
use petset_core::selector::NodeSelector;
use petset_core::store::page::PageRequest;
use petset_core::store::{
    Compare, CompareOp, Store, Txn, TxnOp, Versioned, decode_or_skip, encode,
};
use petset_core::validate;
use petset_proto::v1;

use crate::binder::{self, Decision};
use crate::classes::Classes;
use crate::provisioner::{self, Roots};
use crate::reclaim::Reclaimer;
use crate::records::{
    AttachmentRecord, ClaimPhase, ClaimRecord, ClassRecord, Keys, ORDINAL_LABEL,
    PROVISIONED_BY_ANNOTATION, SET_LABEL, VolumePhase, VolumeRecord,
};
pub use petset_core::claim::{ClaimSpec, parse_spec};

use crate::volumes::Volumes;

/// How often a binding is retried when a concurrent writer moved the claim
/// or the volume under it.
const BIND_ROUNDS: usize = 16;

/// A checked claim from the API.
#[derive(Debug, Clone)]
pub struct ClaimInput {
    /// Metadata.
    pub meta: MetaInput,
    /// Spec.
    pub spec: ClaimSpec,
}

/// Checks a claim from the API; every broken rule is named.
pub fn parse(claim: Option<&v1::PersistentVolumeClaim>) -> Result<ClaimInput> {
    let Some(claim) = claim else {
        return Err(Error::invalid("claim", "is required"));
    };
    let mut v = Violations::new();
    let meta = MetaInput::parse(
        "claim.metadata",
        claim.metadata.as_ref(),
        Scope::Namespaced,
        validate::dns1123_subdomain,
        &mut v,
    );
    let spec = parse_spec("claim.spec", claim.spec.as_ref(), &mut v);
    v.into_result()?;
    Ok(ClaimInput { meta, spec })
}

/// What [`Claims::ensure`] is asked for: the claims of one replica.
#[derive(Debug, Clone)]
pub struct EnsureInput {
    /// The replica.
    pub owner: IdentityRef,
    /// One claim per template, named `<template>-<set>-<ordinal>`.
    pub claims: Vec<ClaimInput>,
    /// The node the pod goes to, once chosen.
    pub node: Option<String>,
}

/// Checks an ensure request; every broken rule is named.
pub fn parse_ensure(request: &v1::EnsureClaimsRequest) -> Result<EnsureInput> {
    let mut v = Violations::new();
    let owner = v.merge(IdentityRef::parse(
        "",
        &request.namespace,
        &request.set_name,
        request.ordinal,
    ))?;
    let selector: BTreeMap<_, _> = request.selector_labels.clone().into_iter().collect();
    v.check("selector_labels", validate::labels(&selector));
    let node = (!request.node.is_empty()).then(|| request.node.clone());
    if let Some(node) = &node {
        v.check("node", validate::dns1123_subdomain(node));
    }
    let mut claims = Vec::new();
    let mut seen = Vec::new();
    for (i, template) in request.templates.iter().enumerate() {
        let field = format!("templates[{i}]");
        let meta = template.metadata.clone().unwrap_or_default();
        if let Err(reason) = validate::dns1123_label(&meta.name) {
            v.add(format!("{field}.metadata.name"), reason);
            continue;
        }
        if seen.contains(&meta.name) {
            v.add(
                format!("{field}.metadata.name"),
                format!("template {:?} is listed twice", meta.name),
            );
        }
        seen.push(meta.name.clone());
        let spec = parse_spec(&format!("{field}.spec"), template.spec.as_ref(), &mut v);
        let Some(owner) = &owner else { continue };
        let name = names::claim_name(&meta.name, &owner.set_name, owner.ordinal);
        if let Err(reason) = validate::dns1123_subdomain(&name) {
            v.add(
                format!("{field}.metadata.name"),
                format!("the claim name {name:?} is not valid: {reason}"),
            );
        }
        let mut labels: BTreeMap<String, String> = meta.labels.into_iter().collect();
        v.check(
            format!("{field}.metadata.labels"),
            validate::labels(&labels),
        );
        labels.extend(selector.clone());
        labels.insert(SET_LABEL.into(), owner.set_name.clone());
        labels.insert(ORDINAL_LABEL.into(), owner.ordinal.to_string());
        claims.push(ClaimInput {
            meta: MetaInput {
                namespace: owner.namespace.clone(),
                name,
                labels,
                annotations: meta.annotations.into_iter().collect(),
                resource_version: None,
            },
            spec,
        });
    }
    v.into_result()?;
    Ok(EnsureInput {
        owner: owner.expect("checked above"),
        claims,
        node,
    })
}

/// A claim and, when bound, its volume.
pub type Binding = (Versioned<ClaimRecord>, Option<Versioned<VolumeRecord>>);

/// The stored claims, and their binding.
#[derive(Debug, Clone)]
pub struct Claims {
    store: Store,
    roots: Arc<Roots>,
    classes: Classes,
    volumes: Volumes,
    reclaimer: Reclaimer,
}

impl Claims {
    /// Claims kept in `store`, with volumes under `roots`.
    pub fn new(store: Store, roots: Arc<Roots>, reclaimer: Reclaimer) -> Self {
        Claims {
            classes: Classes::new(store.clone()),
            volumes: Volumes::cached(store.clone()),
            store,
            roots,
            reclaimer,
        }
    }

    /// Reads one claim.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Versioned<ClaimRecord>> {
        self.store
            .fetch(
                &Keys(&self.store).claim(namespace, name),
                "claim",
                format!("{namespace}/{name}"),
            )
            .await
    }

    /// Claims of a namespace (all when `None`) that carry every label of
    /// `selector`.
    pub async fn list(
        &self,
        namespace: Option<&str>,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Versioned<ClaimRecord>>> {
        Ok(self
            .page(namespace, selector, &PageRequest::default())
            .await?
            .0)
    }

    /// One page of [`Claims::list`], with the token of the next (empty
    /// after the last).
    pub async fn page(
        &self,
        namespace: Option<&str>,
        selector: &BTreeMap<String, String>,
        page: &PageRequest,
    ) -> Result<(Vec<Versioned<ClaimRecord>>, String)> {
        let read = self
            .store
            .list_page(&Keys(&self.store).claims(namespace), page)
            .await?;
        let claims = read
            .kvs
            .iter()
            .filter_map(decode_or_skip::<ClaimRecord>)
            .filter(|c| {
                selector
                    .iter()
                    .all(|(k, v)| c.value.meta.labels.get(k) == Some(v))
            })
            .collect();
        Ok((claims, read.continue_token()))
    }

    /// Creates a claim and binds it if it can be, or updates its labels and
    /// annotations (the spec cannot change).
    pub async fn apply(&self, input: ClaimInput) -> Result<Binding> {
        let key = Keys(&self.store).claim(&input.meta.namespace, &input.meta.name);
        match self.store.get::<ClaimRecord>(&key).await? {
            None => {
                let record = self.new_claim(&input, None).await?;
                self.bind_rounds(record, None, None).await
            }
            Some(current) => {
                input.meta.check_version("claim", current.mod_revision)?;
                let c = &current.value;
                let same_spec = c.access_modes == input.spec.access_modes
                    && c.request == input.spec.request
                    && (input.spec.class.is_none() || c.class == input.spec.class)
                    && c.wanted_volume == input.spec.wanted_volume
                    && c.selector == input.spec.selector;
                if !same_spec {
                    return Err(Error::invalid(
                        "claim.spec",
                        "spec is immutable after creation (petset does not expand claims yet): \
                         delete the claim and create it again to change it",
                    ));
                }
                let mut record = c.clone();
                record.meta.labels = input.meta.labels;
                record.meta.annotations = input.meta.annotations;
                let written = if record == *c {
                    current
                } else {
                    self.store
                        .put_over(&key, record, Some(&current))
                        .await?
                        .ok_or_else(|| {
                            Error::Conflict(format!(
                                "claim {} changed while being applied; apply again",
                                c.meta.display_name()
                            ))
                        })?
                };
                let volume = self.volume_of(&written.value).await?;
                Ok((written, volume))
            }
        }
    }

    /// Makes sure the claims of one replica exist and are bound (see the
    /// module's flow). Answers them in template order.
    pub async fn ensure(&self, input: EnsureInput) -> Result<Vec<Binding>> {
        let mut out = Vec::new();
        for claim in &input.claims {
            let key = Keys(&self.store).claim(&claim.meta.namespace, &claim.meta.name);
            let binding = match self.store.get::<ClaimRecord>(&key).await? {
                Some(current) if current.value.phase != ClaimPhase::Pending => {
                    let volume = self.volume_of(&current.value).await?;
                    (current, volume)
                }
                Some(current) => {
                    let record = current.value.clone();
                    self.bind_rounds(record, Some(current), input.node.as_deref())
                        .await?
                }
                None => {
                    let record = self.new_claim(claim, Some(&input.owner)).await?;
                    self.bind_rounds(record, None, input.node.as_deref())
                        .await?
                }
            };
            if let (Some(node), Some(volume)) = (&input.node, &binding.1) {
                check_node(&binding.0.value, &volume.value, node)?;
            }
            out.push(binding);
        }
        Ok(out)
    }

    /// Gives every Pending claim that names no class the default class, and
    /// binds it if it now can be (Kubernetes' retroactive default class).
    /// Run when a default class appears. Answers how many claims took it.
    pub async fn adopt_default(&self) -> Result<usize> {
        if self.classes.default_class().await?.is_none() {
            return Ok(0);
        }
        let mut adopted = 0;
        for current in self.list(None, &BTreeMap::new()).await? {
            if current.value.phase != ClaimPhase::Pending || current.value.class.is_some() {
                continue;
            }
            let name = current.value.meta.display_name();
            let record = current.value.clone();
            match self.bind_rounds(record, Some(current), None).await {
                Ok((claim, _)) => {
                    tracing::info!(claim = %name, class = claim.value.class_name(), phase = ?claim.value.phase, "claim took the default storage class");
                    adopted += 1;
                }
                Err(e) => {
                    tracing::warn!(claim = %name, error = %e, "cannot give a claim the default storage class")
                }
            }
        }
        Ok(adopted)
    }

    /// A new claim record from `input`, with the default class filled in
    /// when none is named (as Kubernetes' admission does).
    async fn new_claim(
        &self,
        input: &ClaimInput,
        owner: Option<&IdentityRef>,
    ) -> Result<ClaimRecord> {
        let class = match &input.spec.class {
            Some(class) => Some(class.clone()),
            None => self.classes.default_class().await?.map(|c| c.meta.name),
        };
        Ok(ClaimRecord {
            meta: input.meta.create(),
            access_modes: input.spec.access_modes.clone(),
            request: input.spec.request,
            class,
            wanted_volume: input.spec.wanted_volume.clone(),
            selector: input.spec.selector.clone(),
            owner: owner.cloned(),
            phase: ClaimPhase::Pending,
            volume: None,
            capacity: None,
            message: String::new(),
        })
    }

    /// Binds `record` (stored at `over`, or to be created) if it can be,
    /// or writes why it stays Pending; retried from what is stored when a
    /// concurrent writer came first.
    async fn bind_rounds(
        &self,
        mut record: ClaimRecord,
        mut over: Option<Versioned<ClaimRecord>>,
        node: Option<&str>,
    ) -> Result<Binding> {
        let key = Keys(&self.store).claim(&record.meta.namespace, &record.meta.name);
        for round in 0..BIND_ROUNDS {
            if round > 0 {
                // A concurrent writer moved the claim or a volume: start over
                // from what is stored now.
                match self.store.get::<ClaimRecord>(&key).await? {
                    Some(current) if current.value.phase != ClaimPhase::Pending => {
                        let volume = self.volume_of(&current.value).await?;
                        return Ok((current, volume));
                    }
                    Some(current) => {
                        record = current.value.clone();
                        over = Some(current);
                    }
                    None => over = None,
                }
            }
            if record.class.is_none() {
                // Retroactive default (Kubernetes >= 1.28): a claim made
                // while there was no default class takes the one there is
                // now, and keeps it.
                record.class = self.classes.default_class().await?.map(|c| c.meta.name);
            }
            let class = match record.class_name() {
                "" => None,
                name => match self.classes.get(name).await {
                    Ok(c) => Some(c.value),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                },
            };
            // The first round chooses from the watch-fed copy, under its
            // lock, cloning only the volume chosen; a round after a lost
            // race reads etcd.
            let cached = self
                .volumes
                .copy()
                .filter(|_| round == 0)
                .map(|copy| decide_over(&record, class.as_ref(), node, copy.entries.values()));
            let (decision, chosen) = match cached {
                Some(decided) => decided,
                None => {
                    let volumes = self.volumes.list().await?;
                    decide_over(&record, class.as_ref(), node, volumes.iter())
                }
            };
            match decision {
                Decision::Bind(_) => {
                    let volume = chosen.expect("the binder picks from the list");
                    if let Some(binding) = self.bind(&record, over.as_ref(), volume, None).await? {
                        return Ok(binding);
                    }
                }
                Decision::Provision => {
                    let class = class.expect("only a class provisions");
                    let volume = self.provision(&record, &class, node)?;
                    let path = self.roots.path_of(&volume.meta.name, &volume.source);
                    let fresh = Versioned {
                        value: volume,
                        mod_revision: 0,
                        create_revision: 0,
                        lease: 0,
                    };
                    match self.bind(&record, over.as_ref(), fresh, Some(&class)).await {
                        Ok(Some(binding)) => return Ok(binding),
                        outcome => {
                            if let Err(e) = provisioner::remove(&path) {
                                tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused provisioned directory");
                            }
                            outcome?;
                        }
                    }
                }
                Decision::Wait(reason) => {
                    if over
                        .as_ref()
                        .is_some_and(|o| o.value.message == reason && o.value.class == record.class)
                    {
                        return Ok((over.expect("checked"), None));
                    }
                    record.message = reason;
                    if let Some(written) = self
                        .store
                        .put_over(&key, record.clone(), over.as_ref())
                        .await?
                    {
                        tracing::info!(claim = %record.meta.display_name(), reason = %record.message, "claim pending");
                        return Ok((written, None));
                    }
                }
            }
        }
        Err(Error::Conflict(format!(
            "claim {} kept changing while being bound; retry",
            record.meta.display_name()
        )))
    }

    /// A new volume for `claim` made by `class`'s provisioner.
    fn provision(
        &self,
        claim: &ClaimRecord,
        class: &ClassRecord,
        node: Option<&str>,
    ) -> Result<VolumeRecord> {
        let name = format!("pvc-{}", uuid::Uuid::new_v4());
        let source = self.roots.provision(
            class.provisioner,
            &class.meta.name,
            node,
            &name,
            claim.request,
        )?;
        let node_affinity = match &source {
            crate::records::VolumeSource::NodeLocal { node } => Some(NodeSelector::hostname(node)),
            _ => None,
        };
        let meta = MetaInput {
            namespace: String::new(),
            name,
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([(
                PROVISIONED_BY_ANNOTATION.to_string(),
                class.provisioner.as_str().to_string(),
            )]),
            resource_version: None,
        }
        .create();
        Ok(VolumeRecord {
            meta,
            capacity: claim.request,
            access_modes: claim.access_modes.clone(),
            reclaim_policy: class.reclaim_policy,
            class: class.meta.name.clone(),
            node_affinity,
            source,
            claim_ref: None,
            phase: VolumePhase::Available,
            message: String::new(),
            phase_since: SystemTime::now(),
        })
    }

    /// Binds `claim` (written over `over`, or created) to `volume` (stored
    /// at its revision, or new when 0) in one transaction. `None` when a
    /// concurrent writer came first.
    async fn bind(
        &self,
        claim: &ClaimRecord,
        over: Option<&Versioned<ClaimRecord>>,
        volume: Versioned<VolumeRecord>,
        provisioned_by: Option<&ClassRecord>,
    ) -> Result<Option<Binding>> {
        let keys = Keys(&self.store);
        let claim_key = keys.claim(&claim.meta.namespace, &claim.meta.name);
        let volume_key = keys.volume(&volume.value.meta.name);
        let mut bound_volume = volume.value.clone();
        bound_volume.claim_ref = Some(claim.reference());
        bound_volume.set_phase(VolumePhase::Bound, "");
        let mut bound_claim = claim.clone();
        bound_claim.phase = ClaimPhase::Bound;
        bound_claim.volume = Some(bound_volume.meta.name.clone());
        bound_claim.capacity = Some(bound_volume.capacity);
        bound_claim.message.clear();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(
                    claim_key.clone(),
                    CompareOp::Equal,
                    over.map(|o| o.mod_revision).unwrap_or(0),
                ),
                Compare::mod_revision(volume_key.clone(), CompareOp::Equal, volume.mod_revision),
            ])
            .and_then([
                TxnOp::put(claim_key, encode(&bound_claim)?, None),
                TxnOp::put(volume_key, encode(&bound_volume)?, None),
            ]);
        let response = self.store.txn(txn).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        metrics::counter!("petset_storage_bound_total", "provisioned" => provisioned_by.is_some().to_string())
            .increment(1);
        tracing::info!(
            claim = %bound_claim.meta.display_name(),
            volume = %bound_volume.meta.name,
            capacity = %format_bytes(bound_volume.capacity),
            provisioner = provisioned_by.map(|c| c.provisioner.as_str()).unwrap_or("static"),
            "claim bound"
        );
        let claim_created = over.map(|o| o.create_revision).unwrap_or(revision);
        let volume_created = if volume.create_revision == 0 {
            revision
        } else {
            volume.create_revision
        };
        Ok(Some((
            Versioned {
                value: bound_claim,
                mod_revision: revision,
                create_revision: claim_created,
                lease: 0,
            },
            Some(Versioned {
                value: bound_volume,
                mod_revision: revision,
                create_revision: volume_created,
                lease: 0,
            }),
        )))
    }

    /// The volume a claim is bound to, if any.
    pub async fn volume_of(&self, claim: &ClaimRecord) -> Result<Option<Versioned<VolumeRecord>>> {
        match &claim.volume {
            None => Ok(None),
            Some(name) => {
                self.store
                    .get::<VolumeRecord>(&Keys(&self.store).volume(name))
                    .await
            }
        }
    }

    /// Deletes a claim and applies its volume's reclaim policy. Answers the
    /// volume as it is afterwards (`None` when unbound or deleted).
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Versioned<VolumeRecord>>> {
        let keys = Keys(&self.store);
        let claim_key = keys.claim(namespace, name);
        let current = self.get(namespace, name).await?;
        let Some(volume) = self.volume_of(&current.value).await? else {
            if !self.store.delete_over(&claim_key, &current).await? {
                return Err(Error::Conflict(format!(
                    "claim {namespace}/{name} changed while being deleted; retry"
                )));
            }
            tracing::info!(claim = %current.value.meta.display_name(), "claim deleted");
            return Ok(None);
        };
        let volume_name = volume.value.meta.name.clone();
        let attachments_prefix = keys.attachments(Some(&volume_name));
        let (attached, _) = self
            .store
            .list::<AttachmentRecord>(&attachments_prefix)
            .await?;
        if !attached.is_empty() {
            let users = attached
                .iter()
                .map(|(_, a)| {
                    format!(
                        "{} on node {} (incarnation {})",
                        a.value.identity, a.value.node, a.value.incarnation
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::FailedPrecondition(format!(
                "claim {namespace}/{name} is in use: its volume {volume_name} is attached for {users}; stop the pod first"
            )));
        }
        let mut released = volume.value.clone();
        if released
            .claim_ref
            .as_ref()
            .is_some_and(|r| current.value.is(r))
        {
            released.set_phase(
                VolumePhase::Released,
                format!(
                    "claim {namespace}/{name} was deleted; reclaim policy {:?}",
                    released.reclaim_policy
                ),
            );
        }
        let volume_key = keys.volume(&volume_name);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(claim_key.clone(), CompareOp::Equal, current.mod_revision),
                Compare::mod_revision(volume_key.clone(), CompareOp::Equal, volume.mod_revision),
                Compare::create_revision(attachments_prefix, CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then([
                TxnOp::delete(claim_key, None),
                TxnOp::put(volume_key, encode(&released)?, None),
            ]);
        if !self.store.txn(txn).await?.succeeded() {
            return Err(Error::Conflict(format!(
                "claim {namespace}/{name} or its volume changed while being deleted (an attach?); retry"
            )));
        }
        tracing::info!(claim = %current.value.meta.display_name(), volume = %volume_name, "claim deleted");
        self.reclaimer.reclaim(&volume_name).await
    }
}

/// Refuses a node a bound claim's volume cannot be used on.
pub fn check_node(claim: &ClaimRecord, volume: &VolumeRecord, node: &str) -> Result<()> {
    match &volume.node_affinity {
        Some(affinity) if !affinity.matches_node(node) => Err(Error::FailedPrecondition(format!(
            "claim {} is bound to volume {}, which can only be used on {}; the pod must run there, not on {node:?}",
            claim.meta.display_name(),
            volume.meta.name,
            affinity
                .pinned_nodes()
                .map(|n| format!("node {}", n.join(" or ")))
                .unwrap_or_else(|| "nodes its nodeAffinity selects".into())
        ))),
        _ => Ok(()),
    }
}

/// [`binder::decide`] over `volumes`, with the volume it chose to bind,
/// cloned alone.
fn decide_over<'a>(
    claim: &ClaimRecord,
    class: Option<&ClassRecord>,
    node: Option<&str>,
    volumes: impl Iterator<Item = &'a Versioned<VolumeRecord>> + Clone,
) -> (Decision, Option<Versioned<VolumeRecord>>) {
    let decision = binder::decide(claim, class, volumes.clone().map(|v| &v.value), node);
    let chosen = match &decision {
        Decision::Bind(name) => volumes
            .into_iter()
            .find(|v| &v.value.meta.name == name)
            .cloned(),
        _ => None,
    };
    (decision, chosen)
}
